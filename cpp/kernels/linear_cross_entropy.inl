// Linear cross-entropy: the cross-entropy of logits z = x W^T (+ b), optionally soft-capped, whose
// N x V matrix never exists. Tiles of logits come from info_nce.inl's micro-kernel over packed
// classifier panels and feed the online log-sum-exp while they sit in L1; the backward pass
// recomputes each tile from the saved log-sum-exp and turns it into the two products
// dX = dZ W and dW = dZ^T X while it is in cache.
//
// Every row's loss is sum_c a_c (lse - z_c) + z_loss lse^2, where a_c is the target distribution
// times the class weights: (1 - smoothing) w_t at the target plus (smoothing / V) w_c everywhere
// for class indices, w_c ((1 - smoothing) q_c + smoothing / V) for probabilities. Its gradient
// with respect to z_c is (A + 2 z_loss lse) p_c - a_c with A = sum_c a_c.
//
// Bits: the forward pass cuts the classes into chunks that depend only on N and V and merges
// their partial states in chunk order; the backward pass runs every element of dX and dW as one
// chain of fused multiply-adds in class and row order (gemm_accumulate). So the results are the
// same for every thread count, and, with vecmath.inl's exp and log, on every path.
// Included inside an ISA namespace, after info_nce.inl.

constexpr int64_t kClassTile = 128;  // classes packed at a time: kClassTile x H stays in L2
constexpr int64_t kRowBlock = kQueryBlock;
constexpr int64_t kForwardRowGroup = 4 * kRowBlock;  // rows per forward work item
constexpr int64_t kChunkClasses = 1024;              // classes per chunk, at least
constexpr int64_t kDepthBlock = 256;                 // so a micro-panel of the classifier stays in L1
// Classes per backward tile: a multiple of every micro-kernel's rows, so that dW's products run
// on whole row groups. The backward tiling does not change a bit (see below).
constexpr int64_t kBackwardClassTile = kRowBlock;

// tanh(y) in float64 lanes with vecmath.inl's exp: an odd Taylor polynomial below |y| = 1/8
// (exact to < 1e-20 there), (1 - e) / (1 + e) with e = exp(-2|y|) above, where no digit cancels.
// Every path evaluates the same operations, so softcap gives the same bits on every path.
inline Simd<double>::V tanh_lanes(Simd<double>::V y) {
  using SD = Simd<double>;
  static constexpr double kTaylor[] = {-0x1.5555555555555p-2,  0x1.1111111111111p-3,  -0x1.ba1ba1ba1ba1cp-5,
                                       0x1.664f4882c10fap-6,   -0x1.226e355e6c23dp-7, 0x1.d6d3d0e157de0p-9,
                                       -0x1.7da36452b75e3p-10, 0x1.3558248036744p-11};
  const SD::V a = SD::abs(y);
  const SD::V y2 = SD::mul(y, y);
  SD::V poly = SD::set1(kTaylor[7]);
  for (int k = 6; k >= 0; --k) poly = SD::fmadd(poly, y2, SD::set1(kTaylor[k]));
  const SD::V small = SD::fmadd(SD::mul(y, y2), poly, y);
  const SD::V e = SD::exp(SD::mul(a, SD::set1(-2.0)));
  const SD::V one = SD::set1(1.0);
  const SD::V large = SD::xor_sign(SD::div(SD::sub(one, e), SD::add(one, e)), y);
  return SD::select(SD::lt(a, SD::set1(0.125)), small, large);
}

