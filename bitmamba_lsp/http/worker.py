"""The generation worker: one thread owns the model and runs every request.

Requests arrive as `Job`s. Up to `max_batch` run at once; the loop alternates one prefill slice
(at most `prefill_chunk` tokens of one prompt, so a long prompt does not stall the others) with one
decode step that advances every decoding request together (`Model.step_batch`, or `step_sample`
when only one is decoding and no hook is active). Sampling is the engine's own `_core.Sampler`
built by `make_sampler`, so an unhealed request gives exactly what `Model.generate` gives for the
same settings and seed.

Each request's tokens go through the engine's `Decoder` (engine/decoding.py: sampling, EOS, stop
ids, max_tokens, stop sequences with hold-back), the same per-token logic as `TextStream` and the
daemon; this worker only decides which states step together. Each generated token is pushed at once
to the request's `Channel` (read by the event loop); text that may start a stop sequence waits until
it is known not to be one. A job's `cancel` event (set when the client disconnects) ends it within
one step. Prompts resume from the `PrefixCache`.

Token healing (a job's `heal`, engine/healing.py): the prompt's last token is taken back and the
first generated tokens are constrained to reproduce its bytes (`HealingConstraint`, a logits hook),
which the decoder then removes from the output (`skip`), as the daemon does. What is fed, and what
the prefix cache keys on, is the healed prompt. While the hook is active a run's logits go through
`Decoder.choose` (never `step_sample`). Tokens that only re-create the dropped bytes are not
counted as completion tokens nor against `max_tokens`, and send no event.

A job with `max_tokens` 0 is only prefilled (the prefix cache keeps its states: a client warming the
cache, as llama.vim's /infill requests with `n_predict: 0` do) and ends with nothing generated. A job
may bring its own text stop (`Job.text_stop`, e.g. /infill's indentation and time rules) instead of
the plain stop-sequence matcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bitmamba_lsp.engine.decoding import Decoder, GenerationConfig, StopMatcher, StopReason, make_sampler
from bitmamba_lsp.engine.drafts import Drafter, DraftSettings
from bitmamba_lsp.engine.healing import HealingConstraint, TokenHealer
from bitmamba_lsp.engine.model import Model, State
from bitmamba_lsp.http.logprobs import PROMPT_SLICE, Scoring, Tracker
from bitmamba_lsp.http.prefixcache import PrefixCache

log = logging.getLogger(__name__)


class Channel:
    """Events from the worker thread to one asyncio consumer, waking the loop at most once per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._event = asyncio.Event()

    def put(self, kind: str, value: Any) -> None:  # any thread
        with self._lock:
            self._items.append((kind, value))
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
                self._loop.call_soon_threadsafe(self._event.set)

    async def get(self) -> list[tuple[str, Any]]:
        """Everything queued so far (waits until there is something)."""
        while True:
            with self._lock:
                items = list(self._items)
                self._items.clear()
                if not items:
                    self._wake_pending = False
            if items:
                return items
            await self._event.wait()
            self._event.clear()


# The API's finish reasons: an end-of-text is a "stop" for OpenAI clients.
_FINISH = {StopReason.EOS: "stop"}


@dataclass
class Result:
    finish_reason: str  # stop | length | cancelled | error
    prompt_tokens: int  # the job's prompt (before healing took its last token back)
    completion_tokens: int  # generated, without those that only re-created the healed token
    text: str
    resumed_from: int  # prompt tokens covered by a cached state
    tokens: list[int]  # every generated token (the healed token's re-creation included)
    healed: str = ""  # the healed token's text (generated again, removed from `text`)
    reason: str = ""  # the decoder's own StopReason (eos, stop, length, ...), finer than finish_reason
    prompt_ms: float = 0.0  # from admission to the first token's logits (prefill, queue excluded)
    predicted_ms: float = 0.0  # from then to the end
    logprobs: Tracker | None = None  # the request's logprobs (http/logprobs.py), when it asked


