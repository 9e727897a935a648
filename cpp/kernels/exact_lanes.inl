// The vector front of the exact sum, after ExBLAS (Collange, Defour, Graillat, Iakymchuk): each
// double lane carries an expansion of two doubles (level0 + level1) updated with TwoSum, an
// error-free transformation (a + x = s + err exactly), so the levels absorb almost every term
// without a memory access; a residual still nonzero after the second level goes to the
// superaccumulator (exact_sum.inl). The state after exact_lanes_finish is exactly the sum of the
// terms, whatever the vector width, so every ISA's sum rounds to the same bits. TwoSum cannot
// carry inf or NaN, nor a sum beyond the double range: exact_lanes_finish says so, and the caller
// redoes those terms with exact_sum_add, which counts them. The levels are the caller's local
// variables, passed to always-inlined functions, so that they stay in registers. Included inside
// an ISA namespace, after its Simd<double>.

using ExactV = typename Simd<double>::V;

// Out of line: the rare residual lanes, one by one.
FASTLOSS_NOINLINE inline void exact_lanes_spill(ExactV x, ExactSumState* spill) {
  using SD = Simd<double>;
  double lanes[SD::kLanes];
  SD::store(lanes, x);
  for (double lane : lanes) exact_sum_add(*spill, lane);
}

FASTLOSS_ALWAYS_INLINE inline void exact_lanes_add(ExactV& level0, ExactV& level1, ExactV x,
                                                   ExactSumState* spill) {
  using SD = Simd<double>;
  const ExactV sum0 = SD::add(level0, x);
  const ExactV part0 = SD::sub(sum0, level0);
  x = SD::add(SD::sub(level0, SD::sub(sum0, part0)), SD::sub(x, part0));
  level0 = sum0;
  const ExactV sum1 = SD::add(level1, x);
  const ExactV part1 = SD::sub(sum1, level1);
  x = SD::add(SD::sub(level1, SD::sub(sum1, part1)), SD::sub(x, part1));
  level1 = sum1;
  if (SD::any_nonzero(x)) exact_lanes_spill(x, spill);
}

// a * b, exactly, as two terms: the rounded product into (high0, high1), its error (one fused
// multiply-add) into (low0, low1).
FASTLOSS_ALWAYS_INLINE inline void exact_lanes_add_product(ExactV& high0, ExactV& high1, ExactV& low0,
                                                           ExactV& low1, ExactV a, ExactV b,
                                                           ExactSumState* spill) {
  using SD = Simd<double>;
  const ExactV product = SD::mul(a, b);
  exact_lanes_add(high0, high1, product, spill);
  exact_lanes_add(low0, low1, SD::fma_exact(a, b, SD::sub(SD::zero(), product)), spill);
}

// Moves the levels into the superaccumulator. False if a level is not finite: the terms then held
// an inf or NaN or overflowed, and the superaccumulator holds nothing useful.
inline bool exact_lanes_finish(ExactV level0, ExactV level1, ExactSumState* spill) {
  using SD = Simd<double>;
  bool finite = true;
  double lanes[2 * SD::kLanes];
  SD::store(lanes, level0);
  SD::store(lanes + SD::kLanes, level1);
  for (double lane : lanes) {
    if (!std::isfinite(lane)) finite = false;
    exact_sum_add(*spill, lane);
  }
  return finite;
}
