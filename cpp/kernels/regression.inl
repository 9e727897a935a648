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

// d e / d p: 2 (p - t) or sign(p - t), with sign(0) = 0 and NaN kept.
template <class T, RegressionKind Kind>
inline T element_grad(T p, T t) {
  const T d = p - t;
  if constexpr (Kind == RegressionKind::squared) {
    return d + d;
  } else {
    return d > T(0) ? T(1) : (d < T(0) ? T(-1) : d * T(0));
  }
}

// Sums the element losses of row `row`, columns [c0, c1); writes them to `out` and the scaled
// element gradients to `grad` when those are not null (both row-major rows x cols).
template <class T, RegressionKind Kind>
double regression_row_part(const MatrixView<T>& pred, const MatrixView<T>& target, int64_t row,
                           int64_t c0, int64_t c1, double weight, bool weighted, T* out, T* grad,
                           double grad_scale) {
  const T* p = pred.data + row * pred.row_stride;
  const T* t = target.data + row * target.row_stride;
  const int64_t ps = pred.col_stride;
  const int64_t ts = target.col_stride;
  T* o = out != nullptr ? out + row * pred.cols : nullptr;
  T* g = grad != nullptr ? grad + row * pred.cols : nullptr;
  const T row_grad_scale = static_cast<T>(grad_scale * weight);
  // Element j's loss, also written out and differentiated when asked; the loss sums use the same
  // accumulators either way, so return_grad never changes the returned loss.
  auto element = [&](int64_t j) {
    const T e = element_loss<T, Kind>(p[j * ps], t[j * ts]);
    if (o != nullptr) o[j] = weighted ? static_cast<T>(static_cast<double>(e) * weight) : e;
    if (g != nullptr) g[j] = row_grad_scale * element_grad<T, Kind>(p[j * ps], t[j * ts]);
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
double regression_kind(MatrixView<T> pred, MatrixView<T> target, const double* row_weight, T* out,
                       T* grad, double grad_scale, int num_threads) {
  const int64_t rows = pred.rows;
  const int64_t cols = pred.cols;
  if (rows == 0 || cols == 0) return 0.0;
  const bool weighted = row_weight != nullptr;
  // A block is either a run of whole rows or, for rows longer than a block, a slice of one row.
  const int64_t slices_per_row = cols >= kRegressionBlock ? (cols + kRegressionBlock - 1) / kRegressionBlock : 1;
  const int64_t rows_per_block = cols >= kRegressionBlock ? 1 : kRegressionBlock / cols;
  const int64_t num_blocks = cols >= kRegressionBlock
                                 ? rows * slices_per_row
                                 : (rows + rows_per_block - 1) / rows_per_block;
  double total = 0.0;
  deterministic_sum<1>(
      num_blocks, rows * cols, num_threads,
      [&](int64_t b, double* sum) {
        if (slices_per_row > 1) {
          const int64_t row = b / slices_per_row;
          const int64_t c0 = (b % slices_per_row) * kRegressionBlock;
          const int64_t c1 = c0 + kRegressionBlock < cols ? c0 + kRegressionBlock : cols;
          sum[0] = regression_row_part<T, Kind>(pred, target, row, c0, c1,
                                                weighted ? row_weight[row] : 1.0, weighted, out, grad,
                                                grad_scale);
          return;
        }
        const int64_t r0 = b * rows_per_block;
        const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
        double block = 0.0;
        for (int64_t r = r0; r < r1; ++r) {
          block += regression_row_part<T, Kind>(pred, target, r, 0, cols,
                                                weighted ? row_weight[r] : 1.0, weighted, out, grad,
                                                grad_scale);
        }
        sum[0] = block;
      },
      &total);
  return total;
}

template <class T>
double regression(RegressionKind kind, MatrixView<T> pred, MatrixView<T> target,
                  const double* row_weight, T* out, T* grad, double grad_scale, int num_threads) {
  if (kind == RegressionKind::squared) {
    return regression_kind<T, RegressionKind::squared>(pred, target, row_weight, out, grad, grad_scale,
                                                       num_threads);
  }
  return regression_kind<T, RegressionKind::absolute>(pred, target, row_weight, out, grad, grad_scale,
                                                      num_threads);
}
