// NEON (AArch64 Advanced SIMD) primitives: 4 float or 2 double lanes. Included inside the neon
// ISA namespace; the including file includes <arm_neon.h>. NEON is part of the AArch64 baseline,
// so no compiler flags and no runtime check are needed.
//
// Two differences from x86 that the kernels would otherwise notice:
// - max/min: vmaxq/vminq propagate NaN, but the kernels rely on x86 maxps/minps semantics: the
//   result is the second operand unless the first compares greater (less), so a NaN in either
//   operand gives the second operand. The running max is always passed second, so NaN lanes are
//   dropped from it. Here max/min are a compare and a bit select, which gives exactly that (also
//   for +-0 and signaling NaNs, unlike vmaxnmq).
// - No masked loads or stores: partial vectors are assembled (written) one lane at a time, so
//   nothing past the n valid elements is ever touched.
// - Loads assume no alignment (inputs may be misaligned NumPy arrays); stores go to the kernels'
//   own buffers and to outputs NumPy allocated, which are aligned.
// AArch64 has 32 vector registers: the 8 x 2 micro-kernel keeps 16 accumulators, 2 key vectors
// and the row broadcasts in registers. NR = 2 * kLanes must divide kKeyTile and kMicroRows must
// divide kQueryBlock (kernels/info_nce.inl).

template <class T>
struct Simd;

template <>
struct Simd<float> {
  using V = float32x4_t;
  using M = uint32x4_t;
  static constexpr int64_t kLanes = 4;
  static constexpr int64_t kMicroRows = 8;
  static constexpr int64_t kMicroVecs = 2;

  static V zero() { return vdupq_n_f32(0.0f); }
  static V set1(float x) { return vdupq_n_f32(x); }
  // Input arrays may be misaligned (kernels/unaligned.inl): vld1q_f32 and vld1q_lane_f32 may
  // assume a float's alignment, a byte load assumes none and is the same single ldr.
  static V load(const float* p) {
    return vreinterpretq_f32_u8(vld1q_u8(reinterpret_cast<const uint8_t*>(p)));
  }
  // Lanes [0, n) from p, the rest `fill`; n <= 0 gives all fill, n >= 4 a full load.
  static V load_partial(const float* p, int64_t n, float fill) {
    if (n >= 4) return load(p);
    V v = vdupq_n_f32(fill);
    if (n > 0) v = vsetq_lane_f32(load_unaligned(p), v, 0);
    if (n > 1) v = vsetq_lane_f32(load_unaligned(p + 1), v, 1);
    if (n > 2) v = vsetq_lane_f32(load_unaligned(p + 2), v, 2);
    return v;
  }
  static void store(float* p, V v) { vst1q_f32(p, v); }
  static void store_partial(float* p, V v, int64_t n) {
    if (n >= 4) {
      vst1q_f32(p, v);
      return;
    }
    if (n > 0) vst1q_lane_f32(p, v, 0);
    if (n > 1) vst1q_lane_f32(p + 1, v, 1);
    if (n > 2) vst1q_lane_f32(p + 2, v, 2);
  }
  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V sub(V a, V b) { return vsubq_f32(a, b); }
  static V mul(V a, V b) { return vmulq_f32(a, b); }
  static V fmadd(V a, V b, V c) { return vfmaq_f32(c, a, b); }   // a * b + c, fused
  static V fnmadd(V a, V b, V c) { return vfmsq_f32(c, a, b); }  // c - a * b, fused
  // x86 semantics (see the top): b unless a > b (a < b); NaN in either gives b.
  static V max(V a, V b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
  static V min(V a, V b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
  static V abs(V a) { return vabsq_f32(a); }
  static V round(V a) { return vrndnq_f32(a); }  // to nearest, ties to even
  static M gt(V a, V b) { return vcgtq_f32(a, b); }
  static M is_nan(V a) { return vmvnq_u32(vceqq_f32(a, a)); }
  static V select(M m, V if_true, V if_false) { return vbslq_f32(m, if_true, if_false); }
  // sign(a) with sign(+-0) = +0 (SPEC: the MAE gradient at pred == target is +0.0) and NaN kept.
  static V sign(V a) {
    const V z = zero();
    return vbslq_f32(vcgtq_f32(a, z), set1(1.0f),
                     vbslq_f32(vcltq_f32(a, z), set1(-1.0f), vbslq_f32(vceqq_f32(a, z), z, a)));
  }
  // 2^n for integral-valued n in [-126, 127] (normal results only).
  static V pow2(V n) {
    const int32x4_t biased = vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127));
    return vreinterpretq_f32_s32(vshlq_n_s32(biased, 23));
  }
  // v * 2^n for integral-valued n in [-126, 127].
  static V scale2(V v, V n) { return vmulq_f32(v, pow2(n)); }
  // The same, with 2^n from `shifted`, whose low mantissa bits hold n + 127 (vecmath.inl's
  // shifter): one shift into the exponent field.
  static V scale2_shifted(V v, V, V shifted) {
    return vmulq_f32(v, vreinterpretq_f32_u32(vshlq_n_u32(vreinterpretq_u32_f32(shifted), 23)));
  }
  // Across-lane max; a NaN lane gives NaN (the kernels reduce only NaN-free running maxima).
  static float reduce_max(V a) { return vmaxvq_f32(a); }
  static float reduce_add(V a) { return vaddvq_f32(a); }
  static V exp(V x);
  static V exp_nonpositive(V x);

