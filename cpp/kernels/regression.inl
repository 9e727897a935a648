
// MSE and MAE: the element losses (p - t)^2 and |p - t| over a strided 2-D view, optionally
// weighted per row, optionally written out, always summed. Included inside an ISA namespace.

// Elements per reduction block: large enough to amortise the per-block bookkeeping, small enough
// that 2 threads get many blocks on mid-sized inputs.
constexpr int64_t kRegressionBlock = 1 << 14;

// How far ahead the one-call pass asks for its inputs (every cache line of each stream, the
// gradient's for writing). Its arithmetic (about 17 vector operations per 8 elements) fills the
// out-of-order window, so without it the loads from memory start too late to overlap: Intel Xeon
// (AVX-512), 1 thread, 2^24 float32 elements, one line in two prefetched: 0.73 ns per element with
// none, 0.50 at 4 KiB, 0.40 at 8 KiB, 0.48 at 16 KiB; every line at 8 KiB: mse_large 6.85 ms against
// 7.60 for the plain float sum before exact sums (bench/exact_budget.py).
constexpr uintptr_t kRegressionPrefetchBytes = 8192;

template <class T, RegressionKind Kind>
inline T element_loss(T p, T t) {
  const T d = p - t;
  if constexpr (Kind == RegressionKind::squared) {
    return d * d;
  } else {
    return d < T(0) ? -d : d;  // NaN falls through unchanged
  }
}

// d e / d p: 2 (p - t) or sign(p - t), with sign(+-0) = +0 (SPEC: the MAE gradient at pred ==
// target is +0.0; -0 - +0 is -0) and NaN kept.
template <class T, RegressionKind Kind>
inline T element_grad(T p, T t) {
  const T d = p - t;
  if constexpr (Kind == RegressionKind::squared) {
    return d + d;
  } else {
    return d > T(0) ? T(1) : (d < T(0) ? T(-1) : (d == d ? T(0) : d));
  }
}

// factor * d e / d p in T. The factor (grad_scale times a sample weight) is a double that may
// exceed T's range (a float32 gradient with a weight of 1e308): the product is then taken in
// double, so that a zero element gradient stays 0 (never inf * 0 = NaN) and any other overflows
// to +-inf, as the exact product does.
template <class T, RegressionKind Kind>
inline T scaled_element_grad(double factor, T p, T t) {
  return static_cast<T>(factor * static_cast<double>(element_grad<T, Kind>(p, t)));
}

template <class T>
inline bool fits(double factor) {
  return std::isfinite(static_cast<T>(factor)) || !std::isfinite(factor);
}

template <class T, RegressionKind Kind>
inline typename Simd<T>::V element_loss_vec(typename Simd<T>::V p, typename Simd<T>::V t) {
  using S = Simd<T>;
  const typename S::V d = S::sub(p, t);
  if constexpr (Kind == RegressionKind::squared) {
    return S::mul(d, d);
  } else {
    return S::abs(d);
  }
}

template <class T, RegressionKind Kind>
inline typename Simd<T>::V element_grad_vec(typename Simd<T>::V p, typename Simd<T>::V t) {
  using S = Simd<T>;
  const typename S::V d = S::sub(p, t);
  if constexpr (Kind == RegressionKind::squared) {
    return S::add(d, d);
  } else {
    return S::sign(d);
  }
}

// Adds the exact element loss of (p, t) (times w) to `sum` (an ExactSumState or a CompensatedSum)
// as a sum of double terms: for float32 inputs the true (p - t)^2 or |p - t| (the difference as
// d + d_lo, exact by TwoSum; the squares by fused multiply-adds), for float64 inputs the exact
// square or magnitude of the rounded difference. Infinities and NaN are added as themselves, so
// the sum counts them.
template <class T, RegressionKind Kind, class Sum>
inline void exact_sum_add_element(Sum& sum, T p, T t, bool weighted, double w) {
  const double a = static_cast<double>(p);
  const double b = static_cast<double>(t);
  const double d = a - b;
  double d_lo = 0.0;
  if constexpr (sizeof(T) == sizeof(float)) {
    if (std::isfinite(d)) {
      const double b_part = a - d;  // TwoSum of a and -b
      d_lo = (a - (d + b_part)) + (b_part - b);
    }
  }
  if constexpr (Kind == RegressionKind::squared) {
    const double e = d * d;
    exact_sum_add_term(sum, e, weighted, w);
    if (!std::isfinite(e)) return;
    exact_sum_add_term(sum, std::fma(d, d, -e), weighted, w);
    if (d_lo != 0.0) {  // (d + d_lo)^2 = d^2 + 2 d d_lo + d_lo^2, each product as two terms
      const double cross = d * d_lo;
      exact_sum_add_term(sum, 2.0 * cross, weighted, w);
      exact_sum_add_term(sum, 2.0 * std::fma(d, d_lo, -cross), weighted, w);
      const double low = d_lo * d_lo;
      exact_sum_add_term(sum, low, weighted, w);
      exact_sum_add_term(sum, std::fma(d_lo, d_lo, -low), weighted, w);
    }
  } else {
    const bool negative = d < 0.0 || (d == 0.0 && d_lo < 0.0);
    exact_sum_add_term(sum, negative ? -d : d, weighted, w);
    if (d_lo != 0.0) exact_sum_add_term(sum, negative ? -d_lo : d_lo, weighted, w);
  }
}

