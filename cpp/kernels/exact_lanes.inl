// The vector front of the exact sum, after ExBLAS (Collange, Defour, Graillat, Iakymchuk): each
// double lane carries an expansion of kExactLevels doubles updated with TwoSum, an error-free
// transformation (a + x = s + err exactly), so the levels absorb almost every term without a
// memory access; a residual still nonzero after the last level goes to the superaccumulator
// (exact_sum.inl). The state after finish() is exactly the sum of the terms, whatever the vector
// width, so every ISA's sum rounds to the same bits. TwoSum cannot carry inf or NaN, nor a sum
// beyond the double range: finish() says so, and the caller redoes those terms with
// exact_sum_add, which counts them. Included inside an ISA namespace, after its Simd<double>.

constexpr int kExactLevels = 2;

class ExactLanes {
 public:
  using SD = Simd<double>;
  using V = typename SD::V;

  explicit ExactLanes(ExactSumState* spill) : spill_(spill) {
    for (V& level : levels_) level = SD::zero();
  }

  void add(V x) {
    for (V& level : levels_) {
      const V sum = SD::add(level, x);
      const V x_part = SD::sub(sum, level);
      x = SD::add(SD::sub(level, SD::sub(sum, x_part)), SD::sub(x, x_part));
      level = sum;
    }
    if (SD::any_nonzero(x)) add_lanes(x, spill_);
  }

  // a * b, exactly, as two terms (the rounded product and its error, by one fused multiply-add).
  void add_product(V a, V b) {
    const V product = SD::mul(a, b);
    add(product);
    add(SD::fma_exact(a, b, SD::sub(SD::zero(), product)));
  }

  // Moves the levels into the superaccumulator. False if a level is not finite: the terms then
  // held an inf or NaN or overflowed, and the superaccumulator holds nothing useful.
  bool finish() {
    bool finite = true;
    for (const V& level : levels_) {
      double lanes[SD::kLanes];
      SD::store(lanes, level);
      for (double lane : lanes) {
        if (!std::isfinite(lane)) finite = false;
        exact_sum_add(*spill_, lane);
      }
    }
    return finite;
  }

 private:
  // Static and out of line, so that the levels need not leave their registers on the way.
  [[gnu::noinline]] static void add_lanes(V x, ExactSumState* spill) {
    double lanes[SD::kLanes];
    SD::store(lanes, x);
    for (double lane : lanes) exact_sum_add(*spill, lane);
  }

  V levels_[kExactLevels];
  ExactSumState* spill_;
};
