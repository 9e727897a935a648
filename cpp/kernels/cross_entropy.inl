// Cross-entropy over rows of logits with a stable log-softmax: lse = m + log(sum exp(x - m)) with
// m the row maximum, so no exp overflows for finite logits of any magnitude. Each -log softmax_c
// is formed in double as log(sum) - (x_c - m), never as lse - x_c: at |m| ~ 1e16 and beyond, m +
// log(sum) would round log(sum) away. Only a row loss beyond T's range becomes inf.
// The gradient softmax - target distribution is written in the same pass, while the row is in
// cache. Included inside an ISA namespace.

// Logits per reduction block (whole rows; at least one row per block).
constexpr int64_t kCrossEntropyBlock = 1 << 14;

// A row's log-sum-exp kept in two parts: -log softmax_c = log_sum - (x_c - max).
struct RowLogSumExp {
  double max;
  double log_sum;

  double neg_log_softmax(double x) const { return log_sum - (x - max); }
};

// A row's max and sum of exp(x - max); the log of the sum is taken later, a vector of rows at a
// time.
struct RowSums {
  double max;
  double sum;
};

// The max and exp-sum of one row. When `exps` is not null it receives exp(x_c - max), which the
// gradient turns into softmax probabilities without a second exp. The row (unit stride, which
// bindings.cpp requires) is read twice while it sits in L1: a vector max, then vector exps summed
// by virtual lane (kernels/virtual_lanes.inl: element c in lane c mod kVirtualLanes<T> on every
// path), in runs in T folded into float64 lanes, then by the fixed tree.
template <class T>
RowSums row_exp_sum(const T* x, int64_t cols, T* exps) {
  using S = Simd<T>;
  using SD = Simd<double>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  constexpr int64_t W = kVirtualLanes<T>;
  constexpr int64_t R = W / L;          // registers per virtual vector
  constexpr int64_t P = S::kWideParts;  // double vectors per register
  static_assert(W % L == 0 && W % SD::kLanes == 0, "the virtual lanes fill whole registers");
  const T neg_inf = -static_cast<T>(HUGE_VAL);
  // The running max is the second operand, so a NaN lane is dropped from it; x * 0 summed
  // alongside is NaN for any NaN or inf logit, and such rows take the exp that handles them.
  V max_vec = S::set1(neg_inf);
  V probe = S::zero();
  int64_t j = 0;
  for (; j + L <= cols; j += L) {
    const V v = S::load(x + j);
    max_vec = S::max(v, max_vec);
    probe = S::fmadd(v, S::zero(), probe);
  }
  if (j < cols) {
    const V v = S::load_partial(x + j, cols - j, T(0));
    max_vec = S::max(S::load_partial(x + j, cols - j, neg_inf), max_vec);
    probe = S::fmadd(v, S::zero(), probe);
  }
  // + 0: a max of +0 and -0 is either, by lane order; the sum of them is +0 on every path.
  const T row_max = S::reduce_max(max_vec) + T(0);
  const V shift = S::set1(row_max);
  const bool finite = S::reduce_add(probe) == T(0);
  auto exp_shifted = [&](V v) {
    return finite ? S::exp_nonpositive(S::sub(v, shift)) : S::exp(S::sub(v, shift));
  };
  // Runs of at most kRun virtual vectors are summed in T lanes (each lane adds <= kRun values in
  // [0, 1]: relative error <= kRun ulp, ~sqrt(kRun) typical), then folded into float64 lanes.
  constexpr int kRun = 16;
  V run[R];
  typename SD::V total[R * P];
  for (int64_t r = 0; r < R; ++r) run[r] = S::zero();
  for (int64_t k = 0; k < R * P; ++k) total[k] = SD::zero();
  auto fold_runs = [&] {
    for (int64_t r = 0; r < R; ++r) {
      for (int q = 0; q < P; ++q) total[r * P + q] = SD::add(total[r * P + q], S::widen(run[r], q));
      run[r] = S::zero();
    }
  };
  int runs = 0;
  j = 0;
  for (; j + W <= cols; j += W) {
    for (int64_t r = 0; r < R; ++r) {
      const V e = exp_shifted(S::load(x + j + r * L));
      run[r] = S::add(run[r], e);
      if (exps != nullptr) S::store(exps + j + r * L, e);
    }
    if (++runs == kRun) {
      fold_runs();
      runs = 0;
    }
  }
  if (j < cols) {
    // One more virtual vector, -inf filled: exp 0 (or exp's floor, < 1.7e-38) in the unused lanes,
    // the same lanes on every path.
    for (int64_t r = 0; r < R; ++r) {
      const int64_t left = cols - j - r * L;
      const int64_t n = left < 0 ? 0 : (left < L ? left : L);
      const V e = exp_shifted(S::load_partial(x + j + r * L, n, neg_inf));
      run[r] = S::add(run[r], e);
      if (exps != nullptr && n > 0) S::store_partial(exps + j + r * L, e, n);
    }
  }
  fold_runs();
  double lanes[W];
  for (int64_t k = 0; k < R * P; ++k) SD::store(lanes + k * SD::kLanes, total[k]);
  return RowSums{static_cast<double>(row_max), fold_lanes<W>(lanes)};
}

