// The deterministic blocked reduction every loss shares. Included by cpp/kernels/isa_begin.inl
// inside an ISA's namespace, after kernels/buffer.inl (no includes here).
//
// Work is cut into blocks whose bounds depend only on the problem size, never on the thread count.
// Each block is summed on its own, then the per-block partials are added pairwise in a fixed order,
// so a result has the same bits for 1, 2 or 64 threads and for every repeated call.

// Below this many elements of work, forking threads costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 15;

inline int threads_for(int64_t work, int64_t num_blocks, int num_threads) {
  if (work < kMinParallelWork || num_blocks < 2) return 1;
  return num_threads < num_blocks ? num_threads : static_cast<int>(num_blocks);
}

// Adds `count` values pairwise; the tree shape depends on `count` only.
inline double pairwise_sum(const double* values, int64_t count) {
  if (count <= 8) {
    double total = 0.0;
    for (int64_t i = 0; i < count; ++i) total += values[i];
    return total;
  }
  const int64_t half = count / 2;
  return pairwise_sum(values, half) + pairwise_sum(values + half, count - half);
}

// Sums, component-wise, the Width doubles that block_sum(b, double* out) writes for every block b
// in [0, num_blocks); `work` (elements touched) decides whether threads are worth starting. Once
// `interrupt` fires, the remaining blocks are skipped and the result is meaningless.
template <int Width, class BlockSum>
void deterministic_sum(int64_t num_blocks, int64_t work, int num_threads, Interrupt* interrupt,
                       BlockSum block_sum, double* result) {
  for (int k = 0; k < Width; ++k) result[k] = 0.0;
  if (num_blocks <= 0) return;
  if (num_blocks == 1) {
    block_sum(int64_t{0}, result);
    return;
  }
  Buffer<double> partials(Width * num_blocks);
  Buffer<double> column(num_blocks);
  if (!partials.ok() || !column.ok()) throw std::bad_alloc();
  const int threads = threads_for(work, num_blocks, num_threads);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
  for (int64_t b = 0; b < num_blocks; ++b) {
    if (!interrupted(interrupt)) block_sum(b, partials.get() + Width * b);
  }
  if (interrupted(interrupt)) return;
  // Transpose component k into a contiguous run so pairwise_sum can read it.
  for (int k = 0; k < Width; ++k) {
    for (int64_t b = 0; b < num_blocks; ++b) column[b] = partials[Width * b + k];
    result[k] = pairwise_sum(column.get(), num_blocks);
  }
}

// Adds block_sum(b, state) for every block b in [0, num_blocks) into *sum: each thread adds a
// contiguous range of blocks into a state of its own, and the states are merged. The sums are
// exact (exact_sum.inl), so neither the ranges nor the thread count change a bit. Once
// `interrupt` fires, the remaining blocks are skipped and *sum is meaningless.
inline void merge_into(ExactSumState& into, const ExactSumState& from) { exact_sum_merge(into, from); }
inline void merge_into(CompensatedSum& into, const CompensatedSum& from) {
  compensated_sum_merge(into, from);
}
inline void merge_into(CrossEntropySums& into, const CrossEntropySums& from) {
  exact_sum_merge(into.loss, from.loss);
  exact_sum_merge(into.denominator, from.denominator);
}

template <class State, class BlockSum>
void exact_blocks_sum(int64_t num_blocks, int64_t work, int num_threads, Interrupt* interrupt,
                      BlockSum block_sum, State* sum) {
  if (num_blocks <= 0) return;
  const int threads = threads_for(work, num_blocks, num_threads);
  if (threads == 1) {
    for (int64_t b = 0; b < num_blocks && !interrupted(interrupt); ++b) block_sum(b, sum);
    return;
  }
  Buffer<State> states(threads);
  if (!states.ok()) throw std::bad_alloc();
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads)
#endif
  for (int k = 0; k < threads; ++k) {
    State local;
    const int64_t b0 = num_blocks * k / threads;
    const int64_t b1 = num_blocks * (k + 1) / threads;
    for (int64_t b = b0; b < b1 && !interrupted(interrupt); ++b) block_sum(b, &local);
    states[k] = local;
  }
  for (int k = 0; k < threads; ++k) merge_into(*sum, states[k]);
}
