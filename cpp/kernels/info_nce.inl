// InfoNCE forward, one direction: for every query row, the log-sum-exp over its keys' logits is
// accumulated tile by tile (online log-sum-exp: a running max and a running sum rescaled when the
// max grows), so the N x (M+1) logits never exist; extra memory is one fixed tile per thread.
// Included inside an ISA namespace.

constexpr int64_t kQueryTile = 8;
constexpr int64_t kKeyTile = 128;

template <class T>
double dot_row(const T* a, const T* b, int64_t n) {
  double acc0 = 0.0, acc1 = 0.0, acc2 = 0.0, acc3 = 0.0;
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    acc0 += static_cast<double>(a[k]) * static_cast<double>(b[k]);
    acc1 += static_cast<double>(a[k + 1]) * static_cast<double>(b[k + 1]);
    acc2 += static_cast<double>(a[k + 2]) * static_cast<double>(b[k + 2]);
    acc3 += static_cast<double>(a[k + 3]) * static_cast<double>(b[k + 3]);
  }
  for (; k < n; ++k) acc0 += static_cast<double>(a[k]) * static_cast<double>(b[k]);
  return (acc0 + acc1) + (acc2 + acc3);
}

// 1 / max(||x||, 1e-12): the factor F.normalize applies.
template <class T>
double inverse_norm(const T* x, int64_t n) {
  const double norm = ::sqrt(dot_row(x, x, n));
  return 1.0 / (norm > 1e-12 ? norm : 1e-12);
}

// Running log-sum-exp state of one query.
struct OnlineLogSumExp {
  double max = -HUGE_VAL;
  double sum = 0.0;

  // Folds in `count` logits. NaN logits never win the max but poison the sum, as they should.
  void add(const double* logits, int64_t count) {
    double tile_max = max;
    for (int64_t j = 0; j < count; ++j) tile_max = logits[j] > tile_max ? logits[j] : tile_max;
    double tile_sum = 0.0;
    for (int64_t j = 0; j < count; ++j) tile_sum += ::exp(logits[j] - tile_max);
    // sum == 0 means nothing was added yet (max is -inf; -inf - -inf would be NaN).
    sum = (sum == 0.0 ? 0.0 : sum * ::exp(max - tile_max)) + tile_sum;
    max = tile_max;
  }

  double value() const { return max + ::log(sum); }
};

template <class T>
void info_nce(const InfoNceArgs<T>& a, int num_threads) {
  const int64_t n = a.query.rows;
  const int64_t dim = a.query.cols;
  const bool in_batch = a.mode == NegativeMode::in_batch;
  // Keys streamed after the positive: the positives themselves (in-batch) or the negatives.
  const T* keys = in_batch ? a.positive.data : a.negatives;
  const int64_t num_keys = in_batch ? a.positive.rows : a.num_negatives;
  const int64_t key_stride = in_batch ? a.positive.row_stride : a.negatives_stride1;
  const int64_t query_key_stride = a.mode == NegativeMode::paired ? a.negatives_stride0 : 0;
  // Paired negatives differ per query, so a query tile shares nothing: use tiles of one query.
  const int64_t query_tile = a.mode == NegativeMode::paired ? 1 : kQueryTile;
  const int64_t num_tiles = (n + query_tile - 1) / query_tile;
  const int64_t work = n * (num_keys + 1) * (dim > 0 ? dim : 1);
  const int threads = threads_for(work, num_tiles, num_threads);

#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#endif
  for (int64_t tile = 0; tile < num_tiles; ++tile) {
    double logits[kQueryTile * kKeyTile];
    double key_scale[kKeyTile];
    double query_scale[kQueryTile];
    OnlineLogSumExp state[kQueryTile];
    double positive_logit[kQueryTile];
    const int64_t i0 = tile * query_tile;
    const int64_t rows = i0 + query_tile < n ? query_tile : n - i0;

    for (int64_t r = 0; r < rows; ++r) {
      const T* q = a.query.data + (i0 + r) * a.query.row_stride;
      const T* p = a.positive.data + (i0 + r) * a.positive.row_stride;
      query_scale[r] = a.normalize ? inverse_norm(q, dim) * a.inv_temperature : a.inv_temperature;
      const double p_scale = a.normalize ? inverse_norm(p, dim) : 1.0;
      positive_logit[r] = dot_row(q, p, dim) * (p_scale * query_scale[r]);
      state[r] = OnlineLogSumExp();
      // With explicit negatives the positive is class 0 of the (M+1)-way softmax; in-batch it is
      // one of the streamed keys already.
      if (!in_batch) state[r].add(&positive_logit[r], 1);
    }

    for (int64_t j0 = 0; j0 < num_keys; j0 += kKeyTile) {
      const int64_t cols = j0 + kKeyTile < num_keys ? kKeyTile : num_keys - j0;
      for (int64_t r = 0; r < rows; ++r) {
        const T* q = a.query.data + (i0 + r) * a.query.row_stride;
        const T* key_base = keys + (i0 + r) * query_key_stride + j0 * key_stride;
        // Key norms are recomputed per tile instead of stored: O(tile) memory for any queue length.
        if (a.normalize && (r == 0 || query_key_stride != 0)) {
          for (int64_t c = 0; c < cols; ++c) key_scale[c] = inverse_norm(key_base + c * key_stride, dim);
        }
        double* row_logits = logits + r * kKeyTile;
        for (int64_t c = 0; c < cols; ++c) {
          const double scale = a.normalize ? key_scale[c] * query_scale[r] : query_scale[r];
          row_logits[c] = dot_row(q, key_base + c * key_stride, dim) * scale;
        }
        state[r].add(row_logits, cols);
      }
    }

    for (int64_t r = 0; r < rows; ++r) a.row_loss[i0 + r] = state[r].value() - positive_logit[r];
  }
}
