// Portable reference kernels. Always compiled; every SIMD level is tested against these.
#include <algorithm>
#include <cmath>

#include "bitmamba/kernels.h"

namespace bm {
namespace {

void gemv_scalar(const PackedMatrix& w, const int8_t* x, int32_t sum_x, int32_t* y, int g0, int g1) {
    for (int g = g0; g < g1; ++g) {
        const uint8_t* base = w.group_ptr(g);
        int32_t acc[kRowGroup] = {0, 0, 0, 0};
        for (int kb = 0; kb < w.kblocks; ++kb) {
            const int8_t* xb = x + kb * kBlockK;
            for (int r = 0; r < kRowGroup; ++r) {
                const uint8_t* codes = base + (kb * kRowGroup + r) * kBlockBytes;
                int32_t s = 0;
                for (int j = 0; j < kBlockBytes; ++j) {
                    unsigned b = codes[j];
                    s += static_cast<int32_t>(b & 3) * xb[j] + static_cast<int32_t>((b >> 2) & 3) * xb[j + 32] +
                         static_cast<int32_t>((b >> 4) & 3) * xb[j + 64] + static_cast<int32_t>(b >> 6) * xb[j + 96];
                }
                acc[r] += s;
            }
        }
        for (int r = 0; r < kRowGroup; ++r) y[g * kRowGroup + r] = acc[r] - sum_x;
    }
}

void gemm_scalar(const PackedMatrix& w, const int8_t* X, const int32_t* sum_x, int T, int32_t* Y, int ldy, int g0,
                 int g1, uint8_t* /*scratch*/) {
    for (int t = 0; t < T; ++t)
        gemv_scalar(w, X + static_cast<std::size_t>(t) * w.cols_pad, sum_x[t], Y + static_cast<std::size_t>(t) * ldy,
                    g0, g1);
}

float quantize_scalar(const float* x, int n, int8_t* q, int32_t* sum_q) {
    float m = 0.0f;
    for (int i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
    const float sx = 127.0f / (m + 1e-5f);
    int32_t s = 0;
    for (int i = 0; i < n; ++i) {
        float v = round_half_away(x[i] * sx);  // half away from zero
        v = std::min(127.0f, std::max(-128.0f, v));
        q[i] = static_cast<int8_t>(v);
        s += q[i];
    }
    *sum_q = s;
    return sx;
}

void rmsnorm_scalar(const float* x, const float* w, int n, float eps, float* y) {
    float ss = 0.0f;
    for (int i = 0; i < n; ++i) ss += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
    for (int i = 0; i < n; ++i) y[i] = w ? x[i] * inv * w[i] : x[i] * inv;
}

void silu_scalar(float* x, int n) {
    for (int i = 0; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void exp_scalar(float* x, int n) {
    for (int i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

int argmax_scalar(const float* x, int n) {
    int best = 0;
    for (int i = 1; i < n; ++i)
        if (x[i] > x[best]) best = i;
    return best;
}

void fgemv_scalar(const float* W, int ld, int cols, const float* x, float* y, int r0, int r1) {
    for (int r = r0; r < r1; ++r) {
        const float* w = W + static_cast<std::size_t>(r) * ld;
        float s = 0.0f;
        for (int c = 0; c < cols; ++c) s += w[c] * x[c];
        y[r] = s;
    }
}

void fgemv_t_acc_scalar(const float* Wt, int ld, int rank, const float* a, float alpha, float* y, int j0, int j1) {
    constexpr int kB = 64;  // a block of sums the compiler can keep in vector registers
    for (int jb = j0; jb < j1; jb += kB) {
        const int m = std::min(kB, j1 - jb);
        float acc[kB];
        for (int j = 0; j < kB; ++j) acc[j] = 0.0f;
        for (int r = 0; r < rank; ++r) {
            const float ar = a[r];
            const float* w = Wt + static_cast<std::size_t>(r) * ld + jb;
            for (int j = 0; j < m; ++j) acc[j] += ar * w[j];
        }
        for (int j = 0; j < m; ++j) y[jb + j] += alpha * acc[j];
    }
}

void i8gemv_scalar(const int8_t* W, int ld, int cols, const int8_t* x, int32_t* y, int r0, int r1) {
    for (int r = r0; r < r1; ++r) {
        const int8_t* w = W + static_cast<std::size_t>(r) * ld;
        int32_t s = 0;
        for (int c = 0; c < cols; ++c) s += static_cast<int32_t>(w[c]) * x[c];
        y[r] = s;
    }
}

}  // namespace

// The reference every level starts from: every slot of KernelSet is set here.
const KernelSet& scalar_kernels() {
    static const KernelSet k = [] {
        KernelSet s;
        s.name = "scalar";
        s.gemv = gemv_scalar;
        s.gemm = gemm_scalar;
        s.quantize = quantize_scalar;
        s.rmsnorm = rmsnorm_scalar;
        s.silu = silu_scalar;
        s.exp = exp_scalar;
        s.argmax = argmax_scalar;
        s.fgemv = fgemv_scalar;
        s.fgemv_t_acc = fgemv_t_acc_scalar;
        s.i8gemv = i8gemv_scalar;
        s.gemm_min_tokens = kGemmTokens;
        return s;
    }();
    return k;
}

}  // namespace bm
