"""The bitmamba.cpp ``.bin`` checkpoint format (BitMamba-2): reader, validator and writer.

Layout (little-endian, no padding), see ``docs/formats.md`` section 1::

    header   int32 magic 0x42495432, vocab_size, d_model, n_layers, n_heads
    records  embed, per layer (in_proj_norm, in_proj, conv1d_w, conv1d_b, dt_bias, A_log, D,
             out_proj_norm, out_proj), norm_f, lm_head_norm, lm_head

A record is ``int32 type`` then either a float32 tensor (type 0: ndim, dims, values) or a
ternary matrix (type 2: rows, cols, float32 scale, rows*ceil(cols/4) bytes of 2-bit codes).

The reader memory-maps the file and returns zero-copy NumPy views; nothing is read until it is
touched. Every structural problem raises :class:`ModelFormatError` naming the tensor. The code-3
check over packed weights happens in the C++ repack (it reads every byte anyway).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bitmamba_lsp import _core
from bitmamba_lsp.engine.errors import ModelFormatError
from bitmamba_lsp.engine.fim import read_fim
from bitmamba_lsp.engine.formats.base import LoadOptions, ModelFormat, resolve_threads
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.engine.tokenizer import TextTokenizer, find_tokenizer

_T = TypeVar("_T")

MAGIC = 0x42495432
LORA_MAGIC = 0x4C4F5232  # a LoRA adapter (engine/lora.py), not a model
TYPE_F32 = 0
TYPE_TERNARY = 2

# Sanity limits: anything beyond these is treated as corruption, not as a model.
MAX_VOCAB = 1 << 22
MAX_D_MODEL = 1 << 15
MAX_LAYERS = 1024
MAX_NDIM = 4


@dataclass(frozen=True)
class BitMamba2Config:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_conv: int = 4
    expand: int = 2

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_inner // self.n_heads

    @property
    def d_in_proj(self) -> int:
        return 2 * self.d_inner + 3 * self.n_heads

    def validate(self) -> None:
        for name, value, hi in (
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("d_model", self.d_model, MAX_D_MODEL),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("n_heads", self.n_heads, MAX_D_MODEL),
        ):
            if not 1 <= value <= hi:
                raise ModelFormatError(f"header: {name}={value} is outside 1..{hi}")
        if self.d_inner % self.n_heads:
            raise ModelFormatError(
                f"header: d_inner={self.d_inner} (2*d_model) is not divisible by n_heads={self.n_heads}"
            )

    def tensor_specs(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(name, kind, shape) of every record, in file order. kind is 'f32' or 'ternary'."""
        d, di, nh = self.d_model, self.d_inner, self.n_heads
        specs: list[tuple[str, str, tuple[int, ...]]] = [("embed", "f32", (self.vocab_size, d))]
        for i in range(self.n_layers):
            p = f"layers.{i}."
            specs += [
                (p + "in_proj_norm", "f32", (d,)),
                (p + "in_proj", "ternary", (self.d_in_proj, d)),
                (p + "conv1d_w", "f32", (di, 1, self.d_conv)),
                (p + "conv1d_b", "f32", (di,)),
                (p + "dt_bias", "f32", (nh,)),
                (p + "A_log", "f32", (nh,)),
                (p + "D", "f32", (di,)),
                (p + "out_proj_norm", "f32", (di,)),
                (p + "out_proj", "ternary", (d, di)),
            ]
        specs += [
            ("norm_f", "f32", (d,)),
            ("lm_head_norm", "f32", (d,)),
            ("lm_head", "ternary", (self.vocab_size, d)),
        ]
        return specs


SHAPES: dict[str, BitMamba2Config] = {
    "255m": BitMamba2Config(vocab_size=50257, d_model=1024, n_layers=24, n_heads=16),
    "1b": BitMamba2Config(vocab_size=50257, d_model=2048, n_layers=32, n_heads=32),
    "tiny": BitMamba2Config(vocab_size=512, d_model=64, n_layers=2, n_heads=4),
}


@dataclass
class TernaryTensor:
    """Packed 2-bit codes as stored in the file (row-major, 4 codes per byte, low bits first)."""

    rows: int
    cols: int
    scale: float  # 1 / mean|W|: W ~= q / scale
    packed: np.ndarray  # uint8 [rows, ceil(cols/4)]

    def unpack(self) -> np.ndarray:
        """Ternary values in {-1, 0, +1} as int8 [rows, cols] (code 3 maps to +2: callers validate)."""
        return unpack_ternary(self.packed, self.cols)


