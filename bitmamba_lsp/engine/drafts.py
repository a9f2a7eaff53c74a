"""Draft tokens for exact speculative decoding: guesses of the next few tokens, read from n-gram
counts of text the model is working on (the document and the workspace caches in the daemon, the
prompt and what was generated elsewhere), as llama.cpp's lookup decoding does.

A draft is only a guess: `decoding.decode` feeds the last token and the draft to the model in one
batched step, keeps the draft tokens the decoder itself would have chosen, and rolls the state back
to the last one kept, so the output is exactly plain decoding's (see `decoding.decode`). What a
drafter decides is only how much is guessed:

- the longest context of at least `min_order` tokens ending the history that some index has seen
  proposes its most frequent next token, if that token followed the context at least `min_share`
  of the times; the draft extends while that holds, up to the current length `k`;
- `k` adapts to what the model accepts: it doubles (up to `max_draft`) when a whole draft was
  accepted and falls to one more than the accepted length otherwise; from 4 tokens up a step feeds
  a multiple of 4 (k + 1 = 4, 8, ...: the batched matrix products work in 4-token tiles, so a 9-token
  step costs a third tile for one more token), so text that does not repeat
  costs at most a lookup per token (no match, no draft) and a mispredicting stretch costs a few
  short verification steps before drafts stop;
- drafting pays only where a batched step of a few tokens is cheap against single steps (a large
  model; not a tiny one whose step costs less than the Python around a draft): the drafter times
  both (a moving average of a plain step's model call; each verification step's lookups and batched
  call, per token it produced). It never drafts while a plain step takes less than
  `min_step_seconds` (the shipped 3.7M model's ~0.05 ms step: its drafts made suggestions 1.2x
  slower, benchmarks/results/drafts.md), and after a verification step that cost more per token
  than a plain step it pauses drafting for 2, 4, ... 64 tokens (reset by a verification that paid).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bitmamba_lsp import _core

NGramIndex = _core.NGramIndex


@dataclass(frozen=True)
class DraftSettings:
    max_draft: int = 3  # tokens guessed at most per verification step (3: one 4-token tile)
    min_order: int = 2  # shortest context that may propose a token
    min_share: float = 0.5  # a proposed token followed its context at least this often
    order: int = 6  # n-gram order of a drafter's own index (prompt lookup)
    adaptive: bool = True  # False: always draft max_draft tokens where the indexes offer them (benchmarks)
    min_step_seconds: float = 2.5e-4  # no drafts while a plain step is faster than this (adaptive only)
    timed: bool = True  # False: neither that nor the pauses (what a model with costly steps sees; benchmarks)


class Drafter:
    """Proposes drafts from n-gram indexes (innermost last: on equal context length the innermost
    index decides), optionally with an index of its own over the prompt and the generated tokens.

    The decode loop calls `propose()` before a step, `observe(token)` for every token the decoder
    keeps, and `verified(proposed, accepted)` after a verification step."""

    def __init__(
        self,
        history: Sequence[int],
        indexes: Sequence[tuple[NGramIndex, NGramIndex | None]] = (),
        *,
        vocab: int | None = None,
        settings: DraftSettings = DraftSettings(),
    ) -> None:
        self.settings = settings
        self.levels = list(indexes)
        self.own: NGramIndex | None = None
        self.history = np.asarray(history, dtype=np.int32).tolist()
        if vocab is not None:
            self.own = NGramIndex(settings.order, vocab)
            ids = np.asarray(self.history, dtype=np.int32)
            if len(ids) > 1:
                self.own.update(ids, 1, len(ids), 1)
            self.levels.append((self.own, None))
        self.order = max((ix.order for ix, _ in self.levels), default=1)
        self.history = self.history[-(self.order + 1) :]  # what the lookups and the own index read
        self.k = _tiled(max(1, min(3, settings.max_draft))) if settings.adaptive else settings.max_draft
        self.plain_steps = 0
        self.log: list[tuple[int, int, int]] = []  # per verification step: (drafted, accepted, tokens produced)
        self.plain_time = 0.0  # moving average of a plain step's model call (seconds); 0: not measured yet
        self._lookup_time = 0.0  # the last draft's lookups
        self._pause = 1  # plain steps before the next draft (the first one is measured)
        self._misses = 0
        self._pool: list[Any] = []

    def _next(self, ctx: np.ndarray) -> int | None:
        best: tuple[int, int] | None = None  # (order, token)
        for ix, exclude in self.levels:
            hit = ix.lookup(ctx, self.settings.min_order, exclude)
            if hit is None:
                continue
            order, total, toks, counts = hit
            i = int(np.argmax(counts))
            if counts[i] < self.settings.min_share * total:
                continue
            if best is None or order >= best[0]:
                best = (order, int(toks[i]))
        return None if best is None else best[1]

    def propose(self) -> list[int]:
        if not self.levels or self.settings.max_draft <= 0 or self._pause > 0:
            return []
        s = self.settings
        if s.adaptive and s.timed and self.plain_time and self.plain_time < s.min_step_seconds:
            return []  # a step this cheap: the lookups and the Python around a draft cost more
        t0 = time.perf_counter()
        out = self._draft()
        self._lookup_time = time.perf_counter() - t0
        return out

    def _draft(self) -> list[int]:
        ctx = list(self.history[-self.order :])
        out: list[int] = []
        while len(out) < self.k:
            t = self._next(np.asarray(ctx[-self.order :], dtype=np.int32))
            if t is None:
                break
            out.append(t)
            ctx.append(t)
        return out

    def observe(self, token: int) -> None:
        self.history.append(int(token))
        if len(self.history) > 4 * (self.order + 1):
            del self.history[: -(self.order + 1)]
        if self.own is not None:
            n = len(self.history)
            lo = max(0, n - 1 - self.own.order)
            window = np.asarray(self.history[lo:], dtype=np.int32)
            self.own.update(window, len(window) - 1, len(window), 1)

    @property
    def proposed(self) -> int:
        """Draft tokens checked so far (for the benchmarks and `bitmamba/status`)."""
        return sum(k for k, _, _ in self.log)

    @property
    def accepted(self) -> int:
        """And kept."""
        return sum(a for _, a, _ in self.log)

    def states(self, model: Any, n: int) -> list[Any]:
        """n states of `model` to receive a verification step's snapshots, allocated once per drafter."""
        while len(self._pool) < n:
            self._pool.append(model.new_state())
        return self._pool

    def release(self, state: Any) -> None:
        """`state` (one of `states()`) is kept elsewhere now: the pool replaces it when next asked."""
        self._pool = [s for s in self._pool if s is not state]

    def plain_step(self, seconds: float) -> None:
        """A plain step's model call (step, or step and sample in the core) took `seconds`."""
        self.plain_time = seconds if not self.plain_time else 0.8 * self.plain_time + 0.2 * seconds
        self.plain_steps += 1
        if self._pause > 0:
            self._pause -= 1

    def verified(self, proposed: int, accepted: int, seconds: float = 0.0, produced: int | None = None) -> None:
        """A verification step of `proposed` draft tokens kept `accepted` of them and produced
        `produced` tokens (default accepted + 1: the decoder's own choice after the last kept one);
        its batched model call took `seconds` (the draft's lookups are added here)."""
        produced = accepted + 1 if produced is None else produced
        self.log.append((proposed, accepted, produced))
        if seconds:
            seconds += self._lookup_time
        if not self.settings.adaptive:
            return
        if accepted >= proposed:
            self.k = _tiled(min(self.settings.max_draft, 2 * self.k + 1))
        else:
            self.k = _tiled(max(1, accepted + 1))
        if not self.settings.timed:
            return
        if self.plain_time and seconds > self.plain_time * max(1, produced):
            self._misses += 1
            self._pause = min(64, 2**self._misses)
        elif seconds:
            self._misses = 0


def _tiled(k: int) -> int:
    """The draft length whose verification step (k + 1 tokens) fills whole 4-token tiles, from 4 up."""
    return k if k + 1 < 4 else (k + 1) // 4 * 4 - 1
