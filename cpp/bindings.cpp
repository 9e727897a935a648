// pybind11 only: convert arrays to raw views, validate what the Python layer hands over, release
// the GIL, call the active kernel table. The public argument checks with user-facing messages live
// in python/fastloss/_validation.py; the checks here guard the C++ from anything that slipped past.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "dispatch.hpp"
#include "kernels.hpp"
#include "memory_probe.hpp"

#ifndef FASTLOSS_VERSION
#define FASTLOSS_VERSION "0+unknown"
#endif

namespace py = pybind11;
using namespace fastloss;

namespace {

// The exact sums' merge and rounding, compiled for the baseline CPU.
#include "exact_sum.inl"

// Exact sums cross into Python as bytes: the state, carried so that equal sums have equal bytes
// (fastloss/_exact.py wraps them). The layout is the struct's, little-endian int64s on every
// platform fastloss builds for.
py::bytes state_bytes(ExactSumState state) {
  exact_sum_carry(state);
  return py::bytes(reinterpret_cast<const char*>(&state), sizeof(state));
}

ExactSumState state_from(const py::bytes& bytes, const char* name) {
  const std::string data = bytes;
  ExactSumState state;
  if (data.size() != sizeof(state)) {
    throw py::value_error(std::string(name) + ": not an exact-sum state (" + std::to_string(data.size()) +
                          " bytes, expected " + std::to_string(sizeof(state)) + ")");
  }
  std::memcpy(&state, data.data(), sizeof(state));
  // A state from to_bytes() is carried: chunks in [0, 2^32) but the top one, counts >= 0.
  bool valid = state.adds_since_carry == 0 && state.nan >= 0 && state.pos_inf >= 0 && state.neg_inf >= 0 &&
               state.error_bound == 0.0;
  for (int i = 0; i < ExactSumState::kChunks - 1 && valid; ++i) {
    valid = state.chunk[i] >= 0 && state.chunk[i] < (int64_t{1} << 32);
  }
  const int64_t top = state.chunk[ExactSumState::kChunks - 1];
  valid = valid && top > -(int64_t{1} << 32) && top < (int64_t{1} << 32);
  if (!valid) throw py::value_error(std::string(name) + ": not a valid exact-sum state");
  return state;
}

py::bytes exact_merge(const py::bytes& a, const py::bytes& b) {
  ExactSumState sum = state_from(a, "a");
  exact_sum_merge(sum, state_from(b, "b"));
  return state_bytes(sum);
}

double exact_round(const py::bytes& state) { return exact_sum_round(state_from(state, "state")); }

// Work (elements touched) below which releasing and re-taking the GIL costs more than the kernel.
constexpr int64_t kReleaseGilAbove = 1 << 14;
// Work above which a call can take long enough (a millisecond and up) to be worth interrupting.
constexpr int64_t kInterruptibleAbove = 1 << 22;

// Python's main thread: the only one that runs signal handlers, so the only one worth polling for.
unsigned long g_main_thread = 0;

// Runs the handler of any signal that arrived during a kernel (Ctrl-C: KeyboardInterrupt). True
// when a handler raised; its exception then stays set on this thread for run_kernel to throw.
bool poll_python_signals(void*) {
  const PyGILState_STATE gil = PyGILState_Ensure();
  const bool raised = PyErr_CheckSignals() != 0;
  PyGILState_Release(gil);
  return raised;
}

// Runs kernel(Interrupt*) for `work` elements: small calls keep the GIL (the direct path: no
// release, no interrupt); larger ones release it; long ones on the main thread also get an
// Interrupt, through which the kernel's own calling thread (the OpenMP master, which keeps taking
// work items) re-takes the GIL about every 100 ms and runs the signal handlers. When one raises,
// every thread skips the remaining work items, and the partial outputs are discarded by raising
// its exception here. No thread is started for this, so OpenMP keeps its one thread pool.
template <class Kernel>
auto run_kernel(int64_t work, Kernel kernel) -> decltype(kernel(nullptr)) {
  using Result = decltype(kernel(nullptr));
  if (work < kReleaseGilAbove) return kernel(nullptr);
  if (work < kInterruptibleAbove || PyThread_get_thread_ident() != g_main_thread) {
    // Safe without the GIL: the kernel touches only the buffers the caller's references keep alive.
    py::gil_scoped_release release;
    return kernel(nullptr);
  }
  Interrupt interrupt(&poll_python_signals, nullptr);
  auto raise_if_interrupted = [&] {
    if (interrupt.stopped.load()) throw py::error_already_set();
  };
  if constexpr (std::is_void_v<Result>) {
    {
      py::gil_scoped_release release;
      kernel(&interrupt);
    }
    raise_if_interrupted();
  } else {
    Result result;
    {
      py::gil_scoped_release release;
      result = kernel(&interrupt);
    }
    raise_if_interrupted();
    return result;
  }
}

template <class T>
const KernelSet<T>& active_set() {
  if constexpr (sizeof(T) == sizeof(float))
    return active_table().f32;
  else
    return active_table().f64;
}

template <class T>
bool has_dtype(const py::array& a) {
  return a.dtype().equal(py::dtype::of<T>());
}

int64_t element_stride(const py::array& a, int axis, const char* name) {
  const py::ssize_t bytes = a.strides(axis);
  if (bytes % static_cast<py::ssize_t>(a.itemsize()) != 0) {
    throw py::value_error(std::string(name) + ": strides must be multiples of the item size");
  }
  return static_cast<int64_t>(bytes / static_cast<py::ssize_t>(a.itemsize()));
}

template <class T>
MatrixView<T> matrix_view(const py::array& a, const char* name) {
  if (a.ndim() != 2) throw py::value_error(std::string(name) + ": expected a 2-D array");
  if (!has_dtype<T>(a)) throw py::type_error(std::string(name) + ": unexpected dtype");
  MatrixView<T> v;
  v.data = static_cast<const T*>(a.data());
  v.rows = a.shape(0);
  v.cols = a.shape(1);
  v.row_stride = element_stride(a, 0, name);
  v.col_stride = element_stride(a, 1, name);
  return v;
}

template <class T>
T* output_buffer(const py::object& out, py::ssize_t size, const char* name) {
  if (out.is_none()) return nullptr;
  py::array a = py::reinterpret_borrow<py::array>(out);
  if (!has_dtype<T>(a) || a.size() != size || !(a.flags() & py::array::c_style) || !a.writeable()) {
    throw py::value_error(std::string(name) +
                          ": expected a writeable C-contiguous buffer of matching dtype and size");
  }
  return static_cast<T*>(a.mutable_data());
}

const double* double_vector(const py::object& obj, py::ssize_t size, const char* name) {
  if (obj.is_none()) return nullptr;
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!has_dtype<double>(a) || a.ndim() != 1 || a.shape(0) != size || !(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": expected a contiguous float64 array of shape (" +
                          std::to_string(size) + ",)");
  }
  return static_cast<const double*>(a.data());
}

