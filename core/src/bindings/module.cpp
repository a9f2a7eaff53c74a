// The _core extension module: the CPU check, the exception type, then one bind_*() per concept.
#include "bindings.h"

#include <string>

#include "bitmamba/common.h"
#include "bitmamba/simd_levels.h"

PYBIND11_MODULE(_core, m) {
    using namespace bm::bindings;
    // First, before any level-compiled code runs: a build for a level the CPU lacks fails cleanly.
    if (!bm::simd_supported_by_cpu())
        throw py::import_error(std::string("bitmamba_lsp._core was built for the SIMD level ") + bm::simd_build_level() +
                               " (" + bm::simd_build_options() + "), which this CPU cannot run: it lacks " +
                               bm::simd_missing_cpu_features() +
                               ". Reinstall on this machine (BITMAMBA_SIMD=auto, the default, picks what it has) "
                               "or with BITMAMBA_SIMD=scalar; options: " + bm::simd_option_names());
    m.doc() = "bitmamba-lsp C++ engine: ternary kernels, BitMamba models, recurrent state, sampler";
    py::register_exception<bm::FormatError>(m, "FormatError", PyExc_ValueError);

    bind_system(m);
    bind_kernels(m);
    bind_rates(m);
    bind_state(m);
    bind_sampler(m);
    bind_model(m);
    bind_ngram(m);
    bind_bpe(m);
}
