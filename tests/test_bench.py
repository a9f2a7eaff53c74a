"""The benchmark helpers: the engine's stage clock and the bandwidth probe report consistent numbers."""

from __future__ import annotations

import numpy as np

from bitmamba_lsp import _core
from bitmamba_lsp.bench import profile_stages
from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin


def test_stage_profile_adds_up(model_factory):
    path, _, _ = model_factory(1000, 128, 3, 4, seed=2)
    model = load_bin(path, threads=2)
    before = model.step(model.new_state(), 5)
    prof = profile_stages(model, tokens=50, repeats=3)
    parts = prof["matmul"] + prof["lm_head"] + prof["norm_quantize"] + prof["conv_scan"]
    assert all(v >= 0 for v in prof.values())
    assert prof["matmul"] > 0 and prof["lm_head"] > 0 and prof["conv_scan"] > 0 and prof["sampling"] > 0
    assert parts <= prof["step"] * 1.0001
    assert prof["non_matrix"] == prof["norm_quantize"] + prof["conv_scan"] + prof["other"] + prof["sampling"]
    assert prof["runs"] == 3 and 0 < prof["non_matrix_min"] <= prof["non_matrix_median"]
    # profiling is off again and changed nothing
    np.testing.assert_array_equal(model.step(model.new_state(), 5), before)
    assert model.core.profile()["steps"] == 0  # switching it off reset the totals


def test_read_bandwidth_probe():
    r = _core.read_bandwidth(1 << 20, 1, 3)
    assert r["best_gbs"] >= r["median_gbs"] > 0.1


def test_markdown_table_rows_have_the_header_cell_count(model_factory):
    from bitmamba_lsp.bench import bench_model, markdown_table

    path, _, _ = model_factory(300, 64, 2, 4, seed=3)
    r = bench_model(path, threads=1, repeats=1, decode_tokens=4, prefill_lengths=(4, 8), batch_sizes=(1, 2))
    lines = markdown_table([r, r]).splitlines()
    cells = [line.count("|") for line in lines]
    assert len(lines) == 4 and len(set(cells)) == 1, lines
    assert set(lines[1]) == {"|", "-"}
