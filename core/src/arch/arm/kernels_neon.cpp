// NEON kernels (AArch64). vdotq_s32 where the dotprod extension is enabled, else vmull_s8 + vpadalq.
// The 32-byte block is read as two 16-byte halves. Integer results are bit-identical to scalar.
#if defined(__ARM_NEON) && defined(__aarch64__)

#include <arm_neon.h>

#include <algorithm>
#include <cmath>

#include "bitmamba/kernels.h"
#include "bitmamba_build_level.h"  // declares this build's <simd>_kernels()

namespace bm {
namespace {

inline int32x4_t dot16(int32x4_t acc, uint8x16_t codes, int8x16_t x) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, vreinterpretq_s8_u8(codes), x);
#else
    const int8x16_t c = vreinterpretq_s8_u8(codes);
    int16x8_t lo = vmull_s8(vget_low_s8(c), vget_low_s8(x));
    int16x8_t hi = vmull_s8(vget_high_s8(c), vget_high_s8(x));
    acc = vpadalq_s16(acc, lo);
    return vpadalq_s16(acc, hi);
#endif
}

template <int Q>
inline uint8x16_t quarter(uint8x16_t c, uint8x16_t mask) {
    if constexpr (Q == 0) return vandq_u8(c, mask);
    else return vandq_u8(vshrq_n_u8(c, 2 * Q), mask);
}

void gemv_neon(const PackedMatrix& w, const int8_t* x, int32_t sum_x, int32_t* y, int g0, int g1) {
    const uint8x16_t mask = vdupq_n_u8(3);
    const int KB = w.kblocks;
    for (int g = g0; g < g1; ++g) {
        const uint8_t* base = w.group_ptr(g);
        int32x4_t acc[kRowGroup] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        for (int kb = 0; kb < KB; ++kb) {
            const uint8_t* p = base + static_cast<std::size_t>(kb) * (kRowGroup * kBlockBytes);
            prefetch(p + 4096);
            prefetch(p + 4096 + 64);
            const int8_t* xb = x + kb * kBlockK;
            int8x16_t xs[8];
            for (int i = 0; i < 8; ++i) xs[i] = vld1q_s8(xb + 16 * i);
            for (int r = 0; r < kRowGroup; ++r) {
                const uint8x16_t lo = vld1q_u8(p + r * kBlockBytes);
                const uint8x16_t hi = vld1q_u8(p + r * kBlockBytes + 16);
                int32x4_t a = acc[r];
                a = dot16(a, quarter<0>(lo, mask), xs[0]);
                a = dot16(a, quarter<0>(hi, mask), xs[1]);
                a = dot16(a, quarter<1>(lo, mask), xs[2]);
                a = dot16(a, quarter<1>(hi, mask), xs[3]);
                a = dot16(a, quarter<2>(lo, mask), xs[4]);
                a = dot16(a, quarter<2>(hi, mask), xs[5]);
                a = dot16(a, quarter<3>(lo, mask), xs[6]);
                a = dot16(a, quarter<3>(hi, mask), xs[7]);
                acc[r] = a;
            }
        }
        for (int r = 0; r < kRowGroup; ++r) y[g * kRowGroup + r] = vaddvq_s32(acc[r]) - sum_x;
    }
}

