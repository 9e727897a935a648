// The portable "vector" of one lane: the same kernel templates that the SIMD paths run, as plain
// scalar code (the scalar object is built without auto-vectorisation). Every operation rounds as
// its vector form does, so that this path gives the SIMD paths' bits: fused multiply-adds are
// std::fma (one rounding; glibc takes the FMA instruction where the CPU has one and an exact
// software form where it has not), exp and log are vecmath.inl's polynomials, not libm's.
// Included inside the scalar ISA namespace.

template <class T>
struct Simd {
  using V = T;
  using M = bool;
  static constexpr int64_t kLanes = 1;
  // Micro-kernel shape for the InfoNCE dot products: rows x (vecs * lanes) accumulators.
  static constexpr int64_t kMicroRows = 4;
  static constexpr int64_t kMicroVecs = 4;

  static V zero() { return T(0); }
  static V set1(T x) { return x; }
  // Input arrays may be misaligned (kernels/unaligned.inl).
  static V load(const T* p) { return load_unaligned(p); }
  static V load_partial(const T* p, int64_t n, T fill) { return n > 0 ? load_unaligned(p) : fill; }
  static void store(T* p, V v) { *p = v; }
  static void store_partial(T* p, V v, int64_t n) {
    if (n > 0) *p = v;
  }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V fmadd(V a, V b, V c) { return std::fma(a, b, c); }
  static V fnmadd(V a, V b, V c) { return std::fma(-a, b, c); }
  static V div(V a, V b) { return a / b; }
  static V round(V a) { return std::nearbyint(a); }  // to nearest, ties to even
  // v * 2^n for integral n whose result is a normal number (as vecmath.inl uses it).
  static V scale2(V v, V n) { return std::ldexp(v, static_cast<int>(n)); }
  // The same; `shifted` (n + bias in its low mantissa bits, vecmath.inl's shifter) is not needed.
  static V scale2_shifted(V v, V n, V) { return std::ldexp(v, static_cast<int>(n)); }
  static M gt(V a, V b) { return a > b; }
  static M lt(V a, V b) { return a < b; }
  static M eq(V a, V b) { return a == b; }
  static M is_nan(V a) { return a != a; }
  static V select(M m, V if_true, V if_false) { return m ? if_true : if_false; }
  // x = m 2^e with m in [1, 2), for normal positive x.
  static V split_exponent(V x, V* mantissa) {
    int e = 0;
    *mantissa = std::frexp(x, &e) * T(2);
    return static_cast<V>(e - 1);
  }
  static V max(V a, V b) { return a > b ? a : b; }  // NaN in `a` is dropped, as maxps does
  static V min(V a, V b) { return a < b ? a : b; }  // NaN in `a` is dropped, as minps does
  static V abs(V a) { return std::fabs(a); }  // clears the sign bit, -0 and NaN included, as andnot does
  // a with its sign flipped where b is negative (-0 included).
  static V xor_sign(V a, V b) { return std::signbit(b) ? -a : a; }
  // sign(a) with sign(+-0) = +0 (SPEC: the MAE gradient at pred == target is +0.0) and NaN kept.
  static V sign(V a) { return a > T(0) ? T(1) : (a < T(0) ? T(-1) : (a == a ? T(0) : a)); }
  static T reduce_max(V a) { return a; }
  static T reduce_add(V a) { return a; }
  static V exp(V x);
  static V exp_nonpositive(V x);
  static V log(V x);

  // The lanes as double vectors (kWideParts of them), exactly: the exact sums work in double.
  static constexpr int kWideParts = 1;
  static double widen(V v, int) { return static_cast<double>(v); }
  static bool any_nonzero(V a) { return a != T(0); }
  // a * b + c rounded once (std::fma is exact in software where the CPU has no FMA).
  static V fma_exact(V a, V b, V c) { return std::fma(a, b, c); }
  static V fms_exact(V a, V b, V c) { return std::fma(a, b, -c); }  // a * b - c, rounded once
  // kLanes floats, widened (exactly).
  static V load_float(const float* p) { return static_cast<V>(load_unaligned(p)); }
  // Lanes where a == b and c == d; masks combine with mask_and and all_set.
  static M eq_and(V a, V b, V c, V d) { return a == b && c == d; }
  static M mask_and(M a, M b) { return a && b; }
  static bool all_set(M m) { return m; }

  // A float64 accumulator for sums of T lanes.
  struct DoubleSum {
    double value = 0.0;
  };
  static void accumulate(DoubleSum& acc, V v) { acc.value += static_cast<double>(v); }
  static double total(const DoubleSum& acc) { return acc.value; }
};

#include "simd/vecmath.inl"

template <class T>
inline typename Simd<T>::V Simd<T>::exp(V x) {
  return exp_poly<T>(x);
}
template <class T>
inline typename Simd<T>::V Simd<T>::exp_nonpositive(V x) {
  return exp_nonpositive_poly<T>(x);
}
// log is the float64 one for both types (kernels.hpp: ElementwiseFn).
template <>
inline Simd<double>::V Simd<double>::log(V x) {
  return log_poly(x);
}
