"""What a model format module provides to the loader and the Hub resolver."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bitmamba_lsp.engine.model import Model

# Files of a model repository that hold a tokenizer (any format may use them).
TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.bin", "special_tokens_map.json")


@dataclass(frozen=True)
class LoadOptions:
    threads: int | None = None  # None/0: one per core, or $BITMAMBA_THREADS
    kernels: str = "simd"  # "simd" (the level built for this CPU) or "scalar" (the reference)
    lm_head: str = "int8"  # float output layers: "int8" (per-row quantized at load) or "f32"
    repeat: tuple[int, int, int] | None = None  # (start, end, count): layer repetition (RYS), BitMamba-2 only
    # called with the model's tokenizer once it is found (a .bin: on a thread, while the core
    # repacks the weights): what a caller derives from it (a daemon: the BPE, the healing table)
    prepare_tokenizer: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class ModelFormat:
    name: str
    # The file or folder to load from a local path (a file or a folder), or None: not this format.
    find: Callable[[Path], Path | None]
    # The files to fetch from a Hub repository listing, or [] when it holds no model of this format.
    hub_files: Callable[[list[str]], list[str]]
    # Build the model from what `find` returned and the folder it was found in (where a tokenizer
    # may sit); the last argument is the display name.
    load: Callable[[Path, Path, LoadOptions, str], Model]


def resolve_threads(threads: int | None) -> int:
    """Engine threads for a load: None means $BITMAMBA_THREADS, else 0 (one per core)."""
    if threads is None:
        env = os.environ.get("BITMAMBA_THREADS")
        threads = int(env) if env else 0
    if threads < 0:
        raise ValueError("threads must be >= 0 (0 = one per core)")
    return threads
