// AVX2 (+FMA) kernels, with AVX-VNNI matrix products when built with -mavxvnni (the avx2-vnni
// variant). Integer results are bit-identical to kernels_scalar.cpp.
#if defined(__AVX2__) && defined(__FMA__)

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "bitmamba/kernels.h"
#include "bitmamba_build_level.h"  // declares this build's <simd>_kernels()

namespace bm {
namespace {

constexpr int kPrefetchBytes = 4096;
// int16 lanes before widening: the GEMV's `hi` sums gain at most 2 * 2032 (or lose 2 * 2048) per
// block, so 8 blocks stay within [-32768, 32512]; `lo` sums at most 8 * 2 * 512.
constexpr int kWidenBlocksGemv = 8;
constexpr int kWidenStepsGemm = 32;   // 32-byte steps

inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// Four int32 vectors -> their four horizontal sums in one __m128i.
inline __m128i hsum4_epi32(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_hadd_epi32(a, b);
    __m256i cd = _mm256_hadd_epi32(c, d);
    __m256i abcd = _mm256_hadd_epi32(ab, cd);
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

// The four 2-bit fields of a row's 32-byte block, masked in place (0x03 and 0x0C, before and after
// one shift by 4): c0, 4*c1, c2, 4*c3 for the activation quarters x0..x3. Leaving c1 and c3
// multiplied by 4 saves two of the three shifts per block; the products stay exact
// (|4 * 2 * x * 2| <= 2048 for vpmaddubsw) and the `hi` sums, every term a multiple of 4, are
// divided by 4 exactly when they are widened.
struct Fields {
    __m256i c0, c1x4, c2, c3x4;
};
inline Fields split_fields(__m256i codes, __m256i m03, __m256i m0c) {
    const __m256i c23 = _mm256_srli_epi16(codes, 4);
    return {_mm256_and_si256(codes, m03), _mm256_and_si256(codes, m0c), _mm256_and_si256(c23, m03),
            _mm256_and_si256(c23, m0c)};
}

// One row's 128-weight block against the 4 activation quarters, as two int16 sums: `lo` gets
// c0*x0 + c2*x2 and `hi` gets 4*(c1*x1 + c3*x3).
inline void block_dot(__m256i codes, __m256i x0, __m256i x1, __m256i x2, __m256i x3, __m256i m03, __m256i m0c,
                      __m256i& lo, __m256i& hi) {
    const Fields f = split_fields(codes, m03, m0c);
    lo = _mm256_add_epi16(lo, _mm256_add_epi16(_mm256_maddubs_epi16(f.c0, x0), _mm256_maddubs_epi16(f.c2, x2)));
    hi = _mm256_add_epi16(hi, _mm256_add_epi16(_mm256_maddubs_epi16(f.c1x4, x1), _mm256_maddubs_epi16(f.c3x4, x3)));
}

// int16 lanes of `lo` + `hi` / 4 as int32 (pairs summed).
inline __m256i widen_lo_hi(__m256i lo, __m256i hi, __m256i ones) {
    return _mm256_add_epi32(_mm256_madd_epi16(lo, ones), _mm256_srai_epi32(_mm256_madd_epi16(hi, ones), 2));
}

[[maybe_unused]] void gemv_avx2(const PackedMatrix& w, const int8_t* x, int32_t sum_x, int32_t* y, int g0, int g1) {
    const __m256i m03 = _mm256_set1_epi8(0x03);
    const __m256i m0c = _mm256_set1_epi8(0x0C);
    const __m256i ones = _mm256_set1_epi16(1);
    const int KB = w.kblocks;
    for (int g = g0; g < g1; ++g) {
        const uint8_t* base = w.group_ptr(g);
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int kb0 = 0; kb0 < KB; kb0 += kWidenBlocksGemv) {
            const int kend = std::min(KB, kb0 + kWidenBlocksGemv);
            __m256i l0 = _mm256_setzero_si256(), l1 = l0, l2 = l0, l3 = l0, h0 = l0, h1 = l0, h2 = l0, h3 = l0;
            for (int kb = kb0; kb < kend; ++kb) {
                const uint8_t* p = base + static_cast<std::size_t>(kb) * (kRowGroup * kBlockBytes);
                _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
                _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + 64), _MM_HINT_T0);
                const int8_t* xb = x + kb * kBlockK;
                const __m256i x0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb));
                const __m256i x1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb + 32));
                const __m256i x2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb + 64));
                const __m256i x3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb + 96));
                block_dot(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)), x0, x1, x2, x3, m03, m0c, l0, h0);
                block_dot(_mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32)), x0, x1, x2, x3, m03, m0c, l1, h1);
                block_dot(_mm256_load_si256(reinterpret_cast<const __m256i*>(p + 64)), x0, x1, x2, x3, m03, m0c, l2, h2);
                block_dot(_mm256_load_si256(reinterpret_cast<const __m256i*>(p + 96)), x0, x1, x2, x3, m03, m0c, l3, h3);
            }
            a0 = _mm256_add_epi32(a0, widen_lo_hi(l0, h0, ones));
            a1 = _mm256_add_epi32(a1, widen_lo_hi(l1, h1, ones));
            a2 = _mm256_add_epi32(a2, widen_lo_hi(l2, h2, ones));
            a3 = _mm256_add_epi32(a3, widen_lo_hi(l3, h3, ones));
        }
        __m128i sums = _mm_sub_epi32(hsum4_epi32(a0, a1, a2, a3), _mm_set1_epi32(sum_x));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + g * kRowGroup), sums);
    }
}

