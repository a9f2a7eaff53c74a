"""LoRA adapters in bitmamba.cpp's file format (its ``scripts/export_lora_bin.py`` writes them, its
``src/lora.cpp`` reads them; docs/formats.md, "LoRA adapters").

Little-endian. Header, 24 bytes: u32 magic 0x4C4F5232 ("LOR2"), u32 version 1, u32 rank, f32 alpha,
u32 n_layers, u32 n_targets = 2. Then for each layer, for each target (0 = in_proj, 1 = out_proj;
bitmamba.cpp's W_in, W_out): u32 layer, u32 target, u32 out_features, u32 in_features, u32 rank,
f32 A [rank x in_features], f32 B [out_features x rank], row-major.

Applied to every BitMamba-2 block: ``out += (alpha / rank) * B (A xn)``, xn the projection's input
after its RMSNorm, before the int8 quantization (bitmamba.cpp has no user scale: the scale is
alpha / rank). :func:`attach` checks a file against a model and hands it to the C++ core.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bitmamba_lsp.engine.errors import ModelFormatError, ModelNotFoundError

if TYPE_CHECKING:
    from bitmamba_lsp.engine.model import Model

MAGIC = 0x4C4F5232  # "LOR2" as a little-endian u32: the file starts with the bytes b"2ROL"
MAGIC_BYTES = struct.pack("<I", MAGIC)
VERSION = 1
TARGETS = ("in_proj", "out_proj")  # target index -> projection (bitmamba.cpp: W_in, W_out)
HEADER = struct.Struct("<IIIfII")  # magic, version, rank, alpha, n_layers, n_targets
SLOT = struct.Struct("<IIIII")  # layer, target, out_features, in_features, rank
MAX_RANK = 4096


class LoraFormatError(ModelFormatError):
    """A LoRA adapter file is malformed or does not fit the model; the message names the file."""


@dataclass(frozen=True)
class LoraAdapter:
    """An adapter: per layer (A_in, B_in, A_out, B_out), A [rank, in] and B [out, rank] float32."""

    rank: int
    alpha: float
    layers: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    path: Path | None = None

    @property
    def scale(self) -> float:
        """alpha / rank, the factor bitmamba.cpp applies (computed in float32 there too)."""
        return float(np.float32(self.alpha) / np.float32(self.rank))

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def shapes(self, layer: int) -> dict[str, tuple[int, int]]:
        """{"in_proj": (out, in), "out_proj": (out, in)} of one layer."""
        a_in, b_in, a_out, b_out = self.layers[layer]
        return {"in_proj": (b_in.shape[0], a_in.shape[1]), "out_proj": (b_out.shape[0], a_out.shape[1])}


def read_lora(path: str | os.PathLike[str]) -> LoraAdapter:
    """Read an adapter file; a :class:`LoraFormatError` naming the file and the problem otherwise."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(f"LoRA file {p} not found")
    if not p.is_file():
        raise LoraFormatError(f"LoRA file {p} is not a regular file")
    data = p.read_bytes()
    return parse_lora(data, p)


def parse_lora(data: bytes, path: object = "<bytes>") -> LoraAdapter:
    where = f"LoRA file {path}"
    if not data:
        raise LoraFormatError(f"{where} is empty")
    if len(data) < HEADER.size:
        if not MAGIC_BYTES.startswith(data[:4]):
            raise LoraFormatError(f"{where} is not a LoRA adapter (no 'LOR2' magic; {len(data)} bytes)")
        raise LoraFormatError(f"{where} is truncated: {len(data)} bytes, the header alone is {HEADER.size}")
    magic, version, rank, alpha, n_layers, n_targets = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise LoraFormatError(
            f"{where} is not a LoRA adapter (magic 0x{magic:08X}, expected 0x{MAGIC:08X} 'LOR2' as bitmamba.cpp's "
            "scripts/export_lora_bin.py writes)"
        )
    if version != VERSION:
        raise LoraFormatError(f"{where} has format version {version}; this engine reads version {VERSION}")
    if n_targets != len(TARGETS):
        raise LoraFormatError(
            f"{where} has {n_targets} targets per layer; the format has {len(TARGETS)} (in_proj, out_proj)"
        )
    if not 1 <= rank <= MAX_RANK:
        raise LoraFormatError(f"{where} has rank {rank}; expected 1..{MAX_RANK}")
    if not math.isfinite(alpha):
        raise LoraFormatError(f"{where} has alpha {alpha}, not a finite number")
    if n_layers < 1:
        raise LoraFormatError(f"{where} has no layers")
    off = HEADER.size
    layers = []
    for layer in range(n_layers):
        mats: list[np.ndarray] = []
        for target, name in enumerate(TARGETS):
            label = f"layer {layer} {name}"
            if off + SLOT.size > len(data):
                raise LoraFormatError(
                    f"{where} is truncated: it ends at byte {len(data)}, before {label} "
                    f"(the header says {n_layers} layers x 2 targets)"
                )
            got_layer, got_target, n_out, n_in, slot_rank = SLOT.unpack_from(data, off)
            if (got_layer, got_target) != (layer, target):
                got = TARGETS[got_target] if got_target < len(TARGETS) else f"target {got_target}"
                raise LoraFormatError(
                    f"{where}: expected {label} at byte {off}, found layer {got_layer} {got} "
                    "(every layer needs in_proj then out_proj, layers in order)"
                )
            if slot_rank != rank:
                raise LoraFormatError(f"{where}: {label} has rank {slot_rank}, the header says {rank}")
            if n_out < 1 or n_in < 1:
                raise LoraFormatError(f"{where}: {label} has shape {n_out}x{n_in}")
            off += SLOT.size
            need = 4 * rank * (n_in + n_out)
            if off + need > len(data):
                raise LoraFormatError(
                    f"{where} is truncated: {label} ({n_out}x{n_in}, rank {rank}) needs {need} bytes at byte {off}, "
                    f"the file has {len(data) - off}"
                )
            a = np.frombuffer(data, "<f4", rank * n_in, off).reshape(rank, n_in).astype(np.float32)
            off += 4 * rank * n_in
            b = np.frombuffer(data, "<f4", n_out * rank, off).reshape(n_out, rank).astype(np.float32)
            off += 4 * n_out * rank
            for m, mname in ((a, "A"), (b, "B")):
                if not np.isfinite(m).all():
                    raise LoraFormatError(f"{where}: {label} {mname} contains NaN or Inf")
            mats += [a, b]
        layers.append((mats[0], mats[1], mats[2], mats[3]))
    if off != len(data):
        raise LoraFormatError(
            f"{where} has {len(data) - off} bytes after its last layer (the header says {n_layers} layers): "
            "not a whole adapter"
        )
    return LoraAdapter(
        rank=rank, alpha=float(alpha), layers=layers, path=path if isinstance(path, Path) else None
    )