@dataclass
class Job:
    ids: list[int]
    cfg: GenerationConfig
    channel: Channel | None = None
    stop_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    heal: bool = False  # token healing: take back the last prompt token, regenerate it constrained
    truncated: int = 0  # prompt tokens the server dropped (reported, not used here)
    # the text stop of this job (a StopMatcher-like object: feed/finish/take/text); None: stop sequences
    text_stop: Any = None
    scoring: Scoring | None = None  # logprobs / echo (http/logprobs.py); None: neither
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    on_done: Callable[[Result], None] | None = None  # called on the worker thread (tests, benchmarks)


class _Run:
    """A job in progress."""

    def __init__(
        self,
        job: Job,
        model: Model,
        ids: np.ndarray,
        state: State,
        resumed: int,
        healing: HealingConstraint | None = None,
        healed: str = "",
    ) -> None:
        self.job = job
        self.ids = ids  # what is fed: the job's prompt, healed
        self.state = state
        self.resumed = resumed
        self.pos = resumed  # prompt tokens fed so far
        tok = model.tokenizer
        self.text = job.text_stop if job.text_stop is not None else StopMatcher(job.cfg.stop)
        self.started = time.perf_counter()
        self.prefilled: float | None = None  # when the prompt's logits were there
        self.healing = healing
        self.healed = healed
        self.healing_tokens = 0  # generated tokens that only re-created the healed bytes
        self.decoder = Decoder(
            make_sampler(model, job.cfg, ids),
            max_tokens=job.cfg.max_tokens,
            eos=None if job.ignore_eos or not job.cfg.stop_at_eos else model.eos_id,
            stop_ids=job.stop_ids,
            stream=tok.stream_decoder() if tok is not None else None,
            text_stop=self.text,
            skip=healed,
            hooks=[healing] if healing is not None else (),
            penalize=job.cfg.repetition_penalty != 1.0,
        )
        # speculative decoding (engine/drafts.py) while this is the only request generating
        self.drafter = (
            Drafter(ids, vocab=model.vocab_size, settings=DraftSettings(max_draft=job.cfg.draft))
            if job.cfg.draft > 0 and job.scoring is None
            else None
        )
        self.fed: list[int] = []  # generated tokens fed back through the model
        self.next: int | None = None  # sampled, not yet fed
        self.snapshots: dict[int, State] = {}
        self.finish_reason: str | None = None
        sc = job.scoring
        self.lp = Tracker(tok, sc) if sc is not None and sc.top is not None and tok is not None else None

    @property
    def scores_prompt(self) -> bool:
        """Every prompt position's logits are needed (echo with logprobs): no cached state resumes it."""
        return self.job.scoring is not None and self.job.scoring.prompt

    @property
    def wants_logits(self) -> bool:
        """A hook or the logprobs must see each step's logits (the core must not sample by itself)."""
        return self.lp is not None or self.decoder.hooked

    def prefill(
        self, model: Model, a: int, b: int, positions: list[int], last: bool
    ) -> tuple[np.ndarray | None, list[State]]:
        """Feed prompt tokens a..b-1, with state copies after `positions` (relative to a); the logits
        after b-1 when `last`. Scoring the prompt keeps every row (PROMPT_SLICE tokens at a time)."""
        if not self.scores_prompt or self.lp is None:
            return model.prefill_snapshots(self.state, self.ids[a:b], positions, logits=last)
        rows, snaps = model.core.prefill(self.state, self.ids[a:b], True, True, positions)
        self.lp.prompt_rows(self.ids, a, b, rows)
        if last:
            self.emit("prompt", self.lp.prompt_entries)
        return rows[-1], snaps

    def choose(self, logits: np.ndarray) -> int:
        if self.lp is not None:
            self.lp.observe(logits)
        return self.decoder.choose(logits)

    def emit_text(self, kept: int | None, final: bool = False) -> None:
        """Send the text released since the last call (with its tokens' logprobs); `kept`: the token
        just accepted as part of the answer (None: nothing new, or a token without text)."""
        text = self.text.take()
        if self.lp is None:
            if text or not final:
                self.emit("token" if not final else "text", text)
            return
        if kept is not None:
            self.lp.add(kept)
        n = len(self.text.text)
        stopped = bool(getattr(self.text, "stopped", False))  # a stop sequence cut the text
        entries = self.lp.finish(n, stopped) if final else self.lp.release(n)
        if text or entries or not final:
            self.emit("lp", (text, entries))

    def step(self, model: Model, tok: int) -> int:
        """One plain step: feed `tok`, return the next token (timed for the drafter)."""
        t0 = time.perf_counter()
        if self.wants_logits:  # a hook (healing) or the logprobs must see the logits
            logits = model.step(self.state, tok)
            t1 = time.perf_counter()
            nxt = self.choose(logits)
        else:
            nxt = int(model.core.step_sample(self.state, tok, self.decoder.sampler))
            t1 = time.perf_counter()
        if self.drafter is not None:
            self.drafter.plain_step(t1 - t0)
        self.fed.append(tok)
        return nxt

    def verify(
        self, model: Model, tok: int, draft: list[int], accept: Callable[[int], None], checkpoint: Callable[[State], None]
    ) -> tuple[int, int]:
        """Speculative decoding's step (see decoding.verify): feed `tok` and the draft in one batched
        step, `accept` each token the decoder chooses while it is the draft's, roll the state back
        to the last; `checkpoint(state)` after each fed token. Returns (draft length, accepted)."""
        drafter = self.drafter
        assert drafter is not None
        ids = np.asarray([tok, *draft], dtype=np.int32)
        k = len(draft)
        pool = drafter.states(model, k)
        t0 = time.perf_counter()
        rows, snaps = model.core.prefill(self.state, ids, True, True, list(range(1, k + 1)), pool)
        spent = time.perf_counter() - t0
        live = self.state
        accepted, produced = 0, 0
        for i in range(k + 1):
            nxt = self.choose(rows[i])
            produced += 1
            self.fed.append(int(ids[i]))
            at = snaps[i] if i < k else live  # the state after self.fed
            checkpoint(at)
            if i == k or nxt != draft[i]:
                if i < k:
                    live.copy_from(at)
                accept(nxt)
                break
            accepted += 1
            self.state = at  # should accepting it end the request, the prefix cache keeps this state
            accept(nxt)
            self.state = live
            if self.finish_reason is not None:
                drafter.release(at)  # the cache holds it now
                live.copy_from(at)
                break
        drafter.verified(k, accepted, spent, produced)
        return k, accepted

    @property
    def prefilling(self) -> bool:
        return self.pos < len(self.ids)

    def emit(self, kind: str, value: Any) -> None:
        if self.job.channel is not None:
            self.job.channel.put(kind, value)


