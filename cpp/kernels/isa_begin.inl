// Opens the namespace of one ISA's kernels and pulls in every kernel family. A file
// cpp/kernels/<isa>.cpp defines FASTLOSS_ISA_NAMESPACE, FASTLOSS_ISA_NAME and FASTLOSS_SIMD (the
// simd/<isa>.inl with that ISA's Simd<float> and Simd<double>), includes this, and exports
// <isa>_table(). Each ISA compiles the same templates in its own namespace, so the
// linker never merges code built for a wide ISA with code that must run on any CPU.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "kernels.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define FASTLOSS_HAVE_MMAP 1
#endif

// The hot loops' helper lambdas carry vector accumulators by reference: inlined, they stay in
// registers; called, every step goes through memory (measured: 3.5x slower MSE).
// FASTLOSS_PREFETCH(address): a hint to start loading that cache line (it never faults).
#if defined(__GNUC__)
#define FASTLOSS_ALWAYS_INLINE __attribute__((always_inline))
#define FASTLOSS_NOINLINE __attribute__((noinline))
#define FASTLOSS_PREFETCH(address) __builtin_prefetch(address)
#define FASTLOSS_PREFETCH_WRITE(address) __builtin_prefetch(address, 1)
#elif defined(_MSC_VER)
#define FASTLOSS_ALWAYS_INLINE __forceinline
#define FASTLOSS_NOINLINE __declspec(noinline)
#define FASTLOSS_PREFETCH(address) ((void)(address))
#define FASTLOSS_PREFETCH_WRITE(address) ((void)(address))
#else
#define FASTLOSS_ALWAYS_INLINE
#define FASTLOSS_NOINLINE
#define FASTLOSS_PREFETCH(address) ((void)(address))
#define FASTLOSS_PREFETCH_WRITE(address) ((void)(address))
#endif

namespace fastloss {
namespace FASTLOSS_ISA_NAMESPACE {

#include "kernels/unaligned.inl"
#include "exact_sum.inl"
#include FASTLOSS_SIMD
#include "kernels/exact_lanes.inl"
#include "kernels/virtual_lanes.inl"
#include "kernels/buffer.inl"
#include "reduce.inl"
#include "kernels/regression.inl"
#include "kernels/cross_entropy.inl"
#include "kernels/info_nce.inl"
#include "kernels/linear_cross_entropy.inl"
#include "kernels/isa_table.inl"

}  // namespace FASTLOSS_ISA_NAMESPACE
}  // namespace fastloss
