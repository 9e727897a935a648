// Cross-entropy over rows of logits with a stable log-softmax: lse = m + log(sum exp(x - m)) with
// m the row maximum, so no exp overflows for finite logits of any magnitude. Each -log softmax_c
// is formed in double as log(sum) - (x_c - m), never as lse - x_c: at |m| ~ 1e16 and beyond, m +
// log(sum) would round log(sum) away. Only a row loss beyond T's range becomes inf.
// The gradient softmax - target distribution is written in the same pass, while the row is in
// cache. Included inside an ISA namespace.

// Logits per reduction block (whole rows; at least one row per block).
constexpr int64_t kCrossEntropyBlock = 1 << 14;

template <class T>
inline T exp_of(T x) {
  if constexpr (sizeof(T) == sizeof(float)) {
    return ::expf(x);
  } else {
    return ::exp(x);
  }
}

// A row's log-sum-exp kept in two parts: -log softmax_c = log_sum - (x_c - max).
struct RowLogSumExp {
  double max;
  double log_sum;

  double neg_log_softmax(double x) const { return log_sum - (x - max); }
};

// The log-sum-exp of one row. When `exps` is not null it receives exp(x_c - max), which the
// gradient turns into softmax probabilities without a second exp.
template <class T>
RowLogSumExp row_log_sum_exp(const T* x, int64_t cols, int64_t stride, T* exps, double* sum_out) {
  T row_max = x[0];
  for (int64_t j = 1; j < cols; ++j) {
    const T v = x[j * stride];
    row_max = v > row_max ? v : row_max;
  }
  double sum0 = 0.0, sum1 = 0.0;
  int64_t j = 0;
  if (exps == nullptr) {
    for (; j + 2 <= cols; j += 2) {
      sum0 += exp_of<T>(x[j * stride] - row_max);
      sum1 += exp_of<T>(x[(j + 1) * stride] - row_max);
    }
    if (j < cols) sum0 += exp_of<T>(x[j * stride] - row_max);
  } else {
    for (; j < cols; ++j) {
      exps[j] = exp_of<T>(x[j * stride] - row_max);
      sum0 += exps[j];
    }
  }
  const double sum = sum0 + sum1;
  if (sum_out != nullptr) *sum_out = sum;
  return RowLogSumExp{static_cast<double>(row_max), ::log(sum)};
}

