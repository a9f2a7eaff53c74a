"""Tokenizers for bitmamba-lsp: exact GPT-2 BPE rebuilt from bitmamba.cpp's vocabulary file.

bitmamba.cpp ships the GPT-2 vocabulary as ``tokenizer.bin``: for each of the 50257 ids in
order, a uint32 little-endian length then the token's raw bytes. Ids 0..255 are the 256 single
bytes (in GPT-2's byte-to-unicode order), ids 256..50255 are in BPE merge-rank order and id
50256 is ``<|endoftext|>``. :func:`gpt2_tokenizer_from_bin` turns that into a Hugging Face
``tokenizers.Tokenizer`` (byte-level BPE, merges derived from the ranks) that reproduces GPT-2's
rank-merge BPE exactly.

Lossy exports: the copies of the file in circulation were written by decoding each token as
UTF-8 with replacement, so the 344 tokens that are not whole UTF-8 sequences (``b"\\xe2\\x80"``,
the first half of ``’`` and ``—``; the 128 non-ASCII single bytes; ...) were stored as U+FFFD.
Such a file cannot rebuild GPT-2 on its own, so the reader repairs it: the single bytes come
from GPT-2's byte order and the 216 longer tokens from :data:`_GPT2_LOSSY_PATCHES` (their exact
bytes in GPT-2), each applied only where the stored record is exactly the lossy form of the
patch. A file with raw bytes (like the package's own copy) needs no repair.

Deriving the 50000 merges from the ranks takes a second or two in Python, so it is done once per
file: the result is cached in the user's cache (``$XDG_CACHE_HOME/bitmamba-lsp/tokenizers/``,
else ``~/.cache/...``), keyed by a hash of the file's bytes, written atomically and checked by a
checksum when read (a damaged cache file is rebuilt, with a one-line warning). See
:func:`gpt2_cache_path`.

:class:`TextTokenizer` is what the rest of the project uses: encode without special tokens,
character offsets, byte-exact decoding and a streaming decoder that never splits a character.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import hashlib
import logging
import marshal
import os
import re
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from bitmamba_lsp.engine.errors import TokenizerFormatError

__all__ = [
    "GPT2_EOT",
    "StreamDecoder",
    "TextTokenizer",
    "TokenizerFormatError",
    "bundled_gpt2_path",
    "bundled_gpt2_tokenizer",
    "bundled_text_tokenizer",
    "gpt2_cache_path",
    "gpt2_tokenizer_from_bin",
    "load_tokenizer",
    "read_bin_vocab",
    "user_cache_dir",
]

log = logging.getLogger("bitmamba_lsp")

GPT2_EOT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257
MAX_TOKEN_BYTES = 1024  # a longer record is corruption (GPT-2's longest token is 128 bytes)
MAX_RECORDS = 1 << 22
_REPLACEMENT = "\ufffd".encode()
# Names of end-of-sequence tokens, most preferred first.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "<|end|>", "<|im_end|>")
_SURROGATES = re.compile("[\ud800-\udfff]")
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _gpt2_byte_alphabet() -> tuple[list[int], list[str]]:
    """GPT-2's ``bytes_to_unicode``: the byte order of ids 0..255 and each byte's alias char."""
    order = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    alias = {b: chr(b) for b in order}
    extra = 0
    for b in range(256):
        if b not in alias:
            order.append(b)
            alias[b] = chr(256 + extra)
            extra += 1
    return order, [alias[b] for b in range(256)]


_BYTE_ORDER, _BYTE_ALIAS = _gpt2_byte_alphabet()
_TO_ALIAS = {b: _BYTE_ALIAS[b] for b in range(256)}  # str.translate table over latin-1 text
_FROM_ALIAS = {c: b for b, c in enumerate(_BYTE_ALIAS)}

# Exact bytes of GPT-2's multi-byte tokens that are not valid UTF-8 on their own ("id:hex").
_GPT2_LOSSY_PATCHES_HEX = (
    "447:e280 564:20e280 1209:e383 1587:20c2 1792:e382 2343:20e2 2515:e381 4204:bfbd 5008:e296 "
    "5099:e380 5525:20e8 6184:20c3 6408:a38f 6552:e294 7134:8892 7377:20ce 8008:84a2 8582:f09f "
    "8955:82ac 10253:8692 10263:20e5 10310:e4b8 10545:20e6 11019:20e296 11737:e9be 11805:9885 "
    "11976:e0a4 12045:e383bce383 12466:20d0 12520:20f09f 12859:e4ba 13305:20e294 13328:20e7 "
    "13783:e5a4 13945:a59e 14360:20d7 14519:20e29c 14524:20e383 15139:20e289 15474:e381aee5 "
    "15926:e297 16268:20e9 17312:e69c 17358:e8a6 17433:20e382 17550:20d8 17683:e381aee7 17739:e585 "
    "17804:20e286 17992:e299 18004:e5a3 18074:20cf 18433:ad94 18796:e794 18872:20e288 18923:20d9 "
    "19021:e79a 19049:e9be8de5 19469:e0a8 19526:e4bd 19567:e0b8 20015:e4bb 20046:e4b9 "
    "20174:20e8a38fe7 20724:20e299 20998:e58f 21253:9ae9 22522:e5ae 22755:e688 22757:9ae98692 "
    "22880:e295 22887:e5b0 23294:20e381 23329:8e8b 23596:9398 23626:e698 23821:20ec 23877:e696 "
    "24231:e0a5 24583:e298 24861:e288 24966:20e297 25001:e5a5 25081:9982 25370:20c5 25443:d0bed0 "
    "26193:e8a1 26292:e1b9 26344:e588 26486:e29c 26534:858b 27032:e381aee6 27332:20ef 27670:e4bc "
    "27764:e5ad 27950:e58a 28053:20e1 28156:e5bc 28225:20e0a4 28839:e59c 28938:e590 29705:e286 "
    "29773:ee80 29785:e997 29826:e6ad 30266:e69d 30298:e589 30325:20f09f98 30585:e5b8 31204:969a "
    "31479:e0b9 31619:20eb 31965:e789 32003:e880 32368:e59b 32391:e29d 32432:e5b7 32518:e8a3 "
    "32573:e8bf 32849:e983 33176:e5b9 33232:e5bf 33426:e381aee9 33434:969ae5a3ab 33566:e79b "
    "33699:e689 33768:e697 33951:d799d7 34247:d8a7d8 34402:e981 34460:e980 34504:20e8a38fe8 "
    "34650:e5a7 34719:20e298 34754:20c4 34932:e987 35050:b6e6 35069:a5b5 35266:efb8 35705:e289 "
    "35707:e684 35975:ec9d 36181:e5be 36365:e6b0 36469:20e5a4 36596:bb92 36685:e5a6 37239:e99b "
    "37345:e6b3 37605:e5bd 37772:e591 37863:e586 38184:e6b5 38461:e996 39333:b2be 39355:e58d "
    "39374:91e5a3ab 39611:e1b5 39820:e9be8de5a5 40367:e79c 41340:e0bc 41365:82aa 41585:e1b8 "
    "41678:b685 41753:e5ba 41840:f09f91 42062:88e8 42164:20e69c 42314:20e0a8 42527:20e287 "
    "43074:20e29d 43102:e8bb 43297:e0a9 43380:e5af 43518:828e 43636:e582 43718:e6a0 43769:81ab "
    "43889:e58e 43897:e6a9 44165:e7ab 44293:e58c 45250:e680 45379:e78b 45433:8196 45495:e1bd "
    "45539:acbc 45617:e9a3 45739:e8aa 45784:e7b7 45865:ab98 45911:e795 46237:e8af 46256:e281 "
    "46349:e683 46479:e4bf 46695:eb8b 46763:e695 46788:8ab1 47078:e784 47249:f09f98 47490:a9b6e6 "
    "47703:a9b6e6a5b5 47728:f09d 47797:e883 47947:e58b 47991:ed95 48071:e0a6 48953:adb7 48958:e888 "
    "49035:e587 49149:e381aee5ae 49426:e790 49694:e99a 50159:99bd 50169:20f09f91 "
)
_GPT2_LOSSY_PATCHES = {
    int(i): bytes.fromhex(h) for i, h in (item.split(":") for item in _GPT2_LOSSY_PATCHES_HEX.split())
}


def _lossy(raw: bytes) -> bytes:
    return raw.decode("utf-8", "replace").encode("utf-8")


# --------------------------------------------------------------------------- tokenizer.bin


def read_bin_vocab(path: str | Path) -> list[bytes]:
    """Read and validate a bitmamba GPT-2 ``tokenizer.bin``; return each id's exact bytes.

    Lossy (U+FFFD) records of a known GPT-2 export are repaired (see the module docstring).
    Raises :class:`TokenizerFormatError` (a ``ValueError``) on any structural problem and
    ``FileNotFoundError`` if the file does not exist.
    """
    path = Path(path)
    return _parse_bin_vocab(path.read_bytes(), path)


def _parse_bin_vocab(data: bytes, path: object) -> list[bytes]:
    tokens: list[bytes] = []
    off, end = 0, len(data)
    unpack = struct.Struct("<I").unpack_from
    while off < end:
        if off + 4 > end:
            raise TokenizerFormatError(
                f"{path}: truncated: {end - off} stray byte(s) after record {len(tokens)} at offset {off}"
            )
        (length,) = unpack(data, off)
        if length == 0 or length > MAX_TOKEN_BYTES:
            raise TokenizerFormatError(
                f"{path}: record {len(tokens)} at offset {off} has implausible length {length} "
                f"(expected 1..{MAX_TOKEN_BYTES}); not a bitmamba tokenizer.bin?"
            )
        off += 4
        if off + length > end:
            raise TokenizerFormatError(
                f"{path}: truncated: record {len(tokens)} needs {length} bytes, {end - off} left"
            )
        tokens.append(data[off : off + length])
        off += length
        if len(tokens) > MAX_RECORDS:
            raise TokenizerFormatError(f"{path}: more than {MAX_RECORDS} records")
    if len(tokens) < 257:
        raise TokenizerFormatError(
            f"{path}: {len(tokens)} records; a GPT-2 vocabulary needs the 256 bytes, merges and {GPT2_EOT}"
        )
    if tokens[-1] != GPT2_EOT.encode():
        raise TokenizerFormatError(f"{path}: last record is {tokens[-1][:40]!r}, expected {GPT2_EOT!r}")
    for i in range(256):
        want = bytes([_BYTE_ORDER[i]])
        if tokens[i] != want:
            if tokens[i] != _lossy(want):
                raise TokenizerFormatError(
                    f"{path}: record {i} is {tokens[i]!r}; ids 0..255 must be the single bytes in "
                    f"GPT-2 byte order (expected {want!r})"
                )
            tokens[i] = want
    for i, patch in _GPT2_LOSSY_PATCHES.items():
        if i < len(tokens) - 1 and tokens[i] != patch and tokens[i] == _lossy(patch):
            tokens[i] = patch
    seen: dict[bytes, int] = {}
    for i, tok in enumerate(tokens):
        j = seen.setdefault(tok, i)
        if j != i:
            hint = " (a lossy UTF-8 export?)" if _REPLACEMENT in tok else ""
            raise TokenizerFormatError(f"{path}: duplicate token {tok[:40]!r} at ids {j} and {i}{hint}")
    return tokens


def _rank_bpe(ranks: dict[bytes, int], piece: bytes, max_rank: int) -> list[bytes]:
    """Rank-merge BPE of ``piece`` using only tokens of rank < ``max_rank``."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_i = max_rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], max_rank)
            if r < best:
                best, best_i = r, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def _derive_merges(tokens: Sequence[bytes], source: object) -> list[tuple[bytes, bytes]]:
    """The merge creating each token of rank >= 256, in rank order (as tiktoken -> HF converters do).

    Rank-merge BPE of a token, restricted to lower ranks, must end in exactly two pieces.
    """
    ranks = {tok: i for i, tok in enumerate(tokens)}
    merges: list[tuple[bytes, bytes]] = []
    for rank in range(256, len(tokens)):
        tok = tokens[rank]
        parts = _rank_bpe(ranks, tok, rank)
        if len(parts) != 2:
            raise TokenizerFormatError(
                f"{source}: token {rank} ({tok[:40]!r}) is not the merge of two lower-ranked tokens; "
                "ids are not in BPE rank order"
            )
        merges.append((parts[0], parts[1]))
    return merges


