// The KernelTable: every loss kernel as a plain function pointer over raw pointers, strides and
// sizes. One table is compiled per instruction set (cpp/kernels/<isa>.cpp); dispatch.cpp picks one.
// Nothing here knows about Python.
#pragma once

#include <cstdint>

namespace fastloss {

// A read-only 2-D view; strides are in elements and may be negative or zero.
template <class T>
struct MatrixView {
  const T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  int64_t col_stride = 0;
};

// Cooperative interruption of a long call (Ctrl-C). The binding hands a long call an Interrupt;
// kernels ask interrupted() between work items (a reduction block or a tile: well under a
// millisecond each) and, once it says yes, skip every remaining item and return. Their outputs are
// then incomplete, and the binding discards them by raising. interrupted(nullptr) is false, and
// asking never changes what a kernel computes. Declared here, defined in dispatch.cpp for the
// baseline ISA: the ISA files see an opaque pointer, so no atomic, clock or other inline library
// code is instantiated with wide-ISA flags.
struct Interrupt;
bool interrupted(Interrupt* interrupt);

// An exact sum of doubles as plain data (cpp/exact_sum.inl has the operations): the value is
// sum_i chunk[i] * 2^(32 i - 1074), with NaN and infinities counted apart. Every reduction
// accumulates into one; merging two is exact, so the sum does not depend on how its terms were
// split or ordered, and it is rounded once, at the end.
struct ExactSumState {
  static constexpr int kChunks = 67;  // 2^-1074 .. 2^1070 and carry room above
  static constexpr int64_t kAddsBetweenCarries = int64_t{1} << 30;
  int64_t chunk[kChunks] = {};
  int64_t adds_since_carry = 0;
  int64_t nan = 0;
  int64_t pos_inf = 0;
  int64_t neg_inf = 0;
  // Zero in an exact state. A kernel asked for only the rounded sum (SumMode::rounded) may add
  // terms inexactly while it runs, bounding the difference here, and settles the state
  // (exact_sum_settle); no state that leaves a kernel has a nonzero bound.
  double error_bound = 0.0;
};

// What a reduction kernel returns: the exact sum of its terms as a state (exact_state: for states
// that are merged, streamed or serialised) or only the correctly rounded sum (rounded: a one-call
// result, which may then take a faster pass).
enum class SumMode : int { exact_state = 0, rounded = 1 };

enum class RegressionKind : int { squared = 0, absolute = 1 };

// MSE / MAE. Element loss e_ij = (p - t)^2 or |p - t|, times row_weight[i] when given.
// Writes e_ij to out and grad_scale * row_weight[i] * d e_ij / d p_ij to grad (both row-major
// rows x cols, contiguous) when those are not null.
// Sums every (weighted) element loss exactly: for float32 inputs the element losses are formed in
// double (where (p - t)^2 and |p - t| are exact), weighted ones as the exact product w * e (two
// doubles). SumMode::exact_state adds that sum to *sum (rounded is not used); SumMode::rounded
// writes its correctly rounded value to *rounded (sum is not used).
template <class T>
using RegressionFn = void (*)(RegressionKind kind, MatrixView<T> pred, MatrixView<T> target,
                              const double* row_weight, T* out, T* grad, double grad_scale, int num_threads,
                              Interrupt* interrupt, SumMode mode, ExactSumState* sum, double* rounded);

// Cross-entropy over rows of logits (cols = C classes). The target is either class indices
// (target_index, stride in elements; every value is already checked to lie in [0, C) or to equal
// ignore_index) or a probability matrix of the logits' shape (target_prob.data != nullptr).
// Rows are N samples of rows_per_sample rows each (K-dimensional inputs (N, C, d1, ..., dK): a
// sample's d1 * ... * dK positions), so row r = n * rows_per_sample + s of a view starts at
// data + n * sample_stride + s * row_stride, which a single row stride could not express for the
// (N, C, H, W) layout. rows_per_sample == 0: one sample of every row, row r at r * row_stride.
// Any col_stride: rows whose classes are not adjacent are gathered into scratch first.
template <class T>
struct CrossEntropyArgs {
  MatrixView<T> logits;  // rows = N * rows_per_sample
  int64_t rows_per_sample = 0;
  int64_t logits_sample_stride = 0;
  const int64_t* target_index = nullptr;
  int64_t target_index_stride = 1;
  MatrixView<T> target_prob;
  int64_t target_prob_sample_stride = 0;
  const double* class_weight = nullptr;  // C contiguous values or null
  // One contiguous weight per row, or null: each multiplies its row's loss, gradients and share of
  // the "mean" denominator.
  const double* sample_weight = nullptr;
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  T* out = nullptr;  // contiguous row losses, or null
  // Gradient of (grad_scale * sum of row losses) w.r.t. logits, rows x C contiguous, or null. With
  // grad_divide_by_denominator the scale is further divided by the "mean" denominator.
  T* grad = nullptr;
  // Probability targets only: the gradient of the same scaled sum w.r.t. the target, rows x C
  // contiguous, or null: (1 - label_smoothing) w_c (lse - x_c) times the row's scale.
  T* d_target = nullptr;
  double grad_scale = 1.0;
  bool grad_divide_by_denominator = false;
  Interrupt* interrupt = nullptr;
  // SumMode::rounded (a one-call result): the kernel writes the correctly rounded loss sum and
  // "mean" denominator to rounded[0] and rounded[1], and returns empty sums.
  SumMode mode = SumMode::exact_state;
  double* rounded = nullptr;
};

struct CrossEntropySums {
  ExactSumState loss;         // sum of the row losses
  ExactSumState denominator;  // PyTorch's "mean" denominator for index targets
};

template <class T>
using CrossEntropyFn = CrossEntropySums (*)(const CrossEntropyArgs<T>& args, int num_threads);

// InfoNCE, one direction. Row i of `query` is scored against keys; the loss of row i is
// logsumexp(logits_i) - positive_logit_i with logits scaled by inv_temperature.
//   in_batch: keys are the rows of `positive` and the positive of row i is key i;
//   unpaired: keys are [positive_i, negatives rows (M x D)];
//   paired:   keys are [positive_i, negatives[i, :, :] (M x D)], negatives as a 3-D strided array.
// The logits are produced tile by tile with an online log-sum-exp; nothing N x M is stored.
enum class NegativeMode : int { in_batch = 0, unpaired = 1, paired = 2 };

template <class T>
struct InfoNceArgs {
  MatrixView<T> query;     // N x D, col_stride == 1
  MatrixView<T> positive;  // N x D (or the keys for in_batch), col_stride == 1
  NegativeMode mode = NegativeMode::in_batch;
  const T* negatives = nullptr;
  int64_t num_negatives = 0;      // M
  int64_t negatives_stride0 = 0;  // paired: between queries
  int64_t negatives_stride1 = 0;  // between negatives; the feature stride is 1
  double inv_temperature = 1.0;
  bool normalize = false;
  double* row_loss = nullptr;  // forward: N contiguous outputs, in double
  // forward: each row's log-sum-exp as max + log_sum, kept for the backward pass, or null.
  double* row_max = nullptr;
  double* row_log_sum = nullptr;
  Interrupt* interrupt = nullptr;
  // forward with normalize: the kernel ORs in kQueryTooLong / kPositiveTooLong / kNegativesTooLong
  // for a finite row too long to normalise after the dot products (kernels/info_nce.inl), or null.
  int* too_long = nullptr;
  // Queue shards (the streaming API): false leaves the positive out of the log-sum-exp, so that
  // row_max / row_log_sum are over the negatives alone, and positive_logit (N outputs, or null)
  // receives each row's positive logit.
  bool positive_in_sum = true;
  double* positive_logit = nullptr;
  // Labels (contiguous int64), or null: query_labels (N); key_labels (N in-batch: the labels of
  // the positive rows; M unpaired; N x M row-major paired). In-batch, row i's positives are
  // P(i) = {i} u {j : key_labels[j] == query_labels[i]} and the loss subtracts their mean logit;
  // with explicit negatives, a negative of the query's label leaves the softmax.
  const int64_t* query_labels = nullptr;
  const int64_t* key_labels = nullptr;
  // The positives leave the log-sum-exp (DCL). A row left with no logit in it has loss -inf.
  bool decoupled = false;
};
constexpr int kQueryTooLong = 1, kPositiveTooLong = 2, kNegativesTooLong = 4;

// InfoNCE backward, one direction: adds the gradient of sum_i row_grad[i] * loss_i to d_query
// (N x D), d_positive (N x D; the keys for in_batch) and d_negatives (M x D or N x M x D), all
// contiguous. It streams the keys again and recomputes each tile's logits from the saved
// log-sum-exps,
// so, like the forward pass, it never stores anything N x M.
template <class T>
struct InfoNceGradArgs {
  const double* row_max = nullptr;
  const double* row_log_sum = nullptr;
  const double* row_grad = nullptr;
  T* d_query = nullptr;
  T* d_positive = nullptr;
  T* d_negatives = nullptr;
  // Scratch of info_nce_backward_workspace(args) elements for the per-chunk query gradients, or
  // null to let the kernel allocate it (the caller allocates it up front, with every other
  // buffer, so that a MemoryError comes before the forward pass rather than after it).
  T* workspace = nullptr;
  // If not null: row i's sum_{j in D(i)} p_ij z_ij - mean_{p in P(i)} z_ip (float64, N), the
  // derivative of loss_i w.r.t. temperature times -temperature (a learnable temperature's).
  double* row_temperature_moment = nullptr;
};

template <class T>
using InfoNceFn = void (*)(const InfoNceArgs<T>& args, int num_threads);
template <class T>
using InfoNceBackwardFn = void (*)(const InfoNceArgs<T>& args, const InfoNceGradArgs<T>& grad,
                                   int num_threads);
template <class T>
using InfoNceWorkspaceFn = int64_t (*)(const InfoNceArgs<T>& args);

// Linear cross-entropy: the cross-entropy of logits z = input weight^T (+ bias), each optionally
// replaced by softcap tanh(z / softcap), against class indices (target_index, every value already
// checked to lie in [0, V) or to equal ignore_index) or probabilities (target_prob, N x V). Row
// loss sum_c a_c (lse - z_c) + z_loss lse^2, with a the target distribution (label smoothing
// applied) times the class weights; 0 for an ignored row. The N x V logits are never stored.
template <class T>
struct LinearCrossEntropyArgs {
  MatrixView<T> input;      // N x H, col_stride == 1
  MatrixView<T> weight;     // V x H (the classifier), col_stride == 1
  const T* bias = nullptr;  // V contiguous values, or null
  const int64_t* target_index = nullptr;
  int64_t target_index_stride = 1;
  MatrixView<T> target_prob;             // N x V, col_stride == 1 (data null: class indices)
  const double* class_weight = nullptr;  // V contiguous values, or null
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  double z_loss = 0.0;
  double softcap = 0.0;        // 0: no cap
  double* row_loss = nullptr;  // N contiguous outputs
  // N outputs each, or null: the row's log-sum-exp as row_max + row_log_sum, for the backward pass.
  double* row_max = nullptr;
  double* row_log_sum = nullptr;
  Interrupt* interrupt = nullptr;
};

// Linear cross-entropy backward: writes the gradient of sum_i row_grad[i] * loss_i to d_input
// (N x H), d_weight (V x H) and d_bias (V, or null), all contiguous, from the forward pass's
// row_max / row_log_sum; it recomputes the logits tile by tile, never storing them.
template <class T>
struct LinearCrossEntropyGradArgs {
  const double* row_max = nullptr;
  const double* row_log_sum = nullptr;
  const double* row_grad = nullptr;
  T* d_input = nullptr;
  T* d_weight = nullptr;
  T* d_bias = nullptr;
};

template <class T>
using LinearCrossEntropyFn = void (*)(const LinearCrossEntropyArgs<T>& args, int num_threads);
template <class T>
using LinearCrossEntropyBackwardFn = void (*)(const LinearCrossEntropyArgs<T>& args,
                                              const LinearCrossEntropyGradArgs<T>& grad, int num_threads);

// The ISA's vector exp / log applied elementwise (out may alias in): exposed so tests can sweep
// their stated range against float64. log is the float64 one for both types.
template <class T>
using ElementwiseFn = void (*)(const T* in, T* out, int64_t count);

template <class T>
struct KernelSet {
  ElementwiseFn<T> exp;
  ElementwiseFn<T> exp_nonpositive_finite;  // finite x <= 0 only
  ElementwiseFn<double> log;
  RegressionFn<T> regression;
  CrossEntropyFn<T> cross_entropy;
  InfoNceFn<T> info_nce;
  InfoNceBackwardFn<T> info_nce_backward;
  InfoNceWorkspaceFn<T> info_nce_backward_workspace;
  LinearCrossEntropyFn<T> linear_cross_entropy;
  LinearCrossEntropyBackwardFn<T> linear_cross_entropy_backward;
};

struct KernelTable {
  const char* name;
  KernelSet<float> f32;
  KernelSet<double> f64;
};

// One table per ISA compiled into this build; each is defined in cpp/kernels/<isa>.cpp as constant
// data (constant-initialised, so no code compiled with that ISA's flags runs to build it: the
// loader fills in the function addresses, and dispatch reads them only after the CPU check).
// Declared whatever this build holds (the FASTLOSS_HAVE_* defines reach dispatch.cpp only), so
// that each definition has external linkage.
extern const KernelTable scalar_table;
extern const KernelTable avx2_table;
extern const KernelTable avx512_table;
extern const KernelTable neon_table;

}  // namespace fastloss
