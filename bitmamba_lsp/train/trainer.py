"""Training loop: corpus -> tokenizer -> token arrays -> QAT BitMamba-2 -> exported model directory.

Everything that is slow to rebuild lives in the *run directory* (``--run-dir``): the corpus list
(``corpus.json`` + ``manifest.tsv``), the tokenizer, the encoded splits (``*.npy``), the training
checkpoint (``checkpoint.pt``, written every ``checkpoint_minutes``), ``train.log`` and the loss
curves (``history.jsonl``). Re-running the same command resumes from the checkpoint.

Schedule: AdamW, linear warm-up then cosine decay to ``min_lr_ratio * lr``, gradient clipping.
The schedule runs on ``progress = max(step / steps, train_seconds / (60 * minutes))``, so the
learning rate is annealed on time even when the machine is slower than planned, and training stops
when progress reaches 1. With an unloaded machine the step budget binds and a run is reproducible
(same seed, same data order: batch ``k`` is a pure function of ``(seed, k)``).

Every checkpoint is also exported to ``--out`` (``model.json`` says ``"status": "partial"``), so a
crash or an interrupted session still leaves a usable model; the final export adds the full
held-out evaluation and sample completions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import corpus as corpus_mod
from . import data as data_mod
from .export import export_model, load_exported
from .model import BitMamba2, ModelConfig

SAMPLE_PROMPTS = (
    "def __init__(self",
    "import ",
    "class ",
    "    def forward(self, x):\n        ",
    "for i in range(",
    "if __name__ == ",
    "def main():\n    parser = argparse.ArgumentParser(",
    "    return ",
)


@dataclass
class TrainConfig:
    out: str
    run_dir: str | None = None
    corpus: list[str] = field(default_factory=list)
    stdlib: bool = False
    site_packages: bool = False
    extensions: tuple[str, ...] = (".py",)
    heldout_permille: int = 30
    group_cap_mb: float | None = 3.0
    init: str | None = None
    deepen: int | None = None  # grow the --init model to this many layers (grow_depth), then train
    packages: str | None = None  # a pinned registry package list (train/registry.py); None: none
    package_cache: str | None = None
    heldout_package_permille: int = 150
    fim_rate: float = 0.0  # share of pieces in fill-in-the-middle form (0: left to right only)
    fim_line_start: float = 0.75
    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    seq_len: int = 512
    batch_size: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    steps: int = 3000
    minutes: float = 45.0
    seed: int = 0
    threads: int = 2
    eval_every: int = 200
    eval_windows: int = 32
    final_eval_windows: int = 1024
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    compile: bool = True
    resume: bool = True
    command: str | None = None
    # --lora (train/lora.py): train a LoRA adapter for the --init model instead of the model itself
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: float = 32.0  # scale = alpha / rank (bitmamba.cpp's export default is 32)

    def model_config(self) -> ModelConfig:
        return ModelConfig(self.vocab_size, self.d_model, self.n_layers, self.n_heads)


class Logger:
    def __init__(self, path: Path | None) -> None:
        self.f = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if self.f:
            self.f.write(line + "\n")
            self.f.flush()


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = Path(f"{path}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------ stages


def prepare_corpus(cfg: TrainConfig, run: Path, log) -> corpus_mod.Corpus:
    from . import registry

    packages = registry.read_list(cfg.packages) if cfg.packages else []
    opts = corpus_mod.CorpusOptions(
        extensions=tuple(cfg.extensions),
        heldout_permille=cfg.heldout_permille,
        heldout_package_permille=cfg.heldout_package_permille,
        group_cap_bytes=None if cfg.group_cap_mb is None else int(cfg.group_cap_mb * 1024 * 1024),
    )
    key = json.dumps(
        {
            "corpus": [str(Path(c).resolve()) for c in cfg.corpus],
            "stdlib": cfg.stdlib,
            "site_packages": cfg.site_packages,
            "packages": [[p.registry, p.name, p.version] for p in packages],
            "options": asdict(opts),
        },
        sort_keys=True,
    )
    cache = run / "corpus.json"
    if cache.is_file():
        saved = json.loads(cache.read_text("utf-8"))
        if saved.get("key") == key:
            c = corpus_mod.Corpus.from_json(saved["corpus"])
            log(f"corpus: reusing {cache} ({len(c.documents)} files)")
            return c
    t0 = time.time()
    c = corpus_mod.build_corpus(
        stdlib=cfg.stdlib,
        site_packages=cfg.site_packages,
        directories=cfg.corpus,
        packages=packages,
        package_cache=cfg.package_cache,
        options=opts,
        log=log,
    )
    if not c.split("train"):
        raise SystemExit("the corpus has no training files (check --corpus and --ext)")
    cache.write_text(json.dumps({"key": key, "corpus": c.to_json()}), encoding="utf-8")
    c.write_manifest(run / "manifest.tsv")
    log(f"corpus: built in {time.time() - t0:.1f}s, manifest {run / 'manifest.tsv'}")
    return c


def prepare_tokenizer(cfg: TrainConfig, corpus: corpus_mod.Corpus, run: Path, log, init_tokenizer=None):
    from tokenizers import Tokenizer

    if init_tokenizer is not None:
        log("tokenizer: using the --init model's tokenizer")
        return init_tokenizer
    path = run / "tokenizer.json"
    if path.is_file():
        tok = Tokenizer.from_file(str(path))
        if tok.get_vocab_size(with_added_tokens=True) == cfg.vocab_size:
            log(f"tokenizer: reusing {path}")
            return tok
    t0 = time.time()
    tok = data_mod.train_tokenizer(corpus.texts("train"), cfg.vocab_size)
    n = tok.get_vocab_size(with_added_tokens=True)
    if n != cfg.vocab_size:
        log(f"tokenizer: trainer produced {n} ids (asked for {cfg.vocab_size}); using {n}")
    tok.save(str(path))
    log(f"tokenizer: trained byte-level BPE with {n} ids in {time.time() - t0:.1f}s")
    return tok


def fim_options(cfg: TrainConfig) -> data_mod.FimOptions | None:
    if cfg.fim_rate <= 0:
        return None
    return data_mod.FimOptions(rate=cfg.fim_rate, chunk_chars=3 * cfg.seq_len, line_start=cfg.fim_line_start)


def prepare_tokens(
    tok, corpus: corpus_mod.Corpus, run: Path, log, fim: data_mod.FimOptions | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """The encoded splits; with ``fim`` the training split has pieces in FIM form (the held-out
    split stays left to right: its perplexity is comparable with a model trained without FIM)."""
    digest = hashlib.sha256(tok.to_str().encode()).hexdigest()[:12]
    out = {}
    for split in ("train", "heldout"):
        tag = digest
        if fim is not None and split == "train":
            tag += "-fim" + hashlib.sha256(json.dumps([fim.to_dict(), seed]).encode()).hexdigest()[:8]
        path = run / f"{split}-{tag}.npy"
        if path.is_file():
            out[split] = np.load(path, mmap_mode="r")
            continue
        t0 = time.time()
        if fim is not None and split == "train":
            arr = data_mod.encode_corpus_fim(tok, corpus.texts(split), fim, seed)
        else:
            arr = data_mod.encode_corpus(tok, corpus.texts(split))
        np.save(path, arr)
        out[split] = np.load(path, mmap_mode="r")
        log(f"tokens: {split}: {len(arr):,} tokens in {time.time() - t0:.1f}s")
    for split in ("train", "heldout"):
        nbytes = sum(d.n_bytes for d in corpus.split(split))
        log(
            f"tokens: {split}: {len(out[split]):,} tokens, {nbytes / max(len(out[split]), 1):.2f} bytes/token"
        )
    return out


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    p = min(max(progress, 0.0), 1.0)
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def evaluate(model: BitMamba2, windows: np.ndarray, batch_size: int = 8) -> float:
    """Mean next-token loss (nats) with the engine-form (exact) forward."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        ids = torch.from_numpy(windows[i : i + batch_size])
        logits = model(ids[:, :-1], exact=True)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += ids[:, 1:].numel()
    model.train(was)
    return total / max(count, 1)