// x <- cap tanh(x / cap) for `count` values, formed in float64 and rounded once to T.
template <class T>
void soft_cap(T* x, int64_t count, double cap) {
  using SD = Simd<double>;
  constexpr int64_t L = SD::kLanes;
  const SD::V cap_v = SD::set1(cap);
  const SD::V inv_cap = SD::set1(1.0 / cap);
  double lanes[L];
  for (int64_t j = 0; j < count; j += L) {
    const int64_t n = min_i64(L, count - j);
    for (int64_t k = 0; k < L; ++k) lanes[k] = k < n ? static_cast<double>(x[j + k]) : 0.0;
    SD::store(lanes, SD::mul(cap_v, tanh_lanes(SD::mul(SD::load(lanes), inv_cap))));
    for (int64_t k = 0; k < n; ++k) x[j + k] = static_cast<T>(lanes[k]);
  }
}

// Per-row constants of the loss, O(N): the target, the weight at it and A = sum_c a_c.
template <class T>
struct RowTargets {
  const LinearCrossEntropyArgs<T>& args;
  int64_t classes;
  double smoothing_weight_sum = 0.0;  // (smoothing / V) sum_c w_c
  Buffer<double> smooth_coef;         // (smoothing / V) w_c, for class indices with smoothing

  explicit RowTargets(const LinearCrossEntropyArgs<T>& a)
      : args(a),
        classes(a.weight.rows),
        smooth_coef(a.target_prob.data == nullptr && a.label_smoothing > 0.0 ? a.weight.rows : 0) {
    if (!smooth_coef.ok()) throw std::bad_alloc();
    const double per_class = a.label_smoothing / static_cast<double>(classes);
    if (a.target_prob.data != nullptr || a.label_smoothing == 0.0) return;
    // No null test inside the loop (see copy_bias_tile).
    if (a.class_weight != nullptr) {
      for (int64_t c = 0; c < classes; ++c) smooth_coef[c] = per_class * a.class_weight[c];
    } else {
      for (int64_t c = 0; c < classes; ++c) smooth_coef[c] = per_class;
    }
    for (int64_t c = 0; c < classes; ++c) smoothing_weight_sum += smooth_coef[c];
  }
  bool probabilities() const { return args.target_prob.data != nullptr; }
  // Whether a linear term sum_c a_c z_c beyond the target's logit is needed.
  bool spread() const { return probabilities() || args.label_smoothing > 0.0; }
  int64_t target(int64_t i) const {
    int64_t t;
    std::memcpy(&t, args.target_index + i * args.target_index_stride, sizeof(t));
    return t;
  }
  bool ignored(int64_t i) const { return !probabilities() && target(i) == args.ignore_index; }
  // (1 - smoothing) w_t: the target's own share of a (class indices).
  double target_coef(int64_t i) const {
    const int64_t t = target(i);
    return (1.0 - args.label_smoothing) * (args.class_weight != nullptr ? args.class_weight[t] : 1.0);
  }
  // a_c for classes [j0, j0 + cols) of row i, without the target's share, into coef.
  void spread_coef(int64_t i, int64_t j0, int64_t cols, double* coef) const {
    if (!probabilities()) {
      for (int64_t c = 0; c < cols; ++c) coef[c] = smooth_coef[j0 + c];
      return;
    }
    const T* q = args.target_prob.data + i * args.target_prob.row_stride + j0;
    const double keep = 1.0 - args.label_smoothing;
    const double per_class = args.label_smoothing / static_cast<double>(classes);
    if (args.class_weight == nullptr) {
      for (int64_t c = 0; c < cols; ++c) coef[c] = keep * static_cast<double>(q[c]) + per_class;
      return;
    }
    for (int64_t c = 0; c < cols; ++c) {
      coef[c] = args.class_weight[j0 + c] * (keep * static_cast<double>(q[c]) + per_class);
    }
  }
  // A = sum_c a_c of row i (0 for an ignored row).
  double total_coef(int64_t i) const {
    if (ignored(i)) return 0.0;
    if (!probabilities()) return target_coef(i) + smoothing_weight_sum;
    Buffer<double> coef(kClassTile);
    if (!coef.ok()) throw std::bad_alloc();
    double total = 0.0;
    for (int64_t j0 = 0; j0 < classes; j0 += kClassTile) {
      const int64_t cols = min_i64(kClassTile, classes - j0);
      spread_coef(i, j0, cols, coef.get());
      for (int64_t c = 0; c < cols; ++c) total += coef[c];
    }
    return total;
  }
};