// Decode the 4 rows of a row group into plain codes (0..2), row r at scratch + r * cols_pad.
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

// 2 rows x 4 tokens over the full K. out[i * 2 + r] = sum_k code[r][k] * X[i][k].
inline void micro_2x4(const uint8_t* c0p, const uint8_t* c1p, const int8_t* X, int K, int32_t out[8]) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i w[8];
    for (auto& v : w) v = _mm256_setzero_si256();
    const int8_t* x0p = X;
    const int8_t* x1p = X + K;
    const int8_t* x2p = X + 2 * K;
    const int8_t* x3p = X + 3 * K;
    for (int k0 = 0; k0 < K; k0 += kWidenStepsGemm * 32) {
        const int kend = std::min(K, k0 + kWidenStepsGemm * 32);
        __m256i s00 = _mm256_setzero_si256(), s01 = s00, s02 = s00, s03 = s00;
        __m256i s10 = s00, s11 = s00, s12 = s00, s13 = s00;
        for (int k = k0; k < kend; k += 32) {
            const __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(c0p + k));
            const __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(c1p + k));
            __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(x0p + k));
            s00 = _mm256_add_epi16(s00, _mm256_maddubs_epi16(c0, xv));
            s10 = _mm256_add_epi16(s10, _mm256_maddubs_epi16(c1, xv));
            xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(x1p + k));
            s01 = _mm256_add_epi16(s01, _mm256_maddubs_epi16(c0, xv));
            s11 = _mm256_add_epi16(s11, _mm256_maddubs_epi16(c1, xv));
            xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(x2p + k));
            s02 = _mm256_add_epi16(s02, _mm256_maddubs_epi16(c0, xv));
            s12 = _mm256_add_epi16(s12, _mm256_maddubs_epi16(c1, xv));
            xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(x3p + k));
            s03 = _mm256_add_epi16(s03, _mm256_maddubs_epi16(c0, xv));
            s13 = _mm256_add_epi16(s13, _mm256_maddubs_epi16(c1, xv));
        }
        w[0] = _mm256_add_epi32(w[0], _mm256_madd_epi16(s00, ones));
        w[1] = _mm256_add_epi32(w[1], _mm256_madd_epi16(s10, ones));
        w[2] = _mm256_add_epi32(w[2], _mm256_madd_epi16(s01, ones));
        w[3] = _mm256_add_epi32(w[3], _mm256_madd_epi16(s11, ones));
        w[4] = _mm256_add_epi32(w[4], _mm256_madd_epi16(s02, ones));
        w[5] = _mm256_add_epi32(w[5], _mm256_madd_epi16(s12, ones));
        w[6] = _mm256_add_epi32(w[6], _mm256_madd_epi16(s03, ones));
        w[7] = _mm256_add_epi32(w[7], _mm256_madd_epi16(s13, ones));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), hsum4_epi32(w[0], w[1], w[2], w[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4), hsum4_epi32(w[4], w[5], w[6], w[7]));
}

