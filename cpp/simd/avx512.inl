// AVX-512 (F/DQ/BW/VL) primitives: 16 float or 8 double lanes, mask registers for tails and
// selects. Included inside the avx512 ISA namespace; the including file is compiled with
// -mavx512f -mavx512dq -mavx512bw -mavx512vl -mfma. No namespace-scope vector constants.

template <class T>
struct Simd;

template <>
struct Simd<float> {
  using V = __m512;
  using M = __mmask16;
  static constexpr int64_t kLanes = 16;
  static constexpr int64_t kMicroRows = 12;
  static constexpr int64_t kMicroVecs = 2;

  static M prefix_mask(int64_t n) {
    return n >= 16 ? static_cast<M>(0xFFFF) : static_cast<M>((1u << (n > 0 ? n : 0)) - 1u);
  }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_partial(const float* p, int64_t n, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), prefix_mask(n), p);
  }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_partial(float* p, V v, int64_t n) { _mm512_mask_storeu_ps(p, prefix_mask(n), v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V abs(V a) { return _mm512_abs_ps(a); }
  static V round(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static M gt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M is_nan(V a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static V select(M m, V if_true, V if_false) { return _mm512_mask_blend_ps(m, if_false, if_true); }
  static V sign(V a) {
    V out = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, zero(), _CMP_GT_OQ), zero(), set1(1.0f));
    out = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, zero(), _CMP_LT_OQ), out, set1(-1.0f));
    return select(is_nan(a), a, out);
  }
  static V pow2(V n) {
    const __m512i biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(biased, 23));
  }
  // v * 2^n in one instruction.
  static V scale2(V v, V n) { return _mm512_scalef_ps(v, n); }
  // v * 2^n for integral n whose result is normal; `shifted` (n + 127 in its low mantissa bits,
  // vecmath.inl's shifter) is not needed here.
  static V scale2_shifted(V v, V n, V) { return _mm512_scalef_ps(v, n); }
  static float reduce_max(V a) { return _mm512_reduce_max_ps(a); }
  static float reduce_add(V a) { return _mm512_reduce_add_ps(a); }
  static V exp(V x);
  static V exp_nonpositive(V x);

  // dst[j * dst_stride + i] = src[i * src_stride + j] for a 16 x 16 block, in registers: pairs
  // of rows interleave, then quadruples, then 128-bit lanes trade places twice.
  static void transpose_square(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
    V r[16], t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * src_stride);
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int g = 0; g < 16; g += 4) {  // r[g + c]: rows g .. g + 3 at column 4 * lane + c
      r[g] = _mm512_shuffle_ps(t[g], t[g + 2], 0x44);
      r[g + 1] = _mm512_shuffle_ps(t[g], t[g + 2], 0xEE);
      r[g + 2] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0x44);
      r[g + 3] = _mm512_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      const V v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);
      const V v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
      const V v2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
      const V v3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
      _mm512_storeu_ps(dst + c * dst_stride, _mm512_shuffle_f32x4(v0, v2, 0x88));
      _mm512_storeu_ps(dst + (4 + c) * dst_stride, _mm512_shuffle_f32x4(v1, v3, 0x88));
      _mm512_storeu_ps(dst + (8 + c) * dst_stride, _mm512_shuffle_f32x4(v0, v2, 0xDD));
      _mm512_storeu_ps(dst + (12 + c) * dst_stride, _mm512_shuffle_f32x4(v1, v3, 0xDD));
    }
  }

  // The lanes as double vectors, exactly: part 0 holds lanes 0-7, part 1 lanes 8-15.
  static constexpr int kWideParts = 2;
  static __m512d widen(V v, int part) {
    return _mm512_cvtps_pd(part == 0 ? _mm512_castps512_ps256(v)
                                     : _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  }

  struct DoubleSum {
    __m512d lo = _mm512_setzero_pd();
    __m512d hi = _mm512_setzero_pd();
  };
  static void accumulate(DoubleSum& acc, V v) {
    acc.lo = _mm512_add_pd(acc.lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    acc.hi = _mm512_add_pd(acc.hi,
                           _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
  }
  static double total(const DoubleSum& acc) { return _mm512_reduce_add_pd(_mm512_add_pd(acc.lo, acc.hi)); }
};

template <>
struct Simd<double> {
  using V = __m512d;
  using M = __mmask8;
  static constexpr int64_t kLanes = 8;
  static constexpr int64_t kMicroRows = 12;
  static constexpr int64_t kMicroVecs = 2;

  static M prefix_mask(int64_t n) {
    return n >= 8 ? static_cast<M>(0xFF) : static_cast<M>((1u << (n > 0 ? n : 0)) - 1u);
  }
  static V zero() { return _mm512_setzero_pd(); }
  static V set1(double x) { return _mm512_set1_pd(x); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V load_partial(const double* p, int64_t n, double fill) {
    return _mm512_mask_loadu_pd(_mm512_set1_pd(fill), prefix_mask(n), p);
  }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static void store_partial(double* p, V v, int64_t n) { _mm512_mask_storeu_pd(p, prefix_mask(n), v); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_pd(a, b, c); }
  static V fma_exact(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V fms_exact(V a, V b, V c) { return _mm512_fmsub_pd(a, b, c); }  // a * b - c, rounded once
  // kLanes floats, widened (exactly).
  static V load_float(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
  // Lanes where a == b and c == d; masks combine with mask_and and all_set.
  static M eq_and(V a, V b, V c, V d) {
    return _mm512_mask_cmp_pd_mask(_mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ), c, d, _CMP_EQ_OQ);
  }
  static M mask_and(M a, M b) { return static_cast<M>(a & b); }
  static bool all_set(M m) { return m == static_cast<M>(0xFF); }
  static constexpr int kWideParts = 1;
  static V widen(V v, int) { return v; }
  static bool any_nonzero(V a) { return _mm512_cmp_pd_mask(a, zero(), _CMP_NEQ_UQ) != 0; }
  static V max(V a, V b) { return _mm512_max_pd(a, b); }
  static V min(V a, V b) { return _mm512_min_pd(a, b); }
  static V abs(V a) { return _mm512_abs_pd(a); }
  // a with its sign flipped where b is negative (-0 included).
  static V xor_sign(V a, V b) { return _mm512_xor_pd(a, _mm512_and_pd(b, set1(-0.0))); }
  static V round(V a) { return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static M gt(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
  static M is_nan(V a) { return _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q); }
  static V select(M m, V if_true, V if_false) { return _mm512_mask_blend_pd(m, if_false, if_true); }
  static V sign(V a) {
    V out = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, zero(), _CMP_GT_OQ), zero(), set1(1.0));
    out = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, zero(), _CMP_LT_OQ), out, set1(-1.0));
    return select(is_nan(a), a, out);
  }
  static V pow2(V n) {
    const __m512i biased = _mm512_add_epi64(_mm512_cvtpd_epi64(n), _mm512_set1_epi64(1023));
    return _mm512_castsi512_pd(_mm512_slli_epi64(biased, 52));
  }
  // v * 2^n in one instruction.
  static V scale2(V v, V n) { return _mm512_scalef_pd(v, n); }
  // v * 2^n for integral n whose result is normal; `shifted` (n + 1023 in its low mantissa bits,
  // vecmath.inl's shifter) is not needed here.
  static V scale2_shifted(V v, V n, V) { return _mm512_scalef_pd(v, n); }
  static double reduce_max(V a) { return _mm512_reduce_max_pd(a); }
  static double reduce_add(V a) { return _mm512_reduce_add_pd(a); }
  static V div(V a, V b) { return _mm512_div_pd(a, b); }
  static M eq(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_EQ_OQ); }
  static M lt(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
  // x = m 2^e with m in [1, 2), for normal positive x.
  static V split_exponent(V x, V* mantissa) {
    *mantissa = _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    return _mm512_getexp_pd(x);
  }
  static V log(V x);
  static V exp(V x);
  static V exp_nonpositive(V x);

  struct DoubleSum {
    __m512d sum = _mm512_setzero_pd();
  };
  static void accumulate(DoubleSum& acc, V v) { acc.sum = _mm512_add_pd(acc.sum, v); }
  static double total(const DoubleSum& acc) { return _mm512_reduce_add_pd(acc.sum); }
};

#include "simd/vecmath.inl"

inline Simd<float>::V Simd<float>::exp(V x) { return exp_poly<float>(x); }
inline Simd<float>::V Simd<float>::exp_nonpositive(V x) { return exp_nonpositive_poly<float>(x); }
inline Simd<double>::V Simd<double>::exp(V x) { return exp_poly<double>(x); }
inline Simd<double>::V Simd<double>::exp_nonpositive(V x) { return exp_nonpositive_poly<double>(x); }
inline Simd<double>::V Simd<double>::log(V x) { return log_poly(x); }
