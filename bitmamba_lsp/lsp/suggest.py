"""One suggestion as the model worker computes it, in the order of the data:

    heal the prompt -> restore its state and feed the rest (statecache) -> decode with the healing
    constraint as a logits hook and the stop rules as the text stop (engine/decoding.py) -> finalize

Runs only on the worker thread (it moves states of the `StateStore`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

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
from bitmamba_lsp.lsp.cache_model import CacheMixture, DocumentCache, Level, NGramIndex
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


def mixture_for(cache: DocumentCache, job: CompletionJob, prompt: Prompt, settings: Settings) -> CacheMixture:
    """The cache mixture of one request: this document's cache without its cursor line."""
    a, b = job.line_tokens
    exclude = NGramIndex(cache.index.order, cache.index.base - 1)
    if b > a:
        exclude.update(cache.ids.tolist(), a, b + cache.index.order, +1, touching=(a, b))
    levels = [Level("file", cache.index, exclude)]
    return CacheMixture(levels, prompt.ids.tolist(), alpha=settings.cache_alpha, min_order=settings.cache_min_order)


def suggest(
    model: Model,
    store: StateStore,
    healer: TokenHealer | None,
    settings: Settings,
    job: CompletionJob,
    cache: DocumentCache | None = None,
) -> CompletionResult:
    t_start = time.perf_counter()
    if job.cancel.is_set():
        return cancelled_result(job)
    tok = model.require_tokenizer()
    prompt = job.prompt.or_start(model.eos_id if model.eos_id is not None else 0)
    hooks: list[LogitsHook] = []
    skip = ""
    if healer is not None and settings.token_healing:
        prompt, healed = prompt.heal(healer)
        if healed.raw:
            hooks.append(HealingConstraint(healer, healed.raw))
            skip = healed.text
    if cache is not None and settings.cache_model:
        hooks.append(mixture_for(cache, job, prompt, settings))
    restored = store.feed(
        model, job.uri, prompt, speculative=job.speculative, incremental=settings.incremental_state
    )
    t_prefill = time.perf_counter()
    cfg = GenerationConfig(
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        min_p=settings.min_p,
        repetition_penalty=1.0,
    )
    rules = StopRules(job.ctx)
    decoder = Decoder(
        make_sampler(model, cfg),
        max_tokens=job.max_tokens,
        eos=model.eos_id,
        stream=tok.stream_decoder(),
        text_stop=rules,
        skip=skip,
        hooks=hooks,
        should_stop=job.cancel.is_set,
        deadline=job.submitted + job.deadline_ms / 1000,
    )
    first_token_at = 0.0
    for _ in decode(model, restored.state, decoder, restored.logits):
        if not first_token_at:
            first_token_at = time.perf_counter()
    end = time.perf_counter()
    first_token_at = first_token_at or end
    reason = decoder.reason or StopReason.LENGTH
    return CompletionResult(
        suggestion=None if reason is StopReason.CANCELLED else finalize(rules.text, job.ctx),
        text=rules.text,
        reason=reason,
        rule=rules.reason,
        tokens=len(decoder.tokens),
        resumed_from=restored.resumed,
        fed=restored.fed,
        queue_ms=(t_start - job.submitted) * 1000,
        prefill_ms=(t_prefill - t_start) * 1000,
        first_token_ms=(first_token_at - job.submitted) * 1000,
        total_ms=(end - job.submitted) * 1000,
        first_token_at=first_token_at,
    )
