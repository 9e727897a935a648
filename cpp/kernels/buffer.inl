// Scratch memory for one kernel call. malloc rather than a std container: standard-library
// templates instantiated in an ISA file would be compiled with that ISA's flags and could be the
// copy the linker keeps for every ISA. Included inside an ISA namespace.

template <class T>
class Buffer {
 public:
  explicit Buffer(int64_t count) : data_(static_cast<T*>(std::malloc(sizeof(T) * (count > 0 ? count : 1)))) {}
  ~Buffer() { std::free(data_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  bool ok() const { return data_ != nullptr; }
  T* get() const { return data_; }
  T& operator[](int64_t i) const { return data_[i]; }

 private:
  T* data_;
};
