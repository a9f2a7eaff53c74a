"""Opening a large document without blocking the event loop.

Tokenizing a 5 MB file takes seconds; on the event loop it would hold up every message (status
requests, other documents' keystrokes) for that long. A document larger than
`LARGE_DOCUMENT_CHARS` is tracked at once with its text and line index only, tokenized on a thread
from a snapshot of its text, and swapped in when the tokens are ready, if the text has not changed
meanwhile (else it is tokenized again). Until then its completions come from a window of the text
before the cursor (jobs.window_job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bitmamba_lsp.lsp.documents import TrackedDocument
from bitmamba_lsp.lsp.memory import release_memory

log = logging.getLogger("bitmamba_lsp")
LARGE_DOCUMENT_CHARS = 100_000


def lower_priority() -> None:
    """Make the calling thread yield the CPU to the model's threads (Linux: a per-thread nice
    value). On two cores a tokenizing thread at equal priority preempts the engine's pool workers
    and a 40 ms prefill takes a second and a half."""
    with contextlib.suppress(Exception):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def in_daemon_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run fn(*args) on a new low-priority daemon thread; its result as an asyncio future. (Not
    the loop's executor: asyncio.run waits for those threads at exit, and exit must not wait for
    a 5 MB file's tokens.)"""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)

    def run() -> None:
        lower_priority()
        try:
            result = fn(*args)
        except BaseException as e:  # delivered to the awaiting task
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, False, e)
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(deliver, True, result)

    threading.Thread(target=run, name="bitmamba-tokenize", daemon=True).start()
    return fut


CHUNK_CHARS = 32_768  # text tokenized per step; the thread sleeps between steps


def tokenize_in_steps(uri: str, text: str, version: int, tokenizer: Any, clean: np.ndarray | None) -> TrackedDocument:
    """The document's tokens, built by appending the text a chunk at a time (the document's own
    incremental tokenization: each append re-tokenizes from the line above it until the tokens
    realign, so the result equals tokenizing the whole text). Between chunks the thread sleeps:
    the tokenizer holds the GIL while it works, and the model's thread and the event loop need it
    (one 5 MB call starved them for seconds)."""
    end = min(len(text), CHUNK_CHARS)
    doc = TrackedDocument(uri, text[:end], version, tokenizer, clean)
    while end < len(text):
        time.sleep(0.002)
        nxt = min(len(text), end + CHUNK_CHARS)
        doc.replace(end, end, text[end:nxt])
        end = nxt
    doc.text = text  # the same characters: keep the caller's string (its identity marks "unchanged")
    doc.reset_history(version)
    return doc


def tokenize_later(
    placeholder: TrackedDocument,
    tokenizer: Any,
    clean: np.ndarray | None,
    current: Callable[[], TrackedDocument | None],
    ready: Callable[[TrackedDocument], None],
) -> asyncio.Task[None]:
    """Tokenize `placeholder`'s text on a thread; `ready(doc)` gets the tokenized document while
    `current()` is still the placeholder and its text unchanged."""

    async def run() -> None:
        while True:
            doc = current()
            if doc is not placeholder:
                return  # closed or replaced meanwhile
            text, version = doc.text, doc.version
            try:
                tracked = await in_daemon_thread(tokenize_in_steps, doc.uri, text, version, tokenizer, clean)
            except Exception:
                log.exception("tokenizing %s failed", doc.uri)
                return
            if current() is not placeholder:
                return
            if placeholder.text is text:  # not edited while the thread worked
                ready(tracked)
                release_memory()  # the tokenizer's temporaries
                return

    return asyncio.get_running_loop().create_task(run())
