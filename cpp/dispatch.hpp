// CPU detection, the FASTLOSS_ISA override, the active KernelTable and the thread count.
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "kernels.hpp"

namespace fastloss {

// Paths compiled into this build, in order of preference (best last).
std::vector<std::string> compiled_isas();
// Compiled paths this CPU (and its OS) can run.
std::vector<std::string> available_isas();

// Picks the best available path, or the one FASTLOSS_ISA names. Throws std::runtime_error with a
// readable message when FASTLOSS_ISA names an unknown path or one this CPU cannot run.
void init_dispatch();

const KernelTable& active_table();
// Switches the active path (used by tests to run every path); throws std::invalid_argument for a
// path that is not available.
void set_active_isa(const std::string& name);

// One long call's interruption state (see kernels.hpp). Only the thread that creates it (the
// caller, which OpenMP makes the master of every team the kernel starts, so it keeps taking work
// items) runs `poll`, at most once per kPollInterval; any thread may see `stopped` and stop.
struct Interrupt {
  static constexpr std::chrono::milliseconds kPollInterval{100};

  // Returns true to stop the call (e.g. a Python signal handler raised).
  bool (*poll)(void* context);
  void* context;
  // The owner reads the clock at every kChecksPerClock-th check only (a clock read costs ~30 ns,
  // a regression block ~5 us; the slowest work item, an InfoNCE tile at D = 1024, ~5 ms).
  static constexpr int kChecksPerClock = 8;

  // Every thread reads owner and stopped at every work item, and the owner writes checks_to_clock
  // at every one: on one cache line, the cores passed it back and forth at each work item
  // (ce_large, 2 threads: 12.1 ms against 10.9 ms without an Interrupt). So the read-mostly
  // fields (these, poll and context) and the owner's counters are on lines of their own.
  std::thread::id owner = std::this_thread::get_id();
  alignas(64) std::atomic<bool> stopped{false};
  alignas(64) int checks_to_clock = kChecksPerClock;
  std::chrono::steady_clock::time_point next_poll = std::chrono::steady_clock::now() + kPollInterval;

  Interrupt(bool (*poll_fn)(void*), void* poll_context) : poll(poll_fn), context(poll_context) {}
};

int num_threads();
void set_num_threads(int n);
int default_num_threads();

}  // namespace fastloss
