"""Overrides of pygls' protocol class.

- Documents are tracked by the session itself (incrementally), not by pygls' workspace, which
  rebuilds the whole text on every keystroke: the three text-sync methods go straight to our
  handlers.
- pygls drops a request whose params do not parse without answering it; we answer it with
  InvalidParams so the client is not left waiting.
"""

from __future__ import annotations

from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol, lsp_method


class _Ignored:
    """A message already answered while it was being parsed (handle_message skips it)."""

    jsonrpc = "ignored"


class BitmambaProtocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]) -> Any:
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