// sum_c a_c (z_c - ref) and sum_c a_c over the values seen, with ref following their max (as
// OnlineLogSumExp's shift does), so that sum_c a_c (max - z_c) comes out without the cancellation
// of A max - sum_c a_c z_c at logits of large magnitude.
struct OnlineLinearSum {
  double ref = -HUGE_VAL;
  double weight = 0.0;
  double acc = 0.0;

  void rebase(double new_ref) {
    if (new_ref > ref) {
      if (weight != 0.0) acc += weight * (ref - new_ref);
      ref = new_ref;
    }
  }
  template <class T>
  void add(const T* z, const double* coef, int64_t count, double tile_max) {
    rebase(tile_max);
    for (int64_t c = 0; c < count; ++c) {
      weight += coef[c];
      acc += coef[c] * (static_cast<double>(z[c]) - ref);
    }
  }
  void merge(const OnlineLinearSum& other) {
    if (other.weight == 0.0 && other.acc == 0.0) return;
    rebase(other.ref);
    acc += other.acc + (other.weight != 0.0 ? other.weight * (other.ref - ref) : 0.0);
    weight += other.weight;
  }
  // sum_c a_c (max - z_c).
  double below(double max) const { return weight != 0.0 ? weight * (max - ref) - acc : -acc; }
};

template <class T>
double tile_max(const T* z, int64_t count) {
  double m = -HUGE_VAL;
  for (int64_t c = 0; c < count; ++c) m = static_cast<double>(z[c]) > m ? static_cast<double>(z[c]) : m;
  return m;
}

// Logits of rows [b0, b0 + rows) of a packed row group (rows <= kRowBlock) against the packed
// classifier tile of classes [j0, j0 + cols), into tile (row stride ld): the dot products
// in depth blocks (each a continuation of every element's fused chain: the bits of one block),
// then bias, then the cap.
template <class T>
void class_logit_tile(const LinearCrossEntropyArgs<T>& a, const T* packed_rows, int64_t b0, int64_t rows,
                      const T* packed_classes, const T* bias_tile, int64_t cols, T* tile, int64_t ld) {
  using S = Simd<T>;
  constexpr int64_t NR = S::kMicroVecs * S::kLanes;
  constexpr int64_t MR = S::kMicroRows;
  constexpr int64_t L = S::kLanes;
  const int64_t depth = a.input.cols;
  const int64_t panels = ceil_div(cols, NR);
  for (int64_t k0 = 0; k0 < depth || k0 == 0; k0 += kDepthBlock) {
    const int64_t kc = min_i64(kDepthBlock, depth - k0);
    for (int64_t p = 0; p < panels; ++p) {
      const T* panel = packed_classes + p * depth * NR + k0 * NR;
      for (int64_t r0 = 0; r0 < rows; r0 += MR) {
        const PackedOperand<T> x{packed_rows + (b0 + r0) * depth + k0 * MR, MR};
        micro_kernel<T>(kc, x, panel, NR, tile + r0 * ld + p * NR, ld, k0 > 0);
      }
    }
    if (depth == 0) break;
  }
  for (int64_t r = 0; r < rows; ++r) {
    T* row = tile + r * ld;
    if (bias_tile != nullptr) {
      for (int64_t j = 0; j < cols; j += L)
        S::store(row + j, S::add(S::load(row + j), S::load(bias_tile + j)));
    }
    if (a.softcap > 0.0) soft_cap(row, cols, a.softcap);
  }
}

