"""The LSP server: the lifecycle and one handler per method, each a few lines that read the params
(messages.py) and call the session (session.py), which holds the daemon's logic and knows no LSP.

JSON-RPC itself is jsonrpc.py's and reading the stream framing.py's: the daemon imports no LSP
library, so that it starts in the time Python, NumPy and the model take (issue 17).

The lifecycle the specification asks for: a request before `initialize` gets ServerNotInitialized
(-32002) and a notification then is dropped; after `shutdown` a request gets InvalidRequest; `exit`
ends the process with 0 after a `shutdown` and 1 without one (`stopped`, read by lsp/cli.py), as
does the end of input.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from bitmamba_lsp import __version__
from bitmamba_lsp.lsp import messages as m
from bitmamba_lsp.lsp.documents import Position
from bitmamba_lsp.lsp.framing import StdinReader, run_framed
from bitmamba_lsp.lsp.jsonrpc import (
    Endpoint,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ServerNotInitialized,
    Writer,
)
from bitmamba_lsp.lsp.memory import uri_path
from bitmamba_lsp.lsp.notify import Level
from bitmamba_lsp.lsp.session import Completion, RequestError, Session

log = logging.getLogger("bitmamba_lsp")

ACCEPT_COMMAND = "bitmamba.accept"
STATUS_COMMAND = "bitmamba.status"
STATUS_REQUEST = "bitmamba/status"
PROGRESS_WAIT_S = 5.0  # how long window/workDoneProgress/create may take to be answered


class Server:
    def __init__(self, model_override: str | None = None, threads_override: int | None = None) -> None:
        self.rpc = Endpoint()
        self.rpc.gate = self._lifecycle
        self.session = Session(self.notify, model_override=model_override, threads_override=threads_override)
        self.encoding = "utf-16"  # negotiated at initialize
        self.capabilities: dict[str, Any] = {}  # the client's
        self.folders: list[str] = []  # workspace folder URIs
        self.fallback = False  # textDocument/completion is served (the completionFallback setting at initialize)
        self.initialize_seen = False
        self.shut_down = False
        self.exit_code: int | None = None  # set by `exit`
        self._done: asyncio.Event | None = None
        for method, handler in {
            "initialize": self.initialize,
            "shutdown": self.shutdown,
            "textDocument/inlineCompletion": self.inline_completion,
            "textDocument/completion": self.completion,
            "workspace/executeCommand": self.execute_command,
            STATUS_REQUEST: self.status,
        }.items():
            self.rpc.requests[method] = handler
        for method, handler in {
            "initialized": self.initialized,
            "exit": self.exit,
            "$/cancelRequest": self.cancel_request,
            "textDocument/didOpen": self.did_open,
            "textDocument/didChange": self.did_change,
            "textDocument/didClose": self.did_close,
            "workspace/didChangeConfiguration": self.did_change_configuration,
            "workspace/didChangeWorkspaceFolders": self.did_change_workspace_folders,
        }.items():
            self.rpc.notifications[method] = handler

    # ------------------------------------------------------------------ running
    def start_io(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        """Serve LSP on the streams (stdin/stdout by default) until `exit` or the end of input."""
        stdin = stdin or sys.stdin.buffer
        self.rpc.writer = Writer(stdout or sys.stdout.buffer)
        try:
            asyncio.run(self._serve(stdin))
        except BrokenPipeError:
            log.error("the connection to the client is lost: shutting down")
        except KeyboardInterrupt:
            pass

    def start_tcp(self, host: str, port: int) -> None:
        """Serve one client that connects to host:port (for debugging)."""
        with socket.create_server((host, port)) as listener:
            log.info("listening on %s:%d", host, port)
            conn, _ = listener.accept()
        try:
            self.start_io(conn.makefile("rb"), conn.makefile("wb"))
        finally:
            # the reading thread may sit in a read: shutting the socket down wakes it (closing its
            # buffered file first would wait for that read to end)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    async def _serve(self, stdin: BinaryIO) -> None:
        self._done = asyncio.Event()
        # the reading thread may stay blocked in a read at the end: never waited for (cli.py ends
        # the process without joining it)
        pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitmamba-stdin")
        reader = StdinReader(stdin, pool)
        stop = threading.Event()
        reading = asyncio.ensure_future(run_framed(stop, reader, self.rpc.dispatch, log))
        reading.add_done_callback(lambda _: self._done.set() if self._done else None)
        await self._done.wait()
        stop.set()
        self.rpc.cancel_all()
        reading.cancel()
        if reading.done() and not reading.cancelled() and reading.exception() is not None:
            raise reading.exception()  # type: ignore[misc]
        pool.shutdown(wait=False)

    def _lifecycle(self, method: str, msg_id: Any, params: Any, is_request: bool) -> bool:
        """Answer what the lifecycle forbids (True: handled here)."""
        if method == "exit":
            return False
        if not self.initialize_seen and method != "initialize":
            if is_request:
                self.rpc.respond(msg_id, error=ServerNotInitialized(f"{method}: the server is not initialized"))
            return True  # a notification before initialize is dropped
        if self.shut_down and is_request:
            self.rpc.respond(msg_id, error=InvalidRequest(f"{method}: the server is shutting down"))
            return True
        return False

    @property
    def stopped(self) -> int:
        """The exit code: 0 after `shutdown` then `exit` (or the end of input after `shutdown`), else 1."""
        return self.exit_code if self.exit_code is not None else (0 if self.shut_down else 1)

    # ------------------------------------------------------------------ telling the user
    def notify(self, level: Level, message: str, popup: bool) -> None:
        log.info(message)
        kind = m.MESSAGE_TYPE[level] if popup or level != "info" else m.MESSAGE_TYPE["log"]
        with contextlib.suppress(Exception):
            self.rpc.notify("window/showMessage" if popup else "window/logMessage", {"type": kind, "message": message})

    async def report_loading(self) -> None:
        """Load the model, with $/progress while it loads when the client supports it."""
        loading = self.session.start_model_load()  # first: a slow client must not delay it
        token = str(uuid.uuid4())
        window = self.capabilities.get("window")
        progress = isinstance(window, dict) and bool(window.get("workDoneProgress"))
        if progress:
            try:
                await asyncio.wait_for(self.rpc.request("window/workDoneProgress/create", {"token": token}), PROGRESS_WAIT_S)
                begin = {"kind": "begin", "title": "bitmamba", "message": "loading model", "cancellable": False}
                self.rpc.notify("$/progress", {"token": token, "value": begin})
            except Exception:  # no answer, an error answer, a closing connection: no progress shown
                progress = False
        with contextlib.suppress(Exception):
            await loading
        if progress:
            ready = self.session.slot.model is not None
            end = {"kind": "end", "message": "model ready" if ready else "model failed to load"}
            self.rpc.notify("$/progress", {"token": token, "value": end})

    # ------------------------------------------------------------------ the lifecycle
    def initialize(self, params: Any) -> dict[str, Any]:
        if self.initialize_seen:
            raise InvalidRequest("the server is already initialized")
        p = m.obj(params, "params")
        self.capabilities = m.opt_obj(p.get("capabilities"), "capabilities")
        self.encoding = m.negotiated_encoding(self.capabilities)
        self.initialize_seen = True
        self.session.configure(p.get("initializationOptions"))
        self.folders, root_path = m.folder_uris(p)
        self.session.set_workspace(self._folder_paths(root_path))
        self.fallback = self.session.settings.completion_fallback
        return {"capabilities": self._server_capabilities(), "serverInfo": {"name": "bitmamba-lsp", "version": __version__}}

    def _server_capabilities(self) -> dict[str, Any]:
        caps: dict[str, Any] = {
            "positionEncoding": self.encoding,
            "textDocumentSync": {"openClose": True, "change": m.SYNC_INCREMENTAL, "save": False},
            "inlineCompletionProvider": {},
            "executeCommandProvider": {"commands": [ACCEPT_COMMAND, STATUS_COMMAND]},
            "workspace": {"workspaceFolders": {"supported": True, "changeNotifications": True}},
        }
        if self.fallback:
            caps["completionProvider"] = {"triggerCharacters": [".", "(", " "], "resolveProvider": False}
        return caps

    def _folder_paths(self, root_path: str | None = None) -> list[Path]:
        paths = [p for p in map(uri_path, self.folders) if p is not None]
        return paths or ([Path(root_path)] if root_path else [])

    async def initialized(self, params: Any) -> None:
        await self.report_loading()

    def shutdown(self, params: Any) -> None:
        self.session.shutdown()
        self.shut_down = True

    def exit(self, params: Any) -> None:
        self.exit_code = 0 if self.shut_down else 1
        if self._done is not None:
            self._done.set()

    def cancel_request(self, params: Any) -> None:
        self.rpc.cancel(m.obj(params, "params").get("id"))

    # ------------------------------------------------------------------ documents and settings
    def did_open(self, params: Any) -> None:
        self.session.open(*m.opened_document(params))

    def did_change(self, params: Any) -> None:
        uri, version, changes = m.changed_document(params)
        self.session.change(uri, version, changes, self.encoding)

    def did_close(self, params: Any) -> None:
        self.session.close(m.document_uri(params))

    def did_change_configuration(self, params: Any) -> None:
        self.session.configure(m.obj(params, "params").get("settings"))

    def did_change_workspace_folders(self, params: Any) -> None:
        event = m.obj(m.obj(params, "params").get("event"), "event")
        removed, _ = m.folder_uris({"workspaceFolders": event.get("removed")})
        added, _ = m.folder_uris({"workspaceFolders": event.get("added")})
        self.folders = [u for u in self.folders if u not in removed] + [u for u in added if u not in self.folders]
        self.session.set_workspace(self._folder_paths())

    # ------------------------------------------------------------------ completions
    async def complete(self, params: Any, fallback: bool = False) -> tuple[Completion | None, Position]:
        uri, pos = m.document_position(params)
        try:
            return await self.session.complete(uri, pos, self.encoding, fallback=fallback), pos
        except RequestError as e:
            raise InvalidParams(str(e)) from None

    async def inline_completion(self, params: Any) -> dict[str, Any] | None:
        c, pos = await self.complete(params)
        if c is None:
            return None
        uri = params["textDocument"]["uri"]
        item = {
            "insertText": c.text,
            "range": {"start": m.pos_json(pos), "end": m.pos_json(c.end if c.end is not None else pos)},
            "command": m.command("bitmamba: accepted", ACCEPT_COMMAND, [uri, c.item_id]),
        }
        return {"items": [item]}

    async def completion(self, params: Any) -> dict[str, Any]:
        """The suggestion as one completion-menu item, for clients without inline completion."""
        if not self.fallback:
            raise MethodNotFound("method not found: textDocument/completion")
        c, _ = await self.complete(params, fallback=True)
        # incomplete: the client asks again as the user types instead of filtering a stale item
        return {"isIncomplete": True, "items": [] if c is None else [self._menu_item(params, c)]}

    @staticmethod
    def _menu_item(params: Any, c: Completion) -> dict[str, Any]:
        label = c.text.strip().split("\n", 1)[0][:60] or c.text[:60]
        return {
            "label": f"✨ {label}",
            "kind": m.COMPLETION_KIND_SNIPPET,
            "detail": "bitmamba (local model)",
            "insertText": c.text,
            "insertTextFormat": m.INSERT_TEXT_PLAIN,
            "filterText": label,
            "sortText": "~bitmamba",  # after the language server's own items
            "command": m.command("bitmamba: accepted", ACCEPT_COMMAND, [params["textDocument"]["uri"], ""]),
        }

    # ------------------------------------------------------------------ commands and status
    def execute_command(self, params: Any) -> Any:
        name = m.string(m.obj(params, "params"), "command", "params")
        if name == ACCEPT_COMMAND:
            self.session.accepted()
            return None
        if name == STATUS_COMMAND:
            return self.session.status(self.encoding)
        raise InvalidParams(f"invalid params: the command {name!r} is not defined")

    def status(self, params: Any) -> dict[str, Any]:
        return self.session.status(self.encoding)


def create_server(model: str | None = None, threads: int | None = None) -> Server:
    return Server(model_override=model, threads_override=threads)
