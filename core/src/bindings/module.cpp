// The _core extension module: the CPU check, the exception type, then one bind_*() per concept.
#include "bindings.h"

#include <string>

#include "bitmamba/common.h"
#include "bitmamba/simd_levels.h"

PYBIND11_MODULE(_core, m) {
    using namespace bm::bindings;
    // First, before any level-compiled code runs: a build for a level the CPU lacks fails cleanly.
    if (!bm::simd_supported_by_cpu())
        throw py::import_error(std::string("bitmamba_lsp._core was built for a SIMD level this CPU does not support (") +
                               bm::simd_build_level() + ": " + bm::simd_build_options() + "; options " +
                               bm::simd_option_names() + "); rebuild with -DBITMAMBA_SIMD=auto");
    m.doc() = "bitmamba-lsp C++ engine: ternary kernels, BitMamba models, recurrent state, sampler";
    py::register_exception<bm::FormatError>(m, "FormatError", PyExc_ValueError);

    bind_system(m);
    bind_kernels(m);
    bind_state(m);
    bind_sampler(m);
    bind_model(m);
    bind_ngram(m);
}
