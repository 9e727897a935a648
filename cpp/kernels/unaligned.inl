// Reads of caller memory at any address. A NumPy array need not be aligned to its item size
// (np.frombuffer at an odd offset; np.savez members, which the CLI memory-maps), and reading a
// misaligned T through a T* is undefined behaviour. std::memcpy of sizeof(T) bytes is defined at
// any address and compiles to the same single load. Every scalar read of an input array goes
// through here; the Simd<T> loads are unaligned loads on every ISA. Included inside an ISA
// namespace, before the ISA's Simd<T>.

template <class T>
inline T load_unaligned(const T* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}
