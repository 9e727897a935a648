// Builds one ISA's KernelTable from the kernel families. Included last by cpp/kernels/<isa>.cpp,
// inside that ISA's namespace, after FASTLOSS_ISA_NAME is defined.

template <class T>
KernelSet<T> kernel_set() {
  KernelSet<T> set;
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
