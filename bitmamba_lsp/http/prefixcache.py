"""Prompt-prefix state cache: SSM states along recent prompts, so that a request sharing a prefix
with an earlier one (a chat history, the same file) resumes from a checkpoint instead of
re-prefilling.

It uses the engine's `checkpoints.Track` (states along one token sequence, deepest checkpoint
within a common prefix). Each request contributes one track along its prompt (a checkpoint every
`spacing` tokens and one just before its last token, so an identical prompt only feeds that token)
and one along prompt + generated tokens (its final state: a follow-up chat turn resumes after the
previous answer). Tracks are evicted least recently used first under a memory budget. A Mamba state
has a fixed size, so the budget is simply states x state_bytes.

Used only by the generation worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from bitmamba_lsp.engine.checkpoints import Track
from bitmamba_lsp.engine.model import State


class PrefixCache:
    def __init__(self, state_bytes: int, budget_bytes: int, spacing: int = 64, max_tracks: int = 512) -> None:
        self.state_bytes = max(1, state_bytes)
        self.budget = max(0, budget_bytes)
        self.spacing = max(1, spacing)
        self.max_tracks = max(1, max_tracks)
        self._tracks: OrderedDict[int, Track] = OrderedDict()
        self._next_id = 0
        self._states = 0
        self.hits = 0
        self.misses = 0
        self.tokens_reused = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.budget >= self.state_bytes

    def lookup(self, ids: np.ndarray) -> tuple[int, State | None]:
        """Deepest cached state within `ids[:-1]` (the last prompt token is always fed, for its
        logits). The state is the cache's own: copy it before moving it forward."""
        best: tuple[int, State | None, int] = (0, None, -1)
        limit = len(ids) - 1
        if limit > 0:
            for key, track in self._tracks.items():
                n, s = track.best(min(limit, track.lcp(ids)))
                if n > best[0]:
                    best = (n, s, key)
        if best[1] is None:
            self.misses += 1
            return 0, None
        self._tracks.move_to_end(best[2])
        self.hits += 1
        self.tokens_reused += best[0]
        return best[0], best[1]

    def positions(self, start: int, end: int, total: int) -> list[int]:
        """Checkpoint positions in (start, end] while feeding a prompt of `total` tokens: every
        `spacing` tokens, plus total-1 (where an identical prompt resumes)."""
        if not self.enabled:
            return []
        out = set(range((start // self.spacing + 1) * self.spacing, min(end, total - 1) + 1, self.spacing))
        if start < total - 1 <= end:
            out.add(total - 1)
        return sorted(p for p in out if p > 0)

    def store(self, seq: np.ndarray, states: Mapping[int, State]) -> int:
        """Keep `states` (position -> state after seq[:position]) unless an equal checkpoint is
        already cached. Returns how many were kept."""
        if not self.enabled or not states:
            return 0
        covered: set[int] = set()
        for track in self._tracks.values():
            lcp = track.lcp(seq)
            covered.update(n for n in states if n <= lcp and n in track.states)
        track = Track(np.asarray(seq, dtype=np.int32).copy())
        for n, s in states.items():
            if n not in covered:
                track.put(n, s)
        if not len(track):
            return 0
        self._tracks[self._next_id] = track
        self._next_id += 1
        self._states += len(track)
        self._enforce()
        return len(track)

    def _enforce(self) -> None:
        while self._tracks and (
            self._states * self.state_bytes > self.budget or len(self._tracks) > self.max_tracks
        ):
            _, track = self._tracks.popitem(last=False)
            self._states -= len(track)
            self.evictions += 1

    def clear(self) -> None:
        self._tracks.clear()
        self._states = 0

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "tokens_reused": self.tokens_reused,
            "tracks": len(self._tracks),
            "states": self._states,
            "bytes": self._states * self.state_bytes,
            "budget_bytes": self.budget,
            "evictions": self.evictions,
        }
