"""The LSP server: pygls handlers, each a few lines that translate protocol types to and from the
session (session.py), which holds the daemon's logic and knows no LSP types."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer

from bitmamba_lsp import __version__
from bitmamba_lsp.lsp.documents import Change
from bitmamba_lsp.lsp.framing import StdinReader, run_framed
from bitmamba_lsp.lsp.memory import uri_path
from bitmamba_lsp.lsp.notify import Level
from bitmamba_lsp.lsp.protocol import BitmambaProtocol
from bitmamba_lsp.lsp.session import Completion, RequestError, Session

log = logging.getLogger("bitmamba_lsp")

ACCEPT_COMMAND = "bitmamba.accept"
STATUS_COMMAND = "bitmamba.status"
STATUS_REQUEST = "bitmamba/status"
_LEVELS = {"error": types.MessageType.Error, "warning": types.MessageType.Warning, "info": types.MessageType.Info}


class BitmambaServer(LanguageServer):
    def __init__(self, model_override: str | None = None, threads_override: int | None = None) -> None:
        super().__init__(
            "bitmamba-lsp",
            __version__,
            protocol_cls=BitmambaProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.session = Session(self.notify, model_override=model_override, threads_override=threads_override)

    def start_io(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        """Serve LSP on stdin/stdout with the robust framing of framing.py (pygls' own loop goes deaf
        after one malformed header)."""
        self._stop_event = threading.Event()
        reader = StdinReader(stdin or sys.stdin.buffer, self.thread_pool)
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))
        try:
            asyncio.run(
                run_framed(self._stop_event, reader, self.protocol, log, self.report_server_error, JsonRpcException)
            )
        except BrokenPipeError:
            log.error("the connection to the client is lost: shutting down")
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.shutdown()

    @property
    def exit_code(self) -> int:
        """0 after `shutdown` then `exit` (or the end of input after `shutdown`), else 1."""
        code = self.protocol.exit_code
        if code is None:
            code = 0 if self.protocol.shut_down else 1
        return code

    @property
    def encoding(self) -> str:
        """The negotiated position encoding."""
        try:
            enc = self.workspace.position_encoding
        except RuntimeError:
            return "utf-16"
        return str(getattr(enc, "value", enc) or "utf-16")

    def report_server_error(self, error: Exception, source: Any) -> None:
        # Log instead of a popup for every malformed notification; requests get error responses.
        log.error("server error (%s): %s", getattr(source, "__name__", source), error)

    def notify(self, level: Level, message: str, popup: bool) -> None:
        log.info(message)
        kind = _LEVELS[level] if popup or level != "info" else types.MessageType.Log
        with contextlib.suppress(Exception):
            if popup:
                self.window_show_message(types.ShowMessageParams(type=kind, message=message))
            else:
                self.window_log_message(types.LogMessageParams(type=kind, message=message))

    async def complete(self, params: types.TextDocumentPositionParams, fallback: bool = False) -> Completion | None:
        pos = params.position
        try:
            return await self.session.complete(
                params.text_document.uri, (pos.line, pos.character), self.encoding, fallback=fallback
            )
        except RequestError as e:
            raise JsonRpcInvalidParams(str(e)) from None


def workspace_folders(params: types.InitializeParams) -> list[Path]:
    uris = [f.uri for f in params.workspace_folders or []] or ([params.root_uri] if params.root_uri else [])
    paths = [uri_path(u) for u in uris]
    if not paths and params.root_path:
        paths = [Path(params.root_path)]
    return [p for p in paths if p is not None]


def to_change(change: types.TextDocumentContentChangeEvent) -> Change:
    if isinstance(change, types.TextDocumentContentChangePartial):
        r = change.range
        return Change(change.text, (r.start.line, r.start.character), (r.end.line, r.end.character))
    return Change(change.text)


def inline_item(params: types.InlineCompletionParams, c: Completion) -> types.InlineCompletionItem:
    end = types.Position(line=c.end[0], character=c.end[1]) if c.end is not None else params.position
    return types.InlineCompletionItem(
        insert_text=c.text,
        range=types.Range(start=params.position, end=end),
        command=types.Command(
            title="bitmamba: accepted", command=ACCEPT_COMMAND, arguments=[params.text_document.uri, c.item_id]
        ),
    )


def menu_item(params: types.CompletionParams, c: Completion) -> types.CompletionItem:
    """The suggestion as one completion-menu item, for clients without inline completion."""
    label = c.text.strip().split("\n", 1)[0][:60] or c.text[:60]
    return types.CompletionItem(
        label=f"✨ {label}",
        kind=types.CompletionItemKind.Snippet,
        detail="bitmamba (local model)",
        insert_text=c.text,
        insert_text_format=types.InsertTextFormat.PlainText,
        filter_text=label,
        sort_text="~bitmamba",  # after the language server's own items
        command=types.Command(
            title="bitmamba: accepted", command=ACCEPT_COMMAND, arguments=[params.text_document.uri, ""]
        ),
    )


async def report_loading(ls: BitmambaServer) -> None:
    """Load the model, with $/progress while it loads when the client supports it."""
    token = str(uuid.uuid4())
    progress = False
    caps = ls.client_capabilities
    if caps.window is not None and caps.window.work_done_progress:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ls.work_done_progress.create_async(token), 5)
            ls.work_done_progress.begin(
                token, types.WorkDoneProgressBegin(title="bitmamba", message="loading model", cancellable=False)
            )
            progress = True
    fut = ls.session.start_model_load()
    with contextlib.suppress(Exception):
        await fut
    if progress:
        ready = ls.session.slot.model is not None
        ls.work_done_progress.end(
            token, types.WorkDoneProgressEnd(message="model ready" if ready else "model failed to load")
        )


def create_server(model: str | None = None, threads: int | None = None) -> BitmambaServer:
    server = BitmambaServer(model_override=model, threads_override=threads)

    @server.feature(types.INITIALIZE)
    def initialize(ls: BitmambaServer, params: types.InitializeParams) -> None:
        ls.session.configure(params.initialization_options)
        ls.session.set_workspace(workspace_folders(params))
        if ls.session.settings.completion_fallback:
            ls.feature(
                types.TEXT_DOCUMENT_COMPLETION,
                types.CompletionOptions(trigger_characters=[".", "(", " "], resolve_provider=False),
            )(completion_fallback)

    @server.feature(types.INITIALIZED)
    async def initialized(ls: BitmambaServer, params: types.InitializedParams) -> None:
        await report_loading(ls)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: BitmambaServer, params: types.DidOpenTextDocumentParams) -> None:
        td = params.text_document
        ls.session.open(td.uri, td.text, td.version)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: BitmambaServer, params: types.DidChangeTextDocumentParams) -> None:
        td = params.text_document
        ls.session.change(td.uri, td.version, [to_change(c) for c in params.content_changes], ls.encoding)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: BitmambaServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.session.close(params.text_document.uri)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: BitmambaServer, params: types.DidChangeConfigurationParams) -> None:
        ls.session.configure(params.settings)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(
        ls: BitmambaServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList | None:
        c = await ls.complete(params)
        return None if c is None else types.InlineCompletionList(items=[inline_item(params, c)])

    async def completion_fallback(ls: BitmambaServer, params: types.CompletionParams) -> types.CompletionList:
        c = await ls.complete(params, fallback=True)
        # incomplete: the client asks again as the user types instead of filtering a stale item
        return types.CompletionList(is_incomplete=True, items=[] if c is None else [menu_item(params, c)])

    @server.command(ACCEPT_COMMAND)
    def accept(ls: BitmambaServer, *args: Any) -> None:
        ls.session.accepted()

    @server.command(STATUS_COMMAND)
    def status_command(ls: BitmambaServer, *args: Any) -> dict[str, Any]:
        return ls.session.status(ls.encoding)

    @server.feature(STATUS_REQUEST)
    def status_request(ls: BitmambaServer, params: Any = None) -> dict[str, Any]:
        return ls.session.status(ls.encoding)

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: BitmambaServer, params: Any) -> None:
        ls.session.shutdown()

    return server
