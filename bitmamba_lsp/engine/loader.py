"""Resolve what the user named (nothing, a file, a folder, a Hub repo id, a file of a Hub repo)
into a loaded Model.

The formats are tried in the order of `FORMATS`; each says whether a path holds a model of its
kind (`find`), which files of a Hub repository it needs (`hub_files`) and how it loads (`load`).
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bitmamba_lsp.engine import hub
from bitmamba_lsp.engine.errors import HubError, ModelFormatError, ModelNotFoundError
from bitmamba_lsp.engine.formats import bitmamba_bin, flax_msgpack, student
from bitmamba_lsp.engine.formats.base import TOKENIZER_PATTERNS, LoadOptions, ModelFormat
from bitmamba_lsp.engine.model import Model

# BitMamba-2 first: its Hub repositories also hold config.json and PyTorch safetensors. The Flax
# msgpack last: a folder or repository with a .bin as well loads the .bin (no conversion at load).
FORMATS: tuple[ModelFormat, ...] = (bitmamba_bin.FORMAT, student.FORMAT, flax_msgpack.FORMAT)
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "default"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# owner/name:path/in/repo (or a glob such as owner/name:*.msgpack): that one file of the repository.
_REPO_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+):([^:]+)$")


def is_default(source: str | os.PathLike[str] | None) -> bool:
    return source is None or str(source) in ("", "default")


def check_repeat(repeat: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    """The repetition as (start, end, count), or None for none; a clear error for a bad one."""
    if repeat is None:
        return None
    try:
        start, end, count = (int(x) for x in repeat)
    except (TypeError, ValueError):
        raise ModelFormatError(f"repeat must be (start, end, count), got {repeat!r}") from None
    if count == 0:
        return None
    if count < 0 or start < 0 or end < start:
        raise ModelFormatError(f"repeat: need 0 <= start <= end and count >= 0, got start={start} end={end} count={count}")
    return (start, end, count)


def load(
    source: str | os.PathLike[str] | None = None,
    *,
    threads: int | None = None,
    kernels: str = "simd",
    revision: str | None = None,
    lm_head: str = "int8",
    repeat: tuple[int, int, int] | None = None,
    lora: str | os.PathLike[str] | None = None,
    prepare_tokenizer: Callable[[Any], None] | None = None,
) -> Model:
    """Load a model.

    source: None or "default" (the model shipped in the package), a ``.bin`` file, a folder
    holding one (with its ``tokenizer.json``), a bitmamba-student folder (config.json +
    safetensors), a Flax ``.msgpack`` checkpoint of BitMamba-2 (converted at load), or a Hugging
    Face repo id such as ``Zhayr1/BitMamba-2-0.25B`` (downloaded once into the Hub cache;
    ``HF_HUB_OFFLINE=1`` works from the cache), optionally naming one file of it:
    ``Zhayr1/BitMamba-2-0.25B:jax_weights/bitmamba_255m.msgpack`` or ``...:*.msgpack`` (that file
    and the tokenizer files only, whatever else the repository holds). threads: worker threads
    (0/None: one per core, or $BITMAMBA_THREADS). kernels: "simd" (the level built for this CPU)
    or "scalar" (the reference). lm_head: for checkpoints with a float output layer
    (bitmamba-student): "int8" (per-row quantized at load, 4x smaller) or "f32". repeat: (start,
    end, count): layers start..end (inclusive, 0-based) run `count` extra times right after `end`,
    each pass with its own state and no extra weight memory (bitmamba.cpp's --repeat-start/-end/
    -count; BitMamba-2 models only). lora: a LoRA adapter file in bitmamba.cpp's format
    (``--lora FILE``; engine/lora.py), applied to every block's in_proj and out_proj (BitMamba-2
    models only; with a repetition, on every pass of a layer). prepare_tokenizer: called with the
    model's tokenizer as soon as it is found (for a ``.bin``, on a thread while the weights are
    repacked): what the caller derives from it is then ready when the load returns.
    """
    t0 = time.perf_counter()
    opts = LoadOptions(
        threads=threads, kernels=kernels, lm_head=lm_head, repeat=check_repeat(repeat), prepare_tokenizer=prepare_tokenizer
    )
    if is_default(source):
        if not (DEFAULT_MODEL_DIR / "model.bin").is_file():
            raise ModelNotFoundError(
                f"the default model is not installed ({DEFAULT_MODEL_DIR / 'model.bin'} is missing); "
                "pass a model path or repo id"
            )
        model = load_path(DEFAULT_MODEL_DIR, opts, name="bitmamba-default")
    else:
        path = Path(source).expanduser()
        if path.exists():
            model = load_path(path, opts)
        elif _REPO_ID.match(str(source)):
            folder = hub.resolve(str(source), revision, choose_files)
            model = load_path(folder, opts, name=str(source))
            model.extra["hub_revision"] = revision
        elif m := _REPO_FILE.match(str(source)):
            repo, pattern = m.groups()
            folder = hub.resolve(repo, revision, lambda files: choose_repo_file(files, pattern))
            local = pick_file(_listing(folder), pattern)
            if local is None:
                raise HubError(
                    f"'{repo}' has no file '{pattern}' in the Hugging Face cache"
                    + (" and HF_HUB_OFFLINE is set" if hub.offline() else "")
                    + f": run once online, or `huggingface-cli download {repo} <file>`"
                )
            model = load_path(folder / local, opts, name=str(source), root=folder)
            model.extra["hub_revision"] = revision
        else:
            raise ModelNotFoundError(
                f"model '{source}' not found: not a file, a folder or a Hub repo id (owner/name)"
            )
    if lora is not None and str(lora) != "":
        from bitmamba_lsp.engine.lora import attach

        attach(model, lora)
    model.load_seconds = time.perf_counter() - t0
    return model


def load_path(
    path: Path, opts: LoadOptions | None = None, name: str | None = None, root: Path | None = None
) -> Model:
    """Load a model file, or the model in a folder, with the first format that recognises it.
    root: the folder a file came in (a Hub snapshot), where its tokenizer may be; else its own."""
    opts = opts or LoadOptions()
    folder = root or (path if path.is_dir() else path.parent)
    for fmt in FORMATS:
        found = fmt.find(path)
        if found is not None:
            return fmt.load(found, folder, opts, name or (path.name if path.is_dir() else path.stem))
    if path.is_dir():
        raise ModelNotFoundError(
            f"no model file (*.bin, config.json + *.safetensors, or *.msgpack) in folder {path}"
        )
    if not path.is_file():  # a FIFO, a socket, a device: never opened (a FIFO would block forever)
        raise ModelFormatError(f"{path}: not a regular file")
    raise ModelFormatError(
        f"{path}: unsupported model file type (expected a bitmamba.cpp .bin or a Flax .msgpack)"
    )


def choose_files(files: list[str]) -> list[str]:
    """The files to fetch from a Hub repository listing: the first format's model files, plus the
    tokenizer files."""
    tokenizers = _tokenizer_files(files)
    for fmt in FORMATS:
        wanted = fmt.hub_files(files)
        if wanted:
            return [*wanted, *tokenizers]
    raise FileNotFoundError(
        "no BitMamba model in this repository (no bitmamba.cpp .bin, config.json + safetensors or Flax .msgpack)"
    )


def _tokenizer_files(files: list[str]) -> list[str]:
    return [f for f in files if any(fnmatch.fnmatch(f.rsplit("/", 1)[-1], p) for p in TOKENIZER_PATTERNS)]


def pick_file(files: list[str], pattern: str) -> str | None:
    """The file a ``repo:FILE`` source names: FILE itself, else the first match of it as a glob."""
    if pattern in files:
        return pattern
    return next((f for f in sorted(files) if fnmatch.fnmatch(f, pattern)), None)


def choose_repo_file(files: list[str], pattern: str) -> list[str]:
    """The files to fetch for ``repo:FILE``: that file (any format's) and the tokenizer files."""
    chosen = pick_file(files, pattern)
    if chosen is None:
        models = [f for fmt in FORMATS for f in fmt.hub_files(files)]
        raise FileNotFoundError(
            f"no file '{pattern}' in this repository" + (f" (its model files: {', '.join(models)})" if models else "")
        )
    return [chosen, *(t for t in _tokenizer_files(files) if t != chosen)]


def _listing(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