@dataclass
class BinModel:
    path: Path
    config: BitMamba2Config
    tensors: dict[str, np.ndarray | TernaryTensor] = field(default_factory=dict)
    # The mapping that backs the zero-copy views; keep it alive as long as the arrays are used.
    buffer: mmap.mmap | bytes | None = None
    file_size: int = 0


class _Cursor:
    def __init__(self, buf, size: int, where: str) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.where = where

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelFormatError(
                f"{self.where}: truncated in {what}: needs {n} bytes at offset {self.pos}, "
                f"file has {self.size - self.pos} left"
            )

    def i32(self, what: str) -> int:
        self.need(4, what)
        (v,) = struct.unpack_from("<i", self.buf, self.pos)
        self.pos += 4
        return v

    def f32(self, what: str) -> float:
        self.need(4, what)
        (v,) = struct.unpack_from("<f", self.buf, self.pos)
        self.pos += 4
        return v


def read_bin(path: str | os.PathLike[str]) -> BinModel:
    """Memory-map and validate a bitmamba.cpp ``.bin`` file. Raises ModelFormatError."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot open: {e.strerror}") from e
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ModelFormatError(f"{path}: empty file")
        buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        return parse_bin(buf, size, path)
    except BaseException:
        with contextlib.suppress(BufferError):  # views made before the error keep it open until collected
            buf.close()
        raise


def parse_bin(buf, size: int, path: Path | str = "<buffer>") -> BinModel:
    where = str(path)
    cur = _Cursor(buf, size, where)
    magic = cur.i32("header")
    if magic & 0xFFFFFFFF == LORA_MAGIC:
        raise ModelFormatError(
            f"{where} is a LoRA adapter (bitmamba.cpp's LOR2 format), not a model: give it with --lora FILE "
            "(load(model, lora=FILE)) next to the model it adapts"
        )
    if magic & 0xFFFFFFFF != MAGIC:
        raise ModelFormatError(
            f"{where}: wrong magic 0x{magic & 0xFFFFFFFF:08x} (expected 0x{MAGIC:08x}): not a BitMamba-2 .bin file"
        )
    fields = [cur.i32("header") for _ in range(4)]
    cfg = BitMamba2Config(*fields)
    try:
        cfg.validate()
    except ModelFormatError as e:
        raise ModelFormatError(f"{where}: {e}") from None
    model = BinModel(path=Path(path), config=cfg, buffer=buf, file_size=size)
    for name, kind, shape in cfg.tensor_specs():
        rtype = cur.i32(f"tensor '{name}' record type")
        if rtype == TYPE_F32:
            if kind != "f32":
                raise ModelFormatError(
                    f"{where}: tensor '{name}': expected a ternary record (type 2), found float32"
                )
            ndim = cur.i32(f"tensor '{name}' ndim")
            if not 1 <= ndim <= MAX_NDIM:
                raise ModelFormatError(f"{where}: tensor '{name}': ndim={ndim} is outside 1..{MAX_NDIM}")
            dims = tuple(cur.i32(f"tensor '{name}' dims") for _ in range(ndim))
            if any(d <= 0 for d in dims):
                raise ModelFormatError(f"{where}: tensor '{name}': non-positive dimension in {dims}")
            if _squeeze(dims) != _squeeze(shape):
                raise ModelFormatError(
                    f"{where}: tensor '{name}': shape {dims} does not match the header (expected {shape})"
                )
            count = math.prod(dims)
            cur.need(4 * count, f"tensor '{name}' data")
            arr = np.frombuffer(buf, dtype="<f4", count=count, offset=cur.pos).reshape(shape)
            cur.pos += 4 * count
            if name != "embed" and not np.isfinite(arr).all():
                raise ModelFormatError(f"{where}: tensor '{name}': contains NaN or Inf")
            model.tensors[name] = arr
        elif rtype == TYPE_TERNARY:
            if kind != "ternary":
                raise ModelFormatError(
                    f"{where}: tensor '{name}': expected a float32 record (type 0), found ternary"
                )
            rows = cur.i32(f"tensor '{name}' rows")
            cols = cur.i32(f"tensor '{name}' cols")
            if (rows, cols) != shape:
                raise ModelFormatError(
                    f"{where}: tensor '{name}': ternary shape ({rows}, {cols}) does not match the header "
                    f"(expected {shape})"
                )
            scale = cur.f32(f"tensor '{name}' scale")
            if not math.isfinite(scale) or scale <= 0.0:
                raise ModelFormatError(
                    f"{where}: tensor '{name}': scale {scale!r} is not a positive finite number"
                )
            row_bytes = (cols + 3) // 4
            cur.need(rows * row_bytes, f"tensor '{name}' packed weights")
            packed = np.frombuffer(buf, dtype=np.uint8, count=rows * row_bytes, offset=cur.pos).reshape(
                rows, row_bytes
            )
            cur.pos += rows * row_bytes
            model.tensors[name] = TernaryTensor(rows=rows, cols=cols, scale=float(scale), packed=packed)
        else:
            raise ModelFormatError(
                f"{where}: tensor '{name}': unknown record type {rtype} at offset {cur.pos - 4}"
            )
    if cur.pos != size:
        raise ModelFormatError(f"{where}: {size - cur.pos} bytes of trailing data after 'lm_head'")
    return model


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1) or (1,)


# ----------------------------------------------------------------------------------------- packing


def quantize_ternary(w: np.ndarray) -> tuple[np.ndarray, float]:
    """Absmean ternary quantization (BitNet b1.58): q = clamp(round(w * s), -1, 1), s = 1/mean|w|."""
    w = np.asarray(w, dtype=np.float64)
    mean_abs = float(np.abs(w).mean())
    scale = 1.0 / max(mean_abs, 1e-8)
    q = np.clip(np.rint(w * scale), -1, 1).astype(np.int8)
    return q, float(np.float32(scale))


def pack_ternary(q: np.ndarray) -> np.ndarray:
    """Pack int8 ternary values [rows, cols] into the file's 2-bit codes [rows, ceil(cols/4)]."""
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError("pack_ternary expects a 2-D array")
    if q.size and (q.min() < -1 or q.max() > 1):
        raise ValueError("ternary values must be in {-1, 0, +1}")
    rows, cols = q.shape
    pad = (-cols) % 4
    codes = (q.astype(np.int16) + 1).astype(np.uint8)
    if pad:
        codes = np.concatenate([codes, np.ones((rows, pad), np.uint8)], axis=1)  # pad with code 1 (zero)
    codes = codes.reshape(rows, -1, 4)
    return (codes[..., 0] | (codes[..., 1] << 2) | (codes[..., 2] << 4) | (codes[..., 3] << 6)).astype(
        np.uint8
    )


