"""Tests for bitmamba_lsp.train: the chunked scan, the QAT forward against an independent NumPy
implementation of docs/formats.md section 1, the export round trip, corpus building and the CLI.

Tests that need PyTorch skip cleanly when it is not installed (``pip install 'bitmamba-lsp[train]'``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

try:
    import torch
except ImportError:  # pragma: no cover - CI without the [train] extra
    torch = None

needs_torch = pytest.mark.skipif(
    torch is None, reason="PyTorch is not installed (pip install 'bitmamba-lsp[train]')"
)

from bitmamba_lsp.engine.formats.bitmamba_bin import TernaryTensor, quantize_ternary, read_bin  # noqa: E402
from bitmamba_lsp.train import corpus as corpus_mod  # noqa: E402
from bitmamba_lsp.train import data as data_mod  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ NumPy reference


def np_rms_norm(x, w):
    return x * w / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def np_bitlinear(x, W, norm_w):
    """docs/formats.md section 1.4: bitlinear on one token x [K]: int8 absmax activations x absmean ternary weights."""
    xn = np_rms_norm(x, norm_w)
    sx = 127.0 / (np.max(np.abs(xn)) + 1e-5)
    v = xn * sx
    xq = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -128, 127)  # round half away from zero
    q, s = quantize_ternary(W)
    return (q.astype(np.float64) @ xq) / (sx * s)


def np_softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def np_silu(x):
    return x / (1 + np.exp(-x))


def np_forward(P: dict, cfg, ids) -> np.ndarray:
    """Token-by-token recurrent forward (float64) of docs/formats.md section 1; logits [T, V]."""
    di, H, hd = cfg.d_inner, cfg.n_heads, cfg.head_dim
    conv = [np.zeros((3, di)) for _ in range(cfg.n_layers)]  # last 3 inputs of the conv
    ssm = [np.zeros(di) for _ in range(cfg.n_layers)]
    out = []
    for tok in ids:
        h = P["embed"][tok].astype(np.float64)
        for l in range(cfg.n_layers):  # noqa: E741
            p = f"layers.{l}."
            proj = np_bitlinear(h, P[p + "in_proj"], P[p + "in_proj_norm"])
            z, x = proj[:di], proj[di : 2 * di]
            B, C, dt = proj[2 * di : 2 * di + H], proj[2 * di + H : 2 * di + 2 * H], proj[2 * di + 2 * H :]
            w = P[p + "conv1d_w"].reshape(di, 4)
            window = np.concatenate([conv[l], x[None]], 0)  # [4, di]: x_{t-3} .. x_t
            c = P[p + "conv1d_b"] + np.sum(w.T * window, axis=0)
            conv[l] = window[1:]
            xa = np_silu(c)
            y = np.empty(di)
            for hh in range(H):
                dth = np_softplus(dt[hh] + P[p + "dt_bias"][hh])
                decay = np.exp(-np.exp(P[p + "A_log"][hh]) * dth)
                sl = slice(hh * hd, (hh + 1) * hd)
                ssm[l][sl] = ssm[l][sl] * decay + xa[sl] * B[hh] * dth
                y[sl] = ssm[l][sl] * C[hh] + xa[sl] * P[p + "D"][sl]
            y = y * np_silu(z)
            h = h + np_bitlinear(y, P[p + "out_proj"], P[p + "out_proj_norm"])
        out.append(np_bitlinear(np_rms_norm(h, P["norm_f"]), P["lm_head"], P["lm_head_norm"]))
    return np.stack(out)


def randomize(model, seed: int = 0) -> None:
    """Give every parameter a non-trivial value (norm weights, D, biases are not 1/0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm") or name == "norm_f" or name.endswith(".D"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("conv1d_b") or name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g) * 2.5)
            elif name == "embed":
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def model_params_np(model) -> dict[str, np.ndarray]:
    P = {
        "embed": model.embed.detach().double().numpy(),
        "norm_f": model.norm_f.detach().double().numpy(),
        "lm_head": model.lm_head.weight.detach().numpy(),
        "lm_head_norm": model.lm_head.norm.detach().double().numpy(),
    }
    for i, ly in enumerate(model.layers):
        p = f"layers.{i}."
        P[p + "in_proj"] = ly.in_proj.weight.detach().numpy()
        P[p + "in_proj_norm"] = ly.in_proj.norm.detach().double().numpy()
        P[p + "out_proj"] = ly.out_proj.weight.detach().numpy()
        P[p + "out_proj_norm"] = ly.out_proj.norm.detach().double().numpy()
        for k in ("conv1d_w", "conv1d_b", "dt_bias", "A_log", "D"):
            P[p + k] = getattr(ly, k).detach().double().numpy()
    return P


# ------------------------------------------------------------------------------------ the scan


@needs_torch
@pytest.mark.parametrize(
    ("B", "T", "H", "P", "chunk"),
    [
        (1, 1, 1, 1, 64),
        (2, 63, 3, 5, 64),
        (1, 64, 5, 2, 64),
        (2, 65, 3, 4, 64),
        (1, 130, 7, 3, 64),
        (2, 50, 3, 2, 16),
    ],
)
def test_chunked_scan_matches_sequential(B, T, H, P, chunk):
    from bitmamba_lsp.train.model import chunked_scan, sequential_scan

    g = torch.Generator().manual_seed(B * 1000 + T * 10 + H)
    la = -torch.rand(B, T, H, generator=g, dtype=torch.float64) * 3.0
    la[:, ::7] *= 20.0  # some very strong decays (exp underflows to ~0 within a chunk)
    la[:, 1::5] *= 1e-3  # and near-1 decays
    u = torch.randn(B, T, H, P, generator=g, dtype=torch.float64)
    s0 = torch.randn(B, H, P, generator=g, dtype=torch.float64)
    la.requires_grad_(True)
    u.requires_grad_(True)
    ref, ref_last = sequential_scan(la, u, s0)
    got, got_last = chunked_scan(la, u, chunk=chunk, state=s0)
    torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(got_last, ref_last, rtol=1e-11, atol=1e-11)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    g_ref = torch.autograd.grad((ref * w).sum(), (la, u))
    g_got = torch.autograd.grad((got * w).sum(), (la, u))
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@needs_torch
def test_round_half_away_from_zero():
    from bitmamba_lsp.train.model import round_half_away

    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -0.51])
    assert round_half_away(x).tolist() == [-3, -2, -1, 1, 2, 3, 0, -1]