def _alias(raw: bytes) -> str:
    return raw.decode("latin-1").translate(_TO_ALIAS)


# The merges of a tokenizer.bin, ready for ``models.BPE``: (vocab alias -> id, merges as alias
# pairs, every id's exact bytes with the end-of-text token last).
_Parts = tuple[dict[str, int], list[tuple[str, str]], list[bytes]]


def _parts_from_tokens(tokens: Sequence[bytes], source: object) -> _Parts:
    ranked = tokens[:-1]
    merges = _derive_merges(ranked, source)
    vocab = {_alias(tok): i for i, tok in enumerate(ranked)}
    return vocab, [(_alias(a), _alias(b)) for a, b in merges], list(tokens)


def _tokenizer_from_parts(parts: _Parts, source: object) -> Tokenizer:
    vocab, merges, table = parts
    model = models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False)
    tok = Tokenizer(model)
    # ByteLevel with use_regex=True applies GPT-2's pre-tokenization regex.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(table[-1].decode("utf-8"), special=True, normalized=False)])
    if tok.token_to_id(GPT2_EOT) != len(table) - 1:  # pragma: no cover - tokenizers invariant
        raise TokenizerFormatError(f"{source}: {GPT2_EOT} did not get id {len(table) - 1}")
    return tok


def gpt2_tokenizer_from_tokens(tokens: Sequence[bytes], source: object = "<tokens>") -> Tokenizer:
    """Build the byte-level BPE ``Tokenizer`` from validated ranked tokens (last one = EOT).

    Derives the merges every time (no cache): :func:`gpt2_tokenizer_from_bin` caches them."""
    return _tokenizer_from_parts(_parts_from_tokens(tokens, source), source)