// Rows whose logs are taken together, with vector log.
constexpr int64_t kLogGroup = 16;

// The fold of fold_lanes<N> over lanes that are vectors (of rows): lanes[0] after the same tree.
template <int64_t N>
typename Simd<double>::V fold_lane_vectors(typename Simd<double>::V* lanes) {
  using SD = Simd<double>;
#pragma GCC unroll 8
  for (int64_t h = N / 2; h >= 1; h /= 2) {
#pragma GCC unroll 64
    for (int64_t i = 0; i < h; ++i) lanes[i] = SD::add(lanes[i], lanes[i + h]);
  }
  return lanes[0];
}

// row_exp_sum for up to kLogGroup rows of at most kVirtualLanes<T> logits each (no exps stored),
// with the rows in the lanes of the vectors and a vector per column: the short rows of a small
// cross-entropy otherwise spend a vector per row on the -inf fill and a horizontal reduction on
// each of the max, the probe and the fold. Every row gets the bits row_exp_sum gives it: the max
// (NaN dropped, + 0), then exp_nonpositive of x - max in every virtual lane (exp_nonpositive of
// -inf - max in the fill lanes past the row), the lanes' one-term runs widened exactly, and the
// same fold. False, writing nothing, if a row holds an inf or NaN (row_exp_sum then takes them).
template <class T>
bool short_rows_exp_sum(const T* x, int64_t row_stride, int64_t cols, int64_t count, double* row_max,
                        double* exp_sum) {
  using S = Simd<T>;
  using SD = Simd<double>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  constexpr int64_t W = kVirtualLanes<T>;
  constexpr int64_t P = S::kWideParts;
  static_assert(kLogGroup % L == 0 && L == P * SD::kLanes, "whole vectors of rows");
  // The group transposed: column c of row r at columns[c * kLogGroup + r]; rows past `count` are 0.
  T columns[W * kLogGroup];
  for (int64_t r = 0; r < count; ++r) {
    for (int64_t c = 0; c < cols; ++c) columns[c * kLogGroup + r] = load_unaligned(x + r * row_stride + c);
  }
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t r = count; r < kLogGroup; ++r) columns[c * kLogGroup + r] = T(0);
  }
  const T neg_inf = -static_cast<T>(HUGE_VAL);
  V max_vec[kLogGroup / L];
  for (int64_t k = 0; k < kLogGroup; k += L) {
    // Two chains of even and odd columns (a max of finite values does not depend on the order).
    V m[2] = {S::set1(neg_inf), S::set1(neg_inf)};
    V probe[2] = {S::zero(), S::zero()};
    for (int64_t c = 0; c < cols; ++c) {
      const V v = S::load(columns + c * kLogGroup + k);
      m[c & 1] = S::max(v, m[c & 1]);
      probe[c & 1] = S::fmadd(v, S::zero(), probe[c & 1]);
    }
    // A NaN lane: the row had an inf or NaN.
    if (S::reduce_add(S::add(probe[0], probe[1])) != T(0)) return false;
    max_vec[k / L] = S::add(S::max(m[1], m[0]), S::zero());
  }
  for (int64_t k = 0; k < kLogGroup; k += L) {
    const V shift = max_vec[k / L];
    // row_exp_sum's one-term runs (0 + e in T, never -0), widened: the same values as its totals
    // (a double 0 plus those).
    const V fill = S::add(S::zero(), S::exp_nonpositive(S::sub(S::set1(neg_inf), shift)));
    typename SD::V lanes[P][W];
    for (int64_t c = 0; c < cols; ++c) {
      const V e = S::add(S::zero(), S::exp_nonpositive(S::sub(S::load(columns + c * kLogGroup + k), shift)));
      for (int q = 0; q < P; ++q) lanes[q][c] = S::widen(e, q);
    }
    for (int q = 0; q < P; ++q) {
      const typename SD::V fill_part = S::widen(fill, q);
      for (int64_t c = cols; c < W; ++c) lanes[q][c] = fill_part;
    }
    T max_lanes[L];
    S::store(max_lanes, shift);
    for (int q = 0; q < P; ++q) {
      double sums[SD::kLanes];
      SD::store(sums, fold_lane_vectors<W>(lanes[q]));
      for (int64_t l = 0; l < SD::kLanes; ++l) {
        const int64_t r = k + q * SD::kLanes + l;
        if (r < count) {
          row_max[r] = static_cast<double>(max_lanes[q * SD::kLanes + l]);
          exp_sum[r] = sums[l];
        }
      }
    }
  }
  return true;
}

