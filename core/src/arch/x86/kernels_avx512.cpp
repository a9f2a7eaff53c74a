// AVX-512 (BW, optionally VNNI) kernels: the ternary matrix products, quantization, rmsnorm, silu
// and exp. The other float helpers are the AVX2 ones (every AVX-512 CPU has AVX2).
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
#include <cmath>

#include "bitmamba/kernels.h"
#include "bitmamba_build_level.h"  // declares this build's <simd>_kernels()

namespace bm {
namespace {

constexpr int kPrefetchBytes = 4096;

inline __m512i bcast_x(const int8_t* p) {
    return _mm512_broadcast_i64x4(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
}

#if defined(__AVX512VNNI__)
// Four row sums from the accumulators of rows 0|1 and rows 2|3 (256-bit halves): [r0, r1, r2, r3].
inline __m128i hsum_rows(__m512i a01, __m512i a23) {
    // 128-bit lanes: a01 = [r0, r0, r1, r1], a23 = [r2, r2, r3, r3] -> u = [r0, r1, r2, r3] (4 partials each)
    const __m512i u = _mm512_add_epi32(_mm512_shuffle_i64x2(a01, a23, _MM_SHUFFLE(2, 0, 2, 0)),
                                       _mm512_shuffle_i64x2(a01, a23, _MM_SHUFFLE(3, 1, 3, 1)));
    __m512i v = _mm512_add_epi32(u, _mm512_shuffle_epi32(u, _MM_PERM_BADC));
    v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB));
    return _mm512_castsi512_si128(_mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), v));
}

// VNNI: one accumulator per quarter of a block, so the dpbusd chains overlap (a single chain is
// latency-bound at a fraction of the throughput).
void gemv_avx512(const PackedMatrix& w, const int8_t* x, int32_t sum_x, int32_t* y, int g0, int g1) {
    const __m512i mask = _mm512_set1_epi8(3);
    const int KB = w.kblocks;
    for (int g = g0; g < g1; ++g) {
        const uint8_t* base = w.group_ptr(g);
        __m512i a01[4], a23[4];
        for (int q = 0; q < 4; ++q) a01[q] = a23[q] = _mm512_setzero_si512();
        for (int kb = 0; kb < KB; ++kb) {
            const uint8_t* p = base + static_cast<std::size_t>(kb) * (kRowGroup * kBlockBytes);
            _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + 64), _MM_HINT_T0);
            const int8_t* xb = x + kb * kBlockK;
            const __m512i c01 = _mm512_load_si512(p);
            const __m512i c23 = _mm512_load_si512(p + 64);
            a01[0] = _mm512_dpbusd_epi32(a01[0], _mm512_and_si512(c01, mask), bcast_x(xb));
            a23[0] = _mm512_dpbusd_epi32(a23[0], _mm512_and_si512(c23, mask), bcast_x(xb));
            a01[1] = _mm512_dpbusd_epi32(a01[1], _mm512_and_si512(_mm512_srli_epi16(c01, 2), mask), bcast_x(xb + 32));
            a23[1] = _mm512_dpbusd_epi32(a23[1], _mm512_and_si512(_mm512_srli_epi16(c23, 2), mask), bcast_x(xb + 32));
            a01[2] = _mm512_dpbusd_epi32(a01[2], _mm512_and_si512(_mm512_srli_epi16(c01, 4), mask), bcast_x(xb + 64));
            a23[2] = _mm512_dpbusd_epi32(a23[2], _mm512_and_si512(_mm512_srli_epi16(c23, 4), mask), bcast_x(xb + 64));
            a01[3] = _mm512_dpbusd_epi32(a01[3], _mm512_and_si512(_mm512_srli_epi16(c01, 6), mask), bcast_x(xb + 96));
            a23[3] = _mm512_dpbusd_epi32(a23[3], _mm512_and_si512(_mm512_srli_epi16(c23, 6), mask), bcast_x(xb + 96));
        }
        const __m512i s01 = _mm512_add_epi32(_mm512_add_epi32(a01[0], a01[1]), _mm512_add_epi32(a01[2], a01[3]));
        const __m512i s23 = _mm512_add_epi32(_mm512_add_epi32(a23[0], a23[1]), _mm512_add_epi32(a23[2], a23[3]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + g * kRowGroup),
                         _mm_sub_epi32(hsum_rows(s01, s23), _mm_set1_epi32(sum_x)));
    }
}

