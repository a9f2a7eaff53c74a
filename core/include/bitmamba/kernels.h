// One interface for every instruction-set level: ternary GEMV/GEMM on the packed layout,
// activation quantization, and the float vector helpers of the forward pass.
//
// Packed ternary layout (docs/kernels.md): codes c = w + 1 in {0,1,2}, 2 bits each. A block holds
// 128 weights of one row in 32 bytes; byte j holds weights j, j+32, j+64, j+96 in bits 0-1,
// 2-3, 4-5, 6-7. Rows are interleaved in groups of 4:
//     data[((group * kblocks) + kb) * 128 + r * 32 + j]
// K is padded to a multiple of 128 and M to a multiple of 4 with code 1 (weight 0).
//
// Integer results are exact: y[r] = sum_c w[r,c] * x[c], computed as sum_c c[r,c]*x[c] - sum_c x[c].
// Every level must return bit-identical integers to the scalar reference.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bitmamba/common.h"

namespace bm {

constexpr int kBlockK = 128;   // weights per block (per row)
constexpr int kRowGroup = 4;   // rows interleaved together
constexpr int kBlockBytes = 32;
constexpr int kGemmTokens = 4; // GEMM token count granularity (X is padded to a multiple)

struct PackedMatrix {
    int rows = 0, cols = 0;          // logical shape
    int rows_pad = 0, cols_pad = 0;  // rows_pad % 4 == 0, cols_pad % 128 == 0
    int groups = 0, kblocks = 0;
    AlignedBuffer<uint8_t> data;

