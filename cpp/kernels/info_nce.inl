// InfoNCE, one direction. The q . k products are a matrix product, computed by a register-blocked
// micro-kernel over packed key panels (the BLIS approach); the online log-sum-exp (a running max
// and a running sum, rescaled when the max grows) is folded in while each tile of logits is in
// L1, so the N x (M+1) logits never exist. The backward pass streams the keys again and
// recomputes each tile's logits from the saved log-sum-exp (FlashAttention's trick).
//
// Threads split the work along queries (blocks of kQueryBlock) and keys (chunks whose size
// depends only on M); every chunk's partial state is merged in chunk order, so results have the
// same bits for any thread count. Every path (scalar, AVX2, AVX-512, NEON) gives the same bits
// too: sums run over a fixed number of virtual lanes (virtual_lanes.inl), every element of a
// matrix product is one chain of fused multiply-adds whatever the micro-kernel's shape, and every
// exp and log is vecmath.inl's. Included inside an ISA namespace.

constexpr int64_t kKeyTile = 256;    // keys packed at a time: kKeyTile x D stays in L2
constexpr int64_t kQueryBlock = 96;  // queries per logit tile (a multiple of every micro-kernel's rows)
constexpr int64_t kQueryGroup =
    4 * kQueryBlock;                  // queries per work item: each packed key tile serves them all
constexpr int64_t kChunkKeys = 1024;  // keys per chunk, at least
constexpr int64_t kMaxChunks = 16;    // so chunk partials stay O(16 N)
constexpr double kNormFloor = 1e-12;

inline int64_t min_i64(int64_t x, int64_t y) { return x < y ? x : y; }
inline int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

// exp and log of one float64 by the ISA's vector polynomials (simd/vecmath.inl): every path then
// rounds them alike, which libm's exp and log (another algorithm, possibly per CPU) would not.
inline double exp1(double x) {
  using SD = Simd<double>;
  double out[SD::kLanes];
  SD::store(out, SD::exp(SD::set1(x)));
  return out[0];
}
inline double log1(double x) {
  using SD = Simd<double>;
  double out[SD::kLanes];
  SD::store(out, SD::log(SD::set1(x)));
  return out[0];
}

// sum_k a[k] b[k] in T, with the same bits on every path: kVirtualLanes<T> chains of fused
// multiply-adds (virtual_lanes.inl), virtual lane v taking k = v (mod kVirtualLanes) in order and
// the tail as one more step of zeros past n, then the fixed fold. Two registers on AVX-512 keep
// two chains in flight, as the loop before it had.
template <class T>
double dot(const T* a, const T* b, int64_t n) {
  using S = Simd<T>;
  constexpr int64_t L = S::kLanes;
  constexpr int64_t W = kVirtualLanes<T>;
  constexpr int64_t R = W / L;
  typename S::V acc[R];
#pragma GCC unroll 32
  for (int64_t r = 0; r < R; ++r) acc[r] = S::zero();
  int64_t k = 0;
  for (; k + W <= n; k += W) {
#pragma GCC unroll 32
    for (int64_t r = 0; r < R; ++r) acc[r] = S::fmadd(S::load(a + k + r * L), S::load(b + k + r * L), acc[r]);
  }
  if (k < n) {
#pragma GCC unroll 32
    for (int64_t r = 0; r < R; ++r) {
      const int64_t m = n - k - r * L;  // <= 0: all zeros, as every path loads them
      acc[r] =
          S::fmadd(S::load_partial(a + k + r * L, m, T(0)), S::load_partial(b + k + r * L, m, T(0)), acc[r]);
    }
  }
  return static_cast<double>(fold_virtual_registers<T>(acc));
}

// With normalize, the dot products are taken before the norms divide them, so |q| |k| (which
// bounds every partial sum of q . k) must fit in T: rows longer than this are reported to the
// caller (a ValueError) instead of giving inf or NaN logits where the normalised rows have none.
template <class T>
constexpr double kMaxNormalizedNorm = sizeof(T) == sizeof(float) ? 0x1p60 : 0x1p500;

// 1 / max(||x||, 1e-12): the factor F.normalize applies. A finite row longer than
// kMaxNormalizedNorm sets `which` in *too_long (if given); a row holding inf or NaN is left to
// propagate, as it does through F.normalize.
template <class T>
double inverse_norm(const T* x, int64_t n, int which = 0, int* too_long = nullptr) {
  const double norm = ::sqrt(dot(x, x, n));
  if (too_long != nullptr && norm > kMaxNormalizedNorm<T>) {
    bool finite = true;
    for (int64_t k = 0; k < n; ++k) finite = finite && std::isfinite(load_unaligned(x + k));
    if (finite) __atomic_fetch_or(too_long, which, __ATOMIC_RELAXED);
  }
  return 1.0 / (norm > kNormFloor ? norm : kNormFloor);
}

// The A operand of a matrix product, element (r, k) of the rows the micro-kernel computes.
// Packed: data[k * k_stride + r]. The kMicroRows values of one step lie side by side, so a single
// pointer serves every row, where one pointer per row would cost the micro-kernel registers.
template <class T>
struct PackedOperand {
  const T* data;
  int64_t k_stride;
  T at(int64_t r, int64_t k) const { return data[k * k_stride + r]; }
  PackedOperand rows_from(int64_t r0) const { return {data + r0, k_stride}; }
};

// C[r][0 .. NR) (+)= sum_k a(r, k) * b[k * ldb + 0 .. NR) for r < kMicroRows, NR = kMicroVecs *
// kLanes: kMicroRows x kMicroVecs vector accumulators live in registers, each step loads
// kMicroVecs vectors of b and broadcasts one a per row.
template <class T, class Operand>
void micro_kernel(int64_t depth, const Operand& a, const T* b, int64_t ldb, T* c, int64_t ldc,
                  bool accumulate) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int64_t MR = S::kMicroRows;
  constexpr int64_t NV = S::kMicroVecs;
  constexpr int64_t L = S::kLanes;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int64_t r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int64_t v = 0; v < NV; ++v) acc[r][v] = accumulate ? S::load(c + r * ldc + v * L) : S::zero();
  }
  for (int64_t k = 0; k < depth; ++k) {
    V bv[NV];
#pragma GCC unroll 4
    for (int64_t v = 0; v < NV; ++v) bv[v] = S::load(b + k * ldb + v * L);
#pragma GCC unroll 16
    for (int64_t r = 0; r < MR; ++r) {
      const V x = S::set1(a.at(r, k));
#pragma GCC unroll 4
      for (int64_t v = 0; v < NV; ++v) acc[r][v] = S::fmadd(x, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int64_t r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int64_t v = 0; v < NV; ++v) S::store(c + r * ldc + v * L, acc[r][v]);
  }
}

// Where one direction's keys live; key j of query i at base + i * query_stride + j * stride.
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

// A logit from a dot product of the rows as given: the inverse norms first, 1 / temperature last,
// so that no factor overflows where the logit does not (1 / (||q|| temperature) can, at a tiny
// temperature, and would turn a zero dot product into NaN).
template <class T>
double logit_of_dot(const InfoNceArgs<T>& a, double dot_product, double query_inv_norm, double key_inv_norm) {
  if (!a.normalize) return dot_product * a.inv_temperature;
  return ((dot_product * key_inv_norm) * query_inv_norm) * a.inv_temperature;
}

