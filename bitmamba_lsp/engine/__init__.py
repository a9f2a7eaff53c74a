"""The engine: model loading, the C++ forward pass, tokenizers, checkpoints and the decode loop."""

from bitmamba_lsp.engine.decoding import GenerationConfig, StopReason, TextStream, TokenStream
from bitmamba_lsp.engine.errors import ModelFormatError, ModelNotFoundError
from bitmamba_lsp.engine.loader import load
from bitmamba_lsp.engine.model import Model, State

__all__ = [
    "GenerationConfig",
    "Model",
    "ModelFormatError",
    "ModelNotFoundError",
    "State",
    "StopReason",
    "TextStream",
    "TokenStream",
    "load",
]
