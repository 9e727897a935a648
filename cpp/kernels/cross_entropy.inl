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

// Rows processed later, whose cache lines are requested while this row is computed: the row's
// two passes hit L1, so without this the memory sat idle during the exps and the next row's first
// pass waited for it (the hardware prefetcher does not cross 4 KB pages). `logits` is read next
// (null: none), `exps` is a gradient row written later (null: none), for ownership, so that its
// stores do not wait for their lines (measured: ce_large_grad 43 -> 37 ms at 1 thread).
template <class T>
struct RowsAhead {
  const T* logits = nullptr;
  T* exps = nullptr;
};

// The two cache lines at element j of the rows ahead. Taken by value: through a reference, the
// vector stores (may_alias types) made the compiler reload the pointers after each one.
template <class T>
FASTLOSS_ALWAYS_INLINE inline void prefetch_lines(RowsAhead<T> ahead, int64_t j) {
  static_assert(kVirtualLanes<T> * sizeof(T) == 128, "a virtual vector is two cache lines");
  if (ahead.logits != nullptr) {
    FASTLOSS_PREFETCH(ahead.logits + j);
    FASTLOSS_PREFETCH(ahead.logits + j + 64 / sizeof(T));
  }
  if (ahead.exps != nullptr) {
    FASTLOSS_PREFETCH_WRITE(ahead.exps + j);
    FASTLOSS_PREFETCH_WRITE(ahead.exps + j + 64 / sizeof(T));
  }
}