// Whether Simd<T> has transpose_square (a kLanes x kLanes block transposed in registers); the
// ISAs without it pack element by element.
template <class S, class = void>
struct HasTransposeSquare : std::false_type {};
template <class S>
struct HasTransposeSquare<S, std::void_t<decltype(&S::transpose_square)>> : std::true_type {};

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols: whole kLanes x kLanes
// blocks in registers where the ISA has transpose_square, the rest element by element.
template <class T>
void transpose_into(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst,
                    int64_t dst_stride) {
  using S = Simd<T>;
  constexpr int64_t L = S::kLanes;
  int64_t r0 = 0;
  if constexpr (HasTransposeSquare<S>::value) {
    for (; r0 + L <= rows; r0 += L) {
      int64_t c0 = 0;
      for (; c0 + L <= cols; c0 += L) {
        S::transpose_square(src + r0 * src_stride + c0, src_stride, dst + c0 * dst_stride + r0, dst_stride);
      }
      for (int64_t r = r0; r < r0 + L; ++r) {
        for (int64_t c = c0; c < cols; ++c)
          dst[c * dst_stride + r] = load_unaligned(src + r * src_stride + c);
      }
    }
  }
  for (int64_t r = r0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * dst_stride + r] = load_unaligned(src + r * src_stride + c);
  }
}

// The rows [first, first + count) of a row-major matrix as the micro-kernel's packed A operand:
// group g (kMicroRows rows; a last short group repeats its last row) at g * kMicroRows * dim,
// element (r, k) at k * kMicroRows + r.
template <class T>
void pack_rows(const T* base, int64_t stride, int64_t first, int64_t count, int64_t dim, T* out) {
  constexpr int64_t MR = Simd<T>::kMicroRows;
  for (int64_t g = 0; g < ceil_div(count, MR); ++g) {
    const int64_t present = min_i64(MR, count - g * MR);
    T* group = out + g * MR * dim;
    transpose_into(base + (first + g * MR) * stride, stride, present, dim, group, MR);
    const T* last = base + (first + g * MR + present - 1) * stride;
    for (int64_t r = present; r < MR; ++r) {
      for (int64_t k = 0; k < dim; ++k) group[k * MR + r] = load_unaligned(last + k);
    }
  }
}

// `panels` panels of NR = kMicroVecs * kLanes rows of a row-major matrix, the micro-kernel's B:
// panel p holds dim rows of NR values (element (n, k) at p * dim * NR + k * NR + n). Rows past
// `count` are zero, so their products are computed but never read.
template <class T>
void pack_panels(const T* base, int64_t stride, int64_t count, int64_t dim, T* packed, int64_t panels) {
  constexpr int64_t NR = Simd<T>::kMicroVecs * Simd<T>::kLanes;
  for (int64_t p = 0; p < panels; ++p) {
    T* panel = packed + p * dim * NR;
    const int64_t present = min_i64(NR, count - p * NR);
    transpose_into(base + p * NR * stride, stride, present, dim, panel, NR);
    for (int64_t k = 0; k < dim; ++k) {
      for (int64_t n = present; n < NR; ++n) panel[k * NR + n] = T(0);
    }
  }
}

// Per-query factors shared by the forward and backward passes, O(N).
template <class T>
struct QueryFactors {
  Buffer<double> query_inv_norm;     // 1 / ||q|| (1 without normalize)
  Buffer<double> positive_inv_norm;  // 1 / ||k+|| (1 without normalize)
  Buffer<double> positive_logit;     // q . k+ scaled (explicit negatives only)
  // The queries as the micro-kernel's packed operand: row group g (kMicroRows queries, the last
  // one's missing rows repeating its last query) at g * kMicroRows * dim, element (r, k) at
  // k * kMicroRows + r.
  Buffer<T> packed_query;

  QueryFactors(const InfoNceArgs<T>& a)
      : query_inv_norm(a.query.rows),
        positive_inv_norm(a.query.rows),
        positive_logit(a.query.rows),
        packed_query(a.mode == NegativeMode::paired
                         ? 0
                         : ceil_div(a.query.rows, Simd<T>::kMicroRows) * Simd<T>::kMicroRows * a.query.cols) {
    if (!query_inv_norm.ok() || !positive_inv_norm.ok() || !positive_logit.ok() || !packed_query.ok()) {
      throw std::bad_alloc();
    }
    const int64_t dim = a.query.cols;
    if (a.mode != NegativeMode::paired) {
      pack_rows(a.query.data, a.query.row_stride, 0, a.query.rows, dim, packed_query.get());
    }
    for (int64_t i = 0; i < a.query.rows; ++i) {
      const T* q = a.query.data + i * a.query.row_stride;
      const T* p = a.positive.data + i * a.positive.row_stride;
      query_inv_norm[i] = a.normalize ? inverse_norm(q, dim, kQueryTooLong, a.too_long) : 1.0;
      positive_inv_norm[i] = a.normalize ? inverse_norm(p, dim, kPositiveTooLong, a.too_long) : 1.0;
      positive_logit[i] = logit_of_dot(a, dot(q, p, dim), query_inv_norm[i], positive_inv_norm[i]);
    }
  }
};

// How the keys are cut: chunks depend only on the number of keys, never on threads.
struct KeyChunks {
  int64_t count;
  int64_t size;

  explicit KeyChunks(int64_t num_keys) {
    const int64_t wanted = num_keys <= 0 ? 1 : min_i64(kMaxChunks, ceil_div(num_keys, kChunkKeys));
    size = ceil_div(ceil_div(num_keys > 0 ? num_keys : 1, wanted), kKeyTile) * kKeyTile;
    count = num_keys <= 0 ? 1 : ceil_div(num_keys, size);
  }
};

// Elements of the shared-keys backward pass's scratch (per-chunk query gradients, chunks x N x D);
// none for paired negatives.
template <class T>
int64_t info_nce_backward_workspace(const InfoNceArgs<T>& a) {
  if (a.mode == NegativeMode::paired) return 0;
  return KeyChunks(key_stream(a).count).count * a.query.rows * a.query.cols;
}

// A 4096-bit summary of a key tile's labels: a query whose label's bit is clear has no key of its
// label in the tile (most rows of a queue tile, with many classes), so it skips the scan.
struct LabelBits {
  uint64_t words[64];
  static uint64_t slot(int64_t label) { return (static_cast<uint64_t>(label) * 0x9E3779B97F4A7C15ull) >> 52; }
  void build(const int64_t* labels, int64_t count) {
    for (uint64_t& w : words) w = 0;
    for (int64_t j = 0; j < count; ++j) words[slot(labels[j]) >> 6] |= uint64_t(1) << (slot(labels[j]) & 63);
  }
  bool may_hold(int64_t label) const { return ((words[slot(label) >> 6] >> (slot(label) & 63)) & 1) != 0; }
};

// Scratch for one work item: a packed key tile, the keys' inverse norms, a tile of logits.
template <class T>
struct TileScratch {
  static constexpr int64_t kNR = Simd<T>::kMicroVecs * Simd<T>::kLanes;
  static constexpr int64_t kMR = Simd<T>::kMicroRows;
  int64_t dim;
  Buffer<T> packed;             // kKeyTile / NR panels of dim x NR
  Buffer<double> key_inv_norm;  // kKeyTile
  Buffer<T> key_scale;          // kKeyTile: key_inv_norm in T, for the vector loops
  Buffer<T> logits;             // kQueryBlock x kKeyTile
  LabelBits label_bits;         // of the tile's key labels, if any

