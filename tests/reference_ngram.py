"""An independent, plain-Python n-gram count table (exact tuple keys), the reference that the C++
NGramIndex is checked against in tests/test_cache_model.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


class RefNGrams:
    def __init__(self, order: int) -> None:
        self.order = order
        self.counts: dict[tuple[int, ...], Counter[int]] = {}

    def update(self, ids: Sequence[int], lo: int, hi: int, sign: int, touching: tuple[int, int] | None = None) -> None:
        ids = list(ids)
        for i in range(max(lo, 1), min(hi, len(ids))):
            for k in range(1, min(self.order, i) + 1):
                if touching is not None and not (i - k < touching[1] and i >= touching[0]):
                    continue
                ctx = tuple(ids[i - k : i])
                c = self.counts.setdefault(ctx, Counter())
                if sign > 0:
                    c[ids[i]] += 1
                elif c[ids[i]] > 0:
                    c[ids[i]] -= 1
                c += Counter()  # drop zeros
                if not c:
                    del self.counts[ctx]

    def lookup(self, ctx: Sequence[int], min_order: int, exclude: RefNGrams | None = None):
        """(order, total, {token: count}) of the longest seen context >= min_order, or None."""
        best = None
        for k in range(1, min(self.order, len(ctx)) + 1):
            key = tuple(ctx[len(ctx) - k :])
            c = Counter(self.counts.get(key, {}))
            if exclude is not None:
                c.subtract(exclude.counts.get(key, {}))
                c = Counter({t: n for t, n in c.items() if n > 0})
            if not c:
                break
            if k >= min_order:
                best = (k, sum(c.values()), dict(c))
        return best