template <class T>
py::bytes regression_typed(RegressionKind kind, const py::array& pred, const py::array& target,
                           const py::object& sample_weight, const py::object& out, const py::object& grad,
                           double grad_scale, SumMode mode) {
  const MatrixView<T> p = matrix_view<T>(pred, "pred");
  const MatrixView<T> t = matrix_view<T>(target, "target");
  if (p.rows != t.rows || p.cols != t.cols) throw py::value_error("pred and target: shapes differ");
  const double* w = double_vector(sample_weight, p.rows, "sample_weight");
  T* o = output_buffer<T>(out, p.rows * p.cols, "out");
  T* g = output_buffer<T>(grad, p.rows * p.cols, "grad");
  const RegressionFn<T> fn = active_set<T>().regression;
  const int threads = num_threads();
  ExactSumState sum;
  double rounded = 0.0;
  run_kernel(p.rows * p.cols, [&](Interrupt* interrupt) {
    fn(kind, p, t, w, o, g, grad_scale, threads, interrupt, mode, &sum, &rounded);
  });
  // A rounded sum crosses as the state of that one double, which rounds to it again.
  if (mode == SumMode::rounded) exact_sum_add(sum, rounded);
  return state_bytes(sum);
}

py::bytes regression(int kind, const py::array& pred, const py::array& target,
                     const py::object& sample_weight, const py::object& out, const py::object& grad,
                     double grad_scale, bool exact_state) {
  if (kind != 0 && kind != 1) throw py::value_error("kind: expected 0 (squared) or 1 (absolute)");
  const RegressionKind k = static_cast<RegressionKind>(kind);
  const SumMode mode = exact_state ? SumMode::exact_state : SumMode::rounded;
  if (has_dtype<float>(pred))
    return regression_typed<float>(k, pred, target, sample_weight, out, grad, grad_scale, mode);
  if (has_dtype<double>(pred))
    return regression_typed<double>(k, pred, target, sample_weight, out, grad, grad_scale, mode);
  throw py::type_error("pred: expected native float32 or float64");
}

// The position of flat element i of a C-contiguous array of `shape` in a message: "5" for 1-D,
// "(1, 2, 0)" for more dimensions.
std::string position_text(int64_t i, const py::array& array) {
  if (array.ndim() <= 1) return std::to_string(i);
  std::string text;
  for (py::ssize_t d = array.ndim() - 1; d >= 0; --d) {
    const int64_t extent = array.shape(d);
    const std::string index = std::to_string(i % extent);
    text = d == 0 ? index + text : ", " + index + text;
    i /= extent;
  }
  return "(" + text + ")";
}

// int64 class indices, `rows` of them: a 1-D array of any stride or a C-contiguous one of the
// K-dimensional target's shape (N, d1, ..., dK), every one checked to lie in [0, classes) or to
// equal ignore_index before any is used (an out-of-range index would read outside a row).
const int64_t* class_indices(const py::object& target_index, int64_t rows, int64_t classes,
                             int64_t ignore_index, int64_t* stride) {
  py::array idx = py::reinterpret_borrow<py::array>(target_index);
  if (!has_dtype<int64_t>(idx) || idx.ndim() < 1 || idx.size() != rows ||
      (idx.ndim() > 1 && !(idx.flags() & py::array::c_style))) {
    throw py::value_error(
        "target: expected int64 class indices, one per row (N,) or C-contiguous (N, d1, ...)");
  }
  const int64_t* labels = static_cast<const int64_t*>(idx.data());
  *stride = idx.ndim() == 1 ? element_stride(idx, 0, "target") : 1;
  for (int64_t i = 0; i < rows; ++i) {
    // The labels may be misaligned (np.frombuffer, memory-mapped .npz members): memcpy reads any address.
    int64_t label;
    std::memcpy(&label, labels + i * *stride, sizeof(label));
    if (label != ignore_index && (label < 0 || label >= classes)) {
      throw py::value_error("target: class index " + std::to_string(label) + " at position " +
                            position_text(i, idx) + " is out of range: expected 0 <= target < " +
                            std::to_string(classes) + " or target == ignore_index (" +
                            std::to_string(ignore_index) + ")");
    }
  }
  return labels;
}

// Rows of a cross-entropy view: a 2-D (rows, C) array, or a 3-D (N, S, C) one whose rows are the
// N * S pairs (n, s) (K-dimensional logits with their positions flattened; CrossEntropyArgs).
template <class T>
MatrixView<T> cross_entropy_rows(const py::array& a, const char* name, int64_t* rows_per_sample,
                                 int64_t* sample_stride) {
  if (a.ndim() != 3) {
    *rows_per_sample = 0;
    *sample_stride = 0;
    return matrix_view<T>(a, name);
  }
  if (!has_dtype<T>(a)) throw py::type_error(std::string(name) + ": unexpected dtype");
  MatrixView<T> v;
  v.data = static_cast<const T*>(a.data());
  v.rows = a.shape(0) * a.shape(1);
  v.cols = a.shape(2);
  v.row_stride = element_stride(a, 1, name);
  v.col_stride = element_stride(a, 2, name);
  *rows_per_sample = a.shape(1) > 0 ? a.shape(1) : 0;
  *sample_stride = element_stride(a, 0, name);
  return v;
}

