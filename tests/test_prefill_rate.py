"""The prefill rate kept in the user's cache (lsp/prefill_rate.py): measured once per model file,
thread count and machine, read back at the next start; a changed file, other threads or a damaged
cache file measure again, and a cache that cannot be written never fails a load."""

from __future__ import annotations

import json
import os

import pytest

from bitmamba_lsp.engine import load
from bitmamba_lsp.lsp import prefill_rate as rate_cache


@pytest.fixture
def measured(monkeypatch, tmp_path) -> list[float]:
    """Each measure made (its fake rate), with the cache in a fresh folder."""
    monkeypatch.setenv("BITMAMBA_LSP_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[float] = []

    def fake(model, tokens: int = 64, budget_s: float = 0.02) -> float:
        calls.append(1000.0 + len(calls))
        return calls[-1]

    monkeypatch.setattr(rate_cache, "measure_prefill_rate", fake)
    return calls


def test_measured_once_then_read_back(model_factory, measured, tmp_path) -> None:
    path, _, _ = model_factory(256, 32, 2, 2, seed=21)
    m1 = load(str(path), threads=1)
    assert rate_cache.prefill_rate(m1) == 1000.0
    assert rate_cache.prefill_rate(load(str(path), threads=1)) == 1000.0  # a new load: read back
    assert measured == [1000.0]
    stored = json.loads((tmp_path / "cache" / rate_cache.FILE).read_text())
    assert list(stored.values()) == [1000.0]
    # other threads: another rate
    assert rate_cache.prefill_rate(load(str(path), threads=2)) == 1001.0
    # the file changed (a new model written over it): measured again
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert rate_cache.prefill_rate(load(str(path), threads=1)) == 1002.0
    assert len(measured) == 3


def test_a_damaged_or_unwritable_cache_measures(model_factory, measured, tmp_path, monkeypatch) -> None:
    path, _, _ = model_factory(256, 32, 2, 2, seed=22)
    model = load(str(path), threads=1)
    cache = tmp_path / "cache" / rate_cache.FILE
    cache.parent.mkdir(parents=True)
    for junk in ("{not json", "[1, 2]", json.dumps({rate_cache.key(model): "fast"}), json.dumps({rate_cache.key(model): -5})):
        cache.write_text(junk)
        assert rate_cache.prefill_rate(model) == measured[-1]
    assert len(measured) == 4
    assert json.loads(cache.read_text()) == {rate_cache.key(model): measured[-1]}  # rewritten whole
    # a cache folder that is a file: measured every time, never an error
    monkeypatch.setenv("BITMAMBA_LSP_CACHE_DIR", str(cache))
    assert rate_cache.prefill_rate(model) == measured[-1] and len(measured) == 5


def test_the_cache_keeps_a_bounded_number_of_entries(model_factory, measured, monkeypatch) -> None:
    path, _, _ = model_factory(256, 32, 2, 2, seed=23)
    model = load(str(path), threads=1)
    monkeypatch.setattr(rate_cache, "MAX_ENTRIES", 3)
    for cpu in "abcde":  # five machines sharing a home folder
        monkeypatch.setattr(rate_cache, "_cpu", lambda cpu=cpu: cpu)
        rate_cache.prefill_rate(model)
    assert len(rate_cache._read()) == 3
    assert rate_cache.cached(model) == measured[-1]  # the newest kept
    monkeypatch.setattr(rate_cache, "_cpu", lambda: "a")
    assert rate_cache.cached(model) is None  # the oldest gone


def test_a_layer_repetition_or_an_adapter_is_another_rate(model_factory, measured) -> None:
    path, _, _ = model_factory(256, 32, 2, 2, seed=24)
    plain = load(str(path), threads=1)
    repeated = load(str(path), threads=1, repeat=(0, 1, 2))
    assert rate_cache.key(plain) != rate_cache.key(repeated)
    rate_cache.prefill_rate(plain)
    rate_cache.prefill_rate(repeated)  # not the plain model's rate read back
    assert len(measured) == 2
    plain.extra["lora"] = {"path": "/x/adapter.bin", "rank": 4, "alpha": 8.0}  # as lora.attach records it
    assert rate_cache.key(plain) != rate_cache.key(load(str(path), threads=1))


def test_absurd_stored_rates_are_damage_and_a_higher_rate_seen_later_is_kept(model_factory, measured, tmp_path) -> None:
    path, _, _ = model_factory(256, 32, 2, 2, seed=25)
    model = load(str(path), threads=1)
    cache = tmp_path / "cache" / rate_cache.FILE
    cache.parent.mkdir(parents=True)
    k = rate_cache.key(model)
    for junk in ('{"%s": Infinity}', '{"%s": 1e400}', '{"%s": true}', '{"%s": 0.5}', '{"%s": NaN}'):
        cache.write_text(junk % k)
        assert rate_cache.cached(model) is None, junk
    rate_cache.store(model, 1000.0)
    rate_cache.raised(model, 1100.0)  # within 25 %: a measure's noise, not kept
    assert rate_cache.cached(model) == 1000.0
    rate_cache.raised(model, 3000.0)  # background prefill saw a much faster rate: kept
    assert rate_cache.cached(model) == 3000.0