// The exact sums' vector state in regression_contiguous: two expansions for the leading terms
// (alternate vectors, so that two TwoSum chains overlap) and one for the rounding errors (about
// 2^-53 of them: mixed with the leading terms they would leave a residual, and a spill, at
// almost every step). Plain locals of the caller, so that they stay in registers.
struct RegressionLanes {
  ExactV high[2][2];
  ExactV low[2];
};

// The vector form of exact_sum_add_element for lanes of double p and t (widened from T), into
// chain `c` of the leading terms: false, adding nothing, where a float32 difference is not exact
// in double (exponents more than 29 apart) or not finite, which the caller then adds lane by lane.
template <class T, RegressionKind Kind, int c>
FASTLOSS_ALWAYS_INLINE inline bool add_element_lanes(RegressionLanes& lanes, ExactV p, ExactV t,
                                                     bool weighted, ExactV w, ExactSumState* spill) {
  using SD = Simd<double>;
  const ExactV d = SD::sub(p, t);
  if constexpr (sizeof(T) == sizeof(float)) {
    const ExactV t_part = SD::sub(p, d);  // TwoSum of p and -t: zero error iff d is exact
    const ExactV error = SD::add(SD::sub(p, SD::add(d, t_part)), SD::sub(t_part, t));
    if (SD::any_nonzero(error)) return false;  // NaN (from inf or NaN inputs) is nonzero too
  }
  ExactV& high0 = lanes.high[c][0];
  ExactV& high1 = lanes.high[c][1];
  if constexpr (Kind == RegressionKind::squared) {
    const ExactV e = SD::mul(d, d);
    const ExactV e_lo = SD::fma_exact(d, d, SD::sub(SD::zero(), e));
    if (weighted) {
      exact_lanes_add_product(high0, high1, lanes.low[0], lanes.low[1], e, w, spill);
      exact_lanes_add_product(lanes.low[0], lanes.low[1], lanes.low[0], lanes.low[1], e_lo, w, spill);
    } else {
      exact_lanes_add(high0, high1, e, spill);
      exact_lanes_add(lanes.low[0], lanes.low[1], e_lo, spill);
    }
  } else {
    const ExactV e = SD::abs(d);
    if (weighted) {
      exact_lanes_add_product(high0, high1, lanes.low[0], lanes.low[1], e, w, spill);
    } else {
      exact_lanes_add(high0, high1, e, spill);
    }
  }
  return true;
}

// One vector of T (kWideParts double vectors) of (p, t) at j, n valid lanes, into chain `c`.
template <class T, RegressionKind Kind, int c>
FASTLOSS_ALWAYS_INLINE inline void add_vector_lanes(RegressionLanes& lanes, typename Simd<T>::V pv,
                                                    typename Simd<T>::V tv, const T* p, const T* t, int64_t n,
                                                    bool weighted, double weight, ExactV weight_vec,
                                                    ExactSumState* sum) {
  using S = Simd<T>;
  constexpr int64_t kPartLanes = Simd<double>::kLanes;
  // The lanes of a part whose difference is not exact, one by one.
  auto one_by_one = [&](int64_t first) {
    for (int64_t k = first; k < first + kPartLanes && k < n; ++k) {
      exact_sum_add_element<T, Kind>(*sum, load_unaligned(p + k), load_unaligned(t + k), weighted, weight);
    }
  };
  if (!add_element_lanes<T, Kind, c>(lanes, S::widen(pv, 0), S::widen(tv, 0), weighted, weight_vec, sum)) {
    one_by_one(0);
  }
  if constexpr (S::kWideParts == 2) {
    if (!add_element_lanes<T, Kind, c>(lanes, S::widen(pv, 1), S::widen(tv, 1), weighted, weight_vec, sum)) {
      one_by_one(kPartLanes);
    }
  }
}

