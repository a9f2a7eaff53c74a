"""Perplexity of a model over a token sequence (batched, chunk by chunk, state carried across)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bitmamba_lsp.engine.model import Model


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_logprobs(model: Model, ids: np.ndarray, chunk: int = 512) -> np.ndarray:
    """log p(ids[i+1] | ids[:i+1]) for i in 0..len-2."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens")
    state = model.new_state()
    out = np.empty(len(ids) - 1)
    for start in range(0, len(ids) - 1, chunk):
        seg = ids[start : min(start + chunk, len(ids) - 1)]
        logits = model.prefill(state, seg, all_logits=True)
        targets = ids[start + 1 : start + 1 + len(seg)]
        lp = log_softmax(logits)
        out[start : start + len(seg)] = lp[np.arange(len(seg)), targets]
    return out


def perplexity(model: Model, ids: np.ndarray, chunk: int = 512) -> dict[str, Any]:
    t0 = time.perf_counter()
    lp = token_logprobs(model, ids, chunk)
    nll = float(-lp.mean())
    return {"tokens": len(lp), "nll": nll, "perplexity": math.exp(nll), "seconds": time.perf_counter() - t0}