# --------------------------------------------------------------------------- the merges cache

# A cache file: this magic line, the SHA-256 of the body, then the body: the length (uint64 LE) of a
# marshal'd (byte table, encodings, byte order, merge pairs) head, then a marshal'd (vocab, merges)
# tail. The head is all a tokenizer needs to start (decoding, its ids, the encodings the engine asks
# for at every load, the ids in the order of their bytes that token healing searches, the merges as
# id pairs for the core's ASCII BPE); the tail, the `tokenizers` library's BPE, is parsed when text
# the ASCII BPE does not cover is first encoded.
_CACHE_MAGIC = b"bitmamba-lsp gpt2 merges cache 4\n"
# Encoded at every load (Model.default_protected_ids): kept in the cache's head, so that a command
# that never encodes text (`bitmamba generate --ids`) never builds the BPE.
_PRECOMPUTED = ("\n", "\n\n", ".")


def user_cache_dir() -> Path:
    """bitmamba-lsp's folder in the user's cache: ``$BITMAMBA_LSP_CACHE_DIR`` when set, else
    ``$XDG_CACHE_HOME/bitmamba-lsp`` (an absolute XDG_CACHE_HOME only, as the XDG spec says), else
    ``~/.cache/bitmamba-lsp``."""
    own = os.environ.get("BITMAMBA_LSP_CACHE_DIR", "")
    if own:
        return Path(own)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "bitmamba-lsp"


