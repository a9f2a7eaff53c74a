"""Checkpoints along a token sequence: the states that let a prompt resume instead of re-prefilling.

A `Track` holds states along one token sequence: ``states[n]`` is the state after ``seq[:n]``. A
prompt that shares its first ``k`` tokens with the track's sequence may resume from the deepest
checkpoint at or before ``k``. A Mamba state has a fixed size, so the memory of a track is simply
checkpoints x state bytes. The daemon keeps tracks per document (`lsp/statecache.py`); the HTTP
server keeps tracks along recent prompts (`http/prefixcache.py`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import numpy as np

from bitmamba_lsp.engine.model import State


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the common prefix of two token arrays."""
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    return int(diff[0]) if len(diff) else n


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