def unpack_ternary(packed: np.ndarray, cols: int) -> np.ndarray:
    packed = np.asarray(packed, dtype=np.uint8)
    codes = np.stack([(packed >> (2 * k)) & 3 for k in range(4)], axis=-1).reshape(packed.shape[0], -1)
    return codes[:, :cols].astype(np.int8) - 1


# ----------------------------------------------------------------------------------------- writing


def write_bin(
    path: str | os.PathLike[str],
    config: BitMamba2Config,
    tensors: dict[str, np.ndarray | TernaryTensor],
) -> None:
    """Write a ``.bin`` file. Ternary entries are TernaryTensor, an int8 array in {-1,0,1} (scale 1),
    or a float array (quantized with absmean). Float entries are any array of the expected size."""
    config.validate()
    specs = config.tensor_specs()
    missing = [n for n, _, _ in specs if n not in tensors]
    extra = sorted(set(tensors) - {n for n, _, _ in specs})
    if missing or extra:
        raise ValueError(f"write_bin: missing tensors {missing[:5]}, unexpected tensors {extra[:5]}")
    tmp = Path(f"{path}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<5i", MAGIC, config.vocab_size, config.d_model, config.n_layers, config.n_heads))
        for name, kind, shape in specs:
            value = tensors[name]
            if kind == "f32":
                arr = np.ascontiguousarray(np.asarray(value, dtype="<f4"))
                if arr.size != math.prod(shape):
                    raise ValueError(
                        f"write_bin: tensor '{name}' has {arr.size} values, expected shape {shape}"
                    )
                f.write(struct.pack("<ii", TYPE_F32, len(shape)))
                f.write(struct.pack(f"<{len(shape)}i", *shape))
                f.write(arr.tobytes())
            else:
                t = as_ternary(value)
                if (t.rows, t.cols) != shape:
                    raise ValueError(f"write_bin: tensor '{name}' is {t.rows}x{t.cols}, expected {shape}")
                f.write(struct.pack("<iiif", TYPE_TERNARY, t.rows, t.cols, t.scale))
                f.write(np.ascontiguousarray(t.packed, dtype=np.uint8).tobytes())
    os.replace(tmp, path)