// The element losses (times the weight) and scaled gradients of one vector, when asked for.
template <class T, RegressionKind Kind>
FASTLOSS_ALWAYS_INLINE inline void store_vector(typename Simd<T>::V pv, typename Simd<T>::V tv, const T* p,
                                                const T* t, int64_t n, bool weighted,
                                                typename Simd<T>::V out_scale, bool out_scale_fits,
                                                double out_scale_double, typename Simd<T>::V grad_factor,
                                                bool grad_factor_fits, double grad_factor_double, T* o,
                                                T* g) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  const V e = element_loss_vec<T, Kind>(pv, tv);
  if (o != nullptr && (!weighted || out_scale_fits)) {
    const V out = weighted ? S::mul(e, out_scale) : e;
    if (n == L)
      S::store(o, out);
    else
      S::store_partial(o, out, n);
  } else if (o != nullptr) {
    // A weight beyond T's range (1e308 on float32): the product in double, as for the gradient,
    // so that a zero loss stays 0 rather than inf * 0 = NaN.
    T losses[L];
    S::store(losses, e);
    for (int64_t k = 0; k < n; ++k) o[k] = static_cast<T>(out_scale_double * static_cast<double>(losses[k]));
  }
  if (g != nullptr && grad_factor_fits) {
    const V grad = S::mul(grad_factor, element_grad_vec<T, Kind>(pv, tv));
    if (n == L)
      S::store(g, grad);
    else
      S::store_partial(g, grad, n);
  } else if (g != nullptr) {
    for (int64_t k = 0; k < n; ++k) {
      g[k] = scaled_element_grad<T, Kind>(grad_factor_double, load_unaligned(p + k), load_unaligned(t + k));
    }
  }
}

// The unit-stride case, one pass at memory speed: lanes of element losses in double go into the
// exact sum's vector front (kernels/exact_lanes.inl), and the loss and gradient stores ride
// along when asked for. Terms TwoSum cannot carry (inf, NaN, a sum beyond the double range) are
// redone one by one into *sum.
template <class T, RegressionKind Kind>
void regression_contiguous(const T* p, const T* t, int64_t count, double weight, bool weighted, T* o, T* g,
                           double grad_scale, ExactSumState* sum) {
  using S = Simd<T>;
  using SD = Simd<double>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  const V out_scale = S::set1(static_cast<T>(weight));
  const bool out_scale_fits = fits<T>(weight);
  const V grad_factor = S::set1(static_cast<T>(grad_scale * weight));
  const bool grad_factor_fits = fits<T>(grad_scale * weight);
  const bool stores = o != nullptr || g != nullptr;
  const ExactV weight_vec = SD::set1(weight);
  const ExactSumState before = *sum;
  RegressionLanes lanes;
  lanes.high[0][0] = lanes.high[0][1] = lanes.high[1][0] = lanes.high[1][1] = SD::zero();
  lanes.low[0] = lanes.low[1] = SD::zero();
  int64_t j = 0;
  for (; j + 2 * L <= count; j += 2 * L) {
    const V p0 = S::load(p + j), t0 = S::load(t + j);
    const V p1 = S::load(p + j + L), t1 = S::load(t + j + L);
    add_vector_lanes<T, Kind, 0>(lanes, p0, t0, p + j, t + j, L, weighted, weight, weight_vec, sum);
    add_vector_lanes<T, Kind, 1>(lanes, p1, t1, p + j + L, t + j + L, L, weighted, weight, weight_vec, sum);
    if (stores) {
      store_vector<T, Kind>(p0, t0, p + j, t + j, L, weighted, out_scale, out_scale_fits, weight, grad_factor,
                            grad_factor_fits, grad_scale * weight, o ? o + j : nullptr, g ? g + j : nullptr);
      store_vector<T, Kind>(p1, t1, p + j + L, t + j + L, L, weighted, out_scale, out_scale_fits, weight,
                            grad_factor, grad_factor_fits, grad_scale * weight, o ? o + j + L : nullptr,
                            g ? g + j + L : nullptr);
    }
  }
  for (; j < count; j += L) {
    const int64_t n = count - j < L ? count - j : L;
    // Zero-filled tails give zero losses.
    const V pv = S::load_partial(p + j, n, T(0)), tv = S::load_partial(t + j, n, T(0));
    add_vector_lanes<T, Kind, 0>(lanes, pv, tv, p + j, t + j, n, weighted, weight, weight_vec, sum);
    if (stores) {
      store_vector<T, Kind>(pv, tv, p + j, t + j, n, weighted, out_scale, out_scale_fits, weight, grad_factor,
                            grad_factor_fits, grad_scale * weight, o ? o + j : nullptr, g ? g + j : nullptr);
    }
  }
  bool finite = exact_lanes_finish(lanes.high[0][0], lanes.high[0][1], sum);
  finite = exact_lanes_finish(lanes.high[1][0], lanes.high[1][1], sum) && finite;
  finite = exact_lanes_finish(lanes.low[0], lanes.low[1], sum) && finite;
  if (finite) return;
  *sum = before;
  for (int64_t k = 0; k < count; ++k) {
    exact_sum_add_element<T, Kind>(*sum, load_unaligned(p + k), load_unaligned(t + k), weighted, weight);
  }
}

