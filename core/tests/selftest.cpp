// Standalone self-test of the compiled SIMD level against the scalar reference kernels.
// No Python: it is what runs under qemu-aarch64 (NEON) and on AVX-512 hosts (scripts/cross_test.sh).
//
// Checks, for best_kernels() (the level chosen at build time) against scalar_kernels() and a naive
// int64 reference:
//   * gemv / gemm / i8gemv: bit-exact integers, awkward shapes, extreme values (int16 widening and
//     saturation limits), sub-ranges of row groups, padded output strides, 1 and 2 pool threads;
//   * quantize: bit-exact q, scale and sum (ties, zeros, every tail length);
//   * rmsnorm / silu / exp / fgemv: within stated tolerances of a double reference and of scalar;
//   * argmax: identical index (ties: first);
//   * random BitMamba-2 and Mamba-1 (BitLinear) models built through the same C++ model code:
//     SIMD logits vs a scalar-kernel model within tolerance, and for each kernel set prefill ==
//     step-by-step, step_batch == step, 1 thread == 2 threads, bit for bit.
//   * the build is the row of core/simd_levels.txt CMake chose, with the kernel sets that row carries,
//     whose float helpers it reproduces bit for bit.
// Prints one line per check; exit status 0 = all passed, 1 = a mismatch, 77 = the CPU cannot run the
// compiled level (nothing was tested). `--list-levels` prints the level table it was built with.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bitmamba/kernels.h"
#include "bitmamba/model.h"
#include "bitmamba/simd_levels.h"
#include "bitmamba/threadpool.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include "../src/arch/x86/cpu_features_x86.h"
#define BM_SELFTEST_X86_DETECTOR 1
#endif

using namespace bm;

namespace {

// ------------------------------------------------------------------ utilities

struct Rng {  // splitmix64: same sequence on every platform
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    int range(int lo, int hi) { return lo + static_cast<int>(next() % static_cast<uint64_t>(hi - lo + 1)); }  // [lo, hi]
    double unit() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }          // [0, 1)
    float uniform(float lo, float hi) { return static_cast<float>(lo + (hi - lo) * unit()); }
    float normal() {
        double u1 = unit(), u2 = unit();
        if (u1 < 1e-300) u1 = 1e-300;
        return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    }
};

int g_failed_checks = 0;
int g_checks = 0;

// One reported check: many cases, the first failure described, the worst error seen.
class Check {
public:
    explicit Check(std::string name) : name_(std::move(name)) {}
    ~Check() {
        ++g_checks;
        if (failures_) ++g_failed_checks;
        std::string detail = std::to_string(cases_) + " cases";
        if (!note_.empty()) detail += ", " + note_;
        if (failures_) detail += "; " + std::to_string(failures_) + " failed, first: " + first_;
        std::printf("%s  %-50s %s\n", failures_ ? "FAIL" : "ok  ", name_.c_str(), detail.c_str());
        std::fflush(stdout);
    }
    void pass() { ++cases_; }
    void fail(const std::string& what) {
        ++cases_;
        if (!failures_++) first_ = what;
    }
    void expect(bool ok, const std::string& what) { ok ? pass() : fail(what); }
    void note(const std::string& n) { note_ = n; }

private:
    std::string name_, note_, first_;
    int cases_ = 0, failures_ = 0;
};

std::string fmt(const char* f, double a) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, a);
    return buf;
}

std::string shape_str(int rows, int cols) { return std::to_string(rows) + "x" + std::to_string(cols); }

// ------------------------------------------------------------------ ternary GEMV / GEMM

enum class WPat { Random, Sparse, AllPlus, AllMinus };
enum class XPat { Random, AllMin, AllMax, Alternating, Small };

const char* name_of(WPat p) {
    switch (p) {
        case WPat::Random: return "w=rand";
        case WPat::Sparse: return "w=sparse";
        case WPat::AllPlus: return "w=+1";
        default: return "w=-1";
    }
}
const char* name_of(XPat p) {
    switch (p) {
        case XPat::Random: return "x=rand";
        case XPat::AllMin: return "x=-128";
        case XPat::AllMax: return "x=127";
        case XPat::Alternating: return "x=+-";
        default: return "x=small";
    }
}

std::vector<int8_t> ternary_values(Rng& rng, int rows, int cols, WPat p) {
    std::vector<int8_t> q(static_cast<std::size_t>(rows) * cols);
    for (auto& v : q) {
        switch (p) {
            case WPat::Random: v = static_cast<int8_t>(rng.range(-1, 1)); break;
            case WPat::Sparse: v = static_cast<int8_t>(rng.range(0, 9) == 0 ? (rng.range(0, 1) ? 1 : -1) : 0); break;
            case WPat::AllPlus: v = 1; break;
            case WPat::AllMinus: v = -1; break;
        }
    }
    return q;
}

void int8_values(Rng& rng, int8_t* x, int n, XPat p) {
    for (int i = 0; i < n; ++i) {
        switch (p) {
            case XPat::Random: x[i] = static_cast<int8_t>(rng.range(-128, 127)); break;
            case XPat::AllMin: x[i] = -128; break;
            case XPat::AllMax: x[i] = 127; break;
            case XPat::Alternating: x[i] = static_cast<int8_t>(i % 2 ? 127 : -128); break;
            case XPat::Small: x[i] = static_cast<int8_t>(rng.range(-3, 3)); break;
        }
    }
}

struct TernaryCase {
    int rows, cols;
    WPat wp;
    XPat xp;
};

struct GemmCaseResult {
    std::string where;
    bool ok = true;
};

constexpr int32_t kSentinel = 0x5A5A5A5A;

