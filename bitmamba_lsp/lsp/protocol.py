"""Overrides of pygls' protocol class.

- Documents are tracked by the session itself (incrementally), not by pygls' workspace, which
  rebuilds the whole text on every keystroke: the three text-sync methods go straight to our
  handlers.
- pygls drops a request whose params do not parse without answering it; we answer it with
  InvalidParams so the client is not left waiting. Omitted params are legal JSON-RPC: they are
  params = null.
- The lifecycle the specification asks for, which pygls leaves to the server: a request before
  `initialize` gets ServerNotInitialized (-32002); after `shutdown`, a request gets InvalidRequest
  (pygls would leave it unanswered and the client waiting); `exit` ends the process with 0 after a
  `shutdown` and 1 without one (`exit_code`, read by lsp/cli.py).
- A `$/cancelRequest` for a request already answered is the normal race of a client cancelling
  while the answer is on its way (the specification allows it): logged at debug level, where
  pygls warns on every one and an editor's log grows with each keystroke.
"""

from __future__ import annotations

import logging
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.protocol.json_rpc import RPCRequest

log = logging.getLogger(__name__)


class JsonRpcServerNotInitialized(JsonRpcException):
    CODE = -32002


class _Ignored:
    """A message already answered while it was being parsed (handle_message skips it)."""

    jsonrpc = "ignored"


class BitmambaProtocol(LanguageServerProtocol):
    initialized_seen = False  # an `initialize` request arrived
    exit_code: int | None = None  # set by `exit` (or by the end of input: see lsp/cli.py)

    def structure_message(self, data: dict[str, Any]) -> Any:
        if isinstance(data, dict) and "method" in data and "jsonrpc" in data and "params" not in data:
            data = {**data, "params": None}  # omitted params are legal
        try:
            return super().structure_message(data)
        except Exception:
            msg_id = data.get("id") if isinstance(data, dict) else None
            if isinstance(msg_id, int | str) and "method" in data and "jsonrpc" in data:
                method = data.get("method")
                self._send_response(
                    msg_id, error=JsonRpcInvalidParams(f"invalid params for {method!r}").to_response_error()
                )
                return _Ignored()
            raise

    def handle_message(self, message: Any) -> None:
        method = getattr(message, "method", None)
        if method == types.INITIALIZE:
            self.initialized_seen = True
        elif method not in (types.EXIT, None) and not self.initialized_seen:
            if isinstance(message, RPCRequest):
                self._send_response(
                    message.id,
                    error=JsonRpcServerNotInitialized(f"{method}: the server is not initialized").to_response_error(),
                )
            return  # a notification before initialize is dropped
        if self._shutdown and method not in (types.EXIT, None) and isinstance(message, RPCRequest):
            self._send_response(
                message.id, error=JsonRpcInvalidRequest(f"{method}: the server is shutting down").to_response_error()
            )
            return
        super().handle_message(message)

    def _handle_cancel_notification(self, msg_id: Any) -> None:
        if msg_id not in self._request_futures:
            log.debug("$/cancelRequest for %r, which is already answered", msg_id)
            return
        super()._handle_cancel_notification(msg_id)

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args: Any):  # type: ignore[override]
        self.exit_code = 0 if self._shutdown else 1
        yield from super().lsp_exit(*args)

    @property
    def shut_down(self) -> bool:
        return self._shutdown

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):  # type: ignore[override]
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):  # type: ignore[override]
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):  # type: ignore[override]
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None
