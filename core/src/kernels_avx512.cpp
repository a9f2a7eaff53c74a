// AVX-512 (BW, optionally VNNI) kernels for the ternary matrix products. Opt-in level
// (-DBITMAMBA_SIMD=avx512); the float helpers are the AVX2 ones (every AVX-512 CPU has AVX2).
// Integer results are bit-identical to kernels_scalar.cpp.
#if defined(__AVX512F__) && defined(__AVX512BW__)

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// GCC 12's own intrinsics (_mm512_reduce_add_epi32, _mm512_broadcast_i64x4) trip -Wmaybe-uninitialized
// on their _mm256_undefined_si256() operand (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <immintrin.h>

#include <algorithm>

#include "bitmamba/kernels.h"
#include "bitmamba/simd_levels.h"

namespace bm {
namespace {

constexpr int kPrefetchBytes = 4096;

inline __m512i bcast_x(const int8_t* p) {
    return _mm512_broadcast_i64x4(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
}

// Sum of the low and high 256-bit halves separately: returns (sum of lanes 0-7, sum of lanes 8-15).
inline void hsum_halves(__m512i v, int32_t& lo, int32_t& hi) {
    lo = _mm512_reduce_add_epi32(_mm512_maskz_mov_epi32(0x00FF, v));
    hi = _mm512_reduce_add_epi32(_mm512_maskz_mov_epi32(0xFF00, v));
}

#if defined(__AVX512VNNI__)
inline __m512i dot_acc(__m512i acc, __m512i codes, __m512i x) { return _mm512_dpbusd_epi32(acc, codes, x); }
#endif

void gemv_avx512(const PackedMatrix& w, const int8_t* x, int32_t sum_x, int32_t* y, int g0, int g1) {
    const __m512i mask = _mm512_set1_epi8(3);
    const int KB = w.kblocks;
    for (int g = g0; g < g1; ++g) {
        const uint8_t* base = w.group_ptr(g);
        __m512i a01 = _mm512_setzero_si512(), a23 = a01;  // rows 0|1 and rows 2|3 in 256-bit halves
#if defined(__AVX512VNNI__)
        for (int kb = 0; kb < KB; ++kb) {
            const uint8_t* p = base + static_cast<std::size_t>(kb) * (kRowGroup * kBlockBytes);
            _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + 64), _MM_HINT_T0);
            const int8_t* xb = x + kb * kBlockK;
            const __m512i c01 = _mm512_load_si512(p);
            const __m512i c23 = _mm512_load_si512(p + 64);
            for (int q = 0; q < 4; ++q) {
                const __m512i xq = bcast_x(xb + 32 * q);
                const __m128i sh = _mm_cvtsi32_si128(2 * q);
                a01 = dot_acc(a01, _mm512_and_si512(_mm512_srl_epi16(c01, sh), mask), xq);
                a23 = dot_acc(a23, _mm512_and_si512(_mm512_srl_epi16(c23, sh), mask), xq);
            }
        }
#else
        const __m512i ones = _mm512_set1_epi16(1);
        for (int kb0 = 0; kb0 < KB; kb0 += 8) {
            const int kend = std::min(KB, kb0 + 8);
            __m512i s01 = _mm512_setzero_si512(), s23 = s01;
            for (int kb = kb0; kb < kend; ++kb) {
                const uint8_t* p = base + static_cast<std::size_t>(kb) * (kRowGroup * kBlockBytes);
                _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
                _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + 64), _MM_HINT_T0);
                const int8_t* xb = x + kb * kBlockK;
                const __m512i c01 = _mm512_load_si512(p);
                const __m512i c23 = _mm512_load_si512(p + 64);
                for (int q = 0; q < 4; ++q) {
                    const __m512i xq = bcast_x(xb + 32 * q);
                    const __m128i sh = _mm_cvtsi32_si128(2 * q);
                    s01 = _mm512_add_epi16(s01, _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srl_epi16(c01, sh), mask), xq));
                    s23 = _mm512_add_epi16(s23, _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srl_epi16(c23, sh), mask), xq));
                }
            }
            a01 = _mm512_add_epi32(a01, _mm512_madd_epi16(s01, ones));
            a23 = _mm512_add_epi32(a23, _mm512_madd_epi16(s23, ones));
        }
#endif
        int32_t r0, r1, r2, r3;
        hsum_halves(a01, r0, r1);
        hsum_halves(a23, r2, r3);
        int32_t* out = y + g * kRowGroup;
        out[0] = r0 - sum_x;
        out[1] = r1 - sum_x;
        out[2] = r2 - sum_x;
        out[3] = r3 - sum_x;
    }
}

