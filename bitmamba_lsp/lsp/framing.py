"""Reading LSP messages from a byte stream, robustly.

A message is headers (``Name: value`` lines), an empty line, then exactly ``Content-Length`` bytes
of JSON. A strict reader (pygls' loop, which the daemon once used) takes only
``Content-Length: <digits>\\r\\n`` exactly; anything else
(``abc``, ``-5``, ``2.0``, a missing length, LF-only line ends) leaves it waiting for a header that
never comes: alive and deaf. This loop:

- accepts LF-only line ends and any letter case of the header name;
- on a header it cannot use (a bad or absurd length, a message without a length) logs one line and
  resynchronises on the next line that ends with a valid ``Content-Length`` (the junk of the bad
  message's body may precede it on the same line);
- never reads more than `MAX_MESSAGE_BYTES` for one message.

A message whose JSON does not parse is logged, and the loop goes on. End of
input ends the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, BinaryIO, Protocol

MAX_MESSAGE_BYTES = 256 << 20  # a 20-million-character document in one didOpen still fits
_LENGTH = re.compile(rb"content-length[ \t]*:[ \t]*([^\s]*)[ \t]*$", re.IGNORECASE)


class AsyncReader(Protocol):
    async def readline(self) -> bytes: ...
    async def readexactly(self, n: int) -> bytes: ...


class StdinReader:
    """Blocking reads of a binary stream run in an executor; a line is read at most
    `MAX_LINE_BYTES` at a time (a junk line without a line break cannot grow without bound)."""

    MAX_LINE_BYTES = 1 << 20

    def __init__(self, stream: BinaryIO, executor: Executor | None = None) -> None:
        self.stream = stream
        self.executor = executor

    async def readline(self) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.stream.readline, self.MAX_LINE_BYTES)

    async def readexactly(self, n: int) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.stream.read, n)


def parse_length(line: bytes) -> tuple[int | None, bool]:
    """(the length of a ``Content-Length`` header ending this line, or None; whether the line has
    such a header at all)."""
    m = _LENGTH.search(line)
    if m is None:
        return None, False
    value = m.group(1)
    if not value.isdigit() or len(value) > 12:
        return None, True
    n = int(value)
    return (n if n <= MAX_MESSAGE_BYTES else None), True


async def run_framed(
    stop_event: threading.Event,
    reader: AsyncReader,
    dispatch: Callable[[Any], Any],
    logger: logging.Logger,
) -> None:
    """Read messages until the end of input (or `stop_event`); each one parsed is given to
    `dispatch`; one that does not parse is logged and skipped."""
    length: int | None = None
    bad = False  # a bad header was seen since the last message: wait for the next valid one
    saw_header = False
    while not stop_event.is_set():
        line = await reader.readline()
        if not line:
            return  # end of input
        stripped = line.rstrip(b"\r\n")
        if stripped:
            n, is_length = parse_length(stripped)
            if is_length:
                if n is None:
                    logger.error("bad header %r: skipping to the next message", stripped[-80:])
                    length, bad = None, True
                else:
                    if bad or not stripped.lower().startswith(b"content-length"):
                        logger.warning("resynchronised on a Content-Length header")
                    length, bad = n, False
            saw_header = True
            continue
        # an empty line ends the headers
        if length is None:
            if saw_header and not bad:
                logger.error("a message without a valid Content-Length header: skipped")
            saw_header = False
            bad = True
            continue
        want, length, saw_header = length, None, False
        body = await reader.readexactly(want)
        if len(body) < want:
            return  # end of input inside a message
        try:
            message = json.loads(body)
        except Exception as exc:
            logger.error("a message that is not valid JSON (%d bytes): %s", len(body), exc)
            continue
        try:
            dispatch(message)
        except (BrokenPipeError, ConnectionError):
            raise
        except Exception:
            logger.exception("unable to handle a message")
