// pybind11 bindings: argument conversion only. Every model call releases the GIL; C++ errors
// become Python exceptions (FormatError -> ValueError subclass, invalid_argument -> ValueError,
// out_of_range -> IndexError, bad_alloc -> MemoryError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "bitmamba/kernels.h"
#include "bitmamba/model.h"
#include "bitmamba/simd_levels.h"
#include "bitmamba/sampler.h"
#include "bitmamba/threadpool.h"

namespace py = pybind11;
using namespace bm;

namespace {

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

const KernelSet& kernels_by_name(const std::string& level) {
    if (level == "scalar") return scalar_kernels();
    if (level == "simd" || level == "best" || level == simd_level()) return best_kernels();
#if defined(BITMAMBA_LEVEL_AVX512)
    if (level == "avx2") return avx2_kernels();  // compiled in: the avx512 level reuses its float helpers
#endif
    throw std::invalid_argument("unknown kernel level '" + level + "' (use 'scalar' or 'simd')");
}

// Convert the loader's dict into TensorViews. Float arrays must already be float32 C-contiguous
// (they are views of the mapped file); ternary entries are tuples:
//   ("codes", uint8 [rows, ceil(cols/4)], cols, scale) or ("int8", int8 [rows, cols], scale).
TensorMap tensor_map(const py::dict& d, std::vector<py::object>& keep) {
    TensorMap out;
    for (auto item : d) {
        const std::string name = py::str(item.first);
        TensorView v;
        py::handle h = item.second;
        if (py::isinstance<py::tuple>(h)) {
            py::tuple t = py::reinterpret_borrow<py::tuple>(h);
            const std::string kind = py::str(t[0]);
            if (kind == "codes" && t.size() == 4) {
                auto a = py::array_t<uint8_t, py::array::c_style>::ensure(t[1]);
                if (!a || a.ndim() != 2) throw FormatError("tensor '" + name + "': packed codes must be a 2-D uint8 array");
                v.data = a.data();
                v.shape = {a.shape(0), a.shape(1)};
                v.dtype = "u8";
                v.cols = t[2].cast<int64_t>();
                v.scale = t[3].cast<float>();
                keep.push_back(a);
            } else if (kind == "int8" && t.size() == 3) {
                auto a = py::array_t<int8_t, py::array::c_style>::ensure(t[1]);
                if (!a || a.ndim() != 2) throw FormatError("tensor '" + name + "': ternary values must be a 2-D int8 array");
                v.data = a.data();
                v.shape = {a.shape(0), a.shape(1)};
                v.dtype = "i8";
                v.cols = a.shape(1);
                v.scale = t[2].cast<float>();
                keep.push_back(a);
            } else {
                throw FormatError("tensor '" + name + "': unknown ternary entry kind '" + kind + "'");
            }
        } else {
            py::array arr = py::reinterpret_borrow<py::array>(h);
            if (!py::isinstance<py::array>(h) || !arr.dtype().is(py::dtype::of<float>()) ||
                !(arr.flags() & py::array::c_style))
                throw FormatError("tensor '" + name + "': expected a C-contiguous float32 array");
            v.data = arr.data();
            for (py::ssize_t i = 0; i < arr.ndim(); ++i) v.shape.push_back(arr.shape(i));
            v.dtype = "f32";
            keep.push_back(arr);
        }
        out.emplace(name, std::move(v));
    }
    return out;
}

std::vector<int32_t> token_vector(const py::handle& tokens) {
    auto a = carray<int64_t>::ensure(tokens);
    if (!a) throw std::invalid_argument("tokens must be a sequence of integers");
    if (a.ndim() != 1) throw std::invalid_argument("tokens must be one-dimensional");
    std::vector<int32_t> out(a.shape(0));
    for (py::ssize_t i = 0; i < a.shape(0); ++i) {
        const int64_t v = a.at(i);
        if (v < INT32_MIN || v > INT32_MAX) throw std::out_of_range("token id " + std::to_string(v) + " is out of range");
        out[i] = static_cast<int32_t>(v);
    }
    return out;
}

py::array_t<float> new_f32(std::initializer_list<py::ssize_t> shape) { return py::array_t<float>(shape); }

}  // namespace

