"""Token healing (bitmamba_lsp.healing) against brute force over the vocabulary, and its effect
on the shipped model: prompts that end on an unnatural token boundary still get sensible text."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from bitmamba_lsp.engine.decoding import SkipPrefix
from bitmamba_lsp.engine.healing import TokenHealer

DEFAULT = Path(__file__).resolve().parent.parent / "bitmamba_lsp" / "data" / "default"
needs_default = pytest.mark.skipif(not (DEFAULT / "model.bin").is_file(), reason="no shipped default model")


@pytest.fixture(scope="module")
def tok():
    from bitmamba_lsp.engine.tokenizer import TextTokenizer

    if not (DEFAULT / "tokenizer.json").is_file():
        pytest.skip("no shipped tokenizer")
    return TextTokenizer.from_path(DEFAULT)


@needs_default
@pytest.mark.parametrize("rest", [b" ", b"        ", b"self", b" return", b"(", b"zzzq", b"\n"])
def test_allowed_tokens_are_exactly_those_that_fit(tok, rest):
    sys.path.insert(0, str(Path(__file__).parent))
    from lsp_client import _fitting  # the reference's own scan of the vocabulary

    healer = TokenHealer(tok, [tok.eos_id])
    want = _fitting(tok, tok.eos_id, rest)
    assert healer.allowed(rest).tolist() == want
    for i in want:
        b = tok.token_bytes(i)
        assert b.startswith(rest) or (rest.startswith(b) and len(b) < len(rest))
        if rest.endswith(b" ") and b.startswith(rest):
            assert b[len(rest) : len(rest) + 1] not in (b"", b" ", b"\t")  # no extra blanks after it
    logits = np.random.default_rng(0).standard_normal(tok.vocab_size).astype(np.float32)
    out = healer.constrain(logits, rest)
    assert np.isfinite(out).sum() == len(want) and np.array_equal(out[want], logits[want])
    assert healer.constrain(logits, b"") is logits


@needs_default
def test_heal_takes_back_the_last_token(tok):
    healer = TokenHealer(tok, [tok.eos_id])
    ids = np.asarray(tok.encode("def add(a, b):\n    return a "))
    h = healer.heal(ids)
    assert np.array_equal(h.ids, ids[:-1]) and h.raw == tok.token_bytes(int(ids[-1])) == b" "
    assert h.text == " "
    # a token that is a prefix of what is left advances the constraint; one that covers it ends it
    seven, eight = tok.encode("       "), tok.encode("        ")
    if len(seven) == 1 and len(eight) == 1:
        assert healer.advance(b"        ", seven[0]) == b" "
        assert healer.advance(b"        ", eight[0]) == b""
    one = np.asarray(ids[:1])
    assert healer.heal(one).ids is not None and healer.heal(one).raw == b""  # never empties a prompt
    assert healer.heal(np.asarray([*ids, tok.eos_id])).raw == b""  # special tokens stay


@needs_default
def test_heal_takes_back_a_whole_partial_word(tok):
    """`retur` is ` ret` + `ur` in the shipped vocabulary: taking back only `ur` would leave the
    model to spell the word on from ` ret`, never as the ` return` it knows."""
    healer = TokenHealer(tok, [tok.eos_id])
    for text, word in (("def f(x):\n    retur", " retur"), ("x = Fal", " Fal"), ("import typin", " typin")):
        ids = np.asarray(tok.encode(text))
        pieces = [tok.decode([int(t)]) for t in ids]
        k = next(n for n in range(1, len(ids)) if "".join(pieces[-n:]) == word)
        h = healer.heal(ids)
        assert h.text == word and h.raw == word.encode() and np.array_equal(h.ids, ids[:-k])
        # the model's own tokens for the whole word are allowed again (` return`, ` False`)
        assert any(healer.token_bytes(int(i)).startswith(word.encode()) for i in healer.allowed(h.raw))
    # not past the word's start, not past max_tokens, never the whole prompt
    ids = np.asarray(tok.encode("    retur"))
    assert healer.heal(ids, max_tokens=1).text == tok.decode([int(ids[-1])])
    assert tok.decode([int(t) for t in healer.heal(ids).ids]).strip() == ""
    ids = np.asarray(tok.encode("a.bcdefghij"))
    assert "." not in healer.heal(ids).text  # punctuation ends the word


@needs_default
def test_heal_takes_back_a_run_of_blanks_whole(tok):
    """A text ending in a blank line and indentation tokenizes as ")" + "\n" + "\n    " (nothing
    follows the blanks), but in training the same blanks before a word were "\n\n   " + " def":
    the whole run is taken back, or the model goes on from a lone "\n" it never saw there."""
    healer = TokenHealer(tok, [tok.eos_id])
    text = "class A:\n    def f(self):\n        return 1\n\n    "
    ids = np.asarray(tok.encode(text))
    pieces = [tok.decode([int(t)]) for t in ids]
    k = next(n for n in range(1, len(ids)) if "".join(pieces[-n:]).strip() or n == len(ids)) - 1
    assert k >= 2  # the blanks really are more than one token here
    h = healer.heal(ids)
    assert h.text == "\n\n    " and np.array_equal(h.ids, ids[:-k])
    # the training-time split is allowed again
    assert any(healer.token_bytes(int(i)) == b"\n\n   " for i in healer.allowed(h.raw))
    assert healer.heal(ids, max_tokens=1).text == pieces[-1]  # within max_tokens
    ids = np.asarray(tok.encode("x = 1\n    "))  # a word before the blanks stays
    assert healer.heal(ids).text.strip() == ""


def test_healed_text_strips_across_chunks():
    h = SkipPrefix("    ")
    assert [h.feed(c) for c in ["  ", "   x", "y"]] == ["", " x", "y"]


@needs_default
@pytest.mark.parametrize(
    ("prompt", "check"),
    [
        ("import numpy as ", lambda s: s.strip() == "np"),
        ("def add(a, b):\n    return a ", lambda s: s.startswith("+ b")),
        ("if __name__ == ", lambda s: s.startswith(("'__main__'", '"__main__"'))),
        ("try:\n    import json\nexcept ", lambda s: s.startswith("ImportError")),
        ("class Point:\n    def __init__(self", lambda s: s.rstrip().endswith("):")),
        # a new method after a blank line: a word, not the "= os..." of a lone line break
        ("class A:\n    def f(self):\n        return 1\n\n    ", lambda s: s[:1].isalpha() or s[:1] in "@#"),
    ],
)
def test_shipped_model_completes_natural_code(prompt, check):
    sys.path.insert(0, str(Path(__file__).parent))
    from lsp_client import expected_suggestion

    from bitmamba_lsp.engine import load

    model = load(None, threads=1)
    got = expected_suggestion(model, prompt, len(prompt), 24, multiline=False)
    assert got is not None and check(got), (prompt, got)


def test_a_healer_is_built_once_per_tokenizer_and_special_ids(tok):
    from bitmamba_lsp.engine.healing import healer_for
    from bitmamba_lsp.engine.tokenizer import TextTokenizer
    from bitmamba_lsp.lsp.documents import clean_start_table

    h = healer_for(tok, [0])
    assert healer_for(tok, (0,)) is h  # what a second model load on this tokenizer gets
    assert healer_for(tok, []) is not h
    other = TextTokenizer.from_path(DEFAULT)  # another tokenizer object: its own
    assert healer_for(other, [0]) is not h
    fresh = TokenHealer(tok, [0])  # and the cached one is what building it gives
    for rest in (b" ", b"self", b"    re"):
        assert np.array_equal(h.allowed(rest), fresh.allowed(rest))
    table = clean_start_table(tok)
    assert clean_start_table(tok) is table and not table.flags.writeable
    expected = [not b or (b[0] & 0xC0) != 0x80 for b in map(tok.token_bytes, range(tok.vocab_size))]
    assert table.tolist() == expected


def test_unique_ids_is_numpy_unique() -> None:
    from bitmamba_lsp.engine.healing import unique_ids

    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 3, 17, 1000):
        for hi in (1, 3, 50_000):
            a = rng.integers(0, hi, n).astype(np.int64)
            got, want = unique_ids(a), np.unique(a)
            assert got.dtype == want.dtype and got.tolist() == want.tolist(), (n, hi)