  explicit TileScratch(int64_t d)
      : dim(d),
        packed(kKeyTile * (d > 0 ? d : 1)),
        key_inv_norm(kKeyTile),
        key_scale(kKeyTile),
        logits(kQueryBlock * kKeyTile) {}
  bool ok() const { return packed.ok() && key_inv_norm.ok() && key_scale.ok() && logits.ok(); }
};

// Packs keys [j0, j0 + cols) of a shared stream into panels: panel p holds dim rows of NR keys.
// Keys past `cols` are zero, so their logits are computed but never read.
template <class T>
void pack_keys(const InfoNceArgs<T>& a, const KeyStream<T>& keys, int64_t j0, int64_t cols,
               TileScratch<T>* s) {
  constexpr int64_t NR = TileScratch<T>::kNR;
  const int64_t dim = s->dim;
  pack_panels(keys.base + j0 * keys.stride, keys.stride, cols, dim, s->packed.get(), ceil_div(cols, NR));
  for (int64_t j = 0; j < cols; ++j) {
    const int which = a.mode == NegativeMode::in_batch ? kPositiveTooLong : kNegativesTooLong;
    s->key_inv_norm[j] =
        a.normalize ? inverse_norm(keys.base + (j0 + j) * keys.stride, dim, which, a.too_long) : 1.0;
    s->key_scale[j] = static_cast<T>(s->key_inv_norm[j]);
  }
  for (int64_t j = cols; j < kKeyTile; ++j) s->key_scale[j] = T(0);
  if (a.key_labels != nullptr) s->label_bits.build(a.key_labels + j0, cols);
}

// Logits of queries [i0, i0 + rows) (rows <= kQueryBlock) against the packed tile of `cols` keys,
// into s->logits (row stride kKeyTile): dot products by the micro-kernel, then the scales.
template <class T>
void logit_tile(const InfoNceArgs<T>& a, const QueryFactors<T>& f, int64_t i0, int64_t rows, int64_t cols,
                TileScratch<T>* s) {
  constexpr int64_t NR = TileScratch<T>::kNR;
  constexpr int64_t MR = TileScratch<T>::kMR;
  const int64_t dim = s->dim;
  const int64_t panels = ceil_div(cols, NR);
  // A panel of keys stays in L1 while the packed queries stream past it; the output goes straight
  // into the tile, whose rows past `rows` take the results of repeated queries (kQueryBlock is a
  // multiple of MR, and i0 too).
  for (int64_t p = 0; p < panels; ++p) {
    const T* panel = s->packed.get() + p * dim * NR;
    for (int64_t r0 = 0; r0 < rows; r0 += MR) {
      const PackedOperand<T> queries{f.packed_query.get() + (i0 + r0) * dim, MR};
      micro_kernel<T>(dim, queries, panel, NR, s->logits.get() + r0 * kKeyTile + p * NR, kKeyTile, false);
    }
  }
  using S = Simd<T>;
  constexpr int64_t L = S::kLanes;
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s->logits.get() + r * kKeyTile;
    // The factors in logit_of_dot's order. 1 / temperature fits in T (the caller checks).
    const typename S::V q_inv_norm = S::set1(static_cast<T>(f.query_inv_norm[i0 + r]));
    const typename S::V inv_temperature = S::set1(static_cast<T>(a.inv_temperature));
    // The tile is padded to whole panels, so whole vectors stay inside it.
    for (int64_t j = 0; j < cols; j += L) {
      typename S::V v = S::load(row + j);
      if (a.normalize) v = S::mul(S::mul(v, S::load(s->key_scale.get() + j)), q_inv_norm);
      S::store(row + j, S::mul(v, inv_temperature));
    }
  }
}

// -- labels and decoupling -----------------------------------------------------------------
// Row i's positives P(i) and the logits of its log-sum-exp D(i):
//   in-batch: key j is a positive if j == i or key_labels[j] == query_labels[i]; D(i) is every
//     key (SupCon's L_out), or with decoupled the keys outside P(i) (DCL);
//   explicit negatives: the positive is class 0 (P(i) = {it}); a negative of the query's label
//     is a false negative, outside D(i); the positive is in D(i) unless decoupled.
// Masked logits are removed from a tile row before its log-sum-exp (filter_row) and their
// probabilities set to exactly 0 in the backward pass, so no exp of a masked logit (which a
// vector exp of -inf might round to a tiny floor) is ever summed.
template <class T>
bool filters_keys(const InfoNceArgs<T>& a) {
  return a.query_labels != nullptr || (a.decoupled && a.mode == NegativeMode::in_batch);
}

// The labels of row i's keys from j0 on, or null without labels.
template <class T>
const int64_t* tile_labels(const InfoNceArgs<T>& a, int64_t i, int64_t j0) {
  if (a.key_labels == nullptr) return nullptr;
  return a.key_labels + (a.mode == NegativeMode::paired ? i * a.num_negatives : 0) + j0;
}

// Whether any of `cols` keys is a positive or a false negative: the tile's label bits (null for
// paired negatives) rule most rows out, else a branch-free scan.
inline bool tile_has_special(const int64_t* labels, int64_t label, int64_t cols, bool diagonal_in_tile,
                             const LabelBits* bits) {
  if (diagonal_in_tile) return true;
  if (labels == nullptr || (bits != nullptr && !bits->may_hold(label))) return false;
  int any = 0;
  for (int64_t j = 0; j < cols; ++j) any |= labels[j] == label ? 1 : 0;
  return any != 0;
}

struct KeyRole {
  bool positive;  // in P(i) (in-batch only; the explicit-negative positive is class 0)
  bool in_sum;    // in D(i)
};

inline KeyRole key_role(bool in_batch, bool decoupled, const int64_t* labels, int64_t label, int64_t j,
                        bool is_diagonal) {
  const bool same = labels != nullptr && labels[j] == label;
  if (!in_batch) return {false, !same};
  const bool positive = same || is_diagonal;
  return {positive, !(positive && decoupled)};
}

// Removes in place, order kept, the logits whose key label is `label` (false negatives), and
// returns how many remain. Blocks of 32 labels are tested by a vectorisable scan first: a block
// without a match moves as a whole (usually not at all), so a row with one false negative costs
// about one block's scalar pass.
template <class T>
int64_t drop_false_negatives(const int64_t* labels, int64_t label, int64_t cols, T* row) {
  constexpr int64_t kBlock = 32;
  int64_t kept = 0;
  for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
    const int64_t count = min_i64(kBlock, cols - c0);
    int any = 0;
    for (int64_t j = 0; j < count; ++j) any |= labels[c0 + j] == label ? 1 : 0;
    if (any == 0) {
      if (kept != c0) std::memmove(row + kept, row + c0, static_cast<size_t>(count) * sizeof(T));
      kept += count;
      continue;
    }
    for (int64_t j = 0; j < count; ++j) {
      row[kept] = row[c0 + j];
      kept += labels[c0 + j] != label ? 1 : 0;
    }
  }
  return kept;
}

