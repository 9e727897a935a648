// AVX-512 path (F/DQ/BW/VL, x86-64); selected only when cpuid and xgetbv say the CPU and OS
// support it.
#include <immintrin.h>

#define FASTLOSS_ISA_NAMESPACE avx512
#define FASTLOSS_ISA_NAME "avx512"
#define FASTLOSS_SIMD "simd/avx512.inl"
#include "kernels/isa_begin.inl"

namespace fastloss {
constexpr KernelTable avx512_table = avx512::make_table();
}  // namespace fastloss
