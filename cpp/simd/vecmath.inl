// Vectorised exp (float, double) and log (double) for the SIMD paths (AVX2, AVX-512, NEON),
// written once over a Simd<T> primitive set (fused multiply-add, select, comparisons, scale2 that
// multiplies by 2^n, scale2_shifted that does so from n's bits in a shifted float, split_exponent
// that takes a number apart). Included inside an ISA namespace after that ISA's Simd<float> and Simd<double>.
//
// Method: n = round(x / ln2) by the shifter: x log2e + kShifter (1.5 2^23 + 127, or 1.5 2^52 +
// 1023) in one fused multiply-add rounds to an integer, whose low mantissa bits hold n + bias, so
// 2^n is those bits shifted into the exponent field; n itself is that sum minus kShifter (exact).
// r = x - n ln2 with ln2 split hi/lo (Cody-Waite), so |r| <= ln2/2 + 2e-6; exp(r) by a
// polynomial in Horner form ending in 1 + r (1 + r (c2 + r (c3 + ...))); times 2^n built in the
// exponent bits.
//
// Results below the smallest normal number flush to 0 instead of becoming denormals: a denormal
// result costs a microcode assist of ~100 cycles per instruction, and the kernels feed exp the
// -inf fill of every partial vector. The losses add these values to sums >= 1, where they vanish.
// float:  a degree-6 minimax polynomial (Remez exchange; relative error 2.6e-8 on the reduced
//         range with its float coefficients). Max error 2 ulp for x in [-87, 88.72]
//         (tests/test_vecmath.py sweeps it against long double). x > 88.7228 gives +inf; x < -87 gives 0 (the
//         true value is below 1.7e-38); NaN gives NaN.
// double: Taylor to degree 13 (truncation < 5e-18 relative on the reduced range). Max error
//         2 ulp for x in [-708, 709.78]; x > 709.78 gives +inf; x < -708 gives 0 (the true value
//         is below 3.3e-308); NaN gives NaN.

template <class T>
struct ExpConstants;

template <>
struct ExpConstants<float> {
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693359375f;
  static constexpr float kLn2Lo = -2.12194440e-4f;
  static constexpr float kOverflow = 88.7228394f;
  static constexpr float kUnderflow = -87.0f;
  static constexpr float kMaxExponent = 127.0f;
  static constexpr float kShifter = 12583039.0f;  // 1.5 * 2^23 + 127
  // c6, c5, ..., c2: exp(r) ~ 1 + r (1 + r (c2 + r (c3 + r (c4 + r (c5 + r c6))))) on |r| <= 0.3467.
  static constexpr int kTerms = 5;
  static constexpr float kPoly[5] = {0.0013170182f, 0.008353571f, 0.04167632f, 0.16666709f, 0.4999999f};
};

template <>
struct ExpConstants<double> {
  static constexpr double kLog2e = 1.4426950408889634074;
  static constexpr double kLn2Hi = 6.93145751953125E-1;
  static constexpr double kLn2Lo = 1.42860682030941723212E-6;
  static constexpr double kOverflow = 709.782712893384;
  static constexpr double kUnderflow = -708.0;
  static constexpr double kMaxExponent = 1023.0;
  static constexpr double kShifter = 6755399441056767.0;  // 1.5 * 2^52 + 1023
  // 1/13!, 1/12!, ..., 1/2!: exp(r) = 1 + r (1 + r (1/2! + r (1/3! + ...))).
  static constexpr int kTerms = 12;
  static constexpr double kPoly[12] = {
      1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
      1.0 / 5040.0,       1.0 / 720.0,       1.0 / 120.0,      1.0 / 24.0,      1.0 / 6.0,      1.0 / 2.0};
};

// exp(r) for the reduced argument: the polynomial in Horner form, its last two steps 1 + r q.
template <class T>
typename Simd<T>::V exp_reduced(typename Simd<T>::V r) {
  using S = Simd<T>;
  using C = ExpConstants<T>;
  typename S::V poly = S::set1(C::kPoly[0]);
  for (int k = 1; k < C::kTerms; ++k) poly = S::fmadd(poly, r, S::set1(C::kPoly[k]));
  poly = S::fmadd(poly, r, S::set1(T(1)));
  return S::fmadd(poly, r, S::set1(T(1)));
}

