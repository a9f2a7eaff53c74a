"""The engine: model loading, the C++ forward pass, tokenizers and generation."""

from bitmamba_lsp.engine.generation import GenerationConfig, TextStream, TokenStream
from bitmamba_lsp.engine.loader import ModelNotFoundError, load
from bitmamba_lsp.engine.model import Model, State

__all__ = ["GenerationConfig", "Model", "ModelNotFoundError", "State", "TextStream", "TokenStream", "load"]