class GenerationWorker:
    def __init__(
        self,
        model: Model,
        *,
        max_batch: int = 16,
        max_queue: int = 256,
        prefill_chunk: int = 512,
        cache_bytes: int = 256 << 20,
        cache_spacing: int = 64,
    ) -> None:
        self.model = model
        self.max_batch = max(1, max_batch)
        self.max_queue = max(1, max_queue)
        self.prefill_chunk = max(1, prefill_chunk)
        self.cache = PrefixCache(model.state_bytes, cache_bytes, cache_spacing)
        tok = model.tokenizer
        self.healer = (
            TokenHealer(
                tok, sorted({*tok.special_ids, *([model.eos_id] if model.eos_id is not None else [])})
            )
            if tok is not None
            else None
        )
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._pending: deque[Job] = deque()
        self._active: list[_Run] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counters: dict[str, int] = dict(
            requests=0,
            completed=0,
            cancelled=0,
            errors=0,
            rejected=0,
            prompt_tokens=0,
            prefill_tokens=0,
            healed_prompts=0,
            generated_tokens=0,
            decode_steps=0,
            batched_steps=0,
            max_batch_seen=0,
            draft_tokens=0,
            draft_accepted=0,
        )
        self._queued = 0

    # ------------------------------------------------------------------ any thread
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="bitmamba-http-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (the caller answers 429)."""
        with self._lock:
            if self._stopping or self._queued >= self.max_queue:
                self.counters["rejected"] += 1
                return False
            self._queued += 1
            self.counters["requests"] += 1
        self._inbox.put(job)
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self.counters)
            out["queued"] = self._queued
        out["active"] = len(self._active)
        out["prefix_cache"] = self.cache.stats()
        return out

    # ------------------------------------------------------------------ worker thread
    def _loop(self) -> None:
        while True:
            items: list[Job | None] = []
            if not self._active and not self._pending:
                items.append(self._inbox.get())  # idle: block until something arrives
            while True:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            self._pending.extend(j for j in items if j is not None)
            if self._stopping:
                break
            try:
                self._tick()
            except Exception:  # a bug must not kill the worker: fail the running requests
                log.exception("generation worker error")
                for run in self._active:
                    self._finish(run, StopReason.ERROR, error="internal error in the generation worker")
                self._active = [r for r in self._active if r.finish_reason is None]
        for run in self._active:
            self._finish(run, StopReason.CANCELLED)
        for job in self._pending:
            self._done_queued(job)
            if job.channel is not None:
                job.channel.put("error", "the server is shutting down")

    def _done_queued(self, job: Job) -> None:
        with self._lock:
            self._queued -= 1

    def _tick(self) -> None:
        while self._pending and len(self._active) < self.max_batch:
            job = self._pending.popleft()
            self._done_queued(job)
            run = self._admit(job)
            if run is not None:
                self._active.append(run)
        for run in self._active:
            if run.job.cancel.is_set():
                self._finish(run, StopReason.CANCELLED)
        self._active = [r for r in self._active if r.finish_reason is None]
        pre = next((r for r in self._active if r.prefilling), None)
        if pre is not None:
            self._prefill_slice(pre)
        decoding = [r for r in self._active if r.next is not None and r.finish_reason is None]
        if decoding:
            self._decode(decoding)
        self._active = [r for r in self._active if r.finish_reason is None]

    def _admit(self, job: Job) -> _Run | None:
        if job.cancel.is_set():
            with self._lock:
                self.counters["cancelled"] += 1
            if job.channel is not None:
                job.channel.put("done", Result("cancelled", len(job.ids), 0, "", 0, []))
            return None
        ids = np.asarray(job.ids, dtype=np.int64)
        try:
            healing, healed = None, ""
            if job.heal and self.healer is not None:
                h = self.healer.heal(ids)
                if h.raw:
                    ids, healed = np.asarray(h.ids, dtype=np.int64), h.text
                    healing = HealingConstraint(self.healer, h.raw)
            # keyed on what is fed; scoring the prompt needs all of its logits: nothing is resumed
            n, cached = (0, None) if job.scoring and job.scoring.prompt else self.cache.lookup(ids)
            state = cached.copy() if cached is not None else self.model.new_state()
            run = _Run(job, self.model, ids, state, n, healing, healed)
        except Exception as e:  # e.g. settings the sampler refuses: fail this request only
            log.exception("cannot start a request")
            with self._lock:
                self.counters["errors"] += 1
            if job.channel is not None:
                job.channel.put("error", f"cannot start generation: {e}")
            return None
        with self._lock:
            self.counters["prompt_tokens"] += len(job.ids)
            self.counters["healed_prompts"] += bool(healed)
        return run

    def _prefill_slice(self, run: _Run) -> None:
        a = run.pos
        b = min(len(run.ids), a + (PROMPT_SLICE if run.scores_prompt else self.prefill_chunk))
        positions = self.cache.positions(a, b, len(run.ids))
        last = b == len(run.ids)
        logits, snaps = run.prefill(self.model, a, b, [p - a for p in positions], last)
        for p, s in zip(positions, snaps, strict=True):
            run.snapshots[p] = s
        run.pos = b
        with self._lock:
            self.counters["prefill_tokens"] += b - a
        if last:
            self.cache.store(run.ids, run.snapshots)
            run.snapshots = {}
            run.prefilled = time.perf_counter()
            if run.decoder.max_tokens <= 0:  # prefill only (a cache warm-up): nothing to generate
                self._finish(run, StopReason.LENGTH)
                return
            assert logits is not None
            self._accept(run, run.choose(logits))

    def _decode(self, runs: list[_Run]) -> None:
        if len(runs) == 1:
            run = runs[0]
            tok = run.next
            assert tok is not None
            draft = run.drafter.propose() if run.drafter is not None else []
            if draft:
                self._verify(run, tok, draft)
                self._count_step(runs)
                return
            self._accept(run, run.step(self.model, tok))
        else:
            toks = [r.next for r in runs]
            logits = self.model.step_batch([r.state for r in runs], toks)  # type: ignore[arg-type]
            for i, run in enumerate(runs):
                tok = toks[i]
                assert tok is not None
                run.fed.append(tok)
                self._accept(run, run.choose(logits[i]))
        for run in runs:
            self._checkpoint(run, run.state)
        self._count_step(runs)

    def _checkpoint(self, run: _Run, state: State) -> None:
        """Checkpoints along the answer too (`state`: after all of run.fed): a follow-up turn may resume inside it."""
        n = len(run.ids) + len(run.fed)
        if self.cache.enabled and n % self.cache.spacing == 0:
            run.snapshots[n] = state.copy()

    def _verify(self, run: _Run, tok: int, draft: list[int]) -> None:
        k, accepted = run.verify(self.model, tok, draft, lambda t: self._accept(run, t), lambda st: self._checkpoint(run, st))
        with self._lock:
            self.counters["draft_tokens"] += k
            self.counters["draft_accepted"] += accepted

    def _count_step(self, runs: list[_Run]) -> None:
        with self._lock:
            self.counters["decode_steps"] += 1
            if len(runs) > 1:
                self.counters["batched_steps"] += 1
            self.counters["max_batch_seen"] = max(self.counters["max_batch_seen"], len(runs))

    def _accept(self, run: _Run, tok: int) -> None:
        """A token was sampled: the decoder keeps it or ends the request; emit its text."""
        run.next = None
        silent = self._heals(run, tok)
        if silent:  # it only re-creates the healed bytes: not an answer token, not one of max_tokens
            run.decoder.max_tokens += 1
        if run.decoder.accept(tok):
            if run.drafter is not None:
                run.drafter.observe(tok)
            with self._lock:
                self.counters["generated_tokens"] += 1
            run.healing_tokens += silent
            if tok not in run.job.stop_ids and not silent:
                run.emit_text(tok)  # one event per generated token ("" while held back)
        if run.decoder.finished:
            self._finish(run, run.decoder.reason or StopReason.STOP)
        else:
            run.next = tok

    def _heals(self, run: _Run, tok: int) -> bool:
        """Is `tok` all inside the bytes healing still has to re-create?"""
        h = run.healing
        if h is None or not h.rest:
            return False
        b = self.model.require_tokenizer().token_bytes(tok)
        return bool(b) and h.rest.startswith(b)

    def _finish(self, run: _Run, reason: StopReason, error: str | None = None) -> None:
        if run.finish_reason is not None:
            return
        run.decoder.finish(reason)
        reason = run.decoder.reason or reason
        run.finish_reason = _FINISH.get(reason, str(reason))
        if reason is not StopReason.CANCELLED:
            run.emit_text(None, final=True)
        if not run.prefilling:
            seq = np.concatenate([run.ids, np.asarray(run.fed, dtype=np.int64)])
            run.snapshots[len(seq)] = run.state
            self.cache.store(seq, run.snapshots)
            run.snapshots = {}
        tokens = run.decoder.tokens
        now = time.perf_counter()
        prefilled = run.prefilled if run.prefilled is not None else now
        result = Result(
            run.finish_reason,
            len(run.job.ids),
            len(tokens) - run.healing_tokens,
            run.text.text,
            run.resumed,
            tokens,
            run.healed,
            reason=str(reason),
            prompt_ms=(prefilled - run.started) * 1000.0,
            predicted_ms=(now - prefilled) * 1000.0,
            logprobs=run.lp,
        )
        with self._lock:
            key = {"cancelled": "cancelled", "error": "errors"}.get(run.finish_reason, "completed")
            self.counters[key] += 1
        if error is not None:
            run.emit("error", error)
        else:
            run.emit("done", result)
        if run.job.on_done is not None:
            run.job.on_done(result)