// The kernel's arguments from the Python ones, checked (labels included); the arrays stay owned by
// the caller's references.
template <class T>
CrossEntropyArgs<T> cross_entropy_args(const py::array& logits, const py::object& target_index,
                                       const py::object& target_prob, const py::object& weight,
                                       int64_t ignore_index, double label_smoothing, const py::object& out,
                                       const py::object& grad, double grad_scale,
                                       bool grad_divide_by_denominator, const py::object& sample_weight,
                                       const py::object& d_target) {
  CrossEntropyArgs<T> args;
  args.logits = cross_entropy_rows<T>(logits, "logits", &args.rows_per_sample, &args.logits_sample_stride);
  const int64_t rows = args.logits.rows;
  const int64_t cols = args.logits.cols;
  if (!target_index.is_none()) {
    args.target_index = class_indices(target_index, rows, cols, ignore_index, &args.target_index_stride);
    if (!d_target.is_none()) throw py::value_error("d_target: class indices have no gradient");
  } else {
    const auto prob = py::reinterpret_borrow<py::array>(target_prob);
    int64_t prob_rows_per_sample;
    args.target_prob =
        cross_entropy_rows<T>(prob, "target", &prob_rows_per_sample, &args.target_prob_sample_stride);
    if (args.target_prob.rows != rows || args.target_prob.cols != cols ||
        prob_rows_per_sample != args.rows_per_sample) {
      throw py::value_error("target: probabilities must have the shape of logits");
    }
    args.d_target = output_buffer<T>(d_target, rows * cols, "d_target");
  }
  args.class_weight = double_vector(weight, cols, "weight");
  args.sample_weight = double_vector(sample_weight, rows, "sample_weight");
  args.ignore_index = ignore_index;
  args.label_smoothing = label_smoothing;
  args.out = output_buffer<T>(out, rows, "out");
  args.grad = output_buffer<T>(grad, rows * cols, "grad");
  args.grad_scale = grad_scale;
  args.grad_divide_by_denominator = grad_divide_by_denominator;
  return args;
}

template <class T>
CrossEntropySums run_cross_entropy(CrossEntropyArgs<T>& args) {
  const CrossEntropyFn<T> fn = active_set<T>().cross_entropy;
  const int threads = num_threads();
  return run_kernel(args.logits.rows * args.logits.cols, [&](Interrupt* interrupt) {
    args.interrupt = interrupt;
    return fn(args, threads);
  });
}

template <class T>
py::tuple cross_entropy_typed(const py::array& logits, const py::object& target_index,
                              const py::object& target_prob, const py::object& weight, int64_t ignore_index,
                              double label_smoothing, const py::object& out, const py::object& grad,
                              double grad_scale, bool grad_divide_by_denominator,
                              const py::object& sample_weight, const py::object& d_target) {
  CrossEntropyArgs<T> args =
      cross_entropy_args<T>(logits, target_index, target_prob, weight, ignore_index, label_smoothing, out,
                            grad, grad_scale, grad_divide_by_denominator, sample_weight, d_target);
  const CrossEntropySums sums = run_cross_entropy(args);
  return py::make_tuple(state_bytes(sums.loss), state_bytes(sums.denominator));
}

// The one-call loss sum and "mean" denominator of plain index targets, correctly rounded.
template <class T>
std::pair<double, double> cross_entropy_rounded(const py::array& logits, const py::array& target) {
  CrossEntropyArgs<T> args =
      cross_entropy_args<T>(logits, target, py::none(), py::none(), -100, 0.0, py::none(), py::none(), 1.0,
                            false, py::none(), py::none());
  double rounded[2] = {0.0, 0.0};
  args.mode = SumMode::rounded;
  args.rounded = rounded;
  run_cross_entropy(args);
  return {rounded[0], rounded[1]};
}

py::tuple cross_entropy(const py::array& logits, const py::object& target_index,
                        const py::object& target_prob, const py::object& weight, int64_t ignore_index,
                        double label_smoothing, const py::object& out, const py::object& grad,
                        double grad_scale, bool grad_divide_by_denominator, const py::object& sample_weight,
                        const py::object& d_target) {
  if (target_index.is_none() == target_prob.is_none()) {
    throw py::value_error("target: pass exactly one of class indices or probabilities");
  }
  if (has_dtype<float>(logits)) {
    return cross_entropy_typed<float>(logits, target_index, target_prob, weight, ignore_index,
                                      label_smoothing, out, grad, grad_scale, grad_divide_by_denominator,
                                      sample_weight, d_target);
  }
  if (has_dtype<double>(logits)) {
    return cross_entropy_typed<double>(logits, target_index, target_prob, weight, ignore_index,
                                       label_smoothing, out, grad, grad_scale, grad_divide_by_denominator,
                                       sample_weight, d_target);
  }
  throw py::type_error("logits: expected native float32 or float64");
}

double* writable_doubles(const py::object& obj, py::ssize_t size, const char* name) {
  if (obj.is_none()) return nullptr;
  if (!py::reinterpret_borrow<py::array>(obj).writeable()) {
    throw py::value_error(std::string(name) + ": expected a writeable buffer");
  }
  return const_cast<double*>(double_vector(obj, size, name));
}

// Contiguous aligned int64 labels of `size` elements, or null for None.
const int64_t* label_vector(const py::object& obj, int64_t size, const char* name) {
  if (obj.is_none()) return nullptr;
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!has_dtype<int64_t>(a) || a.size() != size || !(a.flags() & py::array::c_style) ||
      reinterpret_cast<uintptr_t>(a.data()) % alignof(int64_t) != 0) {
    throw py::value_error(std::string(name) + ": expected an aligned C-contiguous int64 array of " +
                          std::to_string(size) + " elements");
  }
  return static_cast<const int64_t*>(a.data());
}

struct InfoNceLabels {
  py::object query = py::none();
  py::object key = py::none();
  bool decoupled = false;
};

