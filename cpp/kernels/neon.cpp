// NEON path (AArch64 Advanced SIMD, 4 float / 2 double lanes). NEON is baseline on AArch64: no
// extra compiler flags, and dispatch.cpp treats it as always available there.
#include <arm_neon.h>

#define FASTLOSS_ISA_NAMESPACE neon
#define FASTLOSS_ISA_NAME "neon"
#define FASTLOSS_SIMD "simd/neon.inl"
#include "kernels/isa_begin.inl"

namespace fastloss {
constexpr KernelTable neon_table = neon::make_table();
}  // namespace fastloss