// Runs every ternary case for one kernel set with one pool; reports gemv and gemm separately.
void test_ternary(const KernelSet& k, const char* label, int threads, const std::vector<TernaryCase>& cases,
                  uint64_t seed) {
    ThreadPool pool(threads);
    pool.set_spin(200);
    // (reported in reverse order of declaration)
    Check cm(std::string("gemm[") + label + "] threads=" + std::to_string(threads));
    Check cr(std::string("gemv[") + label + "] row-group sub-ranges, threads=" + std::to_string(threads));
    Check cg(std::string("gemv[") + label + "] threads=" + std::to_string(threads));
    Rng rng(seed);
    for (const TernaryCase& tc : cases) {
        const std::vector<int8_t> q = ternary_values(rng, tc.rows, tc.cols, tc.wp);
        PackedMatrix w;
        packed_from_int8(w, q.data(), tc.rows, tc.cols, "selftest");
        const std::string what = shape_str(tc.rows, tc.cols) + " " + name_of(tc.wp) + " " + name_of(tc.xp);

        // Token matrix: 13 tokens (GEMM pads to 16 with zero rows and zero sums).
        constexpr int kT = 13;
        const int Tp = round_up(kT, kGemmTokens);
        AlignedBuffer<int8_t> X(static_cast<std::size_t>(Tp) * w.cols_pad);
        AlignedBuffer<int32_t> sums(Tp);
        for (int t = 0; t < kT; ++t) {
            int8_t* xt = X.data() + static_cast<std::size_t>(t) * w.cols_pad;
            int8_values(rng, xt, tc.cols, t == 0 ? tc.xp : (t % 3 == 0 ? XPat::Random : tc.xp));
            int32_t s = 0;
            for (int c = 0; c < tc.cols; ++c) s += xt[c];
            sums[t] = s;
        }
        // Naive reference.
        std::vector<int64_t> ref(static_cast<std::size_t>(kT) * tc.rows);
        for (int t = 0; t < kT; ++t) {
            const int8_t* xt = X.data() + static_cast<std::size_t>(t) * w.cols_pad;
            for (int r = 0; r < tc.rows; ++r) {
                int64_t s = 0;
                const int8_t* qr = q.data() + static_cast<std::size_t>(r) * tc.cols;
                for (int c = 0; c < tc.cols; ++c) s += static_cast<int64_t>(qr[c]) * xt[c];
                ref[static_cast<std::size_t>(t) * tc.rows + r] = s;
            }
        }

        // GEMV, all groups through the pool, token 0 and a random token.
        AlignedBuffer<int32_t> y(w.rows_pad);
        for (int t : {0, 5}) {
            const int8_t* xt = X.data() + static_cast<std::size_t>(t) * w.cols_pad;
            for (int r = 0; r < w.rows_pad; ++r) y[r] = kSentinel;
            pool.parallel_for(w.groups, 1, [&](int g0, int g1, int) { k.gemv(w, xt, sums[t], y.data(), g0, g1); });
            bool ok = true;
            int bad = -1;
            for (int r = 0; r < tc.rows && ok; ++r)
                if (y[r] != ref[static_cast<std::size_t>(t) * tc.rows + r]) ok = false, bad = r;
            cg.expect(ok, what + " token " + std::to_string(t) + " row " + std::to_string(bad) + ": got " +
                              (bad >= 0 ? std::to_string(y[bad]) : "") + " want " +
                              (bad >= 0 ? std::to_string(ref[static_cast<std::size_t>(t) * tc.rows + bad]) : ""));
        }
        // GEMV over a strict sub-range of groups: rows outside stay untouched.
        if (w.groups >= 3) {
            const int g0 = 1, g1 = w.groups - 1;
            for (int r = 0; r < w.rows_pad; ++r) y[r] = kSentinel;
            k.gemv(w, X.data(), sums[0], y.data(), g0, g1);
            bool ok = true;
            for (int r = 0; r < w.rows_pad; ++r) {
                const bool inside = r >= g0 * kRowGroup && r < g1 * kRowGroup;
                if (inside && r < tc.rows) ok &= y[r] == ref[r];
                if (!inside) ok &= y[r] == kSentinel;
            }
            cr.expect(ok, what + " groups [1, " + std::to_string(g1) + ")");
        }

        // GEMM for T in {4, 8, 16} (all tokens), output stride rows_pad and rows_pad + 12.
        for (int T : {4, 8, Tp}) {
            for (int extra : {0, 12}) {
                const int ldy = w.rows_pad + extra;
                AlignedBuffer<int32_t> Y(static_cast<std::size_t>(T) * ldy);
                for (std::size_t i = 0; i < Y.size(); ++i) Y[i] = kSentinel;
                AlignedBuffer<uint8_t> scratch(static_cast<std::size_t>(pool.size()) * kRowGroup * w.cols_pad);
                pool.parallel_for(w.groups, 1, [&](int g0, int g1, int slot) {
                    k.gemm(w, X.data(), sums.data(), T, Y.data(), ldy, g0, g1,
                           scratch.data() + static_cast<std::size_t>(slot) * kRowGroup * w.cols_pad);
                });
                bool ok = true;
                std::string where;
                for (int t = 0; t < T && ok; ++t)
                    for (int r = 0; r < ldy && ok; ++r) {
                        const int32_t got = Y[static_cast<std::size_t>(t) * ldy + r];
                        if (r < tc.rows && t < kT) {
                            if (got != ref[static_cast<std::size_t>(t) * tc.rows + r]) {
                                ok = false;
                                where = "t=" + std::to_string(t) + " row " + std::to_string(r) + ": got " +
                                        std::to_string(got) + " want " +
                                        std::to_string(ref[static_cast<std::size_t>(t) * tc.rows + r]);
                            }
                        } else if (r >= tc.rows && r < w.rows_pad) {
                            // padded rows (weight 0): y = 0 * x = 0
                            if (got != 0 && t < kT) ok = false, where = "padded row " + std::to_string(r) + " not 0";
                        } else if (r >= w.rows_pad && got != kSentinel) {
                            ok = false, where = "wrote past rows_pad at t=" + std::to_string(t);
                        }
                    }
                cm.expect(ok, what + " T=" + std::to_string(T) + " ldy=" + std::to_string(ldy) + " " + where);
            }
        }
    }
}

std::vector<TernaryCase> ternary_cases() {
    // rows not multiples of 4 / 16, cols around the 32 / 64 / 128-byte steps and the int16 widening
    // intervals of the AVX2 / AVX-512 kernels (8 blocks = 1024 columns for gemv, 2048 for gemm).
    const std::pair<int, int> shapes[] = {{1, 1},     {3, 7},     {4, 128},   {5, 31},    {7, 129},   {13, 100},
                                          {16, 256},  {17, 255},  {33, 383},  {64, 1000}, {37, 1025}, {9, 2047},
                                          {6, 2049},  {130, 640}, {11, 4100}, {2, 8300},  {21, 96},   {19, 192},
                                          {70, 4100}, {301, 1024}};  // more groups than the AVX-512 GEMM's block
    std::vector<TernaryCase> out;
    for (auto s : shapes) out.push_back({s.first, s.second, WPat::Random, XPat::Random});
    // Extremes: |sum| is largest with all-equal weights and x at the int8 limits.
    for (auto s : {std::make_pair(9, 2047), std::make_pair(6, 2049), std::make_pair(11, 4100), std::make_pair(2, 8300),
                   std::make_pair(5, 31), std::make_pair(17, 1025)}) {
        for (WPat wp : {WPat::AllPlus, WPat::AllMinus})
            for (XPat xp : {XPat::AllMin, XPat::AllMax, XPat::Alternating}) out.push_back({s.first, s.second, wp, xp});
    }
    out.push_back({29, 777, WPat::Sparse, XPat::Small});
    out.push_back({40, 300, WPat::Random, XPat::Small});
    return out;
}

// ------------------------------------------------------------------ int8 GEMV