template <class T>
InfoNceArgs<T> info_nce_args(const py::array& query, const py::array& positive, int mode,
                             const py::object& negatives, double inv_temperature, bool normalize,
                             const InfoNceLabels& labels = {}) {
  InfoNceArgs<T> args;
  args.query = matrix_view<T>(query, "query");
  args.positive = matrix_view<T>(positive, "positive_key");
  const int64_t n = args.query.rows;
  const int64_t dim = args.query.cols;
  if (args.positive.rows != n || args.positive.cols != dim) {
    throw py::value_error("positive_key: expected the shape of query");
  }
  if (n > 0 && dim > 1 && (args.query.col_stride != 1 || args.positive.col_stride != 1)) {
    throw py::value_error("query, positive_key: feature axis must be contiguous");
  }
  if (mode < 0 || mode > 2) throw py::value_error("mode: expected 0 (in-batch), 1 (unpaired) or 2 (paired)");
  if ((mode == 0) != negatives.is_none()) throw py::value_error("negative_keys: does not match mode");
  args.mode = static_cast<NegativeMode>(mode);
  if (args.mode != NegativeMode::in_batch) {
    py::array neg = py::reinterpret_borrow<py::array>(negatives);
    if (!has_dtype<T>(neg)) throw py::type_error("negative_keys: unexpected dtype");
    const int expected_ndim = args.mode == NegativeMode::paired ? 3 : 2;
    if (neg.ndim() != expected_ndim || neg.shape(neg.ndim() - 1) != dim ||
        (neg.size() > 0 && dim > 1 && element_stride(neg, expected_ndim - 1, "negative_keys") != 1)) {
      throw py::value_error("negative_keys: unexpected shape or feature stride");
    }
    if (args.mode == NegativeMode::paired && neg.shape(0) != n) {
      throw py::value_error("negative_keys: paired negatives need one set per query");
    }
    args.negatives = static_cast<const T*>(neg.data());
    args.num_negatives = neg.shape(expected_ndim - 2);
    args.negatives_stride1 = element_stride(neg, expected_ndim - 2, "negative_keys");
    args.negatives_stride0 = args.mode == NegativeMode::paired ? element_stride(neg, 0, "negative_keys") : 0;
  }
  args.inv_temperature = inv_temperature;
  args.normalize = normalize;
  args.decoupled = labels.decoupled;
  args.query_labels = label_vector(labels.query, n, "query_labels");
  const int64_t key_count = args.mode == NegativeMode::in_batch ? n
                            : args.mode == NegativeMode::paired ? n * args.num_negatives
                                                                : args.num_negatives;
  args.key_labels = label_vector(labels.key, key_count, "key_labels");
  if ((args.query_labels == nullptr) != (args.key_labels == nullptr)) {
    throw py::value_error("query_labels, key_labels: pass both or neither");
  }
  return args;
}

// Elements one InfoNCE pass touches, as the kernels estimate it for their thread count.
template <class T>
int64_t info_nce_work(const InfoNceArgs<T>& args) {
  const int64_t keys = args.mode == NegativeMode::in_batch ? args.query.rows : args.num_negatives;
  return args.query.rows * (keys + 1) * (args.query.cols + 1);
}

template <class T>
void info_nce_typed(const py::array& query, const py::array& positive, int mode, const py::object& negatives,
                    double inv_temperature, bool normalize, const py::object& row_loss,
                    const py::object& row_max, const py::object& row_log_sum, bool positive_in_sum,
                    const py::object& positive_logit, const InfoNceLabels& labels) {
  InfoNceArgs<T> args =
      info_nce_args<T>(query, positive, mode, negatives, inv_temperature, normalize, labels);
  args.row_loss = writable_doubles(row_loss, args.query.rows, "row_loss");
  args.positive_in_sum = positive_in_sum;
  args.positive_logit = writable_doubles(positive_logit, args.query.rows, "positive_logit");

  if (args.row_loss == nullptr) throw py::value_error("row_loss: required");
  args.row_max = writable_doubles(row_max, args.query.rows, "row_max");
  args.row_log_sum = writable_doubles(row_log_sum, args.query.rows, "row_log_sum");
  if ((args.row_max == nullptr) != (args.row_log_sum == nullptr)) {
    throw py::value_error("row_max, row_log_sum: pass both or neither");
  }
  if (!positive_in_sum && (args.mode == NegativeMode::in_batch || args.row_max == nullptr)) {
    throw py::value_error("positive_in_sum: False needs explicit negatives and row_max / row_log_sum");
  }
  const InfoNceFn<T> fn = active_set<T>().info_nce;
  const int threads = num_threads();
  int too_long = 0;
  args.too_long = &too_long;
  run_kernel(info_nce_work(args), [&](Interrupt* interrupt) {
    args.interrupt = interrupt;
    fn(args, threads);
  });
  if (too_long != 0) {
    std::string names;
    for (const auto& [bit, name] :
         {std::pair{kQueryTooLong, "query"}, std::pair{kPositiveTooLong, "positive_key"},
          std::pair{kNegativesTooLong, "negative_keys"}}) {
      if ((too_long & bit) != 0) names += names.empty() ? name : std::string(", ") + name;
    }
    throw py::value_error(
        names + ": with normalize=True, a row's L2 norm exceeds " +
        (sizeof(T) == sizeof(float) ? std::string("2**60 (float32)") : std::string("2**500 (float64)")) +
        ", beyond which the dot products of the rows overflow before they are normalised; "
        "scale the rows down (the loss does not depend on their lengths)");
  }
}

template <class T>
void info_nce_backward_typed(const py::array& query, const py::array& positive, int mode,
                             const py::object& negatives, double inv_temperature, bool normalize,
                             const py::object& row_max, const py::object& row_log_sum,
                             const py::object& row_grad, const py::object& d_query,
                             const py::object& d_positive, const py::object& d_negatives,
                             const py::object& workspace, const InfoNceLabels& labels,
                             const py::object& row_temperature_moment) {
  InfoNceArgs<T> args =
      info_nce_args<T>(query, positive, mode, negatives, inv_temperature, normalize, labels);
  const int64_t n = args.query.rows;
  const int64_t dim = args.query.cols;
  InfoNceGradArgs<T> grad;
  grad.row_max = double_vector(row_max, n, "row_max");
  grad.row_log_sum = double_vector(row_log_sum, n, "row_log_sum");
  grad.row_grad = double_vector(row_grad, n, "row_grad");
  grad.d_query = output_buffer<T>(d_query, n * dim, "d_query");
  grad.d_positive = output_buffer<T>(d_positive, n * dim, "d_positive");
  const int64_t negative_rows =
      args.mode == NegativeMode::paired ? n * args.num_negatives : args.num_negatives;
  grad.d_negatives = output_buffer<T>(d_negatives, negative_rows * dim, "d_negatives");
  if (grad.row_max == nullptr || grad.row_log_sum == nullptr || grad.row_grad == nullptr ||
      grad.d_query == nullptr || grad.d_positive == nullptr ||
      (args.mode != NegativeMode::in_batch && grad.d_negatives == nullptr)) {
    throw py::value_error("info_nce_backward: missing buffer");
  }
  grad.workspace =
      output_buffer<T>(workspace, active_set<T>().info_nce_backward_workspace(args), "workspace");
  grad.row_temperature_moment = writable_doubles(row_temperature_moment, n, "row_temperature_moment");
  const InfoNceBackwardFn<T> fn = active_set<T>().info_nce_backward;
  const int threads = num_threads();
  // The backward pass touches every logit twice (recomputed, then both matrix products).
  run_kernel(2 * info_nce_work(args), [&](Interrupt* interrupt) {
    args.interrupt = interrupt;
    fn(args, grad, threads);
  });
}

