"""bitmamba-lsp: local code completion from a 1.58-bit Mamba model, served over LSP.

import bitmamba_lsp
m = bitmamba_lsp.load()                 # the default model shipped in the package
print(m.complete("def fibonacci(n):", max_tokens=32, temperature=0))
"""

from bitmamba_lsp import _core
from bitmamba_lsp.engine import GenerationConfig, Model, ModelNotFoundError, State, load

__version__ = "0.1.0"


def simd_level() -> str:
    """The kernel set this build uses: 'avx2'/'avx2-vnni', 'avx512'/'avx512-vnni', 'neon'/'neon-dotprod' or 'scalar'."""
    return _core.simd_level()


__all__ = ["GenerationConfig", "Model", "ModelNotFoundError", "State", "__version__", "load", "simd_level"]
