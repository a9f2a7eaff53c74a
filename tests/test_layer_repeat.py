"""Layer repetition (RYS, bitmamba.cpp's --repeat-start S --repeat-end E --repeat-count N): layers
S..E run N extra times right after E, each pass with its own state, the weights shared; checked
against the NumPy reference forward run over the same layer schedule."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from reference import RefBitMamba2, Ties

import bitmamba_lsp
import bitmamba_lsp.engine.loader
from bitmamba_lsp.engine.errors import ModelFormatError
from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin


def schedule(n_layers: int, start: int, end: int, count: int) -> list[int]:
    """bitmamba.cpp's order: 4 layers, S=1, E=2, N=2 -> 0 1 2 1 2 1 2 3."""
    out = []
    for layer in range(n_layers):
        out.append(layer)
        if layer == end:
            out += list(range(start, end + 1)) * count
    return out


class RefRepeated(RefBitMamba2):
    def __init__(self, cfg, tensors, order: list[int]) -> None:
        super().__init__(cfg, tensors)
        self.layers = [self.layers[i] for i in order]  # the same weights, one pass each


def test_the_schedule_is_bitmamba_cpps() -> None:
    assert schedule(4, 1, 2, 2) == [0, 1, 2, 1, 2, 1, 2, 3]


@pytest.mark.parametrize("repeat", [(1, 2, 2), (0, 3, 1), (3, 3, 3), (0, 0, 1)])
def test_matches_the_reference_over_the_repeated_schedule(model_factory, repeat) -> None:
    path, cfg, tensors = model_factory(300, 64, 4, 4, seed=5)
    model = load_bin(path, threads=1, repeat=repeat)
    plain = load_bin(path, threads=1)
    order = schedule(cfg.n_layers, *repeat)
    assert model.core.info["layer_passes"] == len(order)
    assert model.weight_bytes == plain.weight_bytes  # no extra weight memory
    assert model.state_bytes == plain.state_bytes * len(order) // cfg.n_layers  # a state per pass
    ref = RefRepeated(cfg, tensors, order)
    ids = np.random.default_rng(2).integers(0, 300, 20).tolist()
    state = model.new_state()
    checked = 0
    for t in ids:
        rstate = ref.load_flat(state.to_numpy())  # re-synchronised per step (as tests/test_model.py)
        Ties.reset()
        want = ref.step(rstate, t)
        got = model.step(state, t)
        if Ties.nearest < 6e-5:
            continue
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
        checked += 1
    assert checked >= len(ids) // 2
    # and it is not the plain model
    a, b = model.new_state(), plain.new_state()
    assert not np.allclose(model.prefill(a, ids), plain.prefill(b, ids))
    # prefill (batched) leaves the same state as stepping
    s1, s2 = model.new_state(), model.new_state()
    model.prefill(s1, ids)
    for t in ids:
        model.step(s2, t)
    assert np.array_equal(s1.to_numpy(), s2.to_numpy())


def test_bad_ranges_and_foreign_states_are_refused(model_factory) -> None:
    path, _, _ = model_factory(300, 64, 4, 4, seed=5)
    for bad in [(2, 5, 1), (3, 1, 1), (-1, 2, 1), (0, 1, -2)]:
        with pytest.raises(ModelFormatError, match="repe"):
            bitmamba_lsp.load(path, repeat=bad)
    model = bitmamba_lsp.load(path, repeat=(1, 2, 1), threads=1)
    plain = bitmamba_lsp.load(path, threads=1)
    with pytest.raises(Exception, match=r"(?i)state"):
        plain.state_from_bytes(model.new_state().to_bytes())


def test_the_cli_flags(model_factory) -> None:
    path, _, _ = model_factory(300, 64, 4, 4, seed=5)
    base = [sys.executable, "-m", "bitmamba_lsp.cli", "generate", "--model", str(path), "--ids", "1 2 3", "-n", "4",
            "--greedy", "--threads", "1", "--quiet"]  # fmt: skip
    out = subprocess.run([*base, "--repeat-start", "1", "--repeat-end", "2", "--repeat-count", "2"],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    model = bitmamba_lsp.load(path, repeat=(1, 2, 2), threads=1)
    state, want = model.new_state(), []
    logits = model.prefill(state, [1, 2, 3])
    for _ in range(4):
        t = int(np.argmax(logits))
        want.append(t)
        logits = model.step(state, t)
    assert [int(x) for x in out] == want
    r = subprocess.run([*base, "--repeat-start", "1"], capture_output=True, text=True)
    assert r.returncode != 0 and "go together" in r.stderr
    r = subprocess.run([*base, "--repeat-start", "1", "--repeat-end", "9"], capture_output=True, text=True)
    assert r.returncode == 1 and "layer repetition" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.asyncio(loop_scope="function")
async def test_the_daemon_setting(model_factory, tmp_path) -> None:
    """repeatStart/repeatEnd/repeatCount reload the model with the repetition (bitmamba/status)."""
    import shutil

    from lsp_client import start_server, status, stop_server, wait_for_model
    from lsprotocol import types as T

    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(bitmamba_lsp.engine.loader.DEFAULT_MODEL_DIR / "model.bin", folder / "model.bin")
    shutil.copy(bitmamba_lsp.engine.loader.DEFAULT_MODEL_DIR / "tokenizer.json", folder / "tokenizer.json")
    lc, _ = await start_server(folder, options={"repeatStart": 1, "repeatEnd": 2, "repeatCount": 2, "threads": 1})
    try:
        st = await status(lc)
        plain = bitmamba_lsp.load(folder, threads=1)
        n = plain.config.n_layers
        passes = len(schedule(n, 1, 2, 2))  # the slice 1..2 twice more: n + 4 passes
        assert st["state_bytes"] == plain.state_bytes * passes // n
        lc.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"repeatStart": -1}))
        st = await wait_for_model(lc)
        for _ in range(100):
            st = await status(lc)
            if st["state_bytes"] == plain.state_bytes:
                break
            await __import__("asyncio").sleep(0.1)
        assert st["state_bytes"] == plain.state_bytes
    finally:
        await stop_server(lc)