template <class T>
int64_t info_nce_backward_workspace_typed(const py::array& query, const py::array& positive, int mode,
                                          const py::object& negatives) {
  return active_set<T>().info_nce_backward_workspace(
      info_nce_args<T>(query, positive, mode, negatives, 1.0, false));
}

// The linear cross-entropy kernel's arguments, checked; the arrays stay owned by the caller.
template <class T>
LinearCrossEntropyArgs<T> linear_cross_entropy_args(const py::array& input, const py::array& linear_weight,
                                                    const py::object& linear_bias,
                                                    const py::object& target_index,
                                                    const py::object& target_prob,
                                                    const py::object& class_weight, int64_t ignore_index,
                                                    double label_smoothing, double z_loss, double softcap) {
  LinearCrossEntropyArgs<T> args;
  args.input = matrix_view<T>(input, "input");
  args.weight = matrix_view<T>(linear_weight, "linear_weight");
  const int64_t rows = args.input.rows;
  const int64_t classes = args.weight.rows;
  const int64_t depth = args.input.cols;
  if (args.weight.cols != depth) throw py::value_error("input, linear_weight: feature sizes differ");
  if (classes < 1) throw py::value_error("linear_weight: need at least one class");
  if ((depth > 1 && ((rows > 0 && args.input.col_stride != 1) || args.weight.col_stride != 1))) {
    throw py::value_error("input, linear_weight: rows must have unit stride");
  }
  if (!linear_bias.is_none()) {
    py::array b = py::reinterpret_borrow<py::array>(linear_bias);
    if (!has_dtype<T>(b) || b.ndim() != 1 || b.shape(0) != classes || !(b.flags() & py::array::c_style)) {
      throw py::value_error("linear_bias: expected a contiguous array of shape (V,) in the input's dtype");
    }
    args.bias = static_cast<const T*>(b.data());
  }
  if (target_index.is_none() == target_prob.is_none()) {
    throw py::value_error("target: pass exactly one of class indices or probabilities");
  }
  if (!target_index.is_none()) {
    args.target_index = class_indices(target_index, rows, classes, ignore_index, &args.target_index_stride);
  } else {
    args.target_prob = matrix_view<T>(py::reinterpret_borrow<py::array>(target_prob), "target");
    if (args.target_prob.rows != rows || args.target_prob.cols != classes ||
        (classes > 1 && rows > 0 && args.target_prob.col_stride != 1)) {
      throw py::value_error("target: probabilities must be (N, V) with rows of unit stride");
    }
  }
  args.class_weight = double_vector(class_weight, classes, "weight");
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0))
    throw py::value_error("label_smoothing: expected [0, 1]");
  if (!(std::isfinite(z_loss) && z_loss >= 0.0))
    throw py::value_error("z_loss: expected a finite value >= 0");
  if (!(std::isfinite(softcap) && softcap >= 0.0))
    throw py::value_error("softcap: expected a finite value > 0");
  args.ignore_index = ignore_index;
  args.label_smoothing = label_smoothing;
  args.z_loss = z_loss;
  args.softcap = softcap;
  return args;
}

template <class T>
void linear_cross_entropy_typed(const py::array& input, const py::array& linear_weight,
                                const py::object& linear_bias, const py::object& target_index,
                                const py::object& target_prob, const py::object& class_weight,
                                int64_t ignore_index, double label_smoothing, double z_loss, double softcap,
                                const py::object& row_loss, const py::object& row_max,
                                const py::object& row_log_sum) {
  LinearCrossEntropyArgs<T> args =
      linear_cross_entropy_args<T>(input, linear_weight, linear_bias, target_index, target_prob, class_weight,
                                   ignore_index, label_smoothing, z_loss, softcap);
  const int64_t rows = args.input.rows;
  args.row_loss = writable_doubles(row_loss, rows, "row_loss");
  if (args.row_loss == nullptr) throw py::value_error("row_loss: required");
  args.row_max = writable_doubles(row_max, rows, "row_max");
  args.row_log_sum = writable_doubles(row_log_sum, rows, "row_log_sum");
  if ((args.row_max == nullptr) != (args.row_log_sum == nullptr)) {
    throw py::value_error("row_max, row_log_sum: pass both or neither");
  }
  const LinearCrossEntropyFn<T> fn = active_set<T>().linear_cross_entropy;
  const int threads = num_threads();
  run_kernel(rows * args.weight.rows * (args.input.cols + 1), [&](Interrupt* interrupt) {
    args.interrupt = interrupt;
    fn(args, threads);
  });
}

template <class T>
void linear_cross_entropy_backward_typed(const py::array& input, const py::array& linear_weight,
                                         const py::object& linear_bias, const py::object& target_index,
                                         const py::object& target_prob, const py::object& class_weight,
                                         int64_t ignore_index, double label_smoothing, double z_loss,
                                         double softcap, const py::object& row_max,
                                         const py::object& row_log_sum, const py::object& row_grad,
                                         const py::object& d_input, const py::object& d_linear_weight,
                                         const py::object& d_linear_bias) {
  LinearCrossEntropyArgs<T> args =
      linear_cross_entropy_args<T>(input, linear_weight, linear_bias, target_index, target_prob, class_weight,
                                   ignore_index, label_smoothing, z_loss, softcap);
  const int64_t rows = args.input.rows;
  const int64_t classes = args.weight.rows;
  const int64_t depth = args.input.cols;
  LinearCrossEntropyGradArgs<T> grad;
  grad.row_max = double_vector(row_max, rows, "row_max");
  grad.row_log_sum = double_vector(row_log_sum, rows, "row_log_sum");
  grad.row_grad = double_vector(row_grad, rows, "row_grad");
  grad.d_input = output_buffer<T>(d_input, rows * depth, "d_input");
  grad.d_weight = output_buffer<T>(d_linear_weight, classes * depth, "d_linear_weight");
  grad.d_bias = output_buffer<T>(d_linear_bias, classes, "d_linear_bias");
  if (grad.row_max == nullptr || grad.row_log_sum == nullptr || grad.row_grad == nullptr ||
      grad.d_input == nullptr || grad.d_weight == nullptr) {
    throw py::value_error("linear_cross_entropy_backward: missing buffer");
  }
  const LinearCrossEntropyBackwardFn<T> fn = active_set<T>().linear_cross_entropy_backward;
  const int threads = num_threads();
  // Every logit is recomputed and then feeds both matrix products.
  run_kernel(3 * rows * classes * (depth + 1), [&](Interrupt* interrupt) {
    args.interrupt = interrupt;
    fn(args, grad, threads);
  });
}