// Row i's logits of keys [j0, j0 + cols) with those outside D(i) removed in place, the rest in
// their order (so every path sums one fixed sequence); in-batch with labels, the positives'
// logits are added to *positive_sum in key order. Returns how many remain. `bits`: the tile's
// label bits, or null.
template <class T>
int64_t filter_row(const InfoNceArgs<T>& a, bool in_batch, int64_t i, int64_t j0, int64_t cols, T* row,
                   double* positive_sum, const LabelBits* bits) {
  const int64_t* labels = tile_labels(a, i, j0);
  const int64_t label = a.query_labels != nullptr ? a.query_labels[i] : 0;
  const int64_t diagonal = in_batch ? i - j0 : -1;
  const bool diagonal_in_tile = diagonal >= 0 && diagonal < cols;
  if (!diagonal_in_tile && (labels == nullptr || (bits != nullptr && !bits->may_hold(label)))) return cols;
  if (!in_batch) return drop_false_negatives(labels, label, cols, row);
  // Keys before the first positive or false negative stay where they are.
  int64_t j = 0;
  if (labels != nullptr) {
    while (j < cols && labels[j] != label && j != diagonal) ++j;
  } else {
    j = diagonal;
  }
  int64_t kept = j;
  for (; j < cols; ++j) {
    const KeyRole role = key_role(in_batch, a.decoupled, labels, label, j, j == diagonal);
    if (role.positive && labels != nullptr) *positive_sum += static_cast<double>(row[j]);
    row[kept] = row[j];
    kept += role.in_sum ? 1 : 0;
  }
  return kept;
}

// Heapsort of int64 labels, here rather than std::sort: a std:: template instantiated in a wide
// ISA's file is one symbol the linker may merge with the baseline's copy (so the scalar path
// could run AVX code); this one lives in the ISA's namespace.
inline void sort_labels(int64_t* a, int64_t n) {
  const auto sift_down = [a](int64_t root, int64_t end) {
    while (2 * root + 1 < end) {
      int64_t child = 2 * root + 1;
      if (child + 1 < end && a[child] < a[child + 1]) ++child;
      if (!(a[root] < a[child])) return;
      const int64_t t = a[root];
      a[root] = a[child];
      a[child] = t;
      root = child;
    }
  };
  for (int64_t start = n / 2 - 1; start >= 0; --start) sift_down(start, n);
  for (int64_t end = n - 1; end > 0; --end) {
    const int64_t t = a[0];
    a[0] = a[end];
    a[end] = t;
    sift_down(0, end);
  }
}

// The first index of sorted[0, n) whose value is >= value (strictly_greater: > value).
inline int64_t label_bound(const int64_t* sorted, int64_t n, int64_t value, bool strictly_greater) {
  int64_t low = 0, high = n;
  while (low < high) {
    const int64_t mid = low + (high - low) / 2;
    const bool before = strictly_greater ? sorted[mid] <= value : sorted[mid] < value;
    if (before) {
      low = mid + 1;
    } else {
      high = mid;
    }
  }
  return low;
}

// Per row, |P(i)| and |D(i)|, counted from the labels before any logit (the key labels of a
// shared stream sorted once: O((N + M) log M)). |D(i)| = 0 gives the row loss -inf: the
// log-sum-exp of no logit is log 0.
template <class T>
struct RowSets {
  Buffer<int64_t> positives;
  Buffer<int64_t> in_sum;

  explicit RowSets(const InfoNceArgs<T>& a) : positives(a.query.rows), in_sum(a.query.rows) {
    const int64_t n = a.query.rows;
    const bool in_batch = a.mode == NegativeMode::in_batch;
    const bool paired = a.mode == NegativeMode::paired;
    const int64_t keys = in_batch ? n : a.num_negatives;
    // Only in-batch positives with labels and an empty D(i) (possible only when decoupled) need
    // the counts; otherwise |P(i)| = 1 and |D(i)| >= 1 (the positive), without the sort.
    const bool labels = a.query_labels != nullptr && a.key_labels != nullptr && (in_batch || a.decoupled);
    Buffer<int64_t> sorted(labels && !paired ? keys : 0);
    if (!positives.ok() || !in_sum.ok() || !sorted.ok()) throw std::bad_alloc();
    if (labels && !paired) {
      for (int64_t j = 0; j < keys; ++j) sorted[j] = a.key_labels[j];
      sort_labels(sorted.get(), keys);
    }
    for (int64_t i = 0; i < n; ++i) {
      int64_t same = 0;
      if (labels && paired) {
        const int64_t* row = a.key_labels + i * keys;
        for (int64_t j = 0; j < keys; ++j) same += row[j] == a.query_labels[i] ? 1 : 0;
      } else if (labels) {
        same = label_bound(sorted.get(), keys, a.query_labels[i], true) -
               label_bound(sorted.get(), keys, a.query_labels[i], false);
      }
      if (in_batch) {
        positives[i] = same + (labels && a.key_labels[i] == a.query_labels[i] ? 0 : 1);
        in_sum[i] = a.decoupled ? n - positives[i] : n;
      } else {
        positives[i] = 1;
        in_sum[i] = keys - same + (a.decoupled ? 0 : 1);
      }
    }
  }
};

// Running log-sum-exp of one query: logsumexp = max + log(sum).
struct OnlineLogSumExp {
  double max = -HUGE_VAL;
  double sum = 0.0;

  // The shift of exp(x - shift) for values whose max is m. A max of -inf means every value is -inf
  // (or NaN, which the max drops): each adds exp(-inf) = 0, which a shift of 0 gives, where
  // exp(-inf - -inf) would be NaN and poison the row (a whole tile of -inf logits: -inf inputs,
  // or float32 logits that overflow at a tiny temperature). A NaN value still gives NaN.
  static double shift_for(double m) { return m == -HUGE_VAL ? 0.0 : m; }

  // Folds in values whose max is other_max and whose sum of exp(x - other_max) is other_sum. A side
  // whose max is -inf holds only -inf: it contributes nothing, whatever its sum, unless that is NaN.
  void merge(double other_max, double other_sum) {
    if (other_sum == 0.0) return;  // nothing added on that side
    if (sum == 0.0) {
      max = other_max;
      sum = other_sum;
      return;
    }
    // NaN maxima fall through to the sum and poison it, as IEEE says they should.
    const double new_max = other_max > max ? other_max : max;
    const double shift = shift_for(new_max);
    sum = sum * exp1(max - shift) + other_sum * exp1(other_max - shift);
    max = new_max;
  }

  // sum_j exp(logits[j] - shift) in float64 virtual lanes, folded; kFinite: no NaN or infinity
  // among the logits (a template argument, so that the loop holds no branch).
  template <class T, bool kFinite>
  static double exp_sum(const T* logits, int64_t count, typename Simd<T>::V shift) {
    using S = Simd<T>;
    using SD = Simd<double>;
    constexpr int64_t L = S::kLanes;
    constexpr int64_t W = kVirtualLanes<double>;  // logits per step, one per float64 virtual lane
    constexpr int64_t U = W / L;                  // T vectors per step
    constexpr int64_t R = W / SD::kLanes;         // float64 registers
    static_assert(U * L == W && U * S::kWideParts == R, "a step fills the float64 lanes exactly");
    const T neg_inf = -static_cast<T>(HUGE_VAL);
    typename SD::V sum[R];
#pragma GCC unroll 16
    for (int64_t r = 0; r < R; ++r) sum[r] = SD::zero();
    const auto accumulate = [&](const typename S::V* x) FASTLOSS_ALWAYS_INLINE {
#pragma GCC unroll 16
      for (int64_t u = 0; u < U; ++u) {
        const typename S::V d = S::sub(x[u], shift);
        const typename S::V e = kFinite ? exp_nonpositive_finite_poly<T>(d) : S::exp(d);
#pragma GCC unroll 2
        for (int p = 0; p < S::kWideParts; ++p) {
          sum[u * S::kWideParts + p] = SD::add(sum[u * S::kWideParts + p], S::widen(e, p));
        }
      }
    };
    int64_t j = 0;
    for (; j + W <= count; j += W) {
      typename S::V x[U];
#pragma GCC unroll 16
      for (int64_t u = 0; u < U; ++u) x[u] = S::load(logits + j + u * L);
      accumulate(x);
    }
    if (j < count) {
      // Past `count`, -inf: exp gives +0 there, on every path.
      typename S::V x[U];
#pragma GCC unroll 16
      for (int64_t u = 0; u < U; ++u) x[u] = S::load_partial(logits + j + u * L, count - j - u * L, neg_inf);
      accumulate(x);
    }
    return fold_virtual_registers<double>(sum);
  }

