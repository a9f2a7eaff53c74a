"""Stop rules and post-processing of suggestions (pure text, no model)."""

from __future__ import annotations

import pytest

from bitmamba_lsp.lsp.completion import CursorContext, StopRules, finalize, leads_back, unmatched_open


def run(ctx: CursorContext, generated: str, chunk: int = 3) -> tuple[str, str]:
    """Feed `generated` in small chunks like a token stream; returns (kept text, stop reason)."""
    rules = StopRules(ctx)
    for i in range(0, len(generated), chunk):
        if rules.feed(generated[i : i + chunk]):
            break
    return rules.text, rules.reason


def suggest(ctx: CursorContext, generated: str) -> tuple[str, int] | None:
    text, _ = run(ctx, generated)
    s = finalize(text, ctx)
    return None if s is None else (s.insert_text, s.replace_chars)


def test_mid_line_is_single_line_and_trims_the_suffix() -> None:
    ctx = CursorContext(line_prefix="total = compute(", line_suffix="values)")
    assert ctx.mid_line and not ctx.block_mode
    assert suggest(ctx, "x, values)\nprint(total)\n") == ("x, ", 0)
    # inside a finished line, text that does not lead back to the rest of the line is not offered
    assert suggest(ctx, "x\nmore") is None
    assert suggest(ctx, "x + y") is None
    # nothing but what already follows: nothing to show
    assert suggest(ctx, "values)") is None
    # what it inserts must be balanced by itself
    assert suggest(ctx, "f(a, values)") is None  # "f(a, " would leave f( open
    assert suggest(ctx, "f(a), values)") == ("f(a), ", 0)


def test_leads_back_is_what_finalize_keeps_inside_a_line() -> None:
    """The daemon shows the model's own line as it is (not a cut prefix of it) when it leads back
    to the rest of the line: exactly the texts finalize keeps."""
    ctx = CursorContext(line_prefix="total = compute(", line_suffix="values)")
    for generated in ("x, values)", "x\nmore", "x + y", "values)", "f(a, values)", "f(a), values)"):
        assert leads_back(generated, ctx) == (finalize(generated, ctx) is not None or generated == "values)")
    # at the end of a line, or before closing punctuation only, there is nothing to lead back to
    assert not leads_back("x)", CursorContext(line_prefix="f(", line_suffix=")"))
    assert not leads_back("x = 1", CursorContext(line_prefix="", line_suffix=""))


def test_only_closing_punctuation_after_the_cursor_is_replaced() -> None:
    ctx = CursorContext(line_prefix="print(", line_suffix=")")
    assert not ctx.mid_line and ctx.closing_suffix == ")"
    assert suggest(ctx, '"hello")\nx = 1') == ('"hello")', 1)
    # a suggestion without the closer is inserted, not replacing it
    assert suggest(ctx, '"hello"\n') == ('"hello"', 0)


def test_closing_punctuation_is_replaced_only_when_the_suggestion_closes_it() -> None:
    ctx = CursorContext(line_prefix="getattr(", line_suffix=")")
    # the suggestion's ")" closes its own get(: replacing the line's ")" would unbalance the line
    got = suggest(ctx, 'self.root, self.text.get("name")')
    assert got is not None and got[1] == 0
    line = "getattr(" + got[0] + ")"
    assert unmatched_open(line) == []
    assert suggest(ctx, "self.root)") == ("self.root)", 1)
    # an item that would change nothing is not shown
    ctx = CursorContext(line_prefix="x = [1, 2", line_suffix="]")
    assert suggest(ctx, "]") is None


def test_loops_are_cut_and_repeating_the_line_below_is_dropped() -> None:
    ctx = CursorContext(line_prefix="xs = [1, 2", line_suffix="")
    text, reason = run(ctx, ", 3, 3, 3, 3, 3, 3, 3]")
    assert reason == "loop" and text == ""  # stopped where the loop starts
    ctx = CursorContext(line_prefix="name = ", line_suffix="")
    assert suggest(ctx, "get_in_in_in_in_in_in") == ("get", 0)
    ctx = CursorContext(line_prefix="    ", line_suffix="", next_lines=["    return x"], multiline=False)
    assert suggest(ctx, "return x") is None
    assert suggest(ctx, "return y") == ("return y", 0)