def sample_completions(model: BitMamba2, tok, prompts=SAMPLE_PROMPTS, max_new: int = 32) -> dict[str, str]:
    was = model.training
    model.eval()
    eot = tok.token_to_id(data_mod.EOT)
    out = {}
    for p in prompts:
        ids = tok.encode(p, add_special_tokens=False).ids
        new = model.generate(ids, max_new, stop={eot})
        out[p] = tok.decode([i for i in new if i != eot], skip_special_tokens=False)
    model.train(was)
    return out


def grow_vocabulary(model: BitMamba2, vocab_size: int) -> BitMamba2:
    """``model`` with ``vocab_size`` rows in its embedding and head (new rows: the old rows' mean)."""
    old = model.cfg
    grown = BitMamba2(ModelConfig(vocab_size, old.d_model, old.n_layers, old.n_heads))
    state = model.state_dict()
    for name in ("embed", "lm_head.weight"):
        w = state[name]
        extra = w.mean(dim=0, keepdim=True).expand(vocab_size - w.shape[0], -1)
        state[name] = torch.cat([w, extra], dim=0)
    grown.load_state_dict(state)
    return grown


def deepened_layers(n_old: int, n_new: int) -> list[int]:
    """For each layer of a model grown from ``n_old`` to ``n_new`` layers, the old layer it starts
    as: every old layer in order, and after ``n_new - n_old`` of them, spread evenly, a copy."""
    if not n_old <= n_new <= 2 * n_old:
        raise ValueError(f"deepen: {n_new} layers from {n_old}: give between {n_old} and {2 * n_old}")
    extra = n_new - n_old
    copied = {round((i + 1) * n_old / extra) - 1 for i in range(extra)} if extra else set()
    out: list[int] = []
    for i in range(n_old):
        out += [i, i] if i in copied else [i]
    return out


