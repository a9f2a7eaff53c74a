"""The C++ sampler: greedy, top-k, min-p, top-p, temperature, penalty, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from bitmamba_lsp import _core


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_greedy_is_argmax() -> None:
    rng = np.random.default_rng(0)
    s = _core.Sampler(1000, temperature=0.0)
    for _ in range(50):
        logits = rng.standard_normal(1000).astype(np.float32)
        assert s.sample(logits) == int(np.argmax(logits))
    s = _core.Sampler(10, temperature=0.9, top_k=1, seed=3)
    logits = rng.standard_normal(10).astype(np.float32)
    assert all(s.sample(logits) == int(np.argmax(logits)) for _ in range(100))


def test_seed_determinism() -> None:
    logits = np.random.default_rng(1).standard_normal(500).astype(np.float32)
    a = _core.Sampler(500, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=42)
    b = _core.Sampler(500, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=42)
    c = _core.Sampler(500, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=43)
    sa = [a.sample(logits) for _ in range(200)]
    assert sa == [b.sample(logits) for _ in range(200)]
    assert sa != [c.sample(logits) for _ in range(200)]
    a.reseed(42)
    assert [a.sample(logits) for _ in range(200)] == sa


def test_pure_temperature_matches_softmax() -> None:
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 3.0], np.float32)
    for temp in (1.0, 0.5):
        s = _core.Sampler(6, temperature=temp, top_k=0, top_p=1.0, min_p=0.0, seed=7)
        n = 40000
        counts = np.bincount([s.sample(logits) for _ in range(n)], minlength=6) / n
        expected = softmax(logits.astype(np.float64) / temp)
        assert np.abs(counts - expected).max() < 0.01


def test_top_k_min_p_top_p_restrict_the_support() -> None:
    rng = np.random.default_rng(2)
    V = 50257
    logits = (rng.standard_normal(V) * 3).astype(np.float32)
    order = np.argsort(-logits)
    p = softmax(logits.astype(np.float64))

    s = _core.Sampler(V, temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, seed=1)
    assert {s.sample(logits) for _ in range(500)} <= set(order[:5].tolist())

    s = _core.Sampler(V, temperature=1.0, top_k=0, top_p=1.0, min_p=0.2, seed=1)
    got = {s.sample(logits) for _ in range(500)}
    assert got <= set(np.nonzero(p >= 0.2 * p.max())[0].tolist())

    # top-p alone over the whole vocabulary (exercises the growing partial selection)
    flat = (rng.standard_normal(V) * 0.5).astype(np.float32)
    pf = softmax(flat.astype(np.float64))
    of = np.argsort(-flat)
    nucleus = int(np.searchsorted(np.cumsum(pf[of]), 0.5) + 1)
    assert nucleus > 1000  # far more than the first selection round
    s = _core.Sampler(V, temperature=1.0, top_k=0, top_p=0.5, min_p=0.0, seed=5)
    got = [s.sample(flat) for _ in range(2000)]
    allowed = set(of[: nucleus + 1].tolist())
    assert set(got) <= allowed
    assert len(set(got)) > 500  # and it really samples across the nucleus


def test_repetition_penalty_once_per_distinct_token_and_protected() -> None:
    logits = np.zeros(10, np.float32)
    logits[3], logits[4], logits[6] = 10.0, 4.5, -2.0
    s = _core.Sampler(10, temperature=0.0, repetition_penalty=2.0, penalty_window=4)
    for t in (3, 3, 3):
        s.accept(t)
    assert s.sample(logits) == 3  # 10 / 2 = 5 > 4.5: divided once, not three times
    logits[4] = 5.5
    assert s.sample(logits) == 4
    # negative logits are multiplied
    neg = np.full(10, -1.0, np.float32)
    neg[6], neg[7] = -0.6, -1.0
    s2 = _core.Sampler(10, temperature=0.0, repetition_penalty=2.0)
    s2.accept(6)
    assert s2.sample(neg) != 6  # -0.6 * 2 = -1.2 < -1.0
    # protected ids are never penalised
    s3 = _core.Sampler(10, temperature=0.0, repetition_penalty=2.0, protected_ids=[3])
    s3.accept(3)
    assert s3.sample(logits) == 3
    # the window is bounded: after 4 other tokens, 3 is no longer penalised
    for t in (0, 1, 2, 5):
        s.accept(t)
    logits[4] = 9.0
    assert s.sample(logits) == 3
    s.accept(3)
    s.reset_history()
    assert s.sample(logits) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1.0},
        {"top_k": -1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"min_p": 1.0},
        {"repetition_penalty": 0.0},
        {"penalty_window": -3},
    ],
)
def test_invalid_config_is_rejected(kwargs) -> None:
    with pytest.raises(ValueError):
        _core.Sampler(10, **kwargs)
    with pytest.raises(ValueError):
        _core.Sampler(10).sample(np.zeros(9, np.float32))


def test_top_k_over_a_large_flat_vocabulary() -> None:
    """The one-pass top-k (threshold raised as the buffer fills) on a vocabulary far larger than
    its buffer: every draw is among the true k best, ties at the threshold broken by index, and the
    draws follow the softmax of those k logits."""
    rng = np.random.default_rng(3)
    V, k = 50_000, 40
    logits = rng.standard_normal(V).astype(np.float32)
    logits[[7, 49_000]] = logits.max() + 0.25  # a tie at the top, far apart
    order = np.lexsort((np.arange(V), -logits))  # by logit, then index (the sampler's total order)
    top = order[:k]
    s = _core.Sampler(V, temperature=1.0, top_k=k, top_p=1.0, min_p=0.0, seed=11)
    n = 20_000
    draws = np.asarray([s.sample(logits.copy()) for _ in range(n)])
    assert set(np.unique(draws)) <= set(top.tolist())
    p = np.exp(logits[top] - logits[top].max())
    p /= p.sum()
    counts = np.asarray([(draws == t).sum() for t in top])
    # a 6-sigma band per token: it cannot fail by chance, a wrong support or weighting fails it
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) < 6 * sigma + 1)


@pytest.mark.parametrize("vocab", [7, 64, 79, 1037, 50257])
def test_top_k_support_with_nan_inf_and_a_short_last_block(vocab: int) -> None:
    """The block-maxima pass (64 logits per block, SIMD lanes, a short tail) finds the same top-k
    as NumPy wherever the best logits sit, NaN never wins and -inf never enters the support."""
    rng = np.random.default_rng(vocab)
    for trial in range(6):
        logits = rng.standard_normal(vocab).astype(np.float32)
        logits[rng.integers(0, vocab, max(1, vocab // 20))] = np.nan
        logits[rng.integers(0, vocab, max(1, vocab // 20))] = -np.inf
        k = min(3, vocab - 1)
        # plant the best logits in the tail block, in the first lanes, or at random
        spots = {0: np.arange(vocab - k, vocab), 1: np.arange(k)}.get(trial % 3, rng.choice(vocab, k, replace=False))
        logits[spots] = 10.0 + np.arange(k, dtype=np.float32) * 0.01
        finite = np.where(np.isnan(logits), -np.inf, logits)
        best = set(np.argsort(-finite, kind="stable")[:k].tolist())
        s = _core.Sampler(vocab, temperature=1.0, top_k=k, top_p=1.0, min_p=0.0, seed=trial)
        drawn = {s.sample(logits) for _ in range(300)}
        assert drawn == best


def _nucleus(logits: np.ndarray, temp: float, top_p: float, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of sampling without top-k: the kept ids (by logit, then index) and their
    probabilities (float64)."""
    finite = np.where(np.isnan(logits), -np.inf, logits).astype(np.float64)
    m = finite.max()
    keep = finite >= (m + temp * np.log(min_p) if min_p > 0 else -np.inf)
    keep &= np.isfinite(finite)
    ids = np.nonzero(keep)[0]
    ids = ids[np.lexsort((ids, -finite[ids]))]
    p = np.exp((finite[ids] - m) / temp)
    if top_p < 1:
        c = np.cumsum(p)
        ids, p = ids[: int(np.searchsorted(c, top_p * p.sum())) + 1], p[: int(np.searchsorted(c, top_p * p.sum())) + 1]
    return ids, p / p.sum()