// The one-call pass (SumMode::rounded), after the accurate summation of Ogita, Rump and Oishi
// (Sum2) with an a-posteriori bound: every element's leading term goes through an error-free
// addition into a chain of `high` lanes, and what that leaves and the squares' low halves (one
// fused multiply-add, exact) go into `low` lanes with plain additions, whose rounding errors the
// bound covers. Under half the operations of the exact expansions, and the settled state is the
// same correctly rounded sum (exact_sum_settle). One chain per double vector of an iteration, so
// that the chains' latencies overlap.
template <class T>
struct RoundedLanes {
  static constexpr int kChains = 2 * Simd<T>::kWideParts;
  ExactV high[kChains];
  ExactV low[kChains];
};

// Adds the element loss of lanes of the difference d (exact for float32 inputs; the rounded one,
// as the exact path has it, for float64) to chain `c`, unweighted. Terms are nonnegative, which
// the bound in rounded_lanes_finish relies on.
template <class T, RegressionKind Kind, int c>
FASTLOSS_ALWAYS_INLINE inline void add_difference_rounded(RoundedLanes<T>& lanes, ExactV d) {
  using SD = Simd<double>;
  ExactV& high = lanes.high[c];
  if constexpr (Kind == RegressionKind::squared) {
    // TwoSum of high and e = d * d, whose error (high - (sum - b_part)) + (e - b_part) joins the
    // square's low half d * d - e: together (high - (sum - b_part)) + (d * d - b_part), the first
    // exact, the second one fused multiply-add (of a value below 4 2^-53 sum: the bound's).
    const ExactV e = SD::mul(d, d);
    const ExactV sum = SD::add(high, e);
    const ExactV b_part = SD::sub(sum, high);
    const ExactV a_error = SD::sub(high, SD::sub(sum, b_part));
    high = sum;
    lanes.low[c] = SD::add(lanes.low[c], SD::add(a_error, SD::fms_exact(d, d, b_part)));
  } else {
    const ExactV e = SD::abs(d);
    const ExactV sum = SD::add(high, e);
    const ExactV b_part = SD::sub(sum, high);
    const ExactV error = SD::add(SD::sub(high, SD::sub(sum, b_part)), SD::sub(e, b_part));
    high = sum;
    lanes.low[c] = SD::add(lanes.low[c], error);
  }
}

// The difference of SD::kLanes elements at p and t, and whether it is exact in every lane (float32:
// TwoSum's error of p and -t is zero, i.e. d + t == p and p - d == t; false for inf and NaN too).
template <class T>
FASTLOSS_ALWAYS_INLINE inline ExactV difference_lanes(const T* p, const T* t,
                                                      typename Simd<double>::M* exact) {
  using SD = Simd<double>;
  if constexpr (sizeof(T) == sizeof(float)) {
    const ExactV pd = SD::load_float(p), td = SD::load_float(t);
    const ExactV d = SD::sub(pd, td);
    *exact = SD::mask_and(*exact, SD::eq_and(SD::add(d, td), pd, SD::sub(pd, d), td));
    return d;
  } else {
    return SD::sub(SD::load(p), SD::load(t));
  }
}