def gpt2_cache_path(data: bytes) -> Path:
    """Where what is derived from a tokenizer.bin's bytes ``data`` (its merges) is cached:
    ``<user cache>/tokenizers/gpt2-<hash>.cache``. The hash covers the file's bytes, the cache
    format and the Python version (the payload is ``marshal`` data)."""
    h = hashlib.sha256(_CACHE_MAGIC)
    h.update(b"python %d.%d\0" % sys.version_info[:2])
    h.update(data)
    return user_cache_dir() / "tokenizers" / f"gpt2-{h.hexdigest()[:20]}.cache"


def bytes_order(table: Sequence[bytes]) -> np.ndarray:
    """The ids whose bytes are not empty, sorted by their bytes (equal bytes: by id), as int32."""
    ids = [i for i in range(len(table)) if table[i]]
    ids.sort(key=table.__getitem__)  # the sort is stable: equal bytes stay in id order
    return np.asarray(ids, dtype=np.int32)


def merge_pairs(parts: _Parts) -> np.ndarray:
    """The merges as [n, 2] int32 id pairs, in merge order (merge r makes id 256 + r)."""
    vocab, merges, _ = parts
    return np.asarray([(vocab[a], vocab[b]) for a, b in merges], dtype=np.int32).reshape(-1, 2)


def _pack_cache(parts: _Parts, encoded: dict[str, list[int]], order: np.ndarray, pairs: np.ndarray) -> bytes:
    vocab, merges, table = parts
    head = marshal.dumps((table, encoded, order.astype("<i4").tobytes(), pairs.astype("<i4").tobytes()))
    body = struct.pack("<Q", len(head)) + head + marshal.dumps((vocab, merges))
    return _CACHE_MAGIC + hashlib.sha256(body).digest() + body


def _unpack_cache(blob: bytes) -> tuple[list[bytes], dict[str, list[int]], np.ndarray, np.ndarray, memoryview]:
    """(byte table, encodings, byte order, merge pairs, the unparsed tail) of a cache file's bytes;
    ValueError saying what is wrong with them."""
    n = len(_CACHE_MAGIC)
    if not blob.startswith(_CACHE_MAGIC):
        raise ValueError("not a bitmamba-lsp merges cache")
    body = memoryview(blob)[n + 32 :]
    if hashlib.sha256(body).digest() != blob[n : n + 32]:
        raise ValueError(f"checksum mismatch ({len(blob)} bytes: truncated or damaged)")
    if len(body) < 8 or struct.unpack_from("<Q", body)[0] > len(body) - 8:
        raise ValueError("bad head length")
    end = 8 + struct.unpack_from("<Q", body)[0]
    try:
        table, encoded, order_bytes, pair_bytes = marshal.loads(body[8:end])
    except Exception as exc:
        raise ValueError(f"unreadable head: {exc}") from None
    if type(order_bytes) is not bytes or len(order_bytes) % 4 or type(pair_bytes) is not bytes or len(pair_bytes) % 8:
        raise ValueError("unexpected contents")
    order = np.frombuffer(order_bytes, dtype="<i4").astype(np.int32)
    pairs = np.frombuffer(pair_bytes, dtype="<i4").astype(np.int32).reshape(-1, 2)
    if not (
        isinstance(table, list)
        and len(table) >= 257
        and all(type(t) is bytes for t in table)
        and table[-1] == GPT2_EOT.encode()
        and isinstance(encoded, dict)
        and all(isinstance(v, list) and all(type(i) is int and 0 <= i < len(table) for i in v) for v in encoded.values())
        and len(order) <= len(table)
        and (len(order) == 0 or (int(order.min()) >= 0 and int(order.max()) < len(table)))
        and len(pairs) == len(table) - 257
        and (len(pairs) == 0 or (int(pairs.min()) >= 0 and int(pairs.max()) < len(table) - 1))
    ):
        raise ValueError("unexpected contents")
    return table, encoded, order, pairs, body[end:]


