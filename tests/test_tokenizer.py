"""Tests for bitmamba_lsp.engine.tokenizer: exact GPT-2 BPE from tokenizer.bin, and the wrapper.

The reference here is an independent pure-Python rank-merge BPE (the formulation of OpenAI's
encoder.py / tiktoken) over GPT-2's pre-tokenization regex, run with the ``regex`` module.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models
from tokenizers import pre_tokenizers as hf_pre

from bitmamba_lsp.engine.tokenizer import (
    GPT2_EOT,
    StreamDecoder,
    TextTokenizer,
    TokenizerFormatError,
    bundled_gpt2_path,
    bundled_gpt2_tokenizer,
    bundled_text_tokenizer,
    gpt2_tokenizer_from_bin,
    load_tokenizer,
    read_bin_vocab,
)

try:  # the reference BPE needs `regex` (\p{L}); only the tests comparing with it skip without it
    import regex
except ImportError:  # pragma: no cover
    regex = None

SHARED_BIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2-tokenizer.bin"
# sha256 of the bundled file: GPT-2's 50257 tokens with their exact raw bytes.
BUNDLED_SHA256 = "a5623714bcf19049eb0fd78df19b6daa1e61ac435b86a5deae767768e7fcdc3d"
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- reference


def parse_records(data: bytes) -> list[bytes]:
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from("<I", data, off)
        out.append(data[off + 4 : off + 4 + n])
        off += 4 + n
    return out


class ReferenceBPE:
    """GPT-2 BPE as rank merging: merge the adjacent pair whose concatenation ranks lowest."""

    def __init__(self, tokens: list[bytes]) -> None:
        self.pattern = regex.compile(GPT2_REGEX)
        self.ranks = {tok: i for i, tok in enumerate(tokens[:-1])}
        self._bpe = functools.lru_cache(maxsize=None)(self._bpe_uncached)

    def _bpe_uncached(self, piece: bytes) -> tuple[int, ...]:
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            pairs = [(self.ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
            ranked = [p for p in pairs if p[0] is not None]
            if not ranked:
                break
            _, i = min(ranked)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return tuple(self.ranks[p] for p in parts)

    def encode(self, text: str) -> list[int]:
        return [i for piece in self.pattern.findall(text) for i in self._bpe(piece.encode("utf-8"))]


@pytest.fixture(scope="module")
def bundled_tokens() -> list[bytes]:
    data = bundled_gpt2_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == BUNDLED_SHA256, "bundled gpt2-tokenizer.bin changed"
    return parse_records(data)


@pytest.fixture(scope="module")
def ref(bundled_tokens: list[bytes]) -> ReferenceBPE:
    if regex is None:
        pytest.skip("the reference BPE needs the `regex` module (pip install regex)")
    return ReferenceBPE(bundled_tokens)


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return bundled_text_tokenizer()


@pytest.fixture(scope="module")
def shared_tokens() -> list[bytes]:
    if not SHARED_BIN.is_file():
        pytest.skip(f"{SHARED_BIN} not present (shared data is not on this machine)")
    return read_bin_vocab(SHARED_BIN)


# --------------------------------------------------------------------------- corpora

CORPUS = [
    "Hello, I am a language model.",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    'class Foo(Bar):\n\t"""Doc."""\n\n\tdef __init__(self):\n\t\tself.x = {"a": [1, 2.5e-3]}\n',
    '#include <stdio.h>\nint main(void) {\n  printf("%d\\n", 42);\n  return 0;\n}\n',
    "const f = async (x) => { await g(x?.y ?? 0); };\n// comment\n/* block */\n",
    "fn main() { let v: Vec<u8> = vec![0xff; 3]; }  \n",
    "SELECT * FROM users WHERE id = 1;\r\n-- trailing spaces   \r\n",
    "中文字符和日本語のテキスト、한국어 텍스트",
    "emoji: 😀👍🏽👨‍👩‍👧‍👦 🇯🇵 ✨",
    "combining: e\u0301 a\u0308 n\u0303 \u0915\u093f",
    "RTL: مرحبا بالعالم שלום עולם",
    "quotes ’curly’ “double” — dash … ellipsis",
    "   leading and trailing   ",
    "\t\ttabs\t\n\n\n\n  \n \n",
    "a  b   c    d\u00a0e\u2003f\u3000g\u2028h\x85i\x1cj\x0bk\x0cl",
    "numbers 1234567890 3.14159 -42 1e10 0x1F ١٢٣ ½ Ⅻ",
    "I'm you're they've we'll he'd it's can't don't SHE'S 'quoted'",
    "<|endoftext|> literal special <|endoftext|>",
    "\r\n\r\n\r",
    " ",
    "",
    "\ufffd replacement and \x00 nul \x7f del",
    "    return self._x  # indented code with trailing spaces    \n    \n",
]

# fmt: off
FRAGMENTS = [
    "def ", "return", " ", "  ", "\t", "\n", "\r\n", "    ", "'s", "'ll", "'", "(", ")", "{", "}",
    "x", "Foo", "123", "4.5", "😀", "👍🏽", "中", "日本", "é", "e\u0301", "م", "ש", "’", "—", "\u00a0",
    "\u3000", "<|endoftext|>", "_", "->", "==", "/*", "#", "\x00", "\ufffd",
]
# fmt: on
# Code points unassigned in Python's Unicode tables (Cn) are left out: the `regex` module and
# tokenizers' Oniguruma classify code points of newer Unicode versions differently (only those).
assigned = st.characters(exclude_categories=("Cs", "Cn"))
text_strategy = st.one_of(
    st.text(alphabet=assigned, max_size=80),
    st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join),
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), assigned), max_size=30).map("".join),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=60),
)


# --------------------------------------------------------------------------- exactness

# Well-known GPT-2 encodings.
KNOWN = [
    ("Hello, I am", [15496, 11, 314, 716]),
    ("Hello world", [15496, 995]),
    ("\n", [198]),
    ("\n\n", [628]),
    (" the", [262]),
    ("’", [447, 247]),
]


@pytest.mark.parametrize(("text", "ids"), KNOWN)
def test_known_gpt2_encodings(tok: TextTokenizer, text: str, ids: list[int]) -> None:
    assert tok.encode(text) == ids


@pytest.mark.parametrize("text", CORPUS)
def test_matches_reference_bpe(tok: TextTokenizer, ref: ReferenceBPE, text: str) -> None:
    assert tok.encode(text) == ref.encode(text)


@HYPO
@given(text_strategy)
def test_matches_reference_bpe_random(tok: TextTokenizer, ref: ReferenceBPE, text: str) -> None:
    assert tok.encode(text) == ref.encode(text)


def test_merge_table_reproduces_every_token(
    tok: TextTokenizer, ref: ReferenceBPE, bundled_tokens: list[bytes]
) -> None:
    """Each token that is valid UTF-8 and one pre-token encodes to itself (BPE consistency)."""
    checked = 0
    for i, raw in enumerate(bundled_tokens[:-1]):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if ref.pattern.findall(text) == [text]:
            assert tok.encode(text) == [i], (i, raw)
            checked += 1
    assert checked > 49000


def test_vocab_metadata(tok: TextTokenizer, bundled_tokens: list[bytes]) -> None:
    assert tok.vocab_size == 50257
    assert tok.eos_id == 50256
    assert tok.special_ids == frozenset({50256})
    assert all(tok.token_bytes(i) == raw for i, raw in enumerate(bundled_tokens))
    assert tok.token_bytes(447) == b"\xe2\x80"  # half of a character
    assert tok.token_bytes(188) == b"\x00"
    with pytest.raises(ValueError, match="out of range"):
        tok.token_bytes(50257)
    with pytest.raises(ValueError, match="out of range"):
        tok.token_bytes(-1)


def test_special_token_text_is_not_special(tok: TextTokenizer, ref: ReferenceBPE) -> None:
    ids = tok.encode(GPT2_EOT)
    assert 50256 not in ids
    assert ids == ref.encode(GPT2_EOT)
    assert tok.decode(ids) == GPT2_EOT
    assert tok.decode([50256]) == ""
    assert tok.decode([50256], skip_special_tokens=False) == GPT2_EOT


def test_lone_surrogates_become_replacement_char(tok: TextTokenizer) -> None:
    ids, offsets = tok.encode_with_offsets("a\ud800b")
    assert ids == tok.encode("a\ufffdb") == tok.encode("a\ud800b")
    assert offsets == [0, 1, 2]


# --------------------------------------------------------------------------- decoding


@HYPO
@given(st.text(max_size=200))
def test_roundtrip(tok: TextTokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def _stream(dec: StreamDecoder, ids: list[int]) -> list[str]:
    return [dec.feed(i) for i in ids] + [dec.flush()]


def test_stream_holds_back_split_emoji(tok: TextTokenizer) -> None:
    ids = tok.encode("a😀")
    assert len(ids) == 3  # "a", then the emoji in two tokens
    dec = tok.stream_decoder()
    assert dec.feed(ids[0]) == "a"
    assert dec.feed(ids[1]) == ""
    assert dec.pending == tok.token_bytes(ids[1])
    assert dec.feed(ids[2]) == "😀"
    assert dec.pending == b""
    assert dec.flush() == ""


def test_stream_flush_renders_dangling_bytes(tok: TextTokenizer) -> None:
    dec = tok.stream_decoder()
    assert dec.feed(447) == ""  # b"\xe2\x80", never completed
    assert dec.flush() == "\ufffd" == tok.decode([447])
    assert dec.feed(15496) == "Hello"  # reusable after flush


@HYPO
@given(st.text(max_size=120))
def test_stream_equals_decode_on_text(tok: TextTokenizer, text: str) -> None:
    ids = tok.encode(text)
    chunks = _stream(tok.stream_decoder(), ids)
    assert "".join(chunks) == tok.decode(ids) == text
    assert all("\ufffd" not in c for c in chunks) or "\ufffd" in text


@HYPO
@given(st.lists(st.integers(0, 50256), max_size=40), st.booleans())
def test_stream_equals_decode_on_any_ids(tok: TextTokenizer, ids: list[int], skip: bool) -> None:
    dec = tok.stream_decoder(skip_special_tokens=skip)
    assert "".join(_stream(dec, ids)) == tok.decode(ids, skip_special_tokens=skip)


def test_decode_rejects_bad_ids(tok: TextTokenizer) -> None:
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([1, -1])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([50257])
    with pytest.raises(ValueError, match="out of range"):
        tok.stream_decoder().feed(-2)


# --------------------------------------------------------------------------- offsets


def _check_offsets(tok: TextTokenizer, text: str) -> None:
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert len(offsets) == len(ids)
    assert offsets == sorted(offsets)
    raw = text.encode("utf-8")
    pos = 0
    for k, (i, off) in enumerate(zip(ids, offsets, strict=True)):
        piece = tok.token_bytes(i)
        char_start = len(text[:off].encode("utf-8"))
        if pos == char_start:  # token starts on a character boundary
            assert text[off:].encode("utf-8").startswith(piece)
        else:  # token starts inside the character at `off`, begun by the previous token
            assert k > 0 and 0 < pos - char_start < len(text[off].encode("utf-8"))
        pos += len(piece)
    assert pos == len(raw)


@pytest.mark.parametrize("text", CORPUS)
def test_offsets_corpus(tok: TextTokenizer, text: str) -> None:
    _check_offsets(tok, text)


@HYPO
@given(text_strategy)
def test_offsets_random(tok: TextTokenizer, text: str) -> None:
    _check_offsets(tok, text)


def test_offsets_split_character(tok: TextTokenizer) -> None:
    ids, offsets = tok.encode_with_offsets("a😀b ’x")
    assert offsets == [0, 1, 1, 2, 3, 4, 5]
    assert len(ids) == 7


def test_offsets_fallback_for_non_byte_level_tokenizer() -> None:
    hf = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = hf_pre.Whitespace()
    hf.add_special_tokens(["</s>"])
    t = TextTokenizer(hf)
    assert t.eos_id == 3
    assert t.vocab_size == 4
    assert t.encode_with_offsets("hello  world zzz") == ([0, 1, 2], [0, 7, 13])


# --------------------------------------------------------------------------- the shared lossy file


def test_shared_file_is_repaired_to_exact_bytes(
    shared_tokens: list[bytes], bundled_tokens: list[bytes]
) -> None:
    assert shared_tokens == bundled_tokens
    stored = parse_records(SHARED_BIN.read_bytes())
    lossy = [i for i, (a, b) in enumerate(zip(stored, bundled_tokens, strict=True)) if a != b]
    # Whatever differs was written as the UTF-8-with-replacement rendering of the real token.
    assert all(stored[i] == bundled_tokens[i].decode("utf-8", "replace").encode() for i in lossy)


def test_tokenizer_from_shared_file(shared_tokens: list[bytes], tok: TextTokenizer) -> None:
    shared = TextTokenizer(gpt2_tokenizer_from_bin(SHARED_BIN))
    for text in CORPUS:
        assert shared.encode(text) == tok.encode(text)


# --------------------------------------------------------------------------- loading


def test_bundled_is_cached() -> None:
    assert bundled_gpt2_tokenizer() is bundled_gpt2_tokenizer()
    assert bundled_text_tokenizer() is bundled_text_tokenizer()


def test_build_is_fast() -> None:
    t0 = time.perf_counter()
    gpt2_tokenizer_from_bin(bundled_gpt2_path())
    assert time.perf_counter() - t0 < 5.0


def test_encode_100kb_is_fast(tok: TextTokenizer) -> None:
    src = Path(__file__).read_text(encoding="utf-8")
    text = (src * (100_000 // len(src) + 1))[:100_000]
    tok.encode_with_offsets(text)
    t0 = time.perf_counter()
    tok.encode_with_offsets(text)
    assert time.perf_counter() - t0 < 1.0  # ~50 ms on a 2-core box; generous for CI noise


def test_load_json_file_and_directories(tmp_path: Path, tok: TextTokenizer) -> None:
    sample = CORPUS[1] + CORPUS[8]
    want = tok.encode(sample)
    json_dir = tmp_path / "j"
    json_dir.mkdir()
    bundled_gpt2_tokenizer().save(str(json_dir / "tokenizer.json"))
    bin_dir = tmp_path / "b"
    bin_dir.mkdir()
    shutil.copy(bundled_gpt2_path(), bin_dir / "tokenizer.bin")
    for path in (
        json_dir / "tokenizer.json",
        json_dir,
        bin_dir,
        bin_dir / "tokenizer.bin",
        bundled_gpt2_path(),
    ):
        loaded = TextTokenizer(load_tokenizer(path))
        assert loaded.encode(sample) == want, path
        assert loaded.eos_id == 50256
    assert TextTokenizer.from_path(json_dir).decode(want) == sample


def test_cache_path(tmp_path: Path, tok: TextTokenizer) -> None:
    cache = tmp_path / "cache" / "tokenizer.json"
    first = gpt2_tokenizer_from_bin(bundled_gpt2_path(), cache_path=cache)
    assert cache.is_file()
    second = gpt2_tokenizer_from_bin(bundled_gpt2_path(), cache_path=cache)
    for t in (first, second):
        assert t.encode(CORPUS[2], add_special_tokens=False).ids == tok.encode(CORPUS[2])
    cache.write_text("garbage")  # an unreadable cache is rebuilt, not trusted
    third = gpt2_tokenizer_from_bin(bundled_gpt2_path(), cache_path=cache)
    assert third.encode(CORPUS[2], add_special_tokens=False).ids == tok.encode(CORPUS[2])
    assert Tokenizer.from_file(str(cache)).get_vocab_size() == 50257


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json or tokenizer\.bin"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        gpt2_tokenizer_from_bin(tmp_path / "tokenizer.bin")


def test_garbage_json(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"')
    with pytest.raises(TokenizerFormatError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(bad)
    with pytest.raises(TokenizerFormatError):
        load_tokenizer(tmp_path)


def _records(tokens: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in tokens)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda data, toks: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "implausible length"),
        (lambda data, toks: b"", "0 records"),
        (lambda data, toks: data[: len(data) // 2], "truncated"),
        (lambda data, toks: data[:-3], "truncated"),
        (lambda data, toks: data + b"\x01\x00", "stray byte"),
        (lambda data, toks: data + struct.pack("<I", 0), "implausible length"),
        (lambda data, toks: _records(toks[:-1]), "last record"),
        (lambda data, toks: _records([*toks[:300], toks[262], *toks[301:]]), "duplicate token"),
        (lambda data, toks: _records([toks[1], toks[0], *toks[2:]]), "GPT-2 byte order"),
        (
            lambda data, toks: _records([*toks[:256], toks[262], *toks[257:262], toks[256], *toks[263:]]),
            "rank order",
        ),
        (
            lambda data, toks: _records([*toks[:256], b"\xef\xbf\xbd", b" \xef\xbf\xbd", toks[-1]]),
            "not the merge",
        ),
    ],
)
def test_malformed_bin(tmp_path: Path, bundled_tokens: list[bytes], mutate, message: str) -> None:
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(mutate(bundled_gpt2_path().read_bytes(), bundled_tokens))
    with pytest.raises(TokenizerFormatError, match=message):
        gpt2_tokenizer_from_bin(path)
    with pytest.raises(ValueError, match=message):  # TokenizerFormatError is a ValueError
        load_tokenizer(path)


def test_small_custom_vocab(tmp_path: Path, bundled_tokens: list[bytes]) -> None:
    """The builder is generic over rank vocabularies: 256 bytes, two merges, end of text."""
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(_records([*bundled_tokens[:256], b"ab", b"abc", GPT2_EOT.encode()]))
    t = TextTokenizer(load_tokenizer(path))
    assert t.vocab_size == 259
    assert t.eos_id == 258
    a, b, c = (bundled_tokens.index(bytes([ch])) for ch in b"abc")
    assert t.encode("abc abcab") == [257, bundled_tokens.index(b" "), 257, 256]
    assert t.encode("ba") == [b, a]
    assert t.encode("c") == [c]