def grow_depth(model: BitMamba2, n_layers: int) -> BitMamba2:
    """``model`` with ``n_layers`` layers that computes the same function: each added layer is a
    copy of the one before it whose ``out_proj`` weights are zero, so its ternary product (and its
    contribution to the residual stream) is exactly zero until training moves those weights (the
    straight-through estimator passes their gradient). The copy's other weights (in_proj, conv,
    decay) start trained rather than random, as when a layer is repeated (RYS)."""
    old = model.cfg
    sources = deepened_layers(old.n_layers, n_layers)
    grown = BitMamba2(ModelConfig(old.vocab_size, old.d_model, n_layers, old.n_heads))
    state = model.state_dict()
    new_state = {k: v for k, v in state.items() if not k.startswith("layers.")}
    seen: set[int] = set()
    for i, src in enumerate(sources):
        prefix = f"layers.{src}."
        for k, v in state.items():
            if k.startswith(prefix):
                new_state[f"layers.{i}." + k[len(prefix):]] = v.clone()
        if src in seen:  # the copy: silent until trained
            new_state[f"layers.{i}.out_proj.weight"].zero_()
        seen.add(src)
    grown.load_state_dict(new_state)
    return grown


def next_token_loss(model: torch.nn.Module, compile_: bool, log):
    """The training loss of a batch of windows [B, T+1] (next-token cross-entropy), compiled when asked."""

    def loss_fn(ids: torch.Tensor) -> torch.Tensor:
        logits = model(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))

    if compile_:
        try:
            return torch.compile(loss_fn)
        except Exception as e:  # pragma: no cover - compiler missing
            log(f"torch.compile unavailable ({e}); running eagerly")
    return loss_fn


def optimizer_step(opt, lr: float, loss_fn, batch: np.ndarray, params, grad_clip: float, step: int) -> tuple[float, float]:
    """One step at learning rate `lr` on `batch`, gradients clipped: (loss, gradient norm). A
    non-finite loss stops training (FloatingPointError naming step + 1, the step it ends)."""
    for g in opt.param_groups:
        g["lr"] = lr
    loss = loss_fn(torch.from_numpy(batch))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    opt.step()
    lv = float(loss.detach())
    if not math.isfinite(lv):
        raise FloatingPointError(f"loss is {lv} at step {step + 1}")
    return lv, gnorm


def param_groups(model: BitMamba2, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if name.endswith(".weight") else no_decay).append(p)  # BitLinear matrices only
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# -------------------------------------------------------------------------------------- main