# --------------------------------------------------------------------------------- QAT forward


@needs_torch
@pytest.mark.parametrize(("d", "L", "H"), [(32, 2, 4), (24, 1, 3)])
def test_qat_forward_matches_numpy_reference(d, L, H):
    from bitmamba_lsp.train.model import BitMamba2, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=67, d_model=d, n_layers=L, n_heads=H)
    model = BitMamba2(cfg)
    randomize(model, seed=d)
    model.eval()
    ids = np.random.default_rng(d).integers(0, cfg.vocab_size, size=70)  # > one 64-step chunk
    ref = np_forward(model_params_np(model), cfg, ids)
    with torch.no_grad():
        exact = model(torch.from_numpy(ids)[None], exact=True)[0].double().numpy()
        ste = model(torch.from_numpy(ids)[None])[0].double().numpy()
        seq = model(torch.from_numpy(ids)[None], exact=True, scan="sequential")[0].double().numpy()
    scale = np.abs(ref).max()
    # float32 vs float64: an int8 rounding may rarely flip, so the bound is relative, not bitwise.
    np.testing.assert_allclose(exact, ref, rtol=0, atol=2e-3 * scale)
    np.testing.assert_allclose(ste, ref, rtol=0, atol=2e-3 * scale)
    np.testing.assert_allclose(seq, exact, rtol=0, atol=1e-4 * scale)
    assert (exact.argmax(-1) == ref.argmax(-1)).mean() > 0.95


@needs_torch
def test_ste_gradients_reach_latent_weights():
    from bitmamba_lsp.train.model import BitMamba2, ModelConfig

    torch.manual_seed(0)
    model = BitMamba2(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2))
    ids = torch.randint(0, 50, (2, 20))
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).reshape(-1, 50), ids[:, 1:].reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# -------------------------------------------------------------------------------------- export


def _tiny_tokenizer(vocab: int = 300):
    words = (
        "def",
        "self",
        "return",
        "class",
        "import",
        "from",
        "None",
        "True",
        "False",
        "value",
        "items",
        "lambda",
        "yield",
        "raise",
        "except",
        "finally",
        "assert",
        "while",
        "print",
        "range",
        "super",
    )
    text = "".join(f"    {a} = {b}({c}, {a}_{b})\n" for a in words for b in words[:8] for c in words[:3])
    return data_mod.train_tokenizer([text] * 5, vocab)


