"""Export a trained :class:`~bitmamba_lsp.train.model.BitMamba2` to the engine's model directory:
``model.bin`` (``docs/formats.md`` section 1), ``tokenizer.json`` and ``model.json`` (metadata), and load
such a directory back into PyTorch (``--init`` fine-tuning, tests).

Ternary matrices are written as :class:`TernaryTensor` built from
:func:`~bitmamba_lsp.train.model.ternary_quantize`, the quantizer the QAT forward uses, so the
``(q, scale)`` in the file are exactly the values the model was evaluated with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from bitmamba_lsp.engine.formats.bitmamba_bin import (
    BitMamba2Config,
    TernaryTensor,
    pack_ternary,
    read_bin,
    write_bin,
)

from .model import BitLinear, BitMamba2, ModelConfig, ternary_quantize

WEIGHTS = "model.bin"
TOKENIZER = "tokenizer.json"
METADATA = "model.json"


def bin_config(cfg: ModelConfig) -> BitMamba2Config:
    return BitMamba2Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads
    )


def ternary_of(lin: BitLinear) -> TernaryTensor:
    q, s = ternary_quantize(lin.weight.float())
    qi = q.to(torch.int8).numpy()
    return TernaryTensor(rows=qi.shape[0], cols=qi.shape[1], scale=float(s.item()), packed=pack_ternary(qi))


def model_tensors(model: BitMamba2) -> dict[str, np.ndarray | TernaryTensor]:
    """The ``.bin`` tensors of ``model`` (names and shapes of ``BitMamba2Config.tensor_specs``)."""

    def f32(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().float().numpy(), dtype=np.float32)

    out: dict[str, np.ndarray | TernaryTensor] = {"embed": f32(model.embed)}
    for i, ly in enumerate(model.layers):
        p = f"layers.{i}."
        out[p + "in_proj_norm"] = f32(ly.in_proj.norm)
        out[p + "in_proj"] = ternary_of(ly.in_proj)
        out[p + "conv1d_w"] = f32(ly.conv1d_w)
        out[p + "conv1d_b"] = f32(ly.conv1d_b)
        out[p + "dt_bias"] = f32(ly.dt_bias)
        out[p + "A_log"] = f32(ly.A_log)
        out[p + "D"] = f32(ly.D)
        out[p + "out_proj_norm"] = f32(ly.out_proj.norm)
        out[p + "out_proj"] = ternary_of(ly.out_proj)
    out["norm_f"] = f32(model.norm_f)
    out["lm_head_norm"] = f32(model.lm_head.norm)
    out["lm_head"] = ternary_of(model.lm_head)
    return out


def write_json(path: Path, data: dict) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def export_model(
    model: BitMamba2, tokenizer, out_dir: str | os.PathLike[str], metadata: dict | None = None
) -> Path:
    """Write ``model.bin``, ``tokenizer.json`` and ``model.json`` into ``out_dir``; return model.bin's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    n_tok = tokenizer.get_vocab_size(with_added_tokens=True)
    if n_tok != cfg.vocab_size:
        raise ValueError(f"tokenizer has {n_tok} ids but the model's vocab_size is {cfg.vocab_size}")
    with torch.no_grad():
        tensors = model_tensors(model)
    bin_path = out / WEIGHTS
    # written beside and renamed over: a daemon serving the previous export keeps its mapping intact
    tmp_bin = out / (WEIGHTS + ".tmp")
    write_bin(tmp_bin, bin_config(cfg), tensors)
    os.replace(tmp_bin, bin_path)
    tmp = out / (TOKENIZER + ".tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, out / TOKENIZER)
    meta = {
        "architecture": "bitmamba2",
        "format": "bitmamba.cpp .bin (docs/formats.md section 1)",
        "weights": WEIGHTS,
        "tokenizer": TOKENIZER,
        "eos_token": "<|endoftext|>",
        "eos_id": tokenizer.token_to_id("<|endoftext|>"),
        "config": cfg.to_dict(),
        "weights_bytes": bin_path.stat().st_size,
    }
    meta.update(metadata or {})
    write_json(out / METADATA, meta)
    return bin_path


def load_exported(path: str | os.PathLike[str]) -> tuple[BitMamba2, object | None, dict]:
    """Load a model directory (or a ``.bin`` file) into PyTorch: ``(model, tokenizer or None, metadata)``.

    Latent float weights are rebuilt from the ternary ones so that re-quantizing gives the same
    ``(q, scale)``: ``W = q / (scale * mean|q|)`` (then ``mean|W| = 1/scale`` and ``rint(W*scale) = q``).
    """
    p = Path(path)
    bin_path = p / WEIGHTS if p.is_dir() else p
    d = bin_path.parent
    bm = read_bin(bin_path)
    c = bm.config
    model = BitMamba2(
        ModelConfig(vocab_size=c.vocab_size, d_model=c.d_model, n_layers=c.n_layers, n_heads=c.n_heads)
    )
    t = bm.tensors

    def f(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(t[name], dtype=np.float32))

    def tern(name: str) -> torch.Tensor:
        tt: TernaryTensor = t[name]
        q = tt.unpack().astype(np.float64)
        nz = max(float(np.abs(q).mean()), 1e-8)
        return torch.from_numpy((q / (tt.scale * nz)).astype(np.float32))

    with torch.no_grad():
        model.embed.copy_(f("embed"))
        for i, ly in enumerate(model.layers):
            p_ = f"layers.{i}."
            ly.in_proj.norm.copy_(f(p_ + "in_proj_norm"))
            ly.in_proj.weight.copy_(tern(p_ + "in_proj"))
            ly.conv1d_w.copy_(f(p_ + "conv1d_w").reshape(ly.conv1d_w.shape))
            ly.conv1d_b.copy_(f(p_ + "conv1d_b"))
            ly.dt_bias.copy_(f(p_ + "dt_bias"))
            ly.A_log.copy_(f(p_ + "A_log"))
            ly.D.copy_(f(p_ + "D"))
            ly.out_proj.norm.copy_(f(p_ + "out_proj_norm"))
            ly.out_proj.weight.copy_(tern(p_ + "out_proj"))
        model.norm_f.copy_(f("norm_f"))
        model.lm_head.norm.copy_(f("lm_head_norm"))
        model.lm_head.weight.copy_(tern("lm_head"))
    tokenizer = None
    if (d / TOKENIZER).is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(d / TOKENIZER))
    meta = json.loads((d / METADATA).read_text("utf-8")) if (d / METADATA).is_file() else {}
    del bm
    return model, tokenizer, meta
