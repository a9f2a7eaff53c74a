"""bitmamba-student checkpoints: ``config.json`` + safetensors, Mamba-1 blocks with BitLinear.

Tensor names are mapped through one table (`canonical_name`), tolerating the usual prefixes
(``model.``, ``backbone.``) and a ``mixer.`` level inside blocks, and ``A_log`` / ``log_A``.
Anything unexpected or missing is reported by name. Safetensors files are memory-mapped; float16
and bfloat16 tensors are converted to float32 at load.
"""

from __future__ import annotations

import fnmatch
import json
import mmap
import os
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bitmamba_lsp import _core
from bitmamba_lsp.engine.errors import ModelFormatError
from bitmamba_lsp.engine.formats.base import LoadOptions, ModelFormat, resolve_threads
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.engine.tokenizer import find_tokenizer

_PREFIXES = ("model.", "backbone.", "bitmamba.", "transformer.")
_LAYER = re.compile(r"^layers\.(\d+)\.(?:mixer\.)?(.+)$")
_LAYER_NAMES = {
    "norm.weight": "norm",
    "in_proj.weight": "in_proj",
    "in_proj.alpha": "in_proj.alpha",
    "conv1d.weight": "conv1d_w",
    "conv1d.bias": "conv1d_b",
    "x_proj.weight": "x_proj",
    "dt_proj.weight": "dt_proj",
    "dt_proj.bias": "dt_proj_b",
    "log_A": "A_log",
    "A_log": "A_log",
    "D": "D",
    "out_proj.weight": "out_proj",
    "out_proj.alpha": "out_proj.alpha",
}
_TOP_NAMES = {
    "embed_tokens.weight": "embed",
    "embeddings.weight": "embed",
    "embedding.weight": "embed",
    "norm.weight": "norm_f",
    "norm_f.weight": "norm_f",
    "lm_head.weight": "lm_head",
}
_OPTIONAL = ("in_proj.alpha", "out_proj.alpha")


@dataclass
class StudentConfig:
    vocab_size: int = 151665
    d_model: int = 768
    n_layers: int = 12
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int = 48
    norm_eps: float = 1e-5
    gate: str = "mul_d"  # "mul_d": y*silu(z)*D (the author's training code); "skip_d": (y + D*x)*silu(z)
    tie_embeddings: bool = False

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @classmethod
    def from_json(cls, data: dict) -> StudentConfig:
        def pick(*keys: str, default: object = None) -> object:
            for k in keys:
                if k in data and data[k] is not None:
                    return data[k]
            return default

        c = cls()
        c.vocab_size = int(pick("vocab_size", default=c.vocab_size))
        c.d_model = int(pick("hidden_size", "d_model", "dim", default=c.d_model))
        c.n_layers = int(pick("num_hidden_layers", "n_layers", "n_layer", "num_layers", default=c.n_layers))
        c.d_state = int(pick("state_size", "d_state", default=c.d_state))
        c.expand = int(pick("expand", default=c.expand))
        c.d_conv = int(pick("conv_kernel", "d_conv", default=c.d_conv))
        rank = pick("time_step_rank", "dt_rank", default="auto")
        c.dt_rank = -(-c.d_model // 16) if rank == "auto" else int(rank)
        c.norm_eps = float(pick("rms_norm_eps", "layer_norm_epsilon", "norm_eps", default=c.norm_eps))
        c.gate = str(pick("bitmamba_gate", "gate", default=c.gate))
        c.tie_embeddings = bool(pick("tie_word_embeddings", "tie_embeddings", default=False))
        if c.gate not in ("mul_d", "skip_d"):
            raise ModelFormatError(f"config.json: gate must be 'mul_d' or 'skip_d', got {c.gate!r}")
        return c

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        d, di, S, R = self.d_model, self.d_inner, self.d_state, self.dt_rank
        out: dict[str, tuple[int, ...]] = {"embed": (self.vocab_size, d), "norm_f": (d,)}
        if not self.tie_embeddings:
            out["lm_head"] = (self.vocab_size, d)
        for i in range(self.n_layers):
            p = f"layers.{i}."
            out.update(
                {
                    p + "norm": (d,),
                    p + "in_proj": (2 * di, d),
                    p + "in_proj.alpha": (2 * di,),
                    p + "conv1d_w": (di, 1, self.d_conv),
                    p + "conv1d_b": (di,),
                    p + "x_proj": (R + 2 * S, di),
                    p + "dt_proj": (di, R),
                    p + "dt_proj_b": (di,),
                    p + "A_log": (di, S),
                    p + "D": (di,),
                    p + "out_proj": (d, di),
                    p + "out_proj.alpha": (d,),
                }
            )
        return out


def canonical_name(name: str) -> str | None:
    for pre in _PREFIXES:
        if name.startswith(pre):
            name = name[len(pre) :]
            break
    m = _LAYER.match(name)
    if m:
        inner = _LAYER_NAMES.get(m.group(2))
        return None if inner is None else f"layers.{m.group(1)}.{inner}"
    return _TOP_NAMES.get(name)


# ------------------------------------------------------------------------------------ safetensors
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "I8": np.int8}


