#include "bitmamba/layers.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace bm {

namespace {
void check_finite(const float* W, std::size_t n, const char* what) {
    for (std::size_t i = 0; i < n; ++i)
        if (!std::isfinite(W[i])) throw FormatError(std::string("tensor '") + what + "': contains NaN or Inf");
}
}  // namespace

std::size_t Linear::bytes() const {
    return w.bytes() + w8.size() + wf.size() * sizeof(float) + (norm.size() + row_mult.size()) * sizeof(float);
}

void Linear::set_ternary_codes(const uint8_t* codes, int r, int c, float s, const char* what) {
    kind = Kind::Ternary;
    rows = r;
    cols = c;
    packed_from_file_codes(w, codes, r, c, what);
    scale = s;
}

void Linear::set_ternary_values(const int8_t* q, int r, int c, float s, const char* what) {
    kind = Kind::Ternary;
    rows = r;
    cols = c;
    packed_from_int8(w, q, r, c, what);
    scale = s;
}

void Linear::set_ternary_from_float_rows(const float* W, int r, int c, const char* what) {
    check_finite(W, static_cast<std::size_t>(r) * c, what);
    std::vector<int8_t> q(static_cast<std::size_t>(r) * c);
    row_mult.reset(r);
    for (int i = 0; i < r; ++i) {
        const float* row = W + static_cast<std::size_t>(i) * c;
        double mean = 0;
        for (int j = 0; j < c; ++j) mean += std::fabs(row[j]);
        mean /= c;
        const float s = mean > 1e-8 ? static_cast<float>(mean) : 1e-8f;
        for (int j = 0; j < c; ++j) {
            float v = std::nearbyint(row[j] / s);
            q[static_cast<std::size_t>(i) * c + j] = static_cast<int8_t>(std::min(1.0f, std::max(-1.0f, v)));
        }
        row_mult[i] = s;
    }
    set_ternary_values(q.data(), r, c, 1.0f, what);
}

void Linear::set_int8_from_float_rows(const float* W, int r, int c, const char* what) {
    check_finite(W, static_cast<std::size_t>(r) * c, what);
    kind = Kind::Int8;
    rows = r;
    cols = c;
    ld8 = round_up(c, 32);
    w8.reset(static_cast<std::size_t>(r) * ld8);
    row_mult.reset(r);
    for (int i = 0; i < r; ++i) {
        const float* row = W + static_cast<std::size_t>(i) * c;
        float a = 0;
        for (int j = 0; j < c; ++j) a = std::max(a, std::fabs(row[j]));
        const float s = a > 0 ? a / 127.0f : 1.0f;
        int8_t* out = w8.data() + static_cast<std::size_t>(i) * ld8;
        for (int j = 0; j < c; ++j)
            out[j] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, std::nearbyint(row[j] / s))));
        row_mult[i] = s;
    }
}

void Linear::set_float(const float* W, int r, int c, const char* what) {
    check_finite(W, static_cast<std::size_t>(r) * c, what);
    kind = Kind::Float;
    rows = r;
    cols = c;
    wf.reset(static_cast<std::size_t>(r) * c);
    std::memcpy(wf.data(), W, sizeof(float) * r * c);
}

void Linear::scale_rows(const float* v) {
    if (row_mult.size() == 0) {
        row_mult.reset(rows);
        for (int i = 0; i < rows; ++i) row_mult[i] = 1.0f;
    }
    for (int i = 0; i < rows; ++i) row_mult[i] *= v[i];
}

void LinearRunner::reserve(int max_in, int max_out, int chunk, int max_batched_out) {
    max_in_ = std::max(max_in_, round_up(max_in, kBlockK));
    max_out_ = std::max(max_out_, round_up(max_out, kRowGroup));
    chunk_ = std::max(chunk_, round_up(chunk, kGemmTokens));
    xn_.reset(max_in_);
    xq_.reset(max_in_);
    acc_.reset(max_out_);
    sx_.reset(chunk_);
    sum_.reset(chunk_);
    X_.reset(static_cast<std::size_t>(chunk_) * max_in_);
    Acc_.reset(static_cast<std::size_t>(chunk_) * round_up(max_batched_out, kRowGroup));
    slots_ = 0;
    ensure_threads();
}

void LinearRunner::ensure_threads() {
    const int n = pool_->size();
    if (n == slots_) return;
    panels_.reset(static_cast<std::size_t>(n) * kRowGroup * max_in_);
    xn_thr_.reset(static_cast<std::size_t>(n) * max_in_);
    slots_ = n;
}

