"""What the daemon counts: suggestions shown, accepted, served from the pending cache, cancelled,
empty, and the latency of the recent ones (reported by `bitmamba/status`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bitmamba_lsp.lsp.jobs import CompletionResult


@dataclass
class Stats:
    shown: int = 0
    accepted: int = 0
    from_cache: int = 0
    cancelled: int = 0
    empty: int = 0
    first_token_ms: deque[float] = field(default_factory=lambda: deque(maxlen=500))
    total_ms: deque[float] = field(default_factory=lambda: deque(maxlen=500))
    last: dict[str, Any] = field(default_factory=dict)

    def record(self, res: CompletionResult) -> None:
        if res.cancelled:
            self.cancelled += 1
            return
        self.first_token_ms.append(res.first_token_ms)
        self.total_ms.append(res.total_ms)
        self.last = {
            "first_token_ms": round(res.first_token_ms, 2),
            "total_ms": round(res.total_ms, 2),
            "queue_ms": round(res.queue_ms, 2),
            "prefill_ms": round(res.prefill_ms, 2),
            "prompt_tokens_fed": res.fed,
            "resumed_from_token": res.resumed_from,
            "generated_tokens": res.tokens,
            "stop": res.stop,
            "approximate": res.approximate,
            "draft_tokens": res.drafted,
            "draft_accepted": res.draft_accepted,
        }

    def report(self) -> dict[str, Any]:
        return {
            "shown": self.shown,
            "accepted": self.accepted,
            "accept_rate": round(self.accepted / self.shown, 4) if self.shown else None,
            "served_from_cache": self.from_cache,
            "cancelled": self.cancelled,
            "empty": self.empty,
            "first_token_ms": percentiles(self.first_token_ms),
            "total_ms": percentiles(self.total_ms),
            "last": self.last,
        }


def percentiles(values: deque[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(arr, q)), 2) for q in (50, 90, 99)}
