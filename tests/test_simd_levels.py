"""Every SIMD level against the scalar reference, through the standalone C++ self-test.

scripts/cross_test.sh builds core/tests/selftest.cpp per level (build/selftest-<level>, reused between
runs) and runs it: natively (scalar, avx2, avx512 where the CPU has it) or under qemu-aarch64 (NEON,
cross-compiled with g++-aarch64-linux-gnu). A level whose toolchain, emulator or CPU is missing is
skipped with the script's reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "cross_test.sh"
LEVELS = ["scalar", "avx2", "avx2-vnni", "avx512", "avx512-vnni", "neon", "neon-dotprod"]


@pytest.mark.parametrize("level", LEVELS)
def test_simd_level_matches_scalar(level: str) -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    proc = subprocess.run(
        [str(SCRIPT), level],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "BITMAMBA_CROSS_INSTALL": "0"},  # never apt-get from a test: scripts/test does
    )
    out = proc.stdout + proc.stderr
    result = re.search(rf"^RESULT {re.escape(level)}: (PASS|SKIP|FAIL)(?: - (.*))?$", out, re.M)
    assert result, f"no RESULT line from {SCRIPT.name} (exit {proc.returncode}):\n{out[-4000:]}"
    status, detail = result.group(1), result.group(2) or ""
    if status == "SKIP":
        pytest.skip(f"{level}: {detail}")
    assert status == "PASS" and proc.returncode == 0, f"{level}: {detail}\n{out[-6000:]}"
    assert re.search(r"^PASSED: \d+/\d+ checks passed", out, re.M), out[-4000:]
