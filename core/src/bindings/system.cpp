// Build and machine facts: the SIMD level, the CPU check, thread count, read bandwidth.
#include "bindings.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "bitmamba/common.h"
#include "bitmamba/simd_levels.h"
#include "bitmamba/threadpool.h"

namespace bm::bindings {

namespace {

// "SIMD level the extension was built for: scalar, avx2, ... (core/simd_levels.txt)"
const char* simd_level_doc() {
    static const std::string doc = [] {
        std::string d = "SIMD level the extension was built for: ";
        const auto& table = simd_level_table();
        for (std::size_t i = 1; i < table.size(); ++i) d += (i > 1 ? ", " : "") + table[i][0];
        return d + " (core/simd_levels.txt)";
    }();
    return doc.c_str();
}

}  // namespace

void bind_system(py::module_& m) {
    m.def("simd_level", &simd_level, simd_level_doc());
    m.def("simd_supported_by_cpu", &simd_supported_by_cpu);
    m.def("simd_missing_cpu_features", &simd_missing_cpu_features,
          "The CPU features the built level needs and this CPU lacks, comma-separated ('' if none)");
    m.def("host_cpu_features", &host_cpu_features,
          "Optional features of the build's ISA family this CPU has, /proc/cpuinfo spelling (CPUID on x86)");
    m.def("default_threads", &ThreadPool::default_threads);
    m.def(
        "read_bandwidth",
        [](std::size_t bytes, int threads, int repeats) {
            // Sustained read bandwidth over a cyclic buffer of `bytes` (the roofline of decode):
            // the same thread pool as the model, 64-bit loads summed so nothing is optimized out.
            if (bytes < 4096 || bytes > (std::size_t(1) << 34)) throw std::invalid_argument("bytes out of range");
            if (threads < 1 || repeats < 1) throw std::invalid_argument("threads and repeats must be >= 1");
            const std::size_t n = bytes / 64;
            AlignedBuffer<uint64_t> buf(n * 8);
            for (std::size_t i = 0; i < n * 8; ++i) buf[i] = i;
            ThreadPool pool(threads);
            std::vector<uint64_t> sink(threads * 8, 0);
            std::vector<double> secs;
            py::gil_scoped_release nogil;
            for (int r = 0; r < repeats + 1; ++r) {
                const auto t0 = std::chrono::steady_clock::now();
                pool.parallel_for(static_cast<int>(n / 1024), 16, [&](int b, int e, int slot) {
                    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
                    const uint64_t* p = buf.data() + static_cast<std::size_t>(b) * 1024 * 8;
                    const uint64_t* end = buf.data() + static_cast<std::size_t>(e) * 1024 * 8;
                    for (; p < end; p += 8) {
                        a0 += p[0] ^ p[4];
                        a1 += p[1] ^ p[5];
                        a2 += p[2] ^ p[6];
                        a3 += p[3] ^ p[7];
                    }
                    sink[static_cast<std::size_t>(slot) * 8] += a0 + a1 + a2 + a3;
                });
                const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                if (r > 0) secs.push_back(s);  // the first pass warms the pool and the TLB
            }
            uint64_t total = 0;
            for (uint64_t v : sink) total += v;
            std::sort(secs.begin(), secs.end());
            const double used = static_cast<double>(n / 1024) * 1024 * 64;
            py::gil_scoped_acquire gil;
            py::dict d;
            d["best_gbs"] = used / secs.front() / 1e9;
            d["median_gbs"] = used / secs[secs.size() / 2] / 1e9;
            d["checksum"] = total;
            return d;
        },
        py::arg("bytes"), py::arg("threads") = 1, py::arg("repeats") = 10,
        "Sustained read bandwidth (GB/s) over a cyclic buffer, using the engine's thread pool.");
}

}  // namespace bm::bindings