void test_i8gemv(const KernelSet& k, const char* label, int threads, uint64_t seed) {
    ThreadPool pool(threads);
    pool.set_spin(200);
    Check ch(std::string("i8gemv[") + label + "] threads=" + std::to_string(threads));
    Rng rng(seed);
    const std::pair<int, int> shapes[] = {{1, 1},   {3, 7},   {5, 31},   {8, 32},    {13, 100},  {4, 33},
                                          {80, 1536}, {37, 769}, {6, 4100}, {130, 64}, {7, 17000}};
    for (auto s : shapes) {
        const int rows = s.first, cols = s.second, ld = round_up(cols, 32);
        for (int pat = 0; pat < 3; ++pat) {
            AlignedBuffer<int8_t> W(static_cast<std::size_t>(rows) * ld), x(ld);
            for (int r = 0; r < rows; ++r)
                for (int c = 0; c < cols; ++c)
                    // weights are per-row absmax quantized to [-127, 127] (Linear::set_int8_from_float_rows)
                    W[static_cast<std::size_t>(r) * ld + c] =
                        static_cast<int8_t>(pat == 0 ? rng.range(-127, 127) : (pat == 1 ? -127 : 127));
            for (int c = 0; c < cols; ++c) x[c] = static_cast<int8_t>(pat == 0 ? rng.range(-128, 127) : -128);
            std::vector<int64_t> ref(rows);
            for (int r = 0; r < rows; ++r) {
                int64_t sum = 0;
                for (int c = 0; c < cols; ++c) sum += static_cast<int64_t>(W[static_cast<std::size_t>(r) * ld + c]) * x[c];
                ref[r] = sum;
            }
            AlignedBuffer<int32_t> y(rows + 8);
            for (std::size_t i = 0; i < y.size(); ++i) y[i] = kSentinel;
            pool.parallel_for(rows, 3, [&](int r0, int r1, int) { k.i8gemv(W.data(), ld, ld, x.data(), y.data(), r0, r1); });
            bool ok = true;
            int bad = -1;
            for (int r = 0; r < rows; ++r)
                if (y[r] != ref[r]) ok = false, bad = bad < 0 ? r : bad;
            for (int r = rows; r < rows + 8; ++r) ok &= y[r] == kSentinel;
            ch.expect(ok, shape_str(rows, cols) + " pattern " + std::to_string(pat) + " row " + std::to_string(bad));
            // odd sub-range
            if (rows >= 5) {
                for (std::size_t i = 0; i < y.size(); ++i) y[i] = kSentinel;
                k.i8gemv(W.data(), ld, ld, x.data(), y.data(), 1, rows - 2);
                bool ok2 = y[0] == kSentinel && y[rows - 2] == kSentinel && y[rows - 1] == kSentinel;
                for (int r = 1; r < rows - 2; ++r) ok2 &= y[r] == ref[r];
                ch.expect(ok2, shape_str(rows, cols) + " rows [1, " + std::to_string(rows - 2) + ")");
            }
        }
    }
}

// ------------------------------------------------------------------ the level table
// The build is the row of core/simd_levels.txt CMake chose: the kernel set reports that row's name,
// and the sets compiled in besides are the ones the row carries, in order.
void test_level_table(const KernelSet& V) {
    Check ch(std::string("level table: ") + V.name + " is its row, carries its sets");
    const auto& table = simd_level_table();
    const std::vector<std::string>& header = table.at(0);
    const auto col = [&](const char* name) {
        return static_cast<std::size_t>(std::find(header.begin(), header.end(), name) - header.begin());
    };
    const std::size_t c_name = col("name"), c_carries = col("carries");
    ch.expect(c_name < header.size() && c_carries < header.size(), "the table has no name or carries column");
    if (c_name >= header.size() || c_carries >= header.size()) return;
    ch.expect(std::string(V.name) == simd_build_level(),
              std::string("kernel set '") + V.name + "' built as row '" + simd_build_level() + "'");
    const std::vector<std::string>* row = nullptr;
    for (std::size_t i = 1; i < table.size(); ++i) {
        ch.expect(table[i].size() == header.size(), "row " + std::to_string(i) + " has a wrong cell count");
        if (table[i].size() == header.size() && table[i][c_name] == V.name) row = &table[i];
    }
    ch.expect(row != nullptr, std::string("no row '") + V.name + "'");
    if (!row) return;
    std::vector<std::string> carried;
    const std::string& cell = (*row)[c_carries];
    for (std::size_t b = 0; cell != "-" && b <= cell.size();) {
        const std::size_t e = std::min(cell.find(',', b), cell.size());
        carried.push_back(cell.substr(b, e - b));
        b = e + 1;
    }
    const auto& sets = carried_kernels();
    ch.expect(sets.size() == carried.size(), "carries " + std::to_string(carried.size()) + " levels, " +
                                                 std::to_string(sets.size()) + " sets compiled in");
    for (std::size_t i = 0; i < std::min(sets.size(), carried.size()); ++i) {
        ch.expect(carried[i] == sets[i]->name, "carried set '" + std::string(sets[i]->name) + "' != " + carried[i]);
        ch.expect(kernels_named(carried[i]) == sets[i], "kernels_named(\"" + carried[i] + "\")");
    }
    ch.expect(kernels_named("scalar") == &scalar_kernels() && kernels_named(V.name) == &V, "kernels_named");
}

// Print the table this self-test was built with (--list-levels): aligned columns, then "built: <row>".
// The import-time check's CPUID/XGETBV detector (cpu_features_x86.h, the one MSVC uses too) against
// the compiler's __builtin_cpu_supports, for every feature it knows. Baseline code: any x86 CPU.
void test_cpu_detector() {
#if defined(BM_SELFTEST_X86_DETECTOR)
    Check ch("x86 CPU detector (CPUID, XGETBV) == __builtin_cpu_supports");
    __builtin_cpu_init();
    std::string have;
    for (const auto& f : x86::kFeatures) {
        const bool builtin = std::strcmp(f.name, "sse4.2") == 0       ? __builtin_cpu_supports("sse4.2")
                             : std::strcmp(f.name, "avx") == 0        ? __builtin_cpu_supports("avx")
                             : std::strcmp(f.name, "fma") == 0        ? __builtin_cpu_supports("fma")
                             : std::strcmp(f.name, "avx2") == 0       ? __builtin_cpu_supports("avx2")
                             : std::strcmp(f.name, "avx512f") == 0    ? __builtin_cpu_supports("avx512f")
                             : std::strcmp(f.name, "avx512dq") == 0   ? __builtin_cpu_supports("avx512dq")
                             : std::strcmp(f.name, "avx512bw") == 0   ? __builtin_cpu_supports("avx512bw")
                             : std::strcmp(f.name, "avx512vl") == 0   ? __builtin_cpu_supports("avx512vl")
                             : std::strcmp(f.name, "avx512vnni") == 0 ? __builtin_cpu_supports("avx512vnni")
#if (defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12)
                             : std::strcmp(f.name, "avxvnni") == 0 ? __builtin_cpu_supports("avxvnni")
#endif
                                                                   : x86::has(f);
        const bool detected = x86::has(f);
        ch.expect(detected == builtin, std::string(f.name) + ": CPUID says " + (detected ? "yes" : "no") +
                                           ", __builtin_cpu_supports " + (builtin ? "yes" : "no"));
        if (detected) have += std::string(have.empty() ? "" : " ") + f.cpuinfo;
    }
    ch.note("this CPU: " + (have.empty() ? std::string("none of them") : have));
#endif
}