// The sum over c of term(c), in order, and where that plain sum is not finite, again exactly: a
// partial sum beyond the double range next to an infinite term of the other sign gives NaN, though
// the terms' sum is that infinity (found by tests/fuzz/fuzz_api.py: soft targets of either sign at
// logits near 1.8e308).
template <class Term>
double row_sum(int64_t cols, Term term) {
  double total = 0.0;
  for (int64_t c = 0; c < cols; ++c) total += term(c);
  if (std::isfinite(total)) return total;
  ExactSumState exact;
  for (int64_t c = 0; c < cols; ++c) exact_sum_add(exact, term(c));
  return exact_sum_round(exact);
}

// Loss of row `i` and its contribution to the "mean" denominator from the row's log-sum-exp; with a
// gradient buffer (already holding exp(x - max)), also grad_scale * d loss / d logits of this row.
template <class T>
FASTLOSS_ALWAYS_INLINE inline void cross_entropy_row(const CrossEntropyArgs<T>& a, int64_t i,
                                                     double grad_scale, const RowLogSumExp& lse,
                                                     double exp_sum, double* loss, double* denominator) {
  const MatrixView<T>& logits = a.logits;
  const int64_t cols = logits.cols;
  const int64_t cs = logits.col_stride;
  const T* x = logits.data + i * logits.row_stride;
  const double* w = a.class_weight;
  const double smoothing = a.label_smoothing;
  const double uniform = smoothing / static_cast<double>(cols);
  T* g = a.grad != nullptr ? a.grad + i * cols : nullptr;

  if (a.target_prob.data != nullptr) {
    // Soft targets: sum_c w_c * q_c * (lse - x_c) with q = (1 - eps) p + eps / C.
    const T* p = a.target_prob.data + i * a.target_prob.row_stride;
    const int64_t ps = a.target_prob.col_stride;
    auto weighted_target = [&](int64_t c) {
      const double q = (1.0 - smoothing) * static_cast<double>(load_unaligned(p + c * ps)) + uniform;
      return w != nullptr ? load_unaligned(w + c) * q : q;
    };
    const double total = row_sum(cols, [&](int64_t c) {
      return weighted_target(c) * lse.neg_log_softmax(static_cast<double>(load_unaligned(x + c * cs)));
    });
    const double target_mass = row_sum(cols, weighted_target);
    if (g != nullptr) {
      // d/dx_c = softmax_c * sum_c' w_c' q_c' - w_c q_c
      const double inv_sum = 1.0 / exp_sum;
      for (int64_t c = 0; c < cols; ++c) {
        g[c] = static_cast<T>(grad_scale *
                              (static_cast<double>(g[c]) * inv_sum * target_mass - weighted_target(c)));
      }
    }
    *loss = total;
    *denominator = 1.0;
    return;
  }

  const int64_t label = load_unaligned(a.target_index + i * a.target_index_stride);
  if (label == a.ignore_index) {
    if (g != nullptr) {
      for (int64_t c = 0; c < cols; ++c) g[c] = T(0);
    }
    *loss = 0.0;
    *denominator = 0.0;
    return;
  }
  const double label_weight = w != nullptr ? load_unaligned(w + label) : 1.0;
  double total = label_weight * lse.neg_log_softmax(static_cast<double>(load_unaligned(x + label * cs)));
  double weight_total = static_cast<double>(cols);
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  if (smoothing != 0.0) {
    // eps / C * sum_c w_c (lse - x_c), the uniform part of the smoothed target.
    // Term by term in float64: sum_c x_c - C max would cancel catastrophically at huge logits.
    const double smooth = row_sum(cols, [&](int64_t c) {
      const double term = lse.neg_log_softmax(static_cast<double>(load_unaligned(x + c * cs)));
      return w != nullptr ? load_unaligned(w + c) * term : term;
    });
    weight_total = row_sum(cols, [&](int64_t c) { return w != nullptr ? load_unaligned(w + c) : 1.0; });
    total = (1.0 - smoothing) * total + uniform * smooth;
  }
  if (g != nullptr) {
    // d/dx_c = (1 - eps) w_t (softmax_c - [c == t]) + eps / C (softmax_c sum_c' w_c' - w_c)
    const double inv_sum = 1.0 / exp_sum;
    const double softmax_coef = (1.0 - smoothing) * label_weight + uniform * weight_total;
    // The label's entry is formed in float64 from its exp: softmax_t - 1 cancels.
    const double label_exp = static_cast<double>(g[label]);
    if (w == nullptr) {
      const V scale = S::set1(static_cast<T>(grad_scale * softmax_coef * inv_sum));
      const V offset = S::set1(static_cast<T>(grad_scale * uniform));
      int64_t c = 0;
      for (; c + L <= cols; c += L) S::store(g + c, S::sub(S::mul(scale, S::load(g + c)), offset));
      if (c < cols) {
        S::store_partial(g + c, S::sub(S::mul(scale, S::load_partial(g + c, cols - c, T(0))), offset),
                         cols - c);
      }
    } else {
      for (int64_t c = 0; c < cols; ++c) {
        g[c] = static_cast<T>(grad_scale * (softmax_coef * (static_cast<double>(g[c]) * inv_sum) -
                                            uniform * load_unaligned(w + c)));
      }
    }
    g[label] = static_cast<T>(grad_scale * (softmax_coef * (label_exp * inv_sum) - uniform * label_weight -
                                            (1.0 - smoothing) * label_weight));
  }
  *loss = total;
  *denominator = label_weight;
}

