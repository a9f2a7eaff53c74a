"""Checkpoint tracks and the memory budget (LRU across documents, thinning within one)."""

from __future__ import annotations

import numpy as np
import pytest

from bitmamba_lsp.engine.checkpoints import Track
from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin
from bitmamba_lsp.lsp.prompt import token_prompt
from bitmamba_lsp.lsp.statecache import StateStore


@pytest.fixture(scope="module")
def model(model_factory):
    path, _, _ = model_factory(256, 64, 2, 4)
    return load_bin(path, threads=1)


def states(model, n: int):
    return [model.new_state() for _ in range(n)]


def test_track_best_truncate_and_lcp(model) -> None:
    seq = np.arange(100, dtype=np.int32)
    t = Track(seq)
    for n, s in zip((10, 20, 30, 40), states(model, 4), strict=True):
        t.put(n, s)
    t.put(500, model.new_state())  # beyond the sequence: ignored
    assert t.positions == [10, 20, 30, 40]
    assert t.best(35)[0] == 30 and t.best(9) == (0, None) and t.best(10)[0] == 10
    other = seq.copy()
    other[25] = -1
    assert t.lcp(other) == 25
    t.truncate(25, other)
    assert t.positions == [10, 20] and t.seq is other
    t.drop([10])
    assert t.positions == [20]


def test_checkpoint_plan() -> None:
    prompt = token_prompt(np.arange(300), own=200)
    # sparse every 64 tokens of the part shared with the document track, dense over the last 4
    plan = prompt.plan(0, spacing=64, dense=4, document_limit=200)
    assert plan.document == [64, 128, 192] and plan.cursor == [297, 298, 299, 300]
    assert plan.positions == [64, 128, 192, 297, 298, 299, 300]
    assert prompt.plan(298, spacing=64, dense=4, document_limit=300).positions == [299, 300]
    assert prompt.shared == 200


def test_lru_eviction_then_thinning(model) -> None:
    sb = model.state_bytes
    store = StateStore(sb, budget_bytes=10 * sb, spacing=8, dense=2)
    for uri in ("a", "b", "c"):
        d = store.get(uri)
        d.doc.seq = np.zeros(100, np.int32)
        for n, s in zip(range(8, 48, 8), states(model, 5), strict=True):
            d.doc.put(n, s)
    store.docs["a"].last_used = 1.0
    store.docs["b"].last_used = 2.0
    store.docs["c"].last_used = 3.0
    assert store.nbytes() == 15 * sb
    store.enforce_budget(active="c")
    # the least recently used document went first; the active one is intact
    assert store.docs["a"].count() == 0 and store.docs["c"].count() == 5
    assert store.nbytes() <= 10 * sb and store.evictions == 1
    # with only the active document over budget, its document checkpoints are thinned
    store.budget = 3 * sb
    store.enforce_budget(active="c")
    assert store.nbytes() <= 3 * sb and store.docs["c"].count() >= 1
    store.drop("c")
    assert "c" not in store.docs


def test_background_prefill_reaches_a_cursor_between_spaced_checkpoints(model) -> None:
    """A request farther from the last document checkpoint than its budget answers from a window;
    background prefill then puts a checkpoint exactly at that place, even where it lies less than a
    spacing past the last one (the 255M shape: spacing 256, ~100-150 tokens per request), and the
    next request there resumes from it with the state a full prefill gives."""
    store = StateStore(model.state_bytes, budget_bytes=1000 * model.state_bytes, spacing=32, dense=2)
    ids = (np.arange(200) * 7 % 256).astype(np.int32)
    d = store.get("u")
    d.set_document(np.zeros(0, np.int32), ids, prefill=True)
    while store.needs_prefill(d):
        store.prefill_slice(model, d, 64, None)
    assert d.doc.positions == [32, 64, 96, 128, 160, 192]  # the end is 8 short of a spacing: not wanted
    cursor = 150  # 22 past the checkpoint at 128, more than a request may feed
    prompt = token_prompt(ids[:cursor], own=cursor)
    got = store.feed(model, "u", prompt, max_feed=10)
    assert got is not None and got.approximate
    assert store.needs_prefill(d)
    while store.needs_prefill(d):
        store.prefill_slice(model, d, 64, None)
    assert cursor in d.doc.positions
    again = store.feed(model, "u", token_prompt(ids[: cursor + 1], own=cursor + 1), max_feed=10)
    assert again is not None and not again.approximate and again.resumed == cursor and again.fed == 1
    fresh = model.new_state()
    want = model.prefill(fresh, ids[: cursor + 1])
    np.testing.assert_array_equal(again.logits, want)