class SafetensorsFile:
    """A memory-mapped safetensors file; tensors are NumPy views (or float32 copies for f16/bf16)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ModelFormatError(f"{path}: not a safetensors file (too short)")
            self.buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        (n,) = struct.unpack("<Q", self.buf[:8])
        if n > size - 8 or n > 100_000_000:
            raise ModelFormatError(f"{path}: corrupt safetensors header (length {n})")
        try:
            self.header = json.loads(bytes(self.buf[8 : 8 + n]))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFormatError(f"{path}: corrupt safetensors header: {e}") from None
        self.base = 8 + n
        self.size = size

    def names(self) -> list[str]:
        return [k for k in self.header if k != "__metadata__"]

    def tensor(self, name: str) -> np.ndarray:
        info = self.header[name]
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ModelFormatError(f"{self.path}: tensor '{name}': unsupported dtype {info.get('dtype')}")
        start, end = info["data_offsets"]
        shape = tuple(int(x) for x in info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if end - start != count * np.dtype(dtype).itemsize or self.base + end > self.size:
            raise ModelFormatError(
                f"{self.path}: tensor '{name}': data offsets do not match its shape (truncated?)"
            )
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.base + start).reshape(shape)
        if info["dtype"] == "BF16":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        if arr.dtype != np.float32 and arr.dtype != np.int8:
            return arr.astype(np.float32)
        return arr


def read_student(folder: Path) -> tuple[StudentConfig, dict[str, np.ndarray], list[SafetensorsFile]]:
    cfg_path = folder / "config.json"
    try:
        cfg = StudentConfig.from_json(json.loads(cfg_path.read_text()))
    except FileNotFoundError:
        raise ModelFormatError(f"{folder}: no config.json") from None
    except (json.JSONDecodeError, ValueError, TypeError) as e:
        raise ModelFormatError(f"{cfg_path}: {e}") from None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(f"{folder}: no .safetensors files")
    opened = [SafetensorsFile(p) for p in files]
    tensors: dict[str, np.ndarray] = {}
    unexpected: list[str] = []
    for f in opened:
        for name in f.names():
            canon = canonical_name(name)
            if canon is None:
                unexpected.append(name)
                continue
            tensors[canon] = f.tensor(name)
    expected = cfg.expected_shapes()
    if "lm_head" in tensors and "lm_head" not in expected:
        expected["lm_head"] = (cfg.vocab_size, cfg.d_model)
    missing = [k for k in expected if k not in tensors and not k.endswith(_OPTIONAL)]
    if "lm_head" not in tensors and not cfg.tie_embeddings:
        missing.append("lm_head")
    if unexpected or missing:
        raise ModelFormatError(
            f"{folder}: tensors do not match a bitmamba-student model (config: {cfg.n_layers} layers, "
            f"d_model {cfg.d_model}, d_state {cfg.d_state}): missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    for name, arr in tensors.items():
        want = expected.get(name)
        if want is not None and tuple(d for d in arr.shape if d != 1) != tuple(d for d in want if d != 1):
            raise ModelFormatError(f"{folder}: tensor '{name}' has shape {arr.shape}, expected {want}")
    return cfg, tensors, opened


def core_config(cfg: StudentConfig, *, quantize: bool = True, lm_head: str = "int8") -> dict[str, object]:
    d = asdict(cfg)
    d.update(d_inner=cfg.d_inner, quantize=quantize, lm_head=lm_head)
    return d


def write_student(
    folder: Path, cfg: StudentConfig, tensors: dict[str, np.ndarray], *, names: str = "plain"
) -> None:
    """Write a checkpoint in the on-Hub layout (tests build tiny models with it).
    names: "plain" (layers.i.in_proj.weight, log_A) or "hf" (backbone.layers.i.mixer..., A_log)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    inv_layer = {v: k for k, v in _LAYER_NAMES.items() if k != "A_log"}
    inv_top = {"embed": "embed_tokens.weight", "norm_f": "norm.weight", "lm_head": "lm_head.weight"}
    out: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        m = re.match(r"^layers\.(\d+)\.(.+)$", name)
        if m:
            inner = inv_layer[m.group(2)]
            if names == "hf":
                inner = "A_log" if inner == "log_A" else inner
                key = (
                    f"backbone.layers.{m.group(1)}.mixer.{inner}"
                    if inner != "norm.weight"
                    else f"backbone.layers.{m.group(1)}.norm.weight"
                )
            else:
                key = f"layers.{m.group(1)}.{inner}"
        else:
            key = ("backbone." if names == "hf" and name != "lm_head" else "") + inv_top[name]
        out[key] = np.ascontiguousarray(arr, dtype=np.float32)
    save_file(out, str(folder / "model.safetensors"))
    config = {
        "model_type": "bitmamba-student",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "state_size": cfg.d_state,
        "expand": cfg.expand,
        "conv_kernel": cfg.d_conv,
        "time_step_rank": cfg.dt_rank,
        "rms_norm_eps": cfg.norm_eps,
        "bitmamba_gate": cfg.gate,
        "tie_word_embeddings": cfg.tie_embeddings,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def random_student(cfg: StudentConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, di, S, R = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank

    def u(*shape: int, lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, size=shape).astype(np.float32)

    t: dict[str, np.ndarray] = {
        "embed": (rng.standard_normal((cfg.vocab_size, d)) * 0.5).astype(np.float32),
        "norm_f": u(d, lo=0.8, hi=1.2),
    }
    if not cfg.tie_embeddings:
        t["lm_head"] = (rng.standard_normal((cfg.vocab_size, d)) * 0.05).astype(np.float32)
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), size=di))
        t.update(
            {
                p + "norm": u(d, lo=0.8, hi=1.2),
                p + "in_proj": (rng.standard_normal((2 * di, d)) * 0.05).astype(np.float32),
                p + "in_proj.alpha": u(2 * di, lo=0.5, hi=1.5),
                p + "conv1d_w": u(di, 1, cfg.d_conv, lo=-0.5, hi=0.5),
                p + "conv1d_b": u(di, lo=-0.1, hi=0.1),
                p + "x_proj": (rng.standard_normal((R + 2 * S, di)) * 0.05).astype(np.float32),
                p + "dt_proj": (rng.standard_normal((di, R)) * R**-0.5).astype(np.float32),
                p + "dt_proj_b": (dt + np.log(-np.expm1(-dt))).astype(np.float32),
                p + "A_log": np.log(np.tile(np.arange(1, S + 1, dtype=np.float32), (di, 1))),
                p + "D": u(di, lo=0.5, hi=1.5),
                p + "out_proj": (rng.standard_normal((d, di)) * 0.05).astype(np.float32),
                p + "out_proj.alpha": u(d, lo=0.5, hi=1.5),
            }
        )
    return t


