// Builds one ISA's KernelTable (constant data) from the kernel families. Included last by
// cpp/kernels/<isa>.cpp, inside that ISA's namespace, after FASTLOSS_ISA_NAME is defined.

template <class T>
void apply_exp(const T* in, T* out, int64_t count) {
  using S = Simd<T>;
  for (int64_t k = 0; k < count; k += S::kLanes) {
    const int64_t n = count - k < S::kLanes ? count - k : S::kLanes;
    S::store_partial(out + k, S::exp(S::load_partial(in + k, n, T(0))), n);
  }
}

// exp_nonpositive_finite_poly elementwise (inputs must be finite and <= 0): InfoNCE's exp for
// tiles of finite logits, which tests compare with apply_exp's bits.
template <class T>
void apply_exp_nonpositive_finite(const T* in, T* out, int64_t count) {
  using S = Simd<T>;
  for (int64_t k = 0; k < count; k += S::kLanes) {
    const int64_t n = count - k < S::kLanes ? count - k : S::kLanes;
    S::store_partial(out + k, exp_nonpositive_finite_poly<T>(S::load_partial(in + k, n, T(0))), n);
  }
}

inline void apply_log(const double* in, double* out, int64_t count) { vector_log(in, out, count); }

template <class T>
constexpr KernelSet<T> kernel_set() {
  return {&apply_exp<T>,
          &apply_exp_nonpositive_finite<T>,
          &apply_log,
          &regression<T>,
          &cross_entropy<T>,
          &info_nce<T>,
          &info_nce_backward<T>,
          &info_nce_backward_workspace<T>,
          &linear_cross_entropy<T>,
          &linear_cross_entropy_backward<T>};
}

// A constant expression: the <isa>.cpp file defines its table as constexpr data from this, so
// building the table runs no code at all (let alone code that needs this ISA).
constexpr KernelTable make_table() { return {FASTLOSS_ISA_NAME, kernel_set<float>(), kernel_set<double>()}; }
