"""Whole-line candidates: lines of the document that could be the rest of the cursor's line.

A model that completes token by token rarely writes a whole line right at a line start, but code
repeats whole lines: the same call after the same line, the same `self.x = x` pattern, the same
import. Two kinds of candidates are retrieved from the lines around the cursor (a window, so the
cost does not grow with the file):

- lines that followed a line equal to the line above the cursor;
- lines that start with what the cursor's line already holds (when it holds something).

The worker scores each candidate with the model and the cache mixture on the same scale as its own
greedy line (suggest.py), and the best is shown.
"""

from __future__ import annotations

from collections import Counter

WINDOW_LINES = 2000  # lines on each side of the cursor searched for candidates
MAX_CANDIDATES = 3


def line_candidates(text: str, offset: int, *, window: int = WINDOW_LINES, limit: int = MAX_CANDIDATES) -> list[str]:
    """Candidate rests of the cursor's line (what would follow the cursor), most promising first."""
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line_end = len(text) if line_end < 0 else line_end
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
    cursor_at = len(above)

    def add(rest: str, where: int) -> None:
        rest = rest.rstrip()
        if rest.strip():
            found[rest] += 1
            order[rest] = min(order.get(rest, 1 << 30), abs(where - cursor_at))

    if prev:
        for k in range(len(stripped) - 1):
            if stripped[k] == prev and k + 1 != cursor_at and stripped[k + 1] and stripped[k + 1] != "\x00":
                add(stripped[k + 1][len(typed) :] if stripped[k + 1].startswith(typed) else "", k + 1)
    if typed:
        for k, s in enumerate(stripped):
            if k != cursor_at and s.startswith(typed) and len(s) > len(typed):
                add(s[len(typed) :], k)
    ranked = sorted(found, key=lambda r: (-found[r], order[r]))
    return ranked[:limit]


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