  // Folds in `count` logits with vector exps, relative to the running max (raised first when the
  // tile's is larger), so that a tile costs no exp of its own beyond its logits'. The bits are the
  // same on every path: the max is exact (its zero made +0, which maxps would pick by operand
  // order), and each exp, widened to float64, goes to virtual lane (index mod
  // kVirtualLanes<double>) in order, folded by the fixed tree (virtual_lanes.inl). A tile of
  // finite logits takes exp_nonpositive_finite_poly, which has exp_poly's bits there.
  template <class T>
  void add(const T* logits, int64_t count) {
    using S = Simd<T>;
    constexpr int64_t L = S::kLanes;
    const T neg_inf = -static_cast<T>(HUGE_VAL);
    typename S::V max_vec = S::set1(neg_inf);
    typename S::V non_finite = S::zero();  // x - x: NaN once any logit is NaN or infinite
    int64_t j = 0;
    for (; j + L <= count; j += L) {
      const typename S::V x = S::load(logits + j);
      max_vec = S::max(x, max_vec);
      non_finite = S::add(non_finite, S::sub(x, x));
    }
    if (j < count) {
      const typename S::V x = S::load_partial(logits + j, count - j, T(0));
      max_vec = S::max(S::load_partial(logits + j, count - j, neg_inf), max_vec);
      non_finite = S::add(non_finite, S::sub(x, x));
    }
    const T tile_max = S::reduce_max(max_vec) + T(0);
    const bool finite = !std::isnan(S::reduce_add(non_finite));
    const double new_max = static_cast<double>(tile_max) > max ? static_cast<double>(tile_max) : max;
    const typename S::V shift = S::set1(static_cast<T>(shift_for(new_max)));
    const double tile_sum =
        finite ? exp_sum<T, true>(logits, count, shift) : exp_sum<T, false>(logits, count, shift);
    if (sum == 0.0) {
      max = new_max;
      sum = tile_sum;
      return;
    }
    if (new_max > max) sum *= exp1(max - shift_for(new_max));
    sum += tile_sum;
    max = new_max;
  }

  // -log softmax of a logit x: (max - x) + log(sum), never lse - x, whose log(sum) would round
  // away beside logits of magnitude ~1e16 and beyond.
  double neg_log_softmax(double x) const { return (max - x) + log1(sum); }
};

// Paired negatives: query i against its own M keys, one dot product each (no reuse to block for).
template <class T>
double paired_logit(const InfoNceArgs<T>& a, const QueryFactors<T>& f, int64_t i, int64_t j,
                    double* key_inv) {
  const int64_t dim = a.query.cols;
  const T* key = a.negatives + i * a.negatives_stride0 + j * a.negatives_stride1;
  *key_inv = a.normalize ? inverse_norm(key, dim, kNegativesTooLong, a.too_long) : 1.0;
  const T* q = a.query.data + i * a.query.row_stride;
  return static_cast<double>(
      static_cast<T>(logit_of_dot(a, dot(q, key, dim), f.query_inv_norm[i], *key_inv)));
}

// Row i's loss from its log-sum-exp and its (mean) positive logit, and the saved log-sum-exp.
template <class T>
void finish_row(const InfoNceArgs<T>& a, const OnlineLogSumExp& state, double positive, bool empty,
                int64_t i) {
  if (empty) {
    // No logit in the log-sum-exp: log 0 = -inf, exactly, on every path.
    a.row_loss[i] = -HUGE_VAL;
    if (a.row_max != nullptr) a.row_max[i] = a.row_log_sum[i] = -HUGE_VAL;
    return;
  }
  a.row_loss[i] = state.neg_log_softmax(positive);
  if (a.row_max != nullptr) {
    a.row_max[i] = state.max;
    a.row_log_sum[i] = log1(state.sum);
  }
}

template <class T>
void info_nce_paired(const InfoNceArgs<T>& a, const QueryFactors<T>& f, const RowSets<T>& sets,
                     int num_threads) {
  const bool filtering = filters_keys(a);
  const int64_t n = a.query.rows;
  const int64_t m = a.num_negatives;
  const int threads = threads_for(n * (m + 1) * (a.query.cols + 1), n, num_threads);
  bool failed = false;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads) if (threads > 1)
#endif
  for (int64_t i = 0; i < n; ++i) {
    if (interrupted(a.interrupt)) continue;
    Buffer<T> logits(kKeyTile);
    if (!logits.ok()) {
      // Reported after the loop: no exception may leave an OpenMP region.
#if defined(_OPENMP)
#pragma omp atomic write
#endif
      failed = true;
      continue;
    }
    OnlineLogSumExp state;
    if (a.positive_in_sum && !a.decoupled) state.merge(f.positive_logit[i], 1.0);
    if (a.positive_logit != nullptr) a.positive_logit[i] = f.positive_logit[i];
    for (int64_t j0 = 0; j0 < m && !interrupted(a.interrupt); j0 += kKeyTile) {
      const int64_t cols = min_i64(kKeyTile, m - j0);
      double key_inv;
      for (int64_t c = 0; c < cols; ++c) logits[c] = static_cast<T>(paired_logit(a, f, i, j0 + c, &key_inv));
      double unused = 0.0;
      const int64_t kept =
          filtering ? filter_row(a, false, i, j0, cols, logits.get(), &unused, nullptr) : cols;
      if (kept > 0) state.add(logits.get(), kept);
    }
    finish_row(a, state, f.positive_logit[i], filtering && sets.in_sum[i] == 0, i);
  }
  if (failed) throw std::bad_alloc();
}