// 2 * Simd<T>::kLanes elements at p and t into the chains; false, adding nothing, where a float32
// difference is not exact (exponents more than 29 apart, inf, NaN): the caller adds those exactly.
template <class T, RegressionKind Kind>
FASTLOSS_ALWAYS_INLINE inline bool add_iteration_rounded(RoundedLanes<T>& lanes, const T* p, const T* t) {
  using SD = Simd<double>;
  constexpr int64_t K = SD::kLanes;
  typename SD::M exact = SD::eq_and(SD::zero(), SD::zero(), SD::zero(), SD::zero());
  const ExactV d0 = difference_lanes<T>(p, t, &exact);
  const ExactV d1 = difference_lanes<T>(p + K, t + K, &exact);
  if constexpr (RoundedLanes<T>::kChains == 4) {
    const ExactV d2 = difference_lanes<T>(p + 2 * K, t + 2 * K, &exact);
    const ExactV d3 = difference_lanes<T>(p + 3 * K, t + 3 * K, &exact);
    if (sizeof(T) == sizeof(float) && !SD::all_set(exact)) return false;
    add_difference_rounded<T, Kind, 2>(lanes, d2);
    add_difference_rounded<T, Kind, 3>(lanes, d3);
  } else {
    if (sizeof(T) == sizeof(float) && !SD::all_set(exact)) return false;
  }
  add_difference_rounded<T, Kind, 0>(lanes, d0);
  add_difference_rounded<T, Kind, 1>(lanes, d1);
  return true;
}

// Moves the lanes, times w, into *sum and their error bound into sum->error_bound; false (adding
// nothing) if a lane is not finite (an inf or NaN term, or a sum beyond the double range), which
// the caller then adds exactly. `per_lane` bounds the elements any one lane took. Unweighted lanes
// are first folded into one pair of vectors, so that a quarter as many terms reach *sum.
template <class T, class Sum>
bool rounded_lanes_finish(const RoundedLanes<T>& lanes, int64_t per_lane, bool weighted, double w, Sum* sum) {
  using SD = Simd<double>;
  constexpr int kChains = RoundedLanes<T>::kChains;
  constexpr int64_t kLanes = SD::kLanes;
  // x - x is 0 for finite x and NaN for inf and NaN: one test for every lane.
  ExactV probe = SD::zero();
  ExactV high_sum = SD::zero();
  for (int c = 0; c < kChains; ++c) {
    probe =
        SD::add(probe, SD::add(SD::sub(lanes.high[c], lanes.high[c]), SD::sub(lanes.low[c], lanes.low[c])));
    high_sum = SD::add(high_sum, lanes.high[c]);
  }
  if (SD::any_nonzero(probe)) return false;
  const double high_total = SD::reduce_add(high_sum);  // in any order: the bound has the margin
  // Per lane of m elements, with T the exact sum of its leading terms (nonnegative, so every
  // partial sum is at most T and high >= T / 2): each element adds to its low lane one value of
  // at most 4 2^-53 T (TwoSum's error and the square's low half), formed with at most one
  // rounding, so the low lane stays below about 4 m 2^-53 T and each of its additions errs by at
  // most 2^-53 of that: the lane's error is below 8 (m + 1)^2 2^-106 T <= 16 (m + 1)^2 2^-106 high.
  // 128 (m + 16)^2 2^-106 times the high lanes' total covers it with margin (and the low lanes' own
  // rounding in the weighted case, below).
  const double m = static_cast<double>(per_lane + 16);
  double bound = 128.0 * m * m * 0x1p-106 * high_total;
  if (!weighted) {
    // The chains' fold: TwoSum carries the high lanes' sum exactly (top plus the errors); the low
    // lanes and those errors are added plainly into `rest`, each addition erring by at most 2^-53
    // of its result, whose magnitudes `spread` adds up (2^-52 of its rounded total covers them).
    ExactV top = lanes.high[0];
    ExactV rest = lanes.low[0];
    ExactV spread = SD::zero();
    for (int c = 1; c < kChains; ++c) {
      const ExactV total = SD::add(top, lanes.high[c]);
      const ExactV b_part = SD::sub(total, top);
      const ExactV error = SD::add(SD::sub(top, SD::sub(total, b_part)), SD::sub(lanes.high[c], b_part));
      top = total;
      rest = SD::add(rest, lanes.low[c]);
      spread = SD::add(spread, SD::abs(rest));
      rest = SD::add(rest, error);
      spread = SD::add(spread, SD::abs(rest));
    }
    double top_lanes[kLanes], rest_lanes[kLanes], spread_lanes[kLanes];
    SD::store(top_lanes, top);
    SD::store(rest_lanes, rest);
    SD::store(spread_lanes, spread);
    double spread_total = 0.0;
    for (int64_t k = 0; k < kLanes; ++k) {
      if (!std::isfinite(top_lanes[k]) || !std::isfinite(rest_lanes[k])) return false;  // beyond the range
      spread_total += spread_lanes[k];
    }
    for (int64_t k = 0; k < kLanes; ++k) {
      sum_add(*sum, top_lanes[k]);
      sum_add(*sum, rest_lanes[k]);
    }
    bound += 0x1p-52 * spread_total + 0x1p-1070;
  } else {
    // The exact path adds each product w e as two rounded doubles; products below 2^-969 may lose
    // up to 2^-1075 each there (subnormal errors), so the bound covers that difference too.
    double high[kChains * kLanes];
    double low[kChains * kLanes];
    for (int c = 0; c < kChains; ++c) {
      SD::store(high + c * kLanes, lanes.high[c]);
      SD::store(low + c * kLanes, lanes.low[c]);
    }
    double low_total = 0.0;
    for (int k = 0; k < kChains * kLanes; ++k) {
      const double product = high[k] * w;
      sum_add(*sum, product);
      sum_add(*sum, std::fma(high[k], w, -product));
      const double low_product = low[k] * w;
      sum_add(*sum, low_product);
      low_total += std::fabs(low_product);
    }
    bound = bound * std::fabs(w) + 0x1p-52 * low_total +
            0x1p-1072 * static_cast<double>(per_lane * kChains * kLanes + kChains * kLanes);
  }
  sum->error_bound += bound;
  return true;
}

