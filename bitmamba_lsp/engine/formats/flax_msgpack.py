"""JAX/Flax msgpack checkpoints of BitMamba-2 (``jax_weights/bitmamba_255m.msgpack``,
``bit_mamba_1b.msgpack`` in the Hub repositories): reader, validator, and the conversion into the
``.bin`` tensors exactly as bitmamba.cpp's ``scripts/export_bin.py`` makes them. docs/formats.md
section 1.6 has the layout.

The file is ``flax.serialization.msgpack_serialize`` of the parameter tree: nested msgpack maps
whose leaves are ExtType 1 records, each payload itself msgpack ``[shape, dtype name, C-order
bytes]`` (an array over 1 GiB is a map ``{"__msgpack_chunked_array__": True, "shape": {...},
"chunks": {...}}`` of flat pieces). This module walks that structure itself over a memory map (no
msgpack package at run time, no copy of the file): every array is a NumPy view of the mapping,
converted one tensor at a time (the kernels are transposed, made ternary and packed; their source
pages are then dropped from memory), so a load never holds a second float copy of the model.

Every problem is one :class:`ModelFormatError` naming the file and the leaf (``params/...``):
not msgpack, truncated, a missing leaf, a shape that does not fit the model the embedding and
``dt_bias`` imply, a dtype that is not a float, NaN where export_bin.py refuses one.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitmamba_lsp.engine.errors import ModelFormatError
from bitmamba_lsp.engine.fim import read_fim
from bitmamba_lsp.engine.formats.base import LoadOptions, ModelFormat
from bitmamba_lsp.engine.formats.bitmamba_bin import (
    BinModel,
    BitMamba2Config,
    TernaryTensor,
    build_from_bin,
    pack_ternary,
    write_bin,
)
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.engine.tokenizer import find_tokenizer

EXT_NDARRAY = 1  # flax.serialization._MsgpackExtType
EXT_NPSCALAR = 3
CHUNKED = "__msgpack_chunked_array__"
MAX_DEPTH = 64

# Flax writes ``arr.dtype.name``; the bytes are the writer's native order (little-endian in practice).
_FLOAT_DTYPES = {"float32": "<f4", "float16": "<f2", "float64": "<f8", "bfloat16": "<u2"}


# ------------------------------------------------------------------------------- the msgpack walk


@dataclass(frozen=True)
class _Blob:
    """A bin or long str value: where its bytes are in the file (never copied)."""

    offset: int
    length: int


@dataclass(frozen=True)
class _Other:
    """A value that is neither a map nor an array (how it reads in a message)."""

    what: str


@dataclass(frozen=True)
class ArrayLeaf:
    """One Flax ndarray record: its C-order bytes at ``offset`` in the file."""

    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: str


class _Walker:
    def __init__(self, buf, start: int, end: int, where: str, overrun: str, raw: bool = False) -> None:
        self.buf = buf
        self.pos = start
        self.end = end
        self.where = where
        self.overrun = overrun  # what running past `end` means: "truncated", "corrupt array record"
        self.raw = raw  # strings stay bytes in the file (inside an array record)

    def fail(self, msg: str) -> ModelFormatError:
        return ModelFormatError(f"{self.where}: {msg}")

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.end:
            raise self.fail(
                f"{self.overrun}: {what} needs {n} bytes at offset {self.pos}, {self.end - self.pos} left"
            )

    def unpack(self, fmt: str, what: str) -> int | float:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def value(self, path: str, depth: int = 0):
        if depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels at '{path}'")
        at = path or "the top level"
        self.need(1, f"the value of '{at}'")
        b = self.buf[self.pos]
        self.pos += 1
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if b <= 0x8F:
            return self.map(b & 0x0F, path, depth)
        if b <= 0x9F:
            return self.array(b & 0x0F, path, depth)
        if b <= 0xBF:
            return self.string(b & 0x1F, at)
        if b == 0xC0:
            return None
        if b in (0xC2, 0xC3):
            return b == 0xC3
        if b in (0xC4, 0xC5, 0xC6):  # bin 8/16/32
            n = int(self.unpack((">B", ">H", ">I")[b - 0xC4], f"the length of '{at}'"))
            self.need(n, f"the bytes of '{at}'")
            self.pos += n
            return _Blob(self.pos - n, n)
        if b in (0xC7, 0xC8, 0xC9):  # ext 8/16/32
            n = int(self.unpack((">B", ">H", ">I")[b - 0xC7], f"the length of '{at}'"))
            return self.ext(n, path)
        if b in (0xCA, 0xCB):
            return float(self.unpack(">f" if b == 0xCA else ">d", f"'{at}'"))
        if 0xCC <= b <= 0xD3:  # uint 8..64, int 8..64
            return int(self.unpack((">B", ">H", ">I", ">Q", ">b", ">h", ">i", ">q")[b - 0xCC], f"'{at}'"))
        if 0xD4 <= b <= 0xD8:  # fixext 1/2/4/8/16
            return self.ext(1 << (b - 0xD4), path)
        if b in (0xD9, 0xDA, 0xDB):
            n = int(self.unpack((">B", ">H", ">I")[b - 0xD9], f"the length of '{at}'"))
            return self.string(n, at)
        if b in (0xDC, 0xDD):
            return self.array(int(self.unpack(">H" if b == 0xDC else ">I", f"'{at}'")), path, depth)
        if b in (0xDE, 0xDF):
            return self.map(int(self.unpack(">H" if b == 0xDE else ">I", f"'{at}'")), path, depth)
        raise self.fail(f"byte 0x{b:02x} at offset {self.pos - 1} ('{at}') is not valid msgpack")

    def string(self, n: int, at: str):
        self.need(n, f"the text of '{at}'")
        self.pos += n
        if self.raw or n > 4096:
            return _Blob(self.pos - n, n)
        try:
            return bytes(self.buf[self.pos - n : self.pos]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"invalid UTF-8 text at offset {self.pos - n} ('{at}')") from None

    def array(self, n: int, path: str, depth: int) -> list:
        self.need(n, f"the {n} items of '{path or 'the top level'}'")  # each item is at least a byte
        return [self.value(f"{path}[{i}]", depth + 1) for i in range(n)]

    def map(self, n: int, path: str, depth: int) -> dict:
        self.need(2 * n, f"the {n} entries of '{path or 'the top level'}'")
        out: dict = {}
        for _ in range(n):
            key = self.value(f"{path}/<key>" if path else "<key>", depth + 1)
            if not isinstance(key, str | int):
                raise self.fail(f"a key of '{path or 'the top level'}' is not a string")
            key = str(key)
            out[key] = self.value(f"{path}/{key}" if path else key, depth + 1)
        return out

    def ext(self, n: int, path: str):
        code = int(self.unpack(">b", f"the ext type of '{path}'"))
        self.need(n, f"the ext record of '{path}'")
        start = self.pos
        self.pos += n
        if code not in (EXT_NDARRAY, EXT_NPSCALAR):
            return _Other(f"a msgpack ext record of type {code}")
        # The payload is msgpack [shape, dtype name, bytes]; the name and the bytes may be str or bin
        # (flax packs with use_bin_type=True; older writers did not), so strings stay raw here.
        sub = _Walker(self.buf, start, start + n, self.where, f"corrupt array record '{path}'", raw=True)
        rec = sub.value(path, MAX_DEPTH - 2)
        if not (isinstance(rec, list) and len(rec) == 3):
            raise self.fail(f"corrupt array record '{path}': not [shape, dtype, bytes]")
        shape, dtype, data = rec
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(dtype, _Blob)
            or dtype.length > 64
            or not isinstance(data, _Blob)
        ):
            raise self.fail(f"corrupt array record '{path}': not [shape, dtype, bytes]")
        dtype = bytes(self.buf[dtype.offset : dtype.offset + dtype.length]).decode("latin-1")
        if sub.pos != start + n:
            raise self.fail(f"corrupt array record '{path}': {start + n - sub.pos} stray bytes")
        return ArrayLeaf(data.offset, data.length, tuple(shape), dtype)


def _describe(v) -> str:
    if isinstance(v, dict):
        return "a map"
    if isinstance(v, _Other):
        return v.what
    if isinstance(v, _Blob):
        return "a byte string"
    return f"a {type(v).__name__} ({v!r})" if not isinstance(v, list) else "a list"


# --------------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class _Array:
    """An array leaf of the tree: one record, or the pieces of a chunked one."""

    leaf: str  # its path in the tree, for messages
    shape: tuple[int, ...]
    dtype: str
    parts: tuple[ArrayLeaf, ...]


def _flatten(tree: dict, prefix: str, out: dict) -> None:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and CHUNKED not in value:
            _flatten(value, path + "/", out)
        else:
            out[path] = value


def _as_array(where: str, leaf: str, value) -> _Array:
    if isinstance(value, ArrayLeaf):
        parts: tuple[ArrayLeaf, ...] = (value,)
        shape, dtype = value.shape, value.dtype
    elif isinstance(value, dict):  # a chunked array: flat pieces of one C-order array
        try:
            dims = value["shape"]
            chunks = value["chunks"]
            shape = tuple(int(dims[str(i)]) for i in range(len(dims)))
            parts = tuple(chunks[str(i)] for i in range(len(chunks)))
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(f"{where}: leaf '{leaf}': corrupt chunked array") from None
        if not parts or not all(isinstance(p, ArrayLeaf) and len(p.shape) == 1 for p in parts):
            raise ModelFormatError(f"{where}: leaf '{leaf}': corrupt chunked array")
        dtype = parts[0].dtype
        if any(p.dtype != dtype for p in parts) or sum(p.shape[0] for p in parts) != math.prod(shape):
            raise ModelFormatError(
                f"{where}: leaf '{leaf}': chunked array pieces do not make its shape {shape}"
            )
    else:
        raise ModelFormatError(f"{where}: leaf '{leaf}' is {_describe(value)}, expected an array")
    if dtype not in _FLOAT_DTYPES:
        raise ModelFormatError(
            f"{where}: leaf '{leaf}' has dtype {dtype}, expected a float array (float32, bfloat16, float16 or float64)"
        )
    itemsize = np.dtype(_FLOAT_DTYPES[dtype]).itemsize
    for p in parts:
        if p.nbytes != math.prod(p.shape) * itemsize:
            raise ModelFormatError(
                f"{where}: leaf '{leaf}': {p.nbytes} bytes of data for shape {p.shape} {dtype} "
                f"(expected {math.prod(p.shape) * itemsize})"
            )
    return _Array(leaf, shape, dtype, parts)


# (the .bin tensor, its leaf under the block / top level, how it is turned into the .bin layout)
_BLOCK_LEAVES = (
    ("in_proj_norm", "BitLinear_0/RMSNorm_0/scale", "copy"),
    ("in_proj", "BitLinear_0/kernel", "transpose"),
    ("conv1d_w", "Conv_0/kernel", "conv"),
    ("conv1d_b", "Conv_0/bias", "copy"),
    ("dt_bias", "dt_bias", "copy"),
    ("A_log", "A_log", "copy"),
    ("D", "D", "copy"),
    ("out_proj_norm", "BitLinear_1/RMSNorm_0/scale", "copy"),
    ("out_proj", "BitLinear_1/kernel", "transpose"),
)
_TOP_LEAVES = (
    ("norm_f", "RMSNorm_0/scale", "copy"),
    ("lm_head_norm", "BitLinear_0/RMSNorm_0/scale", "copy"),
    ("lm_head", "BitLinear_0/kernel", "transpose"),
)
_BLOCK = re.compile(r"^BitMambaBlock_(\d+)$")


def leaf_table(config: BitMamba2Config) -> list[tuple[str, str, str, tuple[int, ...]]]:
    """(the .bin tensor name, the Flax leaf path, the transform, the Flax leaf's shape) of every
    tensor, in .bin record order."""
    d, di, nh, V = config.d_model, config.d_inner, config.n_heads, config.vocab_size
    flax_shape = {
        "in_proj_norm": (d,),
        "in_proj": (d, config.d_in_proj),
        "conv1d_w": (config.d_conv, 1, di),
        "conv1d_b": (di,),
        "dt_bias": (nh,),
        "A_log": (nh,),
        "D": (di,),
        "out_proj_norm": (di,),
        "out_proj": (di, d),
        "norm_f": (d,),
        "lm_head_norm": (d,),
        "lm_head": (d, V),
    }
    rows = [("embed", "Embed_0/embedding", "copy", (V, d))]
    for i in range(config.n_layers):
        rows += [
            (f"layers.{i}.{name}", f"BitMambaBlock_{i}/{leaf}", how, flax_shape[name])
            for name, leaf, how in _BLOCK_LEAVES
        ]
    rows += [(name, leaf, how, flax_shape[name]) for name, leaf, how in _TOP_LEAVES]
    return rows


_EXPLAIN = {  # by .bin tensor (the last part of its name)
    "embed": "[vocab, d_model]",
    "in_proj_norm": "[d_model]",
    "in_proj": "[d_model, 2*d_inner + 3*n_heads]",
    "conv1d_w": "[4, 1, d_inner]",
    "conv1d_b": "[d_inner]",
    "dt_bias": "[n_heads]",
    "A_log": "[n_heads]",
    "D": "[d_inner]",
    "out_proj_norm": "[d_inner]",
    "out_proj": "[d_inner, d_model]",
    "norm_f": "[d_model]",
    "lm_head_norm": "[d_model]",
    "lm_head": "[d_model, vocab]",
}


@dataclass
class FlaxCheckpoint:
    path: Path
    config: BitMamba2Config
    arrays: dict[str, _Array]  # by .bin tensor name
    transforms: dict[str, str]
    buffer: mmap.mmap | bytes


def read_msgpack(path: str | os.PathLike[str]) -> FlaxCheckpoint:
    """Memory-map and validate a Flax msgpack checkpoint of BitMamba-2. Raises ModelFormatError."""
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
        return parse_msgpack(buf, size, path)
    except BaseException:
        _close(buf)
        raise


def _close(buf) -> None:
    if isinstance(buf, mmap.mmap):
        with contextlib.suppress(BufferError):  # views made before an error keep it open until collected
            buf.close()


def _converted(ckpt: FlaxCheckpoint, aligned: bool) -> dict[str, np.ndarray | TernaryTensor]:
    try:
        return bin_tensors(ckpt, aligned=aligned)
    except BaseException:
        _close(ckpt.buffer)
        raise


def parse_msgpack(buf, size: int, path: Path | str = "<buffer>") -> FlaxCheckpoint:
    where = str(path)
    if size == 0:
        raise ModelFormatError(f"{where}: empty file")
    first = buf[0]
    if not (0x80 <= first <= 0x8F or first in (0xDE, 0xDF)):
        raise ModelFormatError(
            f"{where}: not a Flax msgpack checkpoint (it does not start with a msgpack map: byte 0x{first:02x})"
        )
    walker = _Walker(buf, 0, size, where, "truncated")
    tree = walker.value("")
    if walker.pos != size:
        raise ModelFormatError(f"{where}: {size - walker.pos} bytes of trailing data after the msgpack tree")
    prefix = ""
    if isinstance(tree.get("params"), dict):
        tree, prefix = tree["params"], "params/"
    leaves: dict = {}
    _flatten(tree, "", leaves)

    def get(leaf: str, expected: str) -> _Array:
        if leaf not in leaves:
            raise ModelFormatError(f"{where}: missing leaf '{prefix}{leaf}' (expected shape {expected})")
        return _as_array(where, prefix + leaf, leaves[leaf])

    embed = get("Embed_0/embedding", "[vocab, d_model]")
    if len(embed.shape) != 2 or 0 in embed.shape:
        raise ModelFormatError(
            f"{where}: leaf '{prefix}Embed_0/embedding' has shape {embed.shape}, expected [vocab, d_model]"
        )
    vocab, d_model = embed.shape
    blocks = {int(m.group(1)) for key in tree if (m := _BLOCK.match(key))}
    if not blocks:
        raise ModelFormatError(
            f"{where}: missing leaf '{prefix}BitMambaBlock_0/...': no BitMamba blocks in the tree"
        )
    n_layers = max(blocks) + 1
    dt = get("BitMambaBlock_0/dt_bias", "[n_heads]")
    if len(dt.shape) != 1 or not dt.shape[0]:
        raise ModelFormatError(
            f"{where}: leaf '{prefix}BitMambaBlock_0/dt_bias' has shape {dt.shape}, expected [n_heads]"
        )
    config = BitMamba2Config(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=dt.shape[0])
    try:
        config.validate()
    except ModelFormatError as e:
        msg = str(e).removeprefix("header: ")
        raise ModelFormatError(
            f"{where}: the tree implies an impossible model ({msg}; vocab and d_model from "
            f"'{prefix}Embed_0/embedding', n_heads from '{prefix}BitMambaBlock_0/dt_bias')"
        ) from None
    arrays: dict[str, _Array] = {}
    transforms: dict[str, str] = {}
    for name, leaf, how, shape in leaf_table(config):
        arr = get(leaf, str(shape))
        if arr.shape != shape:
            raise ModelFormatError(
                f"{where}: leaf '{prefix}{leaf}' has shape {arr.shape}, expected {shape} = "
                f"{_EXPLAIN[name.rsplit('.', 1)[-1]]} (vocab {vocab}, d_model {d_model} from the "
                f"embedding, n_heads {config.n_heads} from dt_bias, d_inner {config.d_inner})"
            )
        arrays[name] = arr
        transforms[name] = how
    return FlaxCheckpoint(path=Path(path), config=config, arrays=arrays, transforms=transforms, buffer=buf)


# ---------------------------------------------------------------------------------- conversion


def _values(ckpt: FlaxCheckpoint, arr: _Array) -> np.ndarray:
    """The leaf as stored (a view of the mapping; bfloat16 widened; chunks joined), C order."""
    pieces = []
    for p in arr.parts:
        v = np.frombuffer(
            ckpt.buffer, dtype=_FLOAT_DTYPES[arr.dtype], count=math.prod(p.shape), offset=p.offset
        )
        if arr.dtype == "bfloat16":
            v = (v.astype(np.uint32) << 16).view(np.float32)
        pieces.append(v)
    flat = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return flat.reshape(arr.shape)


def absmean_ternary(w: np.ndarray) -> TernaryTensor:
    """Ternary weights as bitmamba.cpp's export_bin.py computes them, operation for operation, from
    a float [out, in] matrix (any strides: here the transposed view of a Flax kernel): the float32
    values, ``mean_abs = np.mean(np.abs(w))`` over the C-order [out, in] float32 array (NumPy's
    pairwise sum, so the same order as the export's), ``scale = 1 / mean_abs`` (1 for an all-zero
    matrix), ``q = clip(round(w * scale), -1, 1)`` in float32 (half to even). One float32 copy
    exists at a time (|w|, for the mean); the product is formed in row blocks (elementwise: the
    same values)."""
    absw = np.empty(w.shape, dtype=np.float32)  # C order [out, in], as the export's state_dict
    np.abs(np.asarray(w, dtype=np.float32), out=absw)
    mean_abs = np.mean(absw)
    del absw
    if not np.isfinite(mean_abs):
        raise ValueError("contains NaN or Inf")
    scale = np.float32(1.0) if mean_abs == 0 else np.float32(np.float32(1.0) / np.float32(mean_abs))
    if not np.isfinite(scale):
        raise ValueError(f"mean |w| = {float(mean_abs)!r} is too small for a float32 scale")
    rows, cols = w.shape
    packed = np.empty((rows, (cols + 3) // 4), dtype=np.uint8)
    step = max(1, (1 << 20) // max(cols, 1))
    for r in range(0, rows, step):
        block = np.asarray(w[r : r + step], dtype=np.float32)
        packed[r : r + step] = pack_ternary(np.clip(np.round(block * scale), -1, 1).astype(np.int8))
    return TernaryTensor(rows=rows, cols=cols, scale=float(scale), packed=packed)


def _release(ckpt: FlaxCheckpoint, arr: _Array) -> None:
    """Drop the pages of a converted leaf from this process's memory (the mapping stays valid)."""
    buf = ckpt.buffer
    if not isinstance(buf, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    for p in arr.parts:
        a, b = -(-p.offset // page) * page, (p.offset + p.nbytes) // page * page
        if b > a:
            buf.madvise(mmap.MADV_DONTNEED, a, b - a)


def bin_tensors(ckpt: FlaxCheckpoint, *, aligned: bool = False) -> dict[str, np.ndarray | TernaryTensor]:
    """The tensors of the equivalent ``.bin``, in record order: floats as float32 arrays in the
    .bin layout (views of the mapping where the bytes allow; ``aligned`` also copies a view whose
    address is not a multiple of 4, as the engine wants), kernels as packed ternary tensors."""
    where = str(ckpt.path)
    out: dict[str, np.ndarray | TernaryTensor] = {}
    for name, arr in ckpt.arrays.items():
        how = ckpt.transforms[name]
        values = _values(ckpt, arr)
        if how == "transpose":  # Flax kernels are [in, out]
            try:
                out[name] = absmean_ternary(values.T)
            except ValueError as e:
                raise ModelFormatError(f"{where}: leaf '{arr.leaf}': {e}") from None
            _release(ckpt, arr)
            continue
        if how == "conv":
            values = np.transpose(values, (2, 1, 0))  # [4, 1, d_inner] -> [d_inner, 1, 4]
        f32 = np.ascontiguousarray(values, dtype=np.float32)
        if aligned and f32.ctypes.data % 4:
            f32 = f32.copy()
        if name == "embed":  # export_bin.py refuses NaN anywhere (Inf is left alone in the embedding)
            step = max(1, (1 << 20) // f32.shape[1])
            if any(np.isnan(f32[r : r + step]).any() for r in range(0, f32.shape[0], step)):
                raise ModelFormatError(f"{where}: leaf '{arr.leaf}': contains NaN")
        elif not np.isfinite(f32).all():
            raise ModelFormatError(f"{where}: leaf '{arr.leaf}': contains NaN or Inf")
        out[name] = f32
        _release(ckpt, arr)  # a view faults its pages back in when read
    return out


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> BitMamba2Config:
    """Write the bitmamba.cpp ``.bin`` of a Flax msgpack checkpoint (what export_bin.py writes)."""
    ckpt = read_msgpack(src)
    write_bin(dst, ckpt.config, _converted(ckpt, aligned=False))
    return ckpt.config


# ---------------------------------------------------------------------------------------- loading


def load_msgpack(
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    kernels: str = "simd",
    name: str | None = None,
    **build: object,
) -> Model:
    """Load a Flax msgpack checkpoint: converted at load (seconds for 255M), then built exactly as
    the equivalent ``.bin`` (``build``: further options of ``bitmamba_bin.build_from_bin``). No
    tokenizer is attached (``load`` finds one)."""
    ckpt = read_msgpack(path)
    tensors = _converted(ckpt, aligned=True)
    if isinstance(ckpt.buffer, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        ckpt.buffer.madvise(mmap.MADV_DONTNEED)  # the embedding rows fault back in when used
    # buffer=None: the packed weights are not in the file; a view of the embedding keeps the mapping.
    binmodel = BinModel(path=ckpt.path, config=ckpt.config, tensors=tensors, buffer=None)
    model = build_from_bin(binmodel, threads=threads, kernels=kernels, name=name, **build)
    model.extra["format"] = "flax msgpack"
    return model


def find(path: Path) -> Path | None:
    """A ``.msgpack`` file itself, or the first ``*.msgpack`` of a folder (``jax_weights/`` too,
    the layout of the BitMamba-2 Hub repositories)."""
    if path.is_file():
        return path if path.suffix == ".msgpack" else None
    candidates = [*sorted(path.glob("*.msgpack")), *sorted(path.glob("jax_weights/*.msgpack"))]
    return next((p for p in candidates if p.is_file()), None)


def hub_files(files: list[str]) -> list[str]:
    """One ``.msgpack`` (``jax_weights/`` preferred)."""
    found = [f for f in files if f.endswith(".msgpack")]
    preferred = [f for f in found if f.startswith("jax_weights/")] or found
    return [sorted(preferred)[0]] if preferred else []


def load(file: Path, folder: Path, opts: LoadOptions, name: str) -> Model:
    repeat = getattr(opts, "repeat", None)  # layer repetition (RYS), as the .bin format applies it
    build = {"repeat": repeat} if repeat else {}
    model = load_msgpack(file, threads=opts.threads, kernels=opts.kernels, name=name, **build)
    model.tokenizer = find_tokenizer([file.parent, folder], model.vocab_size, opts.prepare_tokenizer)
    model.fim = read_fim(file.parent, model.tokenizer)
    return model


FORMAT = ModelFormat("Flax msgpack (BitMamba-2)", find, hub_files, load)