inline void decode_panel(const PackedMatrix& w, int g, uint8_t* scratch) {
    const __m256i mask = _mm256_set1_epi8(3);
    const uint8_t* base = w.group_ptr(g);
    for (int kb = 0; kb < w.kblocks; ++kb)
        for (int r = 0; r < kRowGroup; ++r) {
            const __m256i c = _mm256_load_si256(
                reinterpret_cast<const __m256i*>(base + (static_cast<std::size_t>(kb) * kRowGroup + r) * kBlockBytes));
            uint8_t* out = scratch + static_cast<std::size_t>(r) * w.cols_pad + kb * kBlockK;
            _mm256_store_si256(reinterpret_cast<__m256i*>(out), _mm256_and_si256(c, mask));
            _mm256_store_si256(reinterpret_cast<__m256i*>(out + 32), _mm256_and_si256(_mm256_srli_epi16(c, 2), mask));
            _mm256_store_si256(reinterpret_cast<__m256i*>(out + 64), _mm256_and_si256(_mm256_srli_epi16(c, 4), mask));
            _mm256_store_si256(reinterpret_cast<__m256i*>(out + 96), _mm256_and_si256(_mm256_srli_epi16(c, 6), mask));
        }
}

// 2 rows x 4 tokens over K (K % 128 == 0, so 64-byte steps are exact).
inline void micro_2x4(const uint8_t* c0p, const uint8_t* c1p, const int8_t* X, int K, int32_t out[8]) {
    __m512i acc[8];
    for (auto& v : acc) v = _mm512_setzero_si512();
#if defined(__AVX512VNNI__)
    for (int k = 0; k < K; k += 64) {
        const __m512i c0 = _mm512_load_si512(c0p + k);
        const __m512i c1 = _mm512_load_si512(c1p + k);
        for (int t = 0; t < 4; ++t) {
            const __m512i xv = _mm512_load_si512(X + static_cast<std::size_t>(t) * K + k);
            acc[2 * t] = _mm512_dpbusd_epi32(acc[2 * t], c0, xv);
            acc[2 * t + 1] = _mm512_dpbusd_epi32(acc[2 * t + 1], c1, xv);
        }
    }
#else
    const __m512i ones = _mm512_set1_epi16(1);
    for (int k0 = 0; k0 < K; k0 += 32 * 64) {
        const int kend = std::min(K, k0 + 32 * 64);
        __m512i s[8];
        for (auto& v : s) v = _mm512_setzero_si512();
        for (int k = k0; k < kend; k += 64) {
            const __m512i c0 = _mm512_load_si512(c0p + k);
            const __m512i c1 = _mm512_load_si512(c1p + k);
            for (int t = 0; t < 4; ++t) {
                const __m512i xv = _mm512_load_si512(X + static_cast<std::size_t>(t) * K + k);
                s[2 * t] = _mm512_add_epi16(s[2 * t], _mm512_maddubs_epi16(c0, xv));
                s[2 * t + 1] = _mm512_add_epi16(s[2 * t + 1], _mm512_maddubs_epi16(c1, xv));
            }
        }
        for (int i = 0; i < 8; ++i) acc[i] = _mm512_add_epi32(acc[i], _mm512_madd_epi16(s[i], ones));
    }
#endif
    for (int i = 0; i < 8; ++i) out[i] = _mm512_reduce_add_epi32(acc[i]);
}

void gemm_avx512(const PackedMatrix& w, const int8_t* X, const int32_t* sum_x, int T, int32_t* Y, int ldy, int g0,
                 int g1, uint8_t* scratch) {
    const int K = w.cols_pad;
    for (int g = g0; g < g1; ++g) {
        decode_panel(w, g, scratch);
        for (int t = 0; t < T; t += kGemmTokens) {
            const int8_t* Xt = X + static_cast<std::size_t>(t) * K;
            for (int rp = 0; rp < kRowGroup; rp += 2) {
                int32_t out[8];
                micro_2x4(scratch + static_cast<std::size_t>(rp) * K, scratch + static_cast<std::size_t>(rp + 1) * K,
                          Xt, K, out);
                for (int i = 0; i < kGemmTokens; ++i) {
                    int32_t* yrow = Y + static_cast<std::size_t>(t + i) * ldy + g * kRowGroup + rp;
                    yrow[0] = out[2 * i] - sum_x[t + i];
                    yrow[1] = out[2 * i + 1] - sum_x[t + i];
                }
            }
        }
    }
}

}  // namespace

const KernelSet& avx512_kernels() {
    static const KernelSet k = [] {
        KernelSet s = avx2_kernels();
#if defined(__AVX512VNNI__)
        s.name = "avx512-vnni";
#else
        s.name = "avx512";
#endif
        s.gemv = gemv_avx512;
        s.gemm = gemm_avx512;
        return s;
    }();
    return k;
}

}  // namespace bm

#endif