// bias[j0 .. j0 + cols) into out, zero up to `width`. Two plain loops: GCC if-converts a single
// conditional one into masked loads from a null bias, which real CPUs allow (no lane is read) but
// qemu's emulation of vmaskmovps faults on.
template <class T>
void copy_bias_tile(const T* bias, int64_t j0, int64_t cols, int64_t width, T* out) {
  int64_t c = 0;
  if (bias != nullptr) {
    for (; c < cols; ++c) out[c] = bias[j0 + c];
  }
  for (; c < width; ++c) out[c] = T(0);
}

// Scratch of one thread: a classifier tile packed into panels, its bias padded to whole vectors,
// a tile of logits.
template <class T>
struct ClassTileScratch {
  Buffer<T> packed;  // kClassTile / NR panels of H x NR
  Buffer<T> bias;    // kClassTile
  Buffer<T> logits;  // kRowBlock x kClassTile
  explicit ClassTileScratch(int64_t depth)
      : packed(kClassTile * (depth > 0 ? depth : 1)), bias(kClassTile), logits(kRowBlock * kClassTile) {}
  bool ok() const { return packed.ok() && bias.ok() && logits.ok(); }
};

template <class T>
void pack_class_tile(const LinearCrossEntropyArgs<T>& a, int64_t j0, int64_t cols, ClassTileScratch<T>* s) {
  pack_panels(a.weight.data + j0 * a.weight.row_stride, a.weight.row_stride, cols, a.weight.cols,
              s->packed.get(), ceil_div(cols, Simd<T>::kMicroVecs * Simd<T>::kLanes));
  copy_bias_tile(a.bias, j0, cols, kClassTile, s->bias.get());
}

// How the classes are cut: the count depends on N and V only (never on threads), enough chunks
// for parallel work when there are few row groups.
struct ClassChunks {
  int64_t count;
  int64_t size;
  ClassChunks(int64_t rows, int64_t classes) {
    const int64_t groups = ceil_div(rows > 0 ? rows : 1, kForwardRowGroup);
    const int64_t most = min_i64(kMaxChunks, ceil_div(classes, kChunkClasses));
    int64_t wanted = ceil_div(32, groups);
    wanted = wanted < 1 ? 1 : (wanted > most ? most : wanted);
    size = ceil_div(ceil_div(classes, wanted), kClassTile) * kClassTile;
    count = ceil_div(classes, size);
  }
};

// A row's partial state over one chunk of classes.
struct LinearCrossEntropyPart {
  OnlineLogSumExp lse;
  OnlineLinearSum spread;
};

