"""JSON-RPC 2.0 over a byte stream, as LSP uses it: the daemon's own, in the standard library only.

The daemon once spoke through pygls, whose protocol types (lsprotocol, ~550 attrs classes) took
0.35-0.47 s to import: more than the whole start a user may wait for (issue 17: the first
completion <= 0.3 s after the editor starts the daemon). What the daemon needs of JSON-RPC is
small, and it is here:

- `Endpoint.dispatch(message)`: a request goes to its handler and gets one response (its result,
  or an error with the code of the `RpcError` the handler raised; any other exception is an
  InternalError, logged, and the endpoint goes on); a notification goes to its handler, and an
  error there is only logged. A request for a method without a handler gets MethodNotFound; a
  notification without one is ignored. A handler may be a coroutine function: it then runs as a
  task, so that `$/cancelRequest` can cancel it (answered with RequestCancelled).
- `Endpoint.request(method, params)`: a request to the client, whose response resolves the
  returned future; `Endpoint.notify(method, params)`: a notification.
- Writing is framed (``Content-Length``) and serialised by a lock: any thread may `notify` or
  `respond`; `request` (whose future belongs to the event loop) runs on the loop's thread.

Params are plain JSON values (dicts, lists, str, int...): the handlers read what they need through
messages.py, which raises `InvalidParams` for what they cannot use. Reading the stream robustly is
framing.py's; the LSP lifecycle and methods are server.py's.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

log = logging.getLogger("bitmamba_lsp")

Handler = Callable[[Any], Any]


class RpcError(Exception):
    """An error response: raise it (or a subclass) from a handler."""

    code = -32603  # InternalError

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": str(self)}


class InvalidRequest(RpcError):
    code = -32600


class MethodNotFound(RpcError):
    code = -32601


class InvalidParams(RpcError):
    code = -32602


class ServerNotInitialized(RpcError):
    code = -32002


class RequestCancelled(RpcError):
    code = -32800


def _valid_id(msg_id: Any) -> bool:
    return isinstance(msg_id, str) or (isinstance(msg_id, int) and not isinstance(msg_id, bool))


class Writer:
    """Framed messages to a binary stream, one whole message at a time from any thread."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    @staticmethod
    def encode(message: dict[str, Any]) -> bytes:
        """The JSON body (ASCII, non-ASCII characters escaped: a lone surrogate in a log message
        is then still valid JSON); TypeError/ValueError for what is not JSON."""
        return json.dumps(message, separators=(",", ":")).encode("ascii")

    def write(self, message: dict[str, Any]) -> None:
        self.write_body(self.encode(message))

    def write_body(self, body: bytes) -> None:
        with self._lock:
            self.stream.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.stream.flush()