void linear_cross_entropy(const py::array& input, const py::array& linear_weight,
                          const py::object& linear_bias, const py::object& target_index,
                          const py::object& target_prob, const py::object& class_weight, int64_t ignore_index,
                          double label_smoothing, double z_loss, double softcap, const py::object& row_loss,
                          const py::object& row_max, const py::object& row_log_sum) {
  if (has_dtype<float>(input)) {
    linear_cross_entropy_typed<float>(input, linear_weight, linear_bias, target_index, target_prob,
                                      class_weight, ignore_index, label_smoothing, z_loss, softcap, row_loss,
                                      row_max, row_log_sum);
  } else if (has_dtype<double>(input)) {
    linear_cross_entropy_typed<double>(input, linear_weight, linear_bias, target_index, target_prob,
                                       class_weight, ignore_index, label_smoothing, z_loss, softcap, row_loss,
                                       row_max, row_log_sum);
  } else {
    throw py::type_error("input: expected native float32 or float64");
  }
}

void linear_cross_entropy_backward(const py::array& input, const py::array& linear_weight,
                                   const py::object& linear_bias, const py::object& target_index,
                                   const py::object& target_prob, const py::object& class_weight,
                                   int64_t ignore_index, double label_smoothing, double z_loss,
                                   double softcap, const py::object& row_max, const py::object& row_log_sum,
                                   const py::object& row_grad, const py::object& d_input,
                                   const py::object& d_linear_weight, const py::object& d_linear_bias) {
  if (has_dtype<float>(input)) {
    linear_cross_entropy_backward_typed<float>(input, linear_weight, linear_bias, target_index, target_prob,
                                               class_weight, ignore_index, label_smoothing, z_loss, softcap,
                                               row_max, row_log_sum, row_grad, d_input, d_linear_weight,
                                               d_linear_bias);
  } else if (has_dtype<double>(input)) {
    linear_cross_entropy_backward_typed<double>(input, linear_weight, linear_bias, target_index, target_prob,
                                                class_weight, ignore_index, label_smoothing, z_loss, softcap,
                                                row_max, row_log_sum, row_grad, d_input, d_linear_weight,
                                                d_linear_bias);
  } else {
    throw py::type_error("input: expected native float32 or float64");
  }
}

void info_nce(const py::array& query, const py::array& positive, int mode, const py::object& negatives,
              double inv_temperature, bool normalize, const py::object& row_loss, const py::object& row_max,
              const py::object& row_log_sum, bool positive_in_sum, const py::object& positive_logit,
              const py::object& query_labels, const py::object& key_labels, bool decoupled) {
  const InfoNceLabels labels{query_labels, key_labels, decoupled};
  if (has_dtype<float>(query)) {
    info_nce_typed<float>(query, positive, mode, negatives, inv_temperature, normalize, row_loss, row_max,
                          row_log_sum, positive_in_sum, positive_logit, labels);
  } else if (has_dtype<double>(query)) {
    info_nce_typed<double>(query, positive, mode, negatives, inv_temperature, normalize, row_loss, row_max,
                           row_log_sum, positive_in_sum, positive_logit, labels);
  } else {
    throw py::type_error("query: expected native float32 or float64");
  }
}

void info_nce_backward(const py::array& query, const py::array& positive, int mode,
                       const py::object& negatives, double inv_temperature, bool normalize,
                       const py::object& row_max, const py::object& row_log_sum, const py::object& row_grad,
                       const py::object& d_query, const py::object& d_positive, const py::object& d_negatives,
                       const py::object& workspace, const py::object& query_labels,
                       const py::object& key_labels, bool decoupled,
                       const py::object& row_temperature_moment) {
  const InfoNceLabels labels{query_labels, key_labels, decoupled};
  if (has_dtype<float>(query)) {
    info_nce_backward_typed<float>(query, positive, mode, negatives, inv_temperature, normalize, row_max,
                                   row_log_sum, row_grad, d_query, d_positive, d_negatives, workspace, labels,
                                   row_temperature_moment);
  } else if (has_dtype<double>(query)) {
    info_nce_backward_typed<double>(query, positive, mode, negatives, inv_temperature, normalize, row_max,
                                    row_log_sum, row_grad, d_query, d_positive, d_negatives, workspace,
                                    labels, row_temperature_moment);
  } else {
    throw py::type_error("query: expected native float32 or float64");
  }
}

int64_t info_nce_backward_workspace(const py::array& query, const py::array& positive, int mode,
                                    const py::object& negatives) {
  if (has_dtype<float>(query))
    return info_nce_backward_workspace_typed<float>(query, positive, mode, negatives);
  if (has_dtype<double>(query))
    return info_nce_backward_workspace_typed<double>(query, positive, mode, negatives);
  throw py::type_error("query: expected native float32 or float64");
}

// The fast paths serve the most common calls (C-contiguous native float arrays, a plain
// reduction, no options) with no Python-level work, so a small call costs about a microsecond.
// They return None for anything else, and the Python layer then takes the general path, which
// validates and converts everything.
enum class FastReduction { none_eligible, mean, sum, batchmean };

FastReduction fast_reduction(py::handle reduction) {
  if (!PyUnicode_Check(reduction.ptr())) return FastReduction::none_eligible;
  if (PyUnicode_CompareWithASCIIString(reduction.ptr(), "mean") == 0) return FastReduction::mean;
  if (PyUnicode_CompareWithASCIIString(reduction.ptr(), "sum") == 0) return FastReduction::sum;
  if (PyUnicode_CompareWithASCIIString(reduction.ptr(), "batchmean") == 0) return FastReduction::batchmean;
  return FastReduction::none_eligible;
}

bool c_contiguous(const py::array& a) { return (a.flags() & py::array::c_style) != 0; }