[[maybe_unused]] void gemm_avx2(const PackedMatrix& w, const int8_t* X, const int32_t* sum_x, int T, int32_t* Y, int ldy, int g0,
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

#if defined(__AVXVNNI__)
// ---------------------------------------------------------------- AVX-VNNI (VEX vpdpbusd, 256-bit)
// The same fields as the GEMV above (split_fields), but vpdpbusd accumulates straight into int32: `lo` gets c0*x0 + c2*x2, `hi` 4*(c1*x1 + c3*x3), and a row's
// result is lo + hi/4 (exact: hi is a multiple of 4).

inline __m256i dp(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_avx_epi32(acc, u8, s8); }

// The compute roof: 8 independent VEX vpdpbusd ymm chains in named registers.
int64_t dot_burst_avx2_vnni(int64_t rounds) {
    __m256i a0 = _mm256_set1_epi32(0), a1 = _mm256_set1_epi32(1), a2 = _mm256_set1_epi32(2), a3 = _mm256_set1_epi32(3);
    __m256i a4 = _mm256_set1_epi32(4), a5 = _mm256_set1_epi32(5), a6 = _mm256_set1_epi32(6), a7 = _mm256_set1_epi32(7);
    const __m256i u = _mm256_set1_epi8(1), s = _mm256_set1_epi8(-2);
    for (int64_t n = 0; n < rounds; ++n) {
        a0 = dp(a0, u, s);
        a1 = dp(a1, u, s);
        a2 = dp(a2, u, s);
        a3 = dp(a3, u, s);
        a4 = dp(a4, u, s);
        a5 = dp(a5, u, s);
        a6 = dp(a6, u, s);
        a7 = dp(a7, u, s);
    }
    const __m256i t = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)),
                                       _mm256_add_epi32(_mm256_add_epi32(a4, a5), _mm256_add_epi32(a6, a7)));
    return static_cast<int64_t>(_mm256_extract_epi32(t, 0)) + _mm256_extract_epi32(t, 7);
}

void gemv_avx2_vnni(const PackedMatrix& w, const int8_t* x, int32_t sum_x, int32_t* y, int g0, int g1) {
    const __m256i m03 = _mm256_set1_epi8(0x03);
    const __m256i m0c = _mm256_set1_epi8(0x0C);
    const int KB = w.kblocks;
    for (int g = g0; g < g1; ++g) {
        const uint8_t* base = w.group_ptr(g);
        __m256i lo[4], hi[4];
        for (int r = 0; r < 4; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
        for (int kb = 0; kb < KB; ++kb) {
            const uint8_t* p = base + static_cast<std::size_t>(kb) * (kRowGroup * kBlockBytes);
            _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBytes + 64), _MM_HINT_T0);
            const int8_t* xb = x + kb * kBlockK;
            const __m256i x0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb));
            const __m256i x1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb + 32));
            const __m256i x2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb + 64));
            const __m256i x3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(xb + 96));
            for (int r = 0; r < 4; ++r) {
                const Fields f =
                    split_fields(_mm256_load_si256(reinterpret_cast<const __m256i*>(p + r * kBlockBytes)), m03, m0c);
                lo[r] = dp(dp(lo[r], f.c0, x0), f.c2, x2);
                hi[r] = dp(dp(hi[r], f.c1x4, x1), f.c3x4, x3);
            }
        }
        for (int r = 0; r < 4; ++r) lo[r] = _mm256_add_epi32(lo[r], _mm256_srai_epi32(hi[r], 2));
        const __m128i sums = _mm_sub_epi32(hsum4_epi32(lo[0], lo[1], lo[2], lo[3]), _mm_set1_epi32(sum_x));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + g * kRowGroup), sums);
    }
}

// One row (its 32-byte blocks `stride` bytes apart) against 4 tokens, codes decoded in registers.
inline __m128i row_x4_vnni(const uint8_t* rowp, std::size_t stride, int KB, const int8_t* X, int K) {
    const __m256i m03 = _mm256_set1_epi8(0x03);
    const __m256i m0c = _mm256_set1_epi8(0x0C);
    __m256i lo[4], hi[4];
    for (int t = 0; t < 4; ++t) lo[t] = hi[t] = _mm256_setzero_si256();
    for (int kb = 0; kb < KB; ++kb) {
        const Fields f = split_fields(_mm256_load_si256(reinterpret_cast<const __m256i*>(rowp + kb * stride)), m03, m0c);
        const int8_t* xb = X + kb * kBlockK;
        for (int t = 0; t < 4; ++t) {
            const int8_t* xt = xb + static_cast<std::size_t>(t) * K;
            lo[t] = dp(dp(lo[t], f.c0, _mm256_load_si256(reinterpret_cast<const __m256i*>(xt))), f.c2,
                       _mm256_load_si256(reinterpret_cast<const __m256i*>(xt + 64)));
            hi[t] = dp(dp(hi[t], f.c1x4, _mm256_load_si256(reinterpret_cast<const __m256i*>(xt + 32))), f.c3x4,
                       _mm256_load_si256(reinterpret_cast<const __m256i*>(xt + 96)));
        }
    }
    for (int t = 0; t < 4; ++t) lo[t] = _mm256_add_epi32(lo[t], _mm256_srai_epi32(hi[t], 2));
    return hsum4_epi32(lo[0], lo[1], lo[2], lo[3]);  // tokens 0..3 of this row
}