float LinearRunner::quantize_one(const Linear& L, const float* x, float* xn, int8_t* dst, int32_t* sum) {
    const KernelSet& k = *kernels_;
    const float* src = x;
    if (L.norm.size()) {
        k.rmsnorm(x, L.norm.data(), L.cols, L.norm_eps, xn);
        src = xn;
    }
    const float sx = k.quantize(src, L.cols, dst, sum);
    std::memset(dst + L.cols, 0, L.in_stride() - L.cols);
    return sx;
}

void LinearRunner::apply(const Linear& L, const float* x, float* out, bool accumulate, Stage stage) {
    const KernelSet& k = *kernels_;
    ThreadPool& pool = *pool_;
    const float* mult = L.row_mult.size() ? L.row_mult.data() : nullptr;
    const int rows = L.rows;
    if (L.kind == Linear::Kind::Float) {
        const float* src = x;
        if (L.norm.size()) {
            k.rmsnorm(x, L.norm.data(), L.cols, L.norm_eps, xn_.data());
            src = xn_.data();
        }
        float* y = reinterpret_cast<float*>(acc_.data());
        pool.parallel_for(rows, std::max(4, pool.grain_for(rows)), [&](int r0, int r1, int) {
            k.fgemv(L.wf.data(), L.cols, L.cols, src, y, r0, r1);
            for (int r = r0; r < r1; ++r) {
                const float v = mult ? y[r] * mult[r] : y[r];
                out[r] = accumulate ? out[r] + v : v;
            }
        });
        return;
    }
    int32_t sum = 0;
    const int64_t t0 = clock_ ? StageClock::now() : 0;
    const float sx = quantize_one(L, x, xn_.data(), xq_.data(), &sum);
    const int64_t t1 = clock_ ? StageClock::now() : 0;
    const float s = 1.0f / (sx * L.scale);
    int32_t* acc = acc_.data();
    const int8_t* xq = xq_.data();
    auto epilogue = [&](int r0, int r1) {
        for (int r = r0; r < r1; ++r) {
            float v = static_cast<float>(acc[r]) * s;
            if (mult) v *= mult[r];
            out[r] = accumulate ? out[r] + v : v;
        }
    };
    if (L.kind == Linear::Kind::Ternary) {
        pool.parallel_for(L.w.groups, pool.grain_for(L.w.groups), [&](int g0, int g1, int) {
            k.gemv(L.w, xq, sum, acc, g0, g1);
            epilogue(g0 * kRowGroup, std::min(rows, g1 * kRowGroup));
        });
    } else {
        pool.parallel_for(rows, std::max(4, pool.grain_for(rows)), [&](int r0, int r1, int) {
            k.i8gemv(L.w8.data(), L.ld8, L.ld8, xq, acc, r0, r1);
            epilogue(r0, r1);
        });
    }
    if (clock_) {
        clock_->add(kStageQuant, t0, t1);
        clock_->add(stage, t1, StageClock::now());
    }
}

