"""editors/vscode: the TypeScript build (tsc strict), its Node test against a real bitmamba-lsp (through
vscode-languageserver-protocol, the library VS Code's client is built on), and offline packaging."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from bitmamba_lsp.lsp.settings import Settings

REPO = Path(__file__).resolve().parents[1]
EXT = REPO / "editors" / "vscode"
BIN = Path(sys.executable).parent
NODE = shutil.which("node")
NPM = shutil.which("npm")
CLIENT_ONLY = {"serverPath", "serverArgs", "warmStart", "statusPollSeconds", "trace.server"}
DAEMON_ONLY = {"incremental_state", "draft_fixed"}  # debugging and benchmark knobs, not user settings

needs_node = pytest.mark.skipif(
    NODE is None or NPM is None, reason="node/npm are not installed (needed for editors/vscode)"
)


def snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def package_json() -> dict[str, Any]:
    return json.loads((EXT / "package.json").read_text())


def test_settings_mirror_the_daemon() -> None:
    """Every daemon setting has a VS Code setting with the same default, and nothing else is forwarded."""
    props = package_json()["contributes"]["configuration"]["properties"]
    ours = {k.removeprefix("bitmamba."): v for k, v in props.items()}
    forwarded = {k: v for k, v in ours.items() if k not in CLIENT_ONLY}
    defaults = Settings()
    fields = {f.name for f in dataclasses.fields(Settings)} - DAEMON_ONLY
    assert {snake(k) for k in forwarded} == fields
    for key, prop in forwarded.items():
        expected = getattr(defaults, snake(key))
        default = prop["default"]
        assert (default or None if prop["type"] == "string" else default) == expected, key
        kind = {"boolean": bool, "integer": int, "number": float, "string": str}[prop["type"]]
        assert isinstance(default, kind) or (kind is float and isinstance(default, int)), key
    # the TypeScript list of forwarded keys is the same list
    src = (EXT / "src" / "settings.ts").read_text()
    listed = re.search(r"SERVER_SETTINGS = \[(.*?)\] as const", src, re.S)
    assert listed is not None
    assert set(re.findall(r"'(\w+)'", listed.group(1))) == set(forwarded)


def run(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, cwd=EXT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def built() -> Path:
    """npm ci (when node_modules is missing) and tsc."""
    assert NPM is not None
    if not (EXT / "node_modules" / ".package-lock.json").exists():
        run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout=600)
    run([NPM, "run", "-s", "compile"], timeout=300)
    out = EXT / "out"
    assert (out / "extension.js").exists() and (out / "test" / "server.test.js").exists()
    return out


@needs_node
def test_compiles_strict(built: Path) -> None:
    tsconfig = json.loads((EXT / "tsconfig.json").read_text())
    assert tsconfig["compilerOptions"]["strict"] is True
    js = (built / "extension.js").read_text()
    assert 'require("vscode-languageclient/node")' in js
    lock = json.loads((EXT / "package-lock.json").read_text())
    client = lock["packages"]["node_modules/vscode-languageclient"]["version"]
    assert int(client.split(".")[0]) >= 10  # registers LSP 3.18 inline completion by default


@needs_node
def test_node_protocol_test_against_the_daemon(built: Path) -> None:
    exe = shutil.which("bitmamba-lsp", path=str(BIN))
    if exe is None:
        pytest.skip(f"bitmamba-lsp is not installed next to {sys.executable}")
    assert NODE is not None
    t0 = time.monotonic()
    proc = run([NODE, "--test", "--test-reporter=tap", "out/test/"], timeout=300, env={"BITMAMBA_LSP": exe})
    tap = proc.stdout
    assert re.search(r"^# fail 0$", tap, re.M), tap
    passed = re.search(r"^# pass (\d+)$", tap, re.M)
    assert passed is not None and int(passed.group(1)) >= 5, tap
    assert "completes after an incremental edit, with a utf-16 range" in tap
    print(f"node test: {time.monotonic() - t0:.1f} s, {passed.group(1)} passed")


@needs_node
def test_vsce_packages_offline(built: Path, tmp_path: Path) -> None:
    vsce = EXT / "node_modules" / ".bin" / "vsce"
    assert vsce.exists(), "@vscode/vsce is a devDependency"
    out = tmp_path / "bitmamba.vsix"
    dead = "http://127.0.0.1:9"  # no network: every proxied request would fail
    offline = {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
               "npm_config_offline": "true"}  # fmt: skip
    run([str(vsce), "package", "--allow-missing-repository", "--out", str(out)], timeout=300, env=offline)
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("extension/package.json"))
    assert "extension/out/extension.js" in names and "extension/out/settings.js" in names
    assert "extension/node_modules/vscode-languageclient/package.json" in names  # runtime dependency
    assert not any(n.startswith(("extension/src/", "extension/out/test/")) for n in names)
    assert not any("/typescript/" in n or "/@vscode/vsce/" in n for n in names)  # dev tools left out
    assert manifest["main"] == "./out/extension.js"
    commands = {c["command"] for c in manifest["contributes"]["commands"]}
    assert {"bitmamba.restartServer", "bitmamba.showStatus"} <= commands
