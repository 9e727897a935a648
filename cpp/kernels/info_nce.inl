// InfoNCE, one direction. For every query row the log-sum-exp over its keys' logits is
// accumulated tile by tile (online log-sum-exp: a running max and a running sum rescaled when the
// max grows), so the N x (M+1) logits never exist; extra memory is one fixed tile per thread.
// The backward pass streams the keys again, recomputing each tile's logits from the saved
// log-sum-exp (FlashAttention's trick). Included inside an ISA namespace.

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

constexpr double kNormFloor = 1e-12;

// 1 / max(||x||, 1e-12): the factor F.normalize applies.
template <class T>
double inverse_norm(const T* x, int64_t n) {
  const double norm = ::sqrt(dot_row(x, x, n));
  return 1.0 / (norm > kNormFloor ? norm : kNormFloor);
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

  // -log softmax of a logit x: (max - x) + log(sum), never lse - x, whose log(sum) would round
  // away beside logits of magnitude ~1e16 and beyond.
  double neg_log_softmax(double x) const { return (max - x) + ::log(sum); }
};

// Where one direction's keys live; keys of query i, key j at base + i * query_stride + j * stride.
template <class T>
struct KeyStream {
  const T* base;
  int64_t count;
  int64_t stride;
  int64_t query_stride;
  bool in_batch;
};

template <class T>
KeyStream<T> key_stream(const InfoNceArgs<T>& a) {
  const bool in_batch = a.mode == NegativeMode::in_batch;
  KeyStream<T> keys;
  keys.in_batch = in_batch;
  keys.base = in_batch ? a.positive.data : a.negatives;
  keys.count = in_batch ? a.positive.rows : a.num_negatives;
  keys.stride = in_batch ? a.positive.row_stride : a.negatives_stride1;
  keys.query_stride = a.mode == NegativeMode::paired ? a.negatives_stride0 : 0;
  return keys;
}

// Per-query factors of one query tile: query_scale = inv_temperature (times 1/||q|| with
// normalize), the positive logit and, with normalize, the inverse norms.
template <class T>
struct QueryTile {
  int64_t first = 0;
  int64_t rows = 0;
  double query_inv_norm[kQueryTile];
  double query_scale[kQueryTile];
  double positive_inv_norm[kQueryTile];
  double positive_logit[kQueryTile];
};

template <class T>
void load_query_tile(const InfoNceArgs<T>& a, int64_t first, int64_t rows, QueryTile<T>* tile) {
  const int64_t dim = a.query.cols;
  tile->first = first;
  tile->rows = rows;
  for (int64_t r = 0; r < rows; ++r) {
    const T* q = a.query.data + (first + r) * a.query.row_stride;
    const T* p = a.positive.data + (first + r) * a.positive.row_stride;
    tile->query_inv_norm[r] = a.normalize ? inverse_norm(q, dim) : 1.0;
    tile->query_scale[r] = a.normalize ? tile->query_inv_norm[r] * a.inv_temperature : a.inv_temperature;
    tile->positive_inv_norm[r] = a.normalize ? inverse_norm(p, dim) : 1.0;
    tile->positive_logit[r] = dot_row(q, p, dim) * (tile->positive_inv_norm[r] * tile->query_scale[r]);
  }
}

// Logits of query row r of the tile against keys [j0, j0 + cols). The forward and backward
// passes share this, so the backward pass sees bit-identical logits.
template <class T>
void logits_row(const InfoNceArgs<T>& a, const KeyStream<T>& keys, const QueryTile<T>& tile, int64_t r,
                int64_t j0, int64_t cols, double* key_inv_norm, bool key_norms_ready, double* out) {
  const int64_t dim = a.query.cols;
  const T* q = a.query.data + (tile.first + r) * a.query.row_stride;
  const T* key_base = keys.base + (tile.first + r) * keys.query_stride + j0 * keys.stride;
  // Key norms are recomputed per tile instead of stored: O(tile) memory for any queue length.
  if (a.normalize && !key_norms_ready) {
    for (int64_t c = 0; c < cols; ++c) key_inv_norm[c] = inverse_norm(key_base + c * keys.stride, dim);
  }
  for (int64_t c = 0; c < cols; ++c) {
    const double scale = a.normalize ? key_inv_norm[c] * tile.query_scale[r] : tile.query_scale[r];
    out[c] = dot_row(q, key_base + c * keys.stride, dim) * scale;
  }
}

inline int64_t min_i64(int64_t x, int64_t y) { return x < y ? x : y; }

