"""``bitmamba train --lora``: train a LoRA adapter for a BitMamba-2 model on a corpus.

The base model (``--init``: the shipped one, a model directory, a ``.bin`` or a Hub repo id holding
one) is frozen; every block's ``in_proj`` and ``out_proj`` gets a :class:`~bitmamba_lsp.train.model.LoRA`
(A [rank, in] random, B [out, rank] zero, so training starts from the base model exactly), and only
those matrices are trained. The result is written in bitmamba.cpp's adapter format
(``engine/lora.py``): ``bitmamba generate --lora OUT``, ``load(model, lora=OUT)`` and bitmamba.cpp's
``--lora OUT`` read it. The corpus, tokens, schedule, evaluation and run directory are the
trainer's (``trainer.py``); ``lora-checkpoint.pt`` in the run directory resumes an interrupted run.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bitmamba_lsp.engine import lora as lora_format

from . import data as data_mod
from .export import load_exported, write_json
from .model import BitMamba2, LoRA
from .trainer import (
    Logger,
    TrainConfig,
    _atomic_torch_save,
    _file_digest,
    evaluate,
    fim_options,
    lr_at,
    next_token_loss,
    optimizer_step,
    prepare_corpus,
    prepare_tokens,
)

DEFAULT_ADAPTER = "adapter.lora.bin"


def adapter_path(out: str | os.PathLike[str]) -> Path:
    """The adapter file ``--out`` names: the file itself, or ``adapter.lora.bin`` in a directory."""
    p = Path(out).expanduser()
    if p.is_dir() or str(out).endswith(("/", os.sep)):
        return p / DEFAULT_ADAPTER
    return p


def resolve_base(init: str) -> Path:
    """The ``.bin`` of the base model: a file, a model directory, or a Hub repo id (its ``.bin``)."""
    from bitmamba_lsp.engine import hub
    from bitmamba_lsp.engine.formats import bitmamba_bin
    from bitmamba_lsp.engine.loader import _REPO_ID, choose_files

    p = Path(init).expanduser()
    if not p.exists() and _REPO_ID.match(init):
        p = hub.resolve(init, None, choose_files)
    found = bitmamba_bin.find(p) if p.exists() else None
    if found is None:
        raise SystemExit(
            f"--init {init}: no BitMamba-2 .bin model there (a LoRA adapter is trained for a bitmamba.cpp .bin)"
        )
    return found


def base_tokenizer(bin_path: Path, vocab_size: int):
    """The tokenizer the engine uses with this .bin: tokenizer.json / tokenizer.bin beside it, else
    GPT-2's (the bundled vocabulary) for a 50257-token model."""
    from bitmamba_lsp.engine import tokenizer as tk

    for name in ("tokenizer.json", "tokenizer.bin"):
        if (bin_path.parent / name).is_file():
            return tk.load_tokenizer(bin_path.parent / name)
    if vocab_size == tk.GPT2_VOCAB:
        return tk.bundled_gpt2_tokenizer()
    raise SystemExit(f"--init {bin_path}: no tokenizer.json or tokenizer.bin beside the model")


def add_adapters(model: BitMamba2, rank: int, alpha: float) -> list[torch.nn.Parameter]:
    """Freeze the model and give every block's in_proj and out_proj a new LoRA; its parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = model.cfg
    params: list[torch.nn.Parameter] = []
    for ly in model.layers:
        ly.in_proj.lora = LoRA(cfg.d_model, cfg.d_in_proj, rank, alpha)
        ly.out_proj.lora = LoRA(cfg.d_inner, cfg.d_model, rank, alpha)
        params += [ly.in_proj.lora.A, ly.in_proj.lora.B, ly.out_proj.lora.A, ly.out_proj.lora.B]
    return params


def adapter_layers(model: BitMamba2) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(A_in, B_in, A_out, B_out) per layer, float32, as the file stores them."""

    def f32(t: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().float().numpy(), dtype=np.float32)

    out = []
    for ly in model.layers:
        a, b = ly.in_proj.lora, ly.out_proj.lora
        out.append((f32(a.A), f32(a.B), f32(b.A), f32(b.B)))
    return out


