// The exact, order-independent sum every reduction accumulates into: a small superaccumulator
// (Neal, "Fast exact summation using small and large superaccumulators", 2015; the xsum
// library), i.e. a fixed-point number with one bit for every binary place a double can have.
// Each double is split into its exponent and 53-bit integer mantissa and added, without
// rounding, into three 32-bit-aligned int64 chunks; every chunk has 31 bits of headroom, so
// carries are propagated only every 2^30 additions. Merging two sums adds their chunks, which is
// exact, so any split of the values over threads, blocks, calls or machines gives the same
// state, and the one rounding at the end (exact_sum_round) gives the correctly rounded sum.
// The state (ExactSumState, kernels.hpp) is plain data: the ISA objects add into it, the
// baseline code merges, serialises and rounds it. Plain integer code, independent of any vector
// width. Included inside a namespace (an ISA's, or the baseline's); needs <cmath>, <cstdint>,
// <cstring>.

// value = sum_i chunk[i] * 2^(32 i - 1074): a double with biased exponent e >= 1 and mantissa m
// (hidden bit included) is m * 2^(e - 1) units of 2^-1074; a subnormal (e = 0) is m units.
inline void exact_sum_carry(ExactSumState& s) {
  for (int i = 0; i < ExactSumState::kChunks - 1; ++i) {
    const int64_t carry = s.chunk[i] >> 32;  // arithmetic shift: floor division by 2^32
    s.chunk[i] -= carry * (int64_t{1} << 32);
    s.chunk[i + 1] += carry;
  }
  s.adds_since_carry = 0;
}

inline void exact_sum_add(ExactSumState& s, double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const int exponent = static_cast<int>((bits >> 52) & 0x7FF);
  uint64_t mantissa = bits & ((uint64_t{1} << 52) - 1);
  const bool negative = (bits >> 63) != 0;
  if (exponent == 0x7FF) {
    if (mantissa != 0) {
      ++s.nan;
    } else if (negative) {
      ++s.neg_inf;
    } else {
      ++s.pos_inf;
    }
    return;
  }
  int position = 0;  // of the mantissa's lowest bit, in units of 2^-1074
  if (exponent != 0) {
    mantissa |= uint64_t{1} << 52;
    position = exponent - 1;
  }
  if (mantissa == 0) return;
  // m << (position & 31) is up to 84 bits: three 32-bit pieces, chunks index .. index + 2.
  const int index = position >> 5;
  const int shift = position & 31;
  const uint64_t shifted = mantissa << shift;  // its low 64 bits
  const int64_t low = static_cast<int64_t>(shifted & 0xFFFFFFFFu);
  const int64_t mid = static_cast<int64_t>(shifted >> 32);
  const int64_t high = shift == 0 ? 0 : static_cast<int64_t>(mantissa >> (64 - shift));
  if (negative) {
    s.chunk[index] -= low;
    s.chunk[index + 1] -= mid;
    s.chunk[index + 2] -= high;
  } else {
    s.chunk[index] += low;
    s.chunk[index + 1] += mid;
    s.chunk[index + 2] += high;
  }
  if (++s.adds_since_carry >= ExactSumState::kAddsBetweenCarries) exact_sum_carry(s);
}

inline void exact_sum_merge(ExactSumState& into, const ExactSumState& from) {
  ExactSumState other = from;
  exact_sum_carry(other);
  exact_sum_carry(into);
  for (int i = 0; i < ExactSumState::kChunks; ++i) into.chunk[i] += other.chunk[i];
  into.adds_since_carry = 2;
  into.nan += other.nan;
  into.pos_inf += other.pos_inf;
  into.neg_inf += other.neg_inf;
  into.error_bound += other.error_bound;
}

// v * 2^exponent rounded to the nearest double (ties to even), where `sticky` says that v is
// followed by more nonzero bits below its lowest one (v then has at least 54 bits).
inline double exact_sum_round_bits(uint64_t v, bool sticky, int exponent) {
  int length = 0;
  for (uint64_t t = v; t != 0; t >>= 1) ++length;
  if (length <= 53) return std::ldexp(static_cast<double>(v), exponent);
  const int drop = length - 53;
  const uint64_t rest = v & ((uint64_t{1} << drop) - 1);
  const uint64_t half = uint64_t{1} << (drop - 1);
  uint64_t mantissa = v >> drop;
  if (rest > half || (rest == half && (sticky || (mantissa & 1) != 0))) ++mantissa;
  return std::ldexp(static_cast<double>(mantissa), exponent + drop);  // 2^53 after rounding is exact
}

