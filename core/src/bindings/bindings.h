// Shared by the binding files (one per concept: system, kernels, state, sampler, model, ngram), each
// defining one bind_*() that module.cpp calls. Bindings convert arguments only: every model call
// releases the GIL, and C++ errors become Python exceptions at the boundary (FormatError ->
// _core.FormatError, a ValueError subclass, registered in module.cpp; pybind11's own translations:
// invalid_argument -> ValueError, out_of_range -> IndexError, bad_alloc -> MemoryError).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bitmamba/kernels.h"

namespace bm::bindings {

namespace py = pybind11;

// A C-contiguous array of T, converted (copied) from any array-like.
template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// The `level` argument of the kernel functions and models: "scalar", "simd"/"best" or the built
// level's name, or a level the build carries (core/simd_levels.txt; avx512: "avx2"). Else
// invalid_argument.
const KernelSet& kernels_by_name(const std::string& level);

// In module order: a type is bound before the functions whose signatures name it.
void bind_system(py::module_& m);   // simd_level, simd_supported_by_cpu, default_threads, read_bandwidth
void bind_kernels(py::module_& m);  // PackedMatrix and the kernels one by one (tests, benchmarks)
void bind_rates(py::module_& m);    // dot_peak, gemm_rate: the compute roof (benchmarks)
void bind_state(py::module_& m);    // State
void bind_sampler(py::module_& m);  // Sampler
void bind_model(py::module_& m);    // Model, build_bitmamba2, build_mamba1
void bind_ngram(py::module_& m);    // NGramIndex (the daemon's cache language model)
void bind_bpe(py::module_& m);      // AsciiBpe (GPT-2's BPE for ASCII text: a daemon's first request)

}  // namespace bm::bindings
