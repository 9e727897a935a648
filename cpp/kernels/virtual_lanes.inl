// Sums whose rounding is the same on every path. A vector loop that gives lane l the elements
// k = l (mod kLanes) and then reduces its register rounds differently on each ISA, because kLanes
// and the reduction's tree differ. Here every path keeps the same kVirtualLanes<T> accumulators
// (128 bytes: 2 registers on AVX-512, 4 on AVX2, 8 on NEON, 32 or 16 scalars), virtual lane v
// taking the elements k = v (mod kVirtualLanes<T>) in order, and folds them with one fixed tree.
// Included inside an ISA namespace after that ISA's Simd<float> and Simd<double>.

template <class T>
constexpr int64_t kVirtualLanes = 128 / sizeof(T);

// lanes[0] after the fixed tree over lanes[0 .. N) (N a power of two):
// for h = N / 2, N / 4, ..., 1: lanes[i] += lanes[i + h] for i < h. N is a constant so that the
// tree unrolls into register shuffles (as a loop over h it went through memory, and paired
// InfoNCE's forward pass took 1.7x as long).
template <int64_t N, class T>
T fold_lanes(T* lanes) {
  static_assert(N >= 1 && (N & (N - 1)) == 0, "a power of two of lanes");
#pragma GCC unroll 8
  for (int64_t h = N / 2; h >= 1; h /= 2) {
#pragma GCC unroll 64
    for (int64_t i = 0; i < h; ++i) lanes[i] += lanes[i + h];
  }
  return lanes[0];
}

// The fold of kVirtualLanes<T> lanes stored in virtual-lane order.
template <class T>
T fold_virtual_lanes(T* lanes) {
  return fold_lanes<kVirtualLanes<T>>(lanes);
}

// The same fold over the virtual lanes held in registers: acc[r] lane l is virtual lane
// r * kLanes + l. The tree's steps with h >= kLanes pair whole registers (acc[r] += acc[r + h /
// kLanes]), so they run as vector adds; the last kLanes lanes are stored and folded as above.
// The bits are those of fold_virtual_lanes. Overwrites acc.
template <class T>
T fold_virtual_registers(typename Simd<T>::V* acc) {
  using S = Simd<T>;
  constexpr int64_t R = kVirtualLanes<T> / S::kLanes;
  static_assert(R * S::kLanes == kVirtualLanes<T> && (R & (R - 1)) == 0,
                "the virtual lanes fill a power of two of whole registers");
#pragma GCC unroll 8
  for (int64_t half = R / 2; half >= 1; half /= 2) {
#pragma GCC unroll 16
    for (int64_t r = 0; r < half; ++r) acc[r] = S::add(acc[r], acc[r + half]);
  }
  T lanes[S::kLanes];
  S::store(lanes, acc[0]);
  return fold_lanes<S::kLanes>(lanes);
}
