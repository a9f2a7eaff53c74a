"""The LSP structures the daemon reads and writes, as plain JSON values.

Readers take a request's params (whatever JSON the client sent) and return what the session needs,
raising `InvalidParams` (-32602) naming the field they cannot use; writers build the camelCase
objects of the specification (fields that are absent are omitted, as the specification's optional
properties are). Only what the daemon uses is here: see server.py for the methods.
"""

from __future__ import annotations

from typing import Any

from bitmamba_lsp.lsp.documents import Change, Position
from bitmamba_lsp.lsp.jsonrpc import InvalidParams

UINTEGER_MAX = 2**31 - 1

# The specification's enumerations, the values the daemon sends
MESSAGE_TYPE = {"error": 1, "warning": 2, "info": 3, "log": 4}
SYNC_INCREMENTAL = 2
COMPLETION_KIND_SNIPPET = 15
INSERT_TEXT_PLAIN = 1
ENCODINGS = ("utf-8", "utf-16", "utf-32")  # position encodings the documents understand


def obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidParams(f"invalid params: {what} must be an object")
    return value


def opt_obj(value: Any, what: str) -> dict[str, Any]:
    """An optional object: {} when absent (null)."""
    return {} if value is None else obj(value, what)


def string(d: dict[str, Any], key: str, what: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise InvalidParams(f"invalid params: {what}.{key} must be a string")
    return v


def uinteger(d: dict[str, Any], key: str, what: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= UINTEGER_MAX:
        raise InvalidParams(f"invalid params: {what}.{key} must be an integer from 0 to {UINTEGER_MAX}")
    return v


def integer(d: dict[str, Any], key: str, what: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidParams(f"invalid params: {what}.{key} must be an integer")
    return v


def position(value: Any, what: str = "position") -> Position:
    p = obj(value, what)
    return uinteger(p, "line", what), uinteger(p, "character", what)


def range_of(value: Any, what: str = "range") -> tuple[Position, Position]:
    r = obj(value, what)
    return position(r.get("start"), f"{what}.start"), position(r.get("end"), f"{what}.end")


def document_uri(params: Any) -> str:
    """params.textDocument.uri."""
    return string(obj(obj(params, "params").get("textDocument"), "textDocument"), "uri", "textDocument")


def document_position(params: Any) -> tuple[str, Position]:
    """(uri, position) of TextDocumentPositionParams (inline completion, completion)."""
    return document_uri(params), position(params.get("position"))


def opened_document(params: Any) -> tuple[str, str, int]:
    """(uri, text, version) of DidOpenTextDocumentParams."""
    td = obj(obj(params, "params").get("textDocument"), "textDocument")
    return string(td, "uri", "textDocument"), string(td, "text", "textDocument"), integer(td, "version", "textDocument")


def changed_document(params: Any) -> tuple[str, int, list[Change]]:
    """(uri, version, changes) of DidChangeTextDocumentParams."""
    p = obj(params, "params")
    td = obj(p.get("textDocument"), "textDocument")
    changes = p.get("contentChanges")
    if not isinstance(changes, list):
        raise InvalidParams("invalid params: contentChanges must be an array")
    out = []
    for i, c in enumerate(changes):
        what = f"contentChanges[{i}]"
        c = obj(c, what)
        text = string(c, "text", what)
        if c.get("range") is None:
            out.append(Change(text))
        else:
            start, end = range_of(c["range"], f"{what}.range")
            out.append(Change(text, start, end))
    return string(td, "uri", "textDocument"), integer(td, "version", "textDocument"), out


def negotiated_encoding(capabilities: dict[str, Any]) -> str:
    """The first position encoding the client offers that the daemon understands; UTF-16 (the
    specification's default) when it offers none of them."""
    general = capabilities.get("general")
    offered = general.get("positionEncodings") if isinstance(general, dict) else None
    for enc in offered if isinstance(offered, list) else []:
        if enc in ENCODINGS:
            return enc
    return "utf-16"


def folder_uris(params: dict[str, Any]) -> tuple[list[str], str | None]:
    """(the workspace folders' URIs, else [rootUri]; rootPath) of InitializeParams."""
    folders = params.get("workspaceFolders")
    uris = [f["uri"] for f in folders if isinstance(f, dict) and isinstance(f.get("uri"), str)] if isinstance(folders, list) else []
    root_uri = params.get("rootUri")
    if not uris and isinstance(root_uri, str):
        uris = [root_uri]
    root_path = params.get("rootPath")
    return uris, root_path if isinstance(root_path, str) else None


def pos_json(p: Position) -> dict[str, int]:
    return {"line": p[0], "character": p[1]}


def command(title: str, name: str, arguments: list[Any]) -> dict[str, Any]:
    return {"title": title, "command": name, "arguments": arguments}
