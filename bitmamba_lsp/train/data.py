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
