"""bitmamba-lsp: local code completion from a 1.58-bit Mamba model, served over LSP.

import bitmamba_lsp
m = bitmamba_lsp.load()                 # the default model shipped in the package
print(m.complete("def fibonacci(n):", max_tokens=32, temperature=0))

The engine (and NumPy with it) is imported on first use of one of its names, so that a command that
needs none of it (`bitmamba-lsp --warm` handing its stdio to a warm daemon) starts in milliseconds.
The C++ core is imported here: on a CPU that lacks the instructions this build was compiled for,
`import bitmamba_lsp` raises a clear ImportError, never an illegal instruction later.
"""

from __future__ import annotations

from bitmamba_lsp import _core

TYPE_CHECKING = False  # typing itself costs 10 ms of a warm start
if TYPE_CHECKING:
    from typing import Any

    from bitmamba_lsp.engine import GenerationConfig, Model, ModelNotFoundError, State, load

__version__ = "0.1.0"

_ENGINE_NAMES = ("GenerationConfig", "Model", "ModelNotFoundError", "State", "load")


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from bitmamba_lsp import engine

        value = getattr(engine, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bitmamba_lsp' has no attribute {name!r}")


def simd_level() -> str:
    """The kernel set this build uses: 'avx2'/'avx2-vnni', 'avx512'/'avx512-vnni', 'neon'/'neon-dotprod' or 'scalar'."""
    return _core.simd_level()


__all__ = ["GenerationConfig", "Model", "ModelNotFoundError", "State", "__version__", "load", "simd_level"]
