"""editors/vscode in a real VS Code: code-server 4.139.1 (VS Code 1.139) in a headless Chromium driven
by playwright-core (tests/vscode_driver.js).

The packaged .vsix is installed into a fresh code-server, `bitmamba.serverPath` points at this venv's
bitmamba-lsp, a workspace with a Python file is opened; the driver types at the end of the file, waits
for the ghost text (`.ghost-text-decoration`), presses Tab, reads the editor and saves. The accepted
text must be what the ghost showed, and the daemon's suggestion: a second bitmamba-lsp (pytest-lsp)
is asked for the same text, position and settings. The status bar item must show the model, the
latency and the counted accept.

The tools live outside the repository (scripts/install_vscode_test.sh, run by scripts/test, writes
their paths to tools.json); without them the test skips, saying why. ~20 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from lsp_client import inline, open_doc, start_server, status, stop_server

REPO = Path(__file__).resolve().parents[1]
EXT = REPO / "editors" / "vscode"
DRIVER = Path(__file__).resolve().parent / "vscode_driver.js"
BIN = Path(sys.executable).parent
NPM = shutil.which("npm")
TOOLS_HOME = Path(
    os.environ.get("BITMAMBA_VSCODE_TEST_HOME")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bitmamba-vscode"
)

# The file as it is on disk, and what the driver types at its end (the Neovim test's example).
FILE_NAME = "main.py"
ON_DISK = "class Point:\n    "
TYPED = "def __init__(self"
# The daemon's settings, in VS Code and in the reference daemon alike. The defaults abstain when
# unsure and wait 30 ms for more keys: show everything, at once. One thread (the reference's) and a
# generous time budget, so both compute the same suggestion on a busy machine; the workspace cache
# off (the reference has no workspace folder).
SERVER_SETTINGS: dict[str, Any] = {
    "minConfidence": 0,
    "debounceMs": 0,
    "threads": 1,
    "timeBudgetMs": 20000,
    "cacheWorkspace": False,
    "speculative": True,
}
# VS Code's own settings: nothing else may take Tab or change the typed text (no suggest widget, no
# auto-closed brackets), no network, no welcome page or chat.
EDITOR_SETTINGS: dict[str, Any] = {
    "editor.inlineSuggest.enabled": True,
    "editor.autoClosingBrackets": "never",
    "editor.autoClosingQuotes": "never",
    "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
    "editor.suggestOnTriggerCharacters": False,
    "editor.wordBasedSuggestions": "off",
    "editor.parameterHints.enabled": False,
    "files.autoSave": "off",  # the driver saves (Ctrl+S) once the suggestion is in
    "files.insertFinalNewline": False,
    "files.trimTrailingWhitespace": False,
    "workbench.startupEditor": "none",
    "workbench.secondarySideBar.defaultVisibility": "hidden",
    "security.workspace.trust.enabled": False,
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "chat.disableAIFeatures": True,
}
DEAD = "http://127.0.0.1:9"  # nothing listens: the extension gallery fails at once instead of hanging


def tools() -> dict[str, str]:
    """The installed tools (tools.json), or a skip saying what is missing."""
    manifest = TOOLS_HOME / "tools.json"
    if not manifest.exists():
        why = TOOLS_HOME / "unavailable"
        reason = why.read_text().strip() if why.exists() else "not installed"
        pytest.skip(f"no code-server/chromium/playwright-core in {TOOLS_HOME}: {reason} "
                    "(scripts/install_vscode_test.sh installs them)")  # fmt: skip
    t = json.loads(manifest.read_text())
    for key in ("node", "code_server", "playwright_core", "chromium"):
        if not Path(t[key]).exists():
            pytest.skip(f"{key} is missing: {t[key]} (rerun scripts/install_vscode_test.sh)")
    return t


def run(cmd: list[str], timeout: float, cwd: Path = EXT, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def package_vsix(out: Path) -> Path:
    """tsc and vsce, offline, as `npm run package` does (into a temporary folder)."""
    assert NPM is not None
    if not (EXT / "node_modules" / ".package-lock.json").exists():
        run([NPM, "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout=600)
    run([NPM, "run", "-s", "compile"], timeout=300)
    offline = {**os.environ, "HTTP_PROXY": DEAD, "HTTPS_PROXY": DEAD, "http_proxy": DEAD, "https_proxy": DEAD,
               "npm_config_offline": "true"}  # fmt: skip
    vsix = out / "bitmamba-lsp.vsix"
    vsce = EXT / "node_modules" / ".bin" / "vsce"
    run([str(vsce), "package", "--allow-missing-repository", "--out", str(vsix)], timeout=300, env=offline)
    return vsix


def wait_for_port(log: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(r"HTTP server listening on http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
        if m:
            return int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"code-server did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def vscode_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One code-server + Chromium session: install the .vsix, open the file, type, Tab, save."""
    t = tools()
    if NPM is None:
        pytest.skip("npm is not installed (needed to build the extension)")
    exe = shutil.which("bitmamba-lsp", path=str(BIN))
    if exe is None:
        pytest.skip(f"bitmamba-lsp is not installed next to {sys.executable}")
    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("vscode")
    work, shots, prof, xdg = tmp / "work", tmp / "shots", tmp / "chromium", tmp / "xdg"
    for d in (work, shots, prof, xdg, tmp / "data" / "User", tmp / "extensions"):
        d.mkdir(parents=True)
    (work / FILE_NAME).write_text(ON_DISK)
    daemon_log = tmp / "daemon.log"
    settings = {
        "bitmamba.serverPath": exe,
        "bitmamba.serverArgs": ["--log-file", str(daemon_log), "--log-level", "DEBUG"],
        "bitmamba.statusPollSeconds": 1,
        **{f"bitmamba.{k}": v for k, v in SERVER_SETTINGS.items()},
        **EDITOR_SETTINGS,
    }
    (tmp / "data" / "User" / "settings.json").write_text(json.dumps(settings, indent=2))
    # code-server's own config (else it writes one with a password into ~/.config)
    config = tmp / "code-server.yaml"
    config.write_text("bind-addr: 127.0.0.1:0\nauth: none\ncert: false\n")
    env = {
        **os.environ,
        "PATH": f"{Path(t['node']).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # Node 24 first
        # code-server's, VS Code's and Chromium's files out of ~ (config, logs, a device id, dconf)
        "XDG_CONFIG_HOME": str(xdg / "config"),
        "XDG_DATA_HOME": str(xdg / "data"),
        "XDG_CACHE_HOME": str(xdg / "cache"),
        "EXTENSIONS_GALLERY": json.dumps({"serviceUrl": f"{DEAD}/gallery", "itemUrl": f"{DEAD}/items"}),
    }
    cs = [t["node"], t["code_server"], "--config", str(config), "--user-data-dir", str(tmp / "data"),
          "--extensions-dir", str(tmp / "extensions")]  # fmt: skip
    vsix = package_vsix(tmp)
    t_built = time.monotonic()
    out = run([*cs, "--install-extension", str(vsix)], timeout=120, cwd=tmp, env=env)
    assert "successfully installed" in out, out
    log = tmp / "code-server.log"
    with log.open("wb") as f:
        server = subprocess.Popen(
            [*cs, "--auth", "none", "--bind-addr", "127.0.0.1:0", "--disable-telemetry",
             "--disable-update-check", "--disable-workspace-trust", "--disable-getting-started-override",
             "--ignore-last-opened"],
            cwd=tmp, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        port = wait_for_port(log, server, 60)
        result = tmp / "out.json"
        proc = subprocess.run(
            [t["node"], str(DRIVER)],
            cwd=tmp, capture_output=True, text=True, timeout=180,
            env={**env, "BITMAMBA_PLAYWRIGHT": t["playwright_core"], "BITMAMBA_CHROMIUM": t["chromium"],
                 "BITMAMBA_VSCODE_URL": f"http://127.0.0.1:{port}/?folder={work}",
                 "BITMAMBA_TEST_FILE": FILE_NAME, "BITMAMBA_TEST_TYPE": TYPED,
                 "BITMAMBA_TEST_PROFILE": str(prof), "BITMAMBA_TEST_OUT": str(result),
                 "BITMAMBA_TEST_SHOTS": str(shots)},
        )  # fmt: skip
        assert result.exists(), f"the driver wrote nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        res = json.loads(result.read_text())
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)  # code-server, its extension host and the daemon
            server.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
    res.update(
        saved=(work / FILE_NAME).read_text(),
        tmp=str(tmp),
        build_seconds=t_built - t0,
        total_seconds=time.monotonic() - t0,
        daemon_log=daemon_log.read_text()[-3000:] if daemon_log.exists() else "",
        code_server_log=log.read_text(errors="replace")[-3000:],
    )
    return res


