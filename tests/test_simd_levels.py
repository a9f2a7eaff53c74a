"""Every SIMD level against the scalar reference, through the standalone C++ self-test, and the level
table (core/simd_levels.txt) itself.

scripts/cross_test.sh builds core/tests/selftest.cpp per level (build/selftest-<level>, reused between
runs) and runs it: natively (scalar, avx2, avx512 where the CPU has it) or under qemu-aarch64 (NEON,
cross-compiled with g++-aarch64-linux-gnu). A level whose toolchain, emulator or CPU is missing is
skipped with the script's reason. The levels are the rows of the table.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tomllib

import pytest
from simd_levels import REPO, TABLE, level, levels, names, table_rows

SCRIPT = REPO / "scripts" / "cross_test.sh"
LEVELS = names()


@pytest.mark.parametrize("level_name", LEVELS)
def test_simd_level_matches_scalar(level_name: str) -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    proc = subprocess.run(
        [str(SCRIPT), level_name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "BITMAMBA_CROSS_INSTALL": "0"},  # never apt-get from a test: scripts/test does
    )
    out = proc.stdout + proc.stderr
    result = re.search(rf"^RESULT {re.escape(level_name)}: (PASS|SKIP|FAIL)(?: - (.*))?$", out, re.M)
    assert result, f"no RESULT line from {SCRIPT.name} (exit {proc.returncode}):\n{out[-4000:]}"
    status, detail = result.group(1), result.group(2) or ""
    assert status != "FAIL", f"{level_name}: {detail}\n{out[-6000:]}"
    exe = REPO / "build" / f"selftest-{level_name}" / "bitmamba_selftest"
    if _runs_here(level_name) and exe.exists():
        # The table compiled into the build is the file's, as CMake read it.
        listed = subprocess.run([str(exe), "--list-levels"], capture_output=True, text=True, timeout=60)
        lines = listed.stdout.splitlines()
        assert lines and lines[-1].startswith(f"built: {level_name} ("), listed.stdout
        assert table_rows("\n".join(lines[:-1])) == table_rows(TABLE.read_text())
    row = level(level_name)
    on_x86 = platform.machine().lower() in ("x86_64", "amd64")
    if on_x86 and shutil.which("qemu-x86_64") and status != "SKIP":
        if row["family"] == "x86" and row["refuse"]:  # refused cleanly on an older CPU, not SIGILL
            assert f"qemu-x86_64 -cpu {row['refuse']}, a CPU without the level (must refuse)" in out, out[-4000:]
            assert re.search(rf"^SKIP: .*\({re.escape(level_name)}: it lacks [a-z0-9, ]+\)$", out, re.M), out[-4000:]
        if row["family"] == "scalar" and row["qemu"]:  # runs on a CPU without AVX2 and FMA
            assert f"qemu-x86_64 -cpu {row['qemu']} (needs no extension)" in out, out[-4000:]
    if status == "SKIP":
        pytest.skip(f"{level_name}: {detail}")
    assert status == "PASS" and proc.returncode == 0, f"{level_name}: {detail}\n{out[-6000:]}"
    assert re.search(r"^PASSED: \d+/\d+ checks passed", out, re.M), out[-4000:]


def _runs_here(level_name: str) -> bool:
    """Whether a build of the level runs natively here far enough for --list-levels (baseline code)."""
    family = level(level_name)["family"]
    machine = platform.machine().lower()
    return (
        family == "scalar"
        or (family == "x86" and machine in ("x86_64", "amd64"))
        or (family == "arm" and machine in ("aarch64", "arm64"))
    )


def test_level_table_is_consistent() -> None:
    rows = levels()
    assert len(set(LEVELS)) == len(LEVELS), "a level appears twice"
    assert any(r["name"] == "scalar" and r["family"] == "scalar" for r in rows), "scalar is the reference"
    by_simd: dict[str, list[dict]] = {}
    for r in rows:
        by_simd.setdefault(str(r["simd"]), []).append(r)
        family, simd = r["family"], r["simd"]
        arch = REPO / "core" / "src" / "arch" / str(family)
        assert (arch / f"cpu_{family}.cpp").is_file(), f"{r['name']}: no CPU check for family {family}"
        if simd != "scalar":
            assert (arch / f"kernels_{simd}.cpp").is_file(), f"{r['name']}: no kernels_{simd}.cpp in {arch}"
        for carried in r["carries"]:
            assert carried in LEVELS, f"{r['name']} carries an unknown level {carried}"
        assert r["auto"] in ("", "default") or str(r["auto"]).startswith("if:"), r
    for simd, group in by_simd.items():
        assert len({r["family"] for r in group}) == 1, f"BITMAMBA_SIMD={simd}: rows of several families"
        options = {str(r["option"]) for r in group}
        if len(group) > 1:  # an option tells the rows apart: VAR=ON and VAR=OFF
            assert len(group) == 2 and {o.split("=")[1] for o in options} == {"ON", "OFF"}, group
            assert len({o.split("=")[0] for o in options}) == 1, group


def test_pyproject_passes_every_level_option() -> None:
    """pip builds with the environment's BITMAMBA_SIMD and every refinement option of the table."""
    defines = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["scikit-build"]["cmake"]["define"]
    option_vars = {str(r["option"]).split("=")[0] for r in levels() if r["option"]}
    for var in {"BITMAMBA_SIMD", *option_vars}:
        assert defines.get(var) == {"env": var, "default": "auto"}, f"pyproject.toml does not pass {var}"


def test_windows_build_under_wine() -> None:
    """scripts/windows_test.sh: the self-test cross-built with MinGW-w64 runs under wine64 (Windows'
    C runtime, the CPUID check without /proc/cpuinfo, the configure-time probe as a Windows program)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("an x86-64 host")
    proc = subprocess.run(
        [str(REPO / "scripts" / "windows_test.sh")], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    out = proc.stdout + proc.stderr
    results = dict(re.findall(r"^RESULT windows-(\S+): (PASS|SKIP|FAIL)", out, re.M))
    assert set(results) == {"scalar", "avx2", "avx512", "auto"}, out[-4000:]
    assert "FAIL" not in results.values(), out[-6000:]
    if proc.returncode == 77:
        pytest.skip(re.search(r"^RESULT windows-\S+: SKIP - (.*)$", out, re.M).group(1))
    assert proc.returncode == 0 and results["scalar"] == "PASS" and results["auto"] == "PASS", out[-4000:]
