"""The .bin loader rejects every malformed file with a clear error naming the tensor; no crash."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from bitmamba_lsp.bench import rss_mb
from bitmamba_lsp.engine import load
from bitmamba_lsp.engine.formats.bitmamba_bin import (
    BitMamba2Config,
    ModelFormatError,
    load_bin,
    read_bin,
)

CFG = BitMamba2Config(vocab_size=64, d_model=32, n_layers=2, n_heads=2)


@pytest.fixture(scope="module")
def good(model_factory) -> tuple[Path, bytes, list[tuple[str, int, int]]]:
    """A valid file, its bytes, and (tensor, record start, data start) of every record."""
    path, cfg, _ = model_factory(CFG.vocab_size, CFG.d_model, CFG.n_layers, CFG.n_heads)
    data = path.read_bytes()
    records = []
    pos = 20
    for name, kind, shape in cfg.tensor_specs():
        start = pos
        if kind == "f32":
            pos += 8 + 4 * len(shape)
            data_start = pos
            pos += 4 * math.prod(shape)
        else:
            pos += 16
            data_start = pos
            pos += shape[0] * ((shape[1] + 3) // 4)
        records.append((name, start, data_start))
    assert pos == len(data)
    return path, data, records


def _write(tmp_path: Path, data: bytes, name: str = "bad.bin") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _load_fails(path: Path, match: str | None = None) -> str:
    with pytest.raises(ModelFormatError) as e:
        load_bin(path)
    msg = str(e.value)
    assert str(path) in msg
    if match:
        assert match in msg, msg
    return msg


def test_valid_file_loads(good) -> None:
    path, _, _ = good
    m = load_bin(path)
    assert m.vocab_size == CFG.vocab_size and m.config == CFG


def test_truncation_at_every_record_boundary(good, tmp_path) -> None:
    _, data, records = good
    cuts = set()
    for _name, start, data_start in records:
        cuts.update({start, start + 2, start + 4, data_start, data_start + 1})
    cuts.update({0, 1, 4, 19, len(data) - 1})
    for cut in sorted(c for c in cuts if c < len(data)):
        path = _write(tmp_path, data[:cut])
        msg = _load_fails(path)
        assert "truncated" in msg or "empty" in msg, msg
        if cut >= 20:
            # the message names the tensor being read
            name = next(n for n, s, _ in reversed(records) if s <= cut)
            assert f"'{name}'" in msg, (cut, msg)


def test_trailing_data_wrong_magic_unknown_type(good, tmp_path) -> None:
    _, data, records = good
    _load_fails(_write(tmp_path, data + b"\0\0\0\0"), "trailing data")
    _load_fails(_write(tmp_path, b"GGUF" + data[4:]), "wrong magic")
    name, start, _ = records[5]
    bad = bytearray(data)
    bad[start : start + 4] = struct.pack("<i", 7)
    _load_fails(_write(tmp_path, bytes(bad)), f"tensor '{name}': unknown record type 7")
    # a float record where a ternary one belongs
    name, start, _ = next(r for r in records if r[0].endswith("in_proj"))
    bad = bytearray(data)
    bad[start : start + 4] = struct.pack("<i", 0)
    _load_fails(_write(tmp_path, bytes(bad)), f"'{name}'")


def test_dims_inconsistent_with_header(good, tmp_path) -> None:
    _, data, records = good
    for target in ("layers.0.conv1d_b", "layers.1.D", "norm_f"):
        _, start, _ = next(r for r in records if r[0] == target)
        bad = bytearray(data)
        (dim,) = struct.unpack_from("<i", bad, start + 8)
        struct.pack_into("<i", bad, start + 8, dim + 1)
        _load_fails(_write(tmp_path, bytes(bad)), f"tensor '{target}'")
    _name, start, _ = next(r for r in records if r[0] == "lm_head")
    bad = bytearray(data)
    struct.pack_into("<i", bad, start + 8, CFG.d_model + 4)  # cols
    _load_fails(_write(tmp_path, bytes(bad)), "tensor 'lm_head': ternary shape")


@pytest.mark.parametrize("target", ["layers.0.in_proj", "layers.1.out_proj", "lm_head"])
def test_code_3_in_packed_weights(good, tmp_path, target) -> None:
    _, data, records = good
    _, _, data_start = next(r for r in records if r[0] == target)
    bad = bytearray(data)
    bad[data_start + 5] |= 0b11000000
    _load_fails(_write(tmp_path, bytes(bad)), f"tensor '{target}': invalid ternary code 3")


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale(good, tmp_path, scale) -> None:
    _, data, records = good
    name, start, _ = next(r for r in records if r[0] == "layers.1.in_proj")
    bad = bytearray(data)
    struct.pack_into("<f", bad, start + 12, scale)
    _load_fails(_write(tmp_path, bytes(bad)), f"tensor '{name}': scale")


def test_non_finite_parameters(good, tmp_path) -> None:
    _, data, records = good
    _, _, data_start = next(r for r in records if r[0] == "layers.0.A_log")
    bad = bytearray(data)
    struct.pack_into("<f", bad, data_start, float("nan"))
    _load_fails(_write(tmp_path, bytes(bad)), "tensor 'layers.0.A_log': contains NaN")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ((2**30, 32, 2, 2), "vocab_size"),
        ((64, 2**20, 2, 2), "d_model"),
        ((64, 32, 10**6, 2), "n_layers"),
        ((64, 32, 2, 0), "n_heads"),
        ((64, 32, 2, 3), "not divisible"),
        ((-5, 32, 2, 2), "vocab_size"),
    ],
)
def test_absurd_header(good, tmp_path, fields, match) -> None:
    _, data, _ = good
    bad = struct.pack("<i", 0x42495432) + struct.pack("<4i", *fields) + data[20:]
    _load_fails(_write(tmp_path, bad), match)


def test_random_byte_flips_never_crash(good, tmp_path) -> None:
    """Flip bytes in the header and every record header: a clean load or ModelFormatError, nothing else."""
    _, data, records = good
    rng = np.random.default_rng(0)
    header_bytes = list(range(20))
    for _, start, data_start in records:
        header_bytes += list(range(start, data_start))
    outcomes = {"error": 0, "ok": 0}
    for i in range(400):
        bad = bytearray(data)
        for pos in rng.choice(header_bytes, size=1 + i % 3, replace=False):
            bad[pos] ^= int(rng.integers(1, 256))
        path = _write(tmp_path, bytes(bad), f"flip{i % 4}.bin")
        try:
            load_bin(path)
            outcomes["ok"] += 1
        except ModelFormatError:
            outcomes["error"] += 1
    assert outcomes["error"] > 300


def test_missing_and_odd_paths(tmp_path) -> None:
    with pytest.raises(ModelFormatError, match="cannot open"):
        read_bin(tmp_path / "nope.bin")
    with pytest.raises(ModelFormatError, match="empty"):
        read_bin(_write(tmp_path, b""))
    with pytest.raises(FileNotFoundError, match="not found"):
        load("no/such/model/anywhere/x")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no model file"):
        load(tmp_path / "empty_dir")


def test_failed_loads_do_not_leak(good, tmp_path) -> None:
    _, data, records = good
    _, _, _data_start = next(r for r in records if r[0] == "lm_head")
    bad = bytearray(data)
    bad[-1] |= 0b11  # code 3 in the very last byte: everything else was already repacked
    path = _write(tmp_path, bytes(bad))
    for _ in range(20):
        with pytest.raises(ModelFormatError):
            load_bin(path)
    before = rss_mb()
    for _ in range(300):
        with pytest.raises(ModelFormatError):
            load_bin(path)
    assert rss_mb() - before < 20