// regression_contiguous for SumMode::rounded (rounded_lanes_finish for the bound), into an
// ExactSumState or a CompensatedSum. Stores: whether o or g is not null, as a template parameter so
// that the loop without them has no test in it.
template <class T, RegressionKind Kind, bool Stores, class Sum>
void regression_contiguous_rounded(const T* p, const T* t, int64_t count, double weight, bool weighted, T* o,
                                   T* g, double grad_scale, Sum* sum) {
  constexpr uintptr_t kAhead = kRegressionPrefetchBytes;
  using S = Simd<T>;
  using SD = Simd<double>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  static_assert(2 * L == RoundedLanes<T>::kChains * SD::kLanes, "one iteration fills every chain once");
  const V out_scale = S::set1(static_cast<T>(weight));
  const bool out_scale_fits = fits<T>(weight);
  const V grad_factor = S::set1(static_cast<T>(grad_scale * weight));
  const bool grad_factor_fits = fits<T>(grad_scale * weight);
  const Sum before = *sum;
  RoundedLanes<T> lanes;
  for (int c = 0; c < RoundedLanes<T>::kChains; ++c) lanes.high[c] = lanes.low[c] = SD::zero();
  int64_t j = 0;
  for (; j + 2 * L <= count; j += 2 * L) {
    // Past this block's end too (the next block is most often this thread's next): an address
    // formed as an integer, since pointer arithmetic beyond the array would be undefined.
    for (uintptr_t line = 0; line < 2 * L * sizeof(T); line += 64) {
      FASTLOSS_PREFETCH(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p + j) + kAhead + line));
      FASTLOSS_PREFETCH(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(t + j) + kAhead + line));
    }
    if (!add_iteration_rounded<T, Kind>(lanes, p + j, t + j)) {
      for (int64_t k = j; k < j + 2 * L; ++k) {
        exact_sum_add_element<T, Kind>(*sum, load_unaligned(p + k), load_unaligned(t + k), weighted, weight);
      }
    }
    if constexpr (Stores) {
      for (uintptr_t line = 0; g != nullptr && line < 2 * L * sizeof(T); line += 64) {
        FASTLOSS_PREFETCH_WRITE(reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(g + j) + kAhead + line));
      }
      const V p0 = S::load(p + j), t0 = S::load(t + j);
      const V p1 = S::load(p + j + L), t1 = S::load(t + j + L);
      store_vector<T, Kind>(p0, t0, p + j, t + j, L, weighted, out_scale, out_scale_fits, weight, grad_factor,
                            grad_factor_fits, grad_scale * weight, o ? o + j : nullptr, g ? g + j : nullptr);
      store_vector<T, Kind>(p1, t1, p + j + L, t + j + L, L, weighted, out_scale, out_scale_fits, weight,
                            grad_factor, grad_factor_fits, grad_scale * weight, o ? o + j + L : nullptr,
                            g ? g + j + L : nullptr);
    }
  }
  // The tail (fewer than 2 L elements) as one more iteration, zero-filled: zero pairs add 0.
  if (j < count) {
    T p_tail[2 * L] = {};
    T t_tail[2 * L] = {};
    for (int64_t k = j; k < count; ++k) {
      p_tail[k - j] = load_unaligned(p + k);
      t_tail[k - j] = load_unaligned(t + k);
    }
    if (!add_iteration_rounded<T, Kind>(lanes, p_tail, t_tail)) {
      for (int64_t k = j; k < count; ++k) {
        exact_sum_add_element<T, Kind>(*sum, p_tail[k - j], t_tail[k - j], weighted, weight);
      }
    }
  }
  for (; j < count; j += L) {
    const int64_t n = count - j < L ? count - j : L;
    if constexpr (Stores) {
      const V pv = S::load_partial(p + j, n, T(0)), tv = S::load_partial(t + j, n, T(0));
      store_vector<T, Kind>(pv, tv, p + j, t + j, n, weighted, out_scale, out_scale_fits, weight, grad_factor,
                            grad_factor_fits, grad_scale * weight, o ? o + j : nullptr, g ? g + j : nullptr);
    }
  }
  const int64_t per_lane = (count + 2 * L - 1) / (2 * L);
  if (rounded_lanes_finish<T>(lanes, per_lane, weighted, weight, sum)) return;
  // A lane is not finite (float64 terms only): every element again, exactly.
  *sum = before;
  for (int64_t k = 0; k < count; ++k) {
    exact_sum_add_element<T, Kind>(*sum, load_unaligned(p + k), load_unaligned(t + k), weighted, weight);
  }
}

