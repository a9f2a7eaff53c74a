"""The daemon's model: loaded on the worker thread (never on the event loop), with the state that
`bitmamba/status` reports and the message the user sees when a model cannot be loaded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

import numpy as np

from bitmamba_lsp import _core
from bitmamba_lsp.engine.errors import NoTokenizerError
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.lsp import preload
from bitmamba_lsp.lsp.documents import clean_start_table
from bitmamba_lsp.lsp.notify import Notify
from bitmamba_lsp.lsp.settings import Settings
from bitmamba_lsp.lsp.worker import ModelWorker

log = logging.getLogger("bitmamba_lsp")
LIBRARY_BPE_DELAY_S = 2.0  # after the model is ready: the library's BPE is built on a thread then


class ModelSlot:
    def __init__(self, worker: ModelWorker, notify: Notify) -> None:
        self.worker = worker
        self.notify = notify
        self.model: Model | None = None
        self.state = "not loaded"  # loading | ready | failed
        self.error: str | None = None
        self.clean: np.ndarray | None = None  # the tokenizer's clean-start table (documents.py)
        self._ready: asyncio.Future[Model] | None = None

    @property
    def requested(self) -> bool:
        """A load was started (after `initialized`)."""
        return self._ready is not None

    def load(self, settings: Settings, on_ready: Callable[[], None]) -> asyncio.Future[Model]:
        """Load the model the settings name; `on_ready` runs on the event loop once it has a tokenizer."""
        loop = asyncio.get_running_loop()
        self.state = "loading"
        self.error = None
        name, threads, revision = settings.model, settings.threads or None, settings.revision
        repeat = settings.repeat()
        lora = settings.lora

        def loader() -> Model:
            from bitmamba_lsp.engine import load

            # loaded from the process's start (--model); not with a layer repetition or an adapter
            model = preload.take(name, revision) if repeat is None and lora is None else None
            if model is None:
                model = load(
                    name, threads=threads, revision=revision, repeat=repeat, lora=lora,
                    prepare_tokenizer=preload.derived_from(library=False),
                )  # fmt: skip
            elif threads and model.threads != threads:
                model.threads = threads
            if model.tokenizer is None:  # refused before the worker installs it
                raise NoTokenizerError(
                    f"{model.name} has no tokenizer (a tokenizer.json beside the model file): the daemon "
                    "completes text, so it needs one"
                )
            return model

        fut = asyncio.wrap_future(self.worker.load(loader), loop=loop)
        self._ready = fut
        fut.add_done_callback(lambda f: self._loaded(f, on_ready))
        return fut

    def _loaded(self, fut: asyncio.Future[Model], on_ready: Callable[[], None]) -> None:
        if fut is not self._ready or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            self.model = None
            msg = f"bitmamba: the model could not be loaded: {exc}. Completions are off until the model setting is fixed."
            log.error(msg)
            self.notify("error", msg, True)
            return
        model = fut.result()
        self.model = model
        self.state = "ready"
        self.clean = clean_start_table(model.tokenizer)
        on_ready()
        self._build_library_bpe_later(model)
        self.notify(
            "info",
            f"bitmamba: model {model.name} ready ({model.arch}, {model.vocab_size} tokens, SIMD {_core.simd_level()}, "
            f"{model.threads} threads, loaded in {model.load_seconds * 1000:.0f} ms)",
            False,
        )

    def _build_library_bpe_later(self, model: Model) -> None:
        """The `tokenizers` library's BPE (what text the core's ASCII BPE does not cover needs:
        40-60 ms holding the GIL), built on a thread a moment after the model is ready, when the
        first requests have been answered, instead of at the first such text."""
        tok = model.tokenizer
        if tok is None or getattr(tok, "library_ready", True):
            return  # built already (or not a tokenizer that defers it)

        def build() -> None:
            with contextlib.suppress(Exception):  # an error shows again where the BPE is needed
                tok.prepare()

        asyncio.get_running_loop().call_later(
            LIBRARY_BPE_DELAY_S, lambda: threading.Thread(target=build, name="bitmamba-bpe", daemon=True).start()
        )

    async def wait(self, wait_s: float) -> Model | None:
        """The model, waiting up to `wait_s` for a load in progress; None without one."""
        if self.model is not None:
            return self.model
        fut = self._ready
        if fut is None or fut.done():
            return None
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(fut), wait_s)
        return self.model