PYBIND11_MODULE(_core, m) {
    // First, before any level-compiled code runs: a build for a level the CPU lacks fails cleanly.
    if (!simd_supported_by_cpu())
        throw py::import_error(
            "bitmamba_lsp._core was built for a SIMD level this CPU does not support (BITMAMBA_SIMD / "
            "BITMAMBA_AVX512_VNNI / BITMAMBA_NEON_DOTPROD); rebuild with -DBITMAMBA_SIMD=auto");
    m.doc() = "bitmamba-lsp C++ engine: ternary kernels, BitMamba models, recurrent state, sampler";
    py::register_exception<FormatError>(m, "FormatError", PyExc_ValueError);

    m.def("simd_level", &simd_level, "SIMD level the extension was built for: avx512[-vnni], avx2[-vnni], neon[-dotprod], scalar");
    m.def("simd_supported_by_cpu", &simd_supported_by_cpu);
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

    // ------------------------------------------------------------------ kernels (tests, benchmarks)
    py::class_<PackedMatrix>(m, "PackedMatrix")
        .def_static(
            "from_int8",
            [](carray<int8_t> q) {
                if (q.ndim() != 2) throw std::invalid_argument("expected a 2-D int8 array");
                auto pm = std::make_unique<PackedMatrix>();
                packed_from_int8(*pm, q.data(), static_cast<int>(q.shape(0)), static_cast<int>(q.shape(1)), "matrix");
                return pm;
            },
            py::arg("values"))
        .def_static(
            "from_file_codes",
            [](carray<uint8_t> codes, int cols) {
                if (codes.ndim() != 2 || codes.shape(1) != (cols + 3) / 4)
                    throw std::invalid_argument("codes must be [rows, ceil(cols/4)] uint8");
                auto pm = std::make_unique<PackedMatrix>();
                packed_from_file_codes(*pm, codes.data(), static_cast<int>(codes.shape(0)), cols, "matrix");
                return pm;
            },
            py::arg("codes"), py::arg("cols"))
        .def("to_int8",
             [](const PackedMatrix& pm) {
                 py::array_t<int8_t> out({pm.rows, pm.cols});
                 packed_to_int8(pm, out.mutable_data());
                 return out;
             })
        .def("raw", [](const PackedMatrix& pm) { return py::bytes(reinterpret_cast<const char*>(pm.data.data()), pm.bytes()); })
        .def_readonly("rows", &PackedMatrix::rows)
        .def_readonly("cols", &PackedMatrix::cols)
        .def_readonly("rows_pad", &PackedMatrix::rows_pad)
        .def_readonly("cols_pad", &PackedMatrix::cols_pad)
        .def_property_readonly("nbytes", &PackedMatrix::bytes);

    m.def(
        "gemv",
        [](const PackedMatrix& w, carray<int8_t> x, const std::string& level, int threads) {
            if (x.ndim() != 1 || x.shape(0) != w.cols) throw std::invalid_argument("x must have `cols` int8 values");
            const KernelSet& k = kernels_by_name(level);
            AlignedBuffer<int8_t> xp(w.cols_pad);
            int32_t sum = 0;
            for (int i = 0; i < w.cols; ++i) {
                xp[i] = x.at(i);
                sum += xp[i];
            }
            AlignedBuffer<int32_t> y(w.rows_pad);
            {
                py::gil_scoped_release nogil;
                ThreadPool pool(threads);
                pool.parallel_for(w.groups, 1, [&](int g0, int g1, int) { k.gemv(w, xp.data(), sum, y.data(), g0, g1); });
            }
            py::array_t<int32_t> out(w.rows);
            std::memcpy(out.mutable_data(), y.data(), sizeof(int32_t) * w.rows);
            return out;
        },
        py::arg("w"), py::arg("x"), py::arg("level") = "simd", py::arg("threads") = 1,
        "y = W @ x for int8 x (exact int32). level: 'scalar' or 'simd'.");
    m.def(
        "gemm",
        [](const PackedMatrix& w, carray<int8_t> X, const std::string& level, int threads) {
            if (X.ndim() != 2 || X.shape(1) != w.cols) throw std::invalid_argument("X must be [T, cols] int8");
            const KernelSet& k = kernels_by_name(level);
            const int T = static_cast<int>(X.shape(0));
            const int Tp = round_up(std::max(T, 1), kGemmTokens);
            AlignedBuffer<int8_t> xp(static_cast<std::size_t>(Tp) * w.cols_pad);
            AlignedBuffer<int32_t> sums(Tp);
            for (int t = 0; t < T; ++t)
                for (int i = 0; i < w.cols; ++i) {
                    xp[static_cast<std::size_t>(t) * w.cols_pad + i] = X.at(t, i);
                    sums[t] += X.at(t, i);
                }
            AlignedBuffer<int32_t> Y(static_cast<std::size_t>(Tp) * w.rows_pad);
            {
                py::gil_scoped_release nogil;
                ThreadPool pool(threads);
                AlignedBuffer<uint8_t> scratch(static_cast<std::size_t>(pool.size()) * kRowGroup * w.cols_pad);
                pool.parallel_for(w.groups, 1, [&](int g0, int g1, int slot) {
                    k.gemm(w, xp.data(), sums.data(), Tp, Y.data(), w.rows_pad, g0, g1,
                           scratch.data() + static_cast<std::size_t>(slot) * kRowGroup * w.cols_pad);
                });
            }
            py::array_t<int32_t> out({T, w.rows});
            for (int t = 0; t < T; ++t)
                std::memcpy(out.mutable_data(t, 0), Y.data() + static_cast<std::size_t>(t) * w.rows_pad,
                            sizeof(int32_t) * w.rows);
            return out;
        },
        py::arg("w"), py::arg("X"), py::arg("level") = "simd", py::arg("threads") = 1,
        "Y = X @ W.T for int8 X [T, cols] (exact int32).");
    m.def(
        "fgemv",
        [](carray<float> W, carray<float> x, const std::string& level) {
            if (W.ndim() != 2 || x.ndim() != 1 || W.shape(1) != x.shape(0)) throw std::invalid_argument("W [rows, cols], x [cols]");
            const int rows = static_cast<int>(W.shape(0)), cols = static_cast<int>(W.shape(1));
            py::array_t<float> y(rows);
            kernels_by_name(level).fgemv(W.data(), cols, cols, x.data(), y.mutable_data(), 0, rows);
            return y;
        },
        py::arg("W"), py::arg("x"), py::arg("level") = "simd", "y = W @ x in float32.");
    m.def(
        "i8gemv",
        [](carray<int8_t> W, carray<int8_t> x, const std::string& level) {
            if (W.ndim() != 2 || x.ndim() != 1 || W.shape(1) != x.shape(0)) throw std::invalid_argument("W [rows, cols], x [cols]");
            const int rows = static_cast<int>(W.shape(0)), cols = static_cast<int>(W.shape(1));
            const int ld = round_up(cols, 32);
            AlignedBuffer<int8_t> wp(static_cast<std::size_t>(rows) * ld), xp(ld);
            for (int r = 0; r < rows; ++r) std::memcpy(wp.data() + static_cast<std::size_t>(r) * ld, W.data(r, 0), cols);
            std::memcpy(xp.data(), x.data(), cols);
            py::array_t<int32_t> y(rows);
            kernels_by_name(level).i8gemv(wp.data(), ld, ld, xp.data(), y.mutable_data(), 0, rows);
            return y;
        },
        py::arg("W"), py::arg("x"), py::arg("level") = "simd", "y = W @ x for int8 W and x (exact int32).");
    m.def(
        "quantize",
        [](carray<float> x, const std::string& level) {
            if (x.ndim() != 1) throw std::invalid_argument("x must be 1-D");
            const int n = static_cast<int>(x.shape(0));
            py::array_t<int8_t> q(n);
            int32_t sum = 0;
            const float sx = kernels_by_name(level).quantize(x.data(), n, q.mutable_data(), &sum);
            return py::make_tuple(q, sx, sum);
        },
        py::arg("x"), py::arg("level") = "simd", "Absmax int8 quantization: (q, sx, sum(q)).");
    m.def(
        "rmsnorm",
        [](carray<float> x, py::object w, float eps, const std::string& level) {
            if (x.ndim() != 1) throw std::invalid_argument("x must be 1-D");
            const int n = static_cast<int>(x.shape(0));
            carray<float> wa;
            if (!w.is_none()) {
                wa = carray<float>::ensure(w);
                if (!wa || wa.ndim() != 1 || wa.shape(0) != n) throw std::invalid_argument("w must match x");
            }
            py::array_t<float> y(n);
            kernels_by_name(level).rmsnorm(x.data(), w.is_none() ? nullptr : wa.data(), n, eps, y.mutable_data());
            return y;
        },
        py::arg("x"), py::arg("w") = py::none(), py::arg("eps") = 1e-6f, py::arg("level") = "simd");
    m.def(
        "silu",
        [](carray<float> x, const std::string& level) {
            py::array_t<float> y(x.size());
            std::memcpy(y.mutable_data(), x.data(), sizeof(float) * x.size());
            kernels_by_name(level).silu(y.mutable_data(), static_cast<int>(x.size()));
            return y;
        },
        py::arg("x"), py::arg("level") = "simd");
    m.def(
        "exp",
        [](carray<float> x, const std::string& level) {
            py::array_t<float> y(x.size());
            std::memcpy(y.mutable_data(), x.data(), sizeof(float) * x.size());
            kernels_by_name(level).exp(y.mutable_data(), static_cast<int>(x.size()));
            return y;
        },
        py::arg("x"), py::arg("level") = "simd");
    m.def(
        "argmax",
        [](carray<float> x, const std::string& level) {
            if (x.size() == 0) throw std::invalid_argument("argmax of an empty array");
            return kernels_by_name(level).argmax(x.data(), static_cast<int>(x.size()));
        },
        py::arg("x"), py::arg("level") = "simd");

    // ------------------------------------------------------------------ state
    py::class_<State>(m, "State")
        .def_property_readonly("nbytes", &State::n_bytes)
        .def_readwrite("n_tokens", &State::n_tokens)
        .def("copy",
             [](const State& s) {
                 auto c = std::make_unique<State>(s.layout());
                 c->copy_from(s);
                 return c;
             })
        .def("copy_from", &State::copy_from, py::arg("other"))
        .def("reset", &State::reset)
        .def("equals", &State::equals, py::arg("other"))
        .def("max_abs_diff", &State::max_abs_diff, py::arg("other"))
        .def("to_bytes", [](const State& s) { return py::bytes(s.to_bytes()); })
        .def(
            "load_bytes",
            [](State& s, py::bytes b) {
                std::string_view v = b;
                s.load_bytes(v.data(), v.size());
            },
            py::arg("data"))
        .def("to_numpy",
             [](const State& s) {
                 py::array_t<float> out(static_cast<py::ssize_t>(s.n_floats()));
                 std::memcpy(out.mutable_data(), s.data(), s.n_bytes());
                 return out;
             })
        .def("__eq__", [](const State& a, const State& b) { return a.equals(b); })
        .def("__repr__", [](const State& s) {
            return "<State n_tokens=" + std::to_string(s.n_tokens) + " bytes=" + std::to_string(s.n_bytes()) + ">";
        });

    // ------------------------------------------------------------------ sampler
    py::class_<Sampler>(m, "Sampler")
        .def(py::init([](int vocab, float temperature, int top_k, float top_p, float min_p, float repetition_penalty,
                         int penalty_window, std::vector<int32_t> protected_ids, uint64_t seed) {
                 SamplerConfig c;
                 c.temperature = temperature;
                 c.top_k = top_k;
                 c.top_p = top_p;
                 c.min_p = min_p;
                 c.repetition_penalty = repetition_penalty;
                 c.penalty_window = penalty_window;
                 c.protected_ids = std::move(protected_ids);
                 c.seed = seed;
                 return std::make_unique<Sampler>(vocab, c);
             }),
             py::arg("vocab_size"), py::arg("temperature") = 0.8f, py::arg("top_k") = 40, py::arg("top_p") = 0.9f,
             py::arg("min_p") = 0.05f, py::arg("repetition_penalty") = 1.0f, py::arg("penalty_window") = 256,
             py::arg("protected_ids") = std::vector<int32_t>{}, py::arg("seed") = 0)
        .def(
            "sample",
            [](Sampler& s, carray<float> logits) {
                if (logits.ndim() != 1 || logits.shape(0) != s.vocab_size())
                    throw std::invalid_argument("logits must have vocab_size values");
                std::vector<float> buf(logits.data(), logits.data() + logits.size());
                py::gil_scoped_release nogil;
                return s.sample(buf.data());
            },
            py::arg("logits"))
        .def("accept", &Sampler::accept, py::arg("token"))
        .def("reset_history", &Sampler::reset_history)
        .def("reseed", &Sampler::reseed, py::arg("seed"))
        .def_property_readonly("vocab_size", &Sampler::vocab_size);

    // ------------------------------------------------------------------ models
    py::class_<Model>(m, "Model")
        .def("new_state", &Model::new_state)
        .def(
            "step",
            [](Model& md, State& st, int64_t token) {
                if (token < 0 || token >= md.info().vocab_size)
                    throw std::out_of_range("token id " + std::to_string(token) + " is outside the vocabulary");
                py::array_t<float> logits(md.info().vocab_size);
                float* out = logits.mutable_data();
                {
                    py::gil_scoped_release nogil;
                    md.step(st, static_cast<int32_t>(token), out);
                }
                return logits;
            },
            py::arg("state"), py::arg("token"), "Consume one token; return the next-token logits.")
        .def(
            "set_profiling",
            [](Model& md, bool on) {
                std::lock_guard<std::mutex> lk(md.lock());
                md.set_profiling(on);
                md.clock().reset();
            },
            py::arg("on"), "Time the stages of every single-token step from now on (resets the totals).")
        .def(
            "profile",
            [](Model& md) {
                std::lock_guard<std::mutex> lk(md.lock());
                const StageClock& c = md.clock();
                py::dict d;
                const char* names[kStageCount] = {"norm_quantize", "matmul", "lm_head", "conv_scan", "step", "sampling"};
                for (int i = 0; i < kStageCount; ++i) d[names[i]] = c.ns[i] / 1e6;  // milliseconds
                d["steps"] = c.steps;
                return d;
            },
            "Total milliseconds per stage since set_profiling(True), and the number of steps.")
        .def(
            "step_sample",
            [](Model& md, State& st, int64_t token, Sampler& sampler) {
                if (token < 0 || token >= md.info().vocab_size)
                    throw std::out_of_range("token id " + std::to_string(token) + " is outside the vocabulary");
                if (sampler.vocab_size() != md.info().vocab_size)
                    throw std::invalid_argument("sampler vocabulary size differs from the model's");
                py::gil_scoped_release nogil;
                md.step(st, static_cast<int32_t>(token), sampler.logits_buffer());
                if (!md.profiling()) return sampler.sample(sampler.logits_buffer());
                const int64_t t0 = StageClock::now();
                const int32_t next = sampler.sample(sampler.logits_buffer());
                md.clock().add(kStageSample, t0, StageClock::now());
                return next;
            },
            py::arg("state"), py::arg("token"), py::arg("sampler"),
            "Consume one token and sample the next with `sampler` (logits stay in C++).")
        .def(
            "prefill",
            [](Model& md, State& st, py::handle tokens, bool logits, bool all_logits,
               std::vector<int> snapshot_at) -> py::tuple {
                std::vector<int32_t> ids = token_vector(tokens);
                const int T = static_cast<int>(ids.size());
                if (T == 0) throw std::invalid_argument("prefill needs at least one token");
                const int V = md.info().vocab_size;
                py::object out = py::none();
                float* lp = nullptr;
                if (all_logits) {
                    auto a = py::array_t<float>({T, V});
                    lp = a.mutable_data();
                    out = a;
                } else if (logits) {
                    auto a = py::array_t<float>(V);
                    lp = a.mutable_data();
                    out = a;
                }
                std::vector<std::unique_ptr<State>> snaps;
                std::vector<std::pair<int, State*>> sp;
                for (int p : snapshot_at) {
                    snaps.push_back(md.new_state());
                    sp.emplace_back(p, snaps.back().get());
                }
                {
                    py::gil_scoped_release nogil;
                    md.prefill(st, ids.data(), T, lp, all_logits, sp);
                }
                py::list states;
                for (auto& s : snaps) states.append(py::cast(std::move(s)));
                return py::make_tuple(out, states);
            },
            py::arg("state"), py::arg("tokens"), py::arg("logits") = true, py::arg("all_logits") = false,
            py::arg("snapshot_at") = std::vector<int>{},
            "Consume tokens with batched matrix products. Returns (logits or None, [states after "
            "snapshot_at[i] tokens]).")
        .def(
            "step_batch",
            [](Model& md, std::vector<State*> states, py::handle tokens) {
                std::vector<int32_t> ids = token_vector(tokens);
                if (ids.size() != states.size()) throw std::invalid_argument("one token per state");
                const int n = static_cast<int>(ids.size());
                auto logits = py::array_t<float>({n, md.info().vocab_size});
                float* lp = logits.mutable_data();
                {
                    py::gil_scoped_release nogil;
                    md.step_batch(states.data(), ids.data(), n, lp);
                }
                return logits;
            },
            py::arg("states"), py::arg("tokens"), "One token for each of several states, batched: logits [n, vocab].")
        .def_property("threads", &Model::threads, [](Model& md, int n) {
            py::gil_scoped_release nogil;
            md.set_threads(n);
        })
        .def_property(
            "kernel_level", [](const Model& md) { return std::string(md.kernels().name); },
            [](Model& md, const std::string& level) {
                std::lock_guard<std::mutex> lk(md.lock());
                md.set_kernels(&kernels_by_name(level));
            })
        .def_property_readonly("weight_bytes", &Model::weight_bytes)
        .def_property_readonly("state_bytes", [](const Model& md) { return md.state_layout().total_floats() * sizeof(float); })
        .def_property_readonly("vocab_size", [](const Model& md) { return md.info().vocab_size; })
        .def_property_readonly("info", [](const Model& md) {
            py::dict d;
            d["arch"] = md.info().arch;
            d["vocab_size"] = md.info().vocab_size;
            d["d_model"] = md.info().d_model;
            d["n_layers"] = md.info().n_layers;
            for (const auto& kv : md.info().dims) d[py::str(kv.first)] = kv.second;
            return d;
        });

    m.def(
        "build_bitmamba2",
        [](py::dict tensors, int vocab, int d_model, int n_layers, int n_heads, int threads, const std::string& level) {
            std::vector<py::object> keep;
            TensorMap tm = tensor_map(tensors, keep);
            const KernelSet* k = &kernels_by_name(level);
            py::gil_scoped_release nogil;
            return make_bitmamba2(tm, vocab, d_model, n_layers, n_heads, threads, k);
        },
        py::arg("tensors"), py::arg("vocab_size"), py::arg("d_model"), py::arg("n_layers"), py::arg("n_heads"),
        py::arg("threads") = 0, py::arg("level") = "simd", py::keep_alive<0, 1>(),
        "Build a BitMamba-2 model. Keeps `tensors` alive: the embedding stays a view of the mapped file.");
    m.def(
        "build_mamba1",
        [](py::dict tensors, py::dict config, int threads, const std::string& level) {
            Mamba1Config c;
            auto geti = [&](const char* k, int& dst) {
                if (config.contains(k)) dst = config[k].cast<int>();
            };
            geti("vocab_size", c.vocab_size);
            geti("d_model", c.d_model);
            geti("n_layers", c.n_layers);
            geti("d_inner", c.d_inner);
            geti("d_state", c.d_state);
            geti("dt_rank", c.dt_rank);
            geti("d_conv", c.d_conv);
            if (config.contains("norm_eps")) c.norm_eps = config["norm_eps"].cast<float>();
            if (config.contains("gate")) c.gate = config["gate"].cast<std::string>();
            if (config.contains("quantize")) c.quantize = config["quantize"].cast<bool>();
            if (config.contains("lm_head")) c.lm_head = config["lm_head"].cast<std::string>();
            std::vector<py::object> keep;
            TensorMap tm = tensor_map(tensors, keep);
            const KernelSet* k = &kernels_by_name(level);
            py::gil_scoped_release nogil;
            return make_mamba1(tm, c, threads, k);
        },
        py::arg("tensors"), py::arg("config"), py::arg("threads") = 0, py::arg("level") = "simd",
        py::keep_alive<0, 1>(), "Build a Mamba-1 model with BitLinear projections (bitmamba-student).");
}