template <class T>
void info_nce(const InfoNceArgs<T>& a, int num_threads) {
  const int64_t n = a.query.rows;
  if (n == 0) return;
  const QueryFactors<T> f(a);
  const RowSets<T> sets(a);
  if (a.mode == NegativeMode::paired) {
    info_nce_paired(a, f, sets, num_threads);
    return;
  }
  const bool filtering = filters_keys(a);
  const KeyStream<T> keys = key_stream(a);
  const KeyChunks chunks(keys.count);
  const bool positive_mean = keys.in_batch && a.query_labels != nullptr;
  // In-batch with labels: per (chunk, query) sums of the positives' logits, merged in chunk order.
  Buffer<double> part_positive(positive_mean ? chunks.count * n : 0);
  if (!part_positive.ok()) throw std::bad_alloc();
  const int64_t query_groups = ceil_div(n, kQueryGroup);
  const int64_t items = query_groups * chunks.count;
  // Per (chunk, query) partial log-sum-exps, merged in chunk order below.
  Buffer<double> part_max(chunks.count * n), part_sum(chunks.count * n);
  // In-batch, the positive logit of query i is the streamed logit of key i, kept from its tile so
  // the loss subtracts exactly what the sum saw.
  Buffer<double> diagonal(keys.in_batch ? n : 0);
  if (!part_max.ok() || !part_sum.ok() || !diagonal.ok()) throw std::bad_alloc();
  const int threads = threads_for(n * (keys.count + 1) * (a.query.cols + 1), items, num_threads);
  bool failed = false;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#endif
  for (int64_t item = 0; item < items; ++item) {
    if (interrupted(a.interrupt)) continue;
    const int64_t chunk = item / query_groups;
    const int64_t g0 = (item % query_groups) * kQueryGroup;
    const int64_t group_rows = min_i64(kQueryGroup, n - g0);
    const int64_t c0 = chunk * chunks.size;
    const int64_t c1 = min_i64(keys.count, c0 + chunks.size);
    TileScratch<T> s(a.query.cols);
    if (!s.ok()) {
#if defined(_OPENMP)
#pragma omp atomic write
#endif
      failed = true;
      continue;
    }
    OnlineLogSumExp state[kQueryGroup];
    double positive_sum[kQueryGroup];
    for (int64_t r = 0; r < group_rows; ++r) positive_sum[r] = 0.0;
    for (int64_t j0 = c0; j0 < c1 && !interrupted(a.interrupt); j0 += kKeyTile) {
      const int64_t cols = min_i64(kKeyTile, c1 - j0);
      pack_keys(a, keys, j0, cols, &s);
      for (int64_t b0 = 0; b0 < group_rows; b0 += kQueryBlock) {
        const int64_t i0 = g0 + b0;
        const int64_t rows = min_i64(kQueryBlock, group_rows - b0);
        logit_tile(a, f, i0, rows, cols, &s);
        for (int64_t r = 0; r < rows; ++r) {
          T* row = s.logits.get() + r * kKeyTile;
          if (keys.in_batch && i0 + r >= j0 && i0 + r < j0 + cols) diagonal[i0 + r] = row[i0 + r - j0];
          const int64_t kept = filtering ? filter_row(a, keys.in_batch, i0 + r, j0, cols, row,
                                                      &positive_sum[b0 + r], &s.label_bits)
                                         : cols;
          if (kept > 0) state[b0 + r].add(row, kept);
        }
      }
    }
    for (int64_t r = 0; r < group_rows; ++r) {
      part_max[chunk * n + g0 + r] = state[r].max;
      part_sum[chunk * n + g0 + r] = state[r].sum;
      if (positive_mean) part_positive[chunk * n + g0 + r] = positive_sum[r];
    }
  }
  if (failed) throw std::bad_alloc();
  if (interrupted(a.interrupt)) return;

  for (int64_t i = 0; i < n; ++i) {
    OnlineLogSumExp state;
    // With explicit negatives the positive is class 0 of the (M+1)-way softmax; in-batch it is
    // one of the streamed keys (key i) already.
    if (!keys.in_batch && a.positive_in_sum && !a.decoupled) state.merge(f.positive_logit[i], 1.0);
    if (!keys.in_batch && a.positive_logit != nullptr) a.positive_logit[i] = f.positive_logit[i];
    for (int64_t c = 0; c < chunks.count; ++c) state.merge(part_max[c * n + i], part_sum[c * n + i]);
    double positive = keys.in_batch ? diagonal[i] : f.positive_logit[i];
    if (positive_mean) {
      double total = 0.0;
      for (int64_t c = 0; c < chunks.count; ++c) total += part_positive[c * n + i];
      positive = total / static_cast<double>(sets.positives[i]);
    }
    finish_row(a, state, positive, filtering && sets.in_sum[i] == 0, i);
  }
}

// out += inv_norm * (g - x_hat (x_hat . g)) with x_hat = x * inv_norm: the chain rule through
// x / max(||x||, 1e-12) (the projection vanishes where the floor is active). Without normalize,
// out += g.
template <class T, class G>
void add_row_gradient(const T* x, const G* g, int64_t dim, bool normalize, double inv_norm, T* out) {
  if (!normalize) {
    for (int64_t k = 0; k < dim; ++k)
      out[k] = static_cast<T>(static_cast<double>(out[k]) + static_cast<double>(g[k]));
    return;
  }
  double projection = 0.0;
  if (inv_norm < 1.0 / kNormFloor) {
    for (int64_t k = 0; k < dim; ++k) {
      projection += static_cast<double>(load_unaligned(x + k)) * inv_norm * static_cast<double>(g[k]);
    }
  }
  for (int64_t k = 0; k < dim; ++k) {
    const double x_hat = static_cast<double>(load_unaligned(x + k)) * inv_norm;
    out[k] = static_cast<T>(static_cast<double>(out[k]) +
                            inv_norm * (static_cast<double>(g[k]) - x_hat * projection));
  }
}

// acc += coef * x
template <class T>
void axpy_row(double coef, const T* x, int64_t dim, double* acc) {
  for (int64_t k = 0; k < dim; ++k) acc[k] += coef * static_cast<double>(load_unaligned(x + k));
}

