"""The daemon over raw stdio, as a buggy or hostile client drives it: malformed headers, the LSP
lifecycle (requests before initialize and after shutdown, exit codes), and exiting while busy
(never a signal)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from raw_client import Raw


@pytest.fixture(scope="module")
def model(model_factory):
    path, _, _ = model_factory(50257, 64, 2, 4, seed=3)
    return path


@pytest.fixture
def raw(model):
    servers: list[Raw] = []

    def make(**options: Any) -> Raw:
        r = Raw(model, options)
        servers.append(r)
        return r

    yield make
    for r in servers:
        r.close()


def test_requests_before_initialize_get_server_not_initialized(raw) -> None:
    d = raw()
    d.request(1, "bitmamba/status")
    assert d.reply(1)["error"]["code"] == -32002
    d.initialize(2)
    d.request(3, "bitmamba/status", omit_params=True)  # omitted params are legal
    assert "result" in d.reply(3)  # answered, not -32602
    d.request(4, "shutdown")
    assert d.reply(4)["result"] is None
    d.request(5, "bitmamba/status", {})
    err = d.reply(5)["error"]
    assert err["code"] == -32600 and "shutting down" in err["message"]
    d.send({"jsonrpc": "2.0", "method": "exit"})
    assert d.wait() == 0


def test_exit_without_shutdown_is_1_and_end_of_input_too(raw) -> None:
    d = raw()
    d.initialize()
    d.send({"jsonrpc": "2.0", "method": "exit"})
    assert d.wait() == 1
    e = raw()
    e.initialize()
    e.proc.stdin.close()  # the editor died
    assert e.wait() == 1
    f = raw()
    f.initialize()
    f.request(2, "shutdown")
    f.reply(2)
    f.proc.stdin.close()
    assert f.wait() == 0


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: abc\r\n\r\n",
        b"Content-Length: -5\r\n\r\n",
        b"Content-Length: 2.0\r\n\r\n",
        b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n",  # no Content-Length
        b"Content-Length: 99999999999999999999\r\n\r\n",
    ],
)
def test_a_malformed_header_never_leaves_a_deaf_daemon(raw, header: bytes) -> None:
    d = raw()
    d.initialize()
    d.send_bytes(header + b'{"jsonrpc": "2.0", "id": 7, "method": "bitmamba/status", "params": {}}')
    d.request(8, "bitmamba/status", {})  # the next well-formed message is answered
    assert "result" in d.reply(8, timeout=20)
    d.request(9, "shutdown")
    d.reply(9)
    d.send({"jsonrpc": "2.0", "method": "exit"})
    assert d.wait() == 0


def test_lf_only_line_ends_and_lowercase_headers_are_read(raw) -> None:
    d = raw()
    d.initialize()
    body = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "bitmamba/status", "params": {}}).encode()
    d.send_bytes(b"content-length: %d\n\n" % len(body) + body)
    assert "result" in d.reply(5)
    d.send_bytes(b"Content-Length: 3\r\n\r\n{x}")  # not JSON: reported, and the daemon goes on
    d.request(6, "bitmamba/status", {})
    assert "result" in d.reply(6)


def test_a_cancel_for_an_answered_request_is_not_a_warning(raw) -> None:
    """Issue 15 item 8: an editor cancels a request whose answer is already on its way (the normal
    race); pygls warned on each ("Cancel notification for unknown message id"), one log line per
    keystroke in Neovim's log as [ERROR]."""
    d = raw()
    d.initialize()
    d.request(2, "bitmamba/status", {})
    assert "result" in d.reply(2)
    for _ in range(3):
        d.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 2}})
    d.request(3, "bitmamba/status", {})  # still answering, and the cancels were read before it
    assert "result" in d.reply(3)
    d.request(4, "shutdown")
    d.reply(4)
    d.send({"jsonrpc": "2.0", "method": "exit"})
    assert d.wait() == 0
    err = b"".join(d.stderr).decode(errors="replace")
    assert "unknown message id" not in err and "cancelRequest" not in err, err


def test_a_client_slow_to_answer_the_progress_request_does_not_hold_the_model_back(raw) -> None:
    """With workDoneProgress, the daemon asks the client for a progress token after `initialized`;
    the model loads whether or not (and however late) the client answers, and $/progress follows
    the answer."""
    d = raw()
    d.request(1, "initialize", {"processId": None, "capabilities": {"window": {"workDoneProgress": True}},
                                "initializationOptions": {"debounceMs": 0}})  # fmt: skip
    d.reply(1)
    d.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
    create = d.reply_matching(lambda m: m.get("method") == "window/workDoneProgress/create")
    for i in range(100):  # the client has not answered (it may take 5 s): the model loads all the same
        d.request(10 + i, "bitmamba/status", {})
        state = d.reply(10 + i)["result"]["model_state"]
        if state == "ready":
            break
        time.sleep(0.02)
    assert state == "ready"
    d.send({"jsonrpc": "2.0", "id": create["id"], "result": None})  # late: a progress begin and end
    kinds = [d.reply_matching(lambda m: m.get("method") == "$/progress")["params"]["value"]["kind"] for _ in range(2)]
    assert kinds == ["begin", "end"]
    assert d.shutdown_and_exit() == 0


