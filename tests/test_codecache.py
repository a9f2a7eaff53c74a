"""The daemon's attrs code cache (lsp/codecache.py): lsprotocol's classes built from cached code
behave as attrs builds them, the cache is written once and read after, and a broken cache file is
ignored. Each run is a fresh interpreter (the cache hooks attrs for the whole process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import sys
from bitmamba_lsp.lsp import codecache
ok = codecache.install() if sys.argv[1] == "on" else None
from lsprotocol import types
from pygls.protocol import default_converter
p = types.Position(line=3, character=7)
r = types.Range(start=p, end=types.Position(line=4, character=0))
conv = default_converter()
data = conv.unstructure(r)
back = conv.structure(data, types.Range)
print(ok, repr(p), p == types.Position(3, 7), p != types.Position(3, 8), data, back == r)
codecache.save()
"""


def run(cache: Path, mode: str = "on") -> str:
    env = {**os.environ, "BITMAMBA_LSP_CACHE_DIR": str(cache)}
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_cached_classes_behave_as_attrs_builds_them(tmp_path: Path) -> None:
    plain = run(tmp_path, "off")  # attrs as it is
    assert plain.startswith("None ") and not (tmp_path / "codecache").exists()
    want = "True" + plain.removeprefix("None")
    first = run(tmp_path)
    files = list((tmp_path / "codecache").glob("attrs-*.marshal"))
    assert len(files) == 1 and files[0].stat().st_size > 100_000  # hundreds of generated methods
    size = files[0].stat().st_size
    second = run(tmp_path)  # served from the cache: the same classes
    assert first == want and second == want
    # a script naming an object's address differs per run; the file keeps only what a run used
    assert abs(files[0].stat().st_size - size) < 4096


def test_a_broken_cache_file_is_ignored(tmp_path: Path) -> None:
    run(tmp_path)
    (f,) = (tmp_path / "codecache").glob("attrs-*.marshal")
    f.write_bytes(b"\x00not marshal data")
    assert run(tmp_path).startswith("True 3:7 True True")
    assert f.stat().st_size > 100_000  # rewritten
