"""JAX/Flax msgpack checkpoints (the Hub's jax_weights/*.msgpack), offline: small checkpoints in the
published tree layout written here with the msgpack package (the flax ExtType encoding written by
hand, independently of the reader), loaded directly and compared with the .bin path; `bitmamba
convert` against a re-statement of bitmamba.cpp's scripts/export_bin.py; the Hub paths; bad files."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

msgpack = pytest.importorskip("msgpack")

from bitmamba_lsp import cli  # noqa: E402
from bitmamba_lsp.engine import load  # noqa: E402
from bitmamba_lsp.engine.errors import HubError, ModelFormatError  # noqa: E402
from bitmamba_lsp.engine.formats.bitmamba_bin import BitMamba2Config, TernaryTensor, write_bin  # noqa: E402
from bitmamba_lsp.engine.formats.flax_msgpack import read_msgpack  # noqa: E402
from bitmamba_lsp.engine.loader import choose_files, choose_repo_file  # noqa: E402

REPO = "Zhayr1/BitMamba-2-0.25B"
SEQ = [1, 5, 9, 2, 77, 3, 3, 140, 8, 0, 11, 250]


# ------------------------------------------------------------------ writing checkpoints (flax's way)


def flax_tree(cfg: BitMamba2Config, seed: int = 0) -> dict:
    """Random float32 parameters in the published Flax layout (kernels [in, out], conv [4, 1, di])."""
    rng = np.random.default_rng(seed)
    V, d, di, H = cfg.vocab_size, cfg.d_model, cfg.d_inner, cfg.n_heads

    def u(*shape: int, lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, size=shape).astype(np.float32)

    def n(*shape: int, s: float) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    params: dict = {"Embed_0": {"embedding": n(V, d, s=0.5)}}
    for i in range(cfg.n_layers):
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), size=H))
        params[f"BitMambaBlock_{i}"] = {
            "BitLinear_0": {
                "kernel": n(d, 2 * di + 3 * H, s=0.05),
                "RMSNorm_0": {"scale": u(d, lo=0.8, hi=1.2)},
            },
            "Conv_0": {"kernel": u(4, 1, di, lo=-0.5, hi=0.5), "bias": u(di, lo=-0.1, hi=0.1)},
            "dt_bias": (dt + np.log(-np.expm1(-dt))).astype(np.float32),
            "A_log": np.log(rng.uniform(1, 16, size=H)).astype(np.float32),
            "D": u(di, lo=0.5, hi=1.5),
            "BitLinear_1": {"kernel": n(di, d, s=0.05), "RMSNorm_0": {"scale": u(di, lo=0.8, hi=1.2)}},
        }
    params["RMSNorm_0"] = {"scale": u(d, lo=0.8, hi=1.2)}
    params["BitLinear_0"] = {"kernel": n(d, V, s=0.05), "RMSNorm_0": {"scale": u(d, lo=0.8, hi=1.2)}}
    return params


def _ext(arr: np.ndarray, dtype_name: str | None = None, data: bytes | None = None) -> msgpack.ExtType:
    # flax.serialization._ndarray_to_bytes: ExtType 1 of msgpack (shape, dtype name, C-order bytes)
    payload = msgpack.packb(
        (list(arr.shape), dtype_name or arr.dtype.name, arr.tobytes("C") if data is None else data),
        use_bin_type=True,
    )
    return msgpack.ExtType(1, payload)


def encode(params: dict, *, wrap: bool = True, bf16: bool = False, chunk: str | None = None) -> bytes:
    """msgpack_serialize of {"params": params}: arrays as ExtType 1 (bf16: every array stored as
    bfloat16, its bytes the top halves of the float32 values; chunk: that leaf as flax's chunked
    map of flat pieces)."""

    def conv(tree: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in tree.items():
            path = prefix + k
            if isinstance(v, dict):
                out[k] = conv(v, path + "/")
            elif path == chunk:
                flat = v.reshape(-1)
                pieces = [flat[i : i + 1000] for i in range(0, flat.size, 1000)]
                out[k] = {
                    "__msgpack_chunked_array__": True,
                    "shape": {str(i): s for i, s in enumerate(v.shape)},
                    "chunks": {str(i): _ext(p) for i, p in enumerate(pieces)},
                }
            elif isinstance(v, np.ndarray) and bf16:
                top = (np.ascontiguousarray(v, np.float32).view(np.uint32) >> 16).astype("<u2")
                out[k] = _ext(v, "bfloat16", top.tobytes())
            elif isinstance(v, np.ndarray):
                out[k] = _ext(v)
            else:
                out[k] = v
        return out

    tree = conv(params)
    return msgpack.packb({"params": tree} if wrap else tree, use_bin_type=True)


def bf16_round(params: dict) -> dict:
    """The float32 values a bfloat16 checkpoint of `params` holds (truncated mantissas)."""
    return {
        k: bf16_round(v) if isinstance(v, dict) else ((v.view(np.uint32) >> 16) << 16).view(np.float32)
        for k, v in params.items()
    }


# ----------------------------------------------------- the conversion, as bitmamba.cpp's export does it


def export_ternary(kernel: np.ndarray) -> tuple[int, int, float, bytes]:
    """scripts/loader.py + export_bin.py: the Flax kernel [in, out] transposed to [out, in] float32,
    scale = 1/mean|W| (float32), q = clip(round(W * scale), -1, 1), 4 codes per byte low bits first."""
    data = np.ascontiguousarray(np.asarray(kernel, np.float32).T)
    mean_abs = np.mean(np.abs(data))
    scale = 1.0 if mean_abs == 0 else 1.0 / mean_abs
    quant = np.clip(np.round(data * scale), -1, 1).astype(np.int8)
    flat = (quant.flatten() + 1).astype(np.uint8).reshape(-1, 4)
    packed = flat[:, 0] | (flat[:, 1] << 2) | (flat[:, 2] << 4) | (flat[:, 3] << 6)
    return data.shape[0], data.shape[1], float(scale), packed.astype(np.uint8).tobytes()


def export_records(params: dict) -> list[tuple[str, object]]:
    """The export's records in its order: ('f32', array in the .bin layout) or ('ternary', ...)."""
    recs: list[tuple[str, object]] = [("f32", params["Embed_0"]["embedding"])]
    i = 0
    while f"BitMambaBlock_{i}" in params:
        b = params[f"BitMambaBlock_{i}"]
        recs += [
            ("f32", b["BitLinear_0"]["RMSNorm_0"]["scale"]),
            ("ternary", export_ternary(b["BitLinear_0"]["kernel"])),
            ("f32", np.transpose(b["Conv_0"]["kernel"], (2, 1, 0))),  # torch permute(2, 1, 0)
            ("f32", b["Conv_0"]["bias"]),
            ("f32", b["dt_bias"]),
            ("f32", b["A_log"]),
            ("f32", b["D"]),
            ("f32", b["BitLinear_1"]["RMSNorm_0"]["scale"]),
            ("ternary", export_ternary(b["BitLinear_1"]["kernel"])),
        ]
        i += 1
    recs += [
        ("f32", params["RMSNorm_0"]["scale"]),
        ("f32", params["BitLinear_0"]["RMSNorm_0"]["scale"]),
        ("ternary", export_ternary(params["BitLinear_0"]["kernel"])),
    ]
    return recs


