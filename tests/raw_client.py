"""A daemon spoken to in raw bytes over stdio (Content-Length framing), as a buggy or hostile
client, or a test that needs exit codes and signals, drives it."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SERVER = [sys.executable, "-m", "bitmamba_lsp.cli", "lsp", "--threads", "1"]


class Raw:
    """A daemon process spoken to in raw bytes; replies are parsed by a reader thread."""

    def __init__(
        self,
        model: Path | None,
        options: dict[str, Any] | None = None,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        cmd = [*(command or SERVER)] + (["--model", str(model)] if model is not None else [])
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.options = options or {}
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr: list[bytes] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line.strip() == b"":
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length is None:
                continue
            self.replies.put(json.loads(out.read(length)))

    def send_bytes(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, msg: dict[str, Any]) -> None:
        body = json.dumps(msg).encode()
        self.send_bytes(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def request(self, msg_id: int, method: str, params: Any = None, *, omit_params: bool = False) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if not omit_params:
            msg["params"] = params
        self.send(msg)

    def reply(self, msg_id: int, timeout: float = 30) -> dict[str, Any]:
        return self.reply_matching(lambda r: r.get("id") == msg_id, timeout, f"no reply to {msg_id}")

    def reply_matching(self, want: Any, timeout: float = 30, missing: str = "no such message") -> dict[str, Any]:
        """The next message from the daemon for which want(message) is true (others are dropped)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                r = self.replies.get(timeout=0.2)
            except queue.Empty:
                continue
            if want(r):
                return r
        raise TimeoutError(f"{missing}; stderr: {b''.join(self.stderr)[-2000:]!r}")

    def initialize(self, msg_id: int = 1) -> dict[str, Any]:
        opts = {"debounceMs": 0, "speculative": False, **self.options}
        self.request(msg_id, "initialize", {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": opts})
        r = self.reply(msg_id)
        self.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        return r

    def shutdown_and_exit(self, msg_id: int = 99) -> int:
        """The orderly end an editor sends (shutdown, then exit); the process's exit code."""
        self.request(msg_id, "shutdown")
        assert self.reply(msg_id)["result"] is None
        self.send({"jsonrpc": "2.0", "method": "exit"})
        return self.wait()

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