// The sum rounded once to the nearest double (ties to even); NaN if a NaN or both infinities were
// added, +-inf if one infinity was, or if the finite sum is beyond the double range.
inline double exact_sum_round(const ExactSumState& state) {
  if (state.nan != 0 || (state.pos_inf != 0 && state.neg_inf != 0)) return std::nan("");
  if (state.pos_inf != 0) return HUGE_VAL;
  if (state.neg_inf != 0) return -HUGE_VAL;
  ExactSumState s = state;
  exact_sum_carry(s);  // every chunk in [0, 2^32) but the top one, which holds the sign
  constexpr int kTop = ExactSumState::kChunks - 1;
  const bool negative = s.chunk[kTop] < 0;
  if (negative) {  // the magnitude: negate every chunk, then carry again
    for (int i = 0; i < ExactSumState::kChunks; ++i) s.chunk[i] = -s.chunk[i];
    exact_sum_carry(s);
  }
  int top = kTop;
  while (top >= 0 && s.chunk[top] == 0) --top;
  double magnitude;
  if (top < 0) {
    return 0.0;  // an exact zero is +0, as IEEE's x + (-x) is
  } else if (top == kTop) {
    magnitude = HUGE_VAL;  // at least 2^(32 * kTop - 1074) = 2^1038
  } else if (top < 2) {
    // Below 2^-1010: the whole value in 64 bits, units of 2^-1074 (subnormals are exact).
    const uint64_t v = (static_cast<uint64_t>(s.chunk[1]) << 32) | static_cast<uint64_t>(s.chunk[0]);
    magnitude = exact_sum_round_bits(v, false, -1074);
  } else {
    // The 64 bits from the leading one down, the rest as a sticky bit.
    const uint64_t c2 = static_cast<uint64_t>(s.chunk[top]);
    const uint64_t c1 = static_cast<uint64_t>(s.chunk[top - 1]);
    const uint64_t c0 = static_cast<uint64_t>(s.chunk[top - 2]);
    int lead = 0;  // bits in the top chunk, 1 .. 32
    for (uint64_t t = c2; t != 0; t >>= 1) ++lead;
    const uint64_t v = (c2 << (64 - lead)) | (c1 << (32 - lead)) | (c0 >> lead);
    bool sticky = (c0 & ((uint64_t{1} << lead) - 1)) != 0;
    for (int i = top - 3; i >= 0 && !sticky; --i) sticky = s.chunk[i] != 0;
    magnitude = exact_sum_round_bits(v, sticky, 32 * (top - 2) - 1074 + lead);
  }
  return negative ? -magnitude : magnitude;
}

// Settles a state whose terms were added inexactly, within error_bound of their exact sum (a sum
// of nonnegative doubles, each rounded up by at most a factor 1 + 2^-53: the factor 2 covers the
// roundings of as many as 2^51 additions): if every value within the bound rounds to the same
// double, that double is the correctly rounded exact sum (rounding is monotonic), and the state
// becomes that double alone. False, leaving the state as it is, if the bound straddles a rounding
// boundary: the caller then forms the sum exactly.
inline bool exact_sum_settle(ExactSumState& state) {
  if (state.error_bound == 0.0) return true;
  const double bound = 2.0 * state.error_bound;
  ExactSumState low = state;
  ExactSumState high = state;
  exact_sum_add(low, -bound);
  exact_sum_add(high, bound);
  const double a = exact_sum_round(low);
  const double b = exact_sum_round(high);
  uint64_t a_bits, b_bits;
  std::memcpy(&a_bits, &a, sizeof(a));
  std::memcpy(&b_bits, &b, sizeof(b));
  if (a_bits != b_bits) return false;  // NaN included: exact_sum_round makes one NaN
  state = ExactSumState{};
  exact_sum_add(state, a);
  return true;
}

// A sum of doubles within a known bound of the exact sum, for the one-call results of small inputs
// (SumMode::rounded with no threads to start): there the superaccumulator's fixed costs (zeroing,
// carrying and rounding 67 chunks, a copy or two of the state) outweigh summing a few thousand
// terms. Sum2 of Ogita, Rump and Oishi ("Accurate sum and dot product", 2005): TwoSum moves each
// addition's rounding error into `low` exactly, so that `high` plus the exact sum of those errors
// is the exact sum of the terms. `low`'s own additions are plain; each errs by at most 2^-53 of its
// result (round to nearest, gradual underflow), and low_magnitude adds up those results, so the
// exact sum lies within 2^-53 low_magnitude + error_bound of high + low. error_bound is for the
// caller's terms that carry a known error of their own (the vector lanes of the regression kernel).
// compensated_sum_round then gives the correctly rounded sum, or says that the bound does not pin
// it down (a sum within the bound of a rounding boundary, an inf or NaN term, a sum near the ends
// of the double range), and the caller forms that sum exactly. Plain scalar code, independent of
// any vector width, so every path decides alike.
struct CompensatedSum {
  double high = 0.0;
  double low = 0.0;
  double low_magnitude = 0.0;
  double error_bound = 0.0;
};

