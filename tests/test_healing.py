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
    ],
)
def test_shipped_model_completes_natural_code(prompt, check):
    sys.path.insert(0, str(Path(__file__).parent))
    from lsp_client import expected_suggestion

    from bitmamba_lsp.engine import load

    model = load(None, threads=1)
    got = expected_suggestion(model, prompt, len(prompt), 24, multiline=False)
    assert got is not None and check(got), (prompt, got)
