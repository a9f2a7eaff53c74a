"""Kernels: the SIMD level against the scalar reference (bit-exact integers) and against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import simd_levels

from bitmamba_lsp import _core
from bitmamba_lsp.engine.formats.bitmamba_bin import pack_ternary, unpack_ternary

# (70, 4100) and (300, 1024): more row groups than the AVX-512 GEMM's cache block (32 KB of codes)
SHAPES = [(1, 1), (1, 4), (3, 5), (4, 128), (5, 129), (7, 255), (37, 257), (64, 1024), (130, 2048), (9, 4100), (70, 4100),
          (300, 1024)]


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _ternary(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    return rng.integers(-1, 2, size=(rows, cols)).astype(np.int8)


@pytest.mark.parametrize(("rows", "cols"), SHAPES)
def test_pack_roundtrip_and_file_codes(rng: np.random.Generator, rows: int, cols: int) -> None:
    q = _ternary(rng, rows, cols)
    a = _core.PackedMatrix.from_int8(q)
    b = _core.PackedMatrix.from_file_codes(pack_ternary(q), cols)
    assert np.array_equal(a.to_int8(), q)
    assert a.raw() == b.raw()  # the file-code repack and the int8 pack give the same layout
    assert a.rows_pad % 4 == 0 and a.cols_pad % 128 == 0
    assert np.array_equal(unpack_ternary(pack_ternary(q), cols), q)


@pytest.mark.parametrize(("rows", "cols"), SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gemv_bit_exact(rng: np.random.Generator, rows: int, cols: int, threads: int) -> None:
    q = _ternary(rng, rows, cols)
    w = _core.PackedMatrix.from_int8(q)
    for x in (
        rng.integers(-127, 128, size=cols).astype(np.int8),
        np.full(cols, 127, np.int8),
        np.full(cols, -128, np.int8),  # extreme values must not overflow the int16 accumulators
    ):
        expected = q.astype(np.int64) @ x.astype(np.int64)
        scalar = _core.gemv(w, x, "scalar", threads)
        simd = _core.gemv(w, x, "simd", threads)
        assert np.array_equal(scalar, expected)
        assert np.array_equal(simd, scalar)


@pytest.mark.parametrize(("rows", "cols"), SHAPES)
@pytest.mark.parametrize("T", [1, 2, 3, 5, 16])
def test_gemm_bit_exact(rng: np.random.Generator, rows: int, cols: int, T: int) -> None:
    q = _ternary(rng, rows, cols)
    w = _core.PackedMatrix.from_int8(q)
    X = rng.integers(-128, 128, size=(T, cols)).astype(np.int8)
    X[0, :] = -128
    expected = X.astype(np.int64) @ q.T.astype(np.int64)
    scalar = _core.gemm(w, X, "scalar", 2)
    simd = _core.gemm(w, X, "simd", 2)
    assert np.array_equal(scalar, expected)
    assert np.array_equal(simd, scalar)
    # the batched product equals the single-vector product row by row
    for t in range(T):
        assert np.array_equal(_core.gemv(w, X[t], "simd", 1), simd[t])


def test_all_zero_and_all_one_weights() -> None:
    cols = 300
    x = np.arange(cols, dtype=np.int64) % 255 - 127
    x8 = x.astype(np.int8)
    for fill in (-1, 0, 1):
        q = np.full((6, cols), fill, np.int8)
        w = _core.PackedMatrix.from_int8(q)
        assert np.array_equal(_core.gemv(w, x8, "simd"), np.full(6, fill * x.sum()))


def test_repack_rejects_code_3() -> None:
    q = np.zeros((4, 256), np.int8)
    packed = pack_ternary(q)
    packed[2, 17] |= 0b11 << 4
    with pytest.raises(ValueError, match="code 3"):
        _core.PackedMatrix.from_file_codes(packed, 256)
    with pytest.raises(ValueError, match="not ternary"):
        _core.PackedMatrix.from_int8(np.full((2, 3), 2, np.int8))


def _np_quantize(x: np.ndarray) -> tuple[np.ndarray, float]:
    x32 = x.astype(np.float32)
    sx = np.float32(127.0) / (np.abs(x32).max() + np.float32(1e-5))
    v = (x32 * sx).astype(np.float64)
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -128, 127).astype(np.int8)
    return q, float(sx)


@pytest.mark.parametrize("n", [1, 7, 8, 31, 32, 33, 1000, 2048, 4144])
def test_quantize_bit_exact(rng: np.random.Generator, n: int) -> None:
    for scale in (1e-3, 1.0, 50.0):
        x = (rng.standard_normal(n) * scale).astype(np.float32)
        qs, sxs, sums = _core.quantize(x, "scalar")
        qv, sxv, sumv = _core.quantize(x, "simd")
        assert np.array_equal(qs, qv) and sxs == sxv and sums == sumv == int(qs.astype(np.int64).sum())
        qn, sxn = _np_quantize(x)
        assert np.array_equal(qs, qn) and sxs == np.float32(sxn)


@pytest.mark.parametrize("n", [1, 7, 17, 64, 100])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_nan_and_inf_as_the_scalar_reference(rng: np.random.Generator, n: int, bad: float) -> None:
    """A NaN or inf activation (a broken forward pass) gives the scalar reference's q, scale and sum."""
    for pos in {0, n // 2, n - 1}:
        x = rng.standard_normal(n).astype(np.float32)
        x[pos] = bad
        qs, ss, sums = _core.quantize(x, "scalar")
        qv, sv, sumv = _core.quantize(x, "simd")
        assert np.array_equal(qs, qv) and sums == sumv and (ss == sv or (np.isnan(ss) and np.isnan(sv)))


def test_quantize_rounds_half_away_from_zero() -> None:
    # x * sx lands exactly on .5 for these (sx = 127 / (127 + 1e-5) is ~1 - 8e-8: use values whose
    # product stays on the half after rounding to float32).
    x = np.array([127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997] * 5, np.float32)
    qs, sx, _ = _core.quantize(x, "scalar")
    qv, _, _ = _core.quantize(x, "simd")
    assert np.array_equal(qs, qv)
    v = (x * np.float32(sx)).astype(np.float64)
    expected = np.sign(v) * np.floor(np.abs(v) + 0.5)
    assert np.array_equal(qs, expected.astype(np.int8))


@pytest.mark.parametrize("n", [1, 9, 64, 1000, 2048])
def test_float_helpers_against_numpy(rng: np.random.Generator, n: int) -> None:
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    w = rng.uniform(0.5, 1.5, n).astype(np.float32)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = x64 * w64 / np.sqrt(np.mean(x64 * x64) + 1e-6)
    for level in ("scalar", "simd"):
        np.testing.assert_allclose(_core.rmsnorm(x, w, 1e-6, level), ref, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(_core.silu(x, level), x64 / (1 + np.exp(-x64)), rtol=2e-6, atol=1e-7)
        e = np.linspace(-80, 80, n).astype(np.float32)
        np.testing.assert_allclose(
            _core.exp(e, level), np.exp(e.astype(np.float64)), rtol=3e-7 if level == "scalar" else 2e-6
        )
        assert _core.argmax(x, level) == int(np.argmax(x))
    ties = np.zeros(100, np.float32)
    ties[[17, 50]] = 3.0
    assert _core.argmax(ties, "simd") == _core.argmax(ties, "scalar") == 17


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (3, 7), (5, 31), (8, 32), (13, 100), (80, 1536), (37, 769)])
def test_int8_and_float_gemv(rng: np.random.Generator, rows: int, cols: int) -> None:
    W8 = rng.integers(-127, 128, size=(rows, cols)).astype(np.int8)
    x8 = rng.integers(-128, 128, size=cols).astype(np.int8)
    expected = W8.astype(np.int64) @ x8.astype(np.int64)
    assert np.array_equal(_core.i8gemv(W8, x8, "scalar"), expected)
    assert np.array_equal(_core.i8gemv(W8, x8, "simd"), expected)
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    ref = W.astype(np.float64) @ x.astype(np.float64)
    tol = 1e-5 * np.sqrt(cols) * np.abs(W).max() * np.abs(x).max()
    for level in ("scalar", "simd"):
        assert np.abs(_core.fgemv(W, x, level) - ref).max() <= tol