// Fused GEMM: no scratch panel; groups in blocks of ~32 KB of codes that stay cached while every
// 4-token tile passes over them.
void gemm_avx2_vnni(const PackedMatrix& w, const int8_t* X, const int32_t* sum_x, int T, int32_t* Y, int ldy,
                    int g0, int g1, uint8_t* /*scratch*/) {
    const int K = w.cols_pad;
    const int gblock = cache_block_groups(w);
    for (int gb = g0; gb < g1; gb += gblock) {
        const int ge = std::min(g1, gb + gblock);
        for (int t = 0; t < T; t += kGemmTokens) {
            const __m128i sums = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sum_x + t));
            for (int g = gb; g < ge; ++g) {
                alignas(16) int32_t out[kRowGroup][4];
                for (int r = 0; r < kRowGroup; ++r)
                    _mm_store_si128(reinterpret_cast<__m128i*>(out[r]),
                                    _mm_sub_epi32(row_x4_vnni(w.group_ptr(g) + r * kBlockBytes, kRowGroup * kBlockBytes,
                                                              w.kblocks, X + static_cast<std::size_t>(t) * K, K),
                                                  sums));
                for (int i = 0; i < 4; ++i) {
                    int32_t* yrow = Y + static_cast<std::size_t>(t + i) * ldy + g * kRowGroup;
                    _mm_storeu_si128(reinterpret_cast<__m128i*>(yrow), _mm_setr_epi32(out[0][i], out[1][i], out[2][i], out[3][i]));
                }
            }
        }
    }
}
#endif  // __AVXVNNI__

inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

float quantize_avx2(const float* x, int n, int8_t* q, int32_t* sum_q) {
    __m256 vm = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(abs_ps(_mm256_loadu_ps(x + i)), vm);  // a NaN is dropped
    float m = hmax_ps(vm);
    for (; i < n; ++i) m = std::max(m, std::fabs(x[i]));
    const float sx = 127.0f / (m + 1e-5f);
    const __m256 vsx = _mm256_set1_ps(sx);
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    __m256i vsum = _mm256_setzero_si256();
    i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i r[4];
        for (int k = 0; k < 4; ++k) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * k), vsx);
            __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 frac = abs_ps(_mm256_sub_ps(v, t));
            // round half away from zero: add copysign(1, v) where |v - trunc(v)| >= 0.5 (exact in float)
            const __m256 away = _mm256_or_ps(one, _mm256_and_ps(v, sign));
            t = _mm256_add_ps(t, _mm256_and_ps(away, _mm256_cmp_ps(frac, half, _CMP_GE_OQ)));
            t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);  // NaN -> -128, as in the scalar reference
            r[k] = _mm256_cvtps_epi32(t);
            vsum = _mm256_add_epi32(vsum, r[k]);
        }
        // Pack 32 int32 -> 32 int8 in order.
        __m256i p01 = _mm256_packs_epi32(r[0], r[1]);  // lanes interleaved per 128-bit half
        __m256i p23 = _mm256_packs_epi32(r[2], r[3]);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), p);
    }
    int32_t s = hsum_epi32(vsum);
    for (; i < n; ++i) {
        float v = round_half_away(x[i] * sx);
        v = std::min(127.0f, std::max(-128.0f, v));
        q[i] = static_cast<int8_t>(v);
        s += q[i];
    }
    *sum_q = s;
    return sx;
}

void rmsnorm_avx2(const float* x, const float* w, int n, float eps, float* y) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        acc0 = _mm256_fmadd_ps(a, a, acc0);
        acc1 = _mm256_fmadd_ps(b, b, acc1);
    }
    float ss = hsum_ps(_mm256_add_ps(acc0, acc1));
    for (; i < n; ++i) ss += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    const __m256 vinv = _mm256_set1_ps(inv);
    i = 0;
    if (w) {
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), _mm256_loadu_ps(w + i)));
        for (; i < n; ++i) y[i] = x[i] * inv * w[i];
    } else {
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
        for (; i < n; ++i) y[i] = x[i] * inv;
    }
}

