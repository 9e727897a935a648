// The memory-bandwidth probe behind `fastloss bench`'s machine limits (not part of the losses).
#pragma once

#include <cstdint>

namespace fastloss {

enum class MemoryProbeKind { sum, copy, triad };

struct MemoryProbeResult {
  double value;  // sum: the sum of x (returned so that the reads cannot be optimised away); else 0
  int threads;   // the OpenMP threads that ran (1 in a build without OpenMP)
};

// One pass over n float32 elements on `threads` OpenMP threads (static schedule over contiguous
// 64 KiB blocks): STREAM's copy and triad loops, plus a read-only sum.
//   sum    reads x                      counted as 4n bytes
//   copy   out[i] = x[i]                counted as 8n bytes
//   triad  out[i] = x[i] + 3 * y[i]     counted as 12n bytes
// Ordinary stores, as the loss kernels write their gradients. Compiled for the baseline ISA like
// the rest of _core: SSE2's 16-byte loads already outrun one core's share of DRAM bandwidth.
MemoryProbeResult memory_probe_f32(MemoryProbeKind kind, const float* x, const float* y, float* out,
                                   int64_t n, int threads);

}  // namespace fastloss