@pytest.mark.parametrize(
    ("vocab", "scale", "temp", "top_p", "min_p"),
    [
        (50257, 3.0, 0.8, 1.0, 0.0),  # temperature alone over a GPT-2-sized vocabulary
        (50257, 3.0, 1.0, 1.0, 0.02),  # min-p alone
        (50257, 3.0, 0.7, 0.9, 0.0),  # top-p alone, a peaked distribution
        (50257, 0.4, 0.8, 0.9, 0.0),  # top-p alone, nearly flat (a random model): tens of thousands kept
        (3000, 2.0, 1.0, 0.5, 0.05),  # top-p and min-p
        (77, 1.0, 1.3, 0.99, 0.0),  # a short last block
    ],
)
def test_sampling_without_top_k_follows_the_reference(vocab, scale, temp, top_p, min_p) -> None:
    """Without top-k the sampler works on the whole vocabulary at once (masses per block, top-p by a
    search over probability levels): its draws stay inside the reference's kept set (give or take
    the one token at the top-p boundary, which float32 masses may place either side) and the most
    likely tokens' frequencies match the reference's probabilities; NaN and -inf are never drawn."""
    rng = np.random.default_rng(vocab + int(scale * 10))
    logits = (rng.standard_normal(vocab) * scale).astype(np.float32)
    logits[rng.integers(0, vocab, 5)] = np.nan
    logits[rng.integers(0, vocab, 5)] = -np.inf
    bad = set(np.nonzero(~np.isfinite(logits))[0].tolist())
    ids, p = _nucleus(logits, temp, top_p, min_p)
    finite = np.where(np.isnan(logits), -np.inf, logits)
    order = np.lexsort((np.arange(vocab), -finite))
    allowed = set(order[: len(ids) + 1].tolist()) - bad
    s = _core.Sampler(vocab, temperature=temp, top_k=0, top_p=top_p, min_p=min_p, seed=vocab)
    n = 20_000
    draws = np.asarray([s.sample(logits.copy()) for _ in range(n)])
    assert set(np.unique(draws).tolist()) <= allowed
    top = ids[:20]
    counts = np.asarray([(draws == t).sum() for t in top])
    sigma = np.sqrt(n * p[:20] * (1 - p[:20]))
    assert np.all(np.abs(counts - n * p[:20]) < 6 * sigma + 2), (counts, n * p[:20])
    # it samples across the whole kept set: as many distinct tokens as the reference expects
    expected = float(np.sum(1 - (1 - p) ** n))
    assert abs(len(np.unique(draws)) - expected) < 0.05 * expected + 10, (len(np.unique(draws)), expected)


def test_top_p_keeps_only_the_best_token_when_it_holds_the_mass() -> None:
    V = 50257
    logits = np.zeros(V, np.float32)
    logits[[123, 40_000]] = 20.0  # a tie at the top: by index, 123 comes first
    s = _core.Sampler(V, temperature=1.0, top_k=0, top_p=0.3, min_p=0.0, seed=2)
    assert {s.sample(logits.copy()) for _ in range(300)} == {123}
    s = _core.Sampler(V, temperature=1.0, top_k=0, top_p=0.7, min_p=0.0, seed=2)
    assert {s.sample(logits.copy()) for _ in range(300)} == {123, 40_000}
