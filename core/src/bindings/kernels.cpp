// The kernels one by one, on a chosen kernel set (tests compare levels; benchmarks time them).
#include "bindings.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "bitmamba/common.h"
#include "bitmamba/simd_levels.h"
#include "bitmamba/threadpool.h"

namespace bm::bindings {

const KernelSet& kernels_by_name(const std::string& level) {
    if (level == "simd" || level == "best") return best_kernels();
    // "scalar", the built level, or one it carries (core/simd_levels.txt: an avx512 build has avx2)
    if (const KernelSet* k = kernels_named(level)) return *k;
    throw std::invalid_argument("unknown kernel level '" + level + "' (use 'scalar' or 'simd')");
}

namespace {

// The packed ternary layout (kernels.h): build from int8 values or file codes, unpack, raw bytes.
void bind_packed_matrix(py::module_& m) {
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
}

// Each slot of KernelSet on NumPy arrays, with the kernel set named by `level`.
void bind_kernel_functions(py::module_& m) {
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
        "fgemv_t_acc",
        [](carray<float> Wt, carray<float> a, carray<float> y, float alpha, int j0, int j1, const std::string& level) {
            if (Wt.ndim() != 2 || a.ndim() != 1 || y.ndim() != 1 || Wt.shape(0) != a.shape(0) ||
                Wt.shape(1) != y.shape(0))
                throw std::invalid_argument("Wt [rank, cols], a [rank], y [cols]");
            const int rank = static_cast<int>(Wt.shape(0)), cols = static_cast<int>(Wt.shape(1));
            if (j1 < 0) j1 = cols;
            if (j0 < 0 || j0 > j1 || j1 > cols) throw std::invalid_argument("need 0 <= j0 <= j1 <= cols");
            py::array_t<float> out(cols);
            std::memcpy(out.mutable_data(), y.data(), sizeof(float) * cols);
            kernels_by_name(level).fgemv_t_acc(Wt.data(), cols, rank, a.data(), alpha, out.mutable_data(), j0, j1);
            return out;
        },
        py::arg("Wt"), py::arg("a"), py::arg("y"), py::arg("alpha") = 1.0f, py::arg("j0") = 0, py::arg("j1") = -1,
        py::arg("level") = "simd", "y + alpha * (a @ Wt) on columns [j0, j1) (a copy of y), float32.");
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
}

}  // namespace

void bind_kernels(py::module_& m) {
    bind_packed_matrix(m);
    bind_kernel_functions(m);
}

}  // namespace bm::bindings
