// Small shared pieces: aligned buffers and the error type the bindings translate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "bitmamba/compiler.h"

namespace bm {

constexpr std::size_t kAlign = 64;

// A model file or user input is malformed. Translated to Python ValueError.
struct FormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Owning, 64-byte aligned, zero-initialised array. Move-only.
template <typename T>
class AlignedBuffer {
public:
    AlignedBuffer() = default;
    explicit AlignedBuffer(std::size_t n) { reset(n); }
    ~AlignedBuffer() { aligned_free(ptr_); }
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;
    AlignedBuffer(AlignedBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), n_(std::exchange(o.n_, 0)) {}
    AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
        if (this != &o) {
            aligned_free(ptr_);
            ptr_ = std::exchange(o.ptr_, nullptr);
            n_ = std::exchange(o.n_, 0);
        }
        return *this;
    }

    void reset(std::size_t n) {
        aligned_free(ptr_);
        ptr_ = nullptr;
        n_ = 0;
        if (n == 0) return;
        std::size_t bytes = (n * sizeof(T) + kAlign - 1) / kAlign * kAlign;
        void* p = aligned_malloc(kAlign, bytes);
        if (!p) throw std::bad_alloc();
        std::memset(p, 0, bytes);
        ptr_ = static_cast<T*>(p);
        n_ = n;
    }

    T* data() { return ptr_; }
    const T* data() const { return ptr_; }
    std::size_t size() const { return n_; }
    T& operator[](std::size_t i) { return ptr_[i]; }
    const T& operator[](std::size_t i) const { return ptr_[i]; }

private:
    T* ptr_ = nullptr;
    std::size_t n_ = 0;
};

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

}  // namespace bm
