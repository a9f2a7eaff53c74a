"""Model states kept per document: the checkpoints that make a completion cost independent of
the file's size. Used only by the model worker thread.

A `Track` (engine/checkpoints.py) holds states along one token sequence. Each document has three:
- the document track, along the document's own tokens, with a checkpoint every `spacing` tokens
  (filled by background prefill, cut back by edits to the first changed token);
- the cursor track, along the last prompt, with a checkpoint after each of its last tokens, so
  typing at the cursor resumes one or two tokens back;
- the speculative track, the same for the prompt that follows accepting the shown suggestion.

`StateStore.feed` restores a prompt (lsp/prompt.py) from the deepest checkpoint of any track that
lies within its common prefix with that track's sequence, feeds the rest and keeps the checkpoints
the prompt's plan asks for; `StateStore.prefill_slice` moves background prefill along. Memory is
bounded: tracks of documents not used recently go first (LRU), then the document track of the
active document is thinned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bitmamba_lsp.engine.checkpoints import Track
from bitmamba_lsp.engine.model import Model, State
from bitmamba_lsp.lsp.prompt import Prompt

FEED_SLICE = 512  # prompt tokens fed per model call (a cancel or a deadline is seen between two)


@dataclass
class Restored:
    """A prompt's state after `StateStore.feed` (a private copy: generation may move it on)."""

    state: State
    logits: np.ndarray  # after the prompt's last token
    resumed: int  # prompt tokens covered by a checkpoint
    fed: int  # prompt tokens fed through the model
    approximate: bool = False  # from a window of the prompt's last tokens (see StateStore.feed)