void list_levels() {
    const auto& table = simd_level_table();
    std::vector<std::size_t> width;
    for (const auto& row : table)
        for (std::size_t c = 0; c < row.size(); ++c) {
            if (width.size() <= c) width.push_back(0);
            width[c] = std::max(width[c], row[c].size());
        }
    for (const auto& row : table) {
        std::string line;
        for (std::size_t c = 0; c < row.size(); ++c)
            line += row[c] + (c + 1 < row.size() ? std::string(width[c] - row[c].size() + 2, ' ') : "");
        std::printf("%s\n", line.c_str());
    }
    std::printf("built: %s (%s)\n", simd_build_level(), simd_build_options());
}

// ------------------------------------------------------------------ carried floats == the level's floats
// A level that carries another reproduces its float helpers bit for bit: the avx512 levels' own
// helpers do AVX2's operations lane for lane (rmsnorm keeps its association), so both x86 builds of
// a model give the same floats and, with exact integer products, the same logits.
void test_floats_equal_carried(const KernelSet& A, const KernelSet& V, uint64_t seed) {
    Check ch(std::string("rmsnorm/quantize/silu/exp[") + V.name + "] bit-identical to " + A.name);
    Rng rng(seed);
    for (int n : {1, 7, 15, 16, 17, 31, 33, 100, 1000, 1024, 2048, 4099}) {
        std::vector<float> x(n), w(n), a(n), b(n);
        for (auto& v : x) v = rng.normal() * 3.0f;
        for (auto& v : w) v = rng.uniform(0.5f, 1.5f);
        bool same = true;
        for (const float* wp : {static_cast<const float*>(w.data()), static_cast<const float*>(nullptr)}) {
            A.rmsnorm(x.data(), wp, n, 1e-6f, a.data());
            V.rmsnorm(x.data(), wp, n, 1e-6f, b.data());
            same &= std::memcmp(a.data(), b.data(), sizeof(float) * n) == 0;
        }
        std::vector<int8_t> qa(n), qb(n);
        int32_t sa = 0, sb = 0;
        same &= A.quantize(a.data(), n, qa.data(), &sa) == V.quantize(a.data(), n, qb.data(), &sb);
        same &= sa == sb && std::memcmp(qa.data(), qb.data(), n) == 0;
        for (auto fn : {&KernelSet::silu, &KernelSet::exp}) {
            std::vector<float> ea = x, eb = x;
            ea[0] = 100.0f, eb[0] = 100.0f;  // the clamps
            if (n > 1) ea[n - 1] = eb[n - 1] = -100.0f;
            (A.*fn)(ea.data(), n);
            (V.*fn)(eb.data(), n);
            same &= std::memcmp(ea.data(), eb.data(), sizeof(float) * n) == 0;
        }
        ch.expect(same, "n=" + std::to_string(n));
    }
}

// ------------------------------------------------------------------ quantize

void test_quantize(const KernelSet& S, const KernelSet& V) {
    Check ch(std::string("quantize[") + V.name + "] bit-exact vs scalar");
    Rng rng(11);
    std::vector<int> sizes;
    for (int n = 1; n <= 70; ++n) sizes.push_back(n);
    for (int n : {127, 128, 129, 255, 1000, 1023, 2048, 4144, 8193}) sizes.push_back(n);
    auto one = [&](const std::vector<float>& x, const std::string& what) {
        const int n = static_cast<int>(x.size());
        std::vector<int8_t> qs(n + 64, 0x11), qv(n + 64, 0x11);
        int32_t ss = 0, sv = 0;
        const float fs = S.quantize(x.data(), n, qs.data(), &ss);
        const float fv = V.quantize(x.data(), n, qv.data(), &sv);
        int64_t sum = 0;
        for (int i = 0; i < n; ++i) sum += qs[i];
        const bool ok = std::memcmp(qs.data(), qv.data(), qs.size()) == 0 && std::memcmp(&fs, &fv, sizeof fs) == 0 &&
                        ss == sv && sum == ss;
        ch.expect(ok, what + " n=" + std::to_string(n));
    };
    for (int n : sizes)
        for (float scale : {1e-3f, 1.0f, 50.0f}) {
            std::vector<float> x(n);
            for (auto& v : x) v = rng.normal() * scale;
            one(x, "normal*" + fmt("%g", scale));
        }
    // exact .5 ties after scaling (sx ~= 1 when max|x| = 127), zeros, one large outlier, negative max
    const float ties[] = {127.0f, 0.5f, -0.5f, 1.5f, -1.5f, 2.5f, -2.5f, 0.49999997f, -0.49999997f, 126.5f, -126.5f};
    for (int reps : {1, 3, 5, 8}) {
        std::vector<float> x;
        for (int r = 0; r < reps; ++r) x.insert(x.end(), std::begin(ties), std::end(ties));
        one(x, "ties");
        for (auto& v : x) v = -v;
        one(x, "ties negated");
    }
    {
        // Products x * sx that are exactly k + 0.5 in float (the ties above are not, as sx is 1 - 8e-8):
        // with max|x| = 2^20, sx = 127 * 2^-20 exactly, and for each k a nearby x hits the tie.
        const float m = 1048576.0f, sx = 127.0f / (m + 1e-5f);
        std::vector<float> t;
        for (int k = 0; k < 127; ++k)
            for (float sgn : {1.0f, -1.0f}) {
                const float target = sgn * (static_cast<float>(k) + 0.5f);
                float v = target / sx;
                for (int it = 0; it < 256 && v * sx != target; ++it)
                    v = std::nextafter(v, v * sx < target ? HUGE_VALF : -HUGE_VALF);
                if (v * sx == target) t.push_back(v);
            }
        ch.expect(t.size() > 200, "found only " + std::to_string(t.size()) + " exact ties");
        for (int off = 0; off < 9; ++off) {  // every lane position of 4/8/16-wide loops
            std::vector<float> x(1 + off, 0.0f);
            x[0] = off % 2 ? -m : m;
            x.insert(x.end(), t.begin(), t.end());
            one(x, "exact .5 ties, offset " + std::to_string(off));
        }
    }
    for (int n : {1, 8, 33, 100}) one(std::vector<float>(n, 0.0f), "zeros");
    // NaN and inf (a broken forward pass): the same q, scale and sum as the scalar reference, wherever
    // they sit in the vector part or the tail
    for (int n : {1, 7, 8, 16, 17, 33, 64, 100}) {
        for (float bad : {std::numeric_limits<float>::quiet_NaN(), HUGE_VALF, -HUGE_VALF}) {
            for (int pos : {0, n / 2, n - 1}) {
                std::vector<float> x(n);
                for (auto& v : x) v = rng.normal();
                x[pos] = bad;
                one(x, fmt("value %g", static_cast<double>(bad)) + " at " + std::to_string(pos));
            }
        }
    }
    for (int n : {9, 40, 1000}) {
        std::vector<float> x(n);
        for (auto& v : x) v = rng.normal() * 1e-2f;
        x[n / 2] = -3e4f;
        one(x, "outlier");
    }
}

