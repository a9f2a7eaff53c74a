"""Token healing: the prompt's last token is taken back and regenerated under a constraint.

A cursor rarely sits on a token boundary the model saw in training. Byte-level BPE attaches a
space to the word after it, so ``return a `` ends in a lone ``" "`` token and an indented empty
line ends in a run of spaces that, in training, was always split as "spaces + ' word'". Fed as is,
such a prompt is out of distribution and the model suggests nonsense. Healing drops the last token
and constrains generation until the dropped bytes are reproduced: while ``r`` bytes remain, the next
token must either start with ``r`` or be a proper prefix of it (when ``r`` ends with spaces or tabs, a
token starting with it must go on with something other than more of them: the editor's indentation
is complete), so eight spaces of indentation may come back as the seven-space token followed by
`` self``, as in training. Those bytes are then removed from the suggestion (the decode loop's
`skip`).

A half-typed word is taken back whole (up to four tokens): ``retur`` is `` ret`` + ``ur``, and with only
``ur`` taken back the model could finish the word only as `` ret`` goes on, never as the `` return``
it knows (on the usefulness benchmark's tune split: mid-line exact 16.9 % -> 19.9 %).
A run of blanks is taken back whole too (up to four tokens): a text that ends in a blank line and
indentation tokenizes as ``)`` + ``\n`` + ``\n    `` (nothing follows the blanks), which in training
was ``\n\n   `` + `` def``; from the lone ``\n`` left by taking back one token the shipped model
began 17 % of its line-start lines with ``=``, ``(`` or ``.``.

`TokenHealer` knows the vocabulary (which tokens fit a byte prefix); `HealingConstraint` is the
logits hook of one decode (engine/decoding.py).
"""

from __future__ import annotations

import bisect
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MAX_HEALED_TOKENS = 4  # a partial word taken back whole, up to this many tokens
MAX_HEALED_CHARS = 32
_WORD_PIECE = re.compile(r"\w+")  # a token inside a word
_WORD_START = re.compile(r" ?\w+")  # ... or the word's first piece, with the space before it


@dataclass(frozen=True)
class Healed:
    ids: np.ndarray  # the prompt without its last token(s) (or unchanged)
    text: str  # what the first generated tokens must reproduce, removed from the suggestion
    raw: bytes  # the same as bytes: the constraint still to satisfy


_HEALERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unique_ids(ids: np.ndarray) -> np.ndarray:
    """The distinct values of a 1-D integer array, sorted: what ``np.unique`` gives, without its
    first call importing ``numpy.ma`` (15 ms of a daemon's first completion)."""
    s = np.sort(ids)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def healer_for(tokenizer, special_ids: Sequence[int] = ()) -> TokenHealer:  # type: ignore[no-untyped-def]
    """The TokenHealer of `tokenizer` (built once per tokenizer object and set of special ids: the
    vocabulary in the order of its bytes, ~7 ms for GPT-2's from the tokenizer cache's byte order,
    ~30 ms when sorted here; a warm start's fork inherits it built, lsp/warm.py). A healer is immutable but for
    its cache of pure lookups, so models sharing a tokenizer share it."""
    key = tuple(sorted(set(special_ids)))
    try:
        per = _HEALERS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        return TokenHealer(tokenizer, special_ids)
    healer = per.get(key)
    if healer is None:
        healer = per[key] = TokenHealer(tokenizer, special_ids)
    return healer


