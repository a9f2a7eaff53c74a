"""Whole-line candidates: lines of the document that could be the rest of the cursor's line.

A model that completes token by token rarely writes a whole line right at a line start, but code
repeats whole lines: the same call after the same line, the same `self.x = x` pattern, the same
import. Two kinds of candidates are retrieved from the lines around the cursor (a window, so the
cost does not grow with the file):

- lines that followed a line equal to the line above the cursor, and lines that came before a line
  equal to the line below it (both at once: the strongest sign there is);
- lines that start with what the cursor's line already holds (when it holds something);
- at an empty line, lines that start with the first word of a line the model wrote (its greedy line
  and the lines from the runners-up of the first token): the model is often right about how the
  line starts (`return`, `self.`, `assert glom(`) and wrong about the rest, which the document
  already has (`led_candidates`).

The worker scores each candidate with the model and the cache mixture on the same scale as its own
greedy line (suggest.py), and the best is shown.
"""

from __future__ import annotations

import bisect
import builtins
import keyword
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

_WORD = re.compile(r"[A-Za-z_]\w*")


@dataclass(frozen=True)
class Candidate:
    """A line that could be the rest of the cursor's line, and why it was retrieved."""

    text: str  # what would follow the cursor
    source: str  # "file" or "workspace"
    after_prev: bool  # it followed a line equal to the line above the cursor
    count: int  # how often it was found
    distance: int  # lines between it and the cursor (file), 0 for the workspace
    led: bool = False  # retrieved by the first word of a line the model wrote
    before_next: bool = False  # it came before a line equal to the line below the cursor

WINDOW_LINES = 2000  # lines on each side of the cursor searched for candidates
MAX_CANDIDATES = 3


def _line_bounds(text: str, offset: int) -> tuple[int, int]:
    """Start and end (before its line break) of the line that holds `offset`."""
    end = text.find("\n", offset)
    return text.rfind("\n", 0, offset) + 1, len(text) if end < 0 else end