def ok(res: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in res, (
        f"{res['error']}\nsteps: {res.get('steps')}\nlines: {res.get('error_lines')}\nghost: {res.get('error_ghost')}\n"
        f"status: {res.get('error_status')}\nnotifications: {res.get('notifications')}\n"
        f"console: {res.get('console', [])[-8:]}\nscreenshots: {res['tmp']}/shots\n"
        f"daemon log: {res['daemon_log']}\ncode-server log: {res['code_server_log']}"
    )
    return res


@pytest.mark.asyncio
async def test_tab_accepts_the_daemons_ghost_text(vscode_run: dict[str, Any]) -> None:
    res = ok(vscode_run)
    typed_line = ON_DISK.split("\n")[-1] + TYPED
    assert res["before"] == ON_DISK.split("\n")
    assert res["typed_lines"] == [*ON_DISK.split("\n")[:-1], typed_line]
    ghost = res["ghost"]
    assert ghost["inline"] and ghost["text"].strip(), ghost
    assert "\n" not in ghost["text"], ghost  # mid-line: a one-line suggestion
    # Tab inserted exactly what the ghost showed: in the editor, and in the saved file
    assert res["after"] == [*ON_DISK.split("\n")[:-1], typed_line + ghost["text"]]
    assert res["saved"] == ON_DISK + TYPED + ghost["text"]

    # ... which is the daemon's suggestion for that text and position, with the same settings
    lc, _ = await start_server(None, encodings=["utf-16"], options=SERVER_SETTINGS)
    try:
        uri = (Path(res["tmp"]) / "reference" / FILE_NAME).as_uri()
        text = ON_DISK + TYPED
        open_doc(lc, uri, text)
        line = text.count("\n")
        item = await inline(lc, uri, line, len(typed_line))
        model = (await status(lc))["model"]
    finally:
        await stop_server(lc)
    assert item is not None, "the reference daemon suggests nothing"
    rng = item.range
    start = rng.start.character if rng is not None else len(typed_line)
    end = rng.end.character if rng is not None else len(typed_line)
    assert rng is None or rng.start.line == rng.end.line == line, rng
    assert typed_line[:start] + item.insert_text + typed_line[end:] == typed_line + ghost["text"], (
        f"VS Code showed {ghost['text']!r}, the daemon suggests {item.insert_text!r} over {start}..{end}"
    )

    # the status bar: the model and its latency, and the accept counted (Tab ran bitmamba.accept)
    first, last = res["status_initial"], res["status"]
    assert first["id"] == last["id"] == "bitmamba.bitmamba-lsp", (first, last)
    assert re.fullmatch(rf"{re.escape(model)} · \d+(\.\d+)? (ms|s)", last["text"]), last
    assert any("codicon-sparkle" in c for c in last["icons"]), last
    assert f"model {model} (ready)" in last["label"] and re.search(r"\baccepted 1\b", last["label"]), last
    steps = {s["name"]: s["ms"] for s in res["steps"]}
    print(f"VS Code {res['ghost']['text']!r}: build {res['build_seconds']:.1f} s, browser {res['seconds']:.1f} s "
          f"(workbench {steps['workbench'] / 1000:.1f} s, ghost {(steps['ghost'] - steps['typed']) / 1000:.1f} s "
          f"after typing), total {res['total_seconds']:.1f} s")  # fmt: skip
