// AVX2 + FMA path (x86-64, compiled with -mavx2 -mfma); selected only when cpuid and xgetbv say
// the CPU and OS support it.
#include <immintrin.h>

#define FASTLOSS_ISA_NAMESPACE avx2
#define FASTLOSS_ISA_NAME "avx2"
#define FASTLOSS_SIMD "simd/avx2.inl"
#include "kernels/isa_begin.inl"

namespace fastloss {
constexpr KernelTable avx2_table = avx2::make_table();
}  // namespace fastloss