template <class T>
void linear_cross_entropy(const LinearCrossEntropyArgs<T>& a, int num_threads) {
  const int64_t n = a.input.rows;
  const int64_t classes = a.weight.rows;
  const int64_t depth = a.input.cols;
  if (n == 0) return;
  const RowTargets<T> targets(a);
  const ClassChunks chunks(n, classes);
  const int64_t groups = ceil_div(n, kForwardRowGroup);
  const int64_t items = groups * chunks.count;
  Buffer<LinearCrossEntropyPart> parts(chunks.count * n);
  Buffer<double> target_logit(n);
  if (!parts.ok() || !target_logit.ok()) throw std::bad_alloc();
  for (int64_t i = 0; i < n; ++i) target_logit[i] = 0.0;
  const int threads = threads_for(n * classes * (depth + 1), items, num_threads);
  bool failed = false;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#endif
  for (int64_t item = 0; item < items; ++item) {
    if (interrupted(a.interrupt)) continue;
    const int64_t chunk = item / groups;
    const int64_t g0 = (item % groups) * kForwardRowGroup;
    const int64_t group_rows = min_i64(kForwardRowGroup, n - g0);
    const int64_t c0 = chunk * chunks.size;
    const int64_t c1 = min_i64(classes, c0 + chunks.size);
    constexpr int64_t MR = Simd<T>::kMicroRows;
    ClassTileScratch<T> s(depth);
    Buffer<T> packed_rows(ceil_div(group_rows, MR) * MR * (depth > 0 ? depth : 1));
    Buffer<double> coef(kClassTile);
    Buffer<LinearCrossEntropyPart> state(group_rows);
    if (!s.ok() || !packed_rows.ok() || !coef.ok() || !state.ok()) {
      // Reported after the loop: no exception may leave an OpenMP region.
#if defined(_OPENMP)
#pragma omp atomic write
#endif
      failed = true;
      continue;
    }
    pack_rows(a.input.data, a.input.row_stride, g0, group_rows, depth, packed_rows.get());
    for (int64_t r = 0; r < group_rows; ++r) state[r] = LinearCrossEntropyPart{};
    for (int64_t j0 = c0; j0 < c1 && !interrupted(a.interrupt); j0 += kClassTile) {
      const int64_t cols = min_i64(kClassTile, c1 - j0);
      pack_class_tile(a, j0, cols, &s);
      for (int64_t b0 = 0; b0 < group_rows; b0 += kRowBlock) {
        const int64_t rows = min_i64(kRowBlock, group_rows - b0);
        class_logit_tile(a, packed_rows.get(), b0, rows, s.packed.get(),
                         a.bias != nullptr ? s.bias.get() : nullptr, cols, s.logits.get(), kClassTile);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = g0 + b0 + r;
          if (targets.ignored(i)) continue;
          const T* z = s.logits.get() + r * kClassTile;
          LinearCrossEntropyPart& part = state[b0 + r];
          part.lse.add(z, cols);
          if (targets.spread()) {
            targets.spread_coef(i, j0, cols, coef.get());
            part.spread.add(z, coef.get(), cols, tile_max(z, cols));
          }
          if (!targets.probabilities()) {
            const int64_t t = targets.target(i);
            if (t >= j0 && t < j0 + cols) target_logit[i] = static_cast<double>(z[t - j0]);
          }
        }
      }
    }
    for (int64_t r = 0; r < group_rows; ++r) parts[chunk * n + g0 + r] = state[r];
  }
  if (failed) throw std::bad_alloc();
  if (interrupted(a.interrupt)) return;

  for (int64_t i = 0; i < n; ++i) {
    if (targets.ignored(i)) {
      a.row_loss[i] = 0.0;
      if (a.row_max != nullptr) {
        a.row_max[i] = 0.0;
        a.row_log_sum[i] = 0.0;
      }
      continue;
    }
    LinearCrossEntropyPart total;
    for (int64_t c = 0; c < chunks.count; ++c) {
      const LinearCrossEntropyPart& part = parts[c * n + i];
      total.lse.merge(part.lse.max, part.lse.sum);
      total.spread.merge(part.spread);
    }
    const double max = total.lse.max;
    const double log_sum = log1(total.lse.sum);
    // sum_c a_c (lse - z_c) = A log_sum + sum_c a_c (max - z_c), each part without cancellation.
    double loss = 0.0;
    if (!targets.probabilities()) loss = targets.target_coef(i) * total.lse.neg_log_softmax(target_logit[i]);
    if (targets.spread()) loss += total.spread.weight * log_sum + total.spread.below(max);
    if (a.z_loss != 0.0) {
      const double lse = max + log_sum;
      loss += a.z_loss * lse * lse;
    }
    a.row_loss[i] = loss;
    if (a.row_max != nullptr) {
      a.row_max[i] = max;
      a.row_log_sum[i] = log_sum;
    }
  }
}

// Rows per backward row group: enough row blocks for every thread twice over. The bits do not
// depend on it (dX runs in class order, dW in row order, whatever the grouping).
inline int64_t backward_row_group(int num_threads) {
  const int64_t blocks =
      2 * static_cast<int64_t>(num_threads) > 8 ? 2 * static_cast<int64_t>(num_threads) : 8;
  return blocks * kRowBlock;
}