void LinearRunner::apply_rows(const Linear& L, const float* in, int ld_in, int n, float* out, int ld_out,
                              bool accumulate, Stage stage) {
    if (L.kind != Linear::Kind::Ternary || n < kernels_->gemm_min_tokens) {
        // per token, through exactly the single-token path (AVX2: below one GEMM tile the padded
        // tile costs more than reading the weights once per token, measured 738 vs 921 tok/s at T=2)
        for (int t = 0; t < n; ++t)
            apply(L, in + static_cast<std::size_t>(t) * ld_in, out + static_cast<std::size_t>(t) * ld_out, accumulate,
                  stage);
        return;
    }
    ensure_threads();
    const KernelSet& k = *kernels_;
    ThreadPool& pool = *pool_;
    const int npad = round_up(n, kGemmTokens);
    const int stride = L.in_stride();
    const int64_t t0 = clock_ ? StageClock::now() : 0;
    // A few tokens (batched decode) are quantized on the calling thread: a dispatch costs more.
    const int qgrain = npad <= 2 * kGemmTokens ? npad : 1;
    pool.parallel_for(npad, qgrain, [&](int t0, int t1, int slot) {
        float* xn = xn_thr_.data() + static_cast<std::size_t>(slot) * max_in_;
        for (int t = t0; t < t1; ++t) {
            int8_t* xq = X_.data() + static_cast<std::size_t>(t) * stride;
            if (t >= n) {
                std::memset(xq, 0, stride);
                sum_[t] = 0;
                sx_[t] = 1.0f;
                continue;
            }
            sx_[t] = quantize_one(L, in + static_cast<std::size_t>(t) * ld_in, xn, xq, &sum_[t]);
        }
    });
    const int64_t t1 = clock_ ? StageClock::now() : 0;
    const int rows = L.rows;
    const int ldy = L.out_stride();
    const float* mult = L.row_mult.size() ? L.row_mult.data() : nullptr;
    if (Acc_.size() < static_cast<std::size_t>(npad) * ldy)  // a big layer (all logits): grown once
        Acc_.reset(static_cast<std::size_t>(chunk_) * ldy);
    int32_t* Acc = Acc_.data();
    pool.parallel_for(L.w.groups, pool.grain_for(L.w.groups), [&](int g0, int g1, int slot) {
        k.gemm(L.w, X_.data(), sum_.data(), npad, Acc, ldy, g0, g1,
               panels_.data() + static_cast<std::size_t>(slot) * kRowGroup * max_in_);
        const int r0 = g0 * kRowGroup, r1 = std::min(rows, g1 * kRowGroup);
        for (int t = 0; t < n; ++t) {
            const float s = 1.0f / (sx_[t] * L.scale);
            const int32_t* a = Acc + static_cast<std::size_t>(t) * ldy;
            float* o = out + static_cast<std::size_t>(t) * ld_out;
            for (int r = r0; r < r1; ++r) {
                float v = static_cast<float>(a[r]) * s;
                if (mult) v *= mult[r];
                o[r] = accumulate ? o[r] + v : v;
            }
        }
    });
    if (clock_) {
        clock_->add(kStageQuant, t0, t1);
        clock_->add(stage, t1, StageClock::now());
    }
}

// ------------------------------------------------------------------ LoRA (bitmamba.cpp's adapters)

void LinearRunner::reserve_lora(int max_in, int max_rank, int chunk) {
    lora_in_ = max_in;
    lora_rank_ = max_rank;
    lora_chunk_ = chunk;
    lora_xn_.reset(static_cast<std::size_t>(chunk) * max_in);
    lora_a_.reset(static_cast<std::size_t>(chunk) * max_rank);
}

namespace {
constexpr int kLoraRows = 64;     // output rows per unit of the second product (ranges start at multiples)
constexpr int kLoraWork = 65536;  // multiply-adds per pool chunk (below that a dispatch costs more)
}  // namespace

void LinearRunner::apply_lora(const Linear& L, const LoraMatrix& m, float scale, const float* in, int ld_in, int n,
                              float* out, int ld_out) {
    if (n <= 0) return;
    if (m.in != L.cols || m.out != L.rows || m.in > lora_in_ || m.rank > lora_rank_ || n > lora_chunk_)
        throw std::logic_error("apply_lora: the adapter or the batch does not fit the reserved scratch");
    const KernelSet& k = *kernels_;
    ThreadPool& pool = *pool_;
    const int cols = m.in, R = m.rank, rows = m.out;
    float* xn = lora_xn_.data();
    float* a = lora_a_.data();
    // per token: xn_t, exactly what apply()/apply_rows() quantize, then a_t = A xn_t (fgemv)
    pool.parallel_for(n, std::max(1, kLoraWork / (R * cols)), [&](int t0, int t1, int) {
        for (int t = t0; t < t1; ++t) {
            const float* x = in + static_cast<std::size_t>(t) * ld_in;
            float* v = xn + static_cast<std::size_t>(t) * lora_in_;
            if (L.norm.size())
                k.rmsnorm(x, L.norm.data(), cols, L.norm_eps, v);
            else
                std::memcpy(v, x, sizeof(float) * cols);
            k.fgemv(m.A.data(), cols, cols, v, a + static_cast<std::size_t>(t) * lora_rank_, 0, R);
        }
    });
    // out_t += scale * B a_t over blocks of output rows (fgemv_t_acc on B transposed)
    const int units = (rows + kLoraRows - 1) / kLoraRows;
    pool.parallel_for(units, std::max(1, kLoraWork / (kLoraRows * R * n)), [&](int b0, int b1, int) {
        const int j0 = b0 * kLoraRows, j1 = std::min(rows, b1 * kLoraRows);
        for (int t = 0; t < n; ++t)
            k.fgemv_t_acc(m.Bt.data(), rows, R, a + static_cast<std::size_t>(t) * lora_rank_, scale,
                          out + static_cast<std::size_t>(t) * ld_out, j0, j1);
    });
}

}  // namespace bm