# core/simd_levels.txt: the levels this build's level carries (an avx512 build also has the avx2 set)
CARRIED = list(simd_levels.level(_core.simd_level())["carries"])


@pytest.mark.skipif(not CARRIED, reason=f"the {_core.simd_level()} level carries no other kernel set")
@pytest.mark.parametrize("carried", CARRIED)
@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 1024, 2048, 4099])
def test_float_helpers_equal_the_carried_levels_bitwise(rng: np.random.Generator, carried: str, n: int) -> None:
    """A build gives the same floats as a build of a level it carries (avx512: avx2) of the same model."""
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    w = rng.uniform(0.5, 1.5, n).astype(np.float32)
    for weight in (w, None):
        a = _core.rmsnorm(x, weight, 1e-6, carried)
        b = _core.rmsnorm(x, weight, 1e-6, "simd")
        assert a.tobytes() == b.tobytes()
    qa, sa, suma = _core.quantize(a, carried)
    qb, sb, sumb = _core.quantize(a, "simd")
    assert np.array_equal(qa, qb) and sa == sb and suma == sumb
    x[0] = 100.0
    x[-1] = -100.0
    for fn in (_core.silu, _core.exp):
        assert fn(x, carried).tobytes() == fn(x, "simd").tobytes()


def test_simd_level_is_a_row_of_the_level_table() -> None:
    assert _core.simd_level() in simd_levels.names()
    for carried in CARRIED:  # selectable by name, and nothing else is
        assert _core.argmax(np.arange(3, dtype=np.float32), carried) == 2
    for other in set(simd_levels.names()) - {_core.simd_level(), "scalar", *CARRIED}:
        with pytest.raises(ValueError, match="unknown kernel level"):
            _core.argmax(np.arange(3, dtype=np.float32), other)