// Loss of row `i` and its contribution to the "mean" denominator; with a gradient buffer, also
// grad_scale * d loss / d logits of this row.
template <class T>
void cross_entropy_row(const CrossEntropyArgs<T>& a, int64_t i, double grad_scale, double* loss,
                       double* denominator) {
  const MatrixView<T>& logits = a.logits;
  const int64_t cols = logits.cols;
  const int64_t cs = logits.col_stride;
  const T* x = logits.data + i * logits.row_stride;
  const double* w = a.class_weight;
  const double smoothing = a.label_smoothing;
  const double uniform = smoothing / static_cast<double>(cols);
  T* g = a.grad != nullptr ? a.grad + i * cols : nullptr;
  double exp_sum = 1.0;

  if (a.target_prob.data != nullptr) {
    // Soft targets: sum_c w_c * q_c * (lse - x_c) with q = (1 - eps) p + eps / C.
    const RowLogSumExp lse = row_log_sum_exp(x, cols, cs, g, &exp_sum);
    const T* p = a.target_prob.data + i * a.target_prob.row_stride;
    const int64_t ps = a.target_prob.col_stride;
    double total = 0.0, target_mass = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const double q = (1.0 - smoothing) * static_cast<double>(p[c * ps]) + uniform;
      const double wq = w != nullptr ? w[c] * q : q;
      total += wq * lse.neg_log_softmax(static_cast<double>(x[c * cs]));
      target_mass += wq;
    }
    if (g != nullptr) {
      // d/dx_c = softmax_c * sum_c' w_c' q_c' - w_c q_c
      const double inv_sum = 1.0 / exp_sum;
      for (int64_t c = 0; c < cols; ++c) {
        const double q = (1.0 - smoothing) * static_cast<double>(p[c * ps]) + uniform;
        const double wq = w != nullptr ? w[c] * q : q;
        g[c] = static_cast<T>(grad_scale * (static_cast<double>(g[c]) * inv_sum * target_mass - wq));
      }
    }
    *loss = total;
    *denominator = 1.0;
    return;
  }

  const int64_t label = a.target_index[i * a.target_index_stride];
  if (label == a.ignore_index) {
    if (g != nullptr) {
      for (int64_t c = 0; c < cols; ++c) g[c] = T(0);
    }
    *loss = 0.0;
    *denominator = 0.0;
    return;
  }
  const RowLogSumExp lse = row_log_sum_exp(x, cols, cs, g, &exp_sum);
  const double label_weight = w != nullptr ? w[label] : 1.0;
  double total = label_weight * lse.neg_log_softmax(static_cast<double>(x[label * cs]));
  double weight_total = static_cast<double>(cols);
  if (smoothing != 0.0) {
    // eps / C * sum_c w_c (lse - x_c), the uniform part of the smoothed target.
    double smooth = 0.0;
    weight_total = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const double term = lse.neg_log_softmax(static_cast<double>(x[c * cs]));
      smooth += w != nullptr ? w[c] * term : term;
      weight_total += w != nullptr ? w[c] : 1.0;
    }
    total = (1.0 - smoothing) * total + uniform * smooth;
  }
  if (g != nullptr) {
    // d/dx_c = (1 - eps) w_t (softmax_c - [c == t]) + eps / C (softmax_c sum_c' w_c' - w_c)
    const double inv_sum = 1.0 / exp_sum;
    const double softmax_coef = (1.0 - smoothing) * label_weight + uniform * weight_total;
    for (int64_t c = 0; c < cols; ++c) {
      const double w_c = w != nullptr ? w[c] : 1.0;
      double d = softmax_coef * (static_cast<double>(g[c]) * inv_sum) - uniform * w_c;
      if (c == label) d -= (1.0 - smoothing) * label_weight;
      g[c] = static_cast<T>(grad_scale * d);
    }
  }
  *loss = total;
  *denominator = label_weight;
}

template <class T>
CrossEntropySums cross_entropy(const CrossEntropyArgs<T>& a, int num_threads) {
  const int64_t rows = a.logits.rows;
  const int64_t cols = a.logits.cols;
  CrossEntropySums sums;
  if (rows == 0 || cols == 0) return sums;
  double grad_scale = a.grad_scale;
  if (a.grad != nullptr && a.grad_divide_by_denominator && a.target_index != nullptr) {
    // The "mean" denominator is needed before any gradient is written: one cheap pass over labels.
    double denominator = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t label = a.target_index[r * a.target_index_stride];
      if (label != a.ignore_index) denominator += a.class_weight != nullptr ? a.class_weight[label] : 1.0;
    }
    grad_scale /= denominator;
  }
  const int64_t rows_per_block = cols >= kCrossEntropyBlock ? 1 : kCrossEntropyBlock / cols;
  const int64_t num_blocks = (rows + rows_per_block - 1) / rows_per_block;
  double result[2];
  deterministic_sum<2>(
      num_blocks, rows * cols, num_threads,
      [&](int64_t b, double* block) {
        const int64_t r0 = b * rows_per_block;
        const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
        double loss_sum = 0.0, denominator_sum = 0.0;
        for (int64_t r = r0; r < r1; ++r) {
          double loss, denominator;
          cross_entropy_row(a, r, grad_scale, &loss, &denominator);
          if (a.out != nullptr) a.out[r] = static_cast<T>(loss);
          loss_sum += loss;
          denominator_sum += denominator;
        }
        block[0] = loss_sum;
        block[1] = denominator_sum;
      },
      result);
  sums.loss = result[0];
  sums.denominator = result[1];
  return sums;
}