template <class T>
void info_nce(const InfoNceArgs<T>& a, int num_threads) {
  const int64_t n = a.query.rows;
  const int64_t dim = a.query.cols;
  const KeyStream<T> keys = key_stream(a);
  // Paired negatives differ per query, so a query tile shares nothing: use tiles of one query.
  const int64_t query_tile = a.mode == NegativeMode::paired ? 1 : kQueryTile;
  const int64_t num_tiles = (n + query_tile - 1) / query_tile;
  const int threads = threads_for(n * (keys.count + 1) * (dim > 0 ? dim : 1), num_tiles, num_threads);

#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#endif
  for (int64_t t = 0; t < num_tiles; ++t) {
    double logits[kKeyTile];
    double key_inv_norm[kKeyTile];
    QueryTile<T> tile;
    OnlineLogSumExp state[kQueryTile];
    load_query_tile(a, t * query_tile, min_i64(query_tile, n - t * query_tile), &tile);
    // With explicit negatives the positive is class 0 of the (M+1)-way softmax; in-batch it is
    // one of the streamed keys already.
    for (int64_t r = 0; r < tile.rows; ++r) {
      if (!keys.in_batch) state[r].add(&tile.positive_logit[r], 1);
    }
    for (int64_t j0 = 0; j0 < keys.count; j0 += kKeyTile) {
      const int64_t cols = min_i64(kKeyTile, keys.count - j0);
      for (int64_t r = 0; r < tile.rows; ++r) {
        logits_row(a, keys, tile, r, j0, cols, key_inv_norm, r > 0 && keys.query_stride == 0, logits);
        state[r].add(logits, cols);
      }
    }
    for (int64_t r = 0; r < tile.rows; ++r) {
      a.row_loss[tile.first + r] = state[r].neg_log_softmax(tile.positive_logit[r]);
      if (a.row_max != nullptr) {
        a.row_max[tile.first + r] = state[r].max;
        a.row_log_sum[tile.first + r] = ::log(state[r].sum);
      }
    }
  }
}

// out += inv_norm * (g - x_hat (x_hat . g)) with x_hat = x * inv_norm: the chain rule through
// x / max(||x||, 1e-12) (the projection vanishes where the floor is active). Without normalize,
// out += g.
template <class T>
void add_row_gradient(const T* x, const double* g, int64_t dim, bool normalize, double inv_norm, T* out) {
  if (!normalize) {
    for (int64_t k = 0; k < dim; ++k) out[k] = static_cast<T>(static_cast<double>(out[k]) + g[k]);
    return;
  }
  double projection = 0.0;
  if (inv_norm < 1.0 / kNormFloor) {
    for (int64_t k = 0; k < dim; ++k) projection += static_cast<double>(x[k]) * inv_norm * g[k];
  }
  for (int64_t k = 0; k < dim; ++k) {
    const double x_hat = static_cast<double>(x[k]) * inv_norm;
    out[k] = static_cast<T>(static_cast<double>(out[k]) + inv_norm * (g[k] - x_hat * projection));
  }
}

// acc += coef * x
template <class T>
void axpy_row(double coef, const T* x, int64_t dim, double* acc) {
  for (int64_t k = 0; k < dim; ++k) acc[k] += coef * static_cast<double>(x[k]);
}

template <class T>
void info_nce_backward(const InfoNceArgs<T>& a, const InfoNceGradArgs<T>& g, int num_threads) {
  const int64_t n = a.query.rows;
  const int64_t dim = a.query.cols;
  if (n == 0) return;
  const KeyStream<T> keys = key_stream(a);
  const bool paired = a.mode == NegativeMode::paired;
  const int64_t query_tile = paired ? 1 : kQueryTile;
  const int64_t num_tiles = (n + query_tile - 1) / query_tile;
  const int64_t work = n * (keys.count + 1) * (dim > 0 ? dim : 1);
  const double inv_t = a.inv_temperature;
  // Keys streamed after the positive, as rows of a d_keys output (in-batch: the positives).
  T* d_keys = keys.in_batch ? g.d_positive : g.d_negatives;

  // Pass 1, over query tiles: d_query, d_positive (explicit negatives) and paired d_negatives.
  // coef_ij = row_grad_i * (softmax_ij - [j is the positive]); d logit / d q_hat = k_hat / T.
  const int threads1 = threads_for(work, num_tiles, num_threads);
  bool failed = false;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads1) if (threads1 > 1)