inline void compensated_sum_add(CompensatedSum& s, double x) {
  const double sum = s.high + x;
  const double b_part = sum - s.high;
  const double error = (s.high - (sum - b_part)) + (x - b_part);  // TwoSum: high + x = sum + error
  s.high = sum;
  s.low += error;
  s.low_magnitude += std::fabs(s.low);
}

// `from` added into `into`: the high part by TwoSum, the rest plainly (its error counted as above).
inline void compensated_sum_merge(CompensatedSum& into, const CompensatedSum& from) {
  compensated_sum_add(into, from.high);
  into.low += from.low;
  into.low_magnitude += from.low_magnitude + std::fabs(into.low);
  into.error_bound += from.error_bound;
}

// The terms of a reduction go to either kind of sum through one name.
inline void sum_add(ExactSumState& s, double x) { exact_sum_add(s, x); }
inline void sum_add(CompensatedSum& s, double x) { compensated_sum_add(s, x); }
template <class Sum>
constexpr bool kIsExactSum = false;
template <>
constexpr bool kIsExactSum<ExactSumState> = true;

// Adds w * term (weighted) or term to `sum` as exact terms: the rounded product and its error
// (std::fma is exact).
template <class Sum>
void exact_sum_add_term(Sum& sum, double term, bool weighted, double w) {
  if (!weighted) {
    sum_add(sum, term);
    return;
  }
  const double product = term * w;
  sum_add(sum, product);
  if (std::isfinite(product)) sum_add(sum, std::fma(term, w, -product));
}

// The correctly rounded value of the sum into *out, true when every value within the bound of
// high + low rounds to one double; false, leaving *out as it is, otherwise. A sum of no terms (or
// of zeros only) is +0, as exact_sum_round gives; other sums are decided only between 2^-900 and
// 2^1000 in magnitude, so that the bound's own arithmetic is in the normal range and both
// neighbours of the candidate are finite.
inline bool compensated_sum_round(const CompensatedSum& s, double* out) {
  if (s.high == 0.0 && s.low == 0.0 && s.low_magnitude == 0.0 && s.error_bound == 0.0) {
    *out = 0.0;  // every term was +-0 and nothing was added inexactly: the exact sum is 0
    return true;
  }
  // r + rho = high + low exactly (TwoSum), |rho| <= half an ulp of r.
  const double r = s.high + s.low;
  const double b_part = r - s.high;
  const double rho = (s.high - (r - b_part)) + (s.low - b_part);
  const double magnitude = std::fabs(r);
  if (!(magnitude >= 0x1p-900 && magnitude <= 0x1p1000)) return false;  // NaN included
  // 2^-52 > 2^-53 (1 + 2^-40): room for the roundings in forming low_magnitude (a sum of fewer
  // than 2^40 nonnegative values) and in this product and sum; 2^-1060 for their underflow.
  const double bound = 0x1p-52 * s.low_magnitude + s.error_bound * (1.0 + 0x1p-50) + 0x1p-1060;
  // The neighbours of r: the exact sum rounds to r if it lies strictly between the midpoints to
  // them. The sum is r + rho + (a value of magnitude <= bound). Both comparisons are safe as
  // computed: the midpoint distances are powers of two, and rounding is monotonic, so a rounded
  // value on the right side of one means the exact value is too.
  uint64_t bits;
  std::memcpy(&bits, &magnitude, sizeof(bits));
  double larger, smaller;
  const uint64_t up = bits + 1, down = bits - 1;
  std::memcpy(&larger, &up, sizeof(larger));
  std::memcpy(&smaller, &down, sizeof(smaller));
  const double half_up = 0.5 * (larger - magnitude);  // exact: a power of two, normal
  const double half_down = 0.5 * (magnitude - smaller);
  // In terms of the magnitude: the sum's distance beyond r, away from zero, is sign(r) * rho.
  const double beyond = r < 0.0 ? -rho : rho;
  if (beyond + bound < half_up && beyond - bound > -half_down) {  // false for a NaN or inf bound
    *out = r;
    return true;
  }
  return false;
}
