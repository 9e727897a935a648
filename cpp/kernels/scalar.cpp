// The portable path: plain C++ compiled for the baseline of the target (and, with GCC/Clang,
// without auto-vectorisation, so it stays an honest reference for the SIMD paths).
#define FASTLOSS_ISA_NAMESPACE scalar
#define FASTLOSS_ISA_NAME "scalar"
#include "kernels/isa_begin.inl"

namespace fastloss {
KernelTable scalar_table() { return scalar::make_table(); }
}  // namespace fastloss