@dataclass
class DocStates:
    uri: str
    doc: Track = field(default_factory=Track)
    cursor: Track = field(default_factory=Track)
    spec: Track = field(default_factory=Track)  # along the prompt that follows accepting the suggestion
    last_used: float = field(default_factory=time.monotonic)
    target: int = 0  # how far background prefill should bring the document track
    open_target: int = 0  # while the opened document's first prefill runs: its length
    context: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # context chunks' tokens
    lead_len: int = 0  # tokens before the document's own on the document track (context, <pre>)
    # a place a request could not reach in its budget (it answered from a window): background
    # prefill puts a document checkpoint exactly there first (0: none)
    want: int = 0

    def set_document(self, lead: np.ndarray, ids: np.ndarray, prefill: bool) -> None:
        """The document track along `lead` + the document's tokens `ids` (opened); `prefill`:
        background prefill brings it to the end."""
        seq = np.concatenate([lead, ids]).astype(np.int32) if len(lead) else ids
        self.doc.truncate(0, seq)
        self.cursor.clear()
        self.spec.clear()
        self.lead_len = len(lead)
        self.target = self.open_target = len(seq) if prefill else 0
        self.touch()

    def edited(self, lead: np.ndarray, first_changed: int, ids: np.ndarray, target: int) -> None:
        """The document's tokens are `ids`, changed from token `first_changed` on; background
        prefill should reach token `target` of them."""
        seq = np.concatenate([lead, ids]).astype(np.int32) if len(lead) else ids
        self.doc.truncate(first_changed + len(lead), seq)
        self.lead_len = len(lead)
        if self.open_target:  # the prefill of the opened document has not finished: keep going
            self.open_target = len(seq)
        self.target = max(target + len(lead), self.open_target)
        self.touch()

    def relead(self, lead: np.ndarray) -> None:
        """Put `lead` before the document's tokens: the checkpoints up to where the track agrees
        with the new one are kept, background prefill redoes the rest."""
        old = self.doc.seq
        seq = np.concatenate([lead, old[self.lead_len :]]).astype(np.int32)
        keep = self.doc.lcp(seq)
        if keep == len(old) == len(seq):
            return
        self.doc.truncate(keep, seq)
        self.cursor.clear()
        self.spec.clear()
        self.target = max(0, self.target - self.lead_len + len(lead))
        self.lead_len = len(lead)

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

    def feed(
        self,
        model: Model,
        uri: str,
        prompt: Prompt,
        *,
        speculative: bool = False,
        incremental: bool = True,
        max_feed: int | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> Restored | None:
        """Restore the deepest checkpoint for `prompt` (leaving at least its last token to feed, for
        the logits), feed the rest in slices, and keep the new checkpoints of the prompt's plan.
        incremental=False: no checkpoint is used or kept (a full re-prefill, for benchmarks).

        max_feed: when more than this many tokens would have to be fed (a place background
        prefill has not reached yet), answer from a window instead: the prompt's last `max_feed`
        tokens from an empty state, an approximation that keeps nothing; background prefill is
        asked to reach the cursor. cancel: checked between slices; None is returned when it says so."""
        ids = prompt.ids
        assert len(ids) > 0
        d = self.get(uri)
        d.touch()
        n, base = d.resume(ids, len(ids) - 1) if incremental else (0, None)
        rest = ids[n:]
        if max_feed is not None and len(rest) > max_feed and incremental:
            d.target = max(d.target, min(prompt.shared, len(d.doc.seq)))
            d.want = min(prompt.shared, len(d.doc.seq))
            window = ids[-max(1, max_feed) :]
            state = model.new_state()
            return Restored(state, model.prefill(state, window), 0, len(window), approximate=True)
        state = base.copy() if base is not None else model.new_state()
        if not incremental:
            return Restored(state, model.prefill(state, rest), n, len(rest))
        plan = prompt.plan(n, self.spacing, self.dense, d.doc.lcp(ids))
        positions = plan.positions
        logits, snaps = None, []
        for a in range(0, len(rest), FEED_SLICE):  # slices: a cancel is seen within one
            b = min(len(rest), a + FEED_SLICE)
            if a and cancel is not None and cancel():
                return None
            at = [p - n - a for p in positions if n + a < p <= n + b]
            logits, more = model.prefill_snapshots(state, rest[a:b], at, logits=b == len(rest))
            snaps += more
        # Speculative prompts (after accepting the current suggestion) get their own track so they
        # never push out the checkpoints of the prompt the user is actually at.
        track = d.spec if speculative else d.cursor
        track.truncate(track.lcp(ids), ids)
        document, cursor = set(plan.document), set(plan.cursor) | set(plan.keep)
        for p, snap in zip(positions, snaps, strict=True):
            if p in document:
                d.doc.put(p, snap)
            if p in cursor:
                track.put(p, snap)
        keep = set(prompt.boundaries())  # (kept from an earlier feed too, while the prompt agrees)
        track.drop([p for p in track.positions if p <= len(ids) - 2 * self.dense and p not in keep])
        self.enforce_budget(uri)
        assert logits is not None
        return Restored(state, logits, n, len(rest))

    def state_after(self, uri: str, ids: np.ndarray) -> State | None:
        """The checkpoint right after the whole prompt `ids`, when a track has it (feed keeps one on
        the cursor or speculative track), else None. The store's own: copy it before moving it."""
        d = self.docs.get(uri)
        if d is None or not len(ids):
            return None
        for track in (d.cursor, d.spec, d.doc):
            n, s = track.best(len(ids))
            if n == len(ids) and s is not None and track.lcp(ids) >= len(ids):
                return s
        return None

    def needs_prefill(self, d: DocStates) -> bool:
        """Background prefill has work on this document: its target lies a spacing or more past the
        deepest document checkpoint."""
        want = min(d.want, len(d.doc.seq))
        if want > 0 and d.doc.best(want)[0] < want:
            return True
        target = min(d.target, len(d.doc.seq))
        if target <= 0:
            return False
        n, _ = d.doc.best(target)
        return target - n >= self.spacing

    def prefill_slice(self, model: Model, d: DocStates, size: int, active: str | None) -> int:
        """Feed up to `size` tokens of the document track from its deepest checkpoint, ending on a
        checkpoint position when one is in reach (or on the place a request wanted, `d.want`).
        Returns the tokens fed."""
        want = min(d.want, len(d.doc.seq))
        wanted = want > 0 and d.doc.best(want)[0] < want
        target = want if wanted else min(d.target, len(d.doc.seq))
        n, base = d.doc.best(target)
        end = min(target, n + size)
        if (end // self.spacing) * self.spacing > n:
            end = (end // self.spacing) * self.spacing  # end on a checkpoint position
        positions = sorted({p for p in range(n + 1, end + 1) if p % self.spacing == 0} | {end})
        state = base.copy() if base is not None else model.new_state()
        _, snaps = model.prefill_snapshots(state, d.doc.seq[n:end], [p - n for p in positions])
        for p, snap in zip(positions, snaps, strict=True):
            d.doc.put(p, snap)
        if n % self.spacing and n != d.want:
            d.doc.drop([n])  # an intermediate resume point, not a checkpoint position
        if wanted and end >= want:
            d.want = 0  # reached: the place's checkpoint stays until the next slice moves past it
        if end >= target and d.target == d.open_target:
            d.open_target = 0
        self.enforce_budget(active)
        return end - n

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