def as_ternary(value: np.ndarray | TernaryTensor) -> TernaryTensor:
    if isinstance(value, TernaryTensor):
        return value
    arr = np.asarray(value)
    if arr.dtype == np.int8:
        q, scale = arr, 1.0
    else:
        q, scale = quantize_ternary(arr)
    return TernaryTensor(rows=q.shape[0], cols=q.shape[1], scale=scale, packed=pack_ternary(q))


def random_tensors(config: BitMamba2Config, seed: int = 0) -> dict[str, np.ndarray | TernaryTensor]:
    """Random weights with realistic magnitudes (for tests and benchmarks; the output is noise)."""
    rng = np.random.default_rng(seed)
    d, di, nh = config.d_model, config.d_inner, config.n_heads

    def tern(rows: int, cols: int) -> TernaryTensor:
        # ~1/3 zeros like a trained BitNet layer; scale as absmean of a N(0, 0.02) weight.
        q = rng.integers(-1, 2, size=(rows, cols), dtype=np.int8)
        return TernaryTensor(rows, cols, float(np.float32(1 / 0.016)), pack_ternary(q))

    def f32(*shape: int, lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, size=shape).astype(np.float32)

    out: dict[str, np.ndarray | TernaryTensor] = {}
    out["embed"] = (rng.standard_normal((config.vocab_size, d), dtype=np.float32) * 0.5).astype(np.float32)
    for i in range(config.n_layers):
        p = f"layers.{i}."
        out[p + "in_proj_norm"] = f32(d, lo=0.8, hi=1.2)
        out[p + "in_proj"] = tern(config.d_in_proj, d)
        out[p + "conv1d_w"] = f32(di, 1, config.d_conv, lo=-0.6, hi=0.6)
        out[p + "conv1d_b"] = f32(di, lo=-0.1, hi=0.1)
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), size=nh))
        out[p + "dt_bias"] = (dt + np.log(-np.expm1(-dt))).astype(np.float32)  # inverse softplus
        out[p + "A_log"] = np.log(rng.uniform(1, 16, size=nh)).astype(np.float32)
        out[p + "D"] = f32(di, lo=0.5, hi=1.5)
        out[p + "out_proj_norm"] = f32(di, lo=0.8, hi=1.2)
        out[p + "out_proj"] = tern(d, di)
    out["norm_f"] = f32(d, lo=0.8, hi=1.2)
    out["lm_head_norm"] = f32(d, lo=0.8, hi=1.2)
    out["lm_head"] = tern(config.vocab_size, d)
    return out