// Adds the element losses of row `row`, columns [c0, c1), to *sum; writes them to `out` and the
// scaled element gradients to `grad` when those are not null (both row-major rows x cols). A
// CompensatedSum takes SumMode::rounded only.
template <class T, RegressionKind Kind, class Sum>
void regression_row_part(const MatrixView<T>& pred, const MatrixView<T>& target, int64_t row, int64_t c0,
                         int64_t c1, double weight, bool weighted, T* out, T* grad, double grad_scale,
                         SumMode mode, Sum* sum) {
  const T* p = pred.data + row * pred.row_stride;
  const T* t = target.data + row * target.row_stride;
  const int64_t ps = pred.col_stride;
  const int64_t ts = target.col_stride;
  T* o = out != nullptr ? out + row * pred.cols : nullptr;
  T* g = grad != nullptr ? grad + row * pred.cols : nullptr;
  if (ps == 1 && ts == 1 && mode == SumMode::rounded) {
    if (o != nullptr || g != nullptr) {
      regression_contiguous_rounded<T, Kind, true>(p + c0, t + c0, c1 - c0, weight, weighted,
                                                   o ? o + c0 : nullptr, g ? g + c0 : nullptr, grad_scale,
                                                   sum);
    } else {
      regression_contiguous_rounded<T, Kind, false>(p + c0, t + c0, c1 - c0, weight, weighted, nullptr,
                                                    nullptr, grad_scale, sum);
    }
    return;
  }
  if constexpr (kIsExactSum<Sum>) {
    if (ps == 1 && ts == 1) {
      regression_contiguous<T, Kind>(p + c0, t + c0, c1 - c0, weight, weighted, o ? o + c0 : nullptr,
                                     g ? g + c0 : nullptr, grad_scale, sum);
      return;
    }
  }
  const T row_grad_scale = static_cast<T>(grad_scale * weight);
  const bool grad_factor_fits = fits<T>(grad_scale * weight);
  for (int64_t j = c0; j < c1; ++j) {
    const T pj = load_unaligned(p + j * ps);
    const T tj = load_unaligned(t + j * ts);
    if (o != nullptr) {
      const T e = element_loss<T, Kind>(pj, tj);
      // A weight beyond T's range takes the product in double (see store_vector).
      o[j] = !weighted         ? e
             : fits<T>(weight) ? static_cast<T>(e * static_cast<T>(weight))
                               : static_cast<T>(weight * static_cast<double>(e));
    }
    if (g != nullptr) {
      g[j] = grad_factor_fits ? row_grad_scale * element_grad<T, Kind>(pj, tj)
                              : scaled_element_grad<T, Kind>(grad_scale * weight, pj, tj);
    }
    exact_sum_add_element<T, Kind>(*sum, pj, tj, weighted, weight);
  }
}

