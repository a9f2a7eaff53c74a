"""The C++ BitMamba-2 model against the NumPy reference, and the properties the daemon relies on:
batched prefill == sequential steps, snapshots, state save/restore, batched decode, threads."""

from __future__ import annotations

import numpy as np
import pytest
from reference import RefBitMamba2, Ties

import bitmamba_lsp
from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin

# (vocab, d_model, n_layers, n_heads): odd head counts, a tiny vocab, d_model not a multiple of 128
SHAPES = [(256, 64, 2, 4), (97, 36, 3, 3), (300, 128, 2, 1), (1000, 96, 3, 6), (50, 40, 2, 5)]
TIE = 6e-5  # see reference.Ties: ~5x the float32 error of a scaled activation
REL_TOL = 1e-4


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernels", ["simd", "scalar"])
def test_matches_numpy_reference(model_factory, shape, kernels) -> None:
    path, cfg, tensors = model_factory(*shape, seed=7)
    model = load_bin(path, threads=2, kernels=kernels)
    ref = RefBitMamba2(cfg, tensors)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, 64)

    # 1. Free-running for 64 steps: every step agrees until a rounding tie (if any) is met.
    state, rstate = model.new_state(), ref.new_state()
    Ties.reset()
    for i, tok in enumerate(ids):
        logits = model.step(state, int(tok))
        expected = ref.step(rstate, int(tok))
        if Ties.nearest < TIE:
            break
        assert rel_err(logits, expected) < REL_TOL, f"step {i}"
        assert rel_err(state.to_numpy(), RefBitMamba2.flat(rstate)) < REL_TOL, f"state after step {i}"
    # 2. Re-synchronised each step: all 64 steps agree, except steps that met a tie, whose error
    #    must stay small (one int8 step of one activation) and which must be rare.
    state = model.new_state()
    ties = 0
    for i, tok in enumerate(ids):
        rstate = ref.load_flat(state.to_numpy())
        Ties.reset()
        logits = model.step(state, int(tok))
        expected = ref.step(rstate, int(tok))
        err = rel_err(logits, expected)
        if Ties.nearest < TIE:
            ties += 1
            assert err < 5e-2, f"step {i}"
        else:
            assert err < REL_TOL, f"step {i}: rel err {err:.2e} with no rounding tie"
            assert rel_err(state.to_numpy(), RefBitMamba2.flat(rstate)) < REL_TOL
    assert ties <= 16


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_prefill_equals_sequential_steps(model_factory, shape) -> None:
    path, cfg, _ = model_factory(*shape, seed=3)
    model = load_bin(path, threads=2)
    rng = np.random.default_rng(2)
    for T in (1, 2, 3, 5, 63, 64, 65, 150):
        ids = rng.integers(0, cfg.vocab_size, T)
        s_batch, s_seq = model.new_state(), model.new_state()
        logits_batch = model.prefill(s_batch, ids)
        for t in ids:
            logits_seq = model.step(s_seq, int(t))
        assert np.array_equal(logits_batch, logits_seq), T
        assert s_batch.equals(s_seq) and s_batch.n_tokens == T
        all_logits = model.prefill(model.new_state(), ids, all_logits=True)
        assert all_logits.shape == (T, cfg.vocab_size)
        assert np.array_equal(all_logits[-1], logits_seq)


def test_prefill_continues_a_state_and_snapshots(model_factory) -> None:
    path, cfg, _ = model_factory(256, 64, 2, 4, seed=5)
    model = load_bin(path, threads=2)
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, 200)
    # prefill in two pieces == one piece
    a, b = model.new_state(), model.new_state()
    model.prefill(a, ids)
    model.prefill(b, ids[:77])
    model.prefill(b, ids[77:])
    assert a.equals(b)
    # snapshots equal the state of a prefill of that prefix
    positions = [1, 2, 63, 64, 65, 128, 200]
    s = model.new_state()
    _, snaps = model.prefill_snapshots(s, ids, positions)
    assert s.equals(a)
    for p, snap in zip(positions, snaps, strict=True):
        fresh = model.new_state()
        model.prefill(fresh, ids[:p])
        assert snap.equals(fresh) and snap.n_tokens == p
    with pytest.raises(ValueError):
        model.prefill_snapshots(model.new_state(), ids, [5, 5])
    with pytest.raises(ValueError):
        model.prefill_snapshots(model.new_state(), ids, [201])


