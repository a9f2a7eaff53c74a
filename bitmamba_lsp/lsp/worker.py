"""The model worker: one thread that owns the model and every document's states.

The LSP event loop never runs the model. It posts messages here, in order:
document opened / edited / closed (cheap bookkeeping on the state cache), completion jobs
(foreground), speculative jobs (after a suggestion is shown) and background prefill (filling
document checkpoints). Foreground messages always go first; background work runs in small
slices only when nothing else is waiting, so a keystroke never waits behind a long prefill.

Completion jobs carry a cancel event (set by `$/cancelRequest` or by a newer request for the
same document) that generation checks before every token. What a completion does is in
suggest.py; the checkpoints are in statecache.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bitmamba_lsp.engine.healing import TokenHealer, healer_for
from bitmamba_lsp.engine.model import Model, State
from bitmamba_lsp.lsp import prefill_rate as rates
from bitmamba_lsp.lsp.jobs import CompletionJob, CompletionResult, cancelled_result
from bitmamba_lsp.lsp.memory import Memory, release_memory
from bitmamba_lsp.lsp.prompt import FimLayout, Prompt, fim_layout
from bitmamba_lsp.lsp.settings import Settings
from bitmamba_lsp.lsp.statecache import DocStates, StateStore
from bitmamba_lsp.lsp.suggest import suggest

log = logging.getLogger(__name__)

SLICE_SECONDS = 0.008  # background prefill runs in slices about this long
# Background prefill waits this long after the last edit or request: while the user types, the
# model is kept free for the next keystroke (measured: a request arriving right after an edit
# waited for a running 15 ms slice, first token 16.5 ms median instead of ~3 ms).
IDLE_SECONDS = 0.05
# A request feeds at most what this long of prefill takes (at the measured rate); farther from a
# checkpoint it answers from a window of the last tokens while background prefill catches up.
FOREGROUND_FEED_SECONDS = 0.08
MIN_FEED = 64


_NO_LEAD = np.zeros(0, dtype=np.int32)
PREFILL_RATE = "_prefill_rate"  # model.extra key: (threads, tokens/s) measured by the preload (preload.py)


class ModelWorker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: Model | None = None
        self.healer: TokenHealer | None = None  # with the model (needs its tokenizer)
        self.store: StateStore | None = None
        self._fifo: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._speculative: list[tuple[CompletionJob, cf.Future[Any]]] = []
        self._busy_uri: str | None = None
        self._stop = False
        self.memory: Memory | None = None  # the cache levels (memory.py), with the model
        self.fim: FimLayout | None = None  # how prompts are laid out for the model (None: left to right)
        self.background_tokens = 0
        self.feed_rate = 1000.0  # prompt tokens/s of a foreground prefill (measured at load)
        self._bg_rate = 1000.0  # background prefill tokens/s (measured as it runs)
        self._last_foreground = 0.0  # time.perf_counter() of the last foreground task
        self._thread = threading.Thread(target=self._run, name="bitmamba-model", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ posting (any thread)
    def submit(self, fn: Callable[[], Any], *, foreground: bool = True) -> cf.Future[Any]:
        """Run fn on the worker, in order. `foreground=False`: a probe that does not count as user
        activity (it does not hold back background prefill)."""
        fut: cf.Future[Any] = cf.Future()

        def task() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        task.foreground = foreground  # type: ignore[attr-defined]
        self._fifo.put(task)
        return fut

    def post(self, fn: Callable[[], None]) -> None:
        """Run fn on the worker, in order, without a result (document bookkeeping)."""

        def task() -> None:
            try:
                fn()
            except Exception:
                log.exception("worker task failed")

        self._fifo.put(task)

    @property
    def stopped(self) -> bool:
        return self._stop

    def shutdown(self, wait: bool = True) -> None:
        self._stop = True
        self._fifo.put(None)
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ model
    def load(self, loader: Callable[[], Model]) -> cf.Future[Model]:
        def do() -> Model:
            model = loader()
            self._install(model)
            return model

        return self.submit(do)

    def _install(self, model: Model) -> None:
        self.healer = (
            healer_for(model.tokenizer, [model.eos_id] if model.eos_id is not None else [])
            if model.tokenizer is not None
            else None
        )
        self.model = model
        rate = model.extra.pop(PREFILL_RATE, None)  # measured by the preload (preload.py)
        self.feed_rate = rate[1] if rate is not None and rate[0] == model.threads else rates.prefill_rate(model)
        self._bg_rate = self.feed_rate
        self.fim = self.fim_layout_for(model, self.settings)
        s = self.settings
        self.memory = Memory(s.cache_order, model.vocab_size) if s.cache_model else None
        self.store = StateStore(
            state_bytes=model.state_bytes,
            budget_bytes=self.budget_for(model),
            spacing=self.spacing_for(model),
            dense=self.settings.dense_checkpoints,
        )

    def fim_layout_for(self, model: Model, settings: Settings) -> FimLayout | None:
        return fim_layout(model, settings, self.feed_rate)

    @property
    def lead(self) -> np.ndarray:
        """Tokens before the document on its track (a FIM model's <pre>)."""
        return self.fim.lead if self.fim is not None else _NO_LEAD

    def budget_for(self, model: Model) -> int:
        """Bytes for all documents' checkpoints: the setting, or 512 of the model's states (a
        100k-token document's checkpoints at the 255M shape), within 64 MB .. 1 GB."""
        if self.settings.memory_budget_mb:
            return self.settings.memory_budget_mb << 20
        return int(min(1 << 30, max(64 << 20, 512 * model.state_bytes)))

    def spacing_for(self, model: Model) -> int:
        if self.settings.checkpoint_spacing:
            return self.settings.checkpoint_spacing
        # Measured (benchmarks/bench_latency.py): re-feeding half a spacing must stay cheap next to
        # a completion, and a 100k-token document's checkpoints must fit the memory budget.
        return 64 if model.state_bytes <= 256 * 1024 else 256

    def reconfigure(self, settings: Settings) -> None:
        def do() -> None:
            self.settings = settings
            if self.store is not None and self.model is not None:
                self.store.budget = self.budget_for(self.model)
                self.fim = self.fim_layout_for(self.model, settings)
                for d in self.store.docs.values():  # the tracks start with the new lead
                    d.relead(self.lead_of(d))
                self.store.spacing = self.spacing_for(self.model)
                self.store.dense = settings.dense_checkpoints
                if settings.threads != self.model.threads and settings.threads >= 0:
                    self.model.threads = settings.threads
                self.store.enforce_budget(self._busy_uri)

        self.post(do)

    # ------------------------------------------------------------------ documents (posted in order)
    def lead_of(self, d: DocStates) -> np.ndarray:
        """What goes before a document on its track: its context chunks, then the FIM <pre>."""
        return np.concatenate([d.context, self.lead]).astype(np.int32) if len(d.context) else self.lead

    def doc_opened(self, uri: str, ids: np.ndarray, context: np.ndarray | None = None) -> None:
        def do() -> None:
            if self.store is None:
                return
            d = self.store.get(uri)
            if context is not None:
                d.context = context
            d.set_document(self.lead_of(d), ids, self.settings.prefill_on_open)
            if self.memory is not None:
                self.memory.opened(uri, ids)

        self.post(do)

    def doc_edited(self, uri: str, first_changed: int, ids: np.ndarray, target: int) -> None:
        def do() -> None:
            if self.store is None:
                return
            d = self.store.get(uri)
            d.edited(self.lead_of(d), first_changed, ids, target)
            if self.memory is not None:
                self.memory.edited(uri, first_changed, ids)

        self.post(do)

    def set_context(self, uri: str, context: np.ndarray) -> None:
        """New context chunks for a document (lsp/context_chunks.py): its track is re-led."""

        def do() -> None:
            if self.store is None or uri not in self.store.docs:
                return
            d = self.store.docs[uri]
            if np.array_equal(d.context, context):
                return
            d.context = context
            d.relead(self.lead_of(d))

        self.post(do)

    def doc_closed(self, uri: str) -> None:
        def do() -> None:
            if self.store is not None:
                self.store.drop(uri)
            if self.memory is not None:
                self.memory.closed(uri)
            release_memory()

        self.post(do)

    def workspace_file(self, path: Path, ids: list[int]) -> None:
        """A workspace file read by the scanner (any thread): counted in background slices."""

        def do() -> None:
            if self.memory is not None:
                self.memory.add_workspace_file(path, np.asarray(ids, dtype=np.int32))

        self.submit(do, foreground=False)

    def set_workspace_roots(self, roots: list[Path]) -> None:
        def do() -> None:
            if self.memory is not None:
                self.memory.roots = list(roots)

        self.post(do)

    # ------------------------------------------------------------------ completions
    def complete(self, job: CompletionJob) -> cf.Future[CompletionResult]:
        return self.submit(lambda: self._complete(job))

    def speculate(self, job: CompletionJob) -> cf.Future[CompletionResult]:
        """Low priority: runs when no foreground work waits; dropped if a newer job cancels it."""
        fut: cf.Future[CompletionResult] = cf.Future()
        job.speculative = True
        self._fifo.put(lambda: self._speculative.append((job, fut)))
        return fut

    def state_for(self, uri: str, prompt: Prompt) -> State:
        """The state after `prompt` exactly as a completion would build it (tests, diagnostics)."""

        def do() -> State:
            assert self.model is not None and self.store is not None
            if not len(prompt):
                return self.model.new_state()
            self._busy_uri = uri
            return self.store.feed(self.model, uri, prompt, incremental=self.settings.incremental_state).state

        return self.submit(do).result()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no background work is left (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.submit(self._has_background, foreground=False).result():
                return True
            time.sleep(0.005)
        return False

    def _complete(self, job: CompletionJob) -> CompletionResult:
        if self.model is None or self.store is None:
            return cancelled_result(job)
        self._busy_uri = job.uri
        s = self.settings
        levels = (
            self.memory.levels(job.uri, job.line_tokens, open_files=s.cache_open_files, workspace=s.cache_workspace)
            if self.memory is not None
            else []
        )
        max_feed = max(MIN_FEED, int(self.feed_rate * FOREGROUND_FEED_SECONDS))
        return suggest(self.model, self.store, self.healer, self.settings, job, levels, max_feed)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stop:
            timeout: float | None = None
            if self._speculative:
                timeout = 0.0
            elif self._has_background():
                timeout = max(0.0, IDLE_SECONDS - (time.perf_counter() - self._last_foreground))
            try:
                task = self._fifo.get(timeout=timeout)
            except queue.Empty:
                if self._speculative or time.perf_counter() - self._last_foreground >= IDLE_SECONDS:
                    self._background_slice()
                continue
            if task is None:
                break
            task()
            if getattr(task, "foreground", True):
                self._last_foreground = time.perf_counter()
        # fail whatever is still waiting
        for _, fut in self._speculative:
            fut.cancel()

    def _has_background(self) -> bool:
        if self._speculative or (self.memory is not None and self.memory.background_work()):
            return True
        if self.store is None:
            return False
        return any(self.store.needs_prefill(d) for d in self.store.docs.values())

    def _background_slice(self) -> None:
        if self._speculative:
            job, fut = self._speculative.pop(0)
            if job.cancel.is_set():
                fut.cancel()
                return
            try:
                fut.set_result(self._complete(job))
            except Exception as e:
                fut.set_exception(e)
            return
        if self.memory is not None and self.memory.background_work():
            self.memory.background_slice()
            return
        store, model = self.store, self.model
        if store is None or model is None:
            return
        # the most recently used document first
        for d in sorted(store.docs.values(), key=lambda d: -d.last_used):
            if not store.needs_prefill(d):
                continue
            # a slice takes ~SLICE_SECONDS so a keystroke never waits long behind it
            size = int(min(max(self._bg_rate * SLICE_SECONDS, 8), 1024))
            t0 = time.perf_counter()
            fed = store.prefill_slice(model, d, size, self._busy_uri)
            rate = fed / max(time.perf_counter() - t0, 1e-6)
            self._bg_rate = 0.5 * self._bg_rate + 0.5 * rate
            if fed >= MIN_FEED and rate > self.feed_rate:  # a foreground feed is at least as fast
                self.feed_rate = rates.raised(model, rate)  # a low measure at load heals (stored too)
            self.background_tokens += fed
            return
