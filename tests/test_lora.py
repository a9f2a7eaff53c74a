"""LoRA adapters in bitmamba.cpp's file format (--lora FILE, load(..., lora=FILE), the daemon's `lora`
setting, `bitmamba serve --lora`, `bitmamba train --lora`).

The expected logits come from the NumPy reference forward (tests/reference.py) extended here with the
published LoRA term: every block's in_proj and out_proj output gets (alpha / rank) * B (A xn), xn the
projection's input after its RMSNorm (bitmamba.cpp: src/lora.cpp apply_lora_delta, called by
bitlinear_forward in src/kernels.cpp after the ternary product, with the x_norm it quantized). The
adapter files are written here from the published layout (scripts/export_lora_bin.py), not by the
code under test. bitmamba.cpp itself is not available on this machine, so "the same greedy tokens
as bitmamba.cpp" is checked against the reference instead.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import RefBitMamba2, Ties, bitlinear, rms_norm

import bitmamba_lsp
from bitmamba_lsp.engine.errors import ModelFormatError, ModelNotFoundError
from bitmamba_lsp.engine.formats.bitmamba_bin import BitMamba2Config, load_bin

TIE = 6e-5  # as tests/test_model.py: steps that meet a rounding tie are skipped
REL_TOL = 1e-4


def lor2_bytes(
    rank: int, alpha: float, layers, *, magic=0x4C4F5232, version=1, n_targets=2, n_layers=None
) -> bytes:
    """The file as bitmamba.cpp's scripts/export_lora_bin.py writes it: header <IIIfII, then per
    layer and target (0 in_proj, 1 out_proj) <5I (layer, target, out, in, rank), A, B as float32."""
    out = struct.pack(
        "<IIIfII", magic, version, rank, alpha, len(layers) if n_layers is None else n_layers, n_targets
    )
    for li, (a_in, b_in, a_out, b_out) in enumerate(layers):
        for t, (a, b) in enumerate(((a_in, b_in), (a_out, b_out))):
            out += struct.pack("<5I", li, t, b.shape[0], a.shape[1], rank)
            out += np.asarray(a, "<f4").tobytes() + np.asarray(b, "<f4").tobytes()
    return out


def random_adapter(cfg: BitMamba2Config, rank: int, seed: int, b_std: float = 0.05):
    rng = np.random.default_rng(seed)
    d, di, dp = cfg.d_model, cfg.d_inner, cfg.d_in_proj

    def m(shape, std):
        return rng.normal(0, std, shape).astype(np.float32)

    return [
        (m((rank, d), d**-0.5), m((dp, rank), b_std), m((rank, di), di**-0.5), m((d, rank), b_std))
        for _ in range(cfg.n_layers)
    ]


class RefLora(RefBitMamba2):
    """The reference forward with the LoRA term, over a layer schedule (RYS: the adapter of weight
    layer l on every pass of l)."""

    def __init__(
        self, cfg, tensors, adapter, rank: int, alpha: float, order: list[int] | None = None
    ) -> None:
        super().__init__(cfg, tensors)
        self.scale = float(np.float32(alpha) / np.float32(rank))  # bitmamba.cpp: alpha / (float)rank
        order = list(range(cfg.n_layers)) if order is None else order
        self.adapters = [[np.asarray(x, np.float64) for x in adapter[i]] for i in order]
        self.layers = [self.layers[i] for i in order]  # the same weights, one pass each

    def delta(self, x, norm_w, A, B):
        return self.scale * (B @ (A @ rms_norm(x, norm_w)))

    def step(self, state, token):
        h = self.embed[token].copy()
        for ly, (a_in, b_in, a_out, b_out), st in zip(self.layers, self.adapters, state, strict=True):
            p = bitlinear(h, ly["in_q"], ly["in_scale"], ly["in_norm"]) + self.delta(h, ly["in_norm"], a_in, b_in)
            y = self.mixer(ly, st, p)
            h = (
                h
                + bitlinear(y, ly["out_q"], ly["out_scale"], ly["out_norm"])
                + self.delta(y, ly["out_norm"], a_out, b_out)
            )
        return self.logits(h)


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def check_against(model, ref, ids) -> int:
    """Per step, the state re-synchronised from the engine (as tests/test_model.py); returns the
    number of steps compared (steps that meet a rounding tie are skipped)."""
    state, checked = model.new_state(), 0
    for t in ids:
        rstate = ref.load_flat(state.to_numpy())
        Ties.reset()
        want = ref.step(rstate, int(t))
        got = model.step(state, int(t))
        if Ties.nearest < TIE:
            continue
        assert rel_err(got, want) < REL_TOL
        assert rel_err(state.to_numpy(), ref.flat(rstate)) < REL_TOL
        checked += 1
    assert checked >= len(ids) // 2
    return checked


@pytest.fixture
def setup(model_factory, tmp_path):
    path, cfg, tensors = model_factory(300, 64, 2, 4, seed=11)
    adapter = random_adapter(cfg, 4, seed=1)
    f = tmp_path / "a.lora.bin"
    f.write_bytes(lor2_bytes(4, 8.0, adapter))
    return path, cfg, tensors, adapter, f


# ------------------------------------------------------------------------------ the forward pass


@pytest.mark.parametrize("shape", [(300, 64, 2, 4), (97, 36, 3, 3), (300, 128, 2, 1)])
@pytest.mark.parametrize("kernels", ["simd", "scalar"])
@pytest.mark.parametrize("rank", [1, 4, 16])
def test_matches_the_reference_with_the_adapter(model_factory, tmp_path, shape, kernels, rank) -> None:
    path, cfg, tensors = model_factory(*shape, seed=7)
    adapter = random_adapter(cfg, rank, seed=rank)
    f = tmp_path / "a.lora.bin"
    f.write_bytes(lor2_bytes(rank, 2.0 * rank, adapter))
    model = bitmamba_lsp.load(path, threads=2, kernels=kernels, lora=f)
    plain = load_bin(path, threads=2, kernels=kernels)
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, 40)
    check_against(model, RefLora(cfg, tensors, adapter, rank, 2.0 * rank), ids)
    # the adapter matters (not a no-op that the reference happens to agree with)
    a = model.prefill(model.new_state(), ids)
    b = plain.prefill(plain.new_state(), ids)
    assert rel_err(a, b) > 1e-2
    assert model.core.info["lora_rank"] == rank and model.extra["lora"]["rank"] == rank


def test_prefill_step_and_step_batch_agree_exactly(setup) -> None:
    path, cfg, _, _, f = setup
    model = bitmamba_lsp.load(path, threads=2, lora=f)
    rng = np.random.default_rng(4)
    for T in (1, 3, 64, 65, 150):
        ids = rng.integers(0, cfg.vocab_size, T)
        s1, s2 = model.new_state(), model.new_state()
        l1 = model.prefill(s1, ids)
        for t in ids:
            l2 = model.step(s2, int(t))
        assert np.array_equal(l1, l2) and s1.equals(s2), T
    prompts = [rng.integers(0, cfg.vocab_size, n) for n in (3, 10, 1, 7)]
    batch, single = [model.new_state() for _ in prompts], [model.new_state() for _ in prompts]
    for sb, ss, p in zip(batch, single, prompts, strict=True):
        model.prefill(sb, p)
        model.prefill(ss, p)
    for _ in range(3):
        toks = rng.integers(0, cfg.vocab_size, len(prompts))
        logits = model.step_batch(batch, toks)
        for i, (ss, t) in enumerate(zip(single, toks, strict=True)):
            assert np.array_equal(logits[i], model.step(ss, int(t)))
    # and the thread count does not change a bit
    ids = rng.integers(0, cfg.vocab_size, 70)
    outs = []
    for threads in (1, 3):
        model.threads = threads
        s = model.new_state()
        outs.append((model.prefill(s, ids), s.to_bytes()))
    assert np.array_equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]


def test_a_zero_b_adapter_changes_nothing(setup, tmp_path) -> None:
    path, cfg, _, adapter, _ = setup
    zero = [(a, np.zeros_like(b), c, np.zeros_like(d)) for a, b, c, d in adapter]
    f = tmp_path / "zero.lora.bin"
    f.write_bytes(lor2_bytes(4, 8.0, zero))
    model = bitmamba_lsp.load(path, threads=2, lora=f)
    plain = load_bin(path, threads=2)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, 80)
    a, b = model.new_state(), plain.new_state()
    assert np.array_equal(model.prefill(a, ids), plain.prefill(b, ids))
    assert np.array_equal(a.to_numpy(), b.to_numpy())
    assert np.array_equal(model.step(a, 5), plain.step(b, 5))


def test_with_layer_repetition_every_pass_gets_its_layers_adapter(model_factory, tmp_path) -> None:
    path, cfg, tensors = model_factory(300, 64, 3, 4, seed=13)
    adapter = random_adapter(cfg, 4, seed=2)
    f = tmp_path / "a.lora.bin"
    f.write_bytes(lor2_bytes(4, 8.0, adapter))
    model = bitmamba_lsp.load(path, threads=2, repeat=(1, 2, 2), lora=f)
    order = [0, 1, 2, 1, 2, 1, 2]  # bitmamba.cpp's schedule for S=1, E=2, N=2 on 3 layers
    assert model.core.info["layer_passes"] == len(order)
    ids = np.random.default_rng(6).integers(0, cfg.vocab_size, 30)
    check_against(model, RefLora(cfg, tensors, adapter, 4, 8.0, order), ids)
    s1, s2 = model.new_state(), model.new_state()
    model.prefill(s1, ids)
    for t in ids:
        model.step(s2, int(t))
    assert s1.equals(s2)


def test_states_name_the_adapter(setup, tmp_path) -> None:
    path, cfg, _, _, f = setup
    model = bitmamba_lsp.load(path, threads=1, lora=f)
    plain = bitmamba_lsp.load(path, threads=1)
    other = tmp_path / "b.lora.bin"
    other.write_bytes(lor2_bytes(4, 8.0, random_adapter(cfg, 4, seed=99)))
    model_b = bitmamba_lsp.load(path, threads=1, lora=other)
    for src, dst in ((plain, model), (model, plain), (model, model_b)):
        with pytest.raises(ValueError, match="different model"):
            dst.state_from_bytes(src.new_state().to_bytes())
    again = bitmamba_lsp.load(path, threads=1, lora=f)  # the same adapter: the same model
    s = again.state_from_bytes(model.new_state().to_bytes())
    assert s.n_tokens == 0


def test_the_up_projection_kernel() -> None:
    """fgemv_t_acc (the B product on B transposed): each level against float64, and every column
    the same bits wherever a range starts (the engine splits the rows over threads)."""
    from bitmamba_lsp import _core

    rng = np.random.default_rng(8)
    for rank, cols in [(1, 1), (4, 7), (16, 268), (3, 100), (16, 4144), (32, 65)]:
        Wt = rng.normal(size=(rank, cols)).astype(np.float32)
        a = rng.normal(size=rank).astype(np.float32)
        y = rng.normal(size=cols).astype(np.float32)
        want = y.astype(np.float64) + 0.75 * (a.astype(np.float64) @ Wt.astype(np.float64))
        for level in ("scalar", "simd"):
            got = _core.fgemv_t_acc(Wt, a, y, 0.75, level=level)
            assert np.abs(got - want).max() <= 1e-5 * np.sqrt(rank) * (1 + np.abs(want).max())
            for cut in (1, 5, 8, 31, 64, cols // 2):
                if cut < cols:
                    part = _core.fgemv_t_acc(Wt, a, y, 0.75, 0, cut, level=level)
                    part = _core.fgemv_t_acc(Wt, a, part, 0.75, cut, cols, level=level)
                    assert np.array_equal(part, got), (level, rank, cols, cut)
        assert np.array_equal(_core.fgemv_t_acc(Wt, a, y, 0.75, cols // 2, cols // 2), y)  # empty range: no write


# ------------------------------------------------------------------------------------ the file


def test_the_writer_writes_the_published_layout(setup, tmp_path) -> None:
    from bitmamba_lsp.engine.lora import parse_lora, read_lora, write_lora

    _, _, _, adapter, f = setup
    out = write_lora(tmp_path / "w.lora.bin", 4, 8.0, adapter)
    assert out.read_bytes() == f.read_bytes()
    assert f.read_bytes()[:4] == b"2ROL"  # 0x4C4F5232 little-endian
    ad = read_lora(f)
    assert (ad.rank, ad.alpha, ad.n_layers, ad.scale) == (4, 8.0, 2, 2.0)
    for got, want in zip(ad.layers, adapter, strict=True):
        for g, w in zip(got, want, strict=True):
            assert g.dtype == np.float32 and np.array_equal(g, w)
    assert parse_lora(f.read_bytes()).rank == 4


def _bad_files(cfg, adapter):
    good = lor2_bytes(4, 8.0, adapter)
    a_in, b_in = adapter[0][:2]
    missing = struct.pack("<IIIfII", 0x4C4F5232, 1, 4, 8.0, 2, 2)
    for li, t, a, b in ((0, 0, a_in, b_in), (1, 0, a_in, b_in)):  # layer 0 has no out_proj
        missing += struct.pack("<5I", li, t, b.shape[0], a.shape[1], 4) + a.tobytes() + b.tobytes()
    small = BitMamba2Config(300, 32, 2, 4)
    two_heads = BitMamba2Config(300, 64, 2, 2)
    nan = [tuple(x.copy() for x in layer) for layer in adapter]
    nan[1][3][0, 0] = np.nan
    rank3 = bytearray(good)
    struct.pack_into("<I", rank3, 24 + 16, 3)
    return {
        "magic": (b"XXXX" + good[4:], "not a LoRA adapter"),
        "a model": (struct.pack("<i", 0x42495432) + good[4:], "not a LoRA adapter"),
        "version": (lor2_bytes(4, 8.0, adapter, version=2), "version 2"),
        "targets": (lor2_bytes(4, 8.0, adapter, n_targets=3), "3 targets"),
        "empty": (b"", "empty"),
        "short header": (good[:10], "truncated"),
        "truncated": (good[:-5], "truncated"),
        "fewer layers than the header": (lor2_bytes(4, 8.0, adapter[:1], n_layers=2), "truncated"),
        "missing target": (missing, "expected layer 0 out_proj"),
        "trailing bytes": (good + b"\0" * 8, "after its last layer"),
        "layer count": (lor2_bytes(4, 8.0, adapter[:1]), "is for a 1-layer model, this model has 2 layers"),
        "d_model": (lor2_bytes(4, 8.0, random_adapter(small, 4, 0)), "is for d_model 32, this model has 64"),
        "heads": (
            lor2_bytes(4, 8.0, random_adapter(two_heads, 4, 0)),
            "layer 0 in_proj is 262x64, this model's is 268x64",
        ),
        "nan": (lor2_bytes(4, 8.0, nan), "layer 1 out_proj B contains NaN"),
        "slot rank": (bytes(rank3), "rank 3, the header says 4"),
        "rank 0": (lor2_bytes(0, 8.0, []), "rank 0"),
    }


@pytest.mark.parametrize(
    "case",
    ["magic", "a model", "version", "targets", "empty", "short header", "truncated", "fewer layers than the header",
     "missing target", "trailing bytes", "layer count", "d_model", "heads", "nan", "slot rank", "rank 0"],
)  # fmt: skip
def test_bad_files_give_one_clear_error(setup, tmp_path, case) -> None:
    path, cfg, _, adapter, _ = setup
    data, message = _bad_files(cfg, adapter)[case]
    f = tmp_path / "bad.lora.bin"
    f.write_bytes(data)
    with pytest.raises(ModelFormatError) as e:
        bitmamba_lsp.load(path, threads=1, lora=f)
    text = str(e.value)
    assert message in text and str(f) in text and "\n" not in text, text


def test_missing_files_and_misplaced_adapters(setup, tmp_path) -> None:
    import shutil

    path, _, _, _, f = setup
    with pytest.raises(ModelNotFoundError, match=r"LoRA file .* not found"):
        bitmamba_lsp.load(path, lora=tmp_path / "nope.lora.bin")
    with pytest.raises(ModelFormatError, match=r"is a LoRA adapter .* not a model: give it with --lora"):
        bitmamba_lsp.load(f)
    folder = tmp_path / "m"  # an adapter beside the model is not taken for the model
    folder.mkdir()
    shutil.copy(f, folder / "a.lora.bin")
    shutil.copy(path, folder / "m.bin")
    assert bitmamba_lsp.load(folder, threads=1).path.name == "m.bin"


def test_only_bitmamba2_models_take_adapters(setup) -> None:
    from bitmamba_lsp.engine.lora import LoraFormatError, check_fits, read_lora

    _, _, _, _, f = setup
    with pytest.raises(LoraFormatError, match="BitMamba-2 models; this model is mamba1"):
        check_fits(read_lora(f), {"arch": "mamba1"}, "x")


# ----------------------------------------------------------------------- command line, daemon, server


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitmamba_lsp.cli", *args], capture_output=True, text=True)


def test_the_cli_flag(setup, tmp_path) -> None:
    path, _, _, _, f = setup
    base = [
        "generate",
        "--model",
        str(path),
        "--ids",
        "1 2 3",
        "-n",
        "6",
        "--greedy",
        "--threads",
        "1",
        "--quiet",
    ]
    r = _cli(*base, "--lora", str(f))
    assert r.returncode == 0, r.stderr
    got = [int(x) for x in r.stdout.split()]
    model = bitmamba_lsp.load(path, threads=1, lora=f)  # the API's greedy tokens
    state, want = model.new_state(), []
    logits = model.prefill(state, [1, 2, 3])
    for _ in range(6):
        want.append(int(np.argmax(logits)))
        logits = model.step(state, want[-1])
    assert got == want
    plain = _cli(*base)
    assert plain.returncode == 0 and plain.stdout.split() != r.stdout.split()
    bad = tmp_path / "bad.lora.bin"
    bad.write_bytes(b"nonsense" * 4)
    r = _cli(*base, "--lora", str(bad))
    assert r.returncode == 1 and "LoRA file" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_greedy_tokens_follow_the_reference(setup) -> None:
    """bitmamba.cpp is not available here: the greedy continuation is checked against the NumPy
    reference with the adapter instead (where no rounding tie is met, the argmax agrees)."""
    path, cfg, tensors, adapter, f = setup
    model = bitmamba_lsp.load(path, threads=1, lora=f)
    ref = RefLora(cfg, tensors, adapter, 4, 8.0)
    state, rstate = model.new_state(), ref.new_state()
    Ties.reset()
    tok = 7
    for _ in range(24):
        logits, rlogits = model.step(state, tok), ref.step(rstate, tok)
        if Ties.nearest < TIE:
            break
        top2 = np.sort(rlogits)[-2:]
        if top2[1] - top2[0] > 1e-3:
            assert int(np.argmax(logits)) == int(np.argmax(rlogits))
        tok = int(np.argmax(rlogits))


def test_bitmamba_serve_passes_lora(setup, tmp_path) -> None:
    path, _, _, _, _ = setup
    bad = tmp_path / "bad.lora.bin"
    bad.write_bytes(b"LOR2" * 8)
    r = _cli("serve", "--model", str(path), "--lora", str(bad), "--port", "0")
    assert r.returncode == 1 and "LoRA file" in r.stderr and str(bad) in r.stderr, r.stderr


@pytest.mark.asyncio(loop_scope="function")
async def test_the_daemon_setting(fim_model_dir, tmp_path) -> None:
    """`lora` loads the model with the adapter; a change reloads it (a bad file: the model fails with the
    file's error; a good one: ready again)."""
    import asyncio

    from lsp_client import start_server, status, stop_server
    from lsprotocol import types as T

    from bitmamba_lsp.engine.formats.bitmamba_bin import read_bin

    cfg = read_bin(fim_model_dir / "model.bin").config
    good = tmp_path / "a.lora.bin"
    good.write_bytes(lor2_bytes(4, 8.0, random_adapter(cfg, 4, 3)))
    bad = tmp_path / "small.lora.bin"
    bad.write_bytes(lor2_bytes(4, 8.0, random_adapter(BitMamba2Config(cfg.vocab_size, 32, 2, 4), 4, 3)))

    async def settled(want: str) -> dict:
        for _ in range(300):
            st = await status(lc)
            if st["model_state"] == want:
                return st
            await asyncio.sleep(0.05)
        raise AssertionError(f"model state {st['model_state']}, wanted {want}: {st['model_error']}")

    lc, _ = await start_server(fim_model_dir, options={"lora": str(bad), "threads": 1}, wait=False)
    try:
        st = await settled("failed")
        assert "d_model 32" in st["model_error"] and str(bad) in st["model_error"]
        lc.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"lora": str(good)}))
        await settled("ready")
        lc.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"lora": str(bad)}))
        await settled("failed")
        lc.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"lora": ""}))
        await settled("ready")
    finally:
        await stop_server(lc)