#endif
  for (int64_t t = 0; t < num_tiles; ++t) {
    double* acc = static_cast<double*>(std::malloc(sizeof(double) * (kQueryTile + 1) * (dim > 0 ? dim : 1)));
    if (acc == nullptr) {
      failed = true;  // reported after the loop: no exception may leave an OpenMP region
      continue;
    }
    double* grad_row = acc + kQueryTile * dim;
    double logits[kKeyTile];
    double key_inv_norm[kKeyTile];
    QueryTile<T> tile;
    load_query_tile(a, t * query_tile, min_i64(query_tile, n - t * query_tile), &tile);
    for (int64_t k = 0; k < kQueryTile * dim; ++k) acc[k] = 0.0;

    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t i = tile.first + r;
      if (keys.in_batch) continue;
      const double coef = g.row_grad[i] * (::exp((tile.positive_logit[r] - g.row_max[i]) - g.row_log_sum[i]) - 1.0) * inv_t;
      const T* q = a.query.data + i * a.query.row_stride;
      const T* p = a.positive.data + i * a.positive.row_stride;
      axpy_row(coef * tile.positive_inv_norm[r], p, dim, acc + r * dim);
      for (int64_t k = 0; k < dim; ++k) grad_row[k] = coef * tile.query_inv_norm[r] * static_cast<double>(q[k]);
      add_row_gradient(p, grad_row, dim, a.normalize, tile.positive_inv_norm[r], g.d_positive + i * dim);
    }
    for (int64_t j0 = 0; j0 < keys.count; j0 += kKeyTile) {
      const int64_t cols = min_i64(kKeyTile, keys.count - j0);
      for (int64_t r = 0; r < tile.rows; ++r) {
        const int64_t i = tile.first + r;
        logits_row(a, keys, tile, r, j0, cols, key_inv_norm, r > 0 && keys.query_stride == 0, logits);
        const T* q = a.query.data + i * a.query.row_stride;
        const T* key_base = keys.base + i * keys.query_stride + j0 * keys.stride;
        for (int64_t c = 0; c < cols; ++c) {
          double coef = ::exp((logits[c] - g.row_max[i]) - g.row_log_sum[i]);
          if (keys.in_batch && j0 + c == i) coef -= 1.0;
          coef *= g.row_grad[i] * inv_t;
          const double key_norm = a.normalize ? key_inv_norm[c] : 1.0;
          axpy_row(coef * key_norm, key_base + c * keys.stride, dim, acc + r * dim);
          if (paired) {
            for (int64_t k = 0; k < dim; ++k) grad_row[k] = coef * tile.query_inv_norm[r] * static_cast<double>(q[k]);
            add_row_gradient(key_base + c * keys.stride, grad_row, dim, a.normalize, key_norm,
                             g.d_negatives + (i * keys.count + j0 + c) * dim);
          }
        }
      }
    }
    for (int64_t r = 0; r < tile.rows; ++r) {
      const int64_t i = tile.first + r;
      add_row_gradient(a.query.data + i * a.query.row_stride, acc + r * dim, dim, a.normalize,
                       tile.query_inv_norm[r], g.d_query + i * dim);
    }
    std::free(acc);
  }
  if (failed) throw std::bad_alloc();
  if (paired) return;

  // Pass 2, over key tiles: the shared keys' gradient, sum_i coef_ij * q_hat_i / T. Each thread
  // owns whole key tiles and visits queries in order, so the sums do not depend on threads.
  const int64_t num_key_tiles = (keys.count + kKeyTile - 1) / kKeyTile;
  const int threads2 = threads_for(work, num_key_tiles, num_threads);
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads2) if (threads2 > 1)
#endif
  for (int64_t kt = 0; kt < num_key_tiles; ++kt) {
    const int64_t j0 = kt * kKeyTile;
    const int64_t cols = min_i64(kKeyTile, keys.count - j0);
    double* acc = static_cast<double*>(std::malloc(sizeof(double) * kKeyTile * (dim > 0 ? dim : 1)));
    if (acc == nullptr) {
      failed = true;
      continue;
    }
    for (int64_t k = 0; k < cols * dim; ++k) acc[k] = 0.0;
    double logits[kKeyTile];
    double key_inv_norm[kKeyTile];
    QueryTile<T> tile;
    for (int64_t i0 = 0; i0 < n; i0 += kQueryTile) {
      load_query_tile(a, i0, min_i64(kQueryTile, n - i0), &tile);
      for (int64_t r = 0; r < tile.rows; ++r) {
        const int64_t i = i0 + r;
        logits_row(a, keys, tile, r, j0, cols, key_inv_norm, i > 0, logits);
        const T* q = a.query.data + i * a.query.row_stride;
        for (int64_t c = 0; c < cols; ++c) {
          double coef = ::exp((logits[c] - g.row_max[i]) - g.row_log_sum[i]);
          if (keys.in_batch && j0 + c == i) coef -= 1.0;
          axpy_row(coef * g.row_grad[i] * inv_t * tile.query_inv_norm[r], q, dim, acc + c * dim);
        }
      }
    }
    for (int64_t c = 0; c < cols; ++c) {
      const T* key = keys.base + (j0 + c) * keys.stride;
      const double key_norm = a.normalize ? key_inv_norm[c] : 1.0;
      add_row_gradient(key, acc + c * dim, dim, a.normalize, key_norm, d_keys + (j0 + c) * dim);
    }
    std::free(acc);
  }
  if (failed) throw std::bad_alloc();
}