// Sum over the row of exp(x_c - row_max) by virtual lane (kernels/virtual_lanes.inl: element c in
// lane c mod kVirtualLanes<T> on every path), in runs in T folded into float64 lanes, then by the
// fixed tree. kFinite: every logit is finite, so x_c - row_max <= 0 (exp_nonpositive); otherwise
// exp, which handles NaN and inf. kStore: exp(x_c - row_max) is also written to exps.
template <class T, bool kFinite, bool kStore>
double row_exp_sum_pass(const T* x, int64_t cols, T row_max, T* exps, RowsAhead<T> ahead) {
  using S = Simd<T>;
  using SD = Simd<double>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  constexpr int64_t W = kVirtualLanes<T>;
  constexpr int64_t R = W / L;          // registers per virtual vector
  constexpr int64_t P = S::kWideParts;  // double vectors per register
  static_assert(W % L == 0 && W % SD::kLanes == 0, "the virtual lanes fill whole registers");
  const T neg_inf = -static_cast<T>(HUGE_VAL);
  const V shift = S::set1(row_max);
  auto exp_shifted = [&](V v) {
    if constexpr (kFinite) {
      return S::exp_nonpositive(S::sub(v, shift));
    } else {
      return S::exp(S::sub(v, shift));
    }
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
  // A run's exps are staged in memory (the gradient row, or 2 KB on the stack) and then summed:
  // the exp loop keeps its constants in registers (AVX2 has 16), the sum loop its accumulators.
  T stage_buffer[kStore ? 1 : kRun * W];
  const int64_t full = cols / W * W;
  int64_t j = 0;
  for (; j < full; j += kRun * W) {
    const int64_t end = j + kRun * W < full ? j + kRun * W : full;
    T* stage = kStore ? exps + j : stage_buffer;
    for (int64_t k = j; k < end; k += W) {
      prefetch_lines(ahead, k);
      for (int64_t r = 0; r < R; ++r) S::store(stage + (k - j) + r * L, exp_shifted(S::load(x + k + r * L)));
    }
    for (int64_t k = j; k < end; k += W) {
      for (int64_t r = 0; r < R; ++r) run[r] = S::add(run[r], S::load(stage + (k - j) + r * L));
    }
    if (end - j == kRun * W) fold_runs();
  }
  j = full;
  if (j < cols) {
    prefetch_lines(ahead, j);
    // One more virtual vector, -inf filled: exp 0 (or exp's floor, < 1.7e-38) in the unused lanes,
    // the same lanes on every path.
    for (int64_t r = 0; r < R; ++r) {
      const int64_t left = cols - j - r * L;
      const int64_t n = left < 0 ? 0 : (left < L ? left : L);
      const V e = exp_shifted(S::load_partial(x + j + r * L, n, neg_inf));
      run[r] = S::add(run[r], e);
      if constexpr (kStore) {
        if (n > 0) S::store_partial(exps + j + r * L, e, n);
      }
    }
  }
  fold_runs();
  double lanes[W];
  for (int64_t k = 0; k < R * P; ++k) SD::store(lanes + k * SD::kLanes, total[k]);
  return fold_lanes<W>(lanes);
}

// The max and exp-sum of one row. When `exps` is not null it receives exp(x_c - max), which the
// gradient turns into softmax probabilities without a second exp. The row (unit stride: other
// layouts are gathered first, see group_rows) is read twice while it sits in L1: a vector max, then the exps
// (row_exp_sum_pass); meanwhile the rows `ahead` are fetched.
template <class T>
RowSums row_exp_sum(const T* x, int64_t cols, T* exps, RowsAhead<T> ahead) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  const T neg_inf = -static_cast<T>(HUGE_VAL);
  // The running max is the second operand, so a NaN lane is dropped from it; x * 0 summed
  // alongside is NaN for any NaN or inf logit, and such rows take the exp that handles them.
  // Both are exact, so kMaxChains independent chains (which hide the latency of max and fmadd)
  // give the bits of one.
  constexpr int kMaxChains = 4;
  V max_chain[kMaxChains], probe_chain[kMaxChains];
  for (int k = 0; k < kMaxChains; ++k) {
    max_chain[k] = S::set1(neg_inf);
    probe_chain[k] = S::zero();
  }
  int64_t j = 0;
  for (; j + kMaxChains * L <= cols; j += kMaxChains * L) {
    for (int k = 0; k < kMaxChains; ++k) {
      const V v = S::load(x + j + k * L);
      max_chain[k] = S::max(v, max_chain[k]);
      probe_chain[k] = S::fmadd(v, S::zero(), probe_chain[k]);
    }
  }
  V max_vec = max_chain[0];
  V probe = probe_chain[0];
  for (int k = 1; k < kMaxChains; ++k) {
    max_vec = S::max(max_chain[k], max_vec);
    probe = S::add(probe_chain[k], probe);
  }
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
  const bool finite = S::reduce_add(probe) == T(0);
  double sum;
  if (finite) {
    sum = exps != nullptr ? row_exp_sum_pass<T, true, true>(x, cols, row_max, exps, ahead)
                          : row_exp_sum_pass<T, true, false>(x, cols, row_max, exps, ahead);
  } else {
    sum = exps != nullptr ? row_exp_sum_pass<T, false, true>(x, cols, row_max, exps, ahead)
                          : row_exp_sum_pass<T, false, false>(x, cols, row_max, exps, ahead);
  }
  return RowSums{static_cast<double>(row_max), sum};
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
bool short_rows_exp_sum(const T* const* x, int64_t cols, int64_t count, double* row_max, double* exp_sum) {
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
    for (int64_t c = 0; c < cols; ++c) columns[c * kLogGroup + r] = load_unaligned(x[r] + c);
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

// Loss of row `i` (logits x, unit stride; probabilities p, stride a.target_prob.col_stride, or
// null) and its contribution to the "mean" denominator from the row's log-sum-exp; with a gradient
// buffer (already holding exp(x - max)), also grad_scale * d loss / d logits of this row, and with
// a.d_target, grad_scale * d loss / d p.
template <class T>
FASTLOSS_ALWAYS_INLINE inline void cross_entropy_row(const CrossEntropyArgs<T>& a, int64_t i, const T* x,
                                                     const T* p, double grad_scale, const RowLogSumExp& lse,
                                                     double exp_sum, double* loss, double* denominator) {
  const int64_t cols = a.logits.cols;
  const double* w = a.class_weight;
  const double smoothing = a.label_smoothing;
  const double uniform = smoothing / static_cast<double>(cols);
  T* g = a.grad != nullptr ? a.grad + i * cols : nullptr;

  if (p != nullptr) {
    // Soft targets: sum_c w_c * q_c * (lse - x_c) with q = (1 - eps) p + eps / C.
    const int64_t ps = a.target_prob.col_stride;
    auto weighted_target = [&](int64_t c) {
      const double q = (1.0 - smoothing) * static_cast<double>(load_unaligned(p + c * ps)) + uniform;
      return w != nullptr ? load_unaligned(w + c) * q : q;
    };
    const double total = row_sum(cols, [&](int64_t c) {
      return weighted_target(c) * lse.neg_log_softmax(static_cast<double>(load_unaligned(x + c)));
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
    if (a.d_target != nullptr) {
      // d/dp_c = (1 - eps) w_c (lse - x_c): lse does not depend on the target.
      T* dp = a.d_target + i * cols;
      const double coef = grad_scale * (1.0 - smoothing);
      for (int64_t c = 0; c < cols; ++c) {
        const double term = lse.neg_log_softmax(static_cast<double>(load_unaligned(x + c)));
        dp[c] = static_cast<T>(coef * (w != nullptr ? load_unaligned(w + c) * term : term));
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
  double total = label_weight * lse.neg_log_softmax(static_cast<double>(load_unaligned(x + label)));
  double weight_total = static_cast<double>(cols);
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int64_t L = S::kLanes;
  if (smoothing != 0.0) {
    // eps / C * sum_c w_c (lse - x_c), the uniform part of the smoothed target.
    // Term by term in float64: sum_c x_c - C max would cancel catastrophically at huge logits.
    const double smooth = row_sum(cols, [&](int64_t c) {
      const double term = lse.neg_log_softmax(static_cast<double>(load_unaligned(x + c)));
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

// Where row r of a view starts (CrossEntropyArgs: rows in samples of rows_per_sample).
template <class T>
FASTLOSS_ALWAYS_INLINE inline const T* row_start(const MatrixView<T>& view, int64_t rows_per_sample,
                                                 int64_t sample_stride, int64_t r) {
  if (rows_per_sample == 0) return view.data + r * view.row_stride;
  return view.data + (r / rows_per_sample) * sample_stride + (r % rows_per_sample) * view.row_stride;
}

// The logits of rows [g0, g0 + count) with their classes at unit stride, in x[k]: the rows
// themselves, or, when the class stride is not 1 (the (N, C, H, W) layout: classes H * W apart),
// copies in `scratch` (count x cols). The copies are made class by class over the group, because
// in that layout the group's values of one class are neighbours (one cache line, not count of
// them). A copy holds the same values as the row, so every row gets the bits that the same row
// given contiguously gets: the code after this sees only unit-stride rows.
// `next` is the first row of the next group (null: none), whose line of each class is requested
// while this group is copied: a group touches one line per class, C lines over as many pages,
// which the hardware prefetcher does not follow.
template <class T>
void group_rows(const CrossEntropyArgs<T>& a, int64_t g0, int64_t count, const T* next, T* scratch,
                const T** x) {
  for (int64_t k = 0; k < count; ++k) {
    x[k] = row_start(a.logits, a.rows_per_sample, a.logits_sample_stride, g0 + k);
  }
  const int64_t cols = a.logits.cols;
  const int64_t cs = a.logits.col_stride;
  if (cs == 1 || cols == 1) return;
  for (int64_t c = 0; c < cols; ++c) {
    if (next != nullptr) FASTLOSS_PREFETCH(next + c * cs);
    for (int64_t k = 0; k < count; ++k) scratch[k * cols + c] = load_unaligned(x[k] + c * cs);
  }
  for (int64_t k = 0; k < count; ++k) x[k] = scratch + k * cols;
}

// Adds every row's loss and denominator share to *sums (CrossEntropySums: exactly).
template <class T, class Sums>
void cross_entropy_sums(const CrossEntropyArgs<T>& a, int num_threads, Sums* sums) {
  const int64_t rows = a.logits.rows;
  const int64_t cols = a.logits.cols;
  if (rows == 0 || cols == 0) return;
  double grad_scale = a.grad_scale;
  const bool sample_weighted = a.sample_weight != nullptr;
  if ((a.grad != nullptr || a.d_target != nullptr) && a.grad_divide_by_denominator) {
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
  const bool gather = cols > 1 && a.logits.col_stride != 1;
  // Gathered rows come at least a whole group per block: the group's values of one class share a
  // cache line in the (N, C, H, W) layout, where a row alone would use one value of each line. (The
  // blocks' sums are exact, so how the rows are blocked never changes a result.)
  const int64_t min_rows = gather ? kLogGroup : 1;
  const int64_t rows_per_block = cols * min_rows >= kCrossEntropyBlock ? min_rows : kCrossEntropyBlock / cols;
  const int64_t num_blocks = (rows + rows_per_block - 1) / rows_per_block;
  // Scratch for gathered rows: one group, at most max(kCrossEntropyBlock, kLogGroup * cols) elements.
  const int64_t scratch_size = gather ? (rows_per_block < kLogGroup ? rows_per_block : kLogGroup) * cols : 0;
  auto block_sum = [&](int64_t b, Sums* block_sums, T* scratch) {
    Sums block = *block_sums;  // a local, so that a compensated sum stays in registers
    const int64_t r0 = b * rows_per_block;
    const int64_t r1 = r0 + rows_per_block < rows ? r0 + rows_per_block : rows;
    for (int64_t g0 = r0; g0 < r1; g0 += kLogGroup) {
      const int64_t count = r1 - g0 < kLogGroup ? r1 - g0 : kLogGroup;
      double row_max[kLogGroup], exp_sum[kLogGroup], log_sum[kLogGroup];
      const T* x[kLogGroup];
      const T* next = gather && g0 + count < rows
                          ? row_start(a.logits, a.rows_per_sample, a.logits_sample_stride, g0 + count)
                          : nullptr;
      group_rows(a, g0, count, next, scratch, x);
      const bool short_rows = cols <= kVirtualLanes<T> && a.grad == nullptr &&
                              short_rows_exp_sum(x, cols, count, row_max, exp_sum);
      for (int64_t k = 0; k < count && !short_rows; ++k) {
        const int64_t r = g0 + k;
        const bool ignored = a.target_prob.data == nullptr &&
                             load_unaligned(a.target_index + r * a.target_index_stride) == a.ignore_index;
        // The next row's logits (gathered ones are in cache already); the gradient row after it
        // (its stores come a row later).
        RowsAhead<T> ahead;
        if (!gather && r + 1 < rows) {
          ahead.logits = k + 1 < count
                             ? x[k + 1]
                             : row_start(a.logits, a.rows_per_sample, a.logits_sample_stride, r + 1);
        }
        if (a.grad != nullptr && r + 2 < rows) ahead.exps = a.grad + (r + 2) * cols;
        const RowSums sums =
            ignored ? RowSums{0.0, 1.0}
                    : row_exp_sum(x[k], cols, a.grad != nullptr ? a.grad + r * cols : nullptr, ahead);
        row_max[k] = sums.max;
        exp_sum[k] = sums.sum;
      }
      vector_log(exp_sum, log_sum, count);
      for (int64_t k = 0; k < count; ++k) {
        const int64_t r = g0 + k;
        double loss, denominator;
        const double sample = sample_weighted ? load_unaligned(a.sample_weight + r) : 1.0;
        const T* p = a.target_prob.data == nullptr
                         ? nullptr
                         : row_start(a.target_prob, a.rows_per_sample, a.target_prob_sample_stride, r);
        cross_entropy_row(a, r, x[k], p, grad_scale * sample, RowLogSumExp{row_max[k], log_sum[k]},
                          exp_sum[k], &loss, &denominator);
        if (a.out != nullptr) a.out[r] = static_cast<T>(sample_weighted ? loss * sample : loss);
        exact_sum_add_term(block.loss, loss, sample_weighted, sample);
        exact_sum_add_term(block.denominator, denominator, sample_weighted, sample);
      }
    }
    *block_sums = block;
  };
  bool failed = false;
  exact_blocks_sum(
      num_blocks, rows * cols, num_threads, a.interrupt,
      [&](int64_t b, Sums* block_sums) {
        if (!gather) return block_sum(b, block_sums, nullptr);
        Buffer<T> scratch(scratch_size);
        if (!scratch.ok()) {
      // Reported after the blocks: no exception may leave an OpenMP region.
#if defined(_OPENMP)
#pragma omp atomic write
#endif
          failed = true;
          return;
        }
        block_sum(b, block_sums, scratch.get());
      },
      sums);
  if (failed) throw std::bad_alloc();
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
