"""The cache language model: the C++ n-gram counts against a plain-Python reference, incremental
document updates against a fresh count, the mixture against a NumPy computation, and the
workspace reader's limits."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_ngram import RefNGrams

from bitmamba_lsp.lsp.cache_model import CacheMixture, DocumentCache, Level, NGramIndex, replaced_span

V = 7  # a small vocabulary: many repeated contexts
IDS = st.lists(st.integers(0, V - 1), min_size=0, max_size=60)


def as_dict(hit):
    if hit is None:
        return None
    k, total, toks, counts = hit
    return (k, total, dict(zip(toks.tolist(), counts.tolist(), strict=True)))


@settings(max_examples=150, deadline=None)
@given(seqs=st.lists(IDS, min_size=1, max_size=4), removals=st.lists(st.integers(0, 3), max_size=3), ctx=IDS,
       order=st.integers(1, 5), min_order=st.integers(1, 3))
def test_counts_and_lookups_match_the_reference(seqs, removals, ctx, order, min_order) -> None:
    ix, ref = NGramIndex(order, V), RefNGrams(order)
    for s in seqs:
        a = np.asarray(s, dtype=np.int32)
        ix.update(a, 0, len(s), +1)
        ref.update(s, 0, len(s), +1)
    for r in removals:
        if r < len(seqs):
            s = seqs[r]
            ix.update(np.asarray(s, dtype=np.int32), 0, len(s), -1)
            ref.update(s, 0, len(s), -1)
    c = np.asarray(ctx, dtype=np.int32)
    assert as_dict(ix.lookup(c, min_order)) == ref.lookup(ctx, min_order)
    # an exclusion: the n-grams touching a window of the first sequence
    s = seqs[0]
    if len(s) > 2:
        ex, rex = NGramIndex(order, V), RefNGrams(order)
        a, b = len(s) // 3, 2 * len(s) // 3
        ex.update(np.asarray(s, dtype=np.int32), a, b + order, +1, touching=(a, b))
        rex.update(s, a, b + order, +1, touching=(a, b))
        if not removals:  # the exclusion only subtracts what the index holds
            assert as_dict(ix.lookup(c, min_order, ex)) == ref.lookup(ctx, min_order, rex)


@settings(max_examples=150, deadline=None)
@given(base=IDS, start=st.floats(0, 1), cut=st.integers(0, 8), new=IDS, built=st.floats(0, 1))
def test_an_edit_updates_the_counts_as_a_fresh_count_would(base, start, cut, new, built) -> None:
    """Whatever was built so far, an edit leaves the cache equal to counting the new text afresh
    (up to the built frontier, which then completes)."""
    order = 4
    old = np.asarray(base, dtype=np.int32)
    c = DocumentCache(NGramIndex(order, V))
    c.reset(old)
    c.build(int(built * (len(old) + 1)))
    a = int(start * len(base))
    ids = np.asarray(base[:a] + new + base[a + cut :], dtype=np.int32)
    first = next((i for i in range(min(len(old), len(ids))) if old[i] != ids[i]), min(len(old), len(ids)))
    c.edit(first, ids)
    c.build(len(ids))
    fresh = NGramIndex(order, V)
    fresh.update(ids, 0, len(ids), +1)
    assert c.index.tokens == fresh.tokens == max(0, len(ids) - 1)
    rng = np.random.default_rng(len(ids))
    for _ in range(20):
        ctx = rng.integers(0, V, size=rng.integers(1, 6)).astype(np.int32)
        assert as_dict(c.index.lookup(ctx, 1)) == as_dict(fresh.lookup(ctx, 1))


def test_replaced_span() -> None:
    old = np.asarray([1, 2, 3, 4, 5, 6])
    assert replaced_span(old, np.asarray([1, 2, 9, 9, 9, 5, 6]), 2) == (4, 5)
    assert replaced_span(old, np.asarray([1, 2, 5, 6]), 2) == (4, 2)


def test_the_mixture_is_a_nested_interpolation() -> None:
    """Against a NumPy computation of p = (1-l2)((1-l1) p_model + l1 q1) + l2 q2."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=V).astype(np.float32)
    outer, inner = NGramIndex(3, V), NGramIndex(3, V)
    outer.update(np.asarray([1, 2, 3, 1, 2, 4, 1, 2, 3], dtype=np.int32), 0, 9, +1)
    inner.update(np.asarray([0, 1, 2, 5], dtype=np.int32), 0, 4, +1)
    mix = CacheMixture([Level("workspace", outer), Level("file", inner)], [6, 1, 2], alpha=2.0, min_order=2)
    out = mix.apply(logits)
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    n1, q1 = 3, np.bincount([3, 4, 3], minlength=V) / 3  # after (1, 2): 3, 4, 3
    n2, q2 = 1, np.bincount([5], minlength=V) / 1
    l1, l2 = n1 / (n1 + 2.0), n2 / (n2 + 2.0)
    want = (1 - l2) * ((1 - l1) * p + l1 * q1) + l2 * q2
    got = np.exp(out.astype(np.float64) - out.max())
    got /= got.sum()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for t in range(V):
        assert mix.prob(t) == pytest.approx(want[t], rel=1e-5, abs=1e-7)
    mix.accept(5)
    assert mix.chosen == [pytest.approx(want[5], rel=1e-5)]


