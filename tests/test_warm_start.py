"""`bitmamba-lsp --warm` (lsp/warm.py): a warm server forks the daemon for each start, handing it the
launcher's stdio. Checked through a real LSP client (pytest-lsp) and raw stdio: the forked daemon
answers exactly as a cold one does (with the model it loads and with the model the warm server
kept), exit codes and signals reach the editor, a launcher that dies takes its daemon with it, bad
peers and stale sockets leave the warm server (and the editor's start) working."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from lsp_client import PLAIN, inline, open_doc, start_server, stop_server
from raw_client import Raw

from bitmamba_lsp.lsp import warm

pytestmark = pytest.mark.skipif(not warm.supported(), reason="warm start needs Linux")

LAUNCH = [
    sys.executable, "-c", "import sys; from bitmamba_lsp.lsp.warm import launch; sys.exit(launch())", "--warm",
]
COLD = [sys.executable, "-m", "bitmamba_lsp.cli", "lsp"]
DOC = "import os\n\n\ndef read(path):\n    with open(path) as f:\n        return f.read()\n\n\ndef main():\n    x = read("
CURSORS = [(3, 4), (5, 8), (9, 13)]


def _env(runtime: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != warm.ENV}  # conftest turns warm starts off
    env[warm.RUNTIME_ENV] = str(runtime)
    return env


def _folder() -> Path:
    # short: a Unix socket's path has at most 107 bytes
    return Path(tempfile.mkdtemp(prefix="bmw-", dir="/tmp"))


def _wait_for(cond, timeout: float = 30.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def _status(env: dict[str, str]) -> dict | None:
    p = subprocess.run(
        [sys.executable, "-m", "bitmamba_lsp.lsp.warm", "status"], env=env, capture_output=True, text=True, timeout=60
    )
    return json.loads(p.stdout) if p.returncode == 0 else None


def _log(runtime: Path) -> str:
    return "".join(p.read_text() for p in runtime.glob("warm-*.log"))


class WarmServer:
    def __init__(self, idle: float = 300) -> None:
        self.runtime = _folder()
        self.env = _env(self.runtime)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bitmamba_lsp.lsp.warm", "serve", "--idle", str(idle)], env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        _wait_for(lambda: any(self.runtime.glob("warm-*.sock")) or self.proc.poll() is not None, 60, "socket")
        assert self.proc.poll() is None, self.proc.stderr.read().decode()  # type: ignore[union-attr]
        self.socket = next(self.runtime.glob("warm-*.sock"))

    def served(self) -> int:
        st = _status(self.env)
        assert st is not None, _log(self.runtime)
        return int(st["served"])

    def close(self) -> None:
        subprocess.run([sys.executable, "-m", "bitmamba_lsp.lsp.warm", "stop"], env=self.env, timeout=60)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def model(model_factory) -> Path:
    path, _, _ = model_factory(50257, 64, 2, 4, seed=7)  # GPT-2's vocabulary: the bundled tokenizer
    return path


@pytest.fixture(scope="module")
def server():
    s = WarmServer()
    yield s
    s.close()


async def _suggestions(model: Path, command: list[str], env: dict[str, str] | None) -> list[str | None]:
    lc, _ = await start_server(model, command=command, env=env, options={**PLAIN, "maxTokens": 8})
    try:
        open_doc(lc, "file:///tmp/warm_example.py", DOC)
        out = []
        for line, ch in CURSORS:
            item = await inline(lc, "file:///tmp/warm_example.py", line, ch)
            out.append(None if item is None else str(item.insert_text))
        return out
    finally:
        code = await stop_server(lc)
        assert code == 0


@pytest.mark.asyncio
async def test_a_warm_daemon_answers_as_a_cold_one(model, server) -> None:
    cold = await _suggestions(model, [*COLD, "--threads", "1"], None)
    assert any(cold), cold  # something to compare
    before = server.served()
    first = await _suggestions(model, [*LAUNCH, "--threads", "1"], server.env)
    assert server.served() == before + 1  # the launcher's start went to the warm server
    assert first == cold
    # The warm server keeps that model once idle; the next daemon gets it from the fork, with its
    # pool rebuilt for 2 threads, and must answer the same.
    _wait_for(lambda: f"kept {model}" in _log(server.runtime), 30, _log(server.runtime))
    second = await _suggestions(model, [*LAUNCH, "--threads", "2"], server.env)
    assert server.served() == before + 2
    assert second == cold
    assert "has the kept model (2 threads)" in _log(server.runtime)


def test_exit_codes_reach_the_editor(model, server) -> None:
    before = server.served()
    d = Raw(model, command=[*LAUNCH, "--threads", "1"], env=server.env)
    try:
        d.initialize()
        assert d.shutdown_and_exit() == 0
    finally:
        d.close()
    e = Raw(model, command=[*LAUNCH, "--threads", "1"], env=server.env)
    try:
        e.initialize()
        e.send({"jsonrpc": "2.0", "method": "exit"})  # without shutdown
        assert e.wait() == 1
    finally:
        e.close()
    bad = subprocess.run([*LAUNCH, "--no-such-flag"], env=server.env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad.stderr
    assert server.served() == before + 3  # all three were warm starts


def _running(server: WarmServer) -> int:
    st = _status(server.env)
    return -1 if st is None else int(st["running"])


def test_a_signal_to_the_launcher_ends_its_daemon(model, server) -> None:
    d = Raw(model, command=[*LAUNCH, "--threads", "1"], env=server.env)
    try:
        d.initialize()
        assert _running(server) == 1
        d.proc.send_signal(signal.SIGTERM)  # what an editor does to a server that will not exit
        assert d.wait() == -signal.SIGTERM  # forwarded; the launcher dies of it as its daemon did
        _wait_for(lambda: _running(server) == 0, 20, "the daemon still runs")
    finally:
        d.close()
    k = Raw(model, command=[*LAUNCH, "--threads", "1"], env=server.env)
    try:
        k.initialize()
        k.proc.kill()  # SIGKILL: nothing forwarded; the warm server sees the launcher's socket close
        k.wait()
        _wait_for(lambda: _running(server) == 0, 20, "the daemon outlived its launcher")
    finally:
        k.close()
    assert "SIGTERM to it" in _log(server.runtime)


def test_bad_peers_are_refused_and_the_server_goes_on(model, server) -> None:
    before = server.served()
    for payload in (b"", b"garbage that is no request", b"\x00\x00\x00\x05{}}}}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(server.socket))
            if payload:
                s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""  # closed without a pid: nothing was forked
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # a request, but no descriptors
        s.connect(str(server.socket))
        body = json.dumps({"argv": ["--help"]}).encode()
        s.sendall(len(body).to_bytes(4, "big") + body)
        assert s.recv(100) == b""
    assert server.served() == before
    assert "refused a launcher" in _log(server.runtime)
    out = subprocess.run([*LAUNCH, "--help"], env=server.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--warm" in out.stdout
    assert server.served() == before + 1


def test_without_a_warm_server_the_start_is_cold_and_spawns_one(model) -> None:
    runtime = _folder()
    env = _env(runtime)
    (runtime / f"warm-{_key(env)}.sock").touch()  # a stale file where the socket would be
    try:
        d = Raw(model, command=[*LAUNCH, "--threads", "1"], env=env)
        try:
            d.initialize()
            d.request(2, "bitmamba/status", {})
            assert "result" in d.reply(2)
            assert d.shutdown_and_exit() == 0
        finally:
            d.close()
        # ... and a warm server for the next start came up in the background
        _wait_for(lambda: _status(env) is not None, 60, "no warm server was spawned")
    finally:
        subprocess.run([sys.executable, "-m", "bitmamba_lsp.lsp.warm", "stop"], env=env, timeout=60)


def _key(env: dict[str, str]) -> str:
    p = subprocess.run(
        [sys.executable, "-c", "from bitmamba_lsp.lsp import warm; print(warm.key())"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return p.stdout.strip()


def test_an_idle_warm_server_ends_and_removes_its_socket() -> None:
    s = WarmServer(idle=0.5)
    assert s.proc.wait(20) == 0
    assert not s.socket.exists() and _status(s.env) is None


def test_turned_off_or_not_asked_for_means_cold(monkeypatch) -> None:
    monkeypatch.delenv(warm.ENV, raising=False)
    assert warm.wanted(["--warm"]) and not warm.wanted([])
    assert not warm.wanted(["--warm", "--tcp", "127.0.0.1:9000"])
    monkeypatch.setenv(warm.ENV, "0")
    assert not warm.wanted(["--warm"])
    monkeypatch.setenv(warm.ENV, "1")
    assert warm.wanted([])


def test_the_key_follows_the_code_and_the_environment(monkeypatch, tmp_path) -> None:
    base = warm.key()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0" if os.environ.get("HF_HUB_OFFLINE") == "1" else "1")
    assert warm.key() != base  # read at import time by the Hub client
    monkeypatch.undo()
    monkeypatch.setenv(warm.RUNTIME_ENV, str(tmp_path))
    monkeypatch.setenv(warm.ENV, "1")
    assert warm.key() == base  # where the socket is, and whether to use it, are not part of it
    module = Path(warm.__file__)
    st = module.stat()
    try:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert warm.key() != base  # an edited or reinstalled package is never served by old code
    finally:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert warm.key() == base


def test_a_shared_runtime_folder_is_refused(monkeypatch) -> None:
    folder = _folder()
    folder.chmod(0o777)
    monkeypatch.setenv(warm.RUNTIME_ENV, str(folder))
    with pytest.raises(PermissionError, match="not a private directory"):
        warm.serve(idle_s=0)
    # a socket someone planted there, where the launcher would look: it is never connected to
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as planted:
        planted.bind(warm.socket_path())
        planted.listen(1)
        planted.settimeout(0.5)
        assert warm.attach(["--warm"]) is None
        with pytest.raises(TimeoutError):
            planted.accept()


def test_model_arguments_are_read_as_the_parser_reads_them() -> None:
    assert warm._model_arg(["--warm", "--model", "m.bin", "-t", "2"]) == ("m.bin", 2)
    assert warm._model_arg(["-m", "a", "--threads=3", "--model=b"]) == ("b", 3)
    assert warm._model_arg(["--log-file", "x", "--threads", "zz"]) == (None, None)


def test_bitmamba_lsp_warm_through_the_main_command_is_served_warm(model, server) -> None:
    before = server.served()
    d = Raw(model, command=[*COLD, "--warm", "--threads", "1", "--log-level", "WARNING"], env=server.env)
    try:
        d.initialize()
        assert d.shutdown_and_exit() == 0
    finally:
        d.close()
    assert server.served() == before + 1
    assert "'--log-level', 'WARNING'" in _log(server.runtime)  # its arguments reached the daemon


def test_bitmamba_warm_status_and_stop_without_a_server() -> None:
    env = _env(_folder())
    p = subprocess.run([*COLD[:-1], "warm", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout.strip() == "null"
    p = subprocess.run([*COLD[:-1], "warm", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "no warm server was running" in p.stdout


def test_a_daemon_whose_launcher_gave_up_never_touches_its_stdio(server) -> None:
    """The launcher hands over its stdio, gets the pid, and leaves without the "go" (as one that
    timed out and started cold does): the forked daemon ends without reading or writing a byte."""
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(stdin_w, b"Content-Length: 2\r\n\r\n{}")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(server.socket))
            body = json.dumps({"argv": ["--help"], "cwd": "/", "env": dict(server.env), "umask": 0o22}).encode()
            socket.send_fds(s, [len(body).to_bytes(4, "big") + body], [stdin_r, out_w, out_w])
            pid = int(json.loads(s.makefile("rb").readline())["pid"])
        os.close(out_w)
        out_w = -1
        assert os.read(out_r, 100) == b""  # EOF: the daemon closed its copy and printed no help
        _wait_for(lambda: not warm._alive(pid), 20, "the daemon still runs")
        assert os.read(stdin_r, 100).startswith(b"Content-Length")  # nothing was read from stdin
    finally:
        for fd in (stdin_r, stdin_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)


def test_a_stopped_warm_server_lets_its_daemons_finish(model) -> None:
    s = WarmServer()
    try:
        d = Raw(model, command=[*LAUNCH, "--threads", "1"], env=s.env)
        try:
            d.initialize()
            subprocess.run([sys.executable, "-m", "bitmamba_lsp.lsp.warm", "stop"], env=s.env, timeout=60)
            assert not s.socket.exists() and s.proc.poll() is None  # no new launchers; still relaying
            d.request(2, "bitmamba/status", {})
            assert "result" in d.reply(2)  # the daemon goes on
            assert d.shutdown_and_exit() == 0  # its exit code still reached the launcher
        finally:
            d.close()
        assert s.proc.wait(20) == 0
        assert "once its 1 daemon(s) end" in _log(s.runtime)
    finally:
        s.close()


def test_a_warm_server_ends_when_the_installed_code_changes() -> None:
    # last in this file: every warm server of this key (the module's too) stops on the change
    s = WarmServer(idle=0)  # never idle: only the code check can end it (every CODE_CHECK_S)
    try:
        module = Path(warm.__file__)
        st = module.stat()
        try:
            os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
            assert s.proc.wait(3 * warm.CODE_CHECK_S) == 0  # it saw another key than its own
        finally:
            os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert "the installed code changed" in _log(s.runtime)
    finally:
        s.close()



def test_a_cold_daemon_spawns_the_missing_warm_server_after_its_start_once(monkeypatch) -> None:
    """Not at the start (the new process would compete with it): SPAWN_DELAY_S later, or at exit
    if that comes first; once."""
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(warm, "spawn", lambda *a: calls.append(a))
    monkeypatch.setattr(warm, "_spawn_wanted", True)
    warm.spawn_later(0.05)
    assert calls == []  # not yet
    time.sleep(0.3)
    assert calls == [("--delay", "0")]
    warm.spawn_pending()  # the exit after it: nothing more
    assert len(calls) == 1
    monkeypatch.setattr(warm, "_spawn_wanted", True)
    warm.spawn_later(30)
    warm.spawn_pending()  # an exit before the timer: spawned now, the timer finds nothing to do
    assert len(calls) == 2
