// Scratch memory for one kernel call. malloc rather than a std container: standard-library
// templates instantiated in an ISA file would be compiled with that ISA's flags and could be the
// copy the linker keeps for every ISA. Included inside an ISA namespace.
//
// Scratch of kMappedBytes or more gets its own mapping, returned to the system when the buffer
// goes: glibc's malloc raises its mmap threshold to the size of each mapped block it frees, so
// from the second call on such blocks came from the heap and stayed resident after the call
// (measured: linear_cross_entropy's forward + backward peaked at 10 MiB of scratch where each
// pass needs 5). The page faults of a fresh mapping cost ~0.1 ms per MiB, far below the work that
// needs that much scratch.
constexpr int64_t kMappedBytes = int64_t{1} << 20;

template <class T>
class Buffer {
 public:
  explicit Buffer(int64_t count) : bytes_(static_cast<int64_t>(sizeof(T)) * (count > 0 ? count : 1)) {
#if defined(FASTLOSS_HAVE_MMAP)
    if (bytes_ >= kMappedBytes) {
      void* p = mmap(nullptr, static_cast<size_t>(bytes_), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      data_ = p == MAP_FAILED ? nullptr : static_cast<T*>(p);
      return;
    }
#endif
    data_ = static_cast<T*>(std::malloc(static_cast<size_t>(bytes_)));
  }
  ~Buffer() {
#if defined(FASTLOSS_HAVE_MMAP)
    if (bytes_ >= kMappedBytes) {
      if (data_ != nullptr) munmap(data_, static_cast<size_t>(bytes_));
      return;
    }
#endif
    std::free(data_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  bool ok() const { return data_ != nullptr; }
  T* get() const { return data_; }
  T& operator[](int64_t i) const { return data_[i]; }

 private:
  int64_t bytes_;
  T* data_;
};
