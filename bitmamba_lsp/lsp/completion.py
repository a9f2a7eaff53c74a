"""What to complete and when to stop: cursor context, stop rules, post-processing.

Pure text logic (no LSP, no model). `CursorContext.at(text, offset)` is the one way to read the
text around a cursor (the server, the benchmarks and the tests all use it). The decode loop feeds
generated text through a `StopRules` (a `TextStop` of engine/decoding.py) chunk by chunk and asks it
whether to stop; `finalize` turns the raw text into the suggestion shown to the user (or None when
there is nothing useful).

Rules, after the mature daemons (tabby's post-processing, llama.vim, Copilot):
- mid-line (word characters after the cursor): one line, and only text the model wrote up to
  what follows the cursor (it reproduced the rest of the line): a suggestion inside a finished
  line that does not lead back to its rest is not shown;
- only closing punctuation after the cursor (e.g. ``)``): the item replaces it only when its own
  brackets close it (an accepted suggestion never unbalances a line that was balanced), and an
  item that would change nothing is not shown;
- degenerate loops (a short unit repeated four or more times) end the suggestion before the loop;
  a suggestion that repeats the line below the cursor is not shown;
- at an empty line or after a block opener, multi-line mode continues while the indentation stays
  inside the current block, and stops at a dedent or at two blank lines in a row;
- a closing bracket with nothing to close ends the suggestion; so do lines that repeat the line
  before them or the document's next line; trailing whitespace is trimmed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

OPEN = "([{"
CLOSE = ")]}"
PAIR = {")": "(", "]": "[", "}": "{"}
CLOSING_PUNCT = set(")]}'\"`;:,.>")
CONTEXT_CHARS = 4000  # text on each side of the cursor that the rules look at
NEXT_LINES = 5  # lines after the cursor's line that the rules look at
BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", "do", "then")


def indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def indent_width(ws: str, tab: int = 4) -> int:
    return sum(tab if c == "\t" else 1 for c in ws)


def unmatched_open(text: str) -> list[str]:
    """Brackets left open in `text`, skipping string literals and # comments (a rough scan)."""
    stack: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = ""
                continue
        elif ch == "#":
            j = text.find("\n", i)
            if j < 0:
                break
            i = j
        elif ch in "\"'":
            quote = ch * 3 if text.startswith(ch * 3, i) else ch
            i += len(quote)
            continue
        elif ch in OPEN:
            stack.append(ch)
        elif ch in CLOSE and stack and stack[-1] == PAIR[ch]:
            stack.pop()
        elif ch == "\n" and quote in ("'", '"'):
            quote = ""
        i += 1
    return stack


def unmatched_quote(line: str) -> bool:
    """Is a single-line string still open at the end of `line`?"""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
    return bool(quote)