def export_bin_bytes(params: dict, cfg: BitMamba2Config) -> bytes:
    """What export_bin.py's export_packed writes (its struct calls, little-endian)."""
    out = [struct.pack("<iiiii", 0x42495432, cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads)]
    for kind, value in export_records(params):
        if kind == "f32":
            data = np.ascontiguousarray(value, dtype=np.float32)
            out.append(struct.pack("<ii", 0, data.ndim) + struct.pack(f"<{data.ndim}i", *data.shape))
            out.append(data.tobytes())
        else:
            rows, cols, scale, packed = value
            out.append(struct.pack("<iiif", 2, rows, cols, scale) + packed)
    return b"".join(out)


def write_reference_bin(path: Path, params: dict, cfg: BitMamba2Config) -> None:
    """The same conversion handed to the project's .bin writer."""
    names = [s[0] for s in cfg.tensor_specs()]
    tensors = {}
    for name, (kind, value) in zip(names, export_records(params), strict=True):
        if kind == "f32":
            tensors[name] = np.ascontiguousarray(value, dtype=np.float32)
        else:
            rows, cols, scale, packed = value
            tensors[name] = TernaryTensor(
                rows, cols, scale, np.frombuffer(packed, np.uint8).reshape(rows, -1)
            )
    write_bin(path, cfg, tensors)


# ------------------------------------------------------------------------------------ fixtures