// exp(x) for 8 floats: Cephes-style range reduction + degree-6 polynomial, ~2 ulp.
inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

void silu_avx2(float* x, int n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 neg = _mm256_set1_ps(-0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 e = exp256(_mm256_xor_ps(v, neg));
        _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
    }
    for (; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void exp_avx2(float* x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp256(_mm256_loadu_ps(x + i)));
    for (; i < n; ++i) x[i] = std::exp(x[i]);
}

int argmax_avx2(const float* x, int n) {
    if (n < 16) return scalar_kernels().argmax(x, n);
    // four independent chains: one max per cycle instead of one per max latency
    __m256 v0 = _mm256_loadu_ps(x), v1 = v0, v2 = v0, v3 = v0;
    int i = 8;
    for (; i + 32 <= n; i += 32) {
        v0 = _mm256_max_ps(v0, _mm256_loadu_ps(x + i));
        v1 = _mm256_max_ps(v1, _mm256_loadu_ps(x + i + 8));
        v2 = _mm256_max_ps(v2, _mm256_loadu_ps(x + i + 16));
        v3 = _mm256_max_ps(v3, _mm256_loadu_ps(x + i + 24));
    }
    for (; i + 8 <= n; i += 8) v0 = _mm256_max_ps(v0, _mm256_loadu_ps(x + i));
    __m256 vm = _mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3));
    float m = hmax_ps(vm);
    for (; i < n; ++i) m = std::max(m, x[i]);
    const __m256 vmax = _mm256_set1_ps(m);
    i = 0;
    for (; i + 8 <= n; i += 8) {
        int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vmax, _CMP_EQ_OQ));
        if (bits) return i + ctz32(static_cast<unsigned>(bits));
    }
    for (; i < n; ++i)
        if (x[i] == m) return i;
    return scalar_kernels().argmax(x, n);  // only reachable with NaNs
}

void fgemv_avx2(const float* W, int ld, int cols, const float* x, float* y, int r0, int r1) {
    const int c8 = cols / 8 * 8;
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        const float* w0 = W + static_cast<std::size_t>(r) * ld;
        const float* w1 = w0 + ld;
        const float* w2 = w1 + ld;
        const float* w3 = w2 + ld;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int c = 0; c < c8; c += 8) {
            const __m256 xv = _mm256_loadu_ps(x + c);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + c), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + c), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + c), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + c), xv, a3);
        }
        float s0 = hsum_ps(a0), s1 = hsum_ps(a1), s2 = hsum_ps(a2), s3 = hsum_ps(a3);
        for (int c = c8; c < cols; ++c) {
            s0 += w0[c] * x[c];
            s1 += w1[c] * x[c];
            s2 += w2[c] * x[c];
            s3 += w3[c] * x[c];
        }
        y[r] = s0;
        y[r + 1] = s1;
        y[r + 2] = s2;
        y[r + 3] = s3;
    }
    for (; r < r1; ++r) {
        const float* w = W + static_cast<std::size_t>(r) * ld;
        __m256 a = _mm256_setzero_ps();
        for (int c = 0; c < c8; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(w + c), _mm256_loadu_ps(x + c), a);
        float s = hsum_ps(a);
        for (int c = c8; c < cols; ++c) s += w[c] * x[c];
        y[r] = s;
    }
}

