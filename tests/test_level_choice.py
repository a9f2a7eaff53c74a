"""Which SIMD level a build host gets (cmake/simd_levels.cmake, cmake/host_cpu.cmake), and that a
build never faults on a CPU without its level.

The CPUs are described the way the build reads them: /proc/cpuinfo texts and macOS `sysctl` outputs
(the BITMAMBA_CPUINFO CMake variable names such a file). The choice runs as a CMake script (no
compiler needed); one real configure each checks the variable and the configure-time CPUID probe.
Old CPUs are run under `qemu-x86_64 -cpu IvyBridge` (no AVX2, no FMA): the installed extension must
refuse to import with a message naming what is missing, never die on SIGILL.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from simd_levels import REPO, levels

SCRIPT = REPO / "cmake" / "simd_levels.cmake"
LEVEL_LINE = re.compile(r"bitmamba: SIMD level (\S+) \(([^;]*); flags: ([^)]*)\)")
HOST_LINE = re.compile(r"bitmamba: host CPU features from (.*), of those the table names: ?(.*)")

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")

# /proc/cpuinfo "flags" lines (trimmed to the relevant part plus neighbours) of real CPU models.
IVY_BRIDGE = "fpu vme sse sse2 ht syscall nx lm constant_tsc pni pclmulqdq ssse3 cx16 sse4_1 sse4_2 popcnt aes xsave avx f16c rdrand"
HASWELL = IVY_BRIDGE + " fma movbe abm bmi1 avx2 smep bmi2 erms invpcid"
SKYLAKE_X = HASWELL + " mpx avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl"
CASCADE_LAKE = SKYLAKE_X + " pku ospke avx512_vnni md_clear"
ALDER_LAKE = HASWELL + " sha_ni avx_vnni serialize"
PILEDRIVER = IVY_BRIDGE + " fma4 tbm fma bmi1 xop"  # FMA and FMA4 but no AVX2
CORTEX_A72 = "fp asimd evtstrm crc32 cpuid"
NEOVERSE_N1 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"


def cpuinfo_x86(flags: str) -> str:
    block = f"vendor_id\t: GenuineIntel\nmodel name\t: test\nflags\t\t: {flags}\nvmx flags\t: vnmi avx2 fma\nbugs\t\t: spectre_v1\n"
    return f"processor\t: 0\n{block}\nprocessor\t: 1\n{block}"


def cpuinfo_arm(features: str) -> str:
    return f"processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"


SYSCTL_APPLE_M1 = (
    "hw.optional.arm.FEAT_FP16: 1\nhw.optional.arm.FEAT_DotProd: 1\nhw.optional.arm.FEAT_I8MM: 0\n"
    "hw.optional.floatingpoint: 1\nhw.optional.neon: 1\nhw.optional.neon_hpfp: 1\n"
)
SYSCTL_INTEL_MAC_IVY = (
    "machdep.cpu.brand_string: Intel(R) Core(TM) i7-3720QM CPU @ 2.60GHz\n"
    "machdep.cpu.features: FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV PAT PSE36 CLFSH DS ACPI "
    "MMX FXSR SSE SSE2 SS HTT TM PBE SSE3 PCLMULQDQ DTES64 MON DSCPL VMX EST TM2 SSSE3 CX16 TPR PDCM SSE4.1 "
    "SSE4.2 x2APIC POPCNT AES PCID XSAVE OSXSAVE TSCTMR AVX1.0 RDRAND F16C\n"
    "machdep.cpu.leaf7_features: RDWRFSGS SMEP ERMS\nhw.optional.avx1_0: 1\nhw.optional.avx2_0: 0\n"
)
SYSCTL_INTEL_MAC_COFFEE = SYSCTL_INTEL_MAC_IVY.replace("OSXSAVE", "FMA OSXSAVE").replace(
    "machdep.cpu.leaf7_features: RDWRFSGS SMEP ERMS",
    "machdep.cpu.leaf7_features: RDWRFSGS TSC_THREAD_OFFSET SGX BMI1 AVX2 SMEP BMI2 ERMS INVPCID FPU_CSDS MPX",
)
SYSCTL_INTEL_MAC_ICE = SYSCTL_INTEL_MAC_COFFEE.replace(
    "FPU_CSDS MPX", "FPU_CSDS AVX512F AVX512DQ AVX512IFMA AVX512CD AVX512BW AVX512VL AVX512VBMI AVX512VNNI"
)

# (processor, host description, extra -D settings, flag style) -> level, the level's flags
CASES = {
    "ivy-bridge: no AVX2, so scalar": ("x86_64", cpuinfo_x86(IVY_BRIDGE), {}, "gnu", "scalar"),
    "piledriver: FMA4 and FMA but no AVX2": ("x86_64", cpuinfo_x86(PILEDRIVER), {}, "gnu", "scalar"),
    "haswell": ("x86_64", cpuinfo_x86(HASWELL), {}, "gnu", "avx2"),
    "skylake-x: AVX-512 without VNNI stays on avx2": ("x86_64", cpuinfo_x86(SKYLAKE_X), {}, "gnu", "avx2"),
    "cascade-lake": ("x86_64", cpuinfo_x86(CASCADE_LAKE), {}, "gnu", "avx512-vnni"),
    "cascade-lake, VNNI turned off": (
        "x86_64", cpuinfo_x86(CASCADE_LAKE), {"BITMAMBA_AVX512_VNNI": "OFF"}, "gnu", "avx2"),
    "cascade-lake, avx512 asked for without VNNI": (
        "x86_64", cpuinfo_x86(CASCADE_LAKE), {"BITMAMBA_SIMD": "avx512", "BITMAMBA_AVX512_VNNI": "OFF"}, "gnu", "avx512"),
    "alder-lake: AVX-VNNI": ("x86_64", cpuinfo_x86(ALDER_LAKE), {}, "gnu", "avx2-vnni"),
    "ivy-bridge, avx2 forced (for another machine)": (
        "x86_64", cpuinfo_x86(IVY_BRIDGE), {"BITMAMBA_SIMD": "avx2"}, "gnu", "avx2"),
    "haswell, MSVC": ("AMD64", cpuinfo_x86(HASWELL), {}, "msvc", "avx2"),
    "cascade-lake, MSVC": ("AMD64", cpuinfo_x86(CASCADE_LAKE), {}, "msvc", "avx512-vnni"),
    "ivy-bridge, MSVC": ("AMD64", cpuinfo_x86(IVY_BRIDGE), {}, "msvc", "scalar"),
    "cortex-a72": ("aarch64", cpuinfo_arm(CORTEX_A72), {}, "gnu", "neon"),
    "neoverse-n1: dotprod": ("aarch64", cpuinfo_arm(NEOVERSE_N1), {}, "gnu", "neon-dotprod"),
    "apple m1 (sysctl)": ("arm64", SYSCTL_APPLE_M1, {}, "gnu", "neon-dotprod"),
    "apple m1 (sysctl), dotprod off": ("arm64", SYSCTL_APPLE_M1, {"BITMAMBA_NEON_DOTPROD": "OFF"}, "gnu", "neon"),
    "intel mac, ivy bridge (sysctl)": ("x86_64", SYSCTL_INTEL_MAC_IVY, {}, "gnu", "scalar"),
    "intel mac, coffee lake (sysctl)": ("x86_64", SYSCTL_INTEL_MAC_COFFEE, {}, "gnu", "avx2"),
    "intel mac, ice lake (sysctl)": ("x86_64", SYSCTL_INTEL_MAC_ICE, {}, "gnu", "avx512-vnni"),
    "unknown processor": ("riscv64", cpuinfo_x86(HASWELL), {}, "gnu", "scalar"),
}


def choose(tmp_path: Path, processor: str, text: str | None, settings: dict[str, str], style: str) -> tuple[str, str, str]:
    args = ["cmake", f"-DBM_TARGET_PROCESSOR={processor}", f"-DBM_FLAG_STYLE={style}"]
    if text is not None:
        desc = tmp_path / "cpu.txt"
        desc.write_text(text)
        args.append(f"-DBITMAMBA_CPUINFO={desc}")
    args += [f"-D{k}={v}" for k, v in settings.items()]
    proc = subprocess.run([*args, "-P", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = LEVEL_LINE.search(out)
    assert m, out
    return m.group(1), m.group(3).strip(), out


def row_flags(level: str, style: str) -> str:
    row = next(r for r in levels() if r["name"] == level)
    return " ".join(row["msvc" if style == "msvc" else "cflags"])


@needs_cmake
@pytest.mark.parametrize("case", list(CASES))
def test_auto_picks_the_level_the_host_runs(tmp_path: Path, case: str) -> None:
    processor, text, settings, style, want = CASES[case]
    level, flags, out = choose(tmp_path, processor, text, settings, style)
    assert level == want, out
    assert flags == row_flags(want, style), out
    if style == "msvc" and want != "scalar":
        assert flags.startswith("/arch:") and "-m" not in flags, out
    if settings.get("BITMAMBA_SIMD") == "avx2" and "avx2 " not in text:
        assert "lacks avx2, fma" in out.replace("\n  ", " "), out  # the warning of a build that will not load here


@needs_cmake
def test_no_description_builds_the_baseline(tmp_path: Path) -> None:
    """Script mode without a description (cross-compiling does the same): the family's baseline."""
    assert choose(tmp_path, "x86_64", None, {}, "gnu")[0] == "scalar"
    assert choose(tmp_path, "aarch64", None, {}, "gnu")[0] == "neon"