# ---------------------------------------------------------------------------------------- loading
HUB_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json")


def load_student(
    folder: str | os.PathLike[str],
    *,
    threads: int | None = None,
    kernels: str = "simd",
    quantize: bool = True,
    lm_head: str = "int8",
    name: str | None = None,
) -> Model:
    """Load a bitmamba-student checkpoint (config.json + safetensors). quantize=False keeps the
    in/out projections in float (reference checks); lm_head="f32" keeps the output layer in float
    instead of int8 per row."""
    folder = Path(folder)
    cfg, tensors, files = read_student(folder)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    try:
        core = _core.build_mamba1(
            arrays,
            core_config(cfg, quantize=quantize, lm_head=lm_head),
            threads=resolve_threads(threads),
            level=kernels,
        )
    except _core.FormatError as e:
        raise ModelFormatError(f"{folder}: {e}") from None
    return Model(core=core, config=cfg, tokenizer=None, name=name or folder.name, path=folder, _keep=files)


def find(path: Path) -> Path | None:
    """A folder with config.json and safetensors."""
    if path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    return None


def hub_files(files: list[str]) -> list[str]:
    if "config.json" not in files or not any(f.endswith(".safetensors") for f in files):
        return []
    return [f for f in files if any(fnmatch.fnmatch(f, p) for p in HUB_PATTERNS)]


def load(found: Path, folder: Path, opts: LoadOptions, name: str) -> Model:
    if opts.repeat is not None:
        raise ModelFormatError(f"{found}: layer repetition (repeat) is for BitMamba-2 models, not bitmamba-student")
    model = load_student(found, threads=opts.threads, kernels=opts.kernels, lm_head=opts.lm_head, name=name)
    model.tokenizer = find_tokenizer([found], model.vocab_size, opts.prepare_tokenizer)
    return model


FORMAT = ModelFormat("bitmamba-student safetensors", find, hub_files, load)