// 32 then 8 columns at a time, a fused multiply-add per rank row; the tail with std::fma (one
// instruction here) and the same final multiply and add, so a column gets the same result whether
// it falls in a vector or in the tail.
void fgemv_t_acc_avx2(const float* Wt, int ld, int rank, const float* a, float alpha, float* y, int j0, int j1) {
    const __m256 va = _mm256_set1_ps(alpha);
    int j = j0;
    for (; j + 32 <= j1; j += 32) {
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int r = 0; r < rank; ++r) {
            const __m256 ar = _mm256_set1_ps(a[r]);
            const float* w = Wt + static_cast<std::size_t>(r) * ld + j;
            s0 = _mm256_fmadd_ps(ar, _mm256_loadu_ps(w), s0);
            s1 = _mm256_fmadd_ps(ar, _mm256_loadu_ps(w + 8), s1);
            s2 = _mm256_fmadd_ps(ar, _mm256_loadu_ps(w + 16), s2);
            s3 = _mm256_fmadd_ps(ar, _mm256_loadu_ps(w + 24), s3);
        }
        _mm256_storeu_ps(y + j, _mm256_add_ps(_mm256_loadu_ps(y + j), _mm256_mul_ps(va, s0)));
        _mm256_storeu_ps(y + j + 8, _mm256_add_ps(_mm256_loadu_ps(y + j + 8), _mm256_mul_ps(va, s1)));
        _mm256_storeu_ps(y + j + 16, _mm256_add_ps(_mm256_loadu_ps(y + j + 16), _mm256_mul_ps(va, s2)));
        _mm256_storeu_ps(y + j + 24, _mm256_add_ps(_mm256_loadu_ps(y + j + 24), _mm256_mul_ps(va, s3)));
    }
    for (; j + 8 <= j1; j += 8) {
        __m256 s = _mm256_setzero_ps();
        for (int r = 0; r < rank; ++r)
            s = _mm256_fmadd_ps(_mm256_set1_ps(a[r]), _mm256_loadu_ps(Wt + static_cast<std::size_t>(r) * ld + j), s);
        _mm256_storeu_ps(y + j, _mm256_add_ps(_mm256_loadu_ps(y + j), _mm256_mul_ps(va, s)));
    }
    for (; j < j1; ++j) {
        float s = 0.0f;
        for (int r = 0; r < rank; ++r) s = std::fma(a[r], Wt[static_cast<std::size_t>(r) * ld + j], s);
        y[j] += alpha * s;
    }
}

// int8 x int8: maddubs needs an unsigned operand, so use |x| and w carrying the sign of x.
inline __m256i dot_i8(__m256i w, __m256i xabs, __m256i x, __m256i ones) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(xabs, _mm256_sign_epi8(w, x)), ones);
}

void i8gemv_avx2(const int8_t* W, int ld, int cols, const int8_t* x, int32_t* y, int r0, int r1) {
    const __m256i ones = _mm256_set1_epi16(1);
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        const int8_t* w0 = W + static_cast<std::size_t>(r) * ld;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (int c = 0; c < cols; c += 32) {
            _mm_prefetch(reinterpret_cast<const char*>(w0 + c + 4 * ld + 512), _MM_HINT_T0);
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + c));
            const __m256i xa = _mm256_sign_epi8(xv, xv);
            a0 = _mm256_add_epi32(a0, dot_i8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + c)), xa, xv, ones));
            a1 = _mm256_add_epi32(a1, dot_i8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + ld + c)), xa, xv, ones));
            a2 = _mm256_add_epi32(a2, dot_i8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + 2 * ld + c)), xa, xv, ones));
            a3 = _mm256_add_epi32(a3, dot_i8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + 3 * ld + c)), xa, xv, ones));
        }
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + r), hsum4_epi32(a0, a1, a2, a3));
    }
    for (; r < r1; ++r) {
        const int8_t* w = W + static_cast<std::size_t>(r) * ld;
        __m256i a = _mm256_setzero_si256();
        for (int c = 0; c < cols; c += 32) {
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + c));
            a = _mm256_add_epi32(a, dot_i8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c)), _mm256_sign_epi8(xv, xv), xv, ones));
        }
        y[r] = hsum_epi32(a);
    }
}

}  // namespace

// The avx2 level, or avx2-vnni where built with -mavxvnni: every slot overridden.
const KernelSet& avx2_kernels() {
    static const KernelSet k = [] {
        KernelSet s = scalar_kernels();
        s.name = "avx2";
        s.gemv = gemv_avx2;
        s.gemm = gemm_avx2;
        s.quantize = quantize_avx2;
        s.rmsnorm = rmsnorm_avx2;
        s.silu = silu_avx2;
        s.exp = exp_avx2;
        s.argmax = argmax_avx2;
        s.fgemv = fgemv_avx2;
        s.fgemv_t_acc = fgemv_t_acc_avx2;
        s.i8gemv = i8gemv_avx2;
#if defined(__AVXVNNI__)
        s.name = "avx2-vnni";
        s.gemv = gemv_avx2_vnni;
        s.gemm = gemm_avx2_vnni;
        // The 4-token tile costs about 3.7 GEMVs of compute, so it only pays where the GEMV waits for
        // memory and from 3 tokens on (255M, 2 threads: prefill T=2 890 tok/s through the tile against
        // 1207 per token; T=3 1259 through the tile).
        s.gemm_min_tokens = 3;
        s.dot_burst = dot_burst_avx2_vnni;
        s.dot_macs_per_round = 8 * 32;
        s.dot_instruction = "vpdpbusd ymm (AVX-VNNI)";
#endif
        return s;
    }();
    return k;
}

}  // namespace bm

#endif