def test_state_copy_compare_save_restore(model_factory, tmp_path) -> None:
    path, cfg, _ = model_factory(256, 64, 2, 4)
    model = load_bin(path, threads=1)
    ids = list(range(1, 30))
    s = model.new_state()
    model.prefill(s, ids)
    assert s.nbytes == model.state_bytes == cfg.n_layers * 4 * cfg.d_inner * 4
    c = s.copy()
    assert c.equals(s) and c == s and c.max_abs_diff(s) == 0.0
    blob = s.to_bytes()
    restored = model.state_from_bytes(blob)
    assert restored.equals(s) and restored.n_tokens == 29
    # continuing from the restored state == continuing from the original
    assert np.array_equal(model.step(restored, 7), model.step(c, 7))
    model.step(s, 8)
    assert not c.equals(s) and c.max_abs_diff(s) > 0
    c.copy_from(s)
    assert c.equals(s)
    s.reset()
    assert s.n_tokens == 0 and not s.to_numpy().any()
    # wrong input is rejected clearly
    with pytest.raises(ValueError, match="different model"):
        other = load_bin(model_factory(97, 36, 3, 3)[0])
        other.state_from_bytes(blob)
    with pytest.raises(ValueError, match="magic"):
        model.state_from_bytes(b"x" * len(blob))
    with pytest.raises(ValueError):
        model.state_from_bytes(blob[:-4])


def test_step_batch_equals_individual_steps(model_factory) -> None:
    path, cfg, _ = model_factory(256, 64, 2, 4, seed=9)
    model = load_bin(path, threads=2)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(0, cfg.vocab_size, n) for n in (3, 10, 1, 7, 5)]
    batch = [model.new_state() for _ in prompts]
    single = [model.new_state() for _ in prompts]
    for sb, ss, p in zip(batch, single, prompts, strict=True):
        model.prefill(sb, p)
        model.prefill(ss, p)
    for _ in range(4):
        toks = rng.integers(0, cfg.vocab_size, len(prompts))
        logits = model.step_batch(batch, toks)
        for i, (ss, t) in enumerate(zip(single, toks, strict=True)):
            assert np.array_equal(logits[i], model.step(ss, int(t)))
    for sb, ss in zip(batch, single, strict=True):
        assert sb.equals(ss)
    with pytest.raises(ValueError, match="twice"):
        model.step_batch([batch[0], batch[0]], [1, 2])


def test_thread_count_does_not_change_results(model_factory) -> None:
    path, cfg, _ = model_factory(1000, 96, 3, 6, seed=1)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, 70)
    outs = []
    model = load_bin(path, threads=1)
    for threads in (1, 2, 3, 4):
        model.threads = threads
        assert model.threads == threads
        s = model.new_state()
        outs.append((model.prefill(s, ids[:40]), model.step(s, int(ids[40])), s.to_bytes()))
    for o in outs[1:]:
        assert np.array_equal(o[0], outs[0][0]) and np.array_equal(o[1], outs[0][1]) and o[2] == outs[0][2]


def test_scalar_and_simd_models_agree(model_factory) -> None:
    path, cfg, _ = model_factory(300, 128, 2, 1, seed=2)
    ids = np.random.default_rng(6).integers(0, cfg.vocab_size, 32)
    a = load_bin(path, kernels="scalar")
    b = load_bin(path, kernels="simd")
    assert a.kernel_level == "scalar" and b.kernel_level == bitmamba_lsp.simd_level()
    la, lb = a.prefill(a.new_state(), ids), b.prefill(b.new_state(), ids)
    assert rel_err(la, lb) < 1e-3  # float parts differ in summation order only (and rare ties)


def test_bad_tokens_and_arguments(model_factory) -> None:
    path, cfg, _ = model_factory(256, 64, 2, 4)
    model = load_bin(path)
    s = model.new_state()
    with pytest.raises(IndexError):
        model.step(s, cfg.vocab_size)
    with pytest.raises(IndexError):
        model.step(s, -1)
    with pytest.raises(IndexError):
        model.prefill(s, [1, 2, 10**6])
    with pytest.raises(ValueError):
        model.prefill(s, [])
    with pytest.raises(ValueError):
        model.prefill(s, [[1, 2]])
    assert s.n_tokens == 0  # nothing was consumed by the failed calls
    # the model still works
    model.step(s, 1)
    assert s.n_tokens == 1


def test_embedding_stays_mapped(model_factory) -> None:
    path, _cfg, _ = model_factory(256, 64, 2, 4)
    model = load_bin(path)
    emb = model._keep.tensors["embed"]
    assert not emb.flags.owndata and emb.base is not None  # a view of the mapped file, not a copy
