"""How far back a model reads: its next-token loss with the context cut to a few lengths.

For windows of 32 tokens deep in long held-out files (positions 1,100-3,100, every 200 tokens), the
mean loss of the window with the state started fresh 16 / 64 / 256 / 1,024 tokens before it, and
with the whole file before it. Where the loss stops falling, the model stops using what is further
back (the state-space model's decay forgets it); the daemon's workspace memory (cache model,
whole-line candidates) is what carries the rest of the file.

    python benchmarks/bench_context.py                      # the shipped model, the tune split
    python benchmarks/bench_context.py --model runs/fim4-model --split select

Prints the table and writes JSON to benchmarks/results/context-<model>-<split>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_usefulness import CACHE, PACKAGES, fetch

import bitmamba_lsp
from bitmamba_lsp.bench import machine_info
from bitmamba_lsp.engine.perplexity import token_logprobs

WINDOW = 32
CONTEXTS = (16, 64, 256, 1024)
POSITIONS = range(1100, 3100, 200)
MIN_TOKENS = max(POSITIONS) + WINDOW + 1


def loss_by_context(model, ids: np.ndarray) -> dict[str, list[float]]:
    """Per window: the mean loss with each cut context and with the whole file ("full")."""
    full = token_logprobs(model, ids[:MIN_TOKENS])
    out: dict[str, list[float]] = {str(c): [] for c in CONTEXTS} | {"full": []}
    for start in POSITIONS:
        out["full"].append(float(-full[start - 1 : start - 1 + WINDOW].mean()))
        for c in CONTEXTS:
            lp = token_logprobs(model, ids[start - c : start + WINDOW + 1])
            out[str(c)].append(float(-lp[c - 1 : c - 1 + WINDOW].mean()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model (default: the shipped one)")
    ap.add_argument("--split", choices=sorted(PACKAGES), default="tune")
    ap.add_argument("--files", type=int, default=30, help="long files to read (at most)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {info['cpu']} | {info['cores']} cores | SIMD {info['simd']} | threads {args.threads}")
    model = bitmamba_lsp.load(args.model, threads=args.threads)
    t0 = time.perf_counter()
    losses: dict[str, list[float]] = {}
    used = []
    files = [f for name, version in PACKAGES[args.split] for f in fetch(name, version, CACHE)[0]]
    for f in files:
        if len(used) >= args.files:
            break
        ids = np.asarray(model.tokenizer.encode(f.text), dtype=np.int64)
        if len(ids) < MIN_TOKENS:
            continue
        used.append(f"{f.package}/{f.name}")
        for k, v in loss_by_context(model, ids).items():
            losses.setdefault(k, []).extend(v)
    if not used:
        print("no file is long enough")
        return 1
    means = {k: float(np.mean(v)) for k, v in losses.items()}
    print(f"{len(used)} files, {len(losses['full'])} windows of {WINDOW} tokens, {time.perf_counter() - t0:.0f} s")
    print("| context (tokens) | " + " | ".join(means) + " |")
    print("|---" * (len(means) + 1) + "|")
    print("| mean loss (nats) | " + " | ".join(f"{v:.3f}" for v in means.values()) + " |")
    name = Path(args.model).name if args.model else "bitmamba-default"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"context-{name}-{args.split}.json"
    path.write_text(json.dumps({"machine": info, "model": name, "split": args.split, "window": WINDOW,
                                "positions": list(POSITIONS), "files": used, "mean_loss": means}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