def lora_bytes(
    rank: int, alpha: float, layers: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
) -> bytes:
    """The file's bytes (what bitmamba.cpp's scripts/export_lora_bin.py writes)."""
    out = [HEADER.pack(MAGIC, VERSION, rank, float(alpha), len(layers), len(TARGETS))]
    for li, mats in enumerate(layers):
        for t in range(len(TARGETS)):
            a = np.ascontiguousarray(mats[2 * t], dtype="<f4")
            b = np.ascontiguousarray(mats[2 * t + 1], dtype="<f4")
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
                raise ValueError(f"layer {li} {TARGETS[t]}: A must be [{rank}, in] and B [out, {rank}]")
            out.append(SLOT.pack(li, t, b.shape[0], a.shape[1], rank))
            out.append(a.tobytes())
            out.append(b.tobytes())
    return b"".join(out)


def write_lora(
    path: str | os.PathLike[str],
    rank: int,
    alpha: float,
    layers: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
) -> Path:
    """Write an adapter file (atomically: a reader never sees half of one)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(lora_bytes(rank, alpha, layers))
    os.replace(tmp, p)
    return p


def check_fits(adapter: LoraAdapter, info: dict, where: str) -> None:
    """One clear error when the adapter is not for a model of this shape (`info`: the core's)."""
    if info.get("arch") != "bitmamba2":
        raise LoraFormatError(f"LoRA adapters apply to BitMamba-2 models; this model is {info.get('arch')}")
    d, n_layers = int(info["d_model"]), int(info["n_layers"])
    di, heads = int(info["d_inner"]), int(info["n_heads"])
    want = {"in_proj": (2 * di + 3 * heads, d), "out_proj": (d, di)}
    got = adapter.shapes(0)
    file_d = got["in_proj"][1]
    if file_d != d:
        raise LoraFormatError(f"{where} is for d_model {file_d}, this model has {d}")
    if adapter.n_layers != n_layers:
        raise LoraFormatError(
            f"{where} is for a {adapter.n_layers}-layer model, this model has {n_layers} layers"
        )
    for layer in range(adapter.n_layers):
        for name, shape in adapter.shapes(layer).items():
            if shape != want[name]:
                raise LoraFormatError(
                    f"{where}: layer {layer} {name} is {shape[0]}x{shape[1]}, this model's is "
                    f"{want[name][0]}x{want[name][1]} (d_model {d}, {heads} heads)"
                )


def attach(model: Model, lora: str | os.PathLike[str] | LoraAdapter) -> LoraAdapter:
    """Apply an adapter (a file or a read one) to a loaded BitMamba-2 model, in place."""
    adapter = lora if isinstance(lora, LoraAdapter) else read_lora(lora)
    where = f"LoRA file {adapter.path}" if adapter.path is not None else "the LoRA adapter"
    check_fits(adapter, dict(model.core.info), where)
    from bitmamba_lsp import _core

    try:
        model.core.set_lora(adapter.layers, adapter.scale)
    except _core.FormatError as e:
        raise LoraFormatError(f"{where}: {e}") from None
    model.extra["lora"] = {
        "path": str(adapter.path) if adapter.path else None,
        "rank": adapter.rank,
        "alpha": adapter.alpha,
    }
    return adapter


def detach(model: Model) -> None:
    """Remove an attached adapter (the model is the base model again)."""
    model.core.set_lora(None)
    model.extra.pop("lora", None)