template <class T, RegressionKind Kind, class Sum>
void regression_kind(MatrixView<T> pred, MatrixView<T> target, const double* row_weight, T* out, T* grad,
                     double grad_scale, int num_threads, Interrupt* interrupt, SumMode mode, Sum* sum) {
  const int64_t rows = pred.rows;
  const int64_t cols = pred.cols;
  if (rows == 0 || cols == 0) return;
  const bool weighted = row_weight != nullptr;
  if (rows > 1 && !weighted && pred.col_stride == 1 && target.col_stride == 1 && pred.row_stride == cols &&
      target.row_stride == cols) {
    // Both C-contiguous and no per-row weights: one long row, so blocks ignore row boundaries.
    pred.cols = target.cols = rows * cols;
    pred.rows = target.rows = 1;
    regression_kind<T, Kind, Sum>(pred, target, row_weight, out, grad, grad_scale, num_threads, interrupt,
                                  mode, sum);
    return;
  }
  // A block is either a run of whole rows or, for rows longer than a block, a slice of one row.
  const int64_t slices_per_row =
      cols >= kRegressionBlock ? (cols + kRegressionBlock - 1) / kRegressionBlock : 1;
  const int64_t rows_per_block = cols >= kRegressionBlock ? 1 : kRegressionBlock / cols;
  const int64_t num_blocks =
      cols >= kRegressionBlock ? rows * slices_per_row : (rows + rows_per_block - 1) / rows_per_block;
  exact_blocks_sum(
      num_blocks, rows * cols, num_threads, interrupt,
      [&](int64_t b, Sum* block_sum) {
        if (slices_per_row > 1) {
          const int64_t row = b / slices_per_row;
          const int64_t c0 = (b % slices_per_row) * kRegressionBlock;
          const int64_t c1 = c0 + kRegressionBlock < cols ? c0 + kRegressionBlock : cols;
          regression_row_part<T, Kind, Sum>(pred, target, row, c0, c1,
                                            weighted ? load_unaligned(row_weight + row) : 1.0, weighted, out,
                                            grad, grad_scale, mode, block_sum);
          return;
        }
        const int64_t r0 = b * rows_per_block;
        const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
        for (int64_t r = r0; r < r1; ++r) {
          regression_row_part<T, Kind, Sum>(pred, target, r, 0, cols,
                                            weighted ? load_unaligned(row_weight + r) : 1.0, weighted, out,
                                            grad, grad_scale, mode, block_sum);
        }
      },
      sum);
}

// SumMode::exact_state: the exact sum into *sum. SumMode::rounded: the correctly rounded sum into
// *rounded, by the passes with bounded errors, settled (exact_sum_settle, compensated_sum_round),
// or, when a bound straddles a rounding boundary (about once in 10^8 random calls), by the exact
// pass. Below the work that starts threads, the bounded pass sums into a CompensatedSum, a few
// doubles in place of the superaccumulator's state.
template <class T, RegressionKind Kind>
void regression_settled(MatrixView<T> pred, MatrixView<T> target, const double* row_weight, T* out, T* grad,
                        double grad_scale, int num_threads, Interrupt* interrupt, SumMode mode,
                        ExactSumState* sum, double* rounded) {
  if (mode == SumMode::exact_state) {
    regression_kind<T, Kind>(pred, target, row_weight, out, grad, grad_scale, num_threads, interrupt, mode,
                             sum);
    return;
  }
  if (pred.rows * pred.cols < kMinParallelWork) {
    CompensatedSum compensated;
    regression_kind<T, Kind>(pred, target, row_weight, out, grad, grad_scale, 1, interrupt, mode,
                             &compensated);
    if (interrupted(interrupt) || compensated_sum_round(compensated, rounded)) return;
  } else {
    ExactSumState state;
    regression_kind<T, Kind>(pred, target, row_weight, out, grad, grad_scale, num_threads, interrupt, mode,
                             &state);
    if (interrupted(interrupt)) return;
    if (exact_sum_settle(state)) {
      *rounded = exact_sum_round(state);
      return;
    }
  }
  ExactSumState state;
  regression_kind<T, Kind>(pred, target, row_weight, out, grad, grad_scale, num_threads, interrupt,
                           SumMode::exact_state, &state);
  *rounded = exact_sum_round(state);
}

template <class T>
void regression(RegressionKind kind, MatrixView<T> pred, MatrixView<T> target, const double* row_weight,
                T* out, T* grad, double grad_scale, int num_threads, Interrupt* interrupt, SumMode mode,
                ExactSumState* sum, double* rounded) {
  if (kind == RegressionKind::squared) {
    regression_settled<T, RegressionKind::squared>(pred, target, row_weight, out, grad, grad_scale,
                                                   num_threads, interrupt, mode, sum, rounded);
  } else {
    regression_settled<T, RegressionKind::absolute>(pred, target, row_weight, out, grad, grad_scale,
                                                    num_threads, interrupt, mode, sum, rounded);
  }
}