// ------------------------------------------------------------------ float helpers

// Tolerances (relative to a double-precision reference, |got - ref| <= atol + rtol * |ref|):
constexpr double kRmsRtol = 2e-6, kRmsAtol = 1e-7;    // rmsnorm
constexpr double kSiluRtol = 2e-6, kSiluAtol = 1e-7;  // silu
constexpr double kExpRtol = 2e-6;                     // exp on [-87, 88] (normal range of float)
constexpr double kFgemvTol = 1e-5;                    // fgemv: kFgemvTol * sqrt(cols) * max|W| * max|x|

double rel_excess(double got, double ref, double rtol, double atol) {
    return std::fabs(got - ref) / (atol + rtol * std::fabs(ref));  // <= 1 passes
}

void test_float_helpers(const KernelSet& S, const KernelSet& V) {
    Rng rng(21);
    std::vector<int> sizes;
    for (int n = 1; n <= 40; ++n) sizes.push_back(n);
    for (int n : {63, 64, 65, 100, 1000, 1023, 2048, 4144}) sizes.push_back(n);
    for (const KernelSet* k : {&S, &V}) {
        if (k == &V && &S == &V) break;
        {
            Check ch(std::string("rmsnorm[") + k->name + "] rtol 2e-6 atol 1e-7");
            double worst = 0;
            for (int n : sizes)
                for (int mode = 0; mode < 3; ++mode) {  // weighted, unweighted, in place
                    std::vector<float> x(n), w(n), y(n);
                    for (auto& v : x) v = rng.normal() * 4.0f;
                    for (auto& v : w) v = rng.uniform(0.5f, 1.5f);
                    double ss = 0;
                    for (float v : x) ss += static_cast<double>(v) * v;
                    const double inv = 1.0 / std::sqrt(ss / n + 1e-6);
                    std::vector<float> x0 = x;
                    float* out = mode == 2 ? x.data() : y.data();
                    k->rmsnorm(x.data(), mode == 1 ? nullptr : w.data(), n, 1e-6f, out);
                    double e = 0;
                    for (int i = 0; i < n; ++i)
                        e = std::max(e, rel_excess(out[i], x0[i] * inv * (mode == 1 ? 1.0 : w[i]), kRmsRtol, kRmsAtol));
                    worst = std::max(worst, e);
                    ch.expect(e <= 1.0, "n=" + std::to_string(n) + " mode " + std::to_string(mode) + fmt(" err/tol %.3g", e));
                }
            ch.note(fmt("worst err/tol %.3f", worst));
        }
        {
            Check ch(std::string("silu[") + k->name + "] rtol 2e-6 atol 1e-7");
            double worst = 0;
            for (int n : sizes)
                for (float scale : {1.0f, 4.0f, 30.0f}) {
                    std::vector<float> x(n);
                    for (auto& v : x) v = rng.normal() * scale;
                    if (n > 3) x[0] = -100.0f, x[1] = 100.0f, x[2] = 0.0f;
                    std::vector<float> y = x;
                    k->silu(y.data(), n);
                    double e = 0;
                    for (int i = 0; i < n; ++i) {
                        const double xd = x[i];
                        e = std::max(e, rel_excess(y[i], xd / (1.0 + std::exp(-xd)), kSiluRtol, kSiluAtol));
                    }
                    worst = std::max(worst, e);
                    ch.expect(e <= 1.0, "n=" + std::to_string(n) + fmt(" scale %g", scale) + fmt(" err/tol %.3g", e));
                }
            ch.note(fmt("worst err/tol %.3f", worst));
        }
        {
            Check ch(std::string("exp[") + k->name + "] rtol 2e-6 on [-87, 88]");
            double worst = 0;
            for (int n : sizes) {
                std::vector<float> x(n);
                for (int i = 0; i < n; ++i) x[i] = n == 1 ? 0.5f : -87.0f + 175.0f * i / (n - 1);
                std::vector<float> y = x;
                k->exp(y.data(), n);
                double e = 0;
                for (int i = 0; i < n; ++i) e = std::max(e, rel_excess(y[i], std::exp(static_cast<double>(x[i])), kExpRtol, 0));
                worst = std::max(worst, e);
                ch.expect(e <= 1.0, "n=" + std::to_string(n) + fmt(" err/tol %.3g", e));
            }
            // Below the float range the result only has to be tiny and not negative / NaN.
            std::vector<float> x = {-88.0f, -100.0f, -1e4f, -1e30f, -87.5f, -90.0f, -200.0f, -1000.0f, -88.5f};
            k->exp(x.data(), static_cast<int>(x.size()));
            bool ok = true;
            for (float v : x) ok &= v >= 0.0f && v < 2e-38f;
            ch.expect(ok, "underflow range");
            ch.note(fmt("worst err/tol %.3f", worst));
        }
        {
            Check ch(std::string("fgemv[") + k->name + "] 1e-5*sqrt(cols)*max|W|*max|x|");
            double worst = 0;
            const std::pair<int, int> shapes[] = {{1, 1},   {3, 7},    {5, 31},   {8, 32},  {13, 100}, {4, 9},
                                                  {80, 1536}, {37, 769}, {6, 4100}, {17, 18}, {33, 5}};
            for (auto s : shapes)
                for (int pad : {0, 5}) {
                    const int rows = s.first, cols = s.second, ld = cols + pad;
                    std::vector<float> W(static_cast<std::size_t>(rows) * ld, 1e30f), x(cols), y(rows + 2, -7.0f);
                    double wmax = 0, xmax = 0;
                    for (int r = 0; r < rows; ++r)
                        for (int c = 0; c < cols; ++c) {
                            float v = rng.normal();
                            W[static_cast<std::size_t>(r) * ld + c] = v;
                            wmax = std::max(wmax, std::fabs(static_cast<double>(v)));
                        }
                    for (auto& v : x) v = rng.normal(), xmax = std::max(xmax, std::fabs(static_cast<double>(v)));
                    const int r0 = rows > 2 ? 1 : 0;
                    k->fgemv(W.data(), ld, cols, x.data(), y.data(), r0, rows);
                    const double tol = kFgemvTol * std::sqrt(static_cast<double>(cols)) * wmax * xmax;
                    double e = 0;
                    for (int r = r0; r < rows; ++r) {
                        double ref = 0;
                        for (int c = 0; c < cols; ++c) ref += static_cast<double>(W[static_cast<std::size_t>(r) * ld + c]) * x[c];
                        e = std::max(e, std::fabs(y[r] - ref) / tol);
                    }
                    const bool untouched = (r0 == 0 || y[0] == -7.0f) && y[rows] == -7.0f && y[rows + 1] == -7.0f;
                    worst = std::max(worst, e);
                    ch.expect(e <= 1.0 && untouched,
                              shape_str(rows, cols) + " ld " + std::to_string(ld) + fmt(" err/tol %.3g", e) +
                                  (untouched ? "" : " wrote outside [r0, r1)"));
                }
            ch.note(fmt("worst err/tol %.3f", worst));
        }
    }
    // SIMD vs scalar directly (both are within the reference tolerance; this bounds their distance).
    if (&S != &V) {
        Check ch(std::string("float helpers[") + V.name + "] vs scalar, rtol 4e-6");
        for (int n : sizes) {
            std::vector<float> x(n), w(n);
            for (auto& v : x) v = rng.normal() * 3.0f;
            for (auto& v : w) v = rng.uniform(0.5f, 1.5f);
            std::vector<float> a(n), b(n);
            S.rmsnorm(x.data(), w.data(), n, 1e-6f, a.data());
            V.rmsnorm(x.data(), w.data(), n, 1e-6f, b.data());
            double e = 0;
            for (int i = 0; i < n; ++i) e = std::max(e, rel_excess(b[i], a[i], 4e-6, 2e-7));
            std::vector<float> s1 = x, s2 = x;
            S.silu(s1.data(), n);
            V.silu(s2.data(), n);
            for (int i = 0; i < n; ++i) e = std::max(e, rel_excess(s2[i], s1[i], 4e-6, 2e-7));
            std::vector<float> e1 = x, e2 = x;
            S.exp(e1.data(), n);
            V.exp(e2.data(), n);
            for (int i = 0; i < n; ++i) e = std::max(e, rel_excess(e2[i], e1[i], 4e-6, 0));
            ch.expect(e <= 1.0, "n=" + std::to_string(n) + fmt(" err/tol %.3g", e));
        }
    }
}

