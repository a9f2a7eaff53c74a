"""Open documents as the daemon sees them: text, line index, token ids, and what each edit changed.

No LSP types here. Positions come in as (line, character) in a position encoding ("utf-16",
"utf-8" or "utf-32"); everything inside is a Python ``str`` index (a code point offset).

Tokens are kept for the whole document and updated incrementally: an edit re-tokenizes from a
safe boundary before it (the start of the line above) until the new tokens realign with the old
ones, so typing in a 20,000-line file costs a few hundred characters of tokenization. The first
token that changed is reported so the state cache can drop only the checkpoints after it.

An LSP ``didChange`` is applied with ``apply_changes(changes, encoding)``, which returns what
changed (the first changed token, where the last change ends).

The tokens of the text before a cursor are ``prefix_ids(offset)``: the document's tokens up to a
safe boundary before the line of the cursor (``shared_before(offset)`` of them), then the tokens of
the rest up to the cursor. They equal ``encode(text[:offset])`` (the property the tests check), so
the state at the cursor is the state of a fresh prefill of the text before the cursor. What the
model reads for a request is built from them in prompt.py.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bitmamba_lsp.engine.checkpoints import common_prefix

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
ENCODINGS = ("utf-16", "utf-8", "utf-32")
MAX_EDIT_LOG = 256
_REALIGN_TOKENS = 2  # new and old tokens must agree on this many tokens past the edit
_WINDOW = 256  # first re-tokenization window past the edit (characters); doubles until realigned


class PositionError(ValueError):
    """A position that cannot be mapped (negative numbers, unknown encoding)."""


class Tokenizer(Protocol):
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]: ...
    def encode(self, text: str) -> list[int]: ...
    def token_bytes(self, token_id: int) -> bytes: ...
    @property
    def vocab_size(self) -> int: ...


_CLEAN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clean_start_table(tok: Tokenizer) -> np.ndarray:
    """For each token id: does its text start on a character boundary (not a UTF-8 continuation byte)?
    Built once per tokenizer object (read-only: shared by the models that use it)."""
    try:
        return _CLEAN[tok]
    except (KeyError, TypeError):
        pass
    table = getattr(tok, "byte_table", None) or [tok.token_bytes(i) for i in range(tok.vocab_size)]
    out = np.fromiter((not b or (b[0] & 0xC0) != 0x80 for b in table), dtype=bool, count=tok.vocab_size)
    out.flags.writeable = False
    with contextlib.suppress(TypeError):  # not weak-referenceable: no cache
        _CLEAN[tok] = out
    return out


def line_starts(text: str) -> np.ndarray:
    """Offsets where lines start (LSP line breaks: \\n, \\r\\n, \\r)."""
    starts = [0]
    starts.extend(m.end() for m in _LINE_BREAK.finditer(text))
    return np.asarray(starts, dtype=np.int64)


def units_to_chars(line: str, units: int, encoding: str) -> int:
    """Code points of `line` covered by `units` code units (clamped to the line)."""
    if encoding == "utf-32":
        return min(units, len(line))
    if encoding == "utf-16":
        if line.isascii():
            return min(units, len(line))
        count = 0
        for i, ch in enumerate(line):
            count += 2 if ord(ch) > 0xFFFF else 1
            if count > units:
                return i
        return len(line)
    if encoding == "utf-8":
        if line.isascii():
            return min(units, len(line))
        count = 0
        for i, ch in enumerate(line):
            count += len(ch.encode("utf-8", "surrogatepass"))
            if count > units:
                return i
        return len(line)
    raise PositionError(f"unknown position encoding {encoding!r}")


def chars_to_units(line: str, chars: int, encoding: str) -> int:
    head = line[:chars]
    if encoding == "utf-32" or head.isascii():
        return len(head)
    if encoding == "utf-16":
        return len(head) + sum(1 for ch in head if ord(ch) > 0xFFFF)
    if encoding == "utf-8":
        return len(head.encode("utf-8", "surrogatepass"))
    raise PositionError(f"unknown position encoding {encoding!r}")


Position = tuple[int, int]  # (line, character) in a position encoding


@dataclass(frozen=True)
class Change:
    """One content change of an LSP ``didChange``: text[start:end] replaced, or the whole document
    when the range is None."""

    text: str
    start: Position | None = None
    end: Position | None = None


@dataclass(frozen=True)
class Changed:
    """What a batch of changes did: the first token that changed (None: no change applied) and
    the offset where the last change's new text ends."""

    first_token: int | None
    end: int


