"""Scoring text with a model, as bitmamba.cpp's `logprob K` and `score T` output modes do.

- `bitmamba logprob -k K`: the total (and mean) log-probability of the last K tokens of the input
  given the ones before them; bitmamba.cpp prints `[LOGPROB] Tokens: K | TotalLP: x | AvgLP: y`.
- `bitmamba score --target T`: the rank (0 = the most likely token) and log-probability of token T
  right after the input; bitmamba.cpp prints `[SCORE] Target: T | Rank: r | LogProb: lp`.

Both read the input as token ids (`--ids`) or as text (the model's tokenizer), print the same lines
as bitmamba.cpp (or `--json`), and run one batched prefill: log-softmax in float64 over the logits
after each position.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class LogProb:
    tokens: int
    total: float
    mean: float
    per_token: list[float]

    def line(self) -> str:
        return f"[LOGPROB] Tokens: {self.tokens} | TotalLP: {self.total:.6f} | AvgLP: {self.mean:.6f}"


@dataclass(frozen=True)
class Score:
    target: int
    rank: int
    logprob: float

    def line(self) -> str:
        return f"[SCORE] Target: {self.target} | Rank: {self.rank} | LogProb: {self.logprob:.6f}"


def logprob_of_last(model: Any, ids: list[int], k: int) -> LogProb:
    """log p(ids[n-k:] | ids[:n-k]) for the n = len(ids) input ids (1 <= k < n)."""
    n = len(ids)
    if not 1 <= k < n:
        raise ValueError(f"logprob: K must be in 1..{n - 1} for {n} input tokens (got {k})")
    _check(model, ids)
    logits = model.prefill(model.new_state(), ids[:-1], all_logits=True)  # [n-1, vocab]: after ids[:i+1]
    lp = log_softmax(logits[n - 1 - k :])
    per = [float(lp[j, ids[n - k + j]]) for j in range(k)]
    total = math.fsum(per)
    return LogProb(k, total, total / k, per)


def score_target(model: Any, ids: list[int], target: int) -> Score:
    """Rank (tokens strictly more likely, 0: the argmax) and log-probability of `target` after `ids`."""
    if not ids:
        raise ValueError("score: the input has no tokens")
    _check(model, [*ids, target])
    logits = np.asarray(model.prefill(model.new_state(), ids), dtype=np.float64)
    lp = log_softmax(logits)
    return Score(target, int(np.sum(logits > logits[target])), float(lp[target]))


def _check(model: Any, ids: list[int]) -> None:
    bad = [i for i in ids if not 0 <= i < model.vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{model.vocab_size - 1})")


# ------------------------------------------------------------------------------------------ CLI
def _input_ids(model: Any, args: argparse.Namespace) -> list[int]:
    if args.ids is not None:
        return [int(x) for x in args.ids.replace(",", " ").split()]
    text = args.text if args.text is not None else sys.stdin.read()
    return model.require_tokenizer().encode(text)


def _target_id(model: Any, spec: str) -> int:
    try:
        return int(spec)
    except ValueError:
        ids = model.require_tokenizer().encode(spec)
        if len(ids) != 1:
            raise ValueError(f"score: --target {spec!r} is {len(ids)} tokens, not one (give an id)") from None
        return ids[0]


def cmd_logprob(args: argparse.Namespace) -> int:
    from bitmamba_lsp.cli import _load

    model = _load(args)
    ids = _input_ids(model, args)
    try:
        res = logprob_of_last(model, ids, args.k)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(res)) if args.json else res.line())
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from bitmamba_lsp.cli import _load

    model = _load(args)
    try:
        ids = _input_ids(model, args)
        res = score_target(model, ids, _target_id(model, args.target))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(res)) if args.json else res.line())
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    from bitmamba_lsp.cli import _add_model

    p.add_argument("text", nargs="?", default=None, help="input text (default: stdin), or --ids")
    _add_model(p)
    p.add_argument("--ids", help="input as token ids ('15496 11 314') instead of text")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def register(sub) -> None:
    p = sub.add_parser("logprob", help="log-probability of the last K input tokens (bitmamba.cpp's `logprob K`)")
    _common(p)
    p.add_argument("-k", type=int, required=True, help="score the last K tokens of the input")
    p.set_defaults(func=cmd_logprob)
    p = sub.add_parser("score", help="rank and log-probability of a target token (bitmamba.cpp's `score T`)")
    _common(p)
    p.add_argument("--target", required=True, help="the target token: an id, or text that is one token")
    p.set_defaults(func=cmd_score)
