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


def _low_priority(fn: Callable[..., Any], *args: Any) -> Any:
    lower_priority()
    try:
        return fn(*args)
    finally:
        with contextlib.suppress(Exception):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 0)


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
                tracked = await asyncio.to_thread(_low_priority, TrackedDocument, doc.uri, text, version, tokenizer, clean)
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