void gemm_neon(const PackedMatrix& w, const int8_t* X, const int32_t* sum_x, int T, int32_t* Y, int ldy, int g0, int g1,
               uint8_t* scratch) {
    const uint8x16_t mask = vdupq_n_u8(3);
    const int K = w.cols_pad;
    for (int g = g0; g < g1; ++g) {
        // Decode the row group's panel: row r's codes in natural k order at scratch + r * K.
        const uint8_t* base = w.group_ptr(g);
        for (int kb = 0; kb < w.kblocks; ++kb)
            for (int r = 0; r < kRowGroup; ++r) {
                const uint8_t* p = base + (static_cast<std::size_t>(kb) * kRowGroup + r) * kBlockBytes;
                const uint8x16_t lo = vld1q_u8(p), hi = vld1q_u8(p + 16);
                uint8_t* out = scratch + static_cast<std::size_t>(r) * K + kb * kBlockK;
                vst1q_u8(out, quarter<0>(lo, mask));
                vst1q_u8(out + 16, quarter<0>(hi, mask));
                vst1q_u8(out + 32, quarter<1>(lo, mask));
                vst1q_u8(out + 48, quarter<1>(hi, mask));
                vst1q_u8(out + 64, quarter<2>(lo, mask));
                vst1q_u8(out + 80, quarter<2>(hi, mask));
                vst1q_u8(out + 96, quarter<3>(lo, mask));
                vst1q_u8(out + 112, quarter<3>(hi, mask));
            }
        for (int t = 0; t < T; t += kGemmTokens) {
            const int8_t* Xt = X + static_cast<std::size_t>(t) * K;
            for (int rp = 0; rp < kRowGroup; rp += 2) {
                const uint8_t* c0p = scratch + static_cast<std::size_t>(rp) * K;
                const uint8_t* c1p = c0p + K;
                int32x4_t acc[8];
                for (auto& v : acc) v = vdupq_n_s32(0);
                for (int k = 0; k < K; k += 16) {
                    const uint8x16_t c0 = vld1q_u8(c0p + k), c1 = vld1q_u8(c1p + k);
                    for (int i = 0; i < 4; ++i) {
                        const int8x16_t xv = vld1q_s8(Xt + static_cast<std::size_t>(i) * K + k);
                        acc[2 * i] = dot16(acc[2 * i], c0, xv);
                        acc[2 * i + 1] = dot16(acc[2 * i + 1], c1, xv);
                    }
                }
                for (int i = 0; i < kGemmTokens; ++i) {
                    int32_t* yrow = Y + static_cast<std::size_t>(t + i) * ldy + g * kRowGroup + rp;
                    yrow[0] = vaddvq_s32(acc[2 * i]) - sum_x[t + i];
                    yrow[1] = vaddvq_s32(acc[2 * i + 1]) - sum_x[t + i];
                }
            }
        }
    }
}

float quantize_neon(const float* x, int n, int8_t* q, int32_t* sum_q) {
    float32x4_t vm = vdupq_n_f32(0.0f);
    int i = 0;
    // vmaxnm/vminnm (IEEE maxNum/minNum) drop a NaN operand like std::max / std::min in the scalar
    // reference: a NaN input leaves the maximum alone and clamps to -128
    for (; i + 4 <= n; i += 4) vm = vmaxnmq_f32(vm, vabsq_f32(vld1q_f32(x + i)));
    float m = vmaxvq_f32(vm);
    for (; i < n; ++i) m = std::max(m, std::fabs(x[i]));
    const float sx = 127.0f / (m + 1e-5f);
    const float32x4_t lo = vdupq_n_f32(-128.0f), hi = vdupq_n_f32(127.0f);
    int32x4_t vsum = vdupq_n_s32(0);
    i = 0;
    for (; i + 8 <= n; i += 8) {
        // vrndaq: round to nearest, ties away from zero (as round_half_away)
        float32x4_t a = vminnmq_f32(hi, vmaxnmq_f32(lo, vrndaq_f32(vmulq_n_f32(vld1q_f32(x + i), sx))));
        float32x4_t b = vminnmq_f32(hi, vmaxnmq_f32(lo, vrndaq_f32(vmulq_n_f32(vld1q_f32(x + i + 4), sx))));
        int32x4_t ia = vcvtq_s32_f32(a), ib = vcvtq_s32_f32(b);
        vsum = vaddq_s32(vsum, vaddq_s32(ia, ib));
        int16x8_t h = vcombine_s16(vmovn_s32(ia), vmovn_s32(ib));
        vst1_s8(q + i, vmovn_s16(h));
    }
    int32_t s = vaddvq_s32(vsum);
    for (; i < n; ++i) {
        float v = round_half_away(x[i] * sx);
        v = std::min(127.0f, std::max(-128.0f, v));
        q[i] = static_cast<int8_t>(v);
        s += q[i];
    }
    *sum_q = s;
    return sx;
}

