#include "dispatch.hpp"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#if defined(_OPENMP)
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(_M_X64)
#define FASTLOSS_X86_64 1
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace fastloss {
namespace {

// One compiled path: its table (constant data) and the check that this CPU can run it. Nothing
// here calls into a path's code until supported() has said yes.
struct IsaEntry {
  const KernelTable* table;
  bool (*supported)();
};

#if defined(FASTLOSS_X86_64)
void cpuid(unsigned leaf, unsigned subleaf, unsigned regs[4]) {
#if defined(_MSC_VER)
  int out[4];
  __cpuidex(out, static_cast<int>(leaf), static_cast<int>(subleaf));
  for (int i = 0; i < 4; ++i) regs[i] = static_cast<unsigned>(out[i]);
#else
  __cpuid_count(leaf, subleaf, regs[0], regs[1], regs[2], regs[3]);
#endif
}

// The OS must save the wide registers on a context switch (XCR0), or using them corrupts state.
unsigned long long xcr0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
#endif
}

[[maybe_unused]] bool cpu_has_avx2_fma() {
  unsigned r[4];
  cpuid(0, 0, r);
  if (r[0] < 7) return false;
  cpuid(1, 0, r);
  const bool osxsave = (r[2] >> 27) & 1u, avx = (r[2] >> 28) & 1u, fma = (r[2] >> 12) & 1u;
  if (!(osxsave && avx && fma)) return false;
  if ((xcr0() & 0x6u) != 0x6u) return false;  // XMM and YMM state
  cpuid(7, 0, r);
  return (r[1] >> 5) & 1u;  // AVX2
}

[[maybe_unused]] bool cpu_has_avx512() {
  if (!cpu_has_avx2_fma()) return false;
  if ((xcr0() & 0xE6u) != 0xE6u) return false;  // plus opmask, ZMM_Hi256, Hi16_ZMM
  unsigned r[4];
  cpuid(7, 0, r);
  const bool f = (r[1] >> 16) & 1u, dq = (r[1] >> 17) & 1u, bw = (r[1] >> 30) & 1u, vl = (r[1] >> 31) & 1u;
  return f && dq && bw && vl;
}
#endif

bool always() { return true; }

constexpr IsaEntry kIsaEntries[] = {
    {&scalar_table, &always},
#if defined(FASTLOSS_HAVE_AVX2)
    {&avx2_table, &cpu_has_avx2_fma},
#endif
#if defined(FASTLOSS_HAVE_AVX512)
    {&avx512_table, &cpu_has_avx512},
#endif
#if defined(FASTLOSS_HAVE_NEON)
    // Baseline on AArch64; last, so it is the default there.
    {&neon_table, &always},
#endif
};

// The active table is swapped atomically so concurrent calls never see a half-written pointer.
std::atomic<const KernelTable*> g_active{nullptr};
std::atomic<int> g_num_threads{0};

const KernelTable* find_table(const std::string& name) {
  for (const IsaEntry& e : kIsaEntries) {
    if (name == e.table->name) return e.table;
  }
  return nullptr;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

bool is_available(const std::string& name) {
  for (const std::string& n : available_isas()) {
    if (n == name) return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> compiled_isas() {
  std::vector<std::string> out;
  for (const IsaEntry& e : kIsaEntries) out.push_back(e.table->name);
  return out;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const IsaEntry& e : kIsaEntries) {
    if (e.supported()) out.push_back(e.table->name);
  }
  return out;
}

void init_dispatch() {
  const char* forced = std::getenv("FASTLOSS_ISA");
  if (forced != nullptr && forced[0] != '\0') {
    const std::string name(forced);
    if (find_table(name) == nullptr) {
      throw std::runtime_error("FASTLOSS_ISA=" + name +
                               " is not a path compiled into this build (compiled: " + join(compiled_isas()) +
                               ")");
    }
    if (!is_available(name)) {
      throw std::runtime_error("FASTLOSS_ISA=" + name +
                               " cannot run on this CPU (available: " + join(available_isas()) + ")");
    }
    g_active.store(find_table(name));
  } else {
    g_active.store(find_table(available_isas().back()));
  }
  if (g_num_threads.load() == 0) g_num_threads.store(default_num_threads());
}

const KernelTable& active_table() { return *g_active.load(); }

void set_active_isa(const std::string& name) {
  if (!is_available(name)) {
    throw std::invalid_argument(
        "isa '" + name + "' is not available on this machine (available: " + join(available_isas()) + ")");
  }
  g_active.store(find_table(name));
}

bool interrupted(Interrupt* interrupt) {
  if (interrupt == nullptr) return false;
  if (interrupt->stopped.load(std::memory_order_relaxed)) return true;
  // checks_to_clock and next_poll are the owner's alone, so they need no synchronisation.
  if (std::this_thread::get_id() != interrupt->owner || --interrupt->checks_to_clock > 0) return false;
  interrupt->checks_to_clock = Interrupt::kChecksPerClock;
  const auto now = std::chrono::steady_clock::now();
  if (now < interrupt->next_poll) return false;
  interrupt->next_poll = now + Interrupt::kPollInterval;
  if (!interrupt->poll(interrupt->context)) return false;
  interrupt->stopped.store(true, std::memory_order_relaxed);
  return true;
}

int num_threads() { return g_num_threads.load(); }

void set_num_threads(int n) { g_num_threads.store(n); }

int default_num_threads() {
#if defined(_OPENMP)
  return omp_get_num_procs();
#else
  return 1;
#endif
}

}  // namespace fastloss
