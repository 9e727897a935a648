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

// The unit-stride case, one pass at memory speed: lanes of element losses go straight into
// float64 accumulators (so a float32 sum of 1e8 elements stays within 1e-6 relative), and the
// loss and gradient stores ride along when asked for.
template <class T, RegressionKind Kind>
double regression_contiguous(const T* p, const T* t, int64_t count, double weight, bool weighted, T* o, T* g,
                             double grad_scale) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  const V out_scale = S::set1(static_cast<T>(weight));
  const V grad_factor = S::set1(static_cast<T>(grad_scale * weight));
  const bool grad_factor_fits = fits<T>(grad_scale * weight);
  typename S::DoubleSum acc0, acc1;
  auto step = [&](int64_t j, V pv, V tv, typename S::DoubleSum& acc, int64_t n) {
    const V e = element_loss_vec<T, Kind>(pv, tv);
    S::accumulate(acc, e);
    if (o != nullptr) {
      const V out = weighted ? S::mul(e, out_scale) : e;
      if (n == L)
        S::store(o + j, out);
      else
        S::store_partial(o + j, out, n);
    }
    if (g != nullptr && grad_factor_fits) {
      const V grad = S::mul(grad_factor, element_grad_vec<T, Kind>(pv, tv));
      if (n == L)
        S::store(g + j, grad);
      else
        S::store_partial(g + j, grad, n);
    } else if (g != nullptr) {
      for (int64_t k = j; k < j + n; ++k) {
        g[k] =
            scaled_element_grad<T, Kind>(grad_scale * weight, load_unaligned(p + k), load_unaligned(t + k));
      }
    }
  };
  int64_t j = 0;
  for (; j + 2 * L <= count; j += 2 * L) {
    step(j, S::load(p + j), S::load(t + j), acc0, L);
    step(j + L, S::load(p + j + L), S::load(t + j + L), acc1, L);
  }
  for (; j < count; j += L) {
    const int64_t n = count - j < L ? count - j : L;
    // Zero-filled tails give zero losses.
    step(j, S::load_partial(p + j, n, T(0)), S::load_partial(t + j, n, T(0)), acc0, n);
  }
  const double total = S::total(acc0) + S::total(acc1);
  return weighted ? total * weight : total;
}

// Sums the element losses of row `row`, columns [c0, c1); writes them to `out` and the scaled
// element gradients to `grad` when those are not null (both row-major rows x cols).
template <class T, RegressionKind Kind>
double regression_row_part(const MatrixView<T>& pred, const MatrixView<T>& target, int64_t row, int64_t c0,
                           int64_t c1, double weight, bool weighted, T* out, T* grad, double grad_scale) {
  const T* p = pred.data + row * pred.row_stride;
  const T* t = target.data + row * target.row_stride;
  const int64_t ps = pred.col_stride;
  const int64_t ts = target.col_stride;
  T* o = out != nullptr ? out + row * pred.cols : nullptr;
  T* g = grad != nullptr ? grad + row * pred.cols : nullptr;
  if (ps == 1 && ts == 1) {
    return regression_contiguous<T, Kind>(p + c0, t + c0, c1 - c0, weight, weighted, o ? o + c0 : nullptr,
                                          g ? g + c0 : nullptr, grad_scale);
  }
  const T row_grad_scale = static_cast<T>(grad_scale * weight);
  const bool grad_factor_fits = fits<T>(grad_scale * weight);
  // Element j's loss, also written out and differentiated when asked; the loss sums use the same
  // accumulators either way, so return_grad never changes the returned loss.
  auto element = [&](int64_t j) {
    const T pj = load_unaligned(p + j * ps);
    const T tj = load_unaligned(t + j * ts);
    const T e = element_loss<T, Kind>(pj, tj);
    if (o != nullptr) o[j] = weighted ? static_cast<T>(e * static_cast<T>(weight)) : e;
    if (g != nullptr) {
      g[j] = grad_factor_fits ? row_grad_scale * element_grad<T, Kind>(pj, tj)
                              : scaled_element_grad<T, Kind>(grad_scale * weight, pj, tj);
    }
    return e;
  };
  // Four independent accumulators keep the add latency off the critical path.
  double acc0 = 0.0, acc1 = 0.0, acc2 = 0.0, acc3 = 0.0;
  int64_t j = c0;
  for (; j + 4 <= c1; j += 4) {
    acc0 += element(j);
    acc1 += element(j + 1);
    acc2 += element(j + 2);
    acc3 += element(j + 3);
  }
  for (; j < c1; ++j) acc0 += element(j);
  const double total = (acc0 + acc1) + (acc2 + acc3);
  return weighted ? total * weight : total;
}

template <class T, RegressionKind Kind>
double regression_kind(MatrixView<T> pred, MatrixView<T> target, const double* row_weight, T* out, T* grad,
                       double grad_scale, int num_threads, Interrupt* interrupt) {
  const int64_t rows = pred.rows;
  const int64_t cols = pred.cols;
  if (rows == 0 || cols == 0) return 0.0;
  const bool weighted = row_weight != nullptr;
  if (rows > 1 && !weighted && pred.col_stride == 1 && target.col_stride == 1 && pred.row_stride == cols &&
      target.row_stride == cols) {
    // Both C-contiguous and no per-row weights: one long row, so blocks ignore row boundaries.
    pred.cols = target.cols = rows * cols;
    pred.rows = target.rows = 1;
    return regression_kind<T, Kind>(pred, target, row_weight, out, grad, grad_scale, num_threads, interrupt);
  }
  // A block is either a run of whole rows or, for rows longer than a block, a slice of one row.
  const int64_t slices_per_row =
      cols >= kRegressionBlock ? (cols + kRegressionBlock - 1) / kRegressionBlock : 1;
  const int64_t rows_per_block = cols >= kRegressionBlock ? 1 : kRegressionBlock / cols;
  const int64_t num_blocks =
      cols >= kRegressionBlock ? rows * slices_per_row : (rows + rows_per_block - 1) / rows_per_block;
  double total = 0.0;
  deterministic_sum<1>(
      num_blocks, rows * cols, num_threads, interrupt,
      [&](int64_t b, double* sum) {
        if (slices_per_row > 1) {
          const int64_t row = b / slices_per_row;
          const int64_t c0 = (b % slices_per_row) * kRegressionBlock;
          const int64_t c1 = c0 + kRegressionBlock < cols ? c0 + kRegressionBlock : cols;
          sum[0] = regression_row_part<T, Kind>(pred, target, row, c0, c1,
                                                weighted ? load_unaligned(row_weight + row) : 1.0, weighted,
                                                out, grad, grad_scale);
          return;
        }
        const int64_t r0 = b * rows_per_block;
        const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
        double block = 0.0;
        for (int64_t r = r0; r < r1; ++r) {
          block += regression_row_part<T, Kind>(pred, target, r, 0, cols,
                                                weighted ? load_unaligned(row_weight + r) : 1.0, weighted,
                                                out, grad, grad_scale);
        }
        sum[0] = block;
      },
      &total);
  return total;
}

template <class T>
double regression(RegressionKind kind, MatrixView<T> pred, MatrixView<T> target, const double* row_weight,
                  T* out, T* grad, double grad_scale, int num_threads, Interrupt* interrupt) {
  if (kind == RegressionKind::squared) {
    return regression_kind<T, RegressionKind::squared>(pred, target, row_weight, out, grad, grad_scale,
                                                       num_threads, interrupt);
  }
  return regression_kind<T, RegressionKind::absolute>(pred, target, row_weight, out, grad, grad_scale,
                                                      num_threads, interrupt);
}