def release_ternary_pages(bm: BinModel) -> int:
    """Drop the file pages of the packed ternary codes from this process's memory (they were read
    once, to repack; the engine keeps its own copy). The mapping stays valid: a later read faults
    the pages back in from the page cache. Returns the bytes released."""
    buf = bm.buffer
    if not isinstance(buf, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return 0
    base = np.frombuffer(buf, dtype=np.uint8).ctypes.data
    page = mmap.PAGESIZE
    released = 0
    for t in bm.tensors.values():
        if not isinstance(t, TernaryTensor):
            continue
        start = int(np.asarray(t.packed).ctypes.data) - base
        end = start + int(np.asarray(t.packed).nbytes)
        a, b = -(-start // page) * page, end // page * page  # whole pages inside the tensor only
        if b > a:
            buf.madvise(mmap.MADV_DONTNEED, a, b - a)
            released += b - a
    return released


# ---------------------------------------------------------------------------------------- loading
# Files that are never a model for us even though they end in ".bin" (PyTorch pickles, tokenizers).
NOT_OUR_BIN = ("pytorch_model", "training_args", "optimizer", "scheduler", "rng_state", "tokenizer.bin")


def is_model_bin(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    # *.lora.bin: bitmamba.cpp's name for LoRA adapters (engine/lora.py), which may sit beside a model
    return base.endswith(".bin") and not base.startswith(NOT_OUR_BIN) and not base.endswith(".lora.bin")


def core_tensors(binmodel: BinModel) -> dict[str, object]:
    """The loader's tensors in the form _core.build_bitmamba2 takes (zero-copy where possible)."""
    out: dict[str, object] = {}
    for name, t in binmodel.tensors.items():
        if isinstance(t, TernaryTensor):
            out[name] = ("codes", t.packed, t.cols, t.scale)
        else:
            out[name] = t
    return out


def build_from_bin(
    binmodel: BinModel,
    *,
    threads: int | None = None,
    kernels: str = "simd",
    tokenizer: TextTokenizer | None = None,
    name: str | None = None,
    repeat: tuple[int, int, int] | None = None,
) -> Model:
    cfg = binmodel.config
    rys = {} if not repeat else dict(zip(("repeat_start", "repeat_end", "repeat_count"), repeat, strict=True))
    try:
        core = _core.build_bitmamba2(
            core_tensors(binmodel),
            cfg.vocab_size,
            cfg.d_model,
            cfg.n_layers,
            cfg.n_heads,
            threads=resolve_threads(threads),
            level=kernels,
            **rys,
        )
    except _core.FormatError as e:
        raise ModelFormatError(f"{binmodel.path}: {e}") from None
    release_ternary_pages(binmodel)  # repacked: the file's codes need not stay resident
    return Model(
        core=core,
        config=cfg,
        tokenizer=tokenizer,
        name=name or binmodel.path.name,
        path=binmodel.path,
        extra={"repeat": list(repeat)} if repeat else {},
        _keep=binmodel,
    )


def load_bin(
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    kernels: str = "simd",
    tokenizer: TextTokenizer | None = None,
    name: str | None = None,
    repeat: tuple[int, int, int] | None = None,
) -> Model:
    """Load a bitmamba.cpp ``.bin`` file (memory-mapped; ternary weights repacked)."""
    return build_from_bin(
        read_bin(path), threads=threads, kernels=kernels, tokenizer=tokenizer, name=name, repeat=repeat
    )


def find(path: Path) -> Path | None:
    """A ``.bin`` file itself, or the model file of a folder: ``model.bin``, another ``*.bin``, or
    ``bitmamba_cpp/*.bin`` (the layout of the BitMamba-2 Hub repositories)."""
    if path.is_file():
        return path if path.suffix == ".bin" else None
    candidates = [path / "model.bin", *sorted(path.glob("*.bin")), *sorted(path.glob("bitmamba_cpp/*.bin"))]
    return next((p for p in candidates if p.is_file() and is_model_bin(p.name)), None)


def hub_files(files: list[str]) -> list[str]:
    """One ``.bin`` (``bitmamba_cpp/`` preferred: the repositories also hold PyTorch checkpoints)."""
    bins = [f for f in files if is_model_bin(f)]
    preferred = [f for f in bins if f.startswith("bitmamba_cpp/")] or bins
    return [sorted(preferred)[0]] if preferred else []


def load(file: Path, folder: Path, opts: LoadOptions, name: str) -> Model:
    binmodel = read_bin(file)
    # The tokenizer (tens of ms of Python, more with what `prepare_tokenizer` derives) is read while
    # the core repacks the weights (C++, without the GIL): part of a cold start.
    tokenizer = _in_background(find_tokenizer, [file.parent, folder], binmodel.config.vocab_size, opts.prepare_tokenizer)
    model = build_from_bin(binmodel, threads=opts.threads, kernels=opts.kernels, name=name, repeat=opts.repeat)
    model.tokenizer = tokenizer()
    model.fim = read_fim(file.parent, model.tokenizer)
    return model


def _in_background(fn: Callable[..., _T], *args: object) -> Callable[[], _T]:
    """Start fn(*args) on a thread; the returned function waits for its result (or raises its error)."""
    out: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            out.append((True, fn(*args)))
        except BaseException as exc:
            out.append((False, exc))

    thread = threading.Thread(target=run, name="bitmamba-tokenizer", daemon=True)
    thread.start()

    def result() -> _T:
        thread.join()
        ok, value = out[0]
        if not ok:
            raise value
        return value

    return result


FORMAT = ModelFormat("bitmamba.cpp .bin", find, hub_files, load)
