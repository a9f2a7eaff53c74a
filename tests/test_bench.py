"""The benchmark helpers: the engine's stage clock and the bandwidth probe report consistent numbers."""

from __future__ import annotations

import numpy as np
import pytest

from bitmamba_lsp import _core
from bitmamba_lsp.bench import profile_stages, profile_verification
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


def test_batched_pass_profile_adds_up(model_factory):
    """The stage clock also times prefill: a verification step's stages are within its whole time,
    its lm_head covers every position (more than one single step's), and profiling changes no result."""
    path, _, _ = model_factory(1000, 128, 3, 4, seed=2)
    model = load_bin(path, threads=2)
    ids = np.arange(8, dtype=np.int32) * 7 + 100
    before = model.core.prefill(model.new_state(), ids, True, True)[0]
    prof = profile_verification(model, tokens=8, repeats=5)
    for part in (prof["single_step_ms"], prof["verification_ms"]):
        assert all(v >= 0 for v in part.values()) and part["matmul"] > 0 and part["conv_scan"] > 0
    # in every run the stages lie within the whole pass (a sum of medians need not)
    assert 0 < prof["parts_of_step_max"]["single"] <= 1.0001
    assert 0 < prof["parts_of_step_max"]["verification"] <= 1.0001
    assert prof["verification_ms"]["lm_head"] > prof["single_step_ms"]["lm_head"]
    assert prof["vs_step"]["step"] == prof["verification_ms"]["step"] / prof["single_step_ms"]["step"]
    assert prof["runs"] == 5 and 0 < prof["verification_min_ms"] <= prof["verification_ms"]["step"]
    np.testing.assert_array_equal(model.core.prefill(model.new_state(), ids, True, True)[0], before)
    assert model.core.profile()["steps"] == 0


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


def test_interleaved_rounds_give_per_round_ratios(model_factory):
    """Sampled decode and each prefill are timed in the same rounds as greedy decode; the ratios
    reported are those of each round's own measurements (recomputed here from the raw times)."""
    from bitmamba_lsp.bench import bench_model, per_round

    assert per_round([2.0, 3.0, 12.0], [1.0, 2.0, 4.0]) == {"median": 2.0, "min": 1.5, "max": 3.0}
    for bad in (([], []), ([1.0], [1.0, 2.0])):
        with pytest.raises(ValueError):
            per_round(*bad)
    path, _, _ = model_factory(300, 64, 2, 4, seed=3)
    r = bench_model(path, threads=1, repeats=3, decode_tokens=4, prefill_lengths=(8,), batch_sizes=(1,))
    vg = r["decode_sampled"]["vs_greedy"]
    assert vg["min"] <= vg["median"] <= vg["max"] and vg["min"] > 0
    vs = r["prefill"]["8"]["vs_decode"]
    assert vs["min"] <= vs["median"] <= vs["max"] and vs["min"] > 0
    # one round: the ratio is the one of the two measurements themselves
    r1 = bench_model(path, threads=1, repeats=1, decode_tokens=4, prefill_lengths=(8,), batch_sizes=(1,))
    want = r1["decode_sampled"]["median_s"] / r1["decode"]["median_s"]
    assert r1["decode_sampled"]["vs_greedy"]["median"] == pytest.approx(want, rel=1e-9)
    want = (r1["decode"]["median_s"] / 4) / (r1["prefill"]["8"]["median_s"] / 8)
    assert r1["prefill"]["8"]["vs_decode"]["median"] == pytest.approx(want, rel=1e-9)


def test_ternary_macs_per_token_counts_the_files_ternary_matrices(model_factory):
    from bitmamba_lsp.bench import ternary_macs_per_token
    from bitmamba_lsp.engine.formats.bitmamba_bin import TernaryTensor

    path, _, tensors = model_factory(300, 64, 2, 4, seed=3)
    expected = sum(t.rows * t.cols for t in tensors.values() if isinstance(t, TernaryTensor))
    assert ternary_macs_per_token(load_bin(path, threads=1).core.info) == expected
    assert ternary_macs_per_token({"arch": "mamba1"}) is None
    # RYS repetition: layers 0..1 of 2 run twice more, so their projections count three times
    layer = sum(t.rows * t.cols for k, t in tensors.items() if isinstance(t, TernaryTensor) and k.startswith("layers."))
    repeated = load_bin(path, threads=1, repeat=(0, 1, 2)).core.info
    assert ternary_macs_per_token(repeated) == expected + 2 * layer


