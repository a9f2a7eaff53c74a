"""What the model reads for one request: a `Prompt`, an ordered list of segments.

Today a prompt has one segment, the document's text before the cursor (`PREFIX`). The order is
the point: the state after a segment that did not change since the last request is restored from
a checkpoint, never recomputed, so the parts that change least go first. Later segments kinds slot
in here without the worker, healing or the server knowing more than "a prompt":

- context chunks from other files before the document (stable while the user types),
- a suffix (the text after the cursor) and the typed part of the line for fill-in-the-middle models.

Each segment carries its tokens and how many of them are the document's own (`own`): those are
checkpointed sparsely on the document's track (background prefill fills the same track), while the
last tokens of the whole prompt are checkpointed densely on the cursor's track (typing resumes
there). `CheckpointPlan` says which positions go where; `lsp/statecache.py` keeps them.

Token healing takes back the prompt's last token (`Prompt.heal`), whatever segment it is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from bitmamba_lsp.engine.healing import Healed, TokenHealer
from bitmamba_lsp.lsp.documents import TrackedDocument


class SegmentKind(StrEnum):
    PREFIX = "prefix"  # the document's text before the cursor


@dataclass(frozen=True)
class Segment:
    kind: SegmentKind
    ids: np.ndarray
    own: int  # leading ids that are the document's own tokens (the rest was tokenized for this request)


@dataclass(frozen=True)
class CheckpointPlan:
    """Positions (tokens into the prompt) to snapshot while feeding it, and where each is kept."""

    document: list[int]  # on the document track: every `spacing` tokens of the document's own tokens
    cursor: list[int]  # on the cursor track: after each of the prompt's last `dense` tokens

    @property
    def positions(self) -> list[int]:
        return sorted(set(self.document) | set(self.cursor))


@dataclass(frozen=True)
class Prompt:
    segments: tuple[Segment, ...]
    ids: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts = [s.ids for s in self.segments]
        ids = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.int32)
        object.__setattr__(self, "ids", np.asarray(ids, dtype=np.int32))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shared(self) -> int:
        """Leading tokens that are documents' own tokens (kept while the user types on this line)."""
        n = 0
        for seg in self.segments:
            n += seg.own
            if seg.own < len(seg.ids):
                break
        return n

    def or_start(self, token: int) -> Prompt:
        """This prompt, or `token` alone (the model's document separator) when it is empty: the
        model needs at least one token to predict from."""
        if len(self.ids):
            return self
        return Prompt((Segment(SegmentKind.PREFIX, np.asarray([token], dtype=np.int32), 0),))

    def heal(self, healer: TokenHealer) -> tuple[Prompt, Healed]:
        """The prompt without its last token when token healing takes it back, and what the first
        generated tokens must reproduce (engine/healing.py)."""
        healed = healer.heal(self.ids)
        if len(healed.ids) == len(self.ids):
            return self, healed
        segs = list(self.segments)
        i = max(k for k, s in enumerate(segs) if len(s.ids))
        last = segs[i]
        segs[i] = Segment(last.kind, last.ids[:-1], min(last.own, len(last.ids) - 1))
        return Prompt(tuple(segs)), healed

    def plan(self, start: int, spacing: int, dense: int, document_limit: int) -> CheckpointPlan:
        """Checkpoints to take while feeding ids[start:]: document-track ones at multiples of
        `spacing` up to `document_limit` (the prompt's common prefix with the document track), and
        cursor-track ones after each of the last `dense` tokens."""
        end = len(self.ids)
        sparse = range((start // spacing + 1) * spacing, min(end, document_limit) + 1, spacing)
        tail = range(max(start + 1, end - dense + 1), end + 1)
        return CheckpointPlan(list(sparse), list(tail))


def prompt_at(doc: TrackedDocument, offset: int, insert: str = "") -> Prompt:
    """The prompt for a cursor at `offset` in `doc` (with `insert` typed there first: the prompt
    after accepting a suggestion)."""
    ids, own = doc.prefix_ids(offset, insert)
    return Prompt((Segment(SegmentKind.PREFIX, ids, own),))


def token_prompt(ids: np.ndarray | list[int], own: int = 0) -> Prompt:
    """A prompt of given token ids (tests, benchmarks)."""
    return Prompt((Segment(SegmentKind.PREFIX, np.asarray(ids, dtype=np.int32), own),))
