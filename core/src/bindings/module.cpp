// The _core extension module: the CPU check, the exception type, then one bind_*() per concept.
#include "bindings.h"

#include "bitmamba/common.h"

PYBIND11_MODULE(_core, m) {
    using namespace bm::bindings;
    // First, before any level-compiled code runs: a build for a level the CPU lacks fails cleanly.
    if (!bm::simd_supported_by_cpu())
        throw py::import_error(
            "bitmamba_lsp._core was built for a SIMD level this CPU does not support (BITMAMBA_SIMD / "
            "BITMAMBA_AVX512_VNNI / BITMAMBA_NEON_DOTPROD); rebuild with -DBITMAMBA_SIMD=auto");
    m.doc() = "bitmamba-lsp C++ engine: ternary kernels, BitMamba models, recurrent state, sampler";
    py::register_exception<bm::FormatError>(m, "FormatError", PyExc_ValueError);

    bind_system(m);
    bind_kernels(m);
    bind_state(m);
    bind_sampler(m);
    bind_model(m);
}
