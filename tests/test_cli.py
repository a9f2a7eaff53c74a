"""The `bitmamba` command line, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import bitmamba_lsp


def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "bitmamba_lsp.cli", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_info_reports_simd_level(tmp_path: Path) -> None:
    run("make-random", str(tmp_path / "m.bin"), "--shape", "300x64x2x4")
    out = run("info", "--model", str(tmp_path / "m.bin"), "--threads", "1").stdout
    assert f"SIMD level: {bitmamba_lsp.simd_level()}" in out
    assert "vocab_size: 300" in out and "threads: 1" in out and "n_heads: 4" in out


def test_make_random_and_generate_ids(tmp_path: Path) -> None:
    path = tmp_path / "r.bin"
    out = run("make-random", str(path), "--shape", "tiny", "--seed", "3").stdout
    assert "vocab 512" in out and path.exists()
    a = run("generate", "-m", str(path), "--ids", "1 2 3", "-n", "7", "--greedy").stdout.split()
    b = run("generate", "-m", str(path), "--ids", "1,2,3", "-n", "7", "--greedy").stdout.split()
    assert len(a) == 7 and a == b and all(0 <= int(x) < 512 for x in a)
    # the CLI's greedy output equals the library's
    m = bitmamba_lsp.load(path)
    assert [int(x) for x in a] == list(m.generate(m.new_state(), [1, 2, 3], max_tokens=7, temperature=0))


def test_generate_text_with_gpt2_vocab(tmp_path: Path) -> None:
    path = tmp_path / "g.bin"
    run("make-random", str(path), "--shape", "tiny", "--vocab", "50257")
    proc = run("generate", "-m", str(path), "def f(x):", "-n", "5", "--seed", "1")
    assert "5 tokens" in proc.stderr or "finish" in proc.stderr
    proc = run("generate", "-m", str(path), "-n", "3", "--greedy", "--echo", input="import sys\n")
    assert proc.stdout.startswith("import sys\n")


def test_perplexity_matches_library(tmp_path: Path) -> None:
    import numpy as np

    from bitmamba_lsp.engine.perplexity import perplexity

    path = tmp_path / "p.bin"
    run("make-random", str(path), "--shape", "tiny")
    ids = np.random.default_rng(0).integers(0, 512, 300)
    (tmp_path / "toks.txt").write_text(" ".join(map(str, ids)))
    proc = run("perplexity", "-m", str(path), str(tmp_path / "toks.txt"), "--chunk", "64", "--json")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    lib = perplexity(bitmamba_lsp.load(path), ids, chunk=100)
    assert res["tokens"] == 299 and abs(res["perplexity"] - lib["perplexity"]) < 1e-6 * lib["perplexity"]
    bad = run("perplexity", "-m", str(path), str(path), check=False)
    assert bad.returncode != 0


def test_bench_json(tmp_path: Path) -> None:
    path = tmp_path / "b.bin"
    run("make-random", str(path), "--shape", "1000x128x2x4")
    out = tmp_path / "bench.json"
    proc = run(
        "bench",
        "-m",
        str(path),
        "--threads",
        "1",
        "2",
        "--repeats",
        "2",
        "--decode-tokens",
        "8",
        "--prefill",
        "16",
        "--json",
        str(out),
    )
    data = json.loads(out.read_text())
    assert [r["threads"] for r in data] == [1, 2]
    for r in data:
        assert r["decode"]["best_rate"] >= r["decode"]["median_rate"] > 0
        assert r["prefill"]["16"]["runs"] == 2 and r["machine"]["simd"] == bitmamba_lsp.simd_level()
    assert "| threads |" in proc.stdout


def test_bench_profile(tmp_path: Path) -> None:
    """`bitmamba bench --profile`: only the stage breakdown, one column per thread count."""
    path = tmp_path / "b.bin"
    run("make-random", str(path), "--shape", "1000x128x2x4")
    out = tmp_path / "profile.json"
    proc = run("bench", "-m", str(path), "-t", "1", "2", "--repeats", "3", "--decode-tokens", "8", "--profile",
               "--json", str(out))
    data = json.loads(out.read_text())
    assert [p["threads"] for p in data["decode"]] == [1, 2]
    for p in data["decode"]:
        assert p["runs"] == 3 and p["conv_scan"] > 0 and p["matmul"] > 0
        assert p["non_matrix"] == pytest.approx(p["norm_quantize"] + p["conv_scan"] + p["other"] + p["sampling"])
    assert [(p["threads"], p["tokens"], p["runs"]) for p in data["verification"]] == [(1, 8, 9), (2, 8, 9)]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| stage (ms/token) | 1 thread | 2 threads |")
    assert any(line.startswith("| conv + scan |") for line in lines) and "| threads |" not in proc.stdout
    assert "A verification step of 8 tokens" in proc.stdout
    assert any(line.startswith("| lm_head (every position) |") for line in lines)


def test_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 64)
    proc = run("info", "-m", str(bad), check=False)
    assert proc.returncode == 1 and "wrong magic" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("generate", "-m", str(tmp_path / "missing.bin"), "hi", check=False)
    assert proc.returncode == 1 and "not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"], ["generate", "--help"]])
def test_help(args: list[str]) -> None:
    assert "usage" in run(*args).stdout


def test_a_broken_feature_module_does_not_take_the_cli_down(tmp_path, monkeypatch, capsys):
    from bitmamba_lsp import cli

    (tmp_path / "bm_broken_feature.py").write_text("raise RuntimeError('half-installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli._PLUGINS, "bm_broken_feature", ("broken",))
    assert cli.main(["broken", "--whatever", "1"]) == 2
    assert "half-installed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the other features are all there
        cli.main(["lsp", "--help"])
    assert e.value.code == 0
    assert "--tcp" in capsys.readouterr().out


def test_bad_model_inputs_get_one_line_errors(tmp_path: Path) -> None:
    """A corrupt tokenizer.json beside a model, a FIFO named as a model: one line, exit 1, no
    traceback, no hang."""
    import os
    import shutil

    from bitmamba_lsp.engine.loader import DEFAULT_MODEL_DIR

    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(DEFAULT_MODEL_DIR / "model.bin", folder / "model.bin")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE"')
    for target in (folder, tmp_path / "fifo.bin"):
        if target.suffix == ".bin":
            os.mkfifo(target)
        proc = run("generate", "-m", str(target), "def f", "-n", "2", check=False)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr and lines[0].startswith("error:"), proc.stderr


def test_demo_prints_a_legend_and_no_client_noise() -> None:
    from bitmamba_lsp.engine.loader import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "model.bin").is_file():
        pytest.skip("no shipped default model")
    proc = run("demo", "--threads", "1")
    out = proc.stdout + proc.stderr
    assert "the daemon's suggestion" in proc.stdout and "‹" in proc.stdout  # the legend, ghost text marked
    assert "Ignoring notification" not in out
    assert "daemon status" in proc.stdout


def test_generate_with_and_without_drafts() -> None:
    """`--draft K` / `--no-draft`: the same text on the shipped model (greedy and seeded sampling);
    a draft length out of range is a clear error."""
    prompt = (Path(__file__).resolve().parent / "data" / "indentation" / "engine_healing.py.txt").read_text()[:3000]
    for sampling in (["--greedy"], ["--temperature", "0.8", "--seed", "5"]):
        outs = [
            run("generate", prompt, "-n", "40", *sampling, *flags).stdout
            for flags in (["--no-draft"], ["--draft", "3"], ["--draft", "7"])
        ]
        assert outs[0] and outs[1] == outs[0] and outs[2] == outs[0]
    bad = run("generate", "--ids", "1 2", "--draft", "-1", check=False)
    assert bad.returncode != 0 and "draft must be between 0 (off) and 32" in bad.stderr
