// The portable path: the kernel templates over one-lane "vectors", compiled for the baseline of
// the target (and, with GCC/Clang, without auto-vectorisation, so it stays an honest reference
// for the SIMD paths).
#define FASTLOSS_ISA_NAMESPACE scalar
#define FASTLOSS_ISA_NAME "scalar"
#define FASTLOSS_SIMD "simd/scalar.inl"
#include "kernels/isa_begin.inl"

namespace fastloss {
constexpr KernelTable scalar_table = scalar::make_table();
}  // namespace fastloss