def test_dot_peak_probe():
    r = _core.dot_peak(1, 2, 5.0)
    if _core.simd_level() not in ("avx512-vnni", "avx2-vnni"):
        assert r is None  # no probe on this level
        return
    assert r["instruction"].startswith("vpdpbusd") and r["macs_per_round"] in (256, 512)
    assert r["median_gmacs"] > 1 and r["threads"] == 1
    # a burst the compiler folded away would read faster than two instructions a cycle at 6 GHz
    assert r["best_gmacs"] < r["macs_per_round"] / 8 * 2 * 6


def test_dot_peak_rejects_bad_arguments_on_every_level():
    for bad in ({"threads": 0}, {"threads": 257}, {"repeats": 0}, {"ms": 0.0}, {"ms": float("nan")}):
        with pytest.raises(ValueError):
            _core.dot_peak(**{"threads": 1, "repeats": 1, "ms": 1.0, **bad})


def test_gemm_rate_probe():
    w = _core.PackedMatrix.from_int8(np.random.default_rng(0).integers(-1, 2, (64, 256), dtype=np.int8))
    r = _core.gemm_rate(w, 5, 2, 3)
    assert r["tokens"] == 5 and r["threads"] == 2 and r["level"] == _core.simd_level()
    assert r["best_gmacs"] >= r["median_gmacs"] > 0
    assert r["best_gmacs"] * r["best_s"] * 1e9 == pytest.approx(64 * 256 * 5)  # padding is not counted
    for bad in ((0, 1, 1), (5, 0, 1), (5, 257, 1), (5, 1, 0), (5000, 1, 1)):
        with pytest.raises(ValueError):
            _core.gemm_rate(w, *bad)


def test_compute_roof_scales_with_the_step_and_fills_the_table(model_factory):
    from bitmamba_lsp.bench import bench_verification, compute_roof, ternary_macs_per_token, verify_markdown

    path, _, _ = model_factory(300, 64, 2, 4, seed=3)
    model = load_bin(path, threads=1)
    verify = bench_verification(model, (2, 4), 2)
    roof = compute_roof(model, verify)
    if roof is None:
        assert _core.dot_peak() is None
        return
    macs = ternary_macs_per_token(model.core.info)
    single = verify["single_step"]["median_s"]
    for m in ("2", "4"):
        b = roof["bound_steps"][m]
        assert b["at_peak"] == pytest.approx(int(m) * macs / (roof["peak_gmacs_best"] * 1e9) / single)
        assert b["at_gemm_rate"] == pytest.approx(int(m) * macs / (roof["gemm"]["8"]["median_gmacs"] * 1e9) / single)
    verify["roof"] = roof
    lines = verify_markdown([{"threads": 1, "verify": verify}]).splitlines()
    table = [line for line in lines[lines.index("") + 1 :] if line.startswith("|")]
    assert len(table) == 3 and len({line.count("|") for line in table}) == 1, lines


def test_bench_sampling_compares_every_setting_with_greedy_in_the_same_rounds(model_factory):
    from bitmamba_lsp.bench import SAMPLING_CONFIGS, bench_sampling, sampling_markdown

    path, _, _ = model_factory(300, 64, 2, 4, seed=3)
    model = load_bin(path, threads=1)
    r = bench_sampling(model, tokens=4, rounds=3)
    assert list(r["settings"]) == ["greedy", *SAMPLING_CONFIGS]
    g = r["settings"]["greedy"]["vs_greedy"]
    assert g == {"median": 1.0, "min": 1.0, "max": 1.0}  # greedy against itself, round by round
    for name, s in r["settings"].items():
        assert s["runs"] == 3 and s["median_rate"] > 0
        assert s["vs_greedy"]["min"] <= s["vs_greedy"]["median"] <= s["vs_greedy"]["max"]
        if name != "greedy":
            assert s["config"] == SAMPLING_CONFIGS[name]
    lines = sampling_markdown([r, r]).splitlines()
    assert len(lines) == 2 + len(r["settings"]) and len({line.count("|") for line in lines}) == 1
