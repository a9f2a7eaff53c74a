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