@needs_cmake
def test_a_missing_description_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["cmake", "-DBM_TARGET_PROCESSOR=x86_64", f"-DBITMAMBA_CPUINFO={tmp_path / 'nope'}", "-P", str(SCRIPT)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and "no such file" in proc.stderr, proc.stderr


def configure(tmp_path: Path, *defines: str) -> str:
    build = tmp_path / "build"
    proc = subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(build), "-DBITMAMBA_PYTHON=OFF", *defines],
        capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


def proc_cpuinfo_named() -> set[str]:
    """The /proc/cpuinfo flags of this host that the level table names."""
    text = Path("/proc/cpuinfo").read_text()
    m = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.M)
    flags = set(m.group(1).split()) if m else set()
    named: set[str] = set()
    for row in levels():
        named |= set(row["cpuinfo"]) | set(str(row["auto"]).removeprefix("if:").split(","))
    return flags & named


@needs_cmake
def test_configure_reads_the_cpuinfo_variable(tmp_path: Path) -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("an x86-64 build host")
    desc = tmp_path / "ivy.txt"
    desc.write_text(cpuinfo_x86(IVY_BRIDGE))
    out = configure(tmp_path, f"-DBITMAMBA_CPUINFO={desc}")
    assert LEVEL_LINE.search(out).group(1) == "scalar", out