// ------------------------------------------------------------------ argmax

void test_argmax(const KernelSet& S, const KernelSet& V) {
    Check ch(std::string("argmax[") + V.name + "] identical to scalar");
    Rng rng(31);
    for (int n = 1; n <= 100; ++n)
        for (int mode = 0; mode < 6; ++mode) {
            std::vector<float> x(n);
            for (auto& v : x) v = rng.normal();
            if (mode == 1) std::fill(x.begin(), x.end(), 1.5f);              // all equal: index 0
            if (mode == 2) x[n - 1] = 100.0f;                                 // max in the tail
            if (mode == 3 && n > 2) x[n / 3] = x[n - 1] = 50.0f;              // tie: first
            if (mode == 4) for (auto& v : x) v = -std::fabs(v) - 1.0f;        // all negative
            if (mode == 5) for (auto& v : x) v = static_cast<float>(rng.range(-2, 2));  // many ties
            const int a = S.argmax(x.data(), n), b = V.argmax(x.data(), n);
            ch.expect(a == b, "n=" + std::to_string(n) + " mode " + std::to_string(mode) + ": scalar " +
                                  std::to_string(a) + " simd " + std::to_string(b));
        }
    for (int n : {50257, 50260, 32000}) {
        std::vector<float> x(n);
        for (auto& v : x) v = rng.normal() * 10.0f;
        ch.expect(S.argmax(x.data(), n) == V.argmax(x.data(), n), "vocab n=" + std::to_string(n));
        x[n - 1] = x[7] = 1e6f;
        ch.expect(S.argmax(x.data(), n) == V.argmax(x.data(), n) && V.argmax(x.data(), n) == 7,
                  "vocab tie n=" + std::to_string(n));
    }
}

// ------------------------------------------------------------------ models

// Owns the tensor data behind a TensorMap.
struct Tensors {
    std::deque<std::vector<float>> f;
    std::deque<std::vector<int8_t>> q;
    TensorMap map;

    void f32(const std::string& name, std::vector<float> v, std::vector<int64_t> shape) {
        f.push_back(std::move(v));
        TensorView t;
        t.data = f.back().data();
        t.shape = std::move(shape);
        t.dtype = "f32";
        map[name] = t;
    }
    void f32_uniform(Rng& rng, const std::string& name, std::vector<int64_t> shape, float lo, float hi) {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        std::vector<float> v(static_cast<std::size_t>(n));
        for (auto& x : v) x = rng.uniform(lo, hi);
        f32(name, std::move(v), std::move(shape));
    }
    void f32_normal(Rng& rng, const std::string& name, std::vector<int64_t> shape, float scale) {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        std::vector<float> v(static_cast<std::size_t>(n));
        for (auto& x : v) x = rng.normal() * scale;
        f32(name, std::move(v), std::move(shape));
    }
    void ternary(Rng& rng, const std::string& name, int rows, int cols, float scale) {
        q.push_back(ternary_values(rng, rows, cols, WPat::Random));
        TensorView t;
        t.data = q.back().data();
        t.shape = {rows, cols};
        t.dtype = "i8";
        t.scale = scale;
        map[name] = t;
    }
};

// dt bias = inverse softplus of a log-uniform dt in [1e-3, 1e-1] (as the Python random models).
std::vector<float> dt_bias(Rng& rng, int n) {
    std::vector<float> v(n);
    for (auto& b : v) {
        const double dt = std::exp(std::log(1e-3) + (std::log(1e-1) - std::log(1e-3)) * rng.unit());
        b = static_cast<float>(dt + std::log(-std::expm1(-dt)));
    }
    return v;
}

struct ModelSpec {
    std::string name;
    int vocab;
    std::unique_ptr<Tensors> tensors;
    std::unique_ptr<Model> (*build)(const Tensors&, int threads, const KernelSet*);
};

// BitMamba-2: d_model 96 (cols not a multiple of 128), 4 heads, in_proj 396 rows, vocab 301.
constexpr int kB2Vocab = 301, kB2D = 96, kB2Layers = 2, kB2Heads = 4;