@dataclass
class CursorContext:
    """The text around the cursor that the rules need (taken from the document at request time)."""

    line_prefix: str  # the cursor's line up to the cursor
    line_suffix: str  # the rest of the cursor's line (no line break)
    next_lines: list[str] = field(default_factory=list)  # a few lines after the cursor's line
    multiline: bool = True  # the user's setting
    max_lines: int = 12
    safety: bool = True  # the suffix-safety and loop rules (the suffixSafety setting)

    @classmethod
    def at(
        cls,
        text: str,
        offset: int,
        *,
        insert: str = "",
        replaced: int = 0,
        multiline: bool = True,
        max_lines: int = 12,
        safety: bool = True,
    ) -> CursorContext:
        """The context of a cursor at `offset` in `text`; with `insert`, as if that text had been
        typed there first (replacing `replaced` characters after the cursor). Reads at most
        CONTEXT_CHARS on each side, so it costs the same in any file."""
        offset = max(0, min(offset, len(text)))
        before = text[max(0, offset - CONTEXT_CHARS) : offset] + insert
        after = text[offset + replaced : offset + replaced + CONTEXT_CHARS]
        line_prefix = before[before.rfind("\n") + 1 :]
        first, _, rest = after.partition("\n")
        return cls(
            line_prefix=line_prefix.rstrip("\r") if line_prefix.endswith("\r") else line_prefix,
            line_suffix=first.rstrip("\r"),
            next_lines=[ln.rstrip("\r") for ln in rest.split("\n", NEXT_LINES)[:NEXT_LINES]],
            multiline=multiline,
            max_lines=max_lines,
            safety=safety,
        )

    @property
    def mid_line(self) -> bool:
        """Word characters follow the cursor: complete within the line only."""
        rest = self.line_suffix.strip()
        return bool(rest) and not all(c in CLOSING_PUNCT or c.isspace() for c in rest)

    @property
    def closing_suffix(self) -> str:
        """The closing punctuation after the cursor, when that is all there is."""
        rest = self.line_suffix.rstrip()
        if rest and not self.mid_line:
            return rest
        return ""

    @property
    def block_mode(self) -> bool:
        if not self.multiline or self.mid_line:
            return False
        stripped = self.line_prefix.strip()
        if not stripped:
            return True
        return stripped.endswith(BLOCK_OPENERS) and not self.line_suffix.strip()

    @property
    def block_indent(self) -> int:
        """Lines of a multi-line suggestion must be indented at least this much."""
        width = indent_width(indent_of(self.line_prefix))
        stripped = self.line_prefix.strip()
        if stripped and stripped.endswith(BLOCK_OPENERS):
            return width + 1  # the body of a block is deeper than its opener
        if not stripped:
            return indent_width(self.line_prefix)
        return width


class StopRule(StrEnum):
    """Which rule ended a suggestion."""

    LINE = "line"  # end of a single-line suggestion
    LOOP = "loop"  # a short unit repeated four or more times
    BRACKET = "bracket"  # a closing bracket with nothing to close
    MAX_LINES = "max_lines"
    BLANK_LINES = "blank_lines"  # two blank lines in a row
    DEDENT = "dedent"  # a line left the block
    REPEATS_DOCUMENT = "repeats_document"  # a line equal to the document's next line
    REPETITION = "repetition"  # a line equal to the one before it