template <class T>
typename Simd<T>::V exp_poly(typename Simd<T>::V x) {
  using S = Simd<T>;
  using C = ExpConstants<T>;
  using V = typename S::V;
  const V clamped = S::min(S::max(x, S::set1(C::kUnderflow)), S::set1(C::kOverflow));
  const V n = S::sub(S::fmadd(clamped, S::set1(C::kLog2e), S::set1(C::kShifter)), S::set1(C::kShifter));
  V r = S::fnmadd(n, S::set1(C::kLn2Hi), clamped);
  r = S::fnmadd(n, S::set1(C::kLn2Lo), r);
  const V exp_r = exp_reduced<T>(r);
  // n reaches 128 (1024) just below the overflow bound, one past the largest biased exponent:
  // that last factor of 2 is applied separately. Every product here is a normal number.
  const V n_low = S::min(n, S::set1(C::kMaxExponent));
  const V scaled = S::mul(S::scale2(exp_r, n_low), S::add(S::set1(T(1)), S::sub(n, n_low)));
  const V inf = S::set1(HUGE_VAL);
  V result = S::select(S::gt(x, S::set1(C::kOverflow)), inf, scaled);
  result = S::select(S::gt(S::set1(C::kUnderflow), x), S::zero(), result);
  return S::select(S::is_nan(x), x, result);
}

// exp for x <= 0 only, the hot loop of cross-entropy (x - row max): no overflow or NaN
// handling. x < -87 (-708 for double) gives exp(-87) (exp(-708)) instead of the smaller true
// value: an absolute error below 1.7e-38 (3.3e-307), invisible in sums >= 1. Max error 2 ulp on
// [-87, 0] ([-708, 0]), with exp_poly's bits there; the caller routes rows holding NaN or inf to
// exp_poly.
template <class T>
typename Simd<T>::V exp_nonpositive_poly(typename Simd<T>::V x) {
  using S = Simd<T>;
  using C = ExpConstants<T>;
  using V = typename S::V;
  const V clamped = S::max(x, S::set1(C::kUnderflow));
  const V shifted = S::fmadd(clamped, S::set1(C::kLog2e), S::set1(C::kShifter));
  const V n = S::sub(shifted, S::set1(C::kShifter));
  V r = S::fnmadd(n, S::set1(C::kLn2Hi), clamped);
  r = S::fnmadd(n, S::set1(C::kLn2Lo), r);
  return S::scale2_shifted(exp_reduced<T>(r), n, shifted);
}

// exp for finite x <= 0 with exp_poly's bits: exp_nonpositive_poly, whose results equal
// exp_poly's on [kUnderflow, 0], and 0 below, as exp_poly gives. For tiles known to hold no NaN
// or infinity (InfoNCE's logits, shifted by their max).
template <class T>
typename Simd<T>::V exp_nonpositive_finite_poly(typename Simd<T>::V x) {
  using S = Simd<T>;
  return S::select(S::gt(S::set1(ExpConstants<T>::kUnderflow), x), S::zero(), exp_nonpositive_poly<T>(x));
}

// log for double: x = m 2^e with m in [sqrt(1/2), sqrt(2)); log(m) = 2 atanh(s), s = (m-1)/(m+1),
// |s| <= 0.1716, by its odd series to s^23 (truncation < 1e-18 relative); e ln2 is added with
// ln2 split hi/lo. Max error 2 ulp for normal positive x (tests/test_vecmath.py sweeps it); 0 gives
// -inf, +inf gives +inf, negative x and NaN give NaN. Denormal inputs are outside the stated
// range (the losses take logs only of sums >= 1).
inline Simd<double>::V log_poly(Simd<double>::V x) {
  using S = Simd<double>;
  using V = S::V;
  V mantissa;
  V exponent = S::split_exponent(x, &mantissa);  // x = mantissa 2^exponent, mantissa in [1, 2)
  const S::M upper = S::gt(mantissa, S::set1(1.4142135623730951));
  mantissa = S::select(upper, S::mul(mantissa, S::set1(0.5)), mantissa);
  exponent = S::select(upper, S::add(exponent, S::set1(1.0)), exponent);
  const V s = S::div(S::sub(mantissa, S::set1(1.0)), S::add(mantissa, S::set1(1.0)));
  const V z = S::mul(s, s);
  V poly = S::set1(1.0 / 23.0);
  for (int k = 21; k >= 3; k -= 2) poly = S::fmadd(poly, z, S::set1(1.0 / k));
  // 2s + 2s z (1/3 + z/5 + ...): the leading term carries only the division's rounding.
  const V two_s = S::add(s, s);
  const V log_mantissa = S::fmadd(S::mul(two_s, z), poly, two_s);
  const V result = S::fmadd(exponent, S::set1(6.93147180369123816490e-01),
                            S::fmadd(exponent, S::set1(1.90821492927058770002e-10), log_mantissa));
  const V inf = S::set1(HUGE_VAL);
  V out = S::select(S::eq(x, S::zero()), S::sub(S::zero(), inf), result);
  out = S::select(S::lt(x, S::zero()), S::set1(static_cast<double>(NAN)), out);
  out = S::select(S::eq(x, inf), inf, out);
  return S::select(S::is_nan(x), x, out);
}