@needs_torch
def test_export_round_trip(tmp_path):
    from bitmamba_lsp.train.export import export_model, load_exported
    from bitmamba_lsp.train.model import BitMamba2, ModelConfig, ternary_quantize

    tok = _tiny_tokenizer()
    V = tok.get_vocab_size(with_added_tokens=True)
    torch.manual_seed(1)
    model = BitMamba2(ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4))
    randomize(model, seed=3)
    export_model(model, tok, tmp_path, {"seed": 1})
    bm = read_bin(tmp_path / "model.bin")
    assert (bm.config.vocab_size, bm.config.d_model, bm.config.n_layers, bm.config.n_heads) == (V, 32, 2, 4)
    lins = {"lm_head": model.lm_head}
    for i, ly in enumerate(model.layers):
        lins[f"layers.{i}.in_proj"] = ly.in_proj
        lins[f"layers.{i}.out_proj"] = ly.out_proj
    for name, lin in lins.items():
        t = bm.tensors[name]
        assert isinstance(t, TernaryTensor)
        q, s = ternary_quantize(lin.weight)  # what the QAT forward uses
        np.testing.assert_array_equal(t.unpack(), q.to(torch.int8).numpy(), err_msg=name)
        assert t.scale == float(s), name  # exactly the float32 scale
        # write_bin's own absmean quantizer (float64) agrees on these weights
        q2, s2 = quantize_ternary(lin.weight.detach().numpy())
        np.testing.assert_array_equal(q2, t.unpack())
        assert abs(s2 - t.scale) <= 1e-6 * t.scale
    np.testing.assert_array_equal(bm.tensors["embed"], model.embed.detach().numpy())
    np.testing.assert_array_equal(bm.tensors["layers.1.conv1d_w"], model.layers[1].conv1d_w.detach().numpy())
    np.testing.assert_array_equal(bm.tensors["layers.0.A_log"], model.layers[0].A_log.detach().numpy())
    np.testing.assert_array_equal(bm.tensors["lm_head_norm"], model.lm_head.norm.detach().numpy())
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["config"]["vocab_size"] == V and meta["seed"] == 1 and meta["eos_id"] == 0
    # loading back gives a model with the same quantized weights and the same outputs
    back, tok2, _ = load_exported(tmp_path)
    assert tok2.get_vocab_size(with_added_tokens=True) == V
    ids = torch.randint(0, V, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(back(ids, exact=True), model(ids, exact=True), rtol=1e-5, atol=1e-5)


@needs_torch
def test_deepened_layers_spread_the_copies():
    from bitmamba_lsp.train.trainer import deepened_layers

    assert deepened_layers(4, 4) == [0, 1, 2, 3]
    assert deepened_layers(4, 8) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert deepened_layers(4, 6) == [0, 1, 1, 2, 3, 3]
    assert deepened_layers(4, 5) == [0, 1, 2, 3, 3]
    assert deepened_layers(3, 5) == [0, 1, 1, 2, 2]
    for n in range(1, 7):
        for m in range(n, 2 * n + 1):
            out = deepened_layers(n, m)
            assert len(out) == m and sorted(set(out)) == list(range(n)) and out == sorted(out)
    for bad in (3, 9):
        with pytest.raises(ValueError, match="between 4 and 8"):
            deepened_layers(4, bad)


@needs_torch
def test_grow_depth_keeps_the_function_in_torch_and_in_the_engine(tmp_path):
    """A deepened model computes what the model it grew from computes: in PyTorch (both forms) and,
    once exported, in the C++ engine (its logits against the original file's, a different reader
    of different tensors); one training step wakes the silent copies."""
    from bitmamba_lsp.engine import load
    from bitmamba_lsp.train.export import export_model
    from bitmamba_lsp.train.model import BitMamba2, ModelConfig
    from bitmamba_lsp.train.trainer import grow_depth, next_token_loss

    tok = _tiny_tokenizer()
    V = tok.get_vocab_size(with_added_tokens=True)
    torch.manual_seed(2)
    model = BitMamba2(ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4))
    randomize(model, seed=5)
    grown = grow_depth(model, 3)
    assert grown.cfg.n_layers == 3 and len(grown.layers) == 3
    assert torch.equal(grown.layers[2].in_proj.weight, model.layers[1].in_proj.weight)
    assert not grown.layers[2].out_proj.weight.any() and grown.layers[1].out_proj.weight.any()
    ids = torch.randint(0, V, (2, 48))
    with torch.no_grad():
        for exact in (False, True):
            torch.testing.assert_close(grown(ids, exact=exact), model(ids, exact=exact), rtol=0, atol=0)
    export_model(model, tok, tmp_path / "old", {"seed": 1})
    export_model(grown, tok, tmp_path / "new", {"seed": 1})
    a, b = load(str(tmp_path / "old"), threads=1), load(str(tmp_path / "new"), threads=1)
    assert b.core.info["n_layers"] == 3
    seq = ids[0].numpy().astype(np.int32)
    la = a.core.prefill(a.new_state(), seq, True, True, [])[0]
    lb = b.core.prefill(b.new_state(), seq, True, True, [])[0]
    np.testing.assert_array_equal(la, lb)
    # training moves the copy's output projection off zero (the straight-through estimator)
    opt = torch.optim.SGD(grown.parameters(), lr=0.1)
    loss = next_token_loss(grown, False, print)(ids)
    loss.backward()
    opt.step()
    assert grown.layers[2].out_proj.weight.abs().sum() > 0
    with torch.no_grad():
        assert not torch.equal(grown(ids, exact=True), model(ids, exact=True))