@needs_cmake
def test_configure_time_probe_agrees_with_proc_cpuinfo(tmp_path: Path) -> None:
    """The CPUID probe (for hosts without /proc/cpuinfo) reads what Linux reports, and picks the same level."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not Path("/proc/cpuinfo").exists():
        pytest.skip("needs an x86-64 Linux host to compare with")
    probed = configure(tmp_path, "-DBITMAMBA_CPU_DETECT=probe")
    host = HOST_LINE.search(probed)
    assert host and "probe" in host.group(1), probed
    assert set(host.group(2).split()) == proc_cpuinfo_named(), probed
    by_proc = configure(tmp_path / "proc", "-DBITMAMBA_CPU_DETECT=cpuinfo")
    assert LEVEL_LINE.search(probed).group(1) == LEVEL_LINE.search(by_proc).group(1)


def test_runtime_detector_agrees_with_proc_cpuinfo() -> None:
    """The import-time check's CPUID detector, through the extension, against the kernel's report."""
    from bitmamba_lsp import _core

    if platform.machine().lower() not in ("x86_64", "amd64") or not Path("/proc/cpuinfo").exists():
        pytest.skip("needs an x86-64 Linux host to compare with")
    if _core.simd_level() == "scalar":
        pytest.skip("a scalar-family build carries no x86 detector")
    detected = set(_core.host_cpu_features()) & proc_cpuinfo_named()
    assert detected == proc_cpuinfo_named()
    assert _core.simd_missing_cpu_features() == ""


def test_import_on_a_cpu_without_the_level_refuses_cleanly() -> None:
    """Under qemu-x86_64 -cpu IvyBridge (no AVX2, no FMA) importing a SIMD build raises ImportError naming
    the missing features and how to rebuild; it never dies on an illegal instruction."""
    from bitmamba_lsp import _core

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("an x86-64 host")
    if shutil.which("qemu-x86_64") is None:
        pytest.skip("qemu-x86_64 (Debian qemu-user) is not installed")
    level = _core.simd_level()
    if level == "scalar":
        pytest.skip("this build is scalar: it runs on IvyBridge")
    proc = subprocess.run(
        ["qemu-x86_64", "-cpu", "IvyBridge", sys.executable, "-c", "import bitmamba_lsp"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode not in (-signal.SIGILL, 128 + signal.SIGILL), proc.stderr[-2000:]
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = proc.stderr
    assert "ImportError" in err and level in err, err[-2000:]
    assert re.search(r"lacks [^.]*\bavx2\b", err) and "fma" in err, err[-2000:]
    assert "BITMAMBA_SIMD=scalar" in err, err[-2000:]


@needs_cmake
def test_an_unknown_detection_means_is_a_clear_error() -> None:
    proc = subprocess.run(
        ["cmake", "-DBM_TARGET_PROCESSOR=x86_64", "-DBITMAMBA_CPU_DETECT=bogus", "-P", str(SCRIPT)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and "BITMAMBA_CPU_DETECT must be auto, cpuinfo, sysctl or probe" in proc.stderr