inline void vector_log(const double* in, double* out, int64_t count) {
  using S = Simd<double>;
  constexpr int64_t L = S::kLanes;
  for (int64_t k = 0; k < count; k += L) {
    const int64_t n = count - k < L ? count - k : L;
    S::store_partial(out + k, S::log(S::load_partial(in + k, n, 1.0)), n);
  }
}

// The loss and denominator sums of a one-call result below the work that starts threads
// (SumMode::rounded): compensated_sum_round settles them, or the exact pass runs.
struct CompensatedCrossEntropySums {
  CompensatedSum loss;
  CompensatedSum denominator;
};

inline void merge_into(CompensatedCrossEntropySums& into, const CompensatedCrossEntropySums& from) {
  compensated_sum_merge(into.loss, from.loss);
  compensated_sum_merge(into.denominator, from.denominator);
}

// Adds every row's loss and denominator share to *sums (CrossEntropySums: exactly).
template <class T, class Sums>
void cross_entropy_sums(const CrossEntropyArgs<T>& a, int num_threads, Sums* sums) {
  const int64_t rows = a.logits.rows;
  const int64_t cols = a.logits.cols;
  if (rows == 0 || cols == 0) return;
  double grad_scale = a.grad_scale;
  const bool sample_weighted = a.sample_weight != nullptr;
  if (a.grad != nullptr && a.grad_divide_by_denominator) {
    // The "mean" denominator is needed before any gradient is written: one cheap pass over labels
    // and sample weights, summed exactly as the returned one is.
    ExactSumState denominator;
    for (int64_t r = 0; r < rows; ++r) {
      double share = 1.0;
      if (a.target_index != nullptr) {
        const int64_t label = load_unaligned(a.target_index + r * a.target_index_stride);
        if (label == a.ignore_index) continue;
        if (a.class_weight != nullptr) share = load_unaligned(a.class_weight + label);
      }
      exact_sum_add_term(denominator, share, sample_weighted,
                         sample_weighted ? load_unaligned(a.sample_weight + r) : 1.0);
    }
    grad_scale /= exact_sum_round(denominator);
  }
  const int64_t rows_per_block = cols >= kCrossEntropyBlock ? 1 : kCrossEntropyBlock / cols;
  const int64_t num_blocks = (rows + rows_per_block - 1) / rows_per_block;
  exact_blocks_sum(
      num_blocks, rows * cols, num_threads, a.interrupt,
      [&](int64_t b, Sums* block_sums) {
        Sums block = *block_sums;  // a local, so that a compensated sum stays in registers
        const int64_t r0 = b * rows_per_block;
        const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
        for (int64_t g0 = r0; g0 < r1; g0 += kLogGroup) {
          const int64_t count = r1 - g0 < kLogGroup ? r1 - g0 : kLogGroup;
          double row_max[kLogGroup], exp_sum[kLogGroup], log_sum[kLogGroup];
          const bool short_rows = cols <= kVirtualLanes<T> && a.grad == nullptr &&
                                  short_rows_exp_sum(a.logits.data + g0 * a.logits.row_stride,
                                                     a.logits.row_stride, cols, count, row_max, exp_sum);
          for (int64_t k = 0; k < count && !short_rows; ++k) {
            const int64_t r = g0 + k;
            const bool ignored = a.target_prob.data == nullptr &&
                                 load_unaligned(a.target_index + r * a.target_index_stride) == a.ignore_index;
            const RowSums sums = ignored ? RowSums{0.0, 1.0}
                                         : row_exp_sum(a.logits.data + r * a.logits.row_stride, cols,
                                                       a.grad != nullptr ? a.grad + r * cols : nullptr);
            row_max[k] = sums.max;
            exp_sum[k] = sums.sum;
          }
          vector_log(exp_sum, log_sum, count);
          for (int64_t k = 0; k < count; ++k) {
            double loss, denominator;
            const double sample = sample_weighted ? load_unaligned(a.sample_weight + g0 + k) : 1.0;
            cross_entropy_row(a, g0 + k, grad_scale * sample, RowLogSumExp{row_max[k], log_sum[k]},
                              exp_sum[k], &loss, &denominator);
            if (a.out != nullptr) a.out[g0 + k] = static_cast<T>(sample_weighted ? loss * sample : loss);
            exact_sum_add_term(block.loss, loss, sample_weighted, sample);
            exact_sum_add_term(block.denominator, denominator, sample_weighted, sample);
          }
        }
        *block_sums = block;
      },
      sums);
}

template <class T>
CrossEntropySums cross_entropy(const CrossEntropyArgs<T>& a, int num_threads) {
  CrossEntropySums sums;
  if (a.mode == SumMode::exact_state) {
    cross_entropy_sums(a, num_threads, &sums);
    return sums;
  }
  if (a.logits.rows * a.logits.cols < kMinParallelWork) {
    CompensatedCrossEntropySums compensated;
    cross_entropy_sums(a, 1, &compensated);
    if (interrupted(a.interrupt) || (compensated_sum_round(compensated.loss, &a.rounded[0]) &&
                                     compensated_sum_round(compensated.denominator, &a.rounded[1]))) {
      return sums;
    }
  }
  // Larger calls, and the rare small one whose bound straddles a rounding boundary: exactly.
  cross_entropy_sums(a, num_threads, &sums);
  a.rounded[0] = exact_sum_round(sums.loss);
  a.rounded[1] = exact_sum_round(sums.denominator);
  return CrossEntropySums{};
}