// The reductions of per-row values formed in Python (InfoNCE's row losses, "mean" weight sums):
// the same exact sum the kernels use.
ExactSumState exact_sum_state_of(const py::array& values) {
  if (!has_dtype<double>(values) || values.ndim() != 1)
    throw py::type_error("values: expected a 1-D float64 array");
  const double* data = static_cast<const double*>(values.data());
  const int64_t stride = values.shape(0) > 1 ? static_cast<int64_t>(values.strides(0)) / 8 : 1;
  if (values.shape(0) > 1 && values.strides(0) % 8 != 0) throw py::value_error("values: misaligned stride");
  ExactSumState sum;
  for (int64_t i = 0; i < values.shape(0); ++i) {
    double v;
    std::memcpy(&v, data + i * stride, sizeof(v));
    exact_sum_add(sum, v);
  }
  return sum;
}

double exact_sum_of(const py::array& values) { return exact_sum_round(exact_sum_state_of(values)); }
py::bytes exact_state(const py::array& values) { return state_bytes(exact_sum_state_of(values)); }

template <class T>
double regression_fast_typed(RegressionKind kind, const py::array& pred, const py::array& target) {
  const int64_t size = pred.size();
  MatrixView<T> p{static_cast<const T*>(pred.data()), 1, size, size, 1};
  MatrixView<T> t{static_cast<const T*>(target.data()), 1, size, size, 1};
  const RegressionFn<T> fn = active_set<T>().regression;
  const int threads = num_threads();
  double rounded = 0.0;
  run_kernel(size, [&](Interrupt* interrupt) {
    fn(kind, p, t, nullptr, nullptr, nullptr, 1.0, threads, interrupt, SumMode::rounded, nullptr, &rounded);
    return 0;
  });
  return rounded;
}

py::object regression_fast(int kind, py::handle pred_h, py::handle target_h, py::handle reduction_h) {
  const FastReduction reduction = fast_reduction(reduction_h);
  if (reduction == FastReduction::none_eligible || !py::isinstance<py::array>(pred_h) ||
      !py::isinstance<py::array>(target_h) || (kind != 0 && kind != 1)) {
    return py::none();
  }
  const auto pred = py::reinterpret_borrow<py::array>(pred_h);
  const auto target = py::reinterpret_borrow<py::array>(target_h);
  if (pred.ndim() < 1 || pred.ndim() != target.ndim() || !c_contiguous(pred) || !c_contiguous(target)) {
    return py::none();
  }
  for (py::ssize_t d = 0; d < pred.ndim(); ++d) {
    if (pred.shape(d) != target.shape(d)) return py::none();
  }
  const RegressionKind k = static_cast<RegressionKind>(kind);
  double total;
  if (has_dtype<float>(pred) && has_dtype<float>(target)) {
    total = regression_fast_typed<float>(k, pred, target);
  } else if (has_dtype<double>(pred) && has_dtype<double>(target)) {
    total = regression_fast_typed<double>(k, pred, target);
  } else {
    return py::none();
  }
  // IEEE division: an empty input gives 0 / 0 = nan, as the general path does.
  switch (reduction) {
    case FastReduction::sum:
      return py::float_(total);
    case FastReduction::mean:
      return py::float_(total / static_cast<double>(pred.size()));
    default:
      return py::float_(total / static_cast<double>(pred.shape(0)));
  }
}

py::object cross_entropy_fast(py::handle logits_h, py::handle target_h, py::handle reduction_h) {
  const FastReduction reduction = fast_reduction(reduction_h);
  if (reduction == FastReduction::none_eligible || !py::isinstance<py::array>(logits_h) ||
      !py::isinstance<py::array>(target_h)) {
    return py::none();
  }
  const auto logits = py::reinterpret_borrow<py::array>(logits_h);
  const auto target = py::reinterpret_borrow<py::array>(target_h);
  if (logits.ndim() != 2 || logits.shape(1) < 1 || !c_contiguous(logits) || target.ndim() != 1 ||
      target.shape(0) != logits.shape(0) || !has_dtype<int64_t>(target) ||
      target.strides(0) % static_cast<py::ssize_t>(sizeof(int64_t)) != 0) {
    return py::none();
  }
  std::pair<double, double> sums;
  if (has_dtype<float>(logits)) {
    sums = cross_entropy_rounded<float>(logits, target);
  } else if (has_dtype<double>(logits)) {
    sums = cross_entropy_rounded<double>(logits, target);
  } else {
    return py::none();
  }
  switch (reduction) {
    case FastReduction::sum:
      return py::float_(sums.first);
    case FastReduction::mean:
      return py::float_(sums.first / sums.second);
    default:
      return py::float_(sums.first / static_cast<double>(logits.shape(0)));
  }
}

// Test hooks: the active ISA's vector exp (float32 or float64) and float64 log, elementwise.
enum class VectorFunction { exp, exp_nonpositive_finite, log };

py::array vector_math(const py::array& in, VectorFunction function) {
  if (in.ndim() != 1 || !c_contiguous(in)) throw py::value_error("x: expected a contiguous 1-D array");
  if (has_dtype<float>(in) && function != VectorFunction::log) {
    py::array_t<float> out(in.shape(0));
    const auto fn = function == VectorFunction::exp ? active_set<float>().exp
                                                    : active_set<float>().exp_nonpositive_finite;
    fn(static_cast<const float*>(in.data()), out.mutable_data(), in.shape(0));
    return out;
  }
  if (has_dtype<double>(in)) {
    py::array_t<double> out(in.shape(0));
    const auto fn = function == VectorFunction::log   ? active_set<double>().log
                    : function == VectorFunction::exp ? active_set<double>().exp
                                                      : active_set<double>().exp_nonpositive_finite;
    fn(static_cast<const double*>(in.data()), out.mutable_data(), in.shape(0));
    return out;
  }
  throw py::type_error("x: expected float32 (exp) or float64");
}

