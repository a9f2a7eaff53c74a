"""The core's GPT-2 BPE for ASCII text (core/src/bpe.cpp, `_core.AsciiBpe`), which a tokenizer.bin's
`TextTokenizer` uses before (and instead of) the `tokenizers` library's BPE: the ids of every
text it covers are the library's, on generated text built to hit GPT-2's pre-tokenization rules
(contractions, spaces before words, numbers and punctuation, runs of whitespace before a word or at
the end) and on this repository's own sources; text it does not cover goes to the library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitmamba_lsp import _core
from bitmamba_lsp.engine import tokenizer as T

BUNDLED = T.bundled_gpt2_path()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference() -> T.TextTokenizer:
    """The library's BPE, its merges derived here from the vocabulary (no cache, no core BPE)."""
    return T.TextTokenizer(T.gpt2_tokenizer_from_tokens(T.read_bin_vocab(BUNDLED), BUNDLED))


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> T.TextTokenizer:
    """A tokenizer.bin's tokenizer read from a fresh cache: ASCII text goes to the core's BPE."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BITMAMBA_LSP_CACHE_DIR", str(tmp_path_factory.mktemp("bpe-cache")))
    T.TextTokenizer.from_path(BUNDLED)  # derives and writes the cache
    tok = T.TextTokenizer.from_path(BUNDLED)  # reads it
    mp.undo()
    assert tok._pairs is not None
    return tok


PIECES = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'x", "''", " '", "  ", "   ", "\t", "\n", "\r\n",
          "\n\n", " \n", "\t\t", "x", "ab", "Word", "123", " 4", "__init__", "self.", "->", "==", "(", ")", ":",
          "#", "//", "/*", '"', "0x1F", "e-3", "~", "`", "{", "}", " ", ".", ","]  # fmt: skip
code_like = st.lists(st.sampled_from(PIECES) | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=4),
                     max_size=40).map("".join)  # fmt: skip
any_ascii = st.text(st.sampled_from([chr(c) for c in range(32, 127)] + ["\t", "\n", "\r"]), max_size=60)


@settings(max_examples=400, deadline=None)
@given(code_like | any_ascii)
def test_ascii_text_gets_the_library_ids(fast, reference, text: str) -> None:
    assert fast._fast_ids(text) is not None
    assert fast.encode(text) == reference.encode(text)
    assert fast.encode_with_offsets(text) == reference.encode_with_offsets(text)


def test_the_repositorys_sources_get_the_library_ids(fast, reference) -> None:
    files = sorted([*ROOT.glob("bitmamba_lsp/**/*.py"), *ROOT.glob("core/src/*.cpp"), ROOT / "README.md"])
    covered = 0
    for f in files:
        text = f.read_text(encoding="utf-8")
        if fast._fast_ids(text) is not None:
            covered += 1
        assert fast.encode(text) == reference.encode(text), f
    assert covered > len(files) // 2  # most code is ASCII: the core's BPE did the work


@pytest.mark.parametrize("odd", ["\x0b", "\x0c", "\x1f", "\x00", "\x7f", "é", "日本", "🎉", "\ud800"])
def test_text_outside_the_covered_bytes_goes_to_the_library(fast, reference, odd: str) -> None:
    text = f"def f(x):{odd}\n    return x{odd}"
    if odd.isascii():
        assert fast._ascii().encode(text) is None  # the core says it does not cover it
    assert fast._fast_ids(text) is None
    assert fast.encode(text) == reference.encode(text)
    assert fast.encode_with_offsets(text) == reference.encode_with_offsets(text)


def test_bad_tables_are_refused() -> None:
    pairs = np.zeros((3, 2), dtype=np.int32)
    with pytest.raises(ValueError, match="pairs"):
        _core.AsciiBpe(np.zeros(6, dtype=np.int32), np.arange(256, dtype=np.int32), 256)
    with pytest.raises(ValueError, match="256"):
        _core.AsciiBpe(pairs, np.arange(255, dtype=np.int32), 256)


@pytest.mark.parametrize("text", ["A" * 200, "x = '" + "-" * 300 + "'\n", " " * 500 + "x", "1" * 129, "data:" + "QUFB" * 64])
def test_a_piece_longer_than_the_core_takes_goes_to_the_library(fast, reference, text: str) -> None:
    """A base64 run or a line of dashes is one piece whose merges here would cost the square of
    its length: the library encodes such a text."""
    assert fast._ascii().encode(text) is None
    assert fast.encode(text) == reference.encode(text)


def test_a_piece_of_the_longest_length_taken_is_merged_here(fast, reference) -> None:
    for text in ("a" * 128, "=" * 128 + "\n", " " * 129 + "x"):  # the last: 128 spaces, then " x"
        assert fast._ascii().encode(text) is not None, text
        assert fast.encode(text) == reference.encode(text)
