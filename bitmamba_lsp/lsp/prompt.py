"""What the model reads for one request: a `Prompt`, an ordered list of segments.

For a left-to-right model a prompt has one segment, the document's text before the cursor
(`PREFIX`). For a model that declares fill-in-the-middle (engine/fim.py) it is

    LEAD    <pre>                                   (the document track starts with it)
    PREFIX  the lines above the cursor's line       (the document's own tokens, then a re-tokenized tail)
    SUFFIX  <suf> the rest of the cursor's line and up to N lines below (N lines, at most T tokens)
    MIDDLE  <mid> the typed part of the cursor's line

and the model writes the rest of the middle, ending it with its end-of-text token. The order is
the point: the state after a segment that did not change since the last request is restored from
a checkpoint, never recomputed, so the parts that change least go first. A keystroke on the line
changes only MIDDLE (a few tokens fed from the cursor track); moving to another line re-feeds the
suffix window and the line from the prefix's end (a checkpoint of the document track, or the one
kept at the end of PREFIX). (Context chunks from other files would go before LEAD.)

Each segment carries its tokens and how many of them are the document's own (`own`): those are
checkpointed sparsely on the document's track (background prefill fills the same track), while the
last tokens of the whole prompt are checkpointed densely on the cursor's track (typing resumes
there). `CheckpointPlan` says which positions go where; `lsp/statecache.py` keeps them.

Token healing takes back the prompt's last token (`Prompt.heal`), whatever segment it is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

from bitmamba_lsp.engine.fim import FimSpec
from bitmamba_lsp.engine.healing import MAX_HEALED_TOKENS, Healed, TokenHealer
from bitmamba_lsp.lsp.documents import TrackedDocument

if TYPE_CHECKING:
    from bitmamba_lsp.engine.model import Model
    from bitmamba_lsp.lsp.settings import Settings


class SegmentKind(StrEnum):
    LEAD = "lead"  # tokens before the document on its track (a FIM model's <pre>)
    PREFIX = "prefix"  # the document's text before the cursor (FIM: before the cursor's line)
    SUFFIX = "suffix"  # FIM: <suf> and the text after the cursor (a window of it)
    MIDDLE = "middle"  # FIM: <mid> and the typed part of the cursor's line


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
    keep: list[int] = field(default_factory=list)  # on the cursor track, kept however far back (FIM: PREFIX's end)

    @property
    def positions(self) -> list[int]:
        return sorted(set(self.document) | set(self.cursor) | set(self.keep))


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

    def text_ids(self) -> np.ndarray:
        """The tokens of the document's text up to the cursor, in order: for a FIM prompt PREFIX and
        MIDDLE without the sentinels (what an n-gram cache reads), else the whole prompt."""
        if len(self.segments) == 1:
            return self.ids
        parts = [s.ids for s in self.segments if s.kind is SegmentKind.PREFIX]  # (not the LEAD: other files)
        parts += [s.ids[1:] for s in self.segments if s.kind is SegmentKind.MIDDLE]
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def or_start(self, token: int) -> Prompt:
        """This prompt, or `token` alone (the model's document separator) when it is empty: the
        model needs at least one token to predict from."""
        if len(self.ids):
            return self
        return Prompt((Segment(SegmentKind.PREFIX, np.asarray([token], dtype=np.int32), 0),))

    def heal(self, healer: TokenHealer) -> tuple[Prompt, Healed]:
        """The prompt without the tokens token healing takes back (within its last segment), and
        what the first generated tokens must reproduce (engine/healing.py)."""
        segs = list(self.segments)
        nonempty = [k for k, s in enumerate(segs) if len(s.ids)]
        if not nonempty:
            return self, Healed(self.ids, "", b"")
        i = nonempty[-1]
        healed = healer.heal(self.ids, max_tokens=min(MAX_HEALED_TOKENS, len(segs[i].ids)))
        k = len(self.ids) - len(healed.ids)
        if k == 0:
            return self, healed
        last = segs[i]
        segs[i] = Segment(last.kind, last.ids[:-k], min(last.own, len(last.ids) - k))
        return Prompt(tuple(segs)), healed

    def plan(self, start: int, spacing: int, dense: int, document_limit: int) -> CheckpointPlan:
        """Checkpoints to take while feeding ids[start:]: document-track ones at multiples of
        `spacing` up to `document_limit` (the prompt's common prefix with the document track), and
        cursor-track ones after each of the last `dense` tokens."""
        end = len(self.ids)
        sparse = range((start // spacing + 1) * spacing, min(end, document_limit) + 1, spacing)
        tail = range(max(start + 1, end - dense + 1), end + 1)
        keep = [b for b in self.boundaries() if start < b < end]
        return CheckpointPlan(list(sparse), list(tail), keep)

    def boundaries(self) -> list[int]:
        """Where the state is worth keeping whatever follows: the end of a FIM prompt's PREFIX (the
        cursor's line start), from which any position on the line is a suffix window away."""
        if not any(s.kind is SegmentKind.SUFFIX for s in self.segments):
            return []
        out, n = [], 0
        for seg in self.segments:
            n += len(seg.ids)
            if seg.kind is SegmentKind.PREFIX:
                out.append(n)
        return out


@dataclass(frozen=True)
class FimLayout:
    """How the daemon lays out a FIM prompt for a model (lsp/worker.py chooses the window)."""

    spec: FimSpec
    suffix_lines: int = 8  # lines below the cursor's line in the suffix
    suffix_tokens: int = 96  # at most this many suffix tokens (the window re-fed on a line change)

    @property
    def lead(self) -> np.ndarray:
        return np.asarray([self.spec.prefix_id], dtype=np.int32)

    def report(self) -> dict[str, int]:
        return {"suffix_lines": self.suffix_lines, "suffix_tokens": self.suffix_tokens}


FIM_SUFFIX_SECONDS = 0.012  # the suffix window's share of a line change (floor: 25 ms at the default model)


def fim_layout(model: Model, settings: Settings, feed_rate: float) -> FimLayout | None:
    """The FIM prompt layout for `model` (None: left to right). The suffix window's tokens are
    what the model prefills in FIM_SUFFIX_SECONDS at its measured rate (`feed_rate` tokens/s),
    within 16..256, unless the fimSuffixTokens setting says."""
    if model.fim is None or not settings.fim or model.tokenizer is None:
        return None
    tokens = settings.fim_suffix_tokens or int(min(256, max(16, feed_rate * FIM_SUFFIX_SECONDS)))
    return FimLayout(model.fim, suffix_lines=settings.fim_suffix_lines, suffix_tokens=tokens)


def suffix_window(text: str, offset: int, lines: int) -> str:
    """The rest of the cursor's line and up to `lines` lines below it."""
    end = offset
    for _ in range(lines + 1):
        nl = text.find("\n", end)
        if nl == -1:
            return text[offset:]
        end = nl + 1
    return text[offset:end]


def prompt_at(
    doc: TrackedDocument,
    offset: int,
    insert: str = "",
    fim: FimLayout | None = None,
    replaced: int = 0,
    context: np.ndarray | None = None,
) -> Prompt:
    """The prompt for a cursor at `offset` in `doc` (with `insert` typed there first, over the next
    `replaced` characters: the prompt after accepting a suggestion); with `fim`, in
    fill-in-the-middle order (module docstring); `context`: the document's context chunks' tokens
    (lsp/context_chunks.py), first."""
    ctx = context if context is not None and len(context) else None
    if fim is None:
        ids, own = doc.prefix_ids(offset, insert)
        if ctx is None:
            return Prompt((Segment(SegmentKind.PREFIX, ids, own),))
        return Prompt((Segment(SegmentKind.LEAD, ctx, len(ctx)), Segment(SegmentKind.PREFIX, ids, own)))
    tok = doc.tokenizer
    if tok is None:
        raise RuntimeError("document has no tokenizer")
    offset = max(0, min(offset, len(doc.text)))
    nl = insert.rfind("\n")
    if nl == -1:  # the cursor's line starts in the document
        line_start = doc.text.rfind("\n", 0, offset) + 1
        prefix, own = doc.prefix_ids(line_start)
        typed = doc.text[line_start:offset] + insert
    else:  # the insert ends on a new line
        prefix, own = doc.prefix_ids(offset, insert[: nl + 1])
        typed = insert[nl + 1 :]
    spec = fim.spec
    after = tok.encode(suffix_window(doc.text, offset + replaced, fim.suffix_lines))[: max(0, fim.suffix_tokens)]
    i32 = np.int32
    lead = fim.lead if ctx is None else np.concatenate([ctx, fim.lead]).astype(np.int32)
    return Prompt(
        (
            Segment(SegmentKind.LEAD, lead, len(lead)),
            Segment(SegmentKind.PREFIX, prefix, own),
            Segment(SegmentKind.SUFFIX, np.asarray([spec.suffix_id, *after], dtype=i32), 0),
            Segment(SegmentKind.MIDDLE, np.asarray([spec.middle_id, *tok.encode(typed)], dtype=i32), 0),
        )
    )


def token_prompt(ids: np.ndarray | list[int], own: int = 0) -> Prompt:
    """A prompt of given token ids (tests, benchmarks)."""
    return Prompt((Segment(SegmentKind.PREFIX, np.asarray(ids, dtype=np.int32), own),))
