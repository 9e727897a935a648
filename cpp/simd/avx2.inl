// AVX2 + FMA primitives: 8 float or 4 double lanes. Included inside the avx2 ISA namespace; the
// including file is compiled with -mavx2 -mfma. No namespace-scope vector constants: every
// constant is built inside a function, so nothing runs at load time on a CPU without AVX2.

template <class T>
struct Simd;

template <>
struct Simd<float> {
  using V = __m256;
  using M = __m256;
  static constexpr int64_t kLanes = 8;
  static constexpr int64_t kMicroRows = 6;
  static constexpr int64_t kMicroVecs = 2;

  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static __m256i prefix_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load_partial(const float* p, int64_t n, float fill) {
    const __m256i mask = prefix_mask(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, mask), _mm256_castsi256_ps(mask));
  }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_partial(float* p, V v, int64_t n) { _mm256_maskstore_ps(p, prefix_mask(n), v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static V round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static M gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M is_nan(V a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static V select(M m, V if_true, V if_false) { return _mm256_blendv_ps(if_false, if_true, m); }
  static V sign(V a) {
    const V one = _mm256_set1_ps(1.0f);
    const V positive = _mm256_and_ps(_mm256_cmp_ps(a, zero(), _CMP_GT_OQ), one);
    const V negative = _mm256_and_ps(_mm256_cmp_ps(a, zero(), _CMP_LT_OQ), one);
    return select(is_nan(a), a, _mm256_sub_ps(positive, negative));
  }
  // 2^n for integral-valued n in [-126, 127] (normal results only).
  static V pow2(V n) {
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  }
  // v * 2^n for integral-valued n in [-126, 127].
  static V scale2(V v, V n) { return _mm256_mul_ps(v, pow2(n)); }
  // The same, with 2^n from `shifted`, whose low mantissa bits hold n + 127 (vecmath.inl's
  // shifter): one shift into the exponent field.
  static V scale2_shifted(V v, V, V shifted) {
    return _mm256_mul_ps(v, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(shifted), 23)));
  }
  static float reduce_max(V a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static float reduce_add(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static V exp(V x);
  static V exp_nonpositive(V x);

  // dst[j * dst_stride + i] = src[i * src_stride + j] for an 8 x 8 block, in registers: pairs of
  // rows interleave, then quadruples, then the 128-bit halves trade places.
  static void transpose_square(const float* src, int64_t src_stride, float* dst, int64_t dst_stride) {
    V r[8], t[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 2
    for (int g = 0; g < 8; g += 4) {  // r[g + c]: rows g .. g + 3 at column 4 * half + c
      r[g] = _mm256_shuffle_ps(t[g], t[g + 2], 0x44);
      r[g + 1] = _mm256_shuffle_ps(t[g], t[g + 2], 0xEE);
      r[g + 2] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0x44);
      r[g + 3] = _mm256_shuffle_ps(t[g + 1], t[g + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) {
      _mm256_storeu_ps(dst + c * dst_stride, _mm256_permute2f128_ps(r[c], r[4 + c], 0x20));
      _mm256_storeu_ps(dst + (4 + c) * dst_stride, _mm256_permute2f128_ps(r[c], r[4 + c], 0x31));
    }
  }

  // The lanes as double vectors, exactly: part 0 holds lanes 0-3, part 1 lanes 4-7.
  static constexpr int kWideParts = 2;
  static __m256d widen(V v, int part) {
    return _mm256_cvtps_pd(part == 0 ? _mm256_castps256_ps128(v) : _mm256_extractf128_ps(v, 1));
  }

  struct DoubleSum {
    __m256d lo = _mm256_setzero_pd();
    __m256d hi = _mm256_setzero_pd();
  };
  static void accumulate(DoubleSum& acc, V v) {
    acc.lo = _mm256_add_pd(acc.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    acc.hi = _mm256_add_pd(acc.hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  static double total(const DoubleSum& acc) {
    const __m256d s = _mm256_add_pd(acc.lo, acc.hi);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }
};

template <>
struct Simd<double> {
  using V = __m256d;
  using M = __m256d;
  static constexpr int64_t kLanes = 4;
  static constexpr int64_t kMicroRows = 6;
  static constexpr int64_t kMicroVecs = 2;

  static V zero() { return _mm256_setzero_pd(); }
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static __m256i prefix_mask(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static V load_partial(const double* p, int64_t n, double fill) {
    const __m256i mask = prefix_mask(n);
    return _mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_maskload_pd(p, mask), _mm256_castsi256_pd(mask));
  }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static void store_partial(double* p, V v, int64_t n) { _mm256_maskstore_pd(p, prefix_mask(n), v); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }
  static V fma_exact(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V fms_exact(V a, V b, V c) { return _mm256_fmsub_pd(a, b, c); }  // a * b - c, rounded once
  // kLanes floats, widened (exactly).
  static V load_float(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
  // Lanes where a == b and c == d; masks combine with mask_and and all_set.
  static M eq_and(V a, V b, V c, V d) {
    return _mm256_and_pd(_mm256_cmp_pd(a, b, _CMP_EQ_OQ), _mm256_cmp_pd(c, d, _CMP_EQ_OQ));
  }
  static M mask_and(M a, M b) { return _mm256_and_pd(a, b); }
  static bool all_set(M m) { return _mm256_movemask_pd(m) == 0xF; }
  static constexpr int kWideParts = 1;
  static V widen(V v, int) { return v; }
  static bool any_nonzero(V a) { return _mm256_movemask_pd(_mm256_cmp_pd(a, zero(), _CMP_NEQ_UQ)) != 0; }
  static V max(V a, V b) { return _mm256_max_pd(a, b); }
  static V min(V a, V b) { return _mm256_min_pd(a, b); }
  static V abs(V a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
  // a with its sign flipped where b is negative (-0 included).
  static V xor_sign(V a, V b) { return _mm256_xor_pd(a, _mm256_and_pd(b, _mm256_set1_pd(-0.0))); }
  static V round(V a) { return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static M gt(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_GT_OQ); }
  static M is_nan(V a) { return _mm256_cmp_pd(a, a, _CMP_UNORD_Q); }
  static V select(M m, V if_true, V if_false) { return _mm256_blendv_pd(if_false, if_true, m); }
  static V sign(V a) {
    const V one = _mm256_set1_pd(1.0);
    const V positive = _mm256_and_pd(_mm256_cmp_pd(a, zero(), _CMP_GT_OQ), one);
    const V negative = _mm256_and_pd(_mm256_cmp_pd(a, zero(), _CMP_LT_OQ), one);
    return select(is_nan(a), a, _mm256_sub_pd(positive, negative));
  }
  // 2^n for integral-valued n in [-1022, 1023] (normal results only): adding 2^52 + 2^51 puts n in the low
  // mantissa bits (AVX2 has no double -> int64 conversion).
  static V pow2(V n) {
    const __m256d magic = _mm256_set1_pd(6755399441055744.0);
    const __m256i bits =
        _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(n, magic)), _mm256_castpd_si256(magic));
    return _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(bits, _mm256_set1_epi64x(1023)), 52));
  }
  // v * 2^n for integral-valued n in [-1022, 1023].
  static V scale2(V v, V n) { return _mm256_mul_pd(v, pow2(n)); }
  // The same, with 2^n from `shifted`, whose low mantissa bits hold n + 1023 (vecmath.inl's
  // shifter): one shift into the exponent field.
  static V scale2_shifted(V v, V, V shifted) {
    return _mm256_mul_pd(v, _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(shifted), 52)));
  }
  static double reduce_max(V a) {
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
  }
  static double reduce_add(V a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static V div(V a, V b) { return _mm256_div_pd(a, b); }
  static M eq(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_EQ_OQ); }
  static M lt(V a, V b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
  // x = m 2^e with m in [1, 2), for normal positive x: e from the exponent field (read as a
  // double by or-ing it under 2^52's bits), m by putting 1's exponent on x's mantissa.
  static V split_exponent(V x, V* mantissa) {
    const __m256i bits = _mm256_castpd_si256(x);
    const __m256d two52 = _mm256_set1_pd(4503599627370496.0);
    const __m256i field = _mm256_srli_epi64(bits, 52);
    const V biased =
        _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(field, _mm256_castpd_si256(two52))), two52);
    *mantissa =
        _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFLL)),
                                            _mm256_set1_epi64x(0x3FF0000000000000LL)));
    return _mm256_sub_pd(biased, _mm256_set1_pd(1023.0));
  }
  static V log(V x);
  static V exp(V x);
  static V exp_nonpositive(V x);

  struct DoubleSum {
    __m256d sum = _mm256_setzero_pd();
  };
  static void accumulate(DoubleSum& acc, V v) { acc.sum = _mm256_add_pd(acc.sum, v); }
  static double total(const DoubleSum& acc) { return reduce_add(acc.sum); }
};

#include "simd/vecmath.inl"

inline Simd<float>::V Simd<float>::exp(V x) { return exp_poly<float>(x); }
inline Simd<float>::V Simd<float>::exp_nonpositive(V x) { return exp_nonpositive_poly<float>(x); }
inline Simd<double>::V Simd<double>::exp(V x) { return exp_poly<double>(x); }
inline Simd<double>::V Simd<double>::exp_nonpositive(V x) { return exp_nonpositive_poly<double>(x); }
inline Simd<double>::V Simd<double>::log(V x) { return log_poly(x); }