// C[rows x dim] += A[rows x depth] B[depth x dim], A a PackedOperand, B as
// b[k * ldb + col], C with row stride ldc. Every element of C is one chain of fused multiply-adds
// in T, c = fma(a(r, k), b(k, col), c) for k = 0, 1, ..., whichever code computes it, so the
// micro-kernel's shape (it differs per ISA) never changes a bit. The micro-kernel covers every
// NR-wide column strip, each strip's B staying in L1 while A streams past; a last partial group
// of rows runs it on copies (A's missing rows repeat its last row, C's are dropped). Columns past
// a multiple of NR take partial vectors, so nothing outside the operands is read or written.
template <class T, class Operand>
void gemm_accumulate(int64_t rows, int64_t depth, const Operand& a, const T* b, int64_t ldb, T* c,
                     int64_t ldc, int64_t dim) {
  using S = Simd<T>;
  constexpr int64_t MR = S::kMicroRows;
  constexpr int64_t L = S::kLanes;
  constexpr int64_t NR = S::kMicroVecs * L;
  const int64_t full_cols = dim / NR * NR;
  const int64_t full_rows = rows / MR * MR;
  for (int64_t d0 = 0; d0 < full_cols; d0 += NR) {
    for (int64_t r0 = 0; r0 < full_rows; r0 += MR) {
      micro_kernel<T>(depth, a.rows_from(r0), b + d0, ldb, c + r0 * ldc + d0, ldc, true);
    }
  }
  const int64_t count = rows - full_rows;
  if (count > 0 && full_cols > 0) {
    Buffer<T> packed(depth * MR);
    if (!packed.ok()) throw std::bad_alloc();
    for (int64_t k = 0; k < depth; ++k) {
      for (int64_t r = 0; r < MR; ++r) packed[k * MR + r] = a.at(full_rows + min_i64(r, count - 1), k);
    }
    const PackedOperand<T> last_rows{packed.get(), MR};
    T tile[MR * NR];
    for (int64_t d0 = 0; d0 < full_cols; d0 += NR) {
      for (int64_t r = 0; r < MR; ++r) {
        for (int64_t n = 0; n < NR; ++n)
          tile[r * NR + n] = r < count ? c[(full_rows + r) * ldc + d0 + n] : T(0);
      }
      micro_kernel<T>(depth, last_rows, b + d0, ldb, tile, NR, true);
      for (int64_t r = 0; r < count; ++r) {
        T* dst = c + (full_rows + r) * ldc + d0;
        for (int64_t n = 0; n < NR; ++n) dst[n] = tile[r * NR + n];
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = full_cols; d < dim; d += L) {
      const int64_t m = dim - d;
      typename S::V acc = S::load_partial(c + r * ldc + d, m, T(0));
      for (int64_t k = 0; k < depth; ++k) {
        acc = S::fmadd(S::set1(a.at(r, k)), S::load_partial(b + k * ldb + d, m, T(0)), acc);
      }
      S::store_partial(c + r * ldc + d, acc, m);
    }
  }
}

// The softmax probability of an explicit-negative row's positive (class 0): exactly 0 outside
// D(i) (decoupled), and for a row whose D(i) is empty.
template <class T>
double positive_probability(const InfoNceArgs<T>& a, double positive_logit, const InfoNceGradArgs<T>& g,
                            const RowSets<T>& sets, int64_t i) {
  if (a.decoupled || sets.in_sum[i] == 0) return 0.0;
  return exp1((positive_logit - g.row_max[i]) - g.row_log_sum[i]);
}

template <class T>
void info_nce_backward_paired(const InfoNceArgs<T>& a, const QueryFactors<T>& f, const InfoNceGradArgs<T>& g,
                              const RowSets<T>& sets, int num_threads) {
  const int64_t n = a.query.rows;
  const int64_t m = a.num_negatives;
  const int64_t dim = a.query.cols;
  const int threads = threads_for(n * (m + 1) * (dim + 1), n, num_threads);
  bool failed = false;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads) if (threads > 1)
#endif
  for (int64_t i = 0; i < n; ++i) {
    if (interrupted(a.interrupt)) continue;
    Buffer<double> d_query_hat(dim), d_key_hat(dim);
    if (!d_query_hat.ok() || !d_key_hat.ok()) {
      // Reported after the loop: no exception may leave an OpenMP region.
#if defined(_OPENMP)
#pragma omp atomic write
#endif
      failed = true;
      continue;
    }
    const T* q = a.query.data + i * a.query.row_stride;
    const T* p = a.positive.data + i * a.positive.row_stride;
    const double scale = g.row_grad[i] * a.inv_temperature;
    for (int64_t k = 0; k < dim; ++k) d_query_hat[k] = 0.0;
    const int64_t* labels = tile_labels(a, i, 0);
    double moment = 0.0;  // sum_j p_ij z_ij over the negatives in D(i), in order
    for (int64_t j = 0; j < m; ++j) {
      // A tile's worth of negatives between checks, as in the forward pass.
      if (j % kKeyTile == 0 && interrupted(a.interrupt)) break;
      // A false negative is outside the softmax: no gradient reaches it.
      if (labels != nullptr && labels[j] == a.query_labels[i]) continue;
      double key_inv;
      const double logit = paired_logit(a, f, i, j, &key_inv);
      const double prob = exp1((logit - g.row_max[i]) - g.row_log_sum[i]);
      moment += prob * logit;
      const double coef = prob * scale;
      const T* key = a.negatives + i * a.negatives_stride0 + j * a.negatives_stride1;
      axpy_row(coef * key_inv, key, dim, d_query_hat.get());
      for (int64_t k = 0; k < dim; ++k) {
        d_key_hat[k] = coef * f.query_inv_norm[i] * static_cast<double>(load_unaligned(q + k));
      }
      add_row_gradient(key, d_key_hat.get(), dim, a.normalize, key_inv, g.d_negatives + (i * m + j) * dim);
    }
    const double prob_pos = positive_probability(a, f.positive_logit[i], g, sets, i);
    const double coef_pos = (prob_pos - 1.0) * scale;
    if (g.row_temperature_moment != nullptr) {
      g.row_temperature_moment[i] = (moment + prob_pos * f.positive_logit[i]) - f.positive_logit[i];
    }
    axpy_row(coef_pos * f.positive_inv_norm[i], p, dim, d_query_hat.get());
    for (int64_t k = 0; k < dim; ++k) {
      d_key_hat[k] = coef_pos * f.query_inv_norm[i] * static_cast<double>(load_unaligned(q + k));
    }
    add_row_gradient(p, d_key_hat.get(), dim, a.normalize, f.positive_inv_norm[i], g.d_positive + i * dim);
    add_row_gradient(q, d_query_hat.get(), dim, a.normalize, f.query_inv_norm[i], g.d_query + i * dim);
  }
  if (failed) throw std::bad_alloc();
}