    std::size_t bytes() const { return data.size(); }
    const uint8_t* group_ptr(int g) const {
        return data.data() + static_cast<std::size_t>(g) * kblocks * kRowGroup * kBlockBytes;
    }
};

// Row groups per cache block of a fused GEMM: about 32 KB of codes, which stay cached while every
// token tile passes over them.
inline int cache_block_groups(const PackedMatrix& w) {
    const int bytes = w.kblocks * kRowGroup * kBlockBytes;
    return bytes >= 32 * 1024 ? 1 : (32 * 1024) / bytes;
}

// Allocate the packed storage for rows x cols (all weights zero).
void packed_init(PackedMatrix& m, int rows, int cols);
// Repack bitmamba.cpp row-major codes (rows x ceil(cols/4) bytes, 4 codes per byte, low bits first).
// Throws FormatError naming `what` when a code 3 is found.
void packed_from_file_codes(PackedMatrix& m, const uint8_t* src, int rows, int cols, const char* what);
// Pack int8 ternary values (rows x cols, row-major). Throws FormatError on values outside {-1,0,1}.
void packed_from_int8(PackedMatrix& m, const int8_t* q, int rows, int cols, const char* what);
// Unpack to int8 values (rows x cols) for tests.
void packed_to_int8(const PackedMatrix& m, int8_t* out);

// One instruction-set level's kernels. Sets are built by name, never by position: scalar_kernels()
// assigns every slot, and a level starts from the scalar set (or from the set of the level it
// builds on, itself built from scalar) and overrides the slots it implements:
//     KernelSet k = scalar_kernels();
//     k.name = "neon";
//     k.gemv = gemv_neon;
// A new slot is declared here, implemented in arch/scalar/kernels_scalar.cpp and set in
// scalar_kernels(); every level then runs the reference for it until it overrides it.
struct KernelSet {
    const char* name = nullptr;  // the level's name in core/simd_levels.txt (what simd_level() reports)
    // y[r] for rows of row groups [g0, g1). x has cols_pad int8 (zero padded); sum_x = sum of x.
    void (*gemv)(const PackedMatrix& w, const int8_t* x, int32_t sum_x, int32_t* y, int g0, int g1) = nullptr;
    // Y[t * ldy + r] for t < T (T % 4 == 0) and rows of groups [g0, g1). X rows are cols_pad apart.
    // scratch: at least 4 * cols_pad bytes, 64-byte aligned, private to the caller thread.
    void (*gemm)(const PackedMatrix& w, const int8_t* X, const int32_t* sum_x, int T, int32_t* Y, int ldy,
                 int g0, int g1, uint8_t* scratch) = nullptr;
    // Absmax int8 quantization (docs/formats.md): sx = 127 / (max|x| + 1e-5); q = clamp(round(x*sx), -128, 127)
    // with round half away from zero. Writes n values, returns sx and the sum of q.
    float (*quantize)(const float* x, int n, int8_t* q, int32_t* sum_q) = nullptr;
    // y = x * w / sqrt(mean(x^2) + eps)   (w may be null: weight 1). y may alias x.
    void (*rmsnorm)(const float* x, const float* w, int n, float eps, float* y) = nullptr;
    // x[i] = x[i] / (1 + exp(-x[i]))
    void (*silu)(float* x, int n) = nullptr;
    // x[i] = exp(x[i])
    void (*exp)(float* x, int n) = nullptr;
    // index of the largest value (first on ties)
    int (*argmax)(const float* x, int n) = nullptr;
    // y[r] = sum_c W[r * ld + c] * x[c] for r in [r0, r1): float weights (x_proj, dt_proj, float layers).
    void (*fgemv)(const float* W, int ld, int cols, const float* x, float* y, int r0, int r1) = nullptr;
    // y[j] += alpha * (sum_r a[r] * Wt[r * ld + j]) for j in [j0, j1), the sum over r = 0..rank-1 in
    // order: a float matrix stored transposed, for a short `a` (the up-projection of a LoRA term).
    // Every level gives each element the same operations wherever the range starts.
    void (*fgemv_t_acc)(const float* Wt, int ld, int rank, const float* a, float alpha, float* y, int j0,
                        int j1) = nullptr;
    // y[r] = sum_c W[r * ld + c] * x[c], exact int32, for int8 weights (per-row quantized float
    // layers such as a large lm_head). ld and cols are multiples of 32; W and x are zero padded.
    void (*i8gemv)(const int8_t* W, int ld, int cols, const int8_t* x, int32_t* y, int r0, int r1) = nullptr;
    // Fewest tokens for which a batched product takes gemm (padded to a multiple of 4) rather than
    // one gemv per token: where the GEMM tile costs about one GEMV per token (AVX2), a padded tile
    // is a loss below 4 tokens; where it costs about half (AVX-512 VNNI), 2 tokens already gain.
    int gemm_min_tokens = kGemmTokens;
    // The compute roof of the ternary products (bench: the MAC bound of a batched step): `rounds`
    // rounds of the instruction the level's GEMM multiplies with, on 8 independent int32
    // accumulators and nothing else; returns a checksum so that nothing is optimised out. Each
    // round is dot_macs_per_round int8 multiply-adds. nullptr where a level has no such probe
    // (scalar, plain AVX2/AVX-512BW, NEON).
    int64_t (*dot_burst)(int64_t rounds) = nullptr;
    int dot_macs_per_round = 0;
    const char* dot_instruction = "";
};

// x rounded to the nearest integer, ties away from zero: std::round's definition, computed exactly
// here (x - trunc(x) is exact in float) because some C runtimes get std::round wrong one ulp below
// a tie (mingw-w64's gives round(0.49999997f) = 1). Every level's quantization rounds this way.
inline float round_half_away(float x) {
    const float t = std::trunc(x);
    return std::fabs(x - t) >= 0.5f ? t + std::copysign(1.0f, x) : t;
}

const KernelSet& scalar_kernels();
// The level chosen when the package was built (BITMAMBA_SIMD). Equals scalar_kernels() for scalar builds.
const KernelSet& best_kernels();
// Name of the compiled SIMD level: best_kernels().name, a row of core/simd_levels.txt.
const char* simd_level();
// Whether the running CPU supports the compiled level (checked at import).
bool simd_supported_by_cpu();
// The features of the level's check column the running CPU lacks, comma-separated ("" if none).
std::string simd_missing_cpu_features();
// The optional features of this build's ISA family the running CPU has, /proc/cpuinfo spelling,
// from the detector of the check (CPUID/XGETBV on x86; HWCAP, sysctl or Windows on AArch64).
std::vector<std::string> host_cpu_features();

}  // namespace bm
