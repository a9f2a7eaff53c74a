"""Documents: positions in every encoding, line index, incremental tokens and prompts.

The central property: after any sequence of edits, the document's tokens equal a fresh
tokenization of its text, and prefix_ids(offset) equals encode(text[:offset])."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer
from bitmamba_lsp.lsp.documents import (
    PositionError,
    TrackedDocument,
    chars_to_units,
    clean_start_table,
    line_starts,
    units_to_chars,
)

TOK = bundled_text_tokenizer()
CLEAN = clean_start_table(TOK)

SAMPLE = '''import os


class Greeter:
    """Says hello — in 中文 too 😀."""

    def __init__(self, name: str) -> None:
        self.name = name

    def greet(self):\r\n        return f"hello {self.name}!"\r\n
'''


def doc(text: str) -> TrackedDocument:
    return TrackedDocument("file:///t.py", text, 1, TOK, CLEAN)


def check(d: TrackedDocument) -> None:
    ids, offs = TOK.encode_with_offsets(d.text)
    assert d.ids.tolist() == ids
    assert d.starts.tolist() == offs
    assert d.lines.tolist() == line_starts(d.text).tolist()


def test_units_conversion() -> None:
    line = "a😀中b"
    assert units_to_chars(line, 3, "utf-16") == 2  # a + surrogate pair
    assert units_to_chars(line, 2, "utf-16") == 1  # inside the pair: clamps to the char start
    assert units_to_chars(line, 5, "utf-8") == 2
    assert units_to_chars(line, 3, "utf-32") == 3
    assert units_to_chars(line, 99, "utf-16") == len(line)
    for enc in ("utf-16", "utf-8", "utf-32"):
        for k in range(len(line) + 1):
            assert units_to_chars(line, chars_to_units(line, k, enc), enc) == k
    with pytest.raises(PositionError):
        units_to_chars(line, 1, "latin-1")


def test_positions_and_clamping() -> None:
    d = doc("ab\r\nc😀d\n\nxyz")
    assert d.line_count == 4
    assert d.offset_at(1, 3, "utf-16") == 4 + 2 and d.offset_at(1, 3, "utf-32") == 4 + 3
    assert d.offset_at(1, 2, "utf-32") == 6 and d.offset_at(1, 5, "utf-8") == 6
    assert d.offset_at(0, 99) == 2  # past the end of the line: the line's end (before \r\n)
    assert d.offset_at(99, 0) == len(d.text)  # past the last line: the end of the document
    assert d.position_of(6, "utf-16") == (1, 3)
    assert d.position_of(len(d.text)) == (3, 3)
    with pytest.raises(PositionError):
        d.offset_at(-1, 0)


def test_incremental_edits_keep_tokens_exact() -> None:
    d = doc(SAMPLE)
    check(d)
    typed = "    def wave(self):\n        return 42\n"
    at = d.text.index("    def greet")
    for i, ch in enumerate(typed):  # typing character by character
        e = d.replace(at + i, at + i, ch)
        check(d)
        assert e.first_changed_token <= len(d.ids)
    d.replace(0, 6, "")  # delete "import"
    check(d)
    d.replace(len(d.text) - 5, len(d.text), "🎉🎉\r")  # multi-byte at the end, a lone \r
    check(d)
    d.replace(3, 3, "\n")
    check(d)


def test_first_changed_token_is_tight() -> None:
    d = doc("x = 1\n" * 200)
    n = len(d.ids)
    e = d.replace(len(d.text) - 2, len(d.text) - 2, "2")  # last line: "x = 12"
    assert e.first_changed_token >= n - 4
    e = d.replace(0, 1, "x")  # same text: nothing changed
    assert e.first_changed_token == len(d.ids)
    e = d.apply_change((10, 0), (10, 1), "y")  # line 10
    assert e.first_changed_token == int(np.searchsorted(d.starts, 60, side="left"))
    check(d)


def test_prefix_ids_equal_fresh_tokenization() -> None:
    d = doc(SAMPLE)
    for offset in range(len(d.text) + 1):
        ids, shared = d.prefix_ids(offset)
        assert ids.tolist() == TOK.encode(d.text[:offset]), offset
        assert ids[:shared].tolist() == d.ids[:shared].tolist()


def test_edit_log() -> None:
    d = doc("abc")
    assert d.edits_since(0) == []
    d.replace(1, 1, "x")
    d.replace(0, 0, "y")
    assert [e.start for e in d.edits_since(0)] == [1, 0]
    assert d.edits_since(2) == []


PIECES = st.sampled_from(
    [
        "def",
        " foo",
        "(self",
        ")",
        ":",
        "\n",
        "\n    ",
        "    ",
        "\t",
        " ",
        "  ",
        "\r\n",
        "\r",
        "x",
        "=",
        " 1",
        "中文",
        "😀",
        "é",
        "'s",
        "''",
        '"""',
        "#",
        "  # note",
        "123",
        "\n\n",
        "return",
        ".",
        "_",
        "\u0301",
    ]
)
TEXT = st.lists(PIECES, max_size=40).map("".join)


@settings(
    max_examples=int(os.environ.get("BITMAMBA_PROPERTY_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    base=TEXT,
    edits=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), TEXT), min_size=1, max_size=12),
    probe=st.floats(0, 1),
)
def test_random_edits_property(base: str, edits: list[tuple[float, float, str]], probe: float) -> None:
    d = doc(base)
    for fa, fb, ins in edits:
        n = len(d.text)
        a = int(fa * n)
        b = min(n, a + int(fb * 8))
        d.replace(a, b, ins)
        check(d)
    offset = int(probe * len(d.text))
    ids, _ = d.prefix_ids(offset)
    assert ids.tolist() == TOK.encode(d.text[:offset])
