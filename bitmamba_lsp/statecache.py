"""Model states kept per document: the checkpoints that make a completion cost independent of
the file's size. Used only by the model worker thread.

A `Track` holds states along one token sequence: ``states[n]`` is the state after ``seq[:n]``.
Each document has two:
- the document track, along the document's own tokens, with a checkpoint every `spacing` tokens
  (filled by background prefill, cut back by edits to the first changed token);
- the cursor track, along the last prompt (the text before the cursor), with a checkpoint after
  each of its last tokens, so typing at the cursor resumes one or two tokens back.

A prompt resumes from the deepest checkpoint of either track that lies within its common prefix
with that track's sequence. Memory is bounded: tracks of documents not used recently go first
(LRU), then the document track of the active document is thinned.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from bitmamba_lsp.documents import common_prefix
from bitmamba_lsp.engine.model import State


class Track:
    def __init__(self, seq: np.ndarray | None = None) -> None:
        self.seq = np.zeros(0, dtype=np.int32) if seq is None else seq
        self.positions: list[int] = []
        self.states: dict[int, State] = {}

    def __len__(self) -> int:
        return len(self.positions)

    def lcp(self, ids: np.ndarray) -> int:
        return common_prefix(self.seq, ids)

    def best(self, limit: int) -> tuple[int, State | None]:
        """Deepest checkpoint at or before `limit` tokens (0, None when there is none)."""
        i = bisect.bisect_right(self.positions, limit)
        if i == 0:
            return 0, None
        n = self.positions[i - 1]
        return n, self.states[n]

    def put(self, n: int, state: State) -> None:
        if n <= 0 or n > len(self.seq):
            return
        if n not in self.states:
            bisect.insort(self.positions, n)
        self.states[n] = state

    def truncate(self, keep: int, seq: np.ndarray | None = None) -> None:
        """Drop checkpoints after `keep` tokens (they saw tokens that changed); adopt `seq`."""
        i = bisect.bisect_right(self.positions, keep)
        for n in self.positions[i:]:
            del self.states[n]
        del self.positions[i:]
        if seq is not None:
            self.seq = seq

    def drop(self, ns: Iterable[int]) -> None:
        for n in list(ns):
            if n in self.states:
                del self.states[n]
                self.positions.remove(n)

    def clear(self) -> None:
        self.positions.clear()
        self.states.clear()

    def nbytes(self, state_bytes: int) -> int:
        return len(self.positions) * state_bytes


@dataclass
class DocStates:
    uri: str
    doc: Track = field(default_factory=Track)
    cursor: Track = field(default_factory=Track)
    spec: Track = field(default_factory=Track)  # along the prompt that follows accepting the suggestion
    last_used: float = field(default_factory=time.monotonic)
    target: int = 0  # how far background prefill should bring the document track
    open_target: int = 0  # while the opened document's first prefill runs: its length

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def resume(self, prompt: np.ndarray, limit: int | None = None) -> tuple[int, State | None]:
        """Deepest checkpoint usable for `prompt` (at most `limit` tokens in)."""
        limit = len(prompt) if limit is None else min(limit, len(prompt))
        best: tuple[int, State | None] = (0, None)
        for track in (self.doc, self.cursor, self.spec):
            n, s = track.best(min(limit, track.lcp(prompt)))
            if n > best[0]:
                best = (n, s)
        return best

    def tracks(self) -> tuple[Track, Track, Track]:
        return self.doc, self.cursor, self.spec

    def count(self) -> int:
        return len(self.doc) + len(self.cursor) + len(self.spec)


class StateStore:
    """All documents' tracks, under a memory budget."""

    def __init__(self, state_bytes: int, budget_bytes: int, spacing: int, dense: int) -> None:
        self.state_bytes = state_bytes
        self.budget = budget_bytes
        self.spacing = max(1, spacing)
        self.dense = dense
        self.docs: dict[str, DocStates] = {}
        self.evictions = 0

    def get(self, uri: str) -> DocStates:
        d = self.docs.get(uri)
        if d is None:
            d = self.docs[uri] = DocStates(uri)
        return d

    def drop(self, uri: str) -> None:
        self.docs.pop(uri, None)

    def nbytes(self) -> int:
        return sum(d.count() for d in self.docs.values()) * self.state_bytes

    def checkpoint_positions(self, start: int, end: int, shared: int) -> list[int]:
        """Positions in (start, end] to snapshot while feeding a prompt: every `spacing` tokens of
        the part shared with the document, plus the last `dense` tokens."""
        sparse = range((start // self.spacing + 1) * self.spacing, min(end, shared) + 1, self.spacing)
        dense = range(max(start + 1, end - self.dense + 1), end + 1)
        return sorted(set(sparse) | set(dense))

    def enforce_budget(self, active: str | None) -> None:
        """Evict least recently used documents' states, then thin the active document's."""
        if self.nbytes() <= self.budget:
            return
        for d in sorted(self.docs.values(), key=lambda d: d.last_used):
            if d.uri == active:
                continue
            for t in d.tracks():
                t.clear()
            self.evictions += 1
            if self.nbytes() <= self.budget:
                return
        d = self.docs.get(active) if active else None
        if d is None:
            return
        # Keep the cursor track (what typing needs) and every other document checkpoint,
        # doubling the spacing until the budget holds.
        d.spec.clear()
        while self.nbytes() > self.budget and len(d.doc) > 1:
            d.doc.drop(d.doc.positions[1::2])
        while self.nbytes() > self.budget and len(d.cursor) > 2:
            d.cursor.drop(d.cursor.positions[:1])