def train(cfg: TrainConfig) -> dict:
    """Run the whole pipeline; return the metadata written to ``model.json``."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    run = Path(cfg.run_dir) if cfg.run_dir else out.parent / (out.name + ".run")
    run.mkdir(parents=True, exist_ok=True)
    log = Logger(run / "train.log")
    wall0 = time.time()
    log(f"command: {cfg.command or ' '.join(map(shlex.quote, sys.argv))}")
    log(
        f"torch {torch.__version__}, {cfg.threads} threads, python {platform.python_version()}, run dir {run}"
    )

    init_model, init_tok, init_meta = (None, None, {})
    if cfg.init:
        init_model, init_tok, init_meta = load_exported(cfg.init)
        if init_tok is None:
            raise SystemExit(f"--init {cfg.init}: no tokenizer.json next to the weights")
        if cfg.deepen is not None and cfg.deepen != init_model.cfg.n_layers:
            n_old = init_model.cfg.n_layers
            init_model = grow_depth(init_model, cfg.deepen)
            log(f"init: deepened from {n_old} to {cfg.deepen} layers (layers {deepened_layers(n_old, cfg.deepen)}; copies silent)")
        mc = init_model.cfg
        cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads = (
            mc.vocab_size,
            mc.d_model,
            mc.n_layers,
            mc.n_heads,
        )
        log(f"init: {cfg.init} ({mc})")

    corpus = prepare_corpus(cfg, run, log)
    tok = prepare_tokenizer(cfg, corpus, run, log, init_tok)
    fim = fim_options(cfg)
    if fim is not None:
        added = data_mod.add_fim_tokens(tok)
        if added:
            log(f"fim: added {added} sentinel tokens {data_mod.FIM_TOKENS} (ids from {tok.get_vocab_size() - added})")
    cfg.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    if init_model is not None and init_model.cfg.vocab_size < cfg.vocab_size:
        init_model = grow_vocabulary(init_model, cfg.vocab_size)
        log(f"init: vocabulary grown to {cfg.vocab_size} (new rows: the mean of the old ones)")
    tokens = prepare_tokens(tok, corpus, run, log, fim, cfg.seed)
    if len(tokens["heldout"]) < cfg.seq_len + 1:
        log(
            "warning: the held-out split is smaller than one window; evaluating on the end of the training split"
        )
        tokens["heldout"] = tokens["train"][-(cfg.seq_len + 1) * 8 :]
    prep_seconds = time.time() - wall0

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    mcfg = cfg.model_config()
    model = init_model if init_model is not None else BitMamba2(mcfg)
    model.train()
    n_params = model.num_params()
    log(
        f"model: {mcfg}, {n_params / 1e6:.2f}M parameters "
        f"({(n_params - mcfg.vocab_size * mcfg.d_model) / 1e6:.2f}M ternary-or-small, embed float32)"
    )
    opt = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8
    )
    sampler = data_mod.WindowSampler(tokens["train"], cfg.seq_len, cfg.batch_size, cfg.seed)
    eval_small = data_mod.eval_windows(tokens["heldout"], cfg.seq_len, cfg.eval_windows)

    step, train_seconds, history = 0, 0.0, []
    ckpt = run / "checkpoint.pt"
    state_key = {
        "model": mcfg.to_dict(),
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "init": cfg.init,
        "tokenizer": _file_digest(run / "tokenizer.json") if not cfg.init else "init",
        "fim": fim.to_dict() if fim is not None else None,
    }
    if cfg.resume and ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("key") == state_key:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            step, train_seconds, history = saved["step"], saved["train_seconds"], saved["history"]
            log(f"resume: step {step}, {train_seconds / 60:.1f} min trained")
        else:
            log("resume: checkpoint is for a different configuration; starting over")

    step_fn = next_token_loss(model, cfg.compile, log)

    budget = 60.0 * cfg.minutes
    tokens_per_step = cfg.batch_size * cfg.seq_len

    def progress() -> float:
        return max(step / max(cfg.steps, 1), train_seconds / budget if budget > 0 else 0.0)

    def metadata(status: str, extra: dict | None = None) -> dict:
        meta = {
            "status": status,
            "seed": cfg.seed,
            "command": cfg.command or " ".join(map(shlex.quote, sys.argv)),
            "train_config": {k: v for k, v in asdict(cfg).items() if k != "command"},
            "corpus": corpus.summary()
            | {"train_tokens": len(tokens["train"]), "heldout_tokens": len(tokens["heldout"])},
            "training": {
                "steps": step,
                "tokens_seen": step * tokens_per_step,
                "epochs": round(sampler.epoch_of(step), 3),
                "train_minutes": round(train_seconds / 60, 2),
                "prep_minutes": round(prep_seconds / 60, 2),
                "wall_minutes": round((time.time() - wall0) / 60, 2),
                "final_train_loss": history[-1]["train_loss"] if history else None,
                "torch": torch.__version__,
                "threads": cfg.threads,
            },
            "parameters": n_params,
        }
        if cfg.init:
            meta["init"] = {"from": str(cfg.init), "command": init_meta.get("command")}
        if fim is not None:
            meta["fim"] = {
                "prefix": data_mod.FIM_PREFIX,
                "suffix": data_mod.FIM_SUFFIX,
                "middle": data_mod.FIM_MIDDLE,
                "order": "psm",
                "training": fim.to_dict(),
            }
        meta.update(extra or {})
        return meta

    def checkpoint(status: str = "partial") -> None:
        _atomic_torch_save(
            {
                "key": state_key,
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "train_seconds": train_seconds,
                "history": history,
            },
            ckpt,
        )
        last_eval = next((h for h in reversed(history) if "heldout_loss" in h), None)
        extra = {"eval": {"heldout_loss_subset": last_eval["heldout_loss"]}} if last_eval else {}
        export_model(model, tok, out, metadata(status, extra))
        log(f"checkpoint: step {step} -> {ckpt}; exported {status} model to {out}")

    log(
        f"training: up to {cfg.steps} steps x {tokens_per_step} tokens or {cfg.minutes} min; "
        f"{sampler.per_epoch * (cfg.seq_len + 1):,} tokens per epoch"
    )
    last_ckpt = time.time()
    run_loss, run_n, t_log = 0.0, 0, time.time()
    tokens_since = 0
    while progress() < 1.0:
        t0 = time.time()
        lr = lr_at(cfg, step, progress())
        lv, gnorm = optimizer_step(opt, lr, step_fn, sampler.batch(step), model.parameters(), cfg.grad_clip, step)
        step += 1
        run_loss += lv
        run_n += 1
        tokens_since += tokens_per_step
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
                "epoch": round(sampler.epoch_of(step), 3),
            }
            if step % cfg.eval_every == 0:
                entry["heldout_loss"] = round(evaluate(model, eval_small), 4)
            history.append(entry)
            with open(run / "history.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            msg = (
                f"step {step:5d} | loss {entry['train_loss']:.4f} | lr {lr:.2e} | gnorm {gnorm:.2f} | "
                f"{entry['tok_per_s']} tok/s | {entry['minutes']:.1f} min | epoch {entry['epoch']:.2f}"
            )
            if "heldout_loss" in entry:
                msg += f" | held-out {entry['heldout_loss']:.4f}"
            log(msg)
            run_loss, run_n, t_log, tokens_since = 0.0, 0, time.time(), 0
        if time.time() - last_ckpt > 60 * cfg.checkpoint_minutes:
            checkpoint()
            last_ckpt = time.time()
            t_log = time.time()

    checkpoint()
    log("final evaluation on the held-out split ...")
    t0 = time.time()
    windows = data_mod.eval_windows(tokens["heldout"], cfg.seq_len, cfg.final_eval_windows)
    held = evaluate(model, windows)
    held_bytes = sum(d.n_bytes for d in corpus.split("heldout"))
    bytes_per_token = held_bytes / max(len(tokens["heldout"]), 1)
    train_windows = data_mod.eval_windows(tokens["train"], cfg.seq_len, min(256, cfg.final_eval_windows))
    train_loss = evaluate(model, train_windows)
    ev = {
        "heldout_loss": round(held, 4),
        "heldout_perplexity": round(math.exp(held), 3),
        "heldout_bits_per_byte": round(held / math.log(2) / bytes_per_token, 4),
        "heldout_tokens_scored": int(windows.shape[0] * cfg.seq_len),
        "train_loss_sample": round(train_loss, 4),
        "train_tokens_scored": int(train_windows.shape[0] * cfg.seq_len),
        "forward": "engine-form (int8 activations x ternary weights), states from zero at each window",
    }
    log(
        f"final: held-out loss {held:.4f} (ppl {math.exp(held):.2f}, {ev['heldout_bits_per_byte']:.3f} bits/byte), "
        f"train-sample loss {train_loss:.4f} ({time.time() - t0:.0f}s)"
    )
    samples = sample_completions(model, tok)
    for p, c in samples.items():
        log(f"sample: {p!r} -> {c!r}")
    meta = metadata(
        "final",
        {
            "eval": ev,
            "samples": samples,
            "loss_curve": [h for h in history if h["step"] % (cfg.eval_every) == 0 or h["step"] == 1],
        },
    )
    export_model(model, tok, out, meta)
    log(
        f"exported final model to {out} ({(out / 'model.bin').stat().st_size:,} bytes); "
        f"wall {(time.time() - wall0) / 60:.1f} min"
    )
    return meta