// d z_c of one row's tile (kBackwardClassTile wide, zero past cols) into coef: row_grad ((A + 2 z_loss lse)
// p_c - a_c), times the cap's derivative 1 - (z_c / cap)^2.
template <class T>
void logit_gradient_row(const LinearCrossEntropyArgs<T>& a, const LinearCrossEntropyGradArgs<T>& g,
                        const RowTargets<T>& targets, double total_coef, int64_t i, int64_t j0, int64_t cols,
                        const T* z, T* coef, double* spread) {
  using S = Simd<T>;
  constexpr int64_t L = S::kLanes;
  if (targets.ignored(i) || g.row_grad[i] == 0.0) {
    for (int64_t j = 0; j < kBackwardClassTile; ++j) coef[j] = T(0);
    return;
  }
  const double lse = g.row_max[i] + g.row_log_sum[i];
  const double scale = g.row_grad[i];
  const double factor = total_coef + 2.0 * a.z_loss * lse;
  const typename S::V shift = S::set1(static_cast<T>(g.row_max[i]));
  const typename S::V log_sum = S::set1(static_cast<T>(g.row_log_sum[i]));
  // Where a_c is nonzero the two terms cancel, so they are combined in float64 there: all of the
  // row with a spread target, p_c * scale * factor in T elsewhere.
  const typename S::V p_scale = S::set1(static_cast<T>(targets.spread() ? 1.0 : scale * factor));
  for (int64_t j = 0; j < cols; j += L) {
    const typename S::V p = S::exp(S::sub(S::sub(S::load(z + j), shift), log_sum));
    S::store(coef + j, S::mul(p, p_scale));
  }
  if (targets.spread()) {
    targets.spread_coef(i, j0, cols, spread);
    for (int64_t j = 0; j < cols; ++j) {
      coef[j] = static_cast<T>(scale * (factor * static_cast<double>(coef[j]) - spread[j]));
    }
  }
  if (!targets.probabilities()) {
    const int64_t t = targets.target(i);
    if (t >= j0 && t < j0 + cols) {
      const int64_t j = t - j0;
      const double p = exp1((static_cast<double>(z[j]) - g.row_max[i]) - g.row_log_sum[i]);
      const double rest = targets.spread() ? spread[j] : 0.0;
      coef[j] = static_cast<T>(scale * (factor * p - rest - targets.target_coef(i)));
    }
  }
  if (a.softcap > 0.0) {
    const typename S::V inv_cap = S::set1(static_cast<T>(1.0 / a.softcap));
    const typename S::V one = S::set1(T(1));
    for (int64_t j = 0; j < cols; j += L) {
      const typename S::V u = S::mul(S::load(z + j), inv_cap);
      S::store(coef + j, S::mul(S::load(coef + j), S::fnmadd(u, u, one)));
    }
  }
  for (int64_t j = cols; j < kBackwardClassTile; ++j) coef[j] = T(0);
}

// Panel p of columns [p NR, p NR + NR) of `count` rows of a row-major matrix, as the
// micro-kernel's B: element (k, n) at out[k * NR + n], zero past cols.
template <class T>
void pack_column_panel(const T* base, int64_t stride, int64_t count, int64_t cols, int64_t p, T* out) {
  constexpr int64_t NR = Simd<T>::kMicroVecs * Simd<T>::kLanes;
  const int64_t width = min_i64(NR, cols - p * NR);
  for (int64_t k = 0; k < count; ++k) {
    const T* src = base + k * stride + p * NR;
    for (int64_t n = 0; n < width; ++n) out[k * NR + n] = load_unaligned(src + n);
    for (int64_t n = width; n < NR; ++n) out[k * NR + n] = T(0);
  }
}

