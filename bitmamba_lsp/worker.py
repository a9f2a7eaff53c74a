"""The model worker: one thread that owns the model and every document's states.

The LSP event loop never runs the model. It posts messages here, in order:
document opened / edited / closed (cheap bookkeeping on the state cache), completion jobs
(foreground), speculative jobs (after a suggestion is shown) and background prefill (filling
document checkpoints). Foreground messages always go first; background work runs in small
slices only when nothing else is waiting, so a keystroke never waits behind a long prefill.

Completion jobs carry a cancel event (set by `$/cancelRequest` or by a newer request for the
same document) that generation checks before every token.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bitmamba_lsp.completion import CursorContext, StopRules, Suggestion, finalize
from bitmamba_lsp.engine.generation import GenerationConfig, make_sampler
from bitmamba_lsp.engine.model import Model, State
from bitmamba_lsp.healing import Healed, HealedText, TokenHealer
from bitmamba_lsp.settings import Settings
from bitmamba_lsp.statecache import DocStates, StateStore

log = logging.getLogger(__name__)

SLICE_SECONDS = 0.008  # background prefill runs in slices about this long
# Background prefill waits this long after the last edit or request: while the user types, the
# model is kept free for the next keystroke (measured: a request arriving right after an edit
# waited for a running 15 ms slice, first token 16.5 ms median instead of ~3 ms).
IDLE_SECONDS = 0.05


@dataclass
class CompletionJob:
    uri: str
    prompt: np.ndarray  # token ids of the text before the cursor
    shared: int  # how many of them are the document's own tokens
    ctx: CursorContext
    cancel: threading.Event = field(default_factory=threading.Event)
    max_tokens: int = 64
    deadline_ms: float = 1500.0
    submitted: float = field(default_factory=time.perf_counter)
    speculative: bool = False


@dataclass
class CompletionResult:
    suggestion: Suggestion | None
    text: str  # the kept generated text before finalize
    reason: str  # why generation stopped
    tokens: int
    resumed_from: int  # prompt tokens covered by a checkpoint
    fed: int  # prompt tokens fed through the model for this request
    queue_ms: float
    prefill_ms: float
    first_token_ms: float  # from submission to the first generated token
    total_ms: float
    cancelled: bool = False
    first_token_at: float = 0.0  # time.perf_counter() when the first token was sampled


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
        self.background_enabled = True
        self.background_tokens = 0
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
            TokenHealer(model.tokenizer, [model.eos_id] if model.eos_id is not None else [])
            if model.tokenizer is not None
            else None
        )
        self.model = model
        self.store = StateStore(
            state_bytes=model.state_bytes,
            budget_bytes=self.settings.memory_budget_mb << 20,
            spacing=self.spacing_for(model),
            dense=self.settings.dense_checkpoints,
        )

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
                self.store.budget = settings.memory_budget_mb << 20
                self.store.spacing = self.spacing_for(self.model)
                self.store.dense = settings.dense_checkpoints
                if settings.threads != self.model.threads and settings.threads >= 0:
                    self.model.threads = settings.threads
                self.store.enforce_budget(self._busy_uri)

        self.post(do)

    # ------------------------------------------------------------------ documents (posted in order)
    def doc_opened(self, uri: str, ids: np.ndarray) -> None:
        def do() -> None:
            if self.store is None:
                return
            d = self.store.get(uri)
            d.doc.truncate(0, ids)
            d.cursor.clear()
            d.spec.clear()
            d.target = d.open_target = len(ids) if self.settings.prefill_on_open else 0
            d.touch()

        self.post(do)

    def doc_edited(self, uri: str, first_changed: int, ids: np.ndarray, target: int) -> None:
        def do() -> None:
            if self.store is None:
                return
            d = self.store.get(uri)
            d.doc.truncate(first_changed, ids)
            if d.open_target:  # the prefill of the opened document has not finished: keep going
                d.open_target = len(ids)
            d.target = max(target, d.open_target)
            d.touch()

        self.post(do)

    def doc_closed(self, uri: str) -> None:
        def do() -> None:
            if self.store is not None:
                self.store.drop(uri)

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

    def state_for(self, uri: str, prompt: np.ndarray) -> State:
        """The state after `prompt` exactly as a completion would build it (tests, diagnostics)."""

        def do() -> State:
            assert self.model is not None
            return self._state_at(uri, prompt, keep=True)[0] if len(prompt) else self.model.new_state()

        return self.submit(do).result()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no background work is left (tests, benchmarks)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.submit(self._has_background, foreground=False).result():
                return True
            time.sleep(0.005)
        return False

    def _state_at(
        self, uri: str, prompt: np.ndarray, keep: bool, speculative: bool = False
    ) -> tuple[State, np.ndarray, tuple[int, int]]:
        """Restore the deepest checkpoint for `prompt` (leaving at least its last token to feed,
        for the logits), feed the rest, and keep new checkpoints. Returns a private state (the
        cache is never modified by generation), the logits after the prompt, (resumed_from, fed)."""
        model, store = self.model, self.store
        assert model is not None and store is not None and len(prompt) > 0
        d = store.get(uri)
        d.touch()
        self._busy_uri = uri
        n, base = d.resume(prompt, len(prompt) - 1) if self.settings.incremental_state else (0, None)
        state = base.copy() if base is not None else model.new_state()
        rest = prompt[n:]
        if not keep or not self.settings.incremental_state:
            return state, model.prefill(state, rest), (n, len(rest))
        shared = d.doc.lcp(prompt)
        positions = store.checkpoint_positions(n, len(prompt), shared)
        logits, snaps = model.prefill_snapshots(state, rest, [p - n for p in positions], logits=True)
        # Speculative prompts (after accepting the current suggestion) get their own track so they
        # never push out the checkpoints of the prompt the user is actually at.
        track = d.spec if speculative else d.cursor
        track.truncate(track.lcp(prompt), prompt)
        for p, snap in zip(positions, snaps, strict=True):
            if p <= shared and p % store.spacing == 0:
                d.doc.put(p, snap)
            if p > len(prompt) - store.dense:
                track.put(p, snap)
        track.drop([p for p in track.positions if p <= len(prompt) - 2 * store.dense])
        store.enforce_budget(uri)
        assert logits is not None
        return state, logits, (n, len(rest))

    def _complete(self, job: CompletionJob) -> CompletionResult:
        t_start = time.perf_counter()
        queue_ms = (t_start - job.submitted) * 1000
        if job.cancel.is_set() or self.model is None:
            return CompletionResult(None, "", "cancelled", 0, 0, 0, queue_ms, 0, 0, 0, cancelled=True)
        model = self.model
        deadline = job.submitted + job.deadline_ms / 1000
        prompt = job.prompt
        if len(prompt) == 0:
            prompt = np.asarray([model.eos_id if model.eos_id is not None else 0], dtype=np.int32)
        healer = self.healer
        healed = healer.heal(prompt) if healer is not None and self.settings.token_healing else Healed(
            prompt, "", b""
        )
        prompt = healed.ids
        state, logits, (resumed, fed) = self._state_at(
            job.uri, prompt, keep=True, speculative=job.speculative
        )
        t_prefill = time.perf_counter()
        s = self.settings
        cfg = GenerationConfig(
            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, repetition_penalty=1.0
        )
        sampler = make_sampler(model, cfg)
        tok = model.tokenizer
        assert tok is not None
        decoder = tok.stream_decoder()
        healed_text = HealedText(healed.text)
        rules = StopRules(job.ctx)
        eos = model.eos_id
        rest = healed.raw
        token = int(sampler.sample(healer.constrain(logits, rest) if rest else logits))
        if rest:
            rest = healer.advance(rest, token)
        first_token_at = time.perf_counter()
        first_token_ms = (first_token_at - job.submitted) * 1000
        n_tokens = 0
        reason = "length"
        while True:
            if job.cancel.is_set():
                reason = "cancelled"
                break
            if token == eos:
                reason = "eos"
                break
            n_tokens += 1
            if rules.feed(healed_text.feed(decoder.feed(token))):
                reason = rules.reason
                break
            if n_tokens >= job.max_tokens:
                reason = "length"
                break
            if time.perf_counter() > deadline:
                reason = "time_budget"
                break
            if rest:  # still reproducing the healed token's bytes: constrained
                token = int(sampler.sample(healer.constrain(model.step(state, token), rest)))
                rest = healer.advance(rest, token)
            else:
                token = int(model.core.step_sample(state, token, sampler))
        if reason in ("length", "time_budget", "eos"):
            rules.feed(healed_text.feed(decoder.flush()))
            rules.finish()
        total_ms = (time.perf_counter() - job.submitted) * 1000
        text = rules.text
        return CompletionResult(
            suggestion=None if reason == "cancelled" else finalize(text, job.ctx),
            text=text,
            reason=reason,
            tokens=n_tokens,
            resumed_from=resumed,
            fed=fed,
            queue_ms=queue_ms,
            prefill_ms=(t_prefill - t_start) * 1000,
            first_token_ms=first_token_ms,
            total_ms=total_ms,
            cancelled=reason == "cancelled",
            first_token_at=first_token_at,
        )

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
        if self._speculative:
            return True
        if not self.background_enabled or self.store is None:
            return False
        return any(self._doc_needs_prefill(d) for d in self.store.docs.values())

    def _doc_needs_prefill(self, d: DocStates) -> bool:
        target = min(d.target, len(d.doc.seq))
        if target <= 0 or self.store is None:
            return False
        n, _ = d.doc.best(target)
        return target - n >= self.store.spacing

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
        store, model = self.store, self.model
        if store is None or model is None:
            return
        # the most recently used document first
        for d in sorted(store.docs.values(), key=lambda d: -d.last_used):
            if not self._doc_needs_prefill(d):
                continue
            target = min(d.target, len(d.doc.seq))
            n, base = d.doc.best(target)
            # a slice takes ~SLICE_SECONDS so a keystroke never waits long behind it
            size = int(min(max(self._bg_rate * SLICE_SECONDS, 8), 1024))
            end = min(target, n + size)
            if (end // store.spacing) * store.spacing > n:
                end = (end // store.spacing) * store.spacing  # end on a checkpoint position
            positions = sorted({p for p in range(n + 1, end + 1) if p % store.spacing == 0} | {end})
            state = base.copy() if base is not None else model.new_state()
            t0 = time.perf_counter()
            _, snaps = model.prefill_snapshots(state, d.doc.seq[n:end], [p - n for p in positions])
            dt = time.perf_counter() - t0
            self._bg_rate = 0.5 * self._bg_rate + 0.5 * (end - n) / max(dt, 1e-6)
            for p, snap in zip(positions, snaps, strict=True):
                d.doc.put(p, snap)
            if n % store.spacing:
                d.doc.drop([n])  # an intermediate resume point, not a checkpoint position
            if end >= target and d.target == d.open_target:
                d.open_target = 0
            self.background_tokens += end - n
            store.enforce_budget(self._busy_uri)
            return