CFG = BitMamba2Config(vocab_size=384, d_model=32, n_layers=2, n_heads=4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("flax")
    params = flax_tree(CFG, seed=3)
    src = root / "bitmamba_tiny.msgpack"
    src.write_bytes(encode(params))
    ref = root / "reference.bin"
    write_reference_bin(ref, params, CFG)
    return params, src, ref


def logits(model, ids=SEQ) -> np.ndarray:
    return model.prefill(model.new_state(), ids, all_logits=True)


# ------------------------------------------------------------------------------------ (a) loading


def test_loads_like_the_bin_of_an_independent_conversion(ckpt) -> None:
    _, src, ref = ckpt
    m = load(src, threads=1)
    b = load(ref, threads=1)
    assert m.arch == b.arch == "bitmamba2" and m.vocab_size == CFG.vocab_size
    assert (m.config.d_model, m.config.n_layers, m.config.n_heads) == (32, 2, 4)  # n_heads from dt_bias
    assert np.array_equal(logits(m), logits(b))
    assert m.name == "bitmamba_tiny" and m.extra.get("format") == "flax msgpack"


def test_converted_tensors_equal_the_export(ckpt) -> None:
    params, src, _ = ckpt
    from bitmamba_lsp.engine.formats.flax_msgpack import bin_tensors

    tensors = bin_tensors(read_msgpack(src))
    assert list(tensors) == [s[0] for s in CFG.tensor_specs()]
    for name, (kind, value) in zip(tensors, export_records(params), strict=True):
        got = tensors[name]
        if kind == "f32":
            assert np.array_equal(np.asarray(got), np.asarray(value, np.float32).reshape(np.shape(got))), name
        else:
            rows, cols, scale, packed = value
            assert isinstance(got, TernaryTensor) and (got.rows, got.cols) == (rows, cols), name
            assert np.float32(got.scale) == np.float32(scale), name
            assert got.packed.tobytes() == packed, name


def test_without_the_params_wrapper_bf16_and_chunked(ckpt, tmp_path) -> None:
    params, _, ref = ckpt
    want = logits(load(ref, threads=1))
    bare = tmp_path / "bare.msgpack"
    bare.write_bytes(encode(params, wrap=False))
    assert np.array_equal(logits(load(bare, threads=1)), want)
    chunked = tmp_path / "chunked.msgpack"  # flax splits arrays over 1 GiB this way
    chunked.write_bytes(encode(params, chunk="Embed_0/embedding"))
    assert np.array_equal(logits(load(chunked, threads=1)), want)
    # bfloat16 leaves are widened to float32 exactly, as np.array(x, dtype=np.float32) does
    bf = tmp_path / "bf16.msgpack"
    bf.write_bytes(encode(params, bf16=True))
    ref16 = tmp_path / "bf16.bin"
    write_reference_bin(ref16, bf16_round(params), CFG)
    assert np.array_equal(logits(load(bf, threads=1)), logits(load(ref16, threads=1)))


def test_a_folder_holding_one(ckpt, tmp_path) -> None:
    params, _, ref = ckpt
    folder = tmp_path / "model" / "jax_weights"
    folder.mkdir(parents=True)
    (folder / "m.msgpack").write_bytes(encode(params))
    assert np.array_equal(logits(load(tmp_path / "model", threads=1)), logits(load(ref, threads=1)))


# ------------------------------------------------------------------------------------ (b) convert


def test_convert_writes_what_export_bin_writes(ckpt, tmp_path, capsys) -> None:
    params, src, ref = ckpt
    out = tmp_path / "out.bin"
    assert cli.main(["convert", str(src), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    data = out.read_bytes()
    assert data == export_bin_bytes(params, CFG)  # record for record, byte for byte
    assert data == ref.read_bytes()
    assert np.array_equal(logits(load(out, threads=1)), logits(load(src, threads=1)))


def test_convert_errors_are_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"hello, world\n")
    assert cli.main(["convert", str(bad), str(tmp_path / "x.bin")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a Flax msgpack checkpoint" in err
    assert not (tmp_path / "x.bin").exists()
    assert cli.main(["convert", str(tmp_path / "nope.msgpack"), str(tmp_path / "x.bin")]) == 1


# ------------------------------------------------------------------------------------ (c) the Hub


def snapshot(cache: Path, repo: str, commit: str) -> Path:
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    folder = root / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def gpt2_ckpt(tmp_path_factory):
    cfg = BitMamba2Config(vocab_size=50257, d_model=32, n_layers=1, n_heads=2)
    params = flax_tree(cfg, seed=5)
    root = tmp_path_factory.mktemp("gpt2")
    ref = root / "ref.bin"
    write_reference_bin(ref, params, cfg)
    return encode(params), ref


def test_hub_repo_with_only_msgpack(gpt2_ckpt, tmp_path, monkeypatch) -> None:
    data, ref = gpt2_ckpt
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = snapshot(cache, "someone/bitmamba-jax", "d" * 40)
    (folder / "jax_weights").mkdir()
    (folder / "jax_weights" / "bitmamba_255m.msgpack").write_bytes(data)
    m = load("someone/bitmamba-jax", threads=1)
    assert m.name == "someone/bitmamba-jax" and m.tokenizer is not None and m.tokenizer.vocab_size == 50257
    ids = [15496, 11, 314, 716]
    assert np.array_equal(logits(m, ids), logits(load(ref, threads=1), ids))
    assert isinstance(m.complete("def f(x):", max_tokens=3, temperature=0), str)


def test_hub_repo_file_when_the_repo_also_has_a_bin(gpt2_ckpt, tmp_path, monkeypatch) -> None:
    data, ref = gpt2_ckpt
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = snapshot(cache, REPO, "e" * 40)
    (folder / "jax_weights").mkdir()
    (folder / "jax_weights" / "bitmamba_255m.msgpack").write_bytes(data)
    (folder / "bitmamba_cpp").mkdir()
    other = BitMamba2Config(vocab_size=50257, d_model=32, n_layers=1, n_heads=2)
    write_reference_bin(folder / "bitmamba_cpp" / "bitmamba_255m.bin", flax_tree(other, seed=9), other)
    ids = [15496, 11, 314, 716]
    want = logits(load(ref, threads=1), ids)
    assert not np.array_equal(logits(load(REPO, threads=1), ids), want)  # the repo id alone: the .bin
    for source in (f"{REPO}:jax_weights/bitmamba_255m.msgpack", f"{REPO}:*.msgpack"):
        m = load(source, threads=1)
        assert m.name == source and m.tokenizer is not None and m.extra.get("format") == "flax msgpack"
        assert np.array_equal(logits(m, ids), want)
    with pytest.raises(HubError) as e:
        load(f"{REPO}:jax_weights/bit_mamba_1b.msgpack")
    assert (
        "\n" not in str(e.value)
        and "bit_mamba_1b.msgpack" in str(e.value)
        and "HF_HUB_OFFLINE" in str(e.value)
    )


def test_choosing_files_from_a_listing() -> None:
    listing = [
        "README.md",
        "config.json",
        "pytorch_model.bin",
        "bitmamba_cpp/bitmamba_255m.bin",
        "jax_weights/bitmamba_255m.msgpack",
        "tokenizer.json",
    ]
    assert choose_files(listing) == ["bitmamba_cpp/bitmamba_255m.bin", "tokenizer.json"]  # .bin first
    assert choose_files(["README.md", "jax_weights/bitmamba_255m.msgpack"]) == [
        "jax_weights/bitmamba_255m.msgpack"
    ]
    assert choose_repo_file(listing, "*.msgpack") == ["jax_weights/bitmamba_255m.msgpack", "tokenizer.json"]
    assert (
        choose_repo_file(listing, "jax_weights/bitmamba_255m.msgpack")[0]
        == "jax_weights/bitmamba_255m.msgpack"
    )
    with pytest.raises(FileNotFoundError, match=r"no file 'x\.msgpack'"):
        choose_repo_file(listing, "x.msgpack")


# ------------------------------------------------------------------------------------ (d) bad files


def _drop(params: dict, path: str) -> dict:
    import copy

    out = copy.deepcopy(params)
    *parents, leaf = path.split("/")
    node = out
    for p in parents:
        node = node[p]
    del node[leaf]
    return out


def _set(params: dict, path: str, value) -> dict:
    import copy

    out = copy.deepcopy(params)
    *parents, leaf = path.split("/")
    node = out
    for p in parents:
        node = node[p]
    node[leaf] = value
    return out


def _bad_cases(params: dict) -> list[tuple[str, bytes, str]]:
    good = encode(params)
    nan = params["BitMambaBlock_1"]["BitLinear_0"]["kernel"].copy()
    nan[3, 5] = np.nan
    return [
        (
            "missing",
            encode(_drop(params, "BitMambaBlock_1/Conv_0/bias")),
            "missing leaf 'params/BitMambaBlock_1/Conv_0/bias' (expected shape (64,))",
        ),
        (
            "missing-head",
            encode(_drop(params, "BitLinear_0/RMSNorm_0")),
            "missing leaf 'params/BitLinear_0/RMSNorm_0/scale'",
        ),
        ("missing-block", encode(_drop(params, "BitMambaBlock_0")), "missing leaf 'params/BitMambaBlock_0/"),
        (
            "misshaped",
            encode(_set(params, "BitMambaBlock_0/BitLinear_1/kernel", np.zeros((32, 64), np.float32))),
            "leaf 'params/BitMambaBlock_0/BitLinear_1/kernel' has shape (32, 64), expected (64, 32)",
        ),
        (
            "misshaped-conv",
            encode(_set(params, "BitMambaBlock_1/Conv_0/kernel", np.zeros((64, 1, 4), np.float32))),
            "has shape (64, 1, 4), expected (4, 1, 64)",
        ),
        (
            "heads",
            encode(_set(params, "BitMambaBlock_1/A_log", np.zeros(5, np.float32))),
            "leaf 'params/BitMambaBlock_1/A_log' has shape (5,), expected (4,)",
        ),
        (
            "dtype",
            encode(_set(params, "BitMambaBlock_0/D", np.ones(64, np.int32))),
            "leaf 'params/BitMambaBlock_0/D' has dtype int32, expected a float array",
        ),
        (
            "not-array",
            encode(_set(params, "RMSNorm_0/scale", "ones")),
            "leaf 'params/RMSNorm_0/scale' is a str",
        ),
        (
            "nan",
            encode(_set(params, "BitMambaBlock_1/BitLinear_0/kernel", nan)),
            "leaf 'params/BitMambaBlock_1/BitLinear_0/kernel': contains NaN",
        ),
        ("truncated", good[: len(good) // 2], "truncated"),
        ("truncated-end", good[:-1], "truncated"),
        ("trailing", good + b"\x00", "trailing data"),
        ("text", b"this is not msgpack\n", "not a Flax msgpack checkpoint"),
        ("bin", struct.pack("<5i", 0x42495432, 384, 32, 2, 4), "not a Flax msgpack checkpoint"),
        ("empty", b"", "empty file"),
        ("garbage", b"\x81\xa6params\xc1", "not valid msgpack"),
    ]


def test_bad_checkpoints_are_one_line_errors(ckpt, tmp_path) -> None:
    params, _, _ = ckpt
    for label, data, expected in _bad_cases(params):
        path = tmp_path / f"{label}.msgpack"
        path.write_bytes(data)
        with pytest.raises(ModelFormatError) as e:
            load(path, threads=1)
        msg = str(e.value)
        assert expected in msg, (label, msg)
        assert "\n" not in msg and str(path) in msg, (label, msg)


def test_generate_with_a_bad_msgpack_prints_one_line(ckpt, tmp_path) -> None:
    params, _, _ = ckpt
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(encode(_drop(params, "BitMambaBlock_0/dt_bias")))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bitmamba_lsp.cli",
            "generate",
            "--model",
            str(bad),
            "--ids",
            "1 2",
            "-n",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing leaf 'params/BitMambaBlock_0/dt_bias'" in lines[0], proc.stderr


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_failed_loads_do_not_keep_the_file_open(ckpt, tmp_path) -> None:
    import gc

    params, _, _ = ckpt
    nan = params["BitLinear_0"]["kernel"].copy()
    nan[0, 0] = np.nan  # found in the last tensor converted: after every other view was made
    paths = {"nan": encode(_set(params, "BitLinear_0/kernel", nan)), "cut": encode(params)[:-7]}
    for label, data in paths.items():
        (tmp_path / f"{label}.msgpack").write_bytes(data)
    gc.collect()
    before = len(list(Path("/proc/self/fd").iterdir()))
    for _ in range(30):
        for label in paths:
            with pytest.raises(ModelFormatError):
                load(tmp_path / f"{label}.msgpack", threads=1)
    gc.collect()
    assert len(list(Path("/proc/self/fd").iterdir())) <= before + 2
