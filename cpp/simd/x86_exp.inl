// Vectorised exp for the x86 SIMD paths, written once over a Simd<T> primitive set (round,
// select, comparisons, and pow2 that builds 2^n from an integral-valued vector by bit shifts).
// Included inside an ISA namespace after that ISA's Simd<float> and Simd<double>.
//
// Method: n = round(x / ln2); r = x - n ln2 with ln2 split hi/lo (Cody-Waite), so r lies in
// [-ln2/2, ln2/2] exactly; exp(r) by a polynomial; times 2^n built in the exponent bits.
//
// float:  Cephes' degree-7 minimax form 1 + r + r^2 P(r). Max error 2 ulp on [-87.3, 88.72]
//         (tests/test_vecmath.py sweeps it against float64). x > 88.7228 gives +inf; x < -87.3
//         may give 0 where the true value is a denormal (absolute error < 1.2e-38); NaN -> NaN.
// double: Taylor to degree 13 (truncation < 5e-18 relative on the reduced range). Max error
//         2 ulp on [-708.3, 709.78]; x > 709.78 gives +inf; x < -708.3 may give 0 (absolute
//         error < 2.3e-308); NaN -> NaN.

template <class T>
struct ExpConstants;

template <>
struct ExpConstants<float> {
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693359375f;
  static constexpr float kLn2Lo = -2.12194440e-4f;
  static constexpr float kOverflow = 88.7228394f;
  static constexpr float kUnderflow = -87.5f;
  static constexpr int kDegree = 5;
  static constexpr float kPoly[6] = {1.9875691500E-4f, 1.3981999507E-3f, 8.3334519073E-3f,
                                     4.1665795894E-2f, 1.6666665459E-1f, 5.0000001201E-1f};
};

template <>
struct ExpConstants<double> {
  static constexpr double kLog2e = 1.4426950408889634074;
  static constexpr double kLn2Hi = 6.93145751953125E-1;
  static constexpr double kLn2Lo = 1.42860682030941723212E-6;
  static constexpr double kOverflow = 709.782712893384;
  static constexpr double kUnderflow = -708.5;
  static constexpr int kDegree = 11;
  // 1/13!, 1/12!, ..., 1/2!: exp(r) = 1 + r + r^2 (1/2! + r/3! + ...).
  static constexpr double kPoly[12] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0,
                                       1.0 / 3628800.0,    1.0 / 362880.0,    1.0 / 40320.0,
                                       1.0 / 5040.0,       1.0 / 720.0,       1.0 / 120.0,
                                       1.0 / 24.0,         1.0 / 6.0,         1.0 / 2.0};
};

template <class T>
typename Simd<T>::V exp_poly(typename Simd<T>::V x) {
  using S = Simd<T>;
  using C = ExpConstants<T>;
  using V = typename S::V;
  const V clamped = S::min(S::max(x, S::set1(C::kUnderflow)), S::set1(C::kOverflow));
  const V n = S::round(S::mul(clamped, S::set1(C::kLog2e)));
  V r = S::fnmadd(n, S::set1(C::kLn2Hi), clamped);
  r = S::fnmadd(n, S::set1(C::kLn2Lo), r);
  V poly = S::set1(C::kPoly[0]);
  for (int k = 1; k <= C::kDegree; ++k) poly = S::fmadd(poly, r, S::set1(C::kPoly[k]));
  const V r2 = S::mul(r, r);
  const V exp_r = S::add(S::fmadd(poly, r2, r), S::set1(T(1)));
  // 2^n = 2 * 2^(n-1): n - 1 keeps the biased exponent in range at n = 128 (1024 for double);
  // at the bottom, 2^(n-1) with a zero exponent field reads as 0, the flush the header states.
  const V scaled = S::mul(S::mul(exp_r, S::set1(T(2))), S::pow2(S::sub(n, S::set1(T(1)))));
  const V inf = S::set1(__builtin_huge_val());
  V result = S::select(S::gt(x, S::set1(C::kOverflow)), inf, scaled);
  return S::select(S::is_nan(x), x, result);
}
