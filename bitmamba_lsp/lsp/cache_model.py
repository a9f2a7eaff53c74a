"""Workspace memory: n-gram caches over the tokens the user works with, mixed into the model's
next-token distribution.

Code is local: identifiers, argument lists and whole lines repeat within a file and a repository
far more than any model of code in general knows (Tu et al., FSE 2014, "On the localness of
software"; Hellendoorn & Devanbu, FSE 2017: a nested cache beats larger neural models, the
file-level cache having the final say). A small model cannot know this repository's names; a
cache can.

- `NGramIndex` (C++, `_core.NGramIndex`): counts of the next token after every context of
  1..order tokens over a set of token sequences; windows are added and removed incrementally, so an
  edit costs work in proportion to the edit (never a re-scan).
- `CacheLevels`: the nested caches one request sees (workspace, other open documents, this
  document), innermost last; this document's cursor line is excluded (its n-grams would only
  repeat what is being typed).
- `CacheMixture`: the decode loop's logits hook. At each step, for each level from the outermost
  in, the distribution of the longest matching context (at least `min_order` tokens) is mixed in
  with a confidence weight `n / (n + alpha)` (n: how often that context was seen), so the
  innermost level has the final say. It also records the mixture's probability of each chosen
  token, which the confidence cut uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bitmamba_lsp import _core
from bitmamba_lsp.engine.healing import unique_ids

NGramIndex = _core.NGramIndex  # the counts live in C++ (core/src/ngram.cpp): compact, and fast to update


def replaced_span(old: np.ndarray, new: np.ndarray, first: int) -> tuple[int, int]:
    """Ends (exclusive) of the replaced token windows old[first:e_old] -> new[first:e_new]: the
    arrays agree before `first` and after the windows."""
    n = min(len(old), len(new)) - first
    if n <= 0:
        return len(old), len(new)
    a, b = old[len(old) - n :], new[len(new) - n :]
    diff = np.flatnonzero(a[::-1] != b[::-1])
    same = int(diff[0]) if len(diff) else n
    return len(old) - same, len(new) - same


class DocumentCache:
    """The n-gram counts of one document's tokens, kept in step with its edits, into its own index
    and any shared ones (the union of the open documents). Built in background slices
    (`build`); an edit updates the part already built, in proportion to the edit."""

    def __init__(self, index: NGramIndex, shared: tuple[NGramIndex, ...] = ()) -> None:
        self.index = index
        self.indexes = (index, *shared)
        self.ids: np.ndarray = np.zeros(0, dtype=np.int32)
        self.built = 0  # n-grams whose next token is at ids[:built] are counted

    @property
    def complete(self) -> bool:
        return self.built >= len(self.ids)

    def _update(self, ids: np.ndarray, lo: int, hi: int, sign: int) -> None:
        k = self.index.order
        a = max(0, lo - k)
        window = np.ascontiguousarray(ids[a:hi], dtype=np.int32)
        for ix in self.indexes:
            ix.update(window, lo - a, hi - a, sign)

    def reset(self, ids: np.ndarray) -> None:
        """A new text (opened): forget the old counts; `build` counts the new ones."""
        if self.built:
            self._update(self.ids, 0, self.built, -1)
        self.ids, self.built = ids, 0

    def build(self, n: int) -> int:
        """Count the next `n` positions; returns how many were counted."""
        hi = min(len(self.ids), self.built + n)
        done = hi - self.built
        if done > 0:
            self._update(self.ids, self.built, hi, +1)
            self.built = hi
        return done

    def edit(self, first: int, ids: np.ndarray) -> None:
        """The document's tokens became `ids`; the first changed token is `first`."""
        old = self.ids
        first = min(first, len(old), len(ids))
        e_old, e_new = replaced_span(old, ids, first)
        k = self.index.order
        if self.built <= first:
            pass  # nothing counted there yet
        elif self.built < e_old + k:
            self._update(old, first, self.built, -1)  # the frontier was in the edit: recount from it
            self.built = first
        else:
            # every n-gram whose window touches the replaced tokens: next token in [first, end + order)
            self._update(old, first, e_old + k, -1)
            self._update(ids, first, e_new + k, +1)
            self.built += e_new - e_old
        self.ids = ids

    def drop(self) -> None:
        """The document closed: take its counts out of the shared indexes."""
        self.reset(np.zeros(0, dtype=np.int32))


@dataclass(frozen=True)
class Level:
    name: str
    index: NGramIndex
    exclude: NGramIndex | None = None  # counts to subtract (this document's cursor line)


class CacheMixture:
    """A LogitsHook mixing the cache levels into the model's distribution (see the module doc)."""

    def __init__(
        self, levels: Sequence[Level], history: Sequence[int], *, alpha: float = 2.0, min_order: int = 2
    ) -> None:
        self.levels = tuple(levels)
        self.history = list(history)
        self.alpha = alpha
        self.min_order = min_order
        self.order = max((lv.index.order for lv in self.levels), default=1)
        self.probs: dict[int, float] = {}  # the last mixture's probability of the cache's tokens
        self.rest_scale = 1.0  # and the factor on every other token's model probability
        self.chosen: list[float] = []  # the mixture's probability of each accepted token
        self._logz = 0.0
        self._logits: np.ndarray | None = None

    def active(self) -> bool:
        return True  # it also measures the confidence of every token

    def _distributions(self, logits: np.ndarray) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Per level, (its weight, tokens, their probabilities) after the longest matching context,
        among the tokens `logits` still allows: a token an earlier hook ruled out (token healing's
        constraint, -inf) stays out, and the cache's counts are conditioned on the same constraint
        (weight from the counts that remain)."""
        ctx = np.asarray(self.history[-self.order :], dtype=np.int32)
        out = []
        for lv in self.levels:
            hit = lv.index.lookup(ctx, self.min_order, lv.exclude)
            if hit is not None:
                _, total, toks, counts = hit
                allowed = np.isfinite(logits[toks])
                if not allowed.all():
                    toks, counts = toks[allowed], counts[allowed]
                    total = int(counts.sum())
                if total > 0:
                    out.append((total / (total + self.alpha), toks, counts / total))
        return out

    def apply(self, logits: np.ndarray) -> np.ndarray:
        m = float(np.max(logits))
        self._logz = m + float(np.log(np.sum(np.exp(logits - m))))
        self._logits = logits
        dists = self._distributions(logits)
        self.probs = {}
        self.rest_scale = 1.0
        if not dists:
            return logits
        toks = unique_ids(np.concatenate([d[1] for d in dists]))
        probs = np.exp(logits[toks].astype(np.float64) - self._logz)
        scale = 1.0  # the model's share after each mixing step
        for lam, t, q in dists:  # outermost first: the innermost level has the final say
            probs *= 1.0 - lam
            scale *= 1.0 - lam
            probs[np.searchsorted(toks, t)] += lam * q
        self.probs = dict(zip(toks.tolist(), probs.tolist(), strict=True))
        self.rest_scale = scale
        out = logits.copy()
        # logits are only ever compared: give every cache token its mixture probability, in log space
        out[toks] = np.log(np.maximum(probs, 1e-30)) - np.log(max(scale, 1e-30)) + self._logz
        return out

    def prob(self, token: int) -> float:
        """The mixture's probability of `token` at the last step."""
        if token in self.probs:
            return self.probs[token]
        if self._logits is None:
            return 1.0
        return self.rest_scale * float(np.exp(self._logits[token] - self._logz))

    def accept(self, token: int) -> None:
        self.chosen.append(self.prob(token))
        self.history.append(token)