@dataclass(frozen=True)
class Edit:
    """One applied change: text[start:old_end] was replaced; the new text ends at new_end."""

    epoch: int
    start: int
    old_end: int
    new_end: int
    first_changed_token: int


class TrackedDocument:
    """One open document. Mutated only by the event-loop thread; readers take snapshots
    (the token arrays are replaced on each edit, never modified in place)."""

    def __init__(
        self, uri: str, text: str, version: int, tokenizer: Tokenizer | None, clean: np.ndarray | None
    ):
        self.uri = uri
        self.version = version
        self.epoch = 0
        self._tok = tokenizer
        self._clean = clean if tokenizer is not None else None
        self.edits: deque[Edit] = deque(maxlen=MAX_EDIT_LOG)
        self._set_text(text)

    def reset_history(self, version: int) -> None:
        """Forget the edit log (a document built in steps starts its history here)."""
        self.version = version
        self.epoch = 0
        self.edits.clear()

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer the document's tokens come from (None: the document is not tokenized)."""
        return self._tok

    # ------------------------------------------------------------------ text and positions
    def _set_text(self, text: str) -> None:
        self.text = text
        self.lines = line_starts(text)
        if self._tok is not None:
            ids, offs = self._tok.encode_with_offsets(text)
            self.ids = np.asarray(ids, dtype=np.int32)
            self.starts = np.asarray(offs, dtype=np.int64)
        else:
            self.ids = np.zeros(0, dtype=np.int32)
            self.starts = np.zeros(0, dtype=np.int64)

    @property
    def line_count(self) -> int:
        return len(self.lines)

    def line_text(self, line: int) -> str:
        """Text of a line without its line break."""
        start = int(self.lines[line])
        end = int(self.lines[line + 1]) if line + 1 < len(self.lines) else len(self.text)
        return self.text[start:end].rstrip("\r\n")

    def offset_at(self, line: int, character: int, encoding: str = "utf-16") -> int:
        """Offset of an LSP position. Positions past the end of a line clamp to its end; lines past
        the end of the document clamp to the end of the document."""
        if line < 0 or character < 0:
            raise PositionError(f"negative position ({line}, {character})")
        if line >= len(self.lines):
            return len(self.text)
        return int(self.lines[line]) + units_to_chars(self.line_text(line), character, encoding)

    def position_of(self, offset: int, encoding: str = "utf-16") -> tuple[int, int]:
        offset = max(0, min(offset, len(self.text)))
        line = int(np.searchsorted(self.lines, offset, side="right")) - 1
        start = int(self.lines[line])
        text = self.line_text(line)
        return line, chars_to_units(text, min(offset - start, len(text)), encoding)

    def line_of(self, offset: int) -> int:
        return int(np.searchsorted(self.lines, offset, side="right")) - 1

    # ------------------------------------------------------------------ edits
    def apply_changes(self, changes: Iterable[Change], encoding: str = "utf-16", version: int | None = None) -> Changed:
        """Apply the content changes of one ``didChange`` in order (ranges in `encoding`)."""
        first: int | None = None
        end = 0
        for change in changes:
            edit = self.apply_change(change.start, change.end, change.text, encoding)
            first = edit.first_changed_token if first is None else min(first, edit.first_changed_token)
            end = min(edit.new_end, len(self.text))
        if version is not None:
            self.version = version
        return Changed(first, end)

    def replace_all(self, text: str, version: int | None = None) -> Edit:
        old_ids = self.ids
        self._set_text(text)
        first = common_prefix(old_ids, self.ids)
        return self._log(0, 10**18, len(text), first, version)

    def apply_change(
        self,
        start: tuple[int, int] | None,
        end: tuple[int, int] | None,
        new_text: str,
        encoding: str = "utf-16",
        version: int | None = None,
    ) -> Edit:
        """Apply an LSP content change (range in `encoding`, or None for the whole document)."""
        if start is None or end is None:
            return self.replace_all(new_text, version)
        a = self.offset_at(*start, encoding)
        b = self.offset_at(*end, encoding)
        if b < a:
            a, b = b, a
        return self.replace(a, b, new_text, version)

    def replace(self, a: int, b: int, new_text: str, version: int | None = None) -> Edit:
        """Replace text[a:b] with new_text (offsets are code points)."""
        old_text = self.text
        a = max(0, min(a, len(old_text)))
        b = max(a, min(b, len(old_text)))
        self.text = old_text[:a] + new_text + old_text[b:]
        delta = len(new_text) - (b - a)
        self._update_lines(old_text, a, b, delta)
        first = self._update_tokens(a, a + len(new_text), delta) if self._tok is not None else 0
        return self._log(a, b, a + len(new_text), first, version)

    def _log(self, a: int, b: int, new_end: int, first: int, version: int | None) -> Edit:
        self.epoch += 1
        if version is not None:
            self.version = version
        edit = Edit(self.epoch, a, b, new_end, first)
        self.edits.append(edit)
        return edit

    def _update_lines(self, old_text: str, a: int, b: int, delta: int) -> None:
        """Re-scan line breaks from the line before the edit to the first line start after it
        (chars next to the edit can pair up as "\r\n"), shift the rest."""
        lines = self.lines
        text = self.text
        i = int(np.searchsorted(lines, max(a - 1, 0), side="right")) - 1
        lo = int(lines[i])
        j = int(np.searchsorted(lines, b + 1, side="right"))
        if j == len(lines):
            fresh = [m.end() for m in _LINE_BREAK.finditer(text, lo)]
            tail = lines[:0]
        else:
            hi = int(lines[j]) + delta
            fresh = [m.end() for m in _LINE_BREAK.finditer(text, lo, hi) if m.end() < hi]
            tail = lines[j:] + delta
        self.lines = np.concatenate([lines[: i + 1], np.asarray(fresh, dtype=np.int64), tail])

    def _update_tokens(self, a: int, new_end: int, delta: int) -> int:
        """Re-tokenize around an edit; returns the index of the first token whose id changed."""
        tok = self._tok
        assert tok is not None
        ids, starts = self.ids, self.starts
        text = self.text
        # Start at a clean token boundary at or before the start of the line above the edit: the
        # text there and the character after it are unchanged, so the boundary still holds.
        anchor = int(self.lines[max(0, self.line_of(a) - 1)])
        s = self._safe_boundary(int(np.searchsorted(starts, anchor, side="right")) - 1)
        origin = int(starts[s]) if s < len(ids) else 0
        window_end = new_end + _WINDOW
        while True:
            e = min(len(text), window_end)
            new_ids, offs = tok.encode_with_offsets(text[origin:e])
            nid = np.asarray(new_ids, dtype=np.int32)
            nst = np.asarray(offs, dtype=np.int64) + origin
            k_old, i_new = self._realign(nid, nst, new_end, delta, e >= len(text))
            if k_old is not None:
                break
            window_end = origin + 2 * (window_end - origin)
        self.ids = np.concatenate([ids[:s], nid[:i_new], ids[k_old:]])
        self.starts = np.concatenate([starts[:s], nst[:i_new], starts[k_old:] + delta])
        old_seg, new_seg = ids[s:k_old], nid[:i_new]
        c = common_prefix(new_seg, old_seg)
        if c == len(new_seg) == len(old_seg):
            return len(self.ids)  # same ids: nothing the model saw has changed
        return s + c

    def _is_clean(self, k: int) -> bool:
        return self._clean is None or bool(self._clean[int(self.ids[k])])

    def _safe_boundary(self, k: int) -> int:
        """The nearest token start at or before token k where tokenizing may restart: it begins on a
        character boundary and follows a non-space character. (Inside a run of whitespace a boundary
        depends on what comes after the run: GPT-2's pattern splits "\n\n" before a word but not at
        the end of the text.)"""
        text, starts = self.text, self.starts
        while k > 0 and (not self._is_clean(k) or text[int(starts[k]) - 1].isspace()):
            k -= 1
        return max(k, 0)

    def _realign(
        self, nid: np.ndarray, nst: np.ndarray, new_end: int, delta: int, at_end: bool
    ) -> tuple[int | None, int]:
        """(old index k, new index i) where the re-tokenized window rejoins the old tokens:
        the same ids at the same (shifted) offsets for _REALIGN_TOKENS tokens past the edit."""
        ids, starts = self.ids, self.starts
        usable = len(nid) if at_end else len(nid) - 1  # the window end may cut the last token
        for i in range(int(np.searchsorted(nst, new_end, side="left")), usable):
            if self._clean is not None and not self._clean[int(nid[i])]:
                continue
            pos = int(nst[i]) - delta  # where this token starts in the old text
            k = int(np.searchsorted(starts, pos, side="left"))
            if k >= len(ids) or int(starts[k]) != pos or ids[k] != nid[i]:
                continue
            r = min(_REALIGN_TOKENS, usable - i, len(ids) - k)
            if r < _REALIGN_TOKENS and not (at_end and usable - i == len(ids) - k):
                continue
            if np.array_equal(nid[i : i + r], ids[k : k + r]) and np.array_equal(
                nst[i : i + r] - delta, starts[k : k + r]
            ):
                return k, i
        if at_end:
            return len(ids), len(nid)
        return None, 0

    # ------------------------------------------------------------------ prompts
    def shared_before(self, offset: int) -> int:
        """How many of the document's tokens begin the tokens of text[:offset]: those up to a safe
        boundary at or before the line break that ends the line above the cursor (typing on the
        cursor's line never changes them)."""
        offset = max(0, min(offset, len(self.text)))
        line = self.line_of(offset)
        if line == 0:
            return 0
        return self._safe_boundary(int(np.searchsorted(self.starts, int(self.lines[line]) - 1, side="right")) - 1)

    def line_tokens(self, offset: int) -> tuple[int, int]:
        """Token indices [a, b) covering the line of `offset`: from shared_before(offset) to the
        first token that starts on a later line."""
        line = self.line_of(max(0, min(offset, len(self.text))))
        a = self.shared_before(offset)
        end = int(self.lines[line + 1]) if line + 1 < len(self.lines) else len(self.text) + 1
        b = int(np.searchsorted(self.starts, end, side="left"))
        return a, max(a, b)

    def prefix_ids(self, offset: int, insert: str = "") -> tuple[np.ndarray, int]:
        """Token ids of text[:offset] + insert, and how many of them are the document's own tokens
        (the rest is the tokenization of text[origin(shared):offset] + insert)."""
        tok = self._tok
        if tok is None:
            raise RuntimeError("document has no tokenizer")
        offset = max(0, min(offset, len(self.text)))
        j = self.shared_before(offset)
        tail = tok.encode(self.text[self.origin(j) : offset] + insert)
        return np.concatenate([self.ids[:j], np.asarray(tail, dtype=np.int32)]), j

    def origin(self, shared: int) -> int:
        """Character offset where the tail of a prompt with `shared` document tokens starts."""
        return int(self.starts[shared]) if shared < len(self.ids) else (0 if shared == 0 else len(self.text))

    def edits_since(self, epoch: int) -> list[Edit] | None:
        """Edits applied after `epoch`, or None when the log no longer reaches back that far."""
        if epoch == self.epoch:
            return []
        if not self.edits or self.edits[0].epoch > epoch + 1:
            return None
        return [e for e in self.edits if e.epoch > epoch]


__all__ = [
    "ENCODINGS",
    "Change",
    "Changed",
    "Edit",
    "PositionError",
    "TrackedDocument",
    "chars_to_units",
    "clean_start_table",
    "line_starts",
    "units_to_chars",
]
