"""bitmamba logprob / score (bitmamba.cpp's `logprob K` and `score T`), against the NumPy reference
forward of tests/reference.py and the published definitions (log-softmax of the logits after each
position; rank = tokens strictly more likely)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from reference import RefBitMamba2, Ties

from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin
from bitmamba_lsp.scoring import logprob_of_last, score_target

TOL = 1e-3  # bitmamba.cpp's values agree within this; the engine and the reference much closer


def ref_logits(model, ref: RefBitMamba2, ids: list[int]) -> list[np.ndarray | None]:
    """The reference's logits after each prefix ids[:i+1], each step from the engine's state before
    it (re-synchronised, as tests/test_model.py does); None where that step met a rounding tie."""
    state, out = model.new_state(), []
    for t in ids:
        rstate = ref.load_flat(state.to_numpy())
        Ties.reset()
        expected = ref.step(rstate, t)
        model.step(state, t)
        out.append(None if Ties.nearest < 6e-5 else expected)
    return out


def lsm(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - np.log(np.sum(np.exp(x - x.max()))) - x.max()


@pytest.fixture(scope="module")
def setup(model_factory):
    path, cfg, tensors = model_factory(300, 64, 2, 4, seed=11)
    return path, load_bin(path, threads=1), RefBitMamba2(cfg, tensors)


def test_logprob_of_the_last_k_tokens(setup) -> None:
    _, model, ref = setup
    ids = np.random.default_rng(0).integers(0, 300, 24).tolist()
    logits = ref_logits(model, ref, ids)
    for k in (1, 5, 23):
        got = logprob_of_last(model, ids, k)
        pos = range(len(ids) - k, len(ids))
        assert got.tokens == k and len(got.per_token) == k
        checked = [(g, lsm(logits[i - 1])[ids[i]]) for g, i in zip(got.per_token, pos, strict=True) if logits[i - 1] is not None]
        assert len(checked) >= k // 2  # ties are rare
        np.testing.assert_allclose([g for g, _ in checked], [w for _, w in checked], atol=TOL)
        assert got.total == pytest.approx(sum(got.per_token)) and got.mean == pytest.approx(got.total / k)
    with pytest.raises(ValueError, match="K must be"):
        logprob_of_last(model, ids, 24)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        logprob_of_last(model, [1, 2, 999], 1)


def test_score_of_a_target_token(setup) -> None:
    _, model, ref = setup
    ids = np.random.default_rng(1).integers(0, 300, 12).tolist()
    last = ref_logits(model, ref, ids)[-1]
    if last is None:
        pytest.skip("the last step met a rounding tie")
    order = np.argsort(-last, kind="stable")
    for target in (int(order[0]), int(order[7]), int(order[-1])):
        got = score_target(model, ids, target)
        assert got.rank == int(np.sum(last > last[target]))
        assert got.logprob == pytest.approx(lsm(last)[target], abs=TOL)
    assert score_target(model, ids, int(order[0])).rank == 0


def test_the_cli_prints_bitmamba_cpp_lines(setup) -> None:
    path, model, _ = setup
    ids = "5 17 3 99 42 8"
    out = subprocess.run(
        [sys.executable, "-m", "bitmamba_lsp.cli", "logprob", "--model", str(path), "--ids", ids, "-k", "3", "--threads", "1"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    want = logprob_of_last(model, [int(x) for x in ids.split()], 3)
    assert out == f"[LOGPROB] Tokens: 3 | TotalLP: {want.total:.6f} | AvgLP: {want.mean:.6f}"
    out = subprocess.run(
        [sys.executable, "-m", "bitmamba_lsp.cli", "score", "--model", str(path), "--ids", ids, "--target", "7", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    got = json.loads(out)
    assert got["target"] == 7 and got["rank"] == score_target(model, [int(x) for x in ids.split()], 7).rank
    bad = subprocess.run(
        [sys.executable, "-m", "bitmamba_lsp.cli", "logprob", "--model", str(path), "--ids", "1 2", "-k", "5"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "K must be in 1..1" in bad.stderr
