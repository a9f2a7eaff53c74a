"""The daemon's own JSON-RPC layer, in process (no daemon, no model): `Endpoint` dispatch and
responses over an in-memory stream (parsed back by an independent frame parser), requests to the
client, the gate hook, frames written from many threads; the param readers of messages.py; and
`run_framed` reading messages from bytes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from typing import Any

import pytest

from bitmamba_lsp.lsp import messages
from bitmamba_lsp.lsp.documents import Change
from bitmamba_lsp.lsp.framing import run_framed
from bitmamba_lsp.lsp.jsonrpc import Endpoint, InvalidParams, RpcError, Writer

ASYNC = pytest.mark.asyncio(loop_scope="function")


def parse_frames(data: bytes) -> list[dict[str, Any]]:
    """Every ``Content-Length`` framed JSON body of `data`, in order; fails on anything else."""
    out, pos = [], 0
    while pos < len(data):
        end = data.index(b"\r\n\r\n", pos)
        headers = dict(line.split(b": ", 1) for line in data[pos:end].split(b"\r\n"))
        n = int(headers[b"Content-Length"])
        body = data[end + 4 : end + 4 + n]
        assert len(body) == n, "a truncated frame"
        out.append(json.loads(body))
        pos = end + 4 + n
    return out


def frame(message: Any) -> bytes:
    body = json.dumps(message).encode() if not isinstance(message, bytes) else message
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class Wire:
    """An endpoint whose writer writes to memory."""

    def __init__(self) -> None:
        self.stream = io.BytesIO()
        self.endpoint = Endpoint(Writer(self.stream))

    def sent(self) -> list[dict[str, Any]]:
        return parse_frames(self.stream.getvalue())

    async def until(self, count: int) -> list[dict[str, Any]]:
        for _ in range(200):
            if len(self.sent()) >= count:
                break
            await asyncio.sleep(0.001)
        return self.sent()


def req(msg_id: Any, method: str, params: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}


@ASYNC
async def test_sync_request_result_and_byte_length_framing() -> None:
    w = Wire()
    w.endpoint.requests["echo"] = lambda p: {"got": p, "text": "é€😀"}
    w.endpoint.dispatch(req(1, "echo", [1, "a"]))
    assert w.sent() == [{"jsonrpc": "2.0", "id": 1, "result": {"got": [1, "a"], "text": "é€😀"}}]


@ASYNC
async def test_handler_errors_become_error_responses_and_the_endpoint_goes_on() -> None:
    w = Wire()

    def invalid(_: Any) -> None:
        raise InvalidParams("invalid params: position.line must be an integer")

    w.endpoint.requests.update(invalid=invalid, broken=lambda p: p["boom"], ok=lambda _: 7)
    for i, method in enumerate(["invalid", "broken", "ok", "nope"]):
        w.endpoint.dispatch(req(i, method))
    a, b, c, d = w.sent()
    assert a["id"] == 0
    assert a["error"] == {"code": -32602, "message": "invalid params: position.line must be an integer"}
    assert b["id"] == 1 and b["error"]["code"] == -32603 and "TypeError" in b["error"]["message"]
    assert c == {"jsonrpc": "2.0", "id": 2, "result": 7}
    assert d["id"] == 3 and d["error"]["code"] == -32601


@ASYNC
async def test_notifications_unknown_or_failing_send_nothing() -> None:
    w = Wire()
    seen: list[Any] = []

    w.endpoint.notifications.update(seen=seen.append, fails=lambda _: 1 / 0)
    w.endpoint.dispatch({"jsonrpc": "2.0", "method": "unknown/thing", "params": {}})
    w.endpoint.dispatch({"jsonrpc": "2.0", "method": "$/setTrace", "params": {}})
    w.endpoint.dispatch({"jsonrpc": "2.0", "method": "fails"})
    w.endpoint.dispatch({"jsonrpc": "2.0", "method": "seen", "params": {"x": 1}})
    assert seen == [{"x": 1}]
    assert w.stream.getvalue() == b""


@ASYNC
async def test_invalid_messages_answered_only_when_the_id_is_usable() -> None:
    w = Wire()
    w.endpoint.requests["m"] = lambda _: "handled"
    w.endpoint.dispatch({"id": 7, "method": "m"})  # no "jsonrpc"
    w.endpoint.dispatch({"jsonrpc": "1.0", "id": "s", "method": "m"})
    w.endpoint.dispatch({"jsonrpc": "2.0", "id": 8, "method": 5})  # a bad method name
    w.endpoint.dispatch({"jsonrpc": "2.0", "id": 9})  # neither request nor response
    for bad_id in (1.5, True, [1], {"a": 1}, None):
        w.endpoint.dispatch({"jsonrpc": "2.0", "id": bad_id, "method": "m"})
    w.endpoint.dispatch([req(10, "m")])  # a batch: not supported, no usable id
    sent = w.sent()
    assert [m["id"] for m in sent] == [7, "s", 8, 9]
    assert all(m["error"]["code"] == -32600 and "result" not in m for m in sent)


@ASYNC
async def test_async_handler_result_and_cancel() -> None:
    w = Wire()
    started = asyncio.Event()

    async def slow(_: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    async def quick(p: Any) -> Any:
        await asyncio.sleep(0)
        return p

    w.endpoint.requests.update(slow=slow, quick=quick)
    w.endpoint.dispatch(req(5, "slow"))
    w.endpoint.dispatch(req(6, "quick", {"v": 1}))
    await asyncio.wait_for(started.wait(), 1)
    assert 5 in w.endpoint.tasks
    w.endpoint.cancel(5)
    w.endpoint.cancel(12345)  # unknown: ignored
    sent = {m["id"]: m for m in await w.until(2)}
    assert sent[6]["result"] == {"v": 1}
    assert sent[5]["error"]["code"] == -32800
    assert w.endpoint.tasks == {}
    assert len(w.sent()) == 2


@ASYNC
async def test_request_to_the_client_resolves_from_responses() -> None:
    w = Wire()
    ok = w.endpoint.request("workspace/configuration", {"items": []})
    bad = w.endpoint.request("window/showMessageRequest")
    first, second = w.sent()
    assert first["method"] == "workspace/configuration" and first["params"] == {"items": []}
    assert second["method"] == "window/showMessageRequest" and "params" not in second
    assert first["id"] != second["id"]
    w.endpoint.dispatch({"jsonrpc": "2.0", "id": "no-such-request", "result": 1})
    w.endpoint.dispatch({"jsonrpc": "2.0", "id": 424242, "error": {"code": 1, "message": "x"}})
    assert not ok.done() and not bad.done()
    w.endpoint.dispatch({"jsonrpc": "2.0", "id": second["id"], "error": {"code": -32001, "message": "nope"}})
    w.endpoint.dispatch({"jsonrpc": "2.0", "id": first["id"], "result": [{"a": 1}]})
    assert await asyncio.wait_for(ok, 1) == [{"a": 1}]
    with pytest.raises(RpcError) as info:
        await asyncio.wait_for(bad, 1)
    assert info.value.code == -32001 and str(info.value) == "nope"
    w.endpoint.dispatch({"jsonrpc": "2.0", "id": first["id"], "result": 2})  # a second answer: ignored
    assert len(w.sent()) == 2


@ASYNC
async def test_gate_answers_instead_of_dispatch() -> None:
    w = Wire()
    called: list[Any] = []
    w.endpoint.requests["m"] = called.append
    seen: list[tuple[str, Any, Any, bool]] = []

    def gate(method: str, msg_id: Any, params: Any, is_request: bool) -> bool:
        seen.append((method, msg_id, params, is_request))
        if method == "m" and msg_id == 1:
            w.endpoint.respond(msg_id, error=RpcError("not initialized", -32002))
            return True
        return False

    w.endpoint.gate = gate
    w.endpoint.dispatch(req(1, "m", {"p": 1}))
    w.endpoint.dispatch(req(2, "m", {"p": 2}))
    assert seen == [("m", 1, {"p": 1}, True), ("m", 2, {"p": 2}, True)]
    assert called == [{"p": 2}]
    a, b = w.sent()
    assert a["id"] == 1 and a["error"]["code"] == -32002
    assert b == {"jsonrpc": "2.0", "id": 2, "result": None}


class ChunkyStream:
    """A stream that takes each write in pieces, yielding the GIL between them."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, data: bytes) -> int:
        third = max(1, len(data) // 3)
        for i in range(0, len(data), third):
            self.buf.write(data[i : i + third])
            time.sleep(0)
        return len(data)

    def flush(self) -> None:
        pass


def test_frames_from_many_threads_never_interleave() -> None:
    stream = ChunkyStream()
    endpoint = Endpoint(Writer(stream))  # type: ignore[arg-type]
    threads_n, each = 8, 200

    def send(k: int) -> None:
        for i in range(each):
            endpoint.notify("t", {"k": k, "i": i, "pad": "x" * (k * 13)})

    threads = [threading.Thread(target=send, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = parse_frames(stream.buf.getvalue())
    assert len(got) == threads_n * each
    for k in range(threads_n):
        assert [m["params"]["i"] for m in got if m["params"]["k"] == k] == list(range(each))


def test_position_reader_bounds() -> None:
    assert messages.position({"line": 0, "character": 2**31 - 1}) == (0, 2**31 - 1)
    for bad in (-1, True, 1.0, 2**31, "3", None):
        with pytest.raises(InvalidParams, match=r"position\.line"):
            messages.position({"line": bad, "character": 0})
    with pytest.raises(InvalidParams, match=r"position\.character"):
        messages.position({"line": 1})
    with pytest.raises(InvalidParams, match="position must be an object"):
        messages.position([1, 2])


def test_changed_document_changes_and_missing_fields() -> None:
    params = {
        "textDocument": {"uri": "file:///a.py", "version": 3},
        "contentChanges": [
            {"text": "whole"},
            {"text": "x", "range": {"start": {"line": 0, "character": 1}, "end": {"line": 2, "character": 0}}},
            {"text": "y", "range": None, "rangeLength": 4},
        ],
    }
    changes = [Change("whole"), Change("x", (0, 1), (2, 0)), Change("y")]
    assert messages.changed_document(params) == ("file:///a.py", 3, changes)
    td = {"uri": "u", "version": 1}
    half_range = {"text": "", "range": {"start": {"line": 0, "character": 0}}}
    cases = [
        ({"contentChanges": []}, "textDocument must be an object"),
        ({"textDocument": {"version": 1}, "contentChanges": []}, r"textDocument\.uri"),
        ({"textDocument": {"uri": "u", "version": "1"}, "contentChanges": []}, r"textDocument\.version"),
        ({"textDocument": td}, "contentChanges must be an array"),
        ({"textDocument": td, "contentChanges": [{}]}, r"contentChanges\[0\]\.text"),
        ({"textDocument": td, "contentChanges": [half_range]}, r"contentChanges\[0\]\.range\.end must be"),
    ]
    for bad, field in cases:
        with pytest.raises(InvalidParams, match=field):
            messages.changed_document(bad)
    with pytest.raises(InvalidParams, match="params must be an object"):
        messages.changed_document(None)


def test_negotiated_encoding() -> None:
    offers = [(["utf-7", "utf-32", "utf-8"], "utf-32"), (["utf-8", "utf-16"], "utf-8"), (["latin-1"], "utf-16")]
    for offered, chosen in [*offers, ([], "utf-16"), ("utf-8", "utf-16")]:  # "utf-8": not a list
        assert messages.negotiated_encoding({"general": {"positionEncodings": offered}}) == chosen
    assert messages.negotiated_encoding({}) == "utf-16"
    assert messages.negotiated_encoding({"general": "utf-8"}) == "utf-16"


def test_folder_uris() -> None:
    folders = {"workspaceFolders": [{"uri": "file:///a", "name": "a"}, {"name": "no uri"}, 3], "rootUri": "file:///r"}
    assert messages.folder_uris(folders) == (["file:///a"], None)
    assert messages.folder_uris({"workspaceFolders": None, "rootUri": "file:///r", "rootPath": "/r"}) == (["file:///r"], "/r")
    assert messages.folder_uris({"workspaceFolders": [], "rootUri": "file:///r"}) == (["file:///r"], None)
    assert messages.folder_uris({"rootUri": None, "rootPath": 5}) == ([], None)


class BytesReader:
    """framing.AsyncReader over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.buf = io.BytesIO(data)

    async def readline(self) -> bytes:
        return self.buf.readline()

    async def readexactly(self, n: int) -> bytes:
        return self.buf.read(n)


async def read_all(data: bytes) -> list[Any]:
    got: list[Any] = []
    await asyncio.wait_for(run_framed(threading.Event(), BytesReader(data), got.append, logging.getLogger("test")), 2)
    return got


@ASYNC
async def test_run_framed_two_messages_in_order() -> None:
    first, second = req(1, "a", {"t": "é€😀"}), {"jsonrpc": "2.0", "method": "b"}
    assert await read_all(frame(first) + frame(second)) == [first, second]


@ASYNC
async def test_run_framed_skips_invalid_json(caplog: pytest.LogCaptureFixture) -> None:
    after = req(2, "after")
    with caplog.at_level(logging.ERROR, logger="test"):
        got = await read_all(frame(b"{not json") + frame(b"\xff\xfe") + frame(after))
    assert got == [after]
    assert sum("not valid JSON" in r.getMessage() for r in caplog.records) == 2


@ASYNC
async def test_a_result_that_is_not_json_is_still_answered() -> None:
    w = Wire()
    w.endpoint.requests["bad"] = lambda p: object()

    async def bad_async(_: Any) -> Any:
        return {1, 2}  # a set: not JSON

    w.endpoint.requests["bad_async"] = bad_async
    w.endpoint.dispatch(req(1, "bad"))
    w.endpoint.dispatch(req(2, "bad_async"))
    sent = await w.until(2)
    assert [(m["id"], m["error"]["code"]) for m in sent] == [(1, -32603), (2, -32603)]
    assert all("not JSON" in m["error"]["message"] for m in sent)


@ASYNC
async def test_a_lone_surrogate_is_still_valid_json_and_a_timed_out_request_is_forgotten() -> None:
    w = Wire()
    w.endpoint.notify("window/logMessage", {"type": 3, "message": "file \udcff.py"})  # surrogateescape'd name
    (msg,) = w.sent()
    assert msg["params"]["message"] == "file \udcff.py"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(w.endpoint.request("window/workDoneProgress/create", {"token": "t"}), 0.01)
    await asyncio.sleep(0)
    assert w.endpoint._waiting == {}
