"""One suggestion as the model worker computes it, in the order of the data:

    heal the prompt -> restore its state and feed the rest (statecache) -> decode with the healing
    constraint as a logits hook and the stop rules as the text stop (engine/decoding.py) -> finalize

Runs only on the worker thread (it moves states of the `StateStore`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bitmamba_lsp.engine.decoding import (
    Decoder,
    GenerationConfig,
    LogitsHook,
    StopReason,
    decode,
    make_sampler,
)
from bitmamba_lsp.engine.healing import HealingConstraint, TokenHealer
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.lsp.cache_model import CacheMixture, Level
from bitmamba_lsp.lsp.completion import CursorContext, StopRule, StopRules, Suggestion, finalize
from bitmamba_lsp.lsp.prompt import Prompt
from bitmamba_lsp.lsp.settings import Settings
from bitmamba_lsp.lsp.statecache import StateStore


@dataclass
class CompletionJob:
    uri: str
    prompt: Prompt  # what the model reads
    ctx: CursorContext  # the text around the cursor, for the stop rules
    line_tokens: tuple[int, int] = (0, 0)  # the cursor line's tokens in the document (not cached)
    candidates: list[str] = field(default_factory=list)  # whole-line candidates (candidates.py)
    known_words: set[str] | None = None  # what a half-typed word at the cursor may become (candidates.py)
    cancel: threading.Event = field(default_factory=threading.Event)
    max_tokens: int = 64
    deadline_ms: float = 1500.0
    submitted: float = field(default_factory=time.perf_counter)
    speculative: bool = False


@dataclass
class CompletionResult:
    suggestion: Suggestion | None
    text: str  # the kept generated text before finalize
    reason: StopReason  # why generation stopped
    rule: StopRule | None  # the stop rule that fired, if one did
    tokens: int
    resumed_from: int  # prompt tokens covered by a checkpoint
    fed: int  # prompt tokens fed through the model for this request
    queue_ms: float
    prefill_ms: float
    first_token_ms: float  # from submission to the first generated token
    total_ms: float
    first_token_at: float = 0.0  # time.perf_counter() when the first token was sampled

    @property
    def cancelled(self) -> bool:
        return self.reason is StopReason.CANCELLED

    @property
    def stop(self) -> str:
        """The rule that ended the suggestion, or why generation ended."""
        return str(self.rule or self.reason)


HISTORY = 32  # prompt tokens the cache mixture starts from (it reads the last `order`)
WORD_SUPPORT = 0.5  # a word nothing else knows is kept when the model gives it this probability
_PARTIAL = re.compile(r"[A-Za-z_]\w*$")
_WORD_START = re.compile(r"\w*")


def invents_word(job: CompletionJob, text: str, mixture: CacheMixture, tokens: list[int], tok: Any, skip: str) -> bool:
    """Does the suggestion finish the half-typed word into one that neither the document, the
    workspace nor the language knows, without the model being sure of it?"""
    m = _PARTIAL.search(job.ctx.line_prefix)
    rest = _WORD_START.match(text)
    if m is None or rest is None or not rest.group(0) or job.known_words is None:
        return False
    word = m.group(0) + rest.group(0)
    if word in job.known_words:
        return False
    # the probability of the tokens up to the end of the word
    need = len(skip) + len(rest.group(0))  # the healed token's text comes first
    stream, seen, p = tok.stream_decoder(), "", 1.0
    for prob, t in zip(mixture.chosen, tokens, strict=False):
        p *= prob
        seen += stream.feed(t)
        if len(seen) >= need:
            break
    return p < WORD_SUPPORT


def line_probability(probs: list[float], tokens: list[int], tok: Any, skip: str) -> float:
    """The mixture's probability of the first line of a generated text: the product over its
    tokens up to the first line break after the healed text."""
    p = 1.0
    stream = tok.stream_decoder()
    text = ""
    for prob, t in zip(probs, tokens, strict=False):
        p *= prob
        text += stream.feed(t)
        if "\n" in text[len(skip) :]:
            break
    return p


def candidate_probability(
    model: Model, state: Any, logits: np.ndarray, hooks: Hooks, ids: list[int]
) -> float:
    """The probability of the token sequence `ids` after the prompt, through a fresh set of the
    request's hooks (so on the same scale as the greedy line)."""
    active = hooks.fresh()
    mixture = hooks.mixture
    assert mixture is not None
    rows = [logits]
    if len(ids) > 1:
        rows.extend(model.prefill(state.copy(), ids[:-1], all_logits=True))
    p = 1.0
    for row, t in zip(rows, ids, strict=True):
        for h in active:
            if h.active():
                row = h.apply(row)
        if not np.isfinite(row[t]):
            return 0.0  # the healing constraint forbids it
        for h in active:
            h.accept(t)
        p *= mixture.chosen[-1]
    return p


def best_line(
    model: Model,
    state: Any,
    logits: np.ndarray,
    hooks: Hooks,
    skip: str,
    candidates: list[str],
    greedy: str,
    greedy_p: float,
) -> str:
    """The generated text or a candidate line, whichever has the larger expected gain (its
    probability times its length); a candidate must also reach `min_line_confidence`."""
    tok = model.require_tokenizer()
    first = greedy.split("\n", 1)[0]
    best, best_gain = greedy, greedy_p * len(first)
    floor = hooks.settings.min_line_confidence
    for cand in candidates:
        ids = tok.encode(skip + cand)
        if not ids:
            continue
        p = candidate_probability(model, state, logits, hooks, ids)
        if p >= floor and p * len(cand) > best_gain:
            best, best_gain = cand, p * len(cand)
    return best