def line_candidates(text: str, offset: int, *, window: int = WINDOW_LINES, limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """Candidate rests of the cursor's line (what would follow the cursor), most promising first."""
    line_start, line_end = _line_bounds(text, offset)
    before = text[line_start:offset]
    if text[offset:line_end].strip():
        return []  # the line goes on after the cursor: a whole line does not fit
    typed = before.strip()
    prev_end = line_start - 1
    prev_start = text.rfind("\n", 0, max(prev_end, 0)) + 1 if prev_end > 0 else 0
    prev = text[prev_start:prev_end].strip() if prev_end > 0 else ""
    above = _lines_back(text, line_start, window)
    below = text[line_end + 1 : _forward(text, line_end + 1, window)].split("\n")
    lines = [*above, "\x00", *below]  # the cursor's line itself is not a candidate
    stripped = [ln.strip() for ln in lines]
    found: Counter[str] = Counter()
    order: dict[str, int] = {}
    follows: set[str] = set()
    cursor_at = len(above)

    precedes: set[str] = set()
    nxt = stripped[cursor_at + 1] if cursor_at + 1 < len(stripped) else ""

    def add(rest: str, where: int, into: set[str] | None) -> None:
        rest = rest.rstrip()
        if rest.strip():
            found[rest] += 1
            order[rest] = min(order.get(rest, 1 << 30), abs(where - cursor_at))
            if into is not None:
                into.add(rest)

    def rest_of(s: str) -> str:
        return s[len(typed) :] if s.startswith(typed) else ""

    if prev:
        for k in range(len(stripped) - 1):
            if stripped[k] == prev and k + 1 != cursor_at and stripped[k + 1] and stripped[k + 1] != "\x00":
                add(rest_of(stripped[k + 1]), k + 1, follows)
    if nxt:  # the lines that came before a line equal to the one below the cursor
        for k in range(1, len(stripped)):
            if stripped[k] == nxt and k - 1 != cursor_at and k != cursor_at + 1 and stripped[k - 1] and stripped[k - 1] != "\x00":
                add(rest_of(stripped[k - 1]), k - 1, precedes)
    if typed:
        for k, s in enumerate(stripped):
            if k != cursor_at and s.startswith(typed) and len(s) > len(typed):
                add(s[len(typed) :], k, None)
    ranked = sorted(found, key=lambda r: (
        not (r in follows and r in precedes), r not in follows and r not in precedes, -found[r], order[r]))
    return [
        Candidate(r, "file", r in follows, found[r], order[r], before_next=r in precedes) for r in ranked[:limit]
    ]


_LEAD = re.compile(r"\W*\w+\W?")
# lines retrieved per lead word, nearest first, and the lines on each side of the cursor searched
# for them (on the tune split: 2 / 400 lines put an exact line among the options at 10.2 % of line
# starts, 5 / 2000 at 10.8 %)
LEAD_LINES = 5
LEAD_WINDOW = 2000


def lead_of(line: str) -> str | None:
    """The first word of a line the model wrote, with the punctuation around it (`return `,
    `self.`, `>>> glom(`): what the retrieved lines must start with; None when it has no word."""
    m = _LEAD.match(line.lstrip())
    return m.group(0) if m else None


WINDOW_CHARS = 200_000  # the windows of led and middle candidates hold at most this many characters a side


def _around(text: str, line_start: int, line_end: int, window: int) -> list[tuple[int, str]]:
    """(distance in lines, line) of the lines above the cursor's line and below it, at most
    `window` lines and WINDOW_CHARS characters on each side (read by characters first: one split
    in C), never a piece of a line; the lines above first, farthest first."""
    lo = max(0, line_start - 1 - WINDOW_CHARS)
    above = text[lo : max(0, line_start - 1)].split("\n") if line_start > 0 else []
    if lo > 0 and text[lo - 1] != "\n":
        above = above[1:]  # the slice began inside a line
    hi = min(len(text), line_end + 1 + WINDOW_CHARS)
    below = text[line_end + 1 : hi].split("\n") if line_end < len(text) else []
    if hi < len(text) and below:
        below = below[:-1]  # the slice ended inside a line
    above, below = (above[-window:] if window else []), below[:window]
    return [*((len(above) - k, ln) for k, ln in enumerate(above)), *((k + 1, ln) for k, ln in enumerate(below))]


def led_candidates(
    text: str, offset: int, leads: list[str], *, window: int = LEAD_WINDOW, per_lead: int = LEAD_LINES
) -> list[Candidate]:
    """Lines of the document near the cursor that start with one of `leads` (an empty line only),
    nearest first, `per_lead` for each."""
    line_start, line_end = _line_bounds(text, offset)
    if text[line_start:line_end].strip() or not leads:
        return []
    leads = list(dict.fromkeys(leads))
    starts = tuple(leads)
    hits: list[tuple[int, str]] = []  # (distance, stripped line) of the lines that start with a lead
    for d, ln in _around(text, line_start, line_end, window):
        s = ln.lstrip()
        if s.startswith(starts):  # one test in C for all the leads
            hits.append((d, s.rstrip()))
    out: list[Candidate] = []
    seen: set[str] = set()
    for lead in leads:
        found: dict[str, int] = {}  # line -> distance
        count: Counter[str] = Counter()
        for d, ln in hits:
            if ln.startswith(lead) and len(ln) > len(lead):
                found[ln] = min(found.get(ln, 1 << 30), d)
                count[ln] += 1
        for ln in sorted(found, key=lambda x: (found[x], -count[x]))[:per_lead]:
            if ln not in seen:
                seen.add(ln)
                out.append(Candidate(ln, "file", False, count[ln], found[ln], led=True))
    return out


MIDDLE_WINDOW = 2000  # lines on each side of the cursor searched for middle candidates


def middle_of(line: str, typed: str, rest: str) -> str | None:
    """What the stripped `line` puts between `typed` (the cursor's line before the cursor,
    indentation stripped) and `rest` (after the cursor, as it is): None when it does not start and
    end the same way or puts nothing there. Spaces between the cursor and the rest stay the rest's."""
    end = rest.strip()
    if len(line) <= len(typed) + len(end) or not line.startswith(typed) or not line.endswith(end):
        return None
    x = line[len(typed) : len(line) - len(end)]
    lead = rest[: len(rest) - len(rest.lstrip())]
    if lead and x.endswith(lead):
        x = x[: len(x) - len(lead)]
    return x if x.strip() else None


def middle_candidates(text: str, offset: int, *, window: int = MIDDLE_WINDOW, limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """Inside a line (text after the cursor): what other lines of the document put between the
    same start and the same end. A line `typed X rest` elsewhere, where the cursor's line holds
    `typed | rest`, offers X (`foo(a, |)` beside `foo(a, b=2)`: `b=2`); most frequent first, then
    nearest."""
    line_start, line_end = _line_bounds(text, offset)
    typed = text[line_start:offset].lstrip()
    rest = text[offset:line_end].rstrip()
    if not rest.strip() or not typed.strip():
        return []
    found: Counter[str] = Counter()
    nearest: dict[str, int] = {}
    end = rest.strip()
    for d, ln in _around(text, line_start, line_end, window):
        if typed not in ln or end not in ln:
            continue  # (a quick test in C first: most lines hold neither end)
        x = middle_of(ln.strip(), typed, rest)
        if x:
            found[x] += 1
            nearest[x] = min(nearest.get(x, 1 << 30), d)
    ranked = sorted(found, key=lambda x: (-found[x], nearest[x]))[:limit]
    return [Candidate(x, "file", False, found[x], nearest[x]) for x in ranked]


def _lines_back(text: str, end: int, n: int) -> list[str]:
    start = end
    for _ in range(n + 1):
        if start <= 0:
            start = 0
            break
        start = text.rfind("\n", 0, start - 1) + 1
        if start == 0:
            break
    return text[start : max(start, end - 1)].split("\n") if end > 0 else []


def _forward(text: str, start: int, n: int) -> int:
    pos = start
    for _ in range(n):
        pos = text.find("\n", pos)
        if pos < 0:
            return len(text)
        pos += 1
    return pos


# ---------------------------------------------------------------------------------------- workspace
class WorkspaceLines:
    """Lines and identifiers of the workspace files: which lines followed a given line, every
    distinct line (stripped) and identifier in sorted order for a prefix search. Built by the
    workspace scanner thread, then handed over whole (the session only reads a finished one)."""

    def __init__(self, max_lines: int = 400_000) -> None:
        self.max_lines = max_lines
        self.after: dict[str, Counter[str]] = {}
        self.count: Counter[str] = Counter()
        self.files: dict[object, list[str]] = {}  # path -> its non-empty lines, stripped
        self.lines = 0
        self._words: set[str] = set()
        self._sorted: list[str] | None = None
        self._sorted_words: list[str] = []

    def add_file(self, path: object, text: str) -> None:
        if path in self.files:
            self.remove_file(path)
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()][: max(0, self.max_lines - self.lines)]
        if not lines:
            return
        if self._sorted is None:
            self._words.update(_WORD.findall(text))
        self.files[path] = lines
        self._count(lines, +1)
        if self._sorted is not None:  # after finish(): new lines join the prefix search
            for line in lines:
                if self.count[line] == 1:
                    bisect.insort(self._sorted, line)

    def remove_file(self, path: object) -> None:
        """A file that is open in the editor: the document level holds it (without the cursor's line)."""
        lines = self.files.pop(path, None)
        if lines:
            self._count(lines, -1)

    def _count(self, lines: list[str], sign: int) -> None:
        self.lines += sign * len(lines)
        for prev, line in zip(["", *lines], lines, strict=False):
            self.count[line] += sign
            if prev:
                c = self.after.setdefault(prev, Counter())
                c[line] += sign
                if c[line] <= 0:
                    del c[line]
            if self.count[line] <= 0:
                del self.count[line]

    def finish(self) -> WorkspaceLines:
        self._sorted = sorted(self.count)
        self._sorted_words = sorted(self._words)
        self._words = set()
        return self

    def words(self, prefix: str, limit: int = 500) -> list[str]:
        """Identifiers of the workspace that start with `prefix`."""
        i = bisect.bisect_left(self._sorted_words, prefix)
        out = []
        for w in self._sorted_words[i : i + limit]:
            if not w.startswith(prefix):
                break
            out.append(w)
        return out

    def led(self, leads: list[str], per_lead: int) -> list[Candidate]:
        """The workspace's most frequent lines that start with each of `leads`."""
        out: list[Candidate] = []
        if self._sorted is None:
            return out
        for lead in dict.fromkeys(leads):
            i = bisect.bisect_left(self._sorted, lead)
            hits = []
            for line in self._sorted[i : i + 500]:
                if not line.startswith(lead):
                    break
                if len(line) > len(lead) and self.count[line] > 0:
                    hits.append(line)
            for line in sorted(hits, key=lambda x: -self.count[x])[:per_lead]:
                out.append(Candidate(line, "workspace", False, self.count[line], 0, led=True))
        return out

    def middles(self, typed: str, rest: str, limit: int) -> list[Candidate]:
        """What the workspace's lines put between `typed` and `rest` (middle_of), most frequent
        first: middle_candidates for the workspace."""
        out: Counter[str] = Counter()
        if self._sorted is None or not typed or not rest.strip():
            return []
        i = bisect.bisect_left(self._sorted, typed)
        for line in self._sorted[i : i + 2000]:
            if not line.startswith(typed):
                break
            x = middle_of(line, typed, rest) if self.count[line] > 0 else None
            if x:
                out[x] += self.count[line]
        return [Candidate(x, "workspace", False, n, 0) for x, n in out.most_common(limit)]

    def candidates(self, prev: str, typed: str, limit: int) -> list[Candidate]:
        found: Counter[str] = Counter()
        follows: set[str] = set()
        for line, n in (self.after.get(prev.strip()) or {}).items():
            if n <= 0:
                continue
            if line.startswith(typed) and len(line) > len(typed):
                found[line[len(typed) :]] += n
                follows.add(line[len(typed) :])
        if typed and self._sorted is not None:
            i = bisect.bisect_left(self._sorted, typed)
            for line in self._sorted[i : i + 200]:
                if not line.startswith(typed):
                    break
                if len(line) > len(typed) and self.count[line] > 0:
                    found[line[len(typed) :]] += self.count[line]
        ranked = sorted(found, key=lambda r: (r not in follows, -found[r]))[:limit]
        return [Candidate(r, "workspace", r in follows, found[r], 0) for r in ranked]


def previous_line(text: str, offset: int) -> tuple[str, str]:
    """(the line above the cursor's line, what the cursor's line holds before the cursor), stripped."""
    line_start = text.rfind("\n", 0, offset) + 1
    prev_start = text.rfind("\n", 0, max(line_start - 1, 0)) + 1 if line_start > 0 else 0
    prev = text[prev_start : max(line_start - 1, prev_start)] if line_start > 0 else ""
    return prev.strip(), text[line_start:offset].strip()


# ---------------------------------------------------------------------------------------- words
_PARTIAL = re.compile(r"[A-Za-z_]\w*$")
WORD_WINDOW = 100_000  # characters on each side of the cursor searched for known words
BUILTIN_WORDS = frozenset(keyword.kwlist) | frozenset(dir(builtins))


def partial_word(text: str, offset: int) -> str | None:
    """The identifier the cursor is in the middle of typing (nothing word-like follows), or None."""
    if offset < len(text) and (text[offset].isalnum() or text[offset] == "_"):
        return None
    m = _PARTIAL.search(text, max(0, offset - 80), offset)
    return m.group(0) if m and m.end() == offset else None


def known_words(text: str, offset: int, partial: str, workspace: WorkspaceLines | None = None) -> set[str]:
    """Identifiers starting with `partial` that the document (around the cursor, other than the one
    being typed), the workspace or the language already has."""
    lo, hi = max(0, offset - WORD_WINDOW), min(len(text), offset + WORD_WINDOW)
    words = {w for w in _WORD.findall(text[lo : offset - len(partial)] + " " + text[offset:hi]) if w.startswith(partial)}
    words |= {w for w in BUILTIN_WORDS if w.startswith(partial)}
    if workspace is not None:
        words.update(workspace.words(partial))
    return words


# ---------------------------------------------------------------------------------------- a request
MAX_WORKSPACE_CANDIDATES = 2


def request_candidates(text: str, offset: int, settings: Any, workspace: WorkspaceLines | None) -> list[Candidate]:
    """Whole-line candidates of one request: the file's first (it has the final say), then the
    workspace's."""
    if not settings.line_candidates:
        return []
    out = line_candidates(text, offset)
    if workspace is not None and settings.cache_workspace and not text[offset : offset + 200].split("\n", 1)[0].strip():
        prev, typed = previous_line(text, offset)
        have = {c.text for c in out}
        out += [c for c in workspace.candidates(prev, typed, MAX_WORKSPACE_CANDIDATES) if c.text not in have]
    return out


def request_words(text: str, offset: int, settings: Any, workspace: WorkspaceLines | None) -> set[str] | None:
    """The identifiers a half-typed word at the cursor may become (None: the cursor is not in one)."""
    partial = partial_word(text, offset)
    if partial is None or not settings.suffix_safety:
        return None
    return known_words(text, offset, partial, workspace)


MAX_LED_WORKSPACE = 1  # workspace lines per lead word


def request_led(
    text: str, offset: int, settings: Any, workspace: WorkspaceLines | None, lines: list[str], have: set[str]
) -> list[Candidate]:
    """The led candidates of one request (an empty line): lines of the document, then of the
    workspace, that start like the model's `lines`; none already in `have`."""
    if not settings.line_candidates or not settings.lead_candidates:
        return []
    leads = [lead for lead in (lead_of(ln) for ln in lines) if lead]
    out = [c for c in led_candidates(text, offset, leads) if c.text not in have]
    if workspace is not None and settings.cache_workspace:
        seen = have | {c.text for c in out}
        out += [c for c in workspace.led(leads, MAX_LED_WORKSPACE) if c.text not in seen]
    return out