std::unique_ptr<Tensors> bitmamba2_tensors(uint64_t seed) {
    Rng rng(seed);
    auto t = std::make_unique<Tensors>();
    const int d = kB2D, di = 2 * kB2D, H = kB2Heads, dproj = 2 * di + 3 * H;
    const float scale = 1.0f / 0.016f;
    t->f32_normal(rng, "embed", {kB2Vocab, d}, 0.5f);
    for (int l = 0; l < kB2Layers; ++l) {
        const std::string p = "layers." + std::to_string(l) + ".";
        t->f32_uniform(rng, p + "in_proj_norm", {d}, 0.8f, 1.2f);
        t->ternary(rng, p + "in_proj", dproj, d, scale);
        t->f32_uniform(rng, p + "conv1d_w", {di, 1, 4}, -0.6f, 0.6f);
        t->f32_uniform(rng, p + "conv1d_b", {di}, -0.1f, 0.1f);
        t->f32(p + "dt_bias", dt_bias(rng, H), {H});
        std::vector<float> alog(H);
        for (auto& a : alog) a = std::log(rng.uniform(1.0f, 16.0f));
        t->f32(p + "A_log", alog, {H});
        t->f32_uniform(rng, p + "D", {di}, 0.5f, 1.5f);
        t->f32_uniform(rng, p + "out_proj_norm", {di}, 0.8f, 1.2f);
        t->ternary(rng, p + "out_proj", d, di, scale);
    }
    t->f32_uniform(rng, "norm_f", {d}, 0.8f, 1.2f);
    t->f32_uniform(rng, "lm_head_norm", {d}, 0.8f, 1.2f);
    t->ternary(rng, "lm_head", kB2Vocab, d, scale);
    return t;
}

std::unique_ptr<Model> build_bitmamba2(const Tensors& t, int threads, const KernelSet* k) {
    return make_bitmamba2(t.map, kB2Vocab, kB2D, kB2Layers, kB2Heads, threads, k);
}

// Mamba-1 with BitLinear projections: int8 lm_head (i8gemv), float x_proj / dt_proj (fgemv), exp in the scan.
constexpr int kM1Vocab = 263, kM1D = 72, kM1Layers = 2, kM1Inner = 144, kM1State = 16, kM1Rank = 5;

std::unique_ptr<Tensors> mamba1_tensors(uint64_t seed) {
    Rng rng(seed);
    auto t = std::make_unique<Tensors>();
    const int d = kM1D, di = kM1Inner, S = kM1State, R = kM1Rank;
    t->f32_normal(rng, "embed", {kM1Vocab, d}, 0.5f);
    t->f32_uniform(rng, "norm_f", {d}, 0.8f, 1.2f);
    t->f32_normal(rng, "lm_head", {kM1Vocab, d}, 0.05f);
    for (int l = 0; l < kM1Layers; ++l) {
        const std::string p = "layers." + std::to_string(l) + ".";
        t->f32_uniform(rng, p + "norm", {d}, 0.8f, 1.2f);
        t->f32_normal(rng, p + "in_proj", {2 * di, d}, 0.05f);
        t->f32_uniform(rng, p + "in_proj.alpha", {2 * di}, 0.5f, 1.5f);
        t->f32_uniform(rng, p + "conv1d_w", {di, 1, 4}, -0.5f, 0.5f);
        t->f32_uniform(rng, p + "conv1d_b", {di}, -0.1f, 0.1f);
        t->f32_normal(rng, p + "x_proj", {R + 2 * S, di}, 0.05f);
        t->f32_normal(rng, p + "dt_proj", {di, R}, 1.0f / std::sqrt(static_cast<float>(R)));
        t->f32(p + "dt_proj_b", dt_bias(rng, di), {di});
        std::vector<float> alog(static_cast<std::size_t>(di) * S);
        for (int i = 0; i < di; ++i)
            for (int s = 0; s < S; ++s) alog[static_cast<std::size_t>(i) * S + s] = std::log(static_cast<float>(s + 1));
        t->f32(p + "A_log", alog, {di, S});
        t->f32_uniform(rng, p + "D", {di}, 0.5f, 1.5f);
        t->f32_normal(rng, p + "out_proj", {d, di}, 0.05f);
        t->f32_uniform(rng, p + "out_proj.alpha", {d}, 0.5f, 1.5f);
    }
    return t;
}

std::unique_ptr<Model> build_mamba1(const Tensors& t, int threads, const KernelSet* k) {
    Mamba1Config c;
    c.vocab_size = kM1Vocab;
    c.d_model = kM1D;
    c.n_layers = kM1Layers;
    c.d_inner = kM1Inner;
    c.d_state = kM1State;
    c.dt_rank = kM1Rank;
    c.gate = "mul_d";
    c.quantize = true;
    c.lm_head = "int8";
    return make_mamba1(t.map, c, threads, k);
}

double rel_err(const float* a, const float* b, std::size_t n) {  // max|a - b| / max|b|
    double d = 0, m = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const double e = std::fabs(static_cast<double>(a[i]) - b[i]);
        if (!(e <= d)) d = e;  // NaN propagates
        m = std::max(m, std::fabs(static_cast<double>(b[i])));
    }
    return m > 0 ? d / m : d;
}

// Logits of every token, one step() at a time.
std::vector<float> run_steps(Model& m, const std::vector<int32_t>& ids, State& st) {
    const int V = m.info().vocab_size;
    std::vector<float> out(ids.size() * V);
    for (std::size_t i = 0; i < ids.size(); ++i) m.step(st, ids[i], out.data() + i * V);
    return out;
}

constexpr double kModelRelTol = 1e-3;  // SIMD vs scalar logits: max|diff| / max|scalar logit|