def _unpack_tail(tail: memoryview, n: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    try:
        vocab, merges = marshal.loads(tail)
    except Exception as exc:
        raise ValueError(f"unreadable tail: {exc}") from None
    if not (isinstance(vocab, dict) and isinstance(merges, list) and len(vocab) == n - 1 and len(merges) == n - 257):
        raise ValueError("unexpected contents")
    return vocab, merges


def _read_cache(path: Path) -> tuple[list[bytes], dict[str, list[int]], np.ndarray, np.ndarray, memoryview] | None:
    """The cache's contents; None when there is none or when the file is damaged (one warning line:
    the caller rebuilds it, the user never gets an error for a bad cache)."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("bitmamba-lsp: cannot read the tokenizer cache %s (%s); rebuilding it", path, exc)
        return None
    try:
        return _unpack_cache(blob)
    except ValueError as exc:
        log.warning("bitmamba-lsp: the tokenizer cache %s is damaged (%s); rebuilding it", path, exc)
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a private temporary file beside ``path`` and rename it over ``path``:
    readers see the old file or the whole new one, and concurrent writers cannot mix their bytes."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_Gpt2 = tuple[list[bytes], dict[str, list[int]], np.ndarray, np.ndarray, Callable[[], Tokenizer]]


def _derive_and_cache(data: bytes, path: Path, cache: Path) -> _Gpt2:
    log.info("bitmamba-lsp: deriving the BPE merges of %s once (cached in %s)", path, cache)
    parts = _parts_from_tokens(_parse_bin_vocab(data, path), path)
    probe = TextTokenizer._adopt(_tokenizer_from_parts(parts, path), parts[2])
    encoded = {s: probe.encode(s) for s in _PRECOMPUTED}
    order, pairs = bytes_order(parts[2]), merge_pairs(parts)
    try:
        _write_atomically(cache, _pack_cache(parts, encoded, order, pairs))
    except OSError as exc:
        log.warning(
            "bitmamba-lsp: cannot write the tokenizer cache %s (%s); the merges are derived again next time",
            cache,
            exc,
        )
    return parts[2], encoded, order, pairs, lambda: _tokenizer_from_parts(parts, path)


def _gpt2(path: Path) -> _Gpt2:
    """A tokenizer.bin's (byte table, precomputed encodings, byte order, merge pairs, a function
    building the BPE ``Tokenizer``): from the user cache, else derived (about a second) and cached."""
    data = path.read_bytes()
    cache = gpt2_cache_path(data)
    got = _read_cache(cache)
    if got is None:
        return _derive_and_cache(data, path, cache)
    table, encoded, order, pairs, tail = got

    def build() -> Tokenizer:
        try:
            vocab, merges = _unpack_tail(tail, len(table))
        except ValueError as exc:  # the checksum held, yet: never an error for a cache
            log.warning("bitmamba-lsp: the tokenizer cache %s is damaged (%s); rebuilding it", cache, exc)
            return _derive_and_cache(data, path, cache)[4]()
        return _tokenizer_from_parts((vocab, merges, table), path)

    return table, encoded, order, pairs, build


def gpt2_tokenizer_from_bin(path: str | Path, *, cache_path: str | Path | None = None) -> Tokenizer:
    """Build an exact GPT-2 BPE ``tokenizers.Tokenizer`` from a bitmamba ``tokenizer.bin``.

    The merges are derived once per file and kept in the user cache (see :func:`gpt2_cache_path`).
    With ``cache_path``, the result is also saved there as ``tokenizer.json`` and reused while
    that file is newer than ``path``.
    """
    path = Path(path)
    if cache_path is not None:
        cache = Path(cache_path)
        try:
            if cache.stat().st_mtime_ns >= path.stat().st_mtime_ns:
                return Tokenizer.from_file(str(cache))
        except Exception:  # missing or unreadable cache: rebuild it
            pass
    tok = _gpt2(path)[4]()
    if cache_path is not None:
        _write_atomically(Path(cache_path), tok.to_str().encode("utf-8"))
    return tok


# --------------------------------------------------------------------------- loading


def _load_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise TokenizerFormatError(f"{path}: not a valid tokenizer.json: {exc}") from exc


def _tokenizer_file(path_or_dir: str | Path) -> tuple[Path, bool]:
    """(the file, whether it is JSON) for :func:`load_tokenizer`'s rules."""
    path = Path(path_or_dir)
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.bin"):
            if (path / name).is_file():
                return _tokenizer_file(path / name)
        raise FileNotFoundError(f"{path}: directory has no tokenizer.json or tokenizer.bin")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such tokenizer file or directory")
    with path.open("rb") as f:
        head = f.read(64).lstrip()
    return path, head.startswith(b"{") or path.suffix == ".json"