class StopRules:
    """Fed generated text; says when to stop (a `TextStop` for the decode loop). `text` is the kept
    part so far; `reason` the rule that fired (None until one does)."""

    def __init__(self, ctx: CursorContext) -> None:
        self.ctx = ctx
        self.raw = ""
        self.text = ""
        self.done = False
        self.reason: StopRule | None = None
        self._stack = unmatched_open(ctx.line_prefix)
        self._quote = ""
        self._comment = "#" in ctx.line_prefix and not unmatched_quote(ctx.line_prefix)
        # At the end of a finished line, a one-line suggestion may start on the next line.
        self._leading_newline_ok = not ctx.block_mode and not ctx.line_suffix.strip()

    def feed(self, chunk: str) -> bool:
        """Add generated text; returns True when generation should stop."""
        if self.done:
            return True
        start = len(self.raw)
        self.raw += chunk
        for i in range(start, len(self.raw)):
            ch = self.raw[i]
            if ch == "\n":
                self._quote = ""
                self._comment = False
                if self.ctx.block_mode:
                    continue
                if self._leading_newline_ok and not self.raw[:i].strip():
                    continue
                return self._stop(i, StopRule.LINE)
            if self._quote:
                if ch == self._quote and (i == 0 or self.raw[i - 1] != "\\"):
                    self._quote = ""
                continue
            if self._comment:
                continue
            if ch == "#":
                self._comment = True
            elif ch in "\"'`":
                self._quote = ch
            elif ch in OPEN:
                self._stack.append(ch)
            elif ch in CLOSE:
                if self._stack and self._stack[-1] == PAIR[ch]:
                    self._stack.pop()
                else:
                    return self._stop(i, StopRule.BRACKET)
        self.text = self.raw
        loop = find_loop(self.raw, max(0, start - 64)) if self.ctx.safety else None
        if loop is not None:
            return self._stop(loop, StopRule.LOOP)
        return bool(self.ctx.block_mode and self._block_should_stop())

    def finish(self) -> None:
        """Generation ended without a stop (length, time budget, end of text): the last line is
        final too, so the block rules (dedent, repetition...) apply to it."""
        if not self.done and self.ctx.block_mode:
            self._block_should_stop(final=True)

    def _block_should_stop(self, final: bool = False) -> bool:
        lines = self.raw.split("\n")
        complete = lines if final else lines[:-1]  # the last line may still grow
        if len(complete) > self.ctx.max_lines:
            return self._cut_lines(self.ctx.max_lines, StopRule.MAX_LINES)
        blank_run = 0
        prev = None
        next_line = next((ln.strip() for ln in self.ctx.next_lines if ln.strip()), None)
        for k, line in enumerate(complete):
            if k == 0 and self.ctx.line_prefix.strip():
                prev = line  # the rest of the cursor's line: no indentation rule
                continue
            if not line.strip():
                blank_run += 1
                if blank_run >= 2:
                    return self._cut_lines(k - 1, StopRule.BLANK_LINES)
                continue
            blank_run = 0
            width = indent_width(indent_of(line if k else self.ctx.line_prefix + line))
            if width < self.ctx.block_indent:
                return self._cut_lines(k, StopRule.DEDENT)
            if next_line is not None and line.strip() == next_line:
                return self._cut_lines(k, StopRule.REPEATS_DOCUMENT)
            if prev is not None and line.strip() and line.strip() == prev.strip() and len(line.strip()) > 3:
                return self._cut_lines(k, StopRule.REPETITION)
            prev = line
        return False

    def _cut_lines(self, keep: int, reason: StopRule) -> bool:
        lines = self.raw.split("\n")
        self.text = "\n".join(lines[:keep])
        self.done = True
        self.reason = reason
        return True

    def _stop(self, i: int, reason: StopRule) -> bool:
        self.text = self.raw[:i]
        if self.ctx.block_mode and reason is StopRule.BRACKET:
            # in a block, cut back to the last complete line rather than leaving half a line
            cut = self.text.rfind("\n")
            if cut > 0:
                self.text = self.text[:cut]
        self.done = True
        self.reason = reason
        return True


_LOOP = re.compile(r"(\S.{0,15}?)\1{3,}|(?:\\n){3,}")


def find_loop(text: str, start: int = 0) -> int | None:
    """Where a degenerate loop (a unit of 1-16 characters, not all spaces, repeated 4+ times in a
    row, or a run of escaped line breaks) starts in text[start:], or None."""
    m = _LOOP.search(text, start)
    return m.start() if m else None


def balanced(text: str) -> bool:
    """Does `text` close every bracket it opens, and close none it did not open?"""
    depth: list[str] = []
    for ch in _code_chars(text):
        if ch in OPEN:
            depth.append(ch)
        elif ch in CLOSE:
            if not depth or depth[-1] != PAIR[ch]:
                return False
            depth.pop()
    return not depth


def _code_chars(text: str) -> str:
    """`text` with string literals blanked (a rough scan, one line)."""
    out, quote = [], ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
            out.append(" ")
        elif ch in "\"'":
            quote = ch
            out.append(" ")
        elif ch == "#":
            break
        else:
            out.append(ch)
    return "".join(out)


def balanced_prefix(text: str) -> str:
    """The longest prefix of a one-line text that is balanced (cut where the brackets it opened are
    all closed again), trailing whitespace removed."""
    if balanced(text):
        return text
    code = _code_chars(text)
    depth, best = 0, 0
    for i, ch in enumerate(code):
        if ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth -= 1
            if depth < 0:
                break
        if depth == 0 and ch not in OPEN:
            best = i + 1
    return text[:best].rstrip()


@dataclass
class Suggestion:
    insert_text: str
    replace_chars: int = 0  # characters after the cursor that the item replaces (closing punctuation)


