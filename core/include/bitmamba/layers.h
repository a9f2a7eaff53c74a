// Linear layers shared by the architectures, and the runner that applies them with the model's
// thread pool and scratch buffers.
//
// A Linear is one of:
//   ternary: packed 2-bit weights (kernels.h); y[r] = dot(q_r, xq) / (sx * scale) [* row_mult[r]]
//   int8:    per-row int8 weights;              y[r] = dot(w8_r, xq) / sx * row_mult[r]
//   float:   fp32 weights;                      y[r] = dot(W_r, x) [* row_mult[r]]
// where xq is the per-token absmax int8 quantization of the input (after the optional internal
// RMSNorm, as BitMamba-2's BitLinear does). The single-token and the batched paths evaluate the
// same float expressions, so their results are bit-identical.
//
// A LoraMatrix is a low-rank float correction of a Linear (bitmamba.cpp's LoRA adapters, its
// src/lora.cpp): out += scale * B (A xn), xn the Linear's input after its RMSNorm and before the
// int8 quantization (LinearRunner::apply_lora).
#pragma once

#include <cmath>
#include <memory>

#include "bitmamba/common.h"
#include "bitmamba/kernels.h"
#include "bitmamba/profile.h"
#include "bitmamba/threadpool.h"

namespace bm {

struct Linear {
    enum class Kind { Ternary, Int8, Float };
    Kind kind = Kind::Ternary;
    int rows = 0, cols = 0;
    PackedMatrix w;              // ternary
    AlignedBuffer<int8_t> w8;    // int8: rows x ld8
    int ld8 = 0;
    AlignedBuffer<float> wf;     // float: rows x cols
    float scale = 1.0f;          // ternary per-tensor scale
    AlignedBuffer<float> norm;   // optional internal RMSNorm weight (empty: none)
    float norm_eps = 1e-6f;
    AlignedBuffer<float> row_mult;  // optional per-output multiplier (empty: 1)

    bool quantized() const { return kind != Kind::Float; }
    int in_stride() const { return kind == Kind::Ternary ? w.cols_pad : (kind == Kind::Int8 ? ld8 : cols); }
    int out_stride() const { return kind == Kind::Ternary ? w.rows_pad : rows; }
    std::size_t bytes() const;

    // Builders (throw FormatError naming `what`).
    void set_ternary_codes(const uint8_t* codes, int rows, int cols, float scale, const char* what);
    void set_ternary_values(const int8_t* q, int rows, int cols, float scale, const char* what);
    // Float weights quantized at load: ternary with per-row absmean scales (BitNet b1.58 per row).
    void set_ternary_from_float_rows(const float* W, int rows, int cols, const char* what);
    // Float weights quantized at load to int8 with per-row absmax scales.
    void set_int8_from_float_rows(const float* W, int rows, int cols, const char* what);
    void set_float(const float* W, int rows, int cols, const char* what);
    // Multiply row_mult (created as ones if empty) by v[r].
    void scale_rows(const float* v);
};

// A [rank][in] row-major; B [out][rank] is kept transposed (Bt [rank][out]) so that the second
// product runs along the output rows.
struct LoraMatrix {
    int rank = 0, in = 0, out = 0;
    AlignedBuffer<float> A, Bt;
    std::size_t bytes() const { return (A.size() + Bt.size()) * sizeof(float); }
};

class LinearRunner {
public:
    LinearRunner(std::unique_ptr<ThreadPool>& pool, const KernelSet*& kernels) : pool_(pool), kernels_(kernels) {}

    // Size the scratch for inputs up to max_in columns, outputs up to max_out rows, batches of up
    // to `chunk` tokens through layers of up to max_batched_out rows (bigger ones grow it once).
    void reserve(int max_in, int max_out, int chunk, int max_batched_out);

    // out = L(x) for one token (accumulate: out += L(x)); with a clock, the product is timed as `stage`.
    void apply(const Linear& L, const float* x, float* out, bool accumulate = false, Stage stage = kStageMatmul);
    // out[t*ld_out + r] = L(in[t*ld_in + .]) for t < n <= chunk.
    // With a clock, the quantization and the product are timed (the product as `stage`).
    void apply_rows(const Linear& L, const float* in, int ld_in, int n, float* out, int ld_out, bool accumulate = false,
                    Stage stage = kStageMatmul);
    // Scratch for apply_lora: inputs up to max_in columns, ranks up to max_rank, up to `chunk` tokens.
    void reserve_lora(int max_in, int max_rank, int chunk);
    // out[t*ld_out + o] += scale * sum_r B[o][r] * a_t[r], a_t[r] = sum_i A[r][i] * xn_t[i], for t < n,
    // xn_t = rmsnorm(in[t*ld_in + .], L.norm) as apply() computes it before quantizing; a_t by the
    // level's fgemv, the second product by its fgemv_t_acc. Per element the same float operations
    // whatever n, the thread count or the split: a token gets the same result alone (step) and in a
    // batch (prefill, step_batch).
    void apply_lora(const Linear& L, const LoraMatrix& m, float scale, const float* in, int ld_in, int n, float* out,
                    int ld_out);

    ThreadPool& pool() { return *pool_; }
    const KernelSet& kernels() const { return *kernels_; }
    // Stage timing of apply() and apply_rows() (null: off).
    void set_clock(StageClock* c) { clock_ = c; }

private:
    StageClock* clock_ = nullptr;
    void ensure_threads();
    // quantize (after the optional norm) one input row into dst (stride L.in_stride()), returns sx
    float quantize_one(const Linear& L, const float* x, float* xn, int8_t* dst, int32_t* sum);

    std::unique_ptr<ThreadPool>& pool_;
    const KernelSet*& kernels_;
    int max_in_ = 0, max_out_ = 0, chunk_ = 0, slots_ = 0;
    AlignedBuffer<float> xn_, xn_thr_, sx_;
    AlignedBuffer<int8_t> xq_, X_;
    AlignedBuffer<int32_t> acc_, sum_, Acc_;
    AlignedBuffer<uint8_t> panels_;
    int lora_in_ = 0, lora_rank_ = 0, lora_chunk_ = 0;
    AlignedBuffer<float> lora_xn_, lora_a_;  // [chunk][max_in], [chunk][max_rank]
};

// Run f(c0, c1, slot) over [0, n) in ranges whose bounds are multiples of 16 (keeps SIMD tails of
// elementwise kernels on the same elements whatever the split).
template <typename F>
void for_channels(ThreadPool& pool, int n, F&& f) {
    constexpr int kAlign = 16;
    const int units = (n + kAlign - 1) / kAlign;
    pool.parallel_for(units, pool.grain_for(units, 2), [&](int b, int e, int slot) {
        f(b * kAlign < n ? b * kAlign : n, e * kAlign < n ? e * kAlign : n, slot);
    });
}

inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

}  // namespace bm