class Endpoint:
    """One side of a JSON-RPC connection: dispatches what arrives, sends what the handlers answer."""

    def __init__(self, writer: Writer | None = None) -> None:
        self.writer = writer  # set before the first message is sent
        self.requests: dict[str, Handler] = {}
        self.notifications: dict[str, Handler] = {}
        self.tasks: dict[Any, asyncio.Task[Any]] = {}  # running requests, by id
        self._waiting: dict[Any, asyncio.Future[Any]] = {}  # our requests to the client, by id
        self._next_id = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # a hook that sees each message before dispatch and may answer it instead (the lifecycle);
        # it returns True when the message is handled
        self.gate: Callable[[str, Any, Any, bool], bool] | None = None

    # ------------------------------------------------------------------ sending
    def _connection(self) -> Writer:
        if self.writer is None:
            raise BrokenPipeError("no connection yet")
        return self.writer

    def send(self, message: dict[str, Any]) -> None:
        message["jsonrpc"] = "2.0"
        self._connection().write(message)

    def respond(self, msg_id: Any, result: Any = None, error: RpcError | None = None) -> None:
        if error is not None:
            self.send({"id": msg_id, "error": error.to_json()})
            return
        message = {"id": msg_id, "result": result, "jsonrpc": "2.0"}
        try:
            body = Writer.encode(message)
        except (TypeError, ValueError) as exc:  # a result that is not JSON: still one answer
            log.error("the result for %r is not JSON: %s", msg_id, exc)
            self.send({"id": msg_id, "error": RpcError(f"the result is not JSON: {exc}").to_json()})
            return
        self._connection().write_body(body)

    def notify(self, method: str, params: Any = None) -> None:
        msg: dict[str, Any] = {"method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    def request(self, method: str, params: Any = None) -> asyncio.Future[Any]:
        """Send a request to the client; the future gets its result (or an RpcError)."""
        loop = self._loop or asyncio.get_running_loop()
        self._next_id += 1
        msg_id = f"bitmamba-{self._next_id}"
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiting[msg_id] = fut
        fut.add_done_callback(lambda _: self._waiting.pop(msg_id, None))  # answered, timed out, cancelled
        msg: dict[str, Any] = {"id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return fut

    # ------------------------------------------------------------------ receiving
    def dispatch(self, message: Any) -> None:
        """Handle one parsed message (on the event loop's thread)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            self._invalid(message, "not a JSON-RPC 2.0 message")
            return
        method = message.get("method")
        msg_id = message.get("id")
        has_id = "id" in message
        if method is None:
            if has_id and ("result" in message or "error" in message):
                self._response(msg_id, message)
            else:
                self._invalid(message, "neither a request, a notification nor a response")
            return
        if not isinstance(method, str) or (has_id and not _valid_id(msg_id)):
            self._invalid(message, "a bad method name or id")
            return
        params = message.get("params")  # omitted params are legal: None
        if self.gate is not None and self.gate(method, msg_id, params, has_id):
            return
        if has_id:
            self._request(method, msg_id, params)
        else:
            self._notification(method, params)

    def _invalid(self, message: Any, why: str) -> None:
        msg_id = message.get("id") if isinstance(message, dict) else None
        log.error("an invalid message (%s): %.200r", why, message)
        if _valid_id(msg_id):
            self.respond(msg_id, error=InvalidRequest(f"invalid request: {why}"))

    def _response(self, msg_id: Any, message: dict[str, Any]) -> None:
        fut = self._waiting.pop(msg_id, None) if _valid_id(msg_id) else None
        if fut is None or fut.done():
            log.debug("a response to no request of ours: %r", msg_id)
            return
        err = message.get("error")
        if err is not None:
            code = err.get("code") if isinstance(err, dict) else None
            text = err.get("message") if isinstance(err, dict) else None
            fut.set_exception(RpcError(str(text or err), code if isinstance(code, int) else None))
        else:
            fut.set_result(message.get("result"))

    def _request(self, method: str, msg_id: Any, params: Any) -> None:
        handler = self.requests.get(method)
        if handler is None:
            self.respond(msg_id, error=MethodNotFound(f"method not found: {method}"))
            return
        if inspect.iscoroutinefunction(handler):
            task = asyncio.ensure_future(handler(params))
            self.tasks[msg_id] = task
            task.add_done_callback(lambda t: self._finished(method, msg_id, t))
            return
        try:
            result = handler(params)
        except Exception as exc:
            self.respond(msg_id, error=self._error(method, exc))
            return
        self.respond(msg_id, result)

    def _finished(self, method: str, msg_id: Any, task: asyncio.Task[Any]) -> None:
        if self.tasks.get(msg_id) is task:
            del self.tasks[msg_id]
        try:
            if task.cancelled():
                self.respond(msg_id, error=RequestCancelled(f"{method}: cancelled"))
                return
            exc = task.exception()
            if exc is not None:
                self.respond(msg_id, error=self._error(method, exc))
            else:
                self.respond(msg_id, task.result())
        except (BrokenPipeError, ValueError, OSError) as exc:  # the client is gone
            log.error("cannot send the answer to %s: %s", method, exc)

    def _error(self, method: str, exc: BaseException) -> RpcError:
        if isinstance(exc, RpcError):
            log.info("%s: %s", method, exc)
            return exc
        log.error("%s failed", method, exc_info=exc)
        return RpcError(f"{method}: {type(exc).__name__}: {exc}")

    def _notification(self, method: str, params: Any) -> None:
        handler = self.notifications.get(method)
        if handler is None:
            if not method.startswith("$/"):
                log.info("ignoring the notification %s (not handled)", method)
            return
        try:
            result = handler(params)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(lambda t: self._notified(method, t))
        except Exception as exc:
            log.error("the notification %s failed: %s", method, exc, exc_info=not isinstance(exc, RpcError))

    @staticmethod
    def _notified(method: str, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("the notification %s failed: %s", method, exc, exc_info=exc)

    def cancel(self, msg_id: Any) -> None:
        """`$/cancelRequest`: cancel a running request (one already answered is the normal race of
        a client cancelling while the answer is on its way)."""
        task = self.tasks.get(msg_id)
        if task is None:
            log.debug("$/cancelRequest for %r, which is already answered", msg_id)
            return
        task.cancel()

    def cancel_all(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