// Fused GEMM: the 2-bit codes are decoded in registers (shift + and, on other ports than vpdpbusd)
// for a tile of TT tokens, so nothing goes through a scratch panel. Groups are visited in blocks
// small enough to stay in L1/L2 while every token tile passes over them.
template <int TT>  // TT % 4 == 0
inline void gemm_tile_vnni(const PackedMatrix& w, const int8_t* X, int K, const int32_t* sum_x, int32_t* Y, int ldy,
                           int g) {
    const __m512i mask = _mm512_set1_epi8(3);
    const uint8_t* base = w.group_ptr(g);
    __m512i a01[TT], a23[TT];
    for (int t = 0; t < TT; ++t) a01[t] = a23[t] = _mm512_setzero_si512();
    for (int kb = 0; kb < w.kblocks; ++kb) {
        const uint8_t* p = base + static_cast<std::size_t>(kb) * (kRowGroup * kBlockBytes);
        const __m512i c01 = _mm512_load_si512(p);
        const __m512i c23 = _mm512_load_si512(p + 64);
        const int8_t* xb = X + kb * kBlockK;
        for (int q = 0; q < 4; ++q) {
            const __m512i d01 = _mm512_and_si512(_mm512_srli_epi16(c01, 2 * q), mask);
            const __m512i d23 = _mm512_and_si512(_mm512_srli_epi16(c23, 2 * q), mask);
            for (int t = 0; t < TT; ++t) {
                const __m512i xq = bcast_x(xb + static_cast<std::size_t>(t) * K + 32 * q);
                a01[t] = _mm512_dpbusd_epi32(a01[t], d01, xq);
                a23[t] = _mm512_dpbusd_epi32(a23[t], d23, xq);
            }
        }
    }
    // Per 4 tokens: u_t = [r0, r1, r2, r3] partials -> 128-bit lane r holds tokens 0..3 of row r.
    const __m512i to_token_major = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (int t0 = 0; t0 < TT; t0 += 4) {
        __m512i u[4];
        for (int i = 0; i < 4; ++i)
            u[i] = _mm512_add_epi32(_mm512_shuffle_i64x2(a01[t0 + i], a23[t0 + i], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_i64x2(a01[t0 + i], a23[t0 + i], _MM_SHUFFLE(3, 1, 3, 1)));
        const __m512i v01 = _mm512_add_epi32(_mm512_unpacklo_epi32(u[0], u[1]), _mm512_unpackhi_epi32(u[0], u[1]));
        const __m512i v23 = _mm512_add_epi32(_mm512_unpacklo_epi32(u[2], u[3]), _mm512_unpackhi_epi32(u[2], u[3]));
        // lane r: [t0, t1, t2, t3] sums of row r
        const __m512i r = _mm512_add_epi32(_mm512_unpacklo_epi64(v01, v23), _mm512_unpackhi_epi64(v01, v23));
        // lane t: rows 0..3 of token t
        const __m512i tm = _mm512_permutexvar_epi32(to_token_major, r);
        const __m512i sums = _mm512_permutexvar_epi32(
            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
            _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sum_x + t0))));
        const __m512i out = _mm512_sub_epi32(tm, sums);
        int32_t* y = Y + static_cast<std::size_t>(t0) * ldy + g * kRowGroup;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y), _mm512_castsi512_si128(out));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + ldy), _mm512_extracti32x4_epi32(out, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + 2 * static_cast<std::size_t>(ldy)), _mm512_extracti32x4_epi32(out, 2));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + 3 * static_cast<std::size_t>(ldy)), _mm512_extracti32x4_epi32(out, 3));
    }
}

