// The memory-bandwidth probe (memory_probe.hpp): plain loops over contiguous blocks.
#include "memory_probe.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace fastloss {

namespace {

constexpr int64_t kBlock = 1 << 14;  // float32 elements (64 KiB): the unit of the static schedule
constexpr int kLanes = 16;           // independent partial sums: the sum is never latency-bound

// Sum of x[0, n): 16 float partial sums (which the compiler vectorises), added into a double. The
// value only keeps the reads alive; its order is fixed, its accuracy not promised.
double block_sum(const float* x, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j];
  }
  double total = 0.0;
  for (; i < n; ++i) total += x[i];
  for (int j = 0; j < kLanes; ++j) total += acc[j];
  return total;
}

}  // namespace

MemoryProbeResult memory_probe_f32(MemoryProbeKind kind, const float* x, const float* y, float* out,
                                   int64_t n, int threads) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  double total = 0.0;
  int used = 1;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(+ : total)
#else
  (void)threads;
#endif
  {
#if defined(_OPENMP)
    if (omp_get_thread_num() == 0) used = omp_get_num_threads();
#pragma omp for schedule(static)
#endif
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t lo = b * kBlock;
      const int64_t hi = (n - lo < kBlock) ? n : lo + kBlock;
      switch (kind) {
        case MemoryProbeKind::sum:
          total += block_sum(x + lo, hi - lo);
          break;
        case MemoryProbeKind::copy:
          // + 0.0f, which IEEE forbids folding away (-0 + 0 = +0), keeps this a loop of ordinary
          // vector stores, as the loss kernels write: the compiler would turn a bare copy into a
          // memcpy call, whose large-copy paths (rep movsb, streaming stores) they never take.
          for (int64_t i = lo; i < hi; ++i) out[i] = x[i] + 0.0f;
          break;
        case MemoryProbeKind::triad:
          for (int64_t i = lo; i < hi; ++i) out[i] = x[i] + 3.0f * y[i];
          break;
      }
    }
  }
  return {total, used};
}

}  // namespace fastloss