def test_end_of_line_single_line() -> None:
    ctx = CursorContext(line_prefix="    x = np.", line_suffix="")
    assert not ctx.block_mode
    assert suggest(ctx, "zeros(3)   \n    y = 2\n") == ("zeros(3)", 0)


def test_a_finished_line_may_continue_on_the_next() -> None:
    ctx = CursorContext(line_prefix="import os", line_suffix="", multiline=False)
    assert suggest(ctx, "\nimport sys\nimport re\n") == ("\nimport sys", 0)


def test_block_mode_stops_at_dedent() -> None:
    ctx = CursorContext(line_prefix="def area(r):", line_suffix="", next_lines=["", "class Shape:"])
    assert ctx.block_mode
    gen = "\n    pi = 3.14159\n    return pi * r * r\n\ndef volume(r):\n    pass\n"
    assert suggest(ctx, gen) == ("\n    pi = 3.14159\n    return pi * r * r", 0)


def test_block_mode_at_an_empty_indented_line() -> None:
    ctx = CursorContext(line_prefix="        ", line_suffix="")
    assert ctx.block_mode and ctx.block_indent == 8
    gen = "for x in xs:\n            total += x\n        return total\n    def other(self):\n"
    assert suggest(ctx, gen) == ("for x in xs:\n            total += x\n        return total", 0)


def test_two_blank_lines_end_a_block() -> None:
    ctx = CursorContext(line_prefix="", line_suffix="")
    text, reason = run(ctx, "a = 1\nb = 2\n\n\nc = 3\n")
    assert reason == "blank_lines" and text.rstrip() == "a = 1\nb = 2"


def test_max_lines_and_repetition() -> None:
    ctx = CursorContext(line_prefix="", line_suffix="", max_lines=3)
    text, reason = run(ctx, "a()\nb()\nc()\nd()\ne()\n")
    assert reason == "max_lines" and text == "a()\nb()\nc()"
    ctx = CursorContext(line_prefix="", line_suffix="")
    text, reason = run(ctx, "x += 1\nx += 1\nx += 1\n")
    assert reason == "repetition" and text == "x += 1"


def test_a_line_the_document_already_has_next_ends_the_suggestion() -> None:
    ctx = CursorContext(line_prefix="    ", line_suffix="", next_lines=["    return result"])
    text, reason = run(ctx, "result = f(x)\n    return result\n")
    assert reason == "repeats_document" and text == "result = f(x)"


def test_unmatched_closing_bracket_ends_the_suggestion() -> None:
    ctx = CursorContext(line_prefix="x = [1, 2", line_suffix="")
    assert suggest(ctx, ", 3]]") == (", 3]", 0)
    ctx = CursorContext(line_prefix="y = f(a", line_suffix="")
    assert suggest(ctx, ") + g(b))") == (") + g(b)", 0)
    # brackets inside strings and comments do not count
    ctx = CursorContext(line_prefix="s = ", line_suffix="")
    assert suggest(ctx, '")" + x  # )') == ('")" + x  # )', 0)


def test_empty_and_whitespace_results() -> None:
    ctx = CursorContext(line_prefix="    ", line_suffix="")
    assert suggest(ctx, "   \n\n") is None
    assert suggest(ctx, ")") is None
    ctx = CursorContext(line_prefix="x = 1", line_suffix="")
    assert suggest(ctx, "") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("f(a, [b", ["(", "["]),
        ("f(a)[0]", []),
        ("s = '(' + x(", ["("]),
        ("x = {  # (", ["{"]),
        ('"""(""" + (', ["("]),
    ],
)
def test_unmatched_open(text: str, expected: list[str]) -> None:
    assert unmatched_open(text) == expected


def test_block_rules_also_judge_an_unfinished_last_line():
    """Generation that runs out of tokens mid-line: the dedent rule still applies to that line."""
    ctx = CursorContext(line_prefix="        ", line_suffix="")  # an empty line in a nested block
    rules = StopRules(ctx)
    assert not rules.feed('return f"{x}"\n\n    def _is_nested(self, x, y')
    rules.finish()
    assert rules.done and rules.reason == "dedent"
    assert finalize(rules.text, ctx).insert_text == 'return f"{x}"'
    # a last line at the block's depth is kept
    rules = StopRules(ctx)
    rules.feed("x = 1\n        y = (2")
    rules.finish()
    assert not rules.done and finalize(rules.text, ctx).insert_text == "x = 1\n        y = (2"