// The backward pass, a row group at a time and within it a class tile at a time:
//   the threads split the group's row blocks: recompute the tile, form dZ (kept for the group),
//   dX[rows] += dZ W[tile]  (the rows' own chains, in class order);
//   then they split dW's columns: dW[tile] += dZ^T X[group]  (each element's chain in row order),
//   and one of them adds db[tile] in row order.
// Every B operand is packed into panels (rows of X or W 4 KB apart would alias in L1).
template <class T>
void linear_cross_entropy_backward(const LinearCrossEntropyArgs<T>& a, const LinearCrossEntropyGradArgs<T>& g,
                                   int num_threads) {
  const int64_t n = a.input.rows;
  const int64_t classes = a.weight.rows;
  const int64_t depth = a.input.cols;
  for (int64_t k = 0; k < n * depth; ++k) g.d_input[k] = T(0);
  for (int64_t k = 0; k < classes * depth; ++k) g.d_weight[k] = T(0);
  if (n == 0 || depth == 0) {
    if (g.d_bias != nullptr) {
      for (int64_t c = 0; c < classes; ++c) g.d_bias[c] = T(0);
    }
    if (n == 0) return;
  }
  using S = Simd<T>;
  constexpr int64_t MR = S::kMicroRows;
  constexpr int64_t NR = S::kMicroVecs * S::kLanes;
  constexpr int64_t CT = kBackwardClassTile;
  const RowTargets<T> targets(a);
  const int64_t group_size = min_i64(backward_row_group(num_threads), ceil_div(n, kRowBlock) * kRowBlock);
  const int64_t padded_depth = ceil_div(depth > 0 ? depth : 1, NR) * NR;
  Buffer<double> total_coef(n), d_bias(g.d_bias != nullptr ? classes : 0);
  Buffer<T> packed_rows(ceil_div(group_size, MR) * MR * (depth > 0 ? depth : 1));
  Buffer<T> row_panels(group_size * padded_depth);
  Buffer<T> packed_classes(CT * (depth > 0 ? depth : 1)), class_panels(CT * padded_depth), bias_tile(CT);
  Buffer<T> d_logits(group_size * CT);
  if (!total_coef.ok() || !d_bias.ok() || !packed_rows.ok() || !row_panels.ok() || !packed_classes.ok() ||
      !class_panels.ok() || !bias_tile.ok() || !d_logits.ok()) {
    throw std::bad_alloc();
  }
  for (int64_t i = 0; i < n; ++i) total_coef[i] = targets.total_coef(i);
  for (int64_t c = 0; c < classes && g.d_bias != nullptr; ++c) d_bias[c] = 0.0;
  const int64_t strips = ceil_div(depth, NR);
  const int threads = threads_for(n * classes * (depth + 1), ceil_div(group_size, kRowBlock), num_threads);
  bool failed = false;
  bool stop = false;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
  {
    Buffer<T> logits(kRowBlock * CT), coef_t(CT * kRowBlock);
    Buffer<double> spread(CT);
    if (!logits.ok() || !coef_t.ok() || !spread.ok()) {
#if defined(_OPENMP)
#pragma omp atomic write
#endif
      failed = true;
    }
#if defined(_OPENMP)
#pragma omp barrier
#endif
    // Every thread runs the same loops (the work-sharing constructs and barriers must match), so
    // whether to stop is decided once, in a single construct, and read by all after its barrier.
    for (int64_t g0 = 0; g0 < n && !failed && !stop; g0 += group_size) {
      const int64_t group_rows = min_i64(group_size, n - g0);
      const int64_t blocks = ceil_div(group_rows, kRowBlock);
      const T* group_input = a.input.data + g0 * a.input.row_stride;
      // The operands are packed by all threads: row groups of the recompute's A, panels of dW's B.
      const int64_t row_packs = ceil_div(group_rows, MR);
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
      for (int64_t job = 0; job < row_packs + strips; ++job) {
        if (job < row_packs) {
          pack_rows(group_input, a.input.row_stride, job * MR, min_i64(MR, group_rows - job * MR), depth,
                    packed_rows.get() + job * MR * depth);
        } else {
          const int64_t p = job - row_packs;
          pack_column_panel(group_input, a.input.row_stride, group_rows, depth, p,
                            row_panels.get() + p * group_rows * NR);
        }
      }
      for (int64_t j0 = 0; j0 < classes; j0 += CT) {
        const int64_t cols = min_i64(CT, classes - j0);
        const int64_t class_packs = ceil_div(cols, NR);
        const T* tile_weight = a.weight.data + j0 * a.weight.row_stride;
#if defined(_OPENMP)
#pragma omp single
#endif
        {
          stop = interrupted(a.interrupt);
          copy_bias_tile(a.bias, j0, cols, CT, bias_tile.get());
        }
        if (stop) break;
        // The classifier tile, both ways: panels of NR classes for the recompute, panels of NR
        // columns for dX's B.
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t job = 0; job < class_packs + strips; ++job) {
          if (job < class_packs) {
            pack_panels(tile_weight + job * NR * a.weight.row_stride, a.weight.row_stride, cols - job * NR,
                        depth, packed_classes.get() + job * depth * NR, 1);
          } else {
            const int64_t p = job - class_packs;
            pack_column_panel(tile_weight, a.weight.row_stride, cols, depth, p,
                              class_panels.get() + p * cols * NR);
          }
        }
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t b0 = b * kRowBlock;
          const int64_t rows = min_i64(kRowBlock, group_rows - b0);
          class_logit_tile(a, packed_rows.get(), b0, rows, packed_classes.get(),
                           a.bias != nullptr ? bias_tile.get() : nullptr, cols, logits.get(), CT);
          T* d_z = d_logits.get() + b0 * CT;
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = g0 + b0 + r;
            logit_gradient_row(a, g, targets, total_coef[i], i, j0, cols, logits.get() + r * CT, d_z + r * CT,
                               spread.get());
          }
          // dX[rows] += dZ (rows x cols) W[j0 .. j0 + cols): dZ transposed is that product's A.
          transpose_into(d_z, CT, rows, cols, coef_t.get(), kRowBlock);
          const PackedOperand<T> d_z_t{coef_t.get(), kRowBlock};
          for (int64_t strip = 0; strip < strips; ++strip) {
            const int64_t h0 = strip * NR;
            gemm_accumulate<T>(rows, cols, d_z_t, class_panels.get() + strip * cols * NR, NR,
                               g.d_input + (g0 + b0) * depth + h0, depth, min_i64(NR, depth - h0));
          }
        }
        // dW[j0 .. j0 + cols) += dZ^T X[group]: dZ stored row-major is that product's A packed
        // class-major (a short tile's missing classes are zero rows of dZ^T, never written).
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1) nowait
#endif
        for (int64_t strip = 0; strip <= strips; ++strip) {
          if (strip == strips) {
            for (int64_t c = 0; c < cols && g.d_bias != nullptr; ++c) {
              double sum = d_bias[j0 + c];
              for (int64_t r = 0; r < group_rows; ++r) sum += static_cast<double>(d_logits[r * CT + c]);
              d_bias[j0 + c] = sum;
            }
            continue;
          }
          const int64_t h0 = strip * NR;
          // In depth blocks, so that a block of the panel stays in L1 while dZ^T streams past it;
          // each block continues every element's chain, in row order.
          for (int64_t k0 = 0; k0 < group_rows; k0 += kDepthBlock) {
            gemm_accumulate<T>(cols, min_i64(kDepthBlock, group_rows - k0),
                               PackedOperand<T>{d_logits.get() + k0 * CT, CT},
                               row_panels.get() + strip * group_rows * NR + k0 * NR, NR,
                               g.d_weight + j0 * depth + h0, depth, min_i64(NR, depth - h0));
          }
        }
#if defined(_OPENMP)
#pragma omp barrier
#endif
      }
    }
  }
  if (failed) throw std::bad_alloc();
  if (g.d_bias != nullptr) {
    for (int64_t c = 0; c < classes; ++c) g.d_bias[c] = static_cast<T>(d_bias[c]);
  }
}