def lora_state(model: BitMamba2) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora." in k}


def train_lora(cfg: TrainConfig) -> dict:
    """Train the adapter; write it to the file ``cfg.out`` names; return the run's metadata."""
    if cfg.lora_rank < 1:
        raise SystemExit("--lora-rank must be at least 1")
    torch.set_num_threads(cfg.threads)
    out = adapter_path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = Path(cfg.run_dir) if cfg.run_dir else out.parent / (out.name + ".run")
    run.mkdir(parents=True, exist_ok=True)
    log = Logger(run / "train.log")
    wall0 = time.time()
    command = cfg.command or " ".join(map(shlex.quote, sys.argv))
    log(f"command: {command}")
    if not cfg.init:
        raise SystemExit("bitmamba train --lora: give the base model with --init (default: the shipped one)")
    base = resolve_base(cfg.init)
    model, tok, _ = load_exported(base)
    mc = model.cfg
    if tok is None:
        tok = base_tokenizer(base, mc.vocab_size)
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    if n_tok > mc.vocab_size:
        raise SystemExit(f"--init {base}: the tokenizer has {n_tok} ids, the model {mc.vocab_size}")
    log(f"base: {base} ({mc}); LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha} on in_proj and out_proj")

    corpus = prepare_corpus(cfg, run, log)
    fim = fim_options(cfg)
    if fim is not None and any(tok.token_to_id(t) is None for t in data_mod.FIM_TOKENS):
        raise SystemExit(
            "--fim-rate with --lora needs a base model whose tokenizer has the FIM sentinel tokens"
        )
    tokens = prepare_tokens(tok, corpus, run, log, fim, cfg.seed)
    if len(tokens["heldout"]) < cfg.seq_len + 1:
        log(
            "warning: the held-out split is smaller than one window; evaluating on the end of the training split"
        )
        tokens["heldout"] = tokens["train"][-(cfg.seq_len + 1) * 8 :]

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    params = add_adapters(model, cfg.lora_rank, cfg.lora_alpha)
    model.train()
    n_params = sum(p.numel() for p in params)
    log(f"adapter: {n_params / 1e6:.3f}M trainable parameters ({len(model.layers)} layers x 2 projections)")
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, weight_decay=cfg.weight_decay
    )
    sampler = data_mod.WindowSampler(tokens["train"], cfg.seq_len, cfg.batch_size, cfg.seed)
    eval_small = data_mod.eval_windows(tokens["heldout"], cfg.seq_len, cfg.eval_windows)
    train_sample = data_mod.eval_windows(tokens["train"], cfg.seq_len, cfg.eval_windows)

    key = {
        "base": str(base.resolve()),
        "base_digest": _file_digest(base),
        "rank": cfg.lora_rank,
        "alpha": cfg.lora_alpha,
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "fim": fim.to_dict() if fim is not None else None,
    }
    ckpt = run / "lora-checkpoint.pt"
    step, train_seconds, history = 0, 0.0, []
    before = {
        "heldout_loss": round(evaluate(model, eval_small), 4),
        "train_loss": round(evaluate(model, train_sample), 4),
    }
    if cfg.resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("key") == key:
            model.load_state_dict(saved["lora"], strict=False)
            opt.load_state_dict(saved["opt"])
            step, train_seconds, history = saved["step"], saved["train_seconds"], saved["history"]
            before = saved.get("before", before)
            log(f"resume: step {step}, {train_seconds / 60:.1f} min trained")
        else:
            log("resume: checkpoint is for a different configuration; starting over")
    log(
        f"base model: held-out loss {before['heldout_loss']:.4f}, train-sample loss {before['train_loss']:.4f}"
    )

    step_fn = next_token_loss(model, cfg.compile, log)

    budget = 60.0 * cfg.minutes
    tokens_per_step = cfg.batch_size * cfg.seq_len

    def progress() -> float:
        return max(step / max(cfg.steps, 1), train_seconds / budget if budget > 0 else 0.0)

    def save(status: str) -> None:
        lora_format.write_lora(out, cfg.lora_rank, cfg.lora_alpha, adapter_layers(model))
        _atomic_torch_save(
            {
                "key": key,
                "lora": lora_state(model),
                "opt": opt.state_dict(),
                "step": step,
                "train_seconds": train_seconds,
                "history": history,
                "before": before,
            },
            ckpt,
        )
        log(f"checkpoint: step {step} -> {ckpt}; wrote the {status} adapter {out}")

    log(f"training: up to {cfg.steps} steps x {tokens_per_step} tokens or {cfg.minutes} min")
    last_ckpt = time.time()
    run_loss, run_n, t_log, tokens_since = 0.0, 0, time.time(), 0
    while progress() < 1.0:
        t0 = time.time()
        lr = lr_at(cfg, step, progress())
        lv, gnorm = optimizer_step(opt, lr, step_fn, sampler.batch(step), params, cfg.grad_clip, step)
        step += 1
        run_loss, run_n, tokens_since = run_loss + lv, run_n + 1, tokens_since + tokens_per_step
        train_seconds += time.time() - t0
        if step % cfg.log_every == 0 or step == 1:
            dt = time.time() - t_log
            entry = {
                "step": step,
                "train_loss": round(run_loss / run_n, 4),
                "lr": lr,
                "grad_norm": round(gnorm, 3),
                "tok_per_s": round(tokens_since / max(dt, 1e-9)),
                "minutes": round(train_seconds / 60, 2),
            }
            if step % cfg.eval_every == 0:
                entry["heldout_loss"] = round(evaluate(model, eval_small), 4)
            history.append(entry)
            with open(run / "history.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            msg = f"step {step:5d} | loss {entry['train_loss']:.4f} | lr {lr:.2e} | gnorm {gnorm:.2f} | {entry['tok_per_s']} tok/s"
            if "heldout_loss" in entry:
                msg += f" | held-out {entry['heldout_loss']:.4f}"
            log(msg)
            run_loss, run_n, t_log, tokens_since = 0.0, 0, time.time(), 0
        if time.time() - last_ckpt > 60 * cfg.checkpoint_minutes:
            save("partial")
            last_ckpt = t_log = time.time()

    after = {
        "heldout_loss": round(evaluate(model, eval_small), 4),
        "train_loss": round(evaluate(model, train_sample), 4),
    }
    save("final")
    log(
        f"adapter: held-out loss {before['heldout_loss']:.4f} -> {after['heldout_loss']:.4f}, "
        f"train-sample loss {before['train_loss']:.4f} -> {after['train_loss']:.4f} (engine-form forward)"
    )
    meta = {
        "format": "bitmamba.cpp LoRA adapter (LOR2, docs/formats.md)",
        "adapter": str(out),
        "base": str(base),
        "rank": cfg.lora_rank,
        "alpha": cfg.lora_alpha,
        "scale": float(np.float32(cfg.lora_alpha) / np.float32(cfg.lora_rank)),
        "targets": list(lora_format.TARGETS),
        "command": command,
        "train_config": {k: v for k, v in asdict(cfg).items() if k != "command"},
        "corpus": corpus.summary()
        | {"train_tokens": len(tokens["train"]), "heldout_tokens": len(tokens["heldout"])},
        "training": {
            "steps": step,
            "tokens_seen": step * tokens_per_step,
            "train_minutes": round(train_seconds / 60, 2),
            "wall_minutes": round((time.time() - wall0) / 60, 2),
            "torch": torch.__version__,
        },
        "eval": {
            "before": before,
            "after": after,
            "windows": int(eval_small.shape[0]),
            "seq_len": cfg.seq_len,
        },
    }
    write_json(run / "lora.json", meta)
    log(
        f"wrote {out} ({out.stat().st_size:,} bytes); use it with --lora {shlex.quote(str(out))}; run dir {run}"
    )
    return meta
