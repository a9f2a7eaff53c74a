"""Tokenizer training, corpus encoding and deterministic batching (NumPy only, no torch).

* :func:`train_tokenizer`: byte-level BPE (GPT-2 pre-tokenizer regex, no prefix space, ByteLevel
  decoder) with ``<|endoftext|>`` as a special token (id 0), trained on the training split only.
* :func:`encode_corpus`: every document's ids followed by ``<|endoftext|>`` (the document
  separator), concatenated into one ``uint16``/``int32`` array per split.
* :class:`WindowSampler`: batch ``k`` is a pure function of ``(seed, k)``: the stream is cut into
  non-overlapping windows of ``seq_len + 1`` tokens at a per-epoch random offset, shuffled per
  epoch, and consumed in order. Resuming at step ``k`` therefore needs no saved RNG state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

EOT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` with ``vocab_size`` ids (EOT included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def eot_id(tokenizer) -> int:
    i = tokenizer.token_to_id(EOT)
    if i is None:
        raise ValueError(f"tokenizer has no {EOT} token")
    return i


def encode_texts(tokenizer, texts: Iterable[str], batch: int = 256) -> Iterator[list[int]]:
    """Token ids of each text; special-token strings in a text (``<|endoftext|>``, the FIM
    sentinels) are ordinary text, as the engine's tokenizer reads them: a file that mentions one
    cannot end a document or open a FIM piece."""
    saved = tokenizer.encode_special_tokens
    tokenizer.encode_special_tokens = True
    try:
        yield from _encode_texts(tokenizer, texts, batch)
    finally:
        tokenizer.encode_special_tokens = saved


def _encode_texts(tokenizer, texts: Iterable[str], batch: int) -> Iterator[list[int]]:
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) == batch:
            for enc in tokenizer.encode_batch(buf, add_special_tokens=False):
                yield enc.ids
            buf = []
    if buf:
        for enc in tokenizer.encode_batch(buf, add_special_tokens=False):
            yield enc.ids


def encode_corpus(tokenizer, texts: Iterable[str]) -> np.ndarray:
    """All documents, each followed by EOT, as one array (uint16 when the vocabulary fits)."""
    eot = eot_id(tokenizer)
    dtype = np.uint16 if tokenizer.get_vocab_size(with_added_tokens=True) <= 65536 else np.int32
    parts = []
    for ids in encode_texts(tokenizer, texts):
        parts.append(np.asarray(ids, dtype=dtype))
        parts.append(np.asarray([eot], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


class WindowSampler:
    """Deterministic batches of ``[batch_size, seq_len + 1]`` token windows (see module docstring)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int) -> None:
        if len(tokens) < seq_len + 2:
            raise ValueError(f"corpus too small: {len(tokens)} tokens for windows of {seq_len + 1}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.win = seq_len + 1
        self.per_epoch = (len(tokens) - seq_len) // self.win  # leaves room for any offset < win
        self._epoch_cache: tuple[int, np.ndarray, int] | None = None

    def _epoch(self, e: int) -> tuple[np.ndarray, int]:
        if self._epoch_cache is None or self._epoch_cache[0] != e:
            rng = np.random.default_rng([self.seed, e])
            offset = (
                int(rng.integers(0, self.win))
                if len(self.tokens) - self.per_epoch * self.win >= self.win
                else 0
            )
            self._epoch_cache = (e, rng.permutation(self.per_epoch), offset)
        return self._epoch_cache[1], self._epoch_cache[2]

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / self.per_epoch

    def batch(self, step: int) -> np.ndarray:
        out = np.empty((self.batch_size, self.win), dtype=np.int64)
        for b in range(self.batch_size):
            k = step * self.batch_size + b
            e, i = divmod(k, self.per_epoch)
            perm, offset = self._epoch(e)
            start = offset + int(perm[i]) * self.win
            out[b] = self.tokens[start : start + self.win]
        return out


def eval_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Non-overlapping ``seq_len + 1`` windows from the start of the held-out stream (evenly spread
    over the stream when ``max_windows`` is smaller than the number available)."""
    win = seq_len + 1
    n = len(tokens) // win
    idx = np.arange(n)
    if max_windows is not None and n > max_windows:
        idx = np.linspace(0, n - 1, max_windows).round().astype(np.int64)
    return np.stack([tokens[i * win : (i + 1) * win] for i in idx]).astype(np.int64)


# ------------------------------------------------------------------------ fill-in-the-middle

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)


@dataclass(frozen=True)
class FimOptions:
    """How documents are put in fill-in-the-middle form (the daemon's prompt order, see
    docs/fim.md): ``<pre> prefix <suf> suffix <mid> middle <eot>``.

    Each document is cut at line ends into pieces of about ``chunk_chars`` (so a piece fits a
    training window); a piece is in FIM form with probability ``rate``, else left to right. The
    middle starts at a line start with probability ``line_start`` (where the daemon puts the typed
    part of the cursor's line: after ``<mid>``), else at any character; it ends at any character
    up to ``max_middle_lines`` lines further (mid-word splits included, and empty middles: the
    model learns to stop). The suffix is the rest of the middle's last line plus up to
    ``max_suffix_lines`` lines, as the daemon sends."""

    rate: float = 0.7
    chunk_chars: int = 1600
    line_start: float = 0.75
    max_middle_lines: int = 3
    max_suffix_lines: int = 24

    def to_dict(self) -> dict:
        return asdict(self)


def _line_starts(text: str) -> list[int]:
    starts = [0]
    i = text.find("\n")
    while i != -1 and i + 1 < len(text):
        starts.append(i + 1)
        i = text.find("\n", i + 1)
    return starts


def chunk_lines(text: str, chunk_chars: int) -> list[str]:
    """``text`` cut at line ends into pieces of at least ``chunk_chars`` characters (the last one
    shorter); joined, they give ``text`` back."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + chunk_chars)
        end = len(text) if end == -1 else end + 1
        out.append(text[start:end])
        start = end
    return out


def fim_split(text: str, opts: FimOptions, rng: np.random.Generator) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of ``text``: prefix + middle + (suffix, cut after some lines)."""
    starts = _line_starts(text)
    if rng.random() < opts.line_start:
        s = starts[int(rng.integers(0, len(starts)))]
    else:
        s = int(rng.integers(0, len(text) + 1))
    line = max(0, np.searchsorted(starts, s, side="right") - 1)
    last = min(len(starts) - 1, line + int(rng.integers(0, opts.max_middle_lines + 1)))
    line_end = text.find("\n", starts[last])
    line_end = len(text) if line_end == -1 else line_end
    lo = max(s, starts[last])
    e = int(rng.integers(lo, max(lo, line_end) + 1))
    # the suffix: the rest of the middle's last line and up to max_suffix_lines more
    n_more = int(rng.integers(0, opts.max_suffix_lines + 1))
    cut = e
    for _ in range(n_more + 1):
        nl = text.find("\n", cut)
        if nl == -1:
            cut = len(text)
            break
        cut = nl + 1
    return text[:s], text[s:e], text[e:cut]


def fim_ids(tokenizer) -> tuple[int, int, int]:
    ids = tuple(tokenizer.token_to_id(t) for t in FIM_TOKENS)
    if any(i is None for i in ids):
        raise ValueError(f"tokenizer has no FIM tokens {FIM_TOKENS}")
    return ids  # type: ignore[return-value]


def add_fim_tokens(tokenizer) -> int:
    """Add the FIM sentinels as special tokens (after the existing ids); the number added."""
    from tokenizers import AddedToken

    missing = [t for t in FIM_TOKENS if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return len(missing)


def encode_corpus_fim(tokenizer, texts: Iterable[str], opts: FimOptions, seed: int) -> np.ndarray:
    """Like :func:`encode_corpus`, with pieces of each document in FIM form (see FimOptions).
    The sentinels are inserted as ids, never parsed from the text. Deterministic in ``seed``."""
    eot = eot_id(tokenizer)
    pre, suf, mid = fim_ids(tokenizer)
    dtype = np.uint16 if tokenizer.get_vocab_size(with_added_tokens=True) <= 65536 else np.int32
    rng = np.random.default_rng([seed, 7919])
    pieces: list[str] = []
    layout: list[tuple[str, int]] = []  # ("plain", idx) / ("fim", idx of prefix) / ("end", 0)
    for text in texts:
        for chunk in chunk_lines(text, opts.chunk_chars):
            if rng.random() < opts.rate:
                p, m, s = fim_split(chunk, opts, rng)
                layout.append(("fim", len(pieces)))
                pieces += [p, s, m]
            else:
                layout.append(("plain", len(pieces)))
                pieces.append(chunk)
        layout.append(("end", 0))
    encoded = list(encode_texts(tokenizer, pieces))
    parts: list[np.ndarray] = []
    for kind, i in layout:
        if kind == "plain":
            parts.append(np.asarray(encoded[i], dtype=dtype))
        elif kind == "fim":
            p, s, m = encoded[i], encoded[i + 1], encoded[i + 2]
            parts.append(np.asarray([pre, *p, suf, *s, mid, *m, eot], dtype=dtype))
        else:
            parts.append(np.asarray([eot], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
