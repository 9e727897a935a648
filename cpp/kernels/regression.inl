// MSE and MAE: the element losses (p - t)^2 and |p - t| over a strided 2-D view, optionally
// weighted per row, optionally written out, always summed. Included inside an ISA namespace.

// Elements per reduction block: large enough to amortise the per-block bookkeeping, small enough
// that 2 threads get many blocks on mid-sized inputs.
constexpr int64_t kRegressionBlock = 1 << 14;

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

// Adds the exact element loss of (p, t) (times w) to *sum as a sum of double terms: for float32
// inputs the true (p - t)^2 or |p - t| (the difference as d + d_lo, exact by TwoSum; the squares
// by fused multiply-adds), for float64 inputs the exact square or magnitude of the rounded
// difference. Infinities and NaN are added as themselves, so the sum counts them.
template <class T, RegressionKind Kind>
inline void exact_sum_add_element(ExactSumState& sum, T p, T t, bool weighted, double w) {
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
                                                typename Simd<T>::V out_scale,
                                                typename Simd<T>::V grad_factor, bool grad_factor_fits,
                                                double grad_factor_double, T* o, T* g) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  const V e = element_loss_vec<T, Kind>(pv, tv);
  if (o != nullptr) {
    const V out = weighted ? S::mul(e, out_scale) : e;
    if (n == L)
      S::store(o, out);
    else
      S::store_partial(o, out, n);
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
      store_vector<T, Kind>(p0, t0, p + j, t + j, L, weighted, out_scale, grad_factor, grad_factor_fits,
                            grad_scale * weight, o ? o + j : nullptr, g ? g + j : nullptr);
      store_vector<T, Kind>(p1, t1, p + j + L, t + j + L, L, weighted, out_scale, grad_factor,
                            grad_factor_fits, grad_scale * weight, o ? o + j + L : nullptr,
                            g ? g + j + L : nullptr);
    }
  }
  for (; j < count; j += L) {
    const int64_t n = count - j < L ? count - j : L;
    // Zero-filled tails give zero losses.
    const V pv = S::load_partial(p + j, n, T(0)), tv = S::load_partial(t + j, n, T(0));
    add_vector_lanes<T, Kind, 0>(lanes, pv, tv, p + j, t + j, n, weighted, weight, weight_vec, sum);
    if (stores) {
      store_vector<T, Kind>(pv, tv, p + j, t + j, n, weighted, out_scale, grad_factor, grad_factor_fits,
                            grad_scale * weight, o ? o + j : nullptr, g ? g + j : nullptr);
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

// Adds the element losses of row `row`, columns [c0, c1), to *sum; writes them to `out` and the
// scaled element gradients to `grad` when those are not null (both row-major rows x cols).
template <class T, RegressionKind Kind>
void regression_row_part(const MatrixView<T>& pred, const MatrixView<T>& target, int64_t row, int64_t c0,
                         int64_t c1, double weight, bool weighted, T* out, T* grad, double grad_scale,
                         ExactSumState* sum) {
  const T* p = pred.data + row * pred.row_stride;
  const T* t = target.data + row * target.row_stride;
  const int64_t ps = pred.col_stride;
  const int64_t ts = target.col_stride;
  T* o = out != nullptr ? out + row * pred.cols : nullptr;
  T* g = grad != nullptr ? grad + row * pred.cols : nullptr;
  if (ps == 1 && ts == 1) {
    regression_contiguous<T, Kind>(p + c0, t + c0, c1 - c0, weight, weighted, o ? o + c0 : nullptr,
                                   g ? g + c0 : nullptr, grad_scale, sum);
    return;
  }
  const T row_grad_scale = static_cast<T>(grad_scale * weight);
  const bool grad_factor_fits = fits<T>(grad_scale * weight);
  for (int64_t j = c0; j < c1; ++j) {
    const T pj = load_unaligned(p + j * ps);
    const T tj = load_unaligned(t + j * ts);
    if (o != nullptr) {
      const T e = element_loss<T, Kind>(pj, tj);
      o[j] = weighted ? static_cast<T>(e * static_cast<T>(weight)) : e;
    }
    if (g != nullptr) {
      g[j] = grad_factor_fits ? row_grad_scale * element_grad<T, Kind>(pj, tj)
                              : scaled_element_grad<T, Kind>(grad_scale * weight, pj, tj);
    }
    exact_sum_add_element<T, Kind>(*sum, pj, tj, weighted, weight);
  }
}

template <class T, RegressionKind Kind>
void regression_kind(MatrixView<T> pred, MatrixView<T> target, const double* row_weight, T* out, T* grad,
                     double grad_scale, int num_threads, Interrupt* interrupt, ExactSumState* sum) {
  const int64_t rows = pred.rows;
  const int64_t cols = pred.cols;
  if (rows == 0 || cols == 0) return;
  const bool weighted = row_weight != nullptr;
  if (rows > 1 && !weighted && pred.col_stride == 1 && target.col_stride == 1 && pred.row_stride == cols &&
      target.row_stride == cols) {
    // Both C-contiguous and no per-row weights: one long row, so blocks ignore row boundaries.
    pred.cols = target.cols = rows * cols;
    pred.rows = target.rows = 1;
    regression_kind<T, Kind>(pred, target, row_weight, out, grad, grad_scale, num_threads, interrupt, sum);
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
      [&](int64_t b, ExactSumState* block_sum) {
        if (slices_per_row > 1) {
          const int64_t row = b / slices_per_row;
          const int64_t c0 = (b % slices_per_row) * kRegressionBlock;
          const int64_t c1 = c0 + kRegressionBlock < cols ? c0 + kRegressionBlock : cols;
          regression_row_part<T, Kind>(pred, target, row, c0, c1,
                                       weighted ? load_unaligned(row_weight + row) : 1.0, weighted, out, grad,
                                       grad_scale, block_sum);
          return;
        }
        const int64_t r0 = b * rows_per_block;
        const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
        for (int64_t r = r0; r < r1; ++r) {
          regression_row_part<T, Kind>(pred, target, r, 0, cols,
                                       weighted ? load_unaligned(row_weight + r) : 1.0, weighted, out, grad,
                                       grad_scale, block_sum);
        }
      },
      sum);
}

template <class T>
void regression(RegressionKind kind, MatrixView<T> pred, MatrixView<T> target, const double* row_weight,
                T* out, T* grad, double grad_scale, int num_threads, Interrupt* interrupt,
                ExactSumState* sum) {
  if (kind == RegressionKind::squared) {
    regression_kind<T, RegressionKind::squared>(pred, target, row_weight, out, grad, grad_scale, num_threads,
                                                interrupt, sum);
  } else {
    regression_kind<T, RegressionKind::absolute>(pred, target, row_weight, out, grad, grad_scale, num_threads,
                                                 interrupt, sum);
  }
}