// The compute roof: 8 independent vpdpbusd zmm chains in named registers (an array costs register
// moves per round, which a core issuing two vpdpbusd a cycle would feel).
int64_t dot_burst_avx512(int64_t rounds) {
    __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2), a3 = _mm512_set1_epi32(3);
    __m512i a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5), a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7);
    const __m512i u = _mm512_set1_epi8(1), s = _mm512_set1_epi8(-2);
    for (int64_t n = 0; n < rounds; ++n) {
        a0 = _mm512_dpbusd_epi32(a0, u, s);
        a1 = _mm512_dpbusd_epi32(a1, u, s);
        a2 = _mm512_dpbusd_epi32(a2, u, s);
        a3 = _mm512_dpbusd_epi32(a3, u, s);
        a4 = _mm512_dpbusd_epi32(a4, u, s);
        a5 = _mm512_dpbusd_epi32(a5, u, s);
        a6 = _mm512_dpbusd_epi32(a6, u, s);
        a7 = _mm512_dpbusd_epi32(a7, u, s);
    }
    const __m512i t = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                       _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    return _mm512_reduce_add_epi32(t);
}

void gemm_avx512(const PackedMatrix& w, const int8_t* X, const int32_t* sum_x, int T, int32_t* Y, int ldy, int g0,
                 int g1, uint8_t* /*scratch*/) {
    const int K = w.cols_pad;
    const int gblock = cache_block_groups(w);
    for (int gb = g0; gb < g1; gb += gblock) {
        const int ge = std::min(g1, gb + gblock);
        // 4-token tiles: 8 accumulators; 8-token tiles measured slower (85 vs 100 MAC/cycle on Zen 5)
        for (int t = 0; t < T; t += kGemmTokens)
            for (int g = gb; g < ge; ++g)
                gemm_tile_vnni<kGemmTokens>(w, X + static_cast<std::size_t>(t) * K, K, sum_x + t, Y + static_cast<std::size_t>(t) * ldy, ldy, g);
    }
}

#else  // AVX-512BW without VNNI: maddubs into int16, widened every 8 blocks

// Sum of the low and high 256-bit halves separately: returns (sum of lanes 0-7, sum of lanes 8-15).
inline void hsum_halves(__m512i v, int32_t& lo, int32_t& hi) {
    lo = _mm512_reduce_add_epi32(_mm512_maskz_mov_epi32(0x00FF, v));
    hi = _mm512_reduce_add_epi32(_mm512_maskz_mov_epi32(0xFF00, v));
}

void gemv_avx512(const PackedMatrix& w, const int8_t* x, int32_t sum_x, int32_t* y, int g0, int g1) {
    const __m512i mask = _mm512_set1_epi8(3);
    const int KB = w.kblocks;
    for (int g = g0; g < g1; ++g) {
        const uint8_t* base = w.group_ptr(g);
        __m512i a01 = _mm512_setzero_si512(), a23 = a01;  // rows 0|1 and rows 2|3 in 256-bit halves
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

#endif  // __AVX512VNNI__

// ---------------------------------------------------------------- float helpers of the forward pass
// Quantization and rmsnorm at 16 lanes; tails through masked loads and stores.

inline __mmask16 tail_mask(int left) { return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u); }

// Same results as quantize_scalar (NaN and inf included): sx = 127 / (max|x| + 1e-5),
// q = clamp(round half away(x * sx)).
float quantize_avx512(const float* x, int n, int8_t* q, int32_t* sum_q) {
    const __m512 zero = _mm512_setzero_ps();
    __m512 m0 = zero, m1 = zero, m2 = zero, m3 = zero;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        m0 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i)), m0);
        m1 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i + 16)), m1);
        m2 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i + 32)), m2);
        m3 = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + i + 48)), m3);
    }
    for (; i < n; i += 16) m0 = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i)), m0);
    const float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
    const float sx = 127.0f / (m + 1e-5f);
    const __m512 vsx = _mm512_set1_ps(sx);
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    const __m512 lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
    const __m512i sign = _mm512_set1_epi32(static_cast<int32_t>(0x80000000u));
    __m512i vsum = _mm512_setzero_si512();
    for (i = 0; i < n; i += 16) {
        const __mmask16 k = tail_mask(n - i);
        const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vsx);
        __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        // round half away from zero: add copysign(1, v) where |v - trunc(v)| >= 0.5 (exact in float)
        const __m512 away = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(one),
                                                                _mm512_and_si512(_mm512_castps_si512(v), sign)));
        const __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), half, _CMP_GE_OQ);
        t = _mm512_mask_add_ps(t, up, t, away);
        // max_ps(a, b) / min_ps(a, b) return b when a is NaN: a NaN input is dropped from the maximum
        // and clamps to -128, as std::max / std::min do in the scalar reference
        t = _mm512_min_ps(_mm512_max_ps(t, lo), hi);
        const __m512i r = _mm512_cvtps_epi32(t);
        vsum = _mm512_add_epi32(vsum, r);  // masked-off lanes are 0
        _mm512_mask_cvtsepi32_storeu_epi8(q + i, k, r);
    }
    *sum_q = _mm512_reduce_add_epi32(vsum);
    return sx;
}