def finalize(text: str, ctx: CursorContext) -> Suggestion | None:
    """Trim and fit the generated text to the document; None when there is nothing worth showing."""
    if ctx.block_mode and "\n" in text:
        lines = [ln.rstrip() for ln in text.split("\n")]
        while lines and not lines[-1].strip():
            lines.pop()
        text = "\n".join(lines)
    else:
        lead = len(text) - len(text.lstrip("\n")) if not ctx.line_suffix.strip() else 0
        text = text[:lead] + text[lead:].split("\n", 1)[0]
        text = text.rstrip()
    if not ctx.safety:
        return _finalize_unsafe(text, ctx)
    loop = find_loop(text)
    if loop is not None:
        text = text[:loop].rstrip()
    if not ctx.line_prefix.strip() and not text.strip():
        return None
    replace = 0
    if ctx.mid_line:
        reached = _up_to_suffix(text, ctx.line_suffix)
        if reached is None or not balanced(reached):
            return None  # it does not lead back to the rest of the line, or leaves a bracket open
        text = reached
    elif ctx.closing_suffix:
        closing = ctx.closing_suffix
        first, sep, rest = text.partition("\n")
        if first.endswith(closing) and not sep and balanced(first[: len(first) - len(closing)]):
            replace = len(ctx.line_suffix.rstrip())  # its own brackets close what the suffix closed
            if first == ctx.line_suffix[:replace]:
                return None  # it would change nothing
        else:
            text = balanced_prefix(_trim_suffix_overlap(first, closing)) + sep + rest
    if not text.strip():
        return None
    if not ctx.line_prefix.strip() and text.strip() in CLOSE:
        return None
    first_line = (ctx.line_prefix + text.split("\n", 1)[0]).strip()
    below = next((ln.strip() for ln in ctx.next_lines if ln.strip()), None)
    if below is not None and first_line == below and not ctx.line_suffix.strip():
        return None  # it repeats the line below the cursor
    return Suggestion(insert_text=text, replace_chars=replace)


def leads_back(text: str, ctx: CursorContext) -> bool:
    """Inside a line (text after the cursor), does `text` reach the rest of the line, with its
    brackets balanced on the way? Then what comes before that point is consistent with both sides
    of the cursor (finalize keeps just that part)."""
    if not ctx.mid_line:
        return False
    reached = _up_to_suffix(text.split("\n", 1)[0], ctx.line_suffix)
    return reached is not None and balanced(reached)


def _finalize_unsafe(text: str, ctx: CursorContext) -> Suggestion | None:
    """finalize without the suffix-safety rules (suffixSafety off): the text after the cursor is
    only trimmed where the suggestion repeats it."""
    if not ctx.line_prefix.strip() and not text.strip():
        return None
    replace = 0
    if ctx.mid_line:
        text = _trim_suffix_overlap(text, ctx.line_suffix)
    elif ctx.closing_suffix:
        first, sep, rest = text.partition("\n")
        if first.endswith(ctx.closing_suffix) and not sep:
            replace = len(ctx.line_suffix.rstrip())
        else:
            text = _trim_suffix_overlap(first, ctx.closing_suffix) + sep + rest
    if not text.strip() or (not ctx.line_prefix.strip() and text.strip() in CLOSE):
        return None
    return Suggestion(insert_text=text, replace_chars=replace)


def _up_to_suffix(text: str, suffix: str) -> str | None:
    """The part of `text` before the point where it reproduces the start of `suffix` (the rest of
    the line after the cursor), or None when it never does."""
    head = suffix.strip()[:8]
    if not head:
        return text
    i = text.find(head)
    if i < 0:
        return None
    out = text[:i]
    lead = suffix[: len(suffix) - len(suffix.lstrip())]
    if lead and out.endswith(lead):
        out = out[: len(out) - len(lead)]
    return out


def _trim_suffix_overlap(text: str, suffix: str) -> str:
    """Drop the end of text that repeats the start of the suffix (the text after the cursor)."""
    suffix = suffix.rstrip()
    if not suffix:
        return text
    if len(suffix) >= 3 and suffix in text:  # the model wrote out what already follows
        text = text[: text.index(suffix)]
    for k in range(min(len(text), len(suffix)), 0, -1):
        if text.endswith(suffix[:k]):
            return text[:-k]
    return text
