// The compute side of the roofline (read_bandwidth in system.cpp is the memory side): the peak rate
// of the level's dot-product instruction, and the rate its GEMM kernel reaches on a packed matrix.
// Benchmarks only (bench_engine.py: the MAC bound of a batched verification step).
#include "bindings.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "bitmamba/common.h"
#include "bitmamba/threadpool.h"

namespace bm::bindings {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

py::dict rates(const std::vector<double>& secs, double work) {
    std::vector<double> s = secs;
    std::sort(s.begin(), s.end());
    py::dict d;
    d["best_s"] = s.front();
    d["median_s"] = s[s.size() / 2];
    d["best_gmacs"] = work / s.front() / 1e9;
    d["median_gmacs"] = work / s[s.size() / 2] / 1e9;
    return d;
}

}  // namespace

void bind_rates(py::module_& m) {
    m.def(
        "dot_peak",
        [](int threads, int repeats, double ms) -> py::object {
            // Every thread of the pool runs the same burst at once; a repeat's rate is all threads' MACs
            // over its wall time (a thread the OS did not schedule shows as a slower repeat).
            if (threads < 1 || threads > 256 || repeats < 1 || !(ms > 0) || ms > 10000)
                throw std::invalid_argument("threads in [1, 256], repeats >= 1, ms in (0, 10000]");
            const KernelSet& k = best_kernels();
            if (!k.dot_burst) return py::none();
            std::vector<double> secs;
            int64_t rounds = 0, sink = 0;
            {
                py::gil_scoped_release nogil;
                // calibrate on one thread: rounds that take about `ms` milliseconds (the fastest of three
                // tries of a burst over 5 ms, so that a preempted try does not shorten the measurement)
                int64_t probe = 1 << 16;
                for (;;) {
                    double s = 1e30;
                    for (int i = 0; i < 3; ++i) {
                        const auto t0 = std::chrono::steady_clock::now();
                        sink += k.dot_burst(probe);
                        s = std::min(s, seconds_since(t0));
                    }
                    if (s > 5e-3 || probe > (int64_t(1) << 40)) {
                        rounds = std::max<int64_t>(1, static_cast<int64_t>(probe * (ms / 1e3) / s));
                        break;
                    }
                    probe *= 4;
                }
                ThreadPool pool(threads);
                std::vector<int64_t> part(threads, 0);
                for (int r = 0; r < repeats + 1; ++r) {
                    const auto t0 = std::chrono::steady_clock::now();
                    pool.parallel_for(threads, 1, [&](int b, int e, int slot) {
                        for (int i = b; i < e; ++i) part[slot] += k.dot_burst(rounds);
                    });
                    if (r > 0) secs.push_back(seconds_since(t0));  // the first pass starts the workers
                }
                for (int64_t v : part) sink += v;
            }
            py::dict d = rates(secs, static_cast<double>(rounds) * k.dot_macs_per_round * threads);
            d["instruction"] = k.dot_instruction;
            d["macs_per_round"] = k.dot_macs_per_round;
            d["threads"] = threads;
            d["checksum"] = sink;
            return std::move(d);
        },
        py::arg("threads") = 1, py::arg("repeats") = 5, py::arg("ms") = 50.0,
        "Peak int8 multiply-adds per second of the build's dot-product instruction (vpdpbusd) on "
        "`threads` threads: dict of best/median seconds and GMAC/s, or None where the level has no probe.");
    m.def(
        "gemm_rate",
        [](const PackedMatrix& w, int tokens, int threads, int repeats) {
            // The level's GEMM alone on `tokens` tokens (padded to the tile), split over the pool the
            // way the model splits a batched product; the same activations every repeat.
            if (tokens < 1 || tokens > 4096 || threads < 1 || threads > 256 || repeats < 1)
                throw std::invalid_argument("tokens in [1, 4096], threads in [1, 256], repeats >= 1");
            const KernelSet& k = best_kernels();
            const int T = round_up(tokens, kGemmTokens);
            AlignedBuffer<int8_t> X(static_cast<std::size_t>(T) * w.cols_pad);
            AlignedBuffer<int32_t> sums(T);
            uint32_t h = 12345;
            for (int t = 0; t < T; ++t)
                for (int c = 0; c < w.cols_pad; ++c) {
                    h = h * 1664525u + 1013904223u;
                    const int8_t v = c < w.cols ? static_cast<int8_t>(h >> 24) : 0;
                    X[static_cast<std::size_t>(t) * w.cols_pad + c] = v;
                    sums[t] += v;
                }
            AlignedBuffer<int32_t> Y(static_cast<std::size_t>(T) * w.rows_pad);
            std::vector<double> secs;
            {
                py::gil_scoped_release nogil;
                ThreadPool pool(threads);
                AlignedBuffer<uint8_t> scratch(static_cast<std::size_t>(pool.size()) * kRowGroup * w.cols_pad);
                for (int r = 0; r < repeats + 1; ++r) {
                    const auto t0 = std::chrono::steady_clock::now();
                    pool.parallel_for(w.groups, pool.grain_for(w.groups), [&](int g0, int g1, int slot) {
                        k.gemm(w, X.data(), sums.data(), T, Y.data(), w.rows_pad, g0, g1,
                               scratch.data() + static_cast<std::size_t>(slot) * kRowGroup * w.cols_pad);
                    });
                    if (r > 0) secs.push_back(seconds_since(t0));
                }
            }
            py::dict d = rates(secs, static_cast<double>(w.rows) * w.cols * tokens);
            d["tokens"] = tokens;
            d["threads"] = threads;
            d["level"] = k.name;
            return d;
        },
        py::arg("w"), py::arg("tokens"), py::arg("threads") = 1, py::arg("repeats") = 7,
        "Time the build's GEMM (the best level, whatever a model was built with) on `tokens` tokens of a packed matrix: dict of best/median seconds and "
        "GMAC/s (rows x cols x tokens multiply-adds; padding not counted).");
}

}  // namespace bm::bindings
