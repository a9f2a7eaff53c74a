"""One suggestion as the model worker computes it, in the order of the data:

    heal the prompt -> restore its state and feed the rest (statecache) -> decode under the
    request's hooks (hooks.py: healing, the cache mixture; the stop rules as the text stop) ->
    weigh the options (weighing.py, choice.py: the greedy line's prefixes, the runners-up's lines,
    the whole-line candidates) and show the best or nothing -> finalize (completion.py)

Runs only on the worker thread (it moves states of the `StateStore`).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from bitmamba_lsp.engine.decoding import GenerationConfig, StopReason, decode
from bitmamba_lsp.engine.healing import TokenHealer
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.lsp.cache_model import CacheMixture, Level
from bitmamba_lsp.lsp.candidates import request_candidates, request_led, request_words
from bitmamba_lsp.lsp.choice import MISS_COST, WHOLE_LINE_BAR, FirstChoices, Option, agreement, choose
from bitmamba_lsp.lsp.completion import BLOCK_OPENERS, finalize
from bitmamba_lsp.lsp.hooks import Hooks, line_decoder
from bitmamba_lsp.lsp.jobs import CompletionJob, CompletionResult, cancelled_result
from bitmamba_lsp.lsp.settings import Settings
from bitmamba_lsp.lsp.statecache import StateStore
from bitmamba_lsp.lsp.weighing import branch_options, inside_line_text, options_for, shown_text, token_pieces

__all__ = ["CompletionJob", "CompletionResult", "cancelled_result", "invents_word", "suggest"]

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


def suggest(
    model: Model,
    store: StateStore,
    healer: TokenHealer | None,
    settings: Settings,
    job: CompletionJob,
    levels: list[Level] | None = None,
    max_feed: int | None = None,
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
        prompt.text_ids()[-HISTORY:].tolist(),  # the mixture reads only the last few tokens of the text
        settings,
        scoring=bool(job.candidates) or job.known_words is not None or job.partial_word
        or (job.document is not None and settings.line_candidates),
    )
    deadline = job.submitted + job.deadline_ms / 1000
    restored = store.feed(
        model,
        job.uri,
        prompt,
        speculative=job.speculative,
        incremental=settings.incremental_state,
        max_feed=max_feed,
        cancel=lambda: job.cancel.is_set() or time.perf_counter() > deadline,
    )
    if restored is None:
        return cancelled_result(job)
    t_prefill = time.perf_counter()
    line_start = not job.ctx.line_prefix.strip()
    branching = settings.line_branches > 0 and line_start and settings.min_confidence > 0

    cfg = GenerationConfig(
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        min_p=settings.min_p,
        repetition_penalty=1.0,
    )
    active = hooks.fresh()
    mixture = hooks.mixture
    firsts = None
    if branching and mixture is not None:  # runners-up of blanks only are passed over
        special = {*getattr(tok, "special_ids", ()), model.eos_id}  # never a line to write
        firsts = FirstChoices(settings.line_branches + 1, lambda t: b"" if t in special else tok.token_bytes(t), raw)
    decoder, rules = line_decoder(model, cfg, job, skip, [*active, *([firsts] if firsts else [])], mixture, settings)
    first_token_at = 0.0
    drafter = hooks.drafter(model)
    for _ in decode(model, restored.state, decoder, restored.logits, drafter):
        if not first_token_at:
            first_token_at = time.perf_counter()
    first_token_at = first_token_at or time.perf_counter()
    reason = decoder.reason or StopReason.LENGTH
    text = rules.text
    if job.document is not None:  # now, after the first token: what the document offers
        job.candidates = request_candidates(job.document, job.offset, settings, job.workspace_lines)
        job.known_words = request_words(job.document, job.offset, settings, job.workspace_lines)
    # the state after the prompt: its checkpoint (the cursor track keeps one), never a copy on the
    # way to the first token
    leading = line_start and job.document is not None and settings.line_candidates and settings.lead_candidates
    wants_state = (job.candidates and settings.line_candidates) or branching or leading
    start_state = store.state_after(job.uri, prompt.ids) if wants_state and settings.incremental_state else None
    if mixture is not None and job.known_words is not None and invents_word(job, text, mixture, decoder.tokens, tok, skip):
        text = ""  # healing must not make up a word nothing supports
    options: list[Option] = []
    # a suggestion that starts with a line break leaves the cursor's line as it is: at an empty line
    # (it stays blank) or after a line that opens no block, that is not shown, but the other options
    # (runners-up, candidates) are still weighed
    opener = job.ctx.line_prefix.rstrip().endswith(BLOCK_OPENERS)
    leaves_line = settings.min_confidence > 0 and (line_start or not opener) and text.startswith("\n")
    if leaves_line:
        text = ""
    # inside a line (text after the cursor): what fits both sides, when something does
    inside = inside_line_text(job, settings, text) if settings.min_confidence > 0 and reason is not StopReason.CANCELLED else None
    if inside is not None:
        text = inside
    elif mixture is not None and reason is not StopReason.CANCELLED and (text or leaves_line) and not text.startswith("\n"):
        pieces = token_pieces(decoder.tokens, mixture.chosen, tok, skip)
        ended = reason in (StopReason.EOS, StopReason.STOP)
        branches: list[Option] = []
        if firsts is not None and start_state is not None:
            branches = branch_options(model, start_state, restored.logits, hooks, cfg, job, skip, firsts, settings)
        if leading and job.document is not None:  # lines of the document that start like the model's
            written = [text.split("\n", 1)[0], *{o.branch: o.text for o in branches}.values()]
            have = {c.text for c in job.candidates}
            job.candidates = [*job.candidates, *request_led(job.document, job.offset, settings, job.workspace_lines, written, have)]
        options = options_for(model, start_state, restored.logits, hooks, skip, job, pieces, ended) + branches
        typed = len(job.ctx.line_prefix.strip())
        for o in options:
            o.typed = typed
        agreement(options)
        if settings.min_confidence > 0:
            bar = settings.min_confidence
            if line_start and settings.min_confidence_line_start >= 0:
                bar = settings.min_confidence_line_start
            mode = "line_start" if line_start else "mid_line"
            chosen = choose(options, bar, whole_bar=WHOLE_LINE_BAR.get(mode, 1.0), miss_cost=MISS_COST.get(mode, 0.0))
            text = shown_text(chosen, text, pieces, bar)
        elif start_state is not None:  # show everything: the greedy text unless a candidate beats it
            greedy = Option(text.split("\n", 1)[0], None, [lp for _, lp in pieces], True, False)
            best = max(options, key=lambda o: math.exp(sum(o.logps)) * len(o.text), default=greedy)
            text = best.text if best.candidate is not None else text
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
        options=options,
        approximate=restored.approximate,
        drafted=drafter.proposed if drafter is not None else 0,
        draft_accepted=drafter.accepted if drafter is not None else 0,
        draft_log=drafter.log if drafter is not None else [],
        plain_steps=drafter.plain_steps if drafter is not None else 0,
    )