void rmsnorm_neon(const float* x, const float* w, int n, float eps, float* y) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = acc0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
        acc0 = vfmaq_f32(acc0, a, a);
        acc1 = vfmaq_f32(acc1, b, b);
    }
    float ss = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; ++i) ss += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vmulq_n_f32(vld1q_f32(x + i), inv);
        if (w) v = vmulq_f32(v, vld1q_f32(w + i));
        vst1q_f32(y + i, v);
    }
    for (; i < n; ++i) y[i] = w ? x[i] * inv * w[i] : x[i] * inv;
}

inline float32x4_t exp128(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3f)), vdupq_n_f32(88.3f));
    float32x4_t fx = vrndmq_f32(vfmaq_f32(vdupq_n_f32(0.5f), x, vdupq_n_f32(1.44269504088896341f)));
    x = vfmsq_f32(x, fx, vdupq_n_f32(0.693359375f));
    x = vfmsq_f32(x, fx, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t y = vdupq_n_f32(1.9875691500e-4f);
    y = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), y, x);
    y = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), y, x);
    y = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), y, x);
    y = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), y, x);
    y = vfmaq_f32(vaddq_f32(x, vdupq_n_f32(1.0f)), y, vmulq_f32(x, x));
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(fx), vdupq_n_s32(127)), 23);
    return vmulq_f32(y, vreinterpretq_f32_s32(e));
}

void silu_neon(float* x, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        vst1q_f32(x + i, vdivq_f32(v, vaddq_f32(vdupq_n_f32(1.0f), exp128(vnegq_f32(v)))));
    }
    for (; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void exp_neon(float* x, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, exp128(vld1q_f32(x + i)));
    for (; i < n; ++i) x[i] = std::exp(x[i]);
}

void fgemv_neon(const float* W, int ld, int cols, const float* x, float* y, int r0, int r1) {
    const int c4 = cols / 4 * 4;
    for (int r = r0; r < r1; ++r) {
        const float* w = W + static_cast<std::size_t>(r) * ld;
        float32x4_t a = vdupq_n_f32(0.0f);
        for (int c = 0; c < c4; c += 4) a = vfmaq_f32(a, vld1q_f32(w + c), vld1q_f32(x + c));
        float s = vaddvq_f32(a);
        for (int c = c4; c < cols; ++c) s += w[c] * x[c];
        y[r] = s;
    }
}

void i8gemv_neon(const int8_t* W, int ld, int cols, const int8_t* x, int32_t* y, int r0, int r1) {
    for (int r = r0; r < r1; ++r) {
        const int8_t* w = W + static_cast<std::size_t>(r) * ld;
        int32x4_t a = vdupq_n_s32(0);
        for (int c = 0; c < cols; c += 16) {
            const int8x16_t wv = vld1q_s8(w + c), xv = vld1q_s8(x + c);
#if defined(__ARM_FEATURE_DOTPROD)
            a = vdotq_s32(a, wv, xv);
#else
            a = vpadalq_s16(a, vmull_s8(vget_low_s8(wv), vget_low_s8(xv)));
            a = vpadalq_s16(a, vmull_s8(vget_high_s8(wv), vget_high_s8(xv)));
#endif
        }
        y[r] = vaddvq_s32(a);
    }
}

}  // namespace

// The neon level (neon-dotprod where built with the dot product): argmax stays the scalar one.
const KernelSet& neon_kernels() {
    static const KernelSet k = [] {
        KernelSet s = scalar_kernels();
#if defined(__ARM_FEATURE_DOTPROD)
        s.name = "neon-dotprod";
#else
        s.name = "neon";
#endif
        s.gemv = gemv_neon;
        s.gemm = gemm_neon;
        s.quantize = quantize_neon;
        s.rmsnorm = rmsnorm_neon;
        s.silu = silu_neon;
        s.exp = exp_neon;
        s.fgemv = fgemv_neon;
        s.i8gemv = i8gemv_neon;
        return s;
    }();
    return k;
}

}  // namespace bm

#endif