class TokenHealer:
    def __init__(self, tokenizer, special_ids: Sequence[int] = ()) -> None:
        n = tokenizer.vocab_size
        # the tokenizer's special tokens (end of text, FIM sentinels) are never text to heal or to
        # generate as a healing piece
        special = set(special_ids) | set(getattr(tokenizer, "special_ids", ()))
        table = getattr(tokenizer, "byte_table", None) or list(map(tokenizer.token_bytes, range(n)))
        if hasattr(tokenizer, "ids_by_bytes"):  # kept in the tokenizer cache (tokenizer.py)
            ids = [i for i in tokenizer.ids_by_bytes().tolist() if i not in special]
        else:
            ids = [i for i in range(n) if table[i] and i not in special]
            ids.sort(key=table.__getitem__)  # by bytes, then id (the sort is stable)
        self._bytes = [table[i] for i in ids]
        self._ids = np.asarray(ids, dtype=np.int64)
        self._tok = tokenizer
        self._special = special
        self._blank: np.ndarray | None = None  # ids of tokens starting with a space or a tab (lazily)
        self.allowed = lru_cache(maxsize=4096)(self._allowed)

    def _allowed(self, rest: bytes) -> np.ndarray:
        """Ids of the tokens that start with `rest` (a contiguous range once sorted) or are a
        proper prefix of it."""
        lo = bisect.bisect_left(self._bytes, rest)
        hi = lo
        while hi < len(self._bytes) and self._bytes[hi].startswith(rest):
            hi += 1
        prefixes = [i for i in map(self._exact, (rest[:k] for k in range(1, len(rest)))) if i is not None]
        longer = self._ids[lo:hi]
        if rest[-1:] in (b" ", b"\t"):
            # Whitespace the editor put there (indentation after a line break, a space after a
            # word) is complete: the model must not add more of it, so after `rest` comes something else (a word, a line
            # break), or rest is rebuilt from shorter pieces ("   " + " return", as in training).
            n = len(rest)
            keep = [i for b, i in zip(self._bytes[lo:hi], longer.tolist(), strict=True) if len(b) > n and b[n] not in b" \t"]
            if keep or prefixes:
                longer = np.asarray(keep, dtype=np.int64)
        return unique_ids(np.concatenate([longer, np.asarray(prefixes, dtype=np.int64)]))

    def _exact(self, piece: bytes) -> int | None:
        """The id whose bytes are `piece` (of equal ones, the last: the highest id), or None."""
        k = bisect.bisect_right(self._bytes, piece) - 1
        return int(self._ids[k]) if k >= 0 and self._bytes[k] == piece else None

    def token_bytes(self, token: int) -> bytes:
        return self._tok.token_bytes(token)

    def no_leading_blank(self, logits: np.ndarray) -> np.ndarray:
        """Logits with every token that starts with a space or a tab at -inf (a copy)."""
        if self._blank is None:
            self._blank = np.asarray(
                [i for i in range(len(logits)) if self._tok.token_bytes(i)[:1] in (b" ", b"\t")], dtype=np.int64
            )
        out = np.array(logits, copy=True)
        out[self._blank] = -np.inf
        return out

    def advance(self, rest: bytes, token: int) -> bytes:
        """The constraint left after generating `token` under `rest`."""
        b = self._tok.token_bytes(token)
        return rest[len(b) :] if len(b) < len(rest) and rest.startswith(b) else b""

    def _text(self, token: int) -> str | None:
        if token in self._special:
            return None
        try:
            return self._tok.token_bytes(token).decode("utf-8") or None
        except UnicodeDecodeError:
            return None

    def heal(self, prompt: np.ndarray, max_tokens: int = MAX_HEALED_TOKENS) -> Healed:
        """Take back the last token when that is safe (at least one token stays, and the token is
        ordinary text that decodes on its own); when it ends a word that began in the tokens before
        it (`retur` as ` ret` + `ur`), take back the whole word, up to `max_tokens` tokens: else the
        word could only go on as the first pieces spell it, never as the token the model knows
        (` return`)."""
        prompt = np.asarray(prompt)
        if len(prompt) < 2 or max_tokens < 1:
            return Healed(prompt, "", b"")
        text = self._text(int(prompt[-1]))
        if text is None:
            return Healed(prompt, "", b"")
        k = 1
        while k < max_tokens and k + 1 < len(prompt) and _WORD_PIECE.fullmatch(text):
            before = self._text(int(prompt[-k - 1]))
            if before is None or not _WORD_START.fullmatch(before) or len(before) + len(text) > MAX_HEALED_CHARS:
                break
            text, k = before + text, k + 1
            if before[0] == " ":
                break  # the word's first piece (GPT-2 style: the space belongs to the word)
        # a run of blanks is taken back whole too: ")" + "\n" + "\n    " (how a text that ends in
        # blank lines and indentation tokenizes) was "\n\n   " + " def" in training, and with only
        # the last token taken back the model went on from a lone "\n" it never saw there
        while k < max_tokens and k + 1 < len(prompt) and not text.strip():
            before = self._text(int(prompt[-k - 1]))
            if before is None or before.strip() or len(before) + len(text) > MAX_HEALED_CHARS:
                break
            text, k = before + text, k + 1
        return Healed(prompt[:-k], text, text.encode("utf-8"))

    def constrain(self, logits: np.ndarray, rest: bytes) -> np.ndarray:
        """Logits with every token that does not fit `rest` at -inf (a copy), or `logits` itself
        when nothing is left to reproduce."""
        if not rest:
            return logits
        allowed = self.allowed(rest)
        out = np.full_like(logits, -np.inf)
        out[allowed] = logits[allowed]
        return out


class HealingConstraint:
    """The decode loop's logits hook (decoding.LogitsHook) for one healed prompt: while the dropped
    token's bytes are not reproduced, only tokens that fit them may be sampled. When they end in a
    space or a tab (indentation the editor put there) and a token ends exactly where they end, the
    next token may not start with more of it (`\t` then `\treturn` would indent one level more)."""

    def __init__(self, healer: TokenHealer, raw: bytes) -> None:
        self.healer = healer
        self.rest = raw
        self.guard = False  # the next token must not start with a space or a tab

    def active(self) -> bool:
        return bool(self.rest) or self.guard

    def apply(self, logits: np.ndarray) -> np.ndarray:
        if self.rest:
            return self.healer.constrain(logits, self.rest)
        return self.healer.no_leading_blank(logits)

    def accept(self, token: int) -> None:
        if self.rest:
            exact = self.healer.token_bytes(token) == self.rest
            self.guard = exact and self.rest[-1:] in (b" ", b"\t")
            self.rest = self.healer.advance(self.rest, token)
        else:
            self.guard = False
