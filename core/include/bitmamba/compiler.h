// The few compiler builtins the engine uses, spelled for GCC/Clang and for MSVC.
#pragma once

#include <cstddef>
#include <cstdlib>

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#include <malloc.h>
#if defined(_M_X64) || defined(_M_IX86)
#include <xmmintrin.h>
#endif
#endif

namespace bm {

// Prefetch p into the cache for reading (a hint; nothing on targets without one).
inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(p, 0, 3);
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
    _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
#else
    (void)p;
#endif
}

// Index of the lowest set bit of x (x != 0).
inline int ctz32(unsigned x) {
#if defined(_MSC_VER) && !defined(__clang__)
    unsigned long i;
    _BitScanForward(&i, x);
    return static_cast<int>(i);
#else
    return __builtin_ctz(x);
#endif
}

// Aligned allocation (bytes a multiple of align) and its release: MSVC has no std::aligned_alloc.
inline void* aligned_malloc(std::size_t align, std::size_t bytes) {
#if defined(_MSC_VER) || defined(__MINGW32__)
    return _aligned_malloc(bytes, align);
#else
    return std::aligned_alloc(align, bytes);
#endif
}

inline void aligned_free(void* p) {
#if defined(_MSC_VER) || defined(__MINGW32__)
    _aligned_free(p);
#else
    std::free(p);
#endif
}

}  // namespace bm
