"""bitmamba-student (Mamba-1 blocks with BitLinear): the C++ model against a NumPy reference,
batched == sequential, name mapping and error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from reference import Ties
from reference_mamba1 import RefStudent

from bitmamba_lsp.engine import load
from bitmamba_lsp.engine.errors import ModelFormatError
from bitmamba_lsp.engine.formats.student import StudentConfig, load_student, random_student, write_student

TIE = 6e-5


def tiny(vocab=300, d=32, layers=2, S=16, R=4, gate="mul_d", tie=False) -> StudentConfig:
    return StudentConfig(
        vocab_size=vocab, d_model=d, n_layers=layers, d_state=S, dt_rank=R, gate=gate, tie_embeddings=tie
    )


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    ("cfg", "quantize", "head"),
    [
        (tiny(), True, "int8"),
        (tiny(gate="skip_d"), True, "f32"),
        (tiny(vocab=97, d=48, layers=3, S=8, R=3), True, "int8"),
        (tiny(gate="skip_d", tie=True), False, "f32"),
    ],
)
def test_matches_numpy_reference(tmp_path, cfg, quantize, head) -> None:
    t = random_student(cfg, seed=4)
    write_student(tmp_path / "m", cfg, t)
    model = load_student(tmp_path / "m", threads=2, quantize=quantize, lm_head=head)
    ref = RefStudent(cfg, t, quantize=quantize, lm_head=head)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 40)
    state = model.new_state()
    ties = 0
    for i, tok in enumerate(ids):
        rstate = ref.load_flat(state.to_numpy())  # re-synchronised each step (see test_model.py)
        Ties.reset()
        logits = model.step(state, int(tok))
        expected = ref.step(rstate, int(tok))
        if Ties.nearest < TIE:
            ties += 1
            assert rel(logits, expected) < 5e-2
            continue
        assert rel(logits, expected) < 1e-4, f"step {i}"
        assert rel(state.to_numpy(), RefStudent.flat(rstate)) < 1e-4
    assert ties <= 10


def test_prefill_equals_steps_and_snapshots(tmp_path) -> None:
    cfg = tiny(layers=2)
    write_student(tmp_path / "m", cfg, random_student(cfg, seed=1))
    model = load_student(tmp_path / "m", threads=2)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, 150)
    a = model.new_state()
    la = model.prefill(a, ids)
    b = model.new_state()
    for t in ids:
        lb = model.step(b, int(t))
    assert np.array_equal(la, lb) and a.equals(b)
    _, snaps = model.prefill_snapshots(model.new_state(), ids, [1, 64, 65, 150])
    for p, s in zip([1, 64, 65, 150], snaps, strict=True):
        fresh = model.new_state()
        model.prefill(fresh, ids[:p])
        assert s.equals(fresh)
    batch = [model.new_state() for _ in range(3)]
    single = [model.new_state() for _ in range(3)]
    logits = model.step_batch(batch, [1, 2, 3])
    for i, s in enumerate(single):
        assert np.array_equal(logits[i], model.step(s, i + 1))
    assert all(x.equals(y) for x, y in zip(batch, single, strict=True))
    all_logits = model.prefill(model.new_state(), ids[:70], all_logits=True)
    assert np.array_equal(all_logits[-1], model.prefill(model.new_state(), ids[:70]))


def test_int8_lm_head_costs_little(tmp_path) -> None:
    cfg = tiny(vocab=400)
    write_student(tmp_path / "m", cfg, random_student(cfg, seed=2))
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, 64)
    l8 = load_student(tmp_path / "m", lm_head="int8").prefill(
        load_student(tmp_path / "m").new_state(), ids, all_logits=True
    )
    m32 = load_student(tmp_path / "m", lm_head="f32")
    l32 = m32.prefill(m32.new_state(), ids, all_logits=True)
    assert np.mean(np.argmax(l8, 1) == np.argmax(l32, 1)) > 0.9
    assert rel(l8, l32) < 0.05


def test_hf_style_names_and_folder_loading(tmp_path) -> None:
    cfg = tiny()
    t = random_student(cfg, seed=3)
    write_student(tmp_path / "plain", cfg, t)
    write_student(tmp_path / "hf", cfg, t, names="hf")
    a, b = load(tmp_path / "plain"), load(tmp_path / "hf")
    assert a.arch == b.arch == "mamba1-bitlinear"
    ids = [1, 2, 3, 4]
    assert np.array_equal(a.prefill(a.new_state(), ids), b.prefill(b.new_state(), ids))


def test_missing_and_unexpected_tensors_are_named(tmp_path) -> None:
    cfg = tiny()
    t = random_student(cfg, seed=3)
    t.pop("layers.1.x_proj")
    write_student(tmp_path / "m", cfg, t)
    with pytest.raises(ModelFormatError, match=r"missing \['layers.1.x_proj'\]"):
        load(tmp_path / "m")
    from safetensors.numpy import save_file

    t2 = random_student(cfg, seed=3)
    write_student(tmp_path / "u", cfg, t2)
    save_file({"layers.0.mystery.weight": np.zeros(3, np.float32)}, str(tmp_path / "u" / "extra.safetensors"))
    with pytest.raises(ModelFormatError, match=r"unexpected.*mystery"):
        load(tmp_path / "u")
    bad = json.loads((tmp_path / "u" / "config.json").read_text())
    bad["bitmamba_gate"] = "weird"
    (tmp_path / "u" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ModelFormatError, match="gate"):
        load(tmp_path / "u")
    write_student(tmp_path / "s", cfg, random_student(cfg, seed=3))
    (tmp_path / "s" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelFormatError, match="corrupt safetensors"):
        load(tmp_path / "s")


def test_matches_transformers_mamba_slow_path(tmp_path) -> None:
    """With ternary quantization off, alphas of 1 and the standard gate, the block is Mamba-1:
    compare with transformers' MambaForCausalLM (its slow, pure-PyTorch path) if installed."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = tiny(gate="skip_d")
    t = random_student(cfg, seed=5)
    for i in range(cfg.n_layers):
        t[f"layers.{i}.in_proj.alpha"][:] = 1
        t[f"layers.{i}.out_proj.alpha"][:] = 1
    write_student(tmp_path / "m", cfg, t)
    ours = load_student(tmp_path / "m", quantize=False, lm_head="f32")
    hf_cfg = transformers.MambaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        state_size=cfg.d_state,
        num_hidden_layers=cfg.n_layers,
        expand=cfg.expand,
        conv_kernel=cfg.d_conv,
        time_step_rank=cfg.dt_rank,
        use_bias=False,
        use_conv_bias=True,
        layer_norm_epsilon=cfg.norm_eps,
        tie_word_embeddings=False,
        use_mambapy=False,
    )
    hf = transformers.MambaForCausalLM(hf_cfg).eval()
    sd = {
        "backbone.embeddings.weight": t["embed"],
        "backbone.norm_f.weight": t["norm_f"],
        "lm_head.weight": t["lm_head"],
    }
    for i in range(cfg.n_layers):
        p, q = f"layers.{i}.", f"backbone.layers.{i}."
        sd.update(
            {
                q + "norm.weight": t[p + "norm"],
                q + "mixer.in_proj.weight": t[p + "in_proj"],
                q + "mixer.conv1d.weight": t[p + "conv1d_w"],
                q + "mixer.conv1d.bias": t[p + "conv1d_b"],
                q + "mixer.x_proj.weight": t[p + "x_proj"],
                q + "mixer.dt_proj.weight": t[p + "dt_proj"],
                q + "mixer.dt_proj.bias": t[p + "dt_proj_b"],
                q + "mixer.A_log": t[p + "A_log"],
                q + "mixer.D": t[p + "D"],
                q + "mixer.out_proj.weight": t[p + "out_proj"],
            }
        )
    hf.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sd.items()}, strict=True)
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, 24)
    with torch.no_grad():
        expected = hf(torch.from_numpy(ids[None])).logits[0].double().numpy()
    got = ours.prefill(ours.new_state(), ids, all_logits=True)
    assert rel(got, expected) < 1e-4