// Bit-identical to rmsnorm_avx2 (so an avx512 build gives the same floats as an avx2 one): lane j
// of the one zmm chain accumulates x[16m + j]^2 exactly as lane j of AVX2's two ymm chains, and the
// reduction and the scalar tail follow the same order.
void rmsnorm_avx512(const float* x, const float* w, int n, float eps, float* y) {
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    const __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(acc),
                                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a8), _mm256_extractf128_ps(a8, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_shuffle_ps(s4, s4, 1));
    float ss = _mm_cvtss_f32(s4);
    for (; i < n; ++i) ss += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    const __m512 vinv = _mm512_set1_ps(inv);
    for (i = 0; i < n; i += 16) {
        const __mmask16 k = tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vinv);
        if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w + i));
        _mm512_mask_storeu_ps(y + i, k, v);
    }
}

// exp and silu at 16 lanes: exp512 is exp256 of kernels_avx2.cpp lane for lane (the same operations,
// division included), and the lengths that AVX2 leaves to its scalar tail (n % 8) go to the same
// scalar code, so the results are bit-identical to the avx2 level's.
inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
    __m512 fx = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f));
    fx = _mm512_roundscale_ps(fx, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

inline __m512 silu512(__m512 v) {
    const __m512 e = exp512(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(v), _mm512_set1_epi32(static_cast<int32_t>(0x80000000u)))));
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

void silu_avx512(float* x, int n) {
    const int n8 = n / 8 * 8;  // AVX2's vector part
    int i = 0;
    for (; i + 16 <= n8; i += 16) _mm512_storeu_ps(x + i, silu512(_mm512_loadu_ps(x + i)));
    if (i < n8) {
        const __mmask16 k = 0x00FF;
        _mm512_mask_storeu_ps(x + i, k, silu512(_mm512_maskz_loadu_ps(k, x + i)));
        i += 8;
    }
    for (; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void exp_avx512(float* x, int n) {
    const int n8 = n / 8 * 8;
    int i = 0;
    for (; i + 16 <= n8; i += 16) _mm512_storeu_ps(x + i, exp512(_mm512_loadu_ps(x + i)));
    if (i < n8) {
        const __mmask16 k = 0x00FF;
        _mm512_mask_storeu_ps(x + i, k, exp512(_mm512_maskz_loadu_ps(k, x + i)));
        i += 8;
    }
    for (; i < n; ++i) x[i] = std::exp(x[i]);
}

}  // namespace

// The avx512 level (avx512-vnni with -mavx512vnni) builds on the avx2 set (itself built from
// scalar): it keeps AVX2's argmax, fgemv, fgemv_t_acc and i8gemv and overrides the rest.
const KernelSet& avx512_kernels() {
    static const KernelSet k = [] {
        KernelSet s = avx2_kernels();  // x86/kernels_avx2.cpp: the avx512 rows carry avx2
#if defined(__AVX512VNNI__)
        s.name = "avx512-vnni";
        s.gemm_min_tokens = 2;
        s.dot_burst = dot_burst_avx512;
        s.dot_macs_per_round = 8 * 64;
        s.dot_instruction = "vpdpbusd zmm";
#else
        s.name = "avx512";
#endif
        s.gemv = gemv_avx512;
        s.gemm = gemm_avx512;
        s.quantize = quantize_avx512;
        s.rmsnorm = rmsnorm_avx512;
        s.silu = silu_avx512;
        s.exp = exp_avx512;
        return s;
    }();
    return k;
}

}  // namespace bm

#endif