# ----------------------------------------------------------------------------------- training


def test_train_lora_writes_an_adapter_that_lowers_the_loss(fim_model_dir, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from bitmamba_lsp.engine.lora import read_lora
    from bitmamba_lsp.train.export import load_exported
    from bitmamba_lsp.train.lora import add_adapters

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        body = "".join(f"def f{i}_{k}(a, b):\n    return a * {k} + b\n\n\n" for k in range(40))
        (corpus / f"m{i}.py").write_text(body)
    out = tmp_path / "repo.lora.bin"
    r = _cli("train", "--lora", "--init", str(fim_model_dir), "--corpus", str(corpus), "--out", str(out),
             "--steps", "8", "--no-compile", "--seq-len", "64", "--batch-size", "4", "--lr", "1e-2",
             "--warmup-steps", "1", "--threads", "1", "--eval-every", "1000", "--lora-rank", "4",
             "--lora-alpha", "8")  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ad = read_lora(out)
    assert (ad.rank, ad.alpha, ad.n_layers) == (4, 8.0, 2)
    plain = bitmamba_lsp.load(fim_model_dir, threads=1)
    model = bitmamba_lsp.load(fim_model_dir, threads=1, lora=out)
    ids = plain.encode((corpus / "m0.py").read_text()[:1500])

    def nll(m) -> float:
        logits = m.prefill(m.new_state(), ids[:-1], all_logits=True).astype(np.float64)
        mx = logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits - mx).sum(axis=1)) + mx[:, 0]
        return float(np.mean(lse - logits[np.arange(len(ids) - 1), ids[1:]]))

    before, after = nll(plain), nll(model)
    assert after < before - 0.05, (before, after)
    # the trainer's LoRA form is the engine's: the PyTorch engine-form forward with the file's matrices
    tm, _, _ = load_exported(fim_model_dir)
    add_adapters(tm, ad.rank, ad.alpha)
    with torch.no_grad():
        for ly, (a_in, b_in, a_out, b_out) in zip(tm.layers, ad.layers, strict=True):
            for lin, a, b in ((ly.in_proj, a_in, b_in), (ly.out_proj, a_out, b_out)):
                lin.lora.A.copy_(torch.from_numpy(a))
                lin.lora.B.copy_(torch.from_numpy(b))
        want = tm(torch.tensor([ids[:40]]), exact=True)[0].numpy()
    got = model.prefill(model.new_state(), ids[:40], all_logits=True)
    assert rel_err(got, want) < 1e-3
    meta = (tmp_path / "repo.lora.bin.run" / "lora.json").read_text()
    assert '"after"' in meta and '"before"' in meta


def test_train_lora_refuses_from_scratch(tmp_path) -> None:
    pytest.importorskip("torch")
    r = _cli(
        "train", "--lora", "--from-scratch", "--corpus", str(tmp_path), "--out", str(tmp_path / "x.lora.bin")
    )
    assert r.returncode == 2 and "--lora" in r.stderr


def test_the_model_records_its_adapter(setup) -> None:
    path, _, _, _, f = setup
    model = bitmamba_lsp.load(path, threads=1, lora=str(f))
    assert Path(model.extra["lora"]["path"]) == f