def test_exit_while_busy_is_never_a_signal(raw) -> None:
    """shutdown + exit during background prefill of a large file, exit during a generation, end
    of input during a generation: exit codes 0 / 1 / 1, never a signal."""
    big = "def f(x):\n    return x + 1\n\n" * 20000  # ~0.5 MB: background prefill runs for a while
    for how in ("shutdown+exit", "exit", "eof"):
        d = raw(maxTokens=4000, timeBudgetMs=60000, minConfidence=0, maxLines=1000, suffixSafety=False)
        d.initialize()
        d.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///big.py", "languageId": "python", "version": 1, "text": big}}})
        d.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///small.py", "languageId": "python", "version": 1, "text": "x = 1\n"}}})
        d.request(2, "textDocument/inlineCompletion", {
            "textDocument": {"uri": "file:///small.py"}, "position": {"line": 1, "character": 0},
            "context": {"triggerKind": 2}})
        time.sleep(0.5)  # busy: generating, prefilling
        if how == "shutdown+exit":
            d.request(3, "shutdown")
            d.reply(3, timeout=30)
            d.send({"jsonrpc": "2.0", "method": "exit"})
            want = 0
        elif how == "exit":
            d.send({"jsonrpc": "2.0", "method": "exit"})
            want = 1
        else:
            d.proc.stdin.close()
            want = 1
        code = d.wait(timeout=30)
        assert code == want, (how, code, b"".join(d.stderr)[-1500:])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_large_document_never_freezes_the_daemon_and_its_memory_comes_back() -> None:
    """A 3 MB file opened and completed at its end, as `G` `o` does: the daemon keeps answering
    (status, another document) while it tokenizes and prefills; the first completion comes from a
    window of the text; closing it gives the memory back. Bounds are generous: the timings are
    benchmarks/bench_large_document.py's."""
    d = Raw(None, {"minConfidence": 0})  # the shipped model
    try:
        d.initialize()
        for k in range(600):  # the model is loaded
            d.request(100 + k, "bitmamba/status", {})
            if d.reply(100 + k, timeout=60)["result"]["model_state"] != "loading":
                break
            time.sleep(0.05)
        base = rss_mb(d.proc.pid)
        unit = "def f(x):\n    return x + 1\n\n\nclass A:\n    def g(self, y):\n        return self.h(y) * 2\n\n"
        text = unit * (3_000_000 // len(unit))
        lines = text.split("\n")
        t0 = time.perf_counter()
        d.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///big.py", "languageId": "python", "version": 1, "text": text}}})
        d.request(3, "bitmamba/status", {})
        d.reply(3)
        assert time.perf_counter() - t0 < 3.0  # opening does not tokenize on the event loop
        t1 = time.perf_counter()
        d.request(4, "textDocument/inlineCompletion", {"textDocument": {"uri": "file:///big.py"},
                  "position": {"line": len(lines) - 1, "character": 0}, "context": {"triggerKind": 2}})
        got = d.reply(4, timeout=60)
        assert "result" in got and time.perf_counter() - t1 < 3.0  # a window answers, not a 3 MB prefill
        d.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///small.py", "languageId": "python", "version": 1, "text": "import os\n"}}})
        t2 = time.perf_counter()
        d.request(5, "textDocument/inlineCompletion", {"textDocument": {"uri": "file:///small.py"},
                  "position": {"line": 1, "character": 0}, "context": {"triggerKind": 2}})
        d.reply(5, timeout=60)
        assert time.perf_counter() - t2 < 2.0  # another document is never blocked by the large one
        time.sleep(3)
        with_doc = rss_mb(d.proc.pid)
        d.send({"jsonrpc": "2.0", "method": "textDocument/didClose", "params": {"textDocument": {"uri": "file:///big.py"}}})
        d.request(6, "bitmamba/status", {})
        d.reply(6)
        time.sleep(0.5)
        after = rss_mb(d.proc.pid)
        assert after < with_doc and after < base + 150, (base, with_doc, after)
    finally:
        d.close()


@pytest.mark.parametrize(("orderly", "want"), [(True, 0), (False, 1)])
def test_the_tcp_mode_serves_one_client_with_the_same_lifecycle(model, orderly: bool, want: int) -> None:
    """`bitmamba lsp --tcp HOST:PORT` (for debugging): one client over a socket, answered as over
    stdio; the exit code follows the lifecycle (0 after shutdown + exit, 1 for exit alone)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free port (released just before the daemon binds it)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "bitmamba_lsp.cli", "lsp", "--tcp", f"127.0.0.1:{port}", "--threads", "1", "--model", str(model)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        f = conn.makefile("rwb")

        def send(msg: dict[str, Any]) -> None:
            body = json.dumps({"jsonrpc": "2.0", **msg}).encode()
            f.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            f.flush()

        def receive(msg_id: int) -> dict[str, Any]:
            while True:
                n = 0
                while (line := f.readline()).strip():
                    n = int(line.split(b":")[1]) if line.lower().startswith(b"content-length") else n
                msg = json.loads(f.read(n))
                if msg.get("id") == msg_id:
                    return msg

        send({"id": 1, "method": "initialize", "params": {"capabilities": {}}})
        assert "inlineCompletionProvider" in receive(1)["result"]["capabilities"]
        if orderly:
            send({"id": 2, "method": "shutdown"})
            assert receive(2)["result"] is None
        send({"method": "exit"})
        assert proc.wait(30) == want
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