def cancelled_result(job: CompletionJob) -> CompletionResult:
    queue_ms = (time.perf_counter() - job.submitted) * 1000
    return CompletionResult(
        suggestion=None,
        text="",
        reason=StopReason.CANCELLED,
        rule=None,
        tokens=0,
        resumed_from=0,
        fed=0,
        queue_ms=queue_ms,
        prefill_ms=0.0,
        first_token_ms=0.0,
        total_ms=0.0,
    )


@dataclass
class Hooks:
    """How one request changes the model's distribution: token healing's constraint and the cache
    mixture. `fresh()` builds a new set with the same starting point (each candidate line is scored
    through its own, on the same scale as the greedy line)."""

    healer: TokenHealer | None
    healed_raw: bytes
    levels: list[Level]
    history: list[int]
    settings: Settings
    scoring: bool = False  # candidates or a half-typed word will be judged: the tokens' probabilities are needed
    mixture: CacheMixture | None = None

    def fresh(self) -> list[LogitsHook]:
        hooks: list[LogitsHook] = []
        if self.healer is not None and self.healed_raw:
            hooks.append(HealingConstraint(self.healer, self.healed_raw))
        s = self.settings
        self.mixture = None
        if self.levels or s.min_confidence or s.min_line_confidence or self.scoring:
            self.mixture = CacheMixture(self.levels, self.history, alpha=s.cache_alpha, min_order=s.cache_min_order)
            hooks.append(self.mixture)
        return hooks


def confidence_cut(mixture: CacheMixture, settings: Settings) -> Callable[[int], bool]:
    """End the suggestion before a token the mixture finds unlikely, or once the whole line so far
    is unlikely (the product of its tokens' probabilities)."""
    tok_min, line_min = settings.min_confidence, settings.min_line_confidence
    running = [1.0]

    def cut(token: int) -> bool:
        p = mixture.chosen[-1] if mixture.chosen else 1.0
        running[0] *= p
        return p < tok_min or running[0] < line_min

    return cut


def suggest(
    model: Model,
    store: StateStore,
    healer: TokenHealer | None,
    settings: Settings,
    job: CompletionJob,
    levels: list[Level] | None = None,
) -> CompletionResult:
    t_start = time.perf_counter()
    if job.cancel.is_set():
        return cancelled_result(job)
    tok = model.require_tokenizer()
    prompt = job.prompt.or_start(model.eos_id if model.eos_id is not None else 0)
    skip, raw = "", b""
    if healer is not None and settings.token_healing:
        prompt, healed = prompt.heal(healer)
        skip, raw = healed.text, healed.raw
    hooks = Hooks(
        healer,
        raw,
        list(levels or []) if settings.cache_model else [],
        prompt.ids[-HISTORY:].tolist(),  # the mixture reads only the last few tokens
        settings,
        scoring=bool(job.candidates) or job.known_words is not None,
    )
    restored = store.feed(
        model, job.uri, prompt, speculative=job.speculative, incremental=settings.incremental_state
    )
    t_prefill = time.perf_counter()
    start_state = restored.state.copy() if job.candidates else None
    cfg = GenerationConfig(
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        min_p=settings.min_p,
        repetition_penalty=1.0,
    )
    rules = StopRules(job.ctx)
    active = hooks.fresh()
    mixture = hooks.mixture
    decoder = Decoder(
        make_sampler(model, cfg),
        max_tokens=job.max_tokens,
        eos=model.eos_id,
        stream=tok.stream_decoder(),
        text_stop=rules,
        skip=skip,
        hooks=active,
        should_stop=job.cancel.is_set,
        deadline=job.submitted + job.deadline_ms / 1000,
        cut=confidence_cut(mixture, settings) if mixture is not None else None,
    )
    first_token_at = 0.0
    for _ in decode(model, restored.state, decoder, restored.logits):
        if not first_token_at:
            first_token_at = time.perf_counter()
    first_token_at = first_token_at or time.perf_counter()
    reason = decoder.reason or StopReason.LENGTH
    text = rules.text
    if mixture is not None and job.known_words is not None and invents_word(job, text, mixture, decoder.tokens, tok, skip):
        text = ""  # healing must not make up a word nothing supports
    if start_state is not None and mixture is not None and reason is not StopReason.CANCELLED:
        greedy_p = line_probability(mixture.chosen, decoder.tokens, tok, skip)
        text = best_line(model, start_state, restored.logits, hooks, skip, job.candidates, text, greedy_p)
    end = time.perf_counter()
    return CompletionResult(
        suggestion=None if reason is StopReason.CANCELLED else finalize(text, job.ctx),
        text=text,
        reason=reason,        rule=rules.reason,
        tokens=len(decoder.tokens),
        resumed_from=restored.resumed,
        fed=restored.fed,
        queue_ms=(t_start - job.submitted) * 1000,
        prefill_ms=(t_prefill - t_start) * 1000,
        first_token_ms=(first_token_at - job.submitted) * 1000,
        total_ms=(end - job.submitted) * 1000,
        first_token_at=first_token_at,
    )
