// Builds one ISA's KernelTable from the kernel families. Included last by cpp/kernels/<isa>.cpp,
// inside that ISA's namespace, after FASTLOSS_ISA_NAME is defined.

template <class T>
void apply_exp(const T* in, T* out, int64_t count) {
  using S = Simd<T>;
  for (int64_t k = 0; k < count; k += S::kLanes) {
    const int64_t n = count - k < S::kLanes ? count - k : S::kLanes;
    S::store_partial(out + k, S::exp(S::load_partial(in + k, n, T(0))), n);
  }
}

inline void apply_log(const double* in, double* out, int64_t count) { vector_log(in, out, count); }

template <class T>
KernelSet<T> kernel_set() {
  KernelSet<T> set;
  set.exp = &apply_exp<T>;
  set.log = &apply_log;
  set.regression = &regression<T>;
  set.cross_entropy = &cross_entropy<T>;
  set.info_nce = &info_nce<T>;
  set.info_nce_backward = &info_nce_backward<T>;
  return set;
}

inline KernelTable make_table() {
  KernelTable table;
  table.name = FASTLOSS_ISA_NAME;
  table.f32 = kernel_set<float>();
  table.f64 = kernel_set<double>();
  return table;
}