def test_tokens_an_earlier_hook_ruled_out_stay_out() -> None:
    """Token healing masks every token that does not start with the removed text (-inf); the
    mixture must not bring a cached token back (it did: after `Email` + a healed line break the
    workspace's `(object):` was written, shown as `bject):`). The cache's counts are conditioned on
    what is allowed: p = (1-l) p_model + l q' with q' and l from the allowed counts only."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=V).astype(np.float32)
    ix = NGramIndex(3, V)
    ix.update(np.asarray([1, 2, 3, 1, 2, 3, 1, 2, 4, 1, 2, 6], dtype=np.int32), 0, 12, +1)  # after (1, 2): 3, 3, 4, 6
    masked = logits.copy()
    masked[[3, 5]] = -np.inf  # 3: the cache's favourite
    mix = CacheMixture([Level("workspace", ix)], [1, 2], alpha=2.0, min_order=2)
    out = mix.apply(masked)
    assert np.isneginf(out[3]) and np.isneginf(out[5])
    assert mix.prob(3) == 0.0
    p = np.exp(masked.astype(np.float64) - masked[np.isfinite(masked)].max())
    p /= p.sum()
    n, q = 2, np.bincount([4, 6], minlength=V) / 2
    lam = n / (n + 2.0)
    want = (1 - lam) * p + lam * q
    got = np.exp(out.astype(np.float64) - out.max())
    got /= got.sum()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # every cached token ruled out: the level adds nothing
    masked[[4, 6]] = -np.inf
    mix = CacheMixture([Level("workspace", ix)], [1, 2], alpha=2.0, min_order=2)
    np.testing.assert_array_equal(mix.apply(masked), masked)


def test_token_ids_outside_the_vocabulary_are_refused() -> None:
    ix = NGramIndex(3, V)
    with pytest.raises(ValueError, match="vocabulary"):
        ix.update(np.asarray([1, V, 2], dtype=np.int32), 0, 3, +1)


def test_the_workspace_reader_is_bounded_and_safe(tmp_path) -> None:
    from bitmamba_lsp.lsp.workspace import ScanLimits, scan

    (tmp_path / "a.py").write_text("import os\nx = 1\n")
    (tmp_path / "ignored.py").write_text("secret = 1\n")
    (tmp_path / ".gitignore").write_text("ignored.py\nbuild/\n*.log\n!keep.log\n")
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "b.py").write_text("y = 2\n")
    (tmp_path / "bin.py").write_bytes(b"\x00\x01binary")
    (tmp_path / "latin.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (tmp_path / "huge.py").write_text("z = 1\n" * 200_000)
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    sub = tmp_path / "pkg"
    sub.mkdir()
    (sub / "c.py").write_text("def f():\n    return 3\n")
    os.symlink(tmp_path, sub / "loop")  # a symlink loop: never followed
    unreadable = sub / "no.py"
    unreadable.write_text("x = 0\n")
    unreadable.chmod(0)
    got = {p.relative_to(tmp_path).as_posix(): ids for p, _, ids in scan([tmp_path], list, ScanLimits(max_file_bytes=100_000))}
    assert set(got) >= {"a.py", "pkg/c.py"}
    assert not set(got) & {"ignored.py", "build/b.py", "bin.py", "latin.py", "huge.py", "image.png"}
    assert not any(k.startswith("pkg/loop") for k in got)
    # the token budget holds
    few = list(scan([tmp_path], list, ScanLimits(max_tokens=20)))
    assert sum(len(ids) for _, _, ids in few) <= 20