  // The lanes as double vectors, exactly: part 0 holds lanes 0-1, part 1 lanes 2-3.
  static constexpr int kWideParts = 2;
  static float64x2_t widen(V v, int part) {
    return part == 0 ? vcvt_f64_f32(vget_low_f32(v)) : vcvt_high_f64_f32(v);
  }

  struct DoubleSum {
    float64x2_t lo = vdupq_n_f64(0.0);
    float64x2_t hi = vdupq_n_f64(0.0);
  };
  static void accumulate(DoubleSum& acc, V v) {
    acc.lo = vaddq_f64(acc.lo, vcvt_f64_f32(vget_low_f32(v)));
    acc.hi = vaddq_f64(acc.hi, vcvt_high_f64_f32(v));
  }
  static double total(const DoubleSum& acc) { return vaddvq_f64(vaddq_f64(acc.lo, acc.hi)); }
};

template <>
struct Simd<double> {
  using V = float64x2_t;
  using M = uint64x2_t;
  static constexpr int64_t kLanes = 2;
  static constexpr int64_t kMicroRows = 8;
  static constexpr int64_t kMicroVecs = 2;

  static V zero() { return vdupq_n_f64(0.0); }
  static V set1(double x) { return vdupq_n_f64(x); }
  // Misaligned inputs: as Simd<float>::load.
  static V load(const double* p) {
    return vreinterpretq_f64_u8(vld1q_u8(reinterpret_cast<const uint8_t*>(p)));
  }
  static V load_partial(const double* p, int64_t n, double fill) {
    if (n >= 2) return load(p);
    V v = vdupq_n_f64(fill);
    if (n > 0) v = vsetq_lane_f64(load_unaligned(p), v, 0);
    return v;
  }
  static void store(double* p, V v) { vst1q_f64(p, v); }
  static void store_partial(double* p, V v, int64_t n) {
    if (n >= 2) {
      vst1q_f64(p, v);
      return;
    }
    if (n > 0) vst1q_lane_f64(p, v, 0);
  }
  static V add(V a, V b) { return vaddq_f64(a, b); }
  static V sub(V a, V b) { return vsubq_f64(a, b); }
  static V mul(V a, V b) { return vmulq_f64(a, b); }
  static V fmadd(V a, V b, V c) { return vfmaq_f64(c, a, b); }   // a * b + c, fused
  static V fnmadd(V a, V b, V c) { return vfmsq_f64(c, a, b); }  // c - a * b, fused
  static V fma_exact(V a, V b, V c) { return vfmaq_f64(c, a, b); }
  static V fms_exact(V a, V b, V c) { return vfmaq_f64(vnegq_f64(c), a, b); }  // a * b - c, rounded once
  // kLanes floats, widened (exactly).
  static V load_float(const float* p) { return vcvt_f64_f32(vld1_f32(p)); }
  // Lanes where a == b and c == d; masks combine with mask_and and all_set.
  static M eq_and(V a, V b, V c, V d) { return vandq_u64(vceqq_f64(a, b), vceqq_f64(c, d)); }
  static M mask_and(M a, M b) { return vandq_u64(a, b); }
  static bool all_set(M m) { return (vgetq_lane_u64(m, 0) & vgetq_lane_u64(m, 1)) == ~uint64_t{0}; }
  static constexpr int kWideParts = 1;
  static V widen(V v, int) { return v; }
  static bool any_nonzero(V a) {
    const uint64x2_t zero_lanes = vceqzq_f64(a);  // NaN is not zero
    return (vgetq_lane_u64(zero_lanes, 0) & vgetq_lane_u64(zero_lanes, 1)) == 0;
  }
  // x86 semantics (see the top): b unless a > b (a < b); NaN in either gives b.
  static V max(V a, V b) { return vbslq_f64(vcgtq_f64(a, b), a, b); }
  static V min(V a, V b) { return vbslq_f64(vcltq_f64(a, b), a, b); }
  static V abs(V a) { return vabsq_f64(a); }
  // a with its sign flipped where b is negative (-0 included).
  static V xor_sign(V a, V b) {
    const uint64x2_t sign = vandq_u64(vreinterpretq_u64_f64(b), vdupq_n_u64(uint64_t{1} << 63));
    return vreinterpretq_f64_u64(veorq_u64(vreinterpretq_u64_f64(a), sign));
  }
  static V round(V a) { return vrndnq_f64(a); }  // to nearest, ties to even
  static M gt(V a, V b) { return vcgtq_f64(a, b); }
  static M is_nan(V a) { return vreinterpretq_u64_u32(vmvnq_u32(vreinterpretq_u32_u64(vceqq_f64(a, a)))); }
  static V select(M m, V if_true, V if_false) { return vbslq_f64(m, if_true, if_false); }
  // sign(a) with sign(+-0) = +0 (SPEC: the MAE gradient at pred == target is +0.0) and NaN kept.
  static V sign(V a) {
    const V z = zero();
    return vbslq_f64(vcgtq_f64(a, z), set1(1.0),
                     vbslq_f64(vcltq_f64(a, z), set1(-1.0), vbslq_f64(vceqq_f64(a, z), z, a)));
  }
  // 2^n for integral-valued n in [-1022, 1023] (normal results only).
  static V pow2(V n) {
    const int64x2_t biased = vaddq_s64(vcvtnq_s64_f64(n), vdupq_n_s64(1023));
    return vreinterpretq_f64_s64(vshlq_n_s64(biased, 52));
  }
  // v * 2^n for integral-valued n in [-1022, 1023].
  static V scale2(V v, V n) { return vmulq_f64(v, pow2(n)); }
  // The same, with 2^n from `shifted`, whose low mantissa bits hold n + 1023 (vecmath.inl's
  // shifter): one shift into the exponent field.
  static V scale2_shifted(V v, V, V shifted) {
    return vmulq_f64(v, vreinterpretq_f64_u64(vshlq_n_u64(vreinterpretq_u64_f64(shifted), 52)));
  }
  // Across-lane max; a NaN lane gives NaN (the kernels reduce only NaN-free running maxima).
  static double reduce_max(V a) { return vmaxvq_f64(a); }
  static double reduce_add(V a) { return vaddvq_f64(a); }
  static V div(V a, V b) { return vdivq_f64(a, b); }
  static M eq(V a, V b) { return vceqq_f64(a, b); }
  static M lt(V a, V b) { return vcltq_f64(a, b); }
  // x = m 2^e with m in [1, 2), for normal positive x: e from the exponent field (converted
  // straight from u64), m by putting 1's exponent on x's mantissa.
  static V split_exponent(V x, V* mantissa) {
    const uint64x2_t bits = vreinterpretq_u64_f64(x);
    *mantissa = vreinterpretq_f64_u64(
        vorrq_u64(vandq_u64(bits, vdupq_n_u64(0x000FFFFFFFFFFFFFull)), vdupq_n_u64(0x3FF0000000000000ull)));
    return vsubq_f64(vcvtq_f64_u64(vshrq_n_u64(bits, 52)), vdupq_n_f64(1023.0));
  }
  static V log(V x);
  static V exp(V x);
  static V exp_nonpositive(V x);

  struct DoubleSum {
    float64x2_t sum = vdupq_n_f64(0.0);
  };
  static void accumulate(DoubleSum& acc, V v) { acc.sum = vaddq_f64(acc.sum, v); }
  static double total(const DoubleSum& acc) { return vaddvq_f64(acc.sum); }
};

#include "simd/vecmath.inl"

inline Simd<float>::V Simd<float>::exp(V x) { return exp_poly<float>(x); }
inline Simd<float>::V Simd<float>::exp_nonpositive(V x) { return exp_nonpositive_poly<float>(x); }
inline Simd<double>::V Simd<double>::exp(V x) { return exp_poly<double>(x); }
inline Simd<double>::V Simd<double>::exp_nonpositive(V x) { return exp_nonpositive_poly<double>(x); }
inline Simd<double>::V Simd<double>::log(V x) { return log_poly(x); }