// `fastloss bench`'s memory-bandwidth probe (memory_probe.hpp): kind "sum" reads x, "copy" writes
// out = x, "triad" writes out = x + 3 * y; every array a contiguous 1-D float32 of x's length.
// Returns (sum of x for "sum", else 0.0; the OpenMP threads that ran).
py::tuple memory_probe(const std::string& kind, const py::array& x, const py::object& y,
                       const py::object& out, int threads) {
  MemoryProbeKind k;
  if (kind == "sum") {
    k = MemoryProbeKind::sum;
  } else if (kind == "copy") {
    k = MemoryProbeKind::copy;
  } else if (kind == "triad") {
    k = MemoryProbeKind::triad;
  } else {
    throw py::value_error("kind: expected 'sum', 'copy' or 'triad', got '" + kind + "'");
  }
  if (threads < 1) throw py::value_error("threads: expected >= 1");
  if (!has_dtype<float>(x) || x.ndim() != 1 || !c_contiguous(x)) {
    throw py::value_error("x: expected a contiguous 1-D float32 array");
  }
  const py::ssize_t n = x.shape(0);
  const float* y_data = nullptr;
  if (k == MemoryProbeKind::triad) {
    const char* bad_y = "y: expected a contiguous 1-D float32 array of x's length";
    if (!py::isinstance<py::array>(y)) throw py::value_error(bad_y);
    const auto ya = py::reinterpret_borrow<py::array>(y);
    if (!has_dtype<float>(ya) || ya.ndim() != 1 || ya.shape(0) != n || !c_contiguous(ya)) {
      throw py::value_error(bad_y);
    }
    y_data = static_cast<const float*>(ya.data());
  }
  float* out_data = nullptr;
  if (k != MemoryProbeKind::sum) {
    if (!py::isinstance<py::array>(out)) throw py::value_error("out: expected a float32 array");
    out_data = output_buffer<float>(out, n, "out");
  }
  const float* x_data = static_cast<const float*>(x.data());
  const MemoryProbeResult r = run_kernel(static_cast<int64_t>(n), [&](Interrupt*) {
    return memory_probe_f32(k, x_data, y_data, out_data, static_cast<int64_t>(n), threads);
  });
  return py::make_tuple(r.value, r.threads);
}

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastloss compiled kernels (private; use the fastloss package)";
  init_dispatch();
  g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();

  m.def("exact_sum", &exact_sum_of, py::arg("values"),
        "The correctly rounded sum of a 1-D float64 array, exact and order-independent.");
  m.def("exact_state", &exact_state, py::arg("values"), "The exact sum of a 1-D float64 array, as a state.");
  m.def("exact_merge", &exact_merge, py::arg("a"), py::arg("b"), "The state of the sum of two exact sums.");
  m.def("exact_round", &exact_round, py::arg("state"), "An exact sum rounded once to the nearest double.");
  m.def("regression", &regression, py::arg("kind"), py::arg("pred"), py::arg("target"),
        py::arg("sample_weight"), py::arg("out"), py::arg("grad") = py::none(), py::arg("grad_scale") = 1.0,
        py::arg("exact_state") = true);
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("target_index"), py::arg("target_prob"),
        py::arg("weight"), py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("out"),
        py::arg("grad") = py::none(), py::arg("grad_scale") = 1.0,
        py::arg("grad_divide_by_denominator") = false, py::arg("sample_weight") = py::none(),
        py::arg("d_target") = py::none());
  m.def("info_nce", &info_nce, py::arg("query"), py::arg("positive"), py::arg("mode"), py::arg("negatives"),
        py::arg("inv_temperature"), py::arg("normalize"), py::arg("row_loss"),
        py::arg("row_max") = py::none(), py::arg("row_log_sum") = py::none(),
        py::arg("positive_in_sum") = true, py::arg("positive_logit") = py::none(),
        py::arg("query_labels") = py::none(), py::arg("key_labels") = py::none(),
        py::arg("decoupled") = false);
  m.def("info_nce_backward", &info_nce_backward, py::arg("query"), py::arg("positive"), py::arg("mode"),
        py::arg("negatives"), py::arg("inv_temperature"), py::arg("normalize"), py::arg("row_max"),
        py::arg("row_log_sum"), py::arg("row_grad"), py::arg("d_query"), py::arg("d_positive"),
        py::arg("d_negatives"), py::arg("workspace") = py::none(), py::arg("query_labels") = py::none(),
        py::arg("key_labels") = py::none(), py::arg("decoupled") = false,
        py::arg("row_temperature_moment") = py::none());
  m.def("info_nce_backward_workspace", &info_nce_backward_workspace, py::arg("query"), py::arg("positive"),
        py::arg("mode"), py::arg("negatives"));

  m.def("linear_cross_entropy", &linear_cross_entropy, py::arg("input"), py::arg("linear_weight"),
        py::arg("linear_bias"), py::arg("target_index"), py::arg("target_prob"), py::arg("class_weight"),
        py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("z_loss"), py::arg("softcap"),
        py::arg("row_loss"), py::arg("row_max"), py::arg("row_log_sum"),
        "Linear cross-entropy row losses (and the saved log-sum-exps) of checked arrays.");
  m.def("linear_cross_entropy_backward", &linear_cross_entropy_backward, py::arg("input"),
        py::arg("linear_weight"), py::arg("linear_bias"), py::arg("target_index"), py::arg("target_prob"),
        py::arg("class_weight"), py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("z_loss"),
        py::arg("softcap"), py::arg("row_max"), py::arg("row_log_sum"), py::arg("row_grad"),
        py::arg("d_input"), py::arg("d_linear_weight"), py::arg("d_linear_bias"),
        "Writes the gradients of sum_i row_grad[i] * loss_i w.r.t. input, linear_weight and linear_bias.");
  m.def("regression_fast", &regression_fast, py::arg("kind"), py::arg("pred"), py::arg("target"),
        py::arg("reduction"));
  m.def("cross_entropy_fast", &cross_entropy_fast, py::arg("logits"), py::arg("target"),
        py::arg("reduction"));

  m.def("vector_exp", [](const py::array& x) { return vector_math(x, VectorFunction::exp); }, py::arg("x"));
  m.def(
      "vector_exp_nonpositive_finite",
      [](const py::array& x) { return vector_math(x, VectorFunction::exp_nonpositive_finite); },
      py::arg("x"));
  m.def("vector_log", [](const py::array& x) { return vector_math(x, VectorFunction::log); }, py::arg("x"));

  m.def("memory_probe", &memory_probe, py::arg("kind"), py::arg("x"), py::arg("y"), py::arg("out"),
        py::arg("threads"));

  m.def("compiled_isas", &compiled_isas);
  m.def("available_isas", &available_isas);
  m.def("active_isa", [] { return std::string(active_table().name); });
  m.def("set_active_isa", &set_active_isa, py::arg("name"));
  m.def("get_num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("default_num_threads", &default_num_threads);
#if defined(FASTLOSS_HAVE_OPENMP)
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  m.attr("compiler") = compiler();
  m.attr("build_version") = FASTLOSS_VERSION;
}