// Properties of one kernel set's model that must hold bit for bit (they hold for scalar too).
void test_model_consistency(const ModelSpec& spec, const KernelSet& k, const std::vector<int32_t>& ids) {
    Check ch(spec.name + "[" + k.name + "] prefill==steps, batch, threads");
    const int V = spec.vocab;
    auto m1 = spec.build(*spec.tensors, 1, &k);
    auto m2 = spec.build(*spec.tensors, 2, &k);
    auto s_step = m1->new_state();
    const std::vector<float> steps = run_steps(*m1, ids, *s_step);
    const int N = static_cast<int>(ids.size());
    for (Model* m : {m1.get(), m2.get()}) {
        const std::string tag = " threads=" + std::to_string(m->threads());
        // all-logits prefill over the whole sequence (crosses the 64-token chunk)
        auto s = m->new_state();
        std::vector<float> all(static_cast<std::size_t>(N) * V);
        m->prefill(*s, ids.data(), N, all.data(), true, {});
        ch.expect(std::memcmp(all.data(), steps.data(), sizeof(float) * all.size()) == 0,
                  "all-logits prefill != steps" + tag + fmt(" (rel %.3g)", rel_err(all.data(), steps.data(), all.size())));
        ch.expect(s->equals(*s_step), "prefill state != step state" + tag + fmt(" (max diff %.3g)", s->max_abs_diff(*s_step)));
        // prefixes of several lengths, last logits, with snapshots
        for (int T : {1, 2, 3, 5, 16, 37, 65}) {
            if (T > N) continue;
            auto sp = m->new_state();
            auto snap = m->new_state();
            std::vector<float> last(V);
            const int p = (T + 1) / 2;
            m->prefill(*sp, ids.data(), T, last.data(), false, {{p, snap.get()}});
            ch.expect(std::memcmp(last.data(), steps.data() + static_cast<std::size_t>(T - 1) * V, sizeof(float) * V) == 0,
                      "prefill T=" + std::to_string(T) + " last logits != step" + tag);
            // snapshot == prefix prefill
            auto ref = m->new_state();
            m->prefill(*ref, ids.data(), p, nullptr, false, {});
            ch.expect(snap->equals(*ref), "snapshot at " + std::to_string(p) + " != prefix state" + tag);
        }
        // step_batch of 3 sequences at different positions == individual steps
        {
            std::unique_ptr<State> sb[3], ss[3];
            const int starts[3] = {0, 4, 9};
            for (int i = 0; i < 3; ++i) {
                sb[i] = m->new_state();
                ss[i] = m->new_state();
                if (starts[i]) {
                    m->prefill(*sb[i], ids.data() + i, starts[i], nullptr, false, {});
                    m->prefill(*ss[i], ids.data() + i, starts[i], nullptr, false, {});
                }
            }
            bool ok = true;
            for (int step = 0; step < 4; ++step) {
                State* ptrs[3] = {sb[0].get(), sb[1].get(), sb[2].get()};
                const int32_t toks[3] = {ids[step], ids[step + 10], ids[step + 20]};
                std::vector<float> lb(3 * static_cast<std::size_t>(V)), ls(V);
                m->step_batch(ptrs, toks, 3, lb.data());
                for (int i = 0; i < 3; ++i) {
                    m->step(*ss[i], toks[i], ls.data());
                    ok &= std::memcmp(lb.data() + static_cast<std::size_t>(i) * V, ls.data(), sizeof(float) * V) == 0;
                    ok &= sb[i]->equals(*ss[i]);
                }
            }
            ch.expect(ok, "step_batch != step" + tag);
        }
    }
    // 2 threads give the same bits as 1 thread
    auto s2 = m2->new_state();
    const std::vector<float> steps2 = run_steps(*m2, ids, *s2);
    ch.expect(steps2 == steps && s2->equals(*s_step), "2 threads != 1 thread (steps)");
}

void test_model_vs_scalar(const ModelSpec& spec, const KernelSet& S, const KernelSet& V, const std::vector<int32_t>& ids) {
    Check ch(spec.name + "[" + V.name + "] logits vs scalar, rel 1e-3");
    auto ms = spec.build(*spec.tensors, 1, &S);
    auto mv = spec.build(*spec.tensors, 2, &V);
    auto ss = ms->new_state(), sv = mv->new_state();
    const std::vector<float> ls = run_steps(*ms, ids, *ss);
    const std::vector<float> lv = run_steps(*mv, ids, *sv);
    const int Vn = spec.vocab;
    double worst = 0;
    int argmax_agree = 0;
    for (std::size_t t = 0; t < ids.size(); ++t) {
        const float* a = lv.data() + t * Vn;
        const float* b = ls.data() + t * Vn;
        const double e = rel_err(a, b, Vn);
        worst = std::max(worst, e);
        argmax_agree += S.argmax(a, Vn) == S.argmax(b, Vn);
        ch.expect(e < kModelRelTol, "token " + std::to_string(t) + fmt(" rel err %.3g", e));
    }
    // The recurrent state stays close too (relative to its magnitude).
    double smax = 0;
    for (std::size_t i = 0; i < ss->n_floats(); ++i) smax = std::max(smax, std::fabs(static_cast<double>(ss->data()[i])));
    const double sdiff = sv->max_abs_diff(*ss) / (smax > 0 ? smax : 1.0);
    ch.expect(sdiff < kModelRelTol, fmt("state rel diff %.3g", sdiff));
    ch.note(fmt("worst rel err %.2e", worst) + fmt(", state %.2e", sdiff) + ", greedy token agrees " +
            std::to_string(argmax_agree) + "/" + std::to_string(ids.size()));
}

}  // namespace

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // keep the lines printed before a crash
    if (argc > 1 && std::strcmp(argv[1], "--list-levels") == 0) {  // baseline code only: runs on any CPU
        list_levels();
        return 0;
    }
    if (argc > 1 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0)) {
        std::printf("usage: %s [seed] | --list-levels\n", argv[0]);
        return 0;
    }
    const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
    // Before anything touches the level's code: on a CPU without it, that code may fault.
    if (!simd_supported_by_cpu()) {
        std::printf("SKIP: this CPU does not support the level this self-test was built for (%s: it lacks %s)\n",
                    simd_build_level(), simd_missing_cpu_features().c_str());
        return 77;
    }
    const KernelSet& S = scalar_kernels();
    const KernelSet& V = best_kernels();
    std::printf("bitmamba selftest: level %s (vs scalar), seed %llu\n", V.name, static_cast<unsigned long long>(seed));
    test_cpu_detector();

    const std::vector<TernaryCase> cases = ternary_cases();
    for (int threads : {1, 2}) {
        test_ternary(V, V.name, threads, cases, seed * 1000 + 1);
        test_i8gemv(V, V.name, threads, seed * 1000 + 2);
    }
    if (&S != &V) {  // the reference itself against the naive int64 products
        test_ternary(S, "scalar", 1, cases, seed * 1000 + 3);
        test_i8gemv(S, "scalar", 1, seed * 1000 + 4);
    }
    test_level_table(V);
    test_quantize(S, V);
    test_float_helpers(S, V);
    test_argmax(S, V);
    for (const KernelSet* A : carried_kernels()) test_floats_equal_carried(*A, V, seed * 1000 + 8);

    std::vector<int32_t> ids;
    Rng rng(seed * 1000 + 5);
    ModelSpec specs[2];
    specs[0] = {"bitmamba2", kB2Vocab, bitmamba2_tensors(seed * 1000 + 6), build_bitmamba2};
    specs[1] = {"mamba1", kM1Vocab, mamba1_tensors(seed * 1000 + 7), build_mamba1};
    for (const ModelSpec& spec : specs) {
        ids.resize(70);
        for (auto& t : ids) t = rng.range(0, spec.vocab - 1);
        test_model_consistency(spec, V, ids);
        if (&S != &V) {
            test_model_consistency(spec, S, ids);
            test_model_vs_scalar(spec, S, V, ids);
        }
    }

    std::printf("%s: %d/%d checks passed (level %s)\n", g_failed_checks ? "FAILED" : "PASSED", g_checks - g_failed_checks,
                g_checks, V.name);
    return g_failed_checks ? 1 : 0;
}