// The shared-keys backward in one streaming pass per key chunk. For a tile of logits, with
// coef_ij = row_grad_i (softmax_ij - [j is i's positive]) / T:
//   d q_hat_i += sum_j coef_ij k_hat_j   (into this chunk's partial, merged in chunk order)
//   d k_hat_j += sum_i coef_ij q_hat_i   (this chunk owns its keys: written once, in query order)
// Both are matrix products over the tile, run by the same micro-kernel as the forward pass.
template <class T>
void info_nce_backward(const InfoNceArgs<T>& a, const InfoNceGradArgs<T>& g, int num_threads) {
  const int64_t n = a.query.rows;
  const int64_t dim = a.query.cols;
  if (n == 0) return;
  const QueryFactors<T> f(a);
  const RowSets<T> sets(a);
  if (a.mode == NegativeMode::paired) {
    info_nce_backward_paired(a, f, g, sets, num_threads);
    return;
  }
  const bool filtering = filters_keys(a);
  const bool moment = g.row_temperature_moment != nullptr;
  const KeyStream<T> keys = key_stream(a);
  T* d_keys = keys.in_batch ? g.d_positive : g.d_negatives;
  const KeyChunks chunks(keys.count);
  // For a temperature's gradient: per (chunk, query) sum_{j in D(i)} p_ij z_ij and the sum of the
  // positives' logits (in-batch), each in key order, merged in chunk order.
  Buffer<double> part_moment(moment ? chunks.count * n : 0), part_positive(moment ? chunks.count * n : 0);
  if (!part_moment.ok() || !part_positive.ok()) throw std::bad_alloc();
  if (moment) {
    for (int64_t k = 0; k < chunks.count * n; ++k) part_moment[k] = part_positive[k] = 0.0;
  }
  Buffer<T> own_workspace(g.workspace != nullptr ? 0 : info_nce_backward_workspace(a));
  T* const d_query_part = g.workspace != nullptr ? g.workspace : own_workspace.get();
  if (d_query_part == nullptr) throw std::bad_alloc();
  const int threads = threads_for(n * (keys.count + 1) * (dim + 1), chunks.count, num_threads);
  bool failed = false;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#endif
  for (int64_t chunk = 0; chunk < chunks.count; ++chunk) {
    if (interrupted(a.interrupt)) continue;
    T* d_query_hat = d_query_part + chunk * n * dim;
    for (int64_t k = 0; k < n * dim; ++k) d_query_hat[k] = T(0);
    const int64_t c0 = chunk * chunks.size;
    const int64_t c1 = min_i64(keys.count, c0 + chunks.size);
    if (c0 >= c1) continue;
    TileScratch<T> s(dim);
    Buffer<T> coef_query(kQueryBlock * kKeyTile), coef_query_t(kKeyTile * kQueryBlock),
        coef_key(kQueryBlock * kKeyTile), d_key_hat(kKeyTile * dim), probs(moment ? kKeyTile : 0);
    if (!s.ok() || !coef_query.ok() || !coef_query_t.ok() || !coef_key.ok() || !d_key_hat.ok() ||
        !probs.ok()) {
#if defined(_OPENMP)
#pragma omp atomic write
#endif
      failed = true;
      continue;
    }
    for (int64_t j0 = c0; j0 < c1 && !interrupted(a.interrupt); j0 += kKeyTile) {
      const int64_t cols = min_i64(kKeyTile, c1 - j0);
      pack_keys(a, keys, j0, cols, &s);
      for (int64_t k = 0; k < cols * dim; ++k) d_key_hat[k] = T(0);
      for (int64_t i0 = 0; i0 < n && !interrupted(a.interrupt); i0 += kQueryBlock) {
        const int64_t rows = min_i64(kQueryBlock, n - i0);
        logit_tile(a, f, i0, rows, cols, &s);
        using S = Simd<T>;
        constexpr int64_t L = S::kLanes;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = i0 + r;
          const T* logits = s.logits.get() + r * kKeyTile;
          T* cq = coef_query.get() + r * kKeyTile;
          T* ck = coef_key.get() + r * kKeyTile;
          const double scale = g.row_grad[i] * a.inv_temperature;
          const typename S::V shift = S::set1(static_cast<T>(g.row_max[i]));
          const typename S::V log_sum = S::set1(static_cast<T>(g.row_log_sum[i]));
          const typename S::V scale_v = S::set1(static_cast<T>(scale));
          const typename S::V key_side = S::set1(static_cast<T>(scale * f.query_inv_norm[i]));
          // softmax_ij = exp((l_ij - max_i) - log_sum_i); the padded tile keeps vectors in bounds.
          for (int64_t j = 0; j < cols; j += L) {
            const typename S::V p = S::exp(S::sub(S::sub(S::load(logits + j), shift), log_sum));
            typename S::V query_coef = S::mul(p, scale_v);
            if (a.normalize) query_coef = S::mul(query_coef, S::load(s.key_scale.get() + j));
            S::store(cq + j, query_coef);
            S::store(ck + j, S::mul(p, key_side));
            if (moment) S::store(probs.get() + j, p);
          }
          const bool diagonal_here = keys.in_batch && i >= j0 && i < j0 + cols;
          const int64_t* labels = tile_labels(a, i, j0);
          const int64_t label = a.query_labels != nullptr ? a.query_labels[i] : 0;
          const int64_t diagonal = keys.in_batch ? i - j0 : -1;
          const bool special =
              filtering ? tile_has_special(labels, label, cols, diagonal_here, &s.label_bits) : diagonal_here;
          if (special) {
            // The positives' entries, softmax - 1 / |P(i)|, are formed in float64 (they cancel);
            // an entry outside D(i) has softmax exactly 0, whatever the vector exp gave it.
            const double share = keys.in_batch ? 1.0 / static_cast<double>(sets.positives[i]) : 0.0;
            for (int64_t j = 0; j < cols; ++j) {
              const KeyRole role = key_role(keys.in_batch, a.decoupled, labels, label, j, j == diagonal);
              if (!role.positive && role.in_sum) continue;
              const double p = role.in_sum
                                   ? exp1((static_cast<double>(logits[j]) - g.row_max[i]) - g.row_log_sum[i])
                                   : 0.0;
              const double coef = (p - (role.positive ? share : 0.0)) * scale;
              cq[j] = static_cast<T>(coef * s.key_inv_norm[j]);
              ck[j] = static_cast<T>(coef * f.query_inv_norm[i]);
            }
          }
          if (moment) {
            double weighted = 0.0, positive = 0.0;
            for (int64_t j = 0; j < cols; ++j) {
              const KeyRole role = special
                                       ? key_role(keys.in_batch, a.decoupled, labels, label, j, j == diagonal)
                                       : KeyRole{false, true};
              if (role.in_sum) weighted += static_cast<double>(probs[j]) * static_cast<double>(logits[j]);
              if (role.positive) positive += static_cast<double>(logits[j]);
            }
            part_moment[chunk * n + i] += weighted;
            part_positive[chunk * n + i] += positive;
          }
        }
        // d q_hat[i0 .. i0 + rows) += coef_query (rows x cols) . keys (cols x dim)
        // coef_query transposed is that product's A packed query-major.
        transpose_into(coef_query.get(), kKeyTile, rows, cols, coef_query_t.get(), kQueryBlock);
        gemm_accumulate<T>(rows, cols, PackedOperand<T>{coef_query_t.get(), kQueryBlock},
                           keys.base + j0 * keys.stride, keys.stride, d_query_hat + i0 * dim, dim, dim);
        // d k_hat[j0 .. j0 + cols) += coef_key^T (cols x rows) . queries (rows x dim); coef_key
        // stored query-major is that product's A packed key-major.
        gemm_accumulate<T>(cols, rows, PackedOperand<T>{coef_key.get(), kKeyTile},
                           a.query.data + i0 * a.query.row_stride, a.query.row_stride, d_key_hat.get(), dim,
                           dim);
      }
      for (int64_t j = 0; j < cols; ++j) {
        add_row_gradient(keys.base + (j0 + j) * keys.stride, d_key_hat.get() + j * dim, dim, a.normalize,
                         s.key_inv_norm[j], d_keys + (j0 + j) * dim);
      }
    }
  }
  if (failed) throw std::bad_alloc();
  if (interrupted(a.interrupt)) return;

  Buffer<double> d_query_row(dim), d_positive_row(dim);
  if (!d_query_row.ok() || !d_positive_row.ok()) throw std::bad_alloc();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < dim; ++k) d_query_row[k] = 0.0;
    for (int64_t c = 0; c < chunks.count; ++c) {
      const T* part = d_query_part + (c * n + i) * dim;
      for (int64_t k = 0; k < dim; ++k) d_query_row[k] += static_cast<double>(part[k]);
    }
    const T* q = a.query.data + i * a.query.row_stride;
    const double prob_pos = keys.in_batch ? 0.0 : positive_probability(a, f.positive_logit[i], g, sets, i);
    if (moment) {
      // Class 0 first (explicit negatives), then the chunks in order.
      double weighted = keys.in_batch ? 0.0 : prob_pos * f.positive_logit[i];
      double positive = 0.0;
      for (int64_t c = 0; c < chunks.count; ++c) {
        weighted += part_moment[c * n + i];
        positive += part_positive[c * n + i];
      }
      g.row_temperature_moment[i] = keys.in_batch
                                        ? weighted - positive / static_cast<double>(sets.positives[i])
                                        : weighted - f.positive_logit[i];
    }
    if (!keys.in_batch) {
      const T* p = a.positive.data + i * a.positive.row_stride;
      const double coef_pos = (prob_pos - 1.0) * g.row_grad[i] * a.inv_temperature;
      axpy_row(coef_pos * f.positive_inv_norm[i], p, dim, d_query_row.get());
      for (int64_t k = 0; k < dim; ++k) {
        d_positive_row[k] = coef_pos * f.query_inv_norm[i] * static_cast<double>(load_unaligned(q + k));
      }
      add_row_gradient(p, d_positive_row.get(), dim, a.normalize, f.positive_inv_norm[i],
                       g.d_positive + i * dim);
    }
    add_row_gradient(q, d_query_row.get(), dim, a.normalize, f.query_inv_norm[i], g.d_query + i * dim);
  }
}