def load_tokenizer(path_or_dir: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json``, a bitmamba ``tokenizer.bin``, or a directory holding one.

    In a directory ``tokenizer.json`` wins over ``tokenizer.bin``. A file is taken as JSON when
    its first non-blank byte is ``{``, else as ``tokenizer.bin``. Raises ``FileNotFoundError``
    for a missing path or a directory with neither file, :class:`TokenizerFormatError`
    (a ``ValueError``) for a malformed file.
    """
    path, is_json = _tokenizer_file(path_or_dir)
    return _load_json(path) if is_json else gpt2_tokenizer_from_bin(path)


def bundled_gpt2_path() -> Path:
    """Path of the GPT-2 ``tokenizer.bin`` shipped in ``bitmamba_lsp/data``."""
    return Path(__file__).resolve().parent.parent / "data" / "gpt2-tokenizer.bin"


@functools.cache
def bundled_gpt2_tokenizer() -> Tokenizer:
    """The GPT-2 tokenizer built from the package's data file (built once per process, its
    merges derived once per user: see :func:`gpt2_cache_path`).

    The instance is shared: do not reconfigure it (wrap it in :class:`TextTokenizer`, which
    works on its own copy).
    """
    return gpt2_tokenizer_from_bin(bundled_gpt2_path())


@functools.cache
def bundled_text_tokenizer() -> TextTokenizer:
    """:class:`TextTokenizer` over the bundled GPT-2 tokenizer (built once per process)."""
    return TextTokenizer.from_path(bundled_gpt2_path())


GPT2_VOCAB = 50257


def find_tokenizer(
    folders: list[Path], vocab_size: int, prepare: Callable[[TextTokenizer], None] | None = None
) -> TextTokenizer | None:
    """tokenizer.json or tokenizer.bin beside the model, else the bundled GPT-2 vocabulary when the
    model has GPT-2's vocabulary size, else None (the model then takes token ids only). prepare:
    called with the tokenizer found (a load's `LoadOptions.prepare_tokenizer`)."""
    tok = _find_tokenizer(folders, vocab_size)
    if tok is not None and prepare is not None:
        prepare(tok)
    return tok


def _find_tokenizer(folders: list[Path], vocab_size: int) -> TextTokenizer | None:
    for folder in folders:
        for name in ("tokenizer.json", "tokenizer.bin"):
            if (folder / name).is_file():
                return TextTokenizer.from_path(folder / name)
    if vocab_size == GPT2_VOCAB:
        return bundled_text_tokenizer()
    return None


# --------------------------------------------------------------------------- wrapper


class StreamDecoder:
    """Incremental detokenizer: feed ids, get back newly completed text.

    Bytes of an incomplete UTF-8 sequence (say the first token of an emoji) are held back until
    the sequence completes; bytes that can never become valid come out as U+FFFD exactly as
    :meth:`TextTokenizer.decode` would render them, so the concatenation of everything returned
    by :meth:`feed` and :meth:`flush` equals ``decode(all_ids)``.
    """

    __slots__ = ("_decoder", "_skip", "_table")

    def __init__(self, table: Sequence[bytes], skip_ids: frozenset[int] = frozenset()) -> None:
        self._table = table
        self._skip = skip_ids
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly ``""``)."""
        if token_id < 0 or token_id >= len(self._table):
            raise ValueError(f"token id {token_id} out of range [0, {len(self._table)})")
        if token_id in self._skip:
            return ""
        return self._decoder.decode(self._table[token_id])

    def feed_many(self, token_ids: Iterable[int]) -> str:
        return "".join([self.feed(t) for t in token_ids])

    @property
    def pending(self) -> bytes:
        """Bytes held back because they may start a character not yet complete."""
        return self._decoder.getstate()[0]

    def flush(self) -> str:
        """End of stream: return held-back bytes (as U+FFFD, they never completed); reset."""
        out = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return out


class TextTokenizer:
    """The project's tokenizer interface over a ``tokenizers.Tokenizer``.

    Works on its own copy of the tokenizer with padding and truncation off and special tokens
    *not* recognised in input text: ``encode("<|endoftext|>")`` gives ordinary tokens, so a
    document can never inject an end-of-text. Lone surrogates in input text (possible from
    JSON) are encoded as U+FFFD, which keeps character offsets aligned.

    ``token_bytes`` is exact for byte-level BPE (GPT-2 and friends) and for byte-fallback
    tokens ``<0xNN>``; for other models it is a best effort (``▁`` is read as a space).
    ``decode`` joins token bytes, so it is byte-exact and consistent with :class:`StreamDecoder`.

    From a ``tokenizer.bin`` whose merges are cached, ASCII text is encoded by the core's GPT-2
    BPE (``_core.AsciiBpe``, built in a few ms from the cached merge pairs; the library's ids) and
    the library's BPE is built when other text is first encoded, or by :meth:`prepare` (a daemon
    builds it on a thread once its model is ready); decoding and the ids need only the byte table.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._setup(Tokenizer.from_str(tokenizer.to_str()), None)

    @classmethod
    def _adopt(cls, tok: Tokenizer, table: list[bytes] | None = None) -> TextTokenizer:
        """Wrap a ``Tokenizer`` nobody else holds, without copying it; ``table``: each id's bytes
        when already known (a tokenizer.bin's records)."""
        self = cls.__new__(cls)
        self._setup(tok, table)
        return self

    @classmethod
    def _gpt2(
        cls,
        table: list[bytes],
        encoded: dict[str, list[int]],
        order: np.ndarray,
        pairs: np.ndarray,
        build: Callable[[], Tokenizer],
    ) -> TextTokenizer:
        """A tokenizer.bin's tokenizer whose BPE ``build()`` makes on first use. Everything else is
        what :meth:`_setup` finds in such a tokenizer: byte-level, ``<|endoftext|>`` (the last id)
        its only special token and its end of sequence."""
        self = cls.__new__(cls)
        self._tok = None
        self._build: Callable[[], Tokenizer] | None = build
        self._build_lock = threading.Lock()
        self._encoded: dict[str, list[int]] = encoded  # what _PRECOMPUTED strings encode to
        self._vocab_size = len(table)
        self.special_ids = frozenset({len(table) - 1})
        self._byte_level = True
        self._set_table(table)
        self._order: np.ndarray | None = order
        self._pairs = pairs  # the core's ASCII BPE is built from them on first use
        self._exact_offsets = True
        self.eos_id = len(table) - 1
        return self

    @staticmethod
    def _configure(tok: Tokenizer) -> Tokenizer:
        tok.no_padding()
        tok.no_truncation()
        tok.encode_special_tokens = True
        return tok

    @property
    def _hf(self) -> Tokenizer:
        tok = self._tok
        if tok is None:
            with self._build_lock:
                if self._tok is None:
                    assert self._build is not None
                    self._tok = self._configure(self._build())
                    self._build = None
                tok = self._tok
        return tok

    def prepare(self, library: bool = True) -> None:
        """Build now what encoding builds on first use: the core's ASCII BPE (a tokenizer.bin's)
        and, with `library`, the `tokenizers` library's BPE (40-60 ms of Python-held time: a daemon
        defers it past its first request, which the ASCII BPE serves for ASCII text)."""
        self._ascii()
        if library:
            self._hf  # noqa: B018

    @property
    def library_ready(self) -> bool:
        """The `tokenizers` library's BPE is built (always, but for a tokenizer.bin's before its
        first use or `prepare()`)."""
        return self._tok is not None

    def _ascii(self) -> Any:
        """The core's ASCII BPE of a tokenizer.bin's merges (bitmamba/bpe.h), or None."""
        if self._ascii_bpe is None and self._pairs is not None:
            from bitmamba_lsp import _core

            with self._build_lock:
                if self._ascii_bpe is None:
                    table = self._table
                    byte_ids = np.zeros(256, dtype=np.int32)
                    for i in range(256):
                        byte_ids[table[i][0]] = i
                    self._ascii_bpe = _core.AsciiBpe(self._pairs, byte_ids, 256)
        return self._ascii_bpe

    def _fast_ids(self, text: str) -> list[int] | None:
        """The ids of ASCII `text` from the core's BPE, or None (not ASCII, or none here)."""
        if self._pairs is None or not text.isascii():
            return None
        got = self._ascii().encode(text)
        return None if got is None else got.tolist()

    def _set_table(self, table: list[bytes]) -> None:
        self._table = table
        self._order = None
        self._pairs: np.ndarray | None = None
        self._ascii_bpe: Any = None
        self._lens = np.fromiter((len(b) for b in table), dtype=np.int64, count=len(table))

    def _setup(self, tok: Tokenizer, table: list[bytes] | None) -> None:
        self._tok = self._configure(tok)
        self._encoded = {}
        self._vocab_size = tok.get_vocab_size(with_added_tokens=True)
        added = tok.get_added_tokens_decoder()
        self.special_ids: frozenset[int] = frozenset(i for i, t in added.items() if t.special)
        self._byte_level = isinstance(tok.decoder, decoders.ByteLevel)
        if table is None or len(table) != self._vocab_size:
            table = [b""] * self._vocab_size  # ids without a piece stay empty
            for piece, i in tok.get_vocab(with_added_tokens=False).items():
                if 0 <= i < self._vocab_size:
                    table[i] = self._piece_bytes(piece)
            for i, t in added.items():
                if 0 <= i < self._vocab_size:
                    table[i] = t.content.encode("utf-8")
        self._set_table(table)
        # Offsets from byte arithmetic are exact when the tokens spell the input's bytes.
        self._exact_offsets = self._byte_level and tok.normalizer is None
        self.eos_id: int | None = None
        for name in _EOS_NAMES:
            eos = tok.token_to_id(name)
            if eos is not None:
                self.eos_id = eos
                break

    def _piece_bytes(self, piece: str) -> bytes:
        if self._byte_level:
            try:
                return bytes(map(_FROM_ALIAS.__getitem__, piece))
            except KeyError:
                return piece.encode("utf-8")
        m = _BYTE_FALLBACK.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    @classmethod
    def from_path(cls, path_or_dir: str | Path) -> TextTokenizer:
        """A ``tokenizer.json``, a ``tokenizer.bin`` or a folder holding one (:func:`load_tokenizer`)."""
        path, is_json = _tokenizer_file(path_or_dir)
        if is_json:
            return cls._adopt(_load_json(path))
        return cls._gpt2(*_gpt2(path))

    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped (private copy of the) ``tokenizers.Tokenizer``."""
        return self._hf

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (50257 for GPT-2)."""
        return self._vocab_size

    @staticmethod
    def _clean(text: str) -> str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATES.sub("\ufffd", text)
        return text

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS/EOS or other special tokens are added."""
        if not text:
            return []
        known = self._encoded.get(text)
        if known is not None:
            return list(known)
        fast = self._fast_ids(text)
        if fast is not None:
            return fast
        return self._hf.encode(self._clean(text), add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids and, for each token, the ``str`` index where its text starts.

        The offset of a token is the index of the character holding its first byte, so a token
        that starts inside a multi-byte character (the second half of an emoji, whose first
        bytes end the previous token) gets that character's index. Offsets are non-decreasing and
        ``text[offsets[k]:]`` starts with the text of token k whenever token k starts on a
        character boundary (``token_bytes`` tells which ones do not).
        """
        if not text:
            return [], []
        fast = self._fast_ids(text)
        if fast is not None:  # ASCII: a token's offset is where its bytes start
            lens = self._lens[np.asarray(fast, dtype=np.int64)]
            return fast, (np.cumsum(lens) - lens).tolist()
        text = self._clean(text)
        enc = self._hf.encode(text, add_special_tokens=False)
        ids = enc.ids
        if self._exact_offsets:
            raw = text.encode("utf-8")
            ends = np.cumsum(self._lens[np.asarray(ids, dtype=np.int64)])
            if int(ends[-1]) == len(raw):
                starts = np.empty_like(ends)
                starts[0] = 0
                starts[1:] = ends[:-1]
                b = np.frombuffer(raw, dtype=np.uint8)
                char_of_byte = np.cumsum((b & 0xC0) != 0x80) - 1
                return ids, char_of_byte[starts].tolist()
        offs = np.fromiter((s for s, _ in enc.offsets), dtype=np.int64, count=len(ids))
        return ids, np.maximum.accumulate(offs).tolist()

    def _check_ids(self, ids: Sequence[int]) -> None:
        if ids and (min(ids) < 0 or max(ids) >= self._vocab_size):
            bad = next(i for i in ids if i < 0 or i >= self._vocab_size)
            raise ValueError(f"token id {bad} out of range [0, {self._vocab_size})")

    def ids_by_bytes(self) -> np.ndarray:
        """The ids whose bytes are not empty, sorted by their bytes (equal bytes: by id): what
        token healing searches. From the tokenizer cache for a tokenizer.bin, else sorted once."""
        if self._order is None:
            self._order = bytes_order(self._table)
        return self._order

    @property
    def byte_table(self) -> list[bytes]:
        """Every id's bytes (``token_bytes`` of each), the tokenizer's own list: read, never change."""
        return self._table

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token (may be part of a UTF-8 character)."""
        if token_id < 0 or token_id >= self._vocab_size:
            raise ValueError(f"token id {token_id} out of range [0, {self._vocab_size})")
        return self._table[token_id]

    def decode_bytes(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> bytes:
        self._check_ids(ids)
        table = self._table
        if skip_special_tokens and self.special_ids:
            skip = self.special_ids
            return b"".join([table[i] for i in ids if i not in skip])
        return b"".join([table[i] for i in ids])

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; invalid UTF-8 (a cut-off character) becomes U+FFFD."""
        return self.decode_bytes(ids, skip_special_tokens=skip_special_tokens).decode("utf-8", "replace")

    def stream_decoder(self, *, skip_special_tokens: bool = True) -> StreamDecoder:
        """A fresh :class:`StreamDecoder` agreeing with :meth:`decode`."""
        return StreamDecoder(self._table, self.special_ids if skip_special_tokens else frozenset())