@needs_torch
def test_deepen_is_refused_without_a_model_to_grow():
    for extra in (["--from-scratch"], ["--lora"]):
        r = subprocess.run(
            [sys.executable, "-m", "bitmamba_lsp.train", "train", "--corpus", ".", "--out", "/nonexistent/x",
             "--deepen", "8", *extra],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 2 and "--deepen grows the --init model" in r.stderr, r.stderr


# ---------------------------------------------------------------------------- corpus and data


def test_license_detection():
    ok = corpus_mod.license_is_permissive
    assert ok("Name: a\nLicense-Expression: MIT\n")[0]
    assert ok("Name: a\nLicense-Expression: Apache-2.0 OR BSD-2-Clause\n")[0]
    assert ok(
        "Name: a\nLicense-Expression: Apache-2.0 AND Apache-2.0 WITH LLVM-exception AND BSD-3-Clause\n"
    )[0]
    assert not ok("Name: a\nLicense-Expression: MPL-2.0 AND MIT\n")[0]
    assert ok("Name: a\nLicense-Expression: GPL-3.0-only OR MIT\n")[0]
    assert not ok("Name: a\nLicense-Expression: GPL-3.0-only\n")[0]
    assert ok("Name: a\nClassifier: License :: OSI Approved :: BSD License\n")[0]
    assert not ok(
        "Name: a\nClassifier: License :: OSI Approved :: MIT License\n"
        "Classifier: License :: OSI Approved :: GNU General Public License v2 (GPLv2)\n"
    )[0]
    assert ok("Name: a\nLicense: BSD-3-Clause\n")[0]
    assert not ok("Name: a\nLicense: MPL 2.0\n")[0]
    assert not ok("Name: a\n")[0]
    # the body (after the blank line) is not metadata
    assert not ok("Name: a\n\nLicense-Expression: MIT\n")[0]


def _write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


def test_build_corpus_filters_dedups_and_splits(tmp_path):
    src = tmp_path / "repo"
    body = (
        "def f{i}(x):\n    '''Add one.'''\n    return x + {i}  # a comment to make the file long enough\n" * 4
    )
    for i in range(60):
        _write(src / "pkg" / f"m{i}.py", body.format(i=i))
    _write(src / "pkg" / "dup.py", body.format(i=0))  # same content as m0.py
    _write(src / "pkg" / "empty.py", "\n\n# x\n")
    _write(src / "pkg" / "gen.py", "# Auto-generated by a tool. DO NOT EDIT.\n" + body.format(i=99))
    _write(src / "pkg" / "data.py", "TABLE = '" + "x" * 5000 + "'\n" + body.format(i=98))
    _write(src / "pkg" / "notes.txt", body.format(i=97))
    _write(src / ".venv" / "lib" / "x.py", body.format(i=96))
    _write(src / "node_modules" / "y.py", body.format(i=95))
    (src / "pkg" / "latin1.py").write_bytes(b"# caf\xe9\n" + body.format(i=94).encode())
    c = corpus_mod.build_corpus(directories=[src], options=corpus_mod.CorpusOptions(heldout_permille=200))
    names = {d.name for d in c.documents}
    assert len(names) == 60  # m0..m59 and dup.py, minus one of the two identical files
    assert ("repo/pkg/m0.py" in names) != ("repo/pkg/dup.py" in names)
    assert c.skipped == Counter(
        {"duplicate": 1, "near_empty": 1, "generated": 1, "data_like": 1, "not_utf8": 1}
    )
    held = {d.name for d in c.split("heldout")}
    assert 0 < len(held) < 30
    assert held == {n for n in names if corpus_mod.heldout(n, 200)}  # split by path hash only
    # deterministic, also with other extensions
    c2 = corpus_mod.build_corpus(directories=[src], options=corpus_mod.CorpusOptions(heldout_permille=200))
    assert [d.name for d in c2.documents] == [d.name for d in c.documents]
    c3 = corpus_mod.build_corpus(directories=[src], options=corpus_mod.CorpusOptions(extensions=("txt",)))
    assert [d.name for d in c3.documents] == ["repo/pkg/notes.txt"]
    assert corpus_mod.Corpus.from_json(c.to_json()).summary() == c.summary()


def test_tokenizer_and_sampler():
    tok = _tiny_tokenizer(300)
    assert tok.get_vocab_size(with_added_tokens=True) == 300
    assert tok.token_to_id("<|endoftext|>") == 0
    text = "    def g(self):\n        return 1\n"
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text
    arr = data_mod.encode_corpus(tok, [text, "import os\n"])
    assert arr.dtype == np.uint16 and int(arr[-1]) == 0 and (arr == 0).sum() == 2
    tokens = np.arange(10_000, dtype=np.uint16)
    s1 = data_mod.WindowSampler(tokens, seq_len=15, batch_size=4, seed=7)
    s2 = data_mod.WindowSampler(tokens, seq_len=15, batch_size=4, seed=7)
    for step in (0, 1, 5, 200, 1000):  # crosses epochs; a fresh sampler gives the same batch
        b = s1.batch(step)
        np.testing.assert_array_equal(b, s2.batch(step))
        assert b.shape == (4, 16) and (np.diff(b, axis=1) == 1).all()  # contiguous windows
    epoch0 = np.concatenate([s1.batch(k)[:, 0] for k in range(s1.per_epoch // 4)])
    assert len(set(epoch0.tolist())) == len(epoch0)  # no window repeats within an epoch
    assert not np.array_equal(data_mod.WindowSampler(tokens, 15, 4, seed=8).batch(0), s1.batch(0))


# ----------------------------------------------------------------------------------------- CLI


def test_cli_imports_without_torch_and_explains():
    code = (
        "import sys, argparse\n"
        "sys.modules['torch'] = None\n"  # make `import torch` fail
        "import bitmamba_lsp.train.cli as cli\n"
        "p = argparse.ArgumentParser(); sub = p.add_subparsers(dest='cmd')\n"
        "cli.register(sub)\n"
        "a = p.parse_args(['train', '--corpus', '.', '--out', 'x'])\n"
        "sys.exit(a.func(a))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "pip install 'bitmamba-lsp[train]'" in r.stderr


@needs_torch
def test_train_end_to_end_and_finetune(tmp_path):
    from bitmamba_lsp.train.cli import main
    from bitmamba_lsp.train.export import load_exported

    src = tmp_path / "src"
    for i in range(40):
        _write(
            src / f"mod{i}.py",
            f"import os\n\n\nclass Thing{i}:\n    def __init__(self, x):\n"
            f"        self.x = x + {i}\n\n    def get(self):\n        return self.x\n" * 3,
        )
    out, run = tmp_path / "out", tmp_path / "run"
    small = [
        "--vocab-size",
        "300",
        "--d-model",
        "32",
        "--n-layers",
        "1",
        "--n-heads",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "6",
        "--eval-every",
        "10",
        "--no-compile",
        "--heldout-permille",
        "200",
    ]
    assert main(["--from-scratch", "--corpus", str(src), "--out", str(out), "--run-dir", str(run), *small]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["status"] == "final" and meta["training"]["steps"] == 6
    assert np.isfinite(meta["eval"]["heldout_loss"]) and meta["corpus"]["heldout"]["files"] > 0
    assert (run / "checkpoint.pt").is_file() and (run / "manifest.tsv").is_file()
    load_exported(out)  # the exported directory loads back
    ft = tmp_path / "ft"
    args = [
        "train",
        "--corpus",
        str(src),
        "--init",
        str(out),
        "--out",
        str(ft),
        "--steps",
        "3",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--no-compile",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "1",
    ]
    assert main(args) == 0
    meta2 = json.loads((ft / "model.json").read_text())
    assert meta2["init"]["from"] == str(out) and meta2["config"] == meta["config"]
    assert (ft / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()
    # no --init: fine-tune the shipped model on the user's files (its size and tokenizer)
    shipped = Path(__file__).resolve().parent.parent / "bitmamba_lsp" / "data" / "default"
    if (shipped / "model.bin").is_file():
        ft2 = tmp_path / "ft2"
        rest = args[args.index("--steps") :]
        assert main(["train", "--corpus", str(src), "--out", str(ft2), *rest]) == 0
        meta3 = json.loads((ft2 / "model.json").read_text())
        base = json.loads((shipped / "model.json").read_text())
        assert Path(meta3["init"]["from"]) == shipped and meta3["config"] == base["config"]
        assert (ft2 / "tokenizer.json").read_text() == (shipped / "tokenizer.json").read_text()


# ------------------------------------------------------------------ fill-in-the-middle (issue 16)


def test_fim_split_is_a_partition_with_the_daemons_shape():
    text = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(40))
    opts = data_mod.FimOptions(max_middle_lines=3, max_suffix_lines=5)
    rng = np.random.default_rng(0)
    at_line_start = mid_word = empty = 0
    for _ in range(400):
        p, m, s = data_mod.fim_split(text, opts, rng)
        assert text.startswith(p + m + s)  # prefix, middle, then the suffix window
        assert m.count("\n") <= opts.max_middle_lines
        rest_of_line = text[len(p) + len(m) :].split("\n", 1)[0]
        assert s.startswith(rest_of_line) and s.count("\n") <= opts.max_suffix_lines + 1
        at_line_start += p == "" or p.endswith("\n")
        empty += m == ""
        k = len(p) + len(m)
        mid_word += 0 < k < len(text) and text[k - 1].isalnum() and text[k].isalnum()
    assert 0.7 < at_line_start / 400 < 0.95  # line_start = 0.75, plus random cuts at a line start
    assert mid_word > 20 and empty > 5  # splits inside words, and middles with nothing to write


def test_encode_corpus_fim_lays_out_the_sentinels():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(__file__).resolve().parents[1] / "bitmamba_lsp" / "data" / "default" / "tokenizer.json"))
    assert data_mod.add_fim_tokens(tok) in (0, 3) and data_mod.add_fim_tokens(tok) == 0
    pre, suf, mid = data_mod.fim_ids(tok)
    eot = data_mod.eot_id(tok)
    docs = ["".join(f"x{i} = {i}\n" for i in range(300)), "print('<|fim_prefix|>')\n" * 40]
    opts = data_mod.FimOptions(rate=1.0, chunk_chars=200)
    arr = data_mod.encode_corpus_fim(tok, docs, opts, seed=0).tolist()
    assert arr == data_mod.encode_corpus_fim(tok, docs, opts, seed=0).tolist()  # deterministic
    # every piece: <pre> p <suf> s <mid> m <eot>, and the pieces' texts come from the documents
    pieces, cur = [], []
    for t in arr:
        cur.append(t)
        if t == eot and cur[0] == pre:
            pieces.append(cur)
            cur = []
        elif t == eot:
            cur = []  # a document's end
    n_chunks = sum(len(data_mod.chunk_lines(d, 200)) for d in docs)
    assert len(pieces) == n_chunks
    for piece in pieces:
        assert piece[0] == pre and piece.count(suf) == 1 and piece.count(mid) == 1 and piece[-1] == eot
        i, j = piece.index(suf), piece.index(mid)
        p, s, m = (tok.decode(piece[a:b], skip_special_tokens=False) for a, b in ((1, i), (i + 1, j), (j + 1, len(piece) - 1)))
        assert any((p + m + s) in d for d in docs)
    # the sentinel text in a document stays text
    assert arr.count(pre) == len(pieces)
    # rate 0: exactly the left-to-right encoding
    plain = data_mod.encode_corpus_fim(tok, docs, data_mod.FimOptions(rate=0.0, chunk_chars=200), seed=0)
    assert plain.tolist() == data_mod.encode_corpus(tok, docs).tolist()


def test_registry_packages_from_a_local_cache(tmp_path):
    """Packages as the cache holds them (no network): licenses checked per package, the
    benchmark's held-out packages excluded, packages held out whole."""
    from bitmamba_lsp.train import registry

    cache = tmp_path / "cache"

    def npm(name, license, files):
        root = cache / "npm" / f"{name}-1.0.0"
        for rel, text in files.items():
            _write(root / "src" / "package" / rel, text)
        _write(root / "src" / "package" / "package.json", json.dumps({"name": name, "license": license}))
        (root / ".unpacked").write_text("local")

    def pypi(name, license):
        root = cache / "pypi" / f"{name}-1.0.0"
        _write(root / "src" / f"{name}-1.0.0.dist-info" / "METADATA", f"Name: {name}\nLicense-Expression: {license}\n")
        _write(root / "src" / name / "__init__.py", "".join(f"def {name}_{i}(a, b):\n    return a * {i} + b\n" for i in range(30)))
        (root / ".unpacked").write_text("local")

    body = "".join(f"export function f{i}(a, b) {{\n  return a * {i} + b;\n}}\n" for i in range(30))
    npm("leftpad", "MIT", {"index.js": body, "lib/util.ts": body.replace("a, b", "a: number, b: number"),
                           "dist/index.min.js": body})  # fmt: skip
    npm("gplthing", "GPL-3.0", {"index.js": body + "// gpl\n"})
    pypi("goodpkg", "BSD-3-Clause")
    pypi("cachetools", "MIT")  # a benchmark package: never trained on
    pkgs = [registry.Package("npm", "leftpad", "1.0.0"), registry.Package("npm", "gplthing", "1.0.0"),
            registry.Package("pypi", "goodpkg", "1.0.0"), registry.Package("pypi", "cachetools", "1.0.0")]  # fmt: skip
    opts = corpus_mod.CorpusOptions(extensions=corpus_mod.CODE_EXTENSIONS, heldout_package_permille=0)
    c = corpus_mod.build_corpus(packages=pkgs, package_cache=cache, options=opts)
    names = {d.name for d in c.documents}
    assert names == {"npm/leftpad/package/index.js", "npm/leftpad/package/lib/util.ts", "pypi/goodpkg/goodpkg/__init__.py"}
    assert c.skipped["license:npm:gplthing"] == 1 and c.skipped["excluded:pypi:cachetools"] == 1
    # held out by package: all files of a held-out package on one side
    opts.heldout_package_permille = 1000
    c = corpus_mod.build_corpus(packages=pkgs, package_cache=cache, options=opts)
    assert {d.split for d in c.documents} == {"heldout"}
    # the shipped list parses and pins versions
    shipped = registry.read_list()
    assert {p.registry for p in shipped} == {"pypi", "npm"} and all(p.version[0].isdigit() for p in shipped)
    assert not {p.name for p in shipped} & corpus_mod.BENCHMARK_PACKAGES
    # every package the usefulness benchmark scores on is kept out of the corpus
    tree = ast.parse((Path(__file__).parents[1] / "benchmarks" / "bench_usefulness.py").read_text("utf-8"))
    packages = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "PACKAGES")
    assert {name for split in packages.values() for name, _ in split} == corpus_mod.BENCHMARK_PACKAGES


@needs_torch
def test_grow_vocabulary_keeps_the_old_rows():
    from bitmamba_lsp.train.model import BitMamba2, ModelConfig
    from bitmamba_lsp.train.trainer import grow_vocabulary

    torch.manual_seed(0)
    m = BitMamba2(ModelConfig(64, 32, 1, 2))
    g = grow_vocabulary(m, 67)
    assert g.embed.shape == (67, 32) and g.lm_head.weight.shape == (67, 32)
    assert torch.equal(g.embed[:64], m.embed) and torch.allclose(g.embed[64], m.embed.mean(0))
    assert torch.equal(g.lm_head.weight[:64], m.lm_head.weight)
    old, new = m.state_dict(), g.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if k not in ("embed", "lm_head.weight"))
