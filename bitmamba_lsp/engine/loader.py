"""Resolve what the user named (nothing, a file, a folder, a Hub repo id) into a loaded Model."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from bitmamba_lsp.engine.formats.bitmamba_bin import ModelFormatError
from bitmamba_lsp.engine.model import Model, load_bin
from bitmamba_lsp.engine.tokenizer import TextTokenizer, bundled_text_tokenizer

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "default"
GPT2_VOCAB = 50257
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(FileNotFoundError):
    """The named model could not be found (or downloaded). The message says what to do."""


def is_default(source: str | os.PathLike[str] | None) -> bool:
    return source is None or str(source) in ("", "default")


def load(
    source: str | os.PathLike[str] | None = None,
    *,
    threads: int | None = None,
    kernels: str = "simd",
    revision: str | None = None,
    lm_head: str = "int8",
) -> Model:
    """Load a model.

    source: None or "default" (the model shipped in the package), a ``.bin`` file, a folder
    holding one (with its ``tokenizer.json``), or a Hugging Face repo id such as
    ``Zhayr1/BitMamba-2-0.25B`` (downloaded once into the Hub cache; ``HF_HUB_OFFLINE=1`` works
    from the cache). threads: worker threads (0/None: one per core, or $BITMAMBA_THREADS).
    kernels: "simd" (the level built for this CPU) or "scalar" (the reference).
    lm_head: for checkpoints with a float output layer (bitmamba-student): "int8" (per-row
    quantized at load, 4x smaller) or "f32".
    """
    t0 = time.perf_counter()
    if is_default(source):
        if not (DEFAULT_MODEL_DIR / "model.bin").is_file():
            raise ModelNotFoundError(
                f"the default model is not installed ({DEFAULT_MODEL_DIR / 'model.bin'} is missing); "
                "pass a model path or repo id"
            )
        model = load_path(DEFAULT_MODEL_DIR, threads, kernels, name="bitmamba-default", lm_head=lm_head)
    else:
        path = Path(source).expanduser()
        if path.exists():
            model = load_path(path, threads, kernels, lm_head=lm_head)
        elif _REPO_ID.match(str(source)):
            from bitmamba_lsp.engine.hub import load_from_hub

            model = load_from_hub(
                str(source), threads=threads, kernels=kernels, revision=revision, lm_head=lm_head
            )
        else:
            raise ModelNotFoundError(
                f"model '{source}' not found: not a file, a folder or a Hub repo id (owner/name)"
            )
    model.load_seconds = time.perf_counter() - t0
    return model


def load_path(
    path: Path,
    threads: int | None = None,
    kernels: str = "simd",
    name: str | None = None,
    lm_head: str = "int8",
) -> Model:
    """Load a model file, or the model in a folder (a .bin, or config.json + safetensors)."""
    if path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        from bitmamba_lsp.engine.model import load_student

        model = load_student(
            path, threads=threads, kernels=kernels, lm_head=lm_head, name=name or _display_name(path)
        )
        model.tokenizer = find_tokenizer([path], model.vocab_size)
        return model
    if path.is_dir():
        candidates = [
            path / "model.bin",
            *sorted(path.glob("*.bin")),
            *sorted(path.glob("bitmamba_cpp/*.bin")),
        ]
        bins = [p for p in candidates if p.is_file() and p.name != "tokenizer.bin"]
        if not bins:
            raise ModelNotFoundError(f"no model file (*.bin) in folder {path}")
        file = bins[0]
        folder = path
    else:
        file, folder = path, path.parent
    if file.suffix != ".bin":
        raise ModelFormatError(f"{file}: unsupported model file type (expected a bitmamba.cpp .bin)")
    model = load_bin(file, threads=threads, kernels=kernels, name=name or _display_name(path))
    model.tokenizer = find_tokenizer([file.parent, folder], model.vocab_size)
    return model


def _display_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def find_tokenizer(folders: list[Path], vocab_size: int) -> TextTokenizer | None:
    """tokenizer.json or tokenizer.bin beside the model, else the bundled GPT-2 vocabulary when the
    model has GPT-2's vocabulary size, else None (the model then takes token ids only)."""
    for folder in folders:
        for name in ("tokenizer.json", "tokenizer.bin"):
            if (folder / name).is_file():
                return TextTokenizer.from_path(folder / name)
    if vocab_size == GPT2_VOCAB:
        return bundled_text_tokenizer()
    return None
