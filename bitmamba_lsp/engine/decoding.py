"""The engine's one decode loop.

Decoding one sequence has two halves:

- a `Decoder` holds everything that happens to that sequence's tokens and never runs the model:
  the logits hooks (a constraint such as token healing's, later a distribution mixed in), sampling
  (the C++ `_core.Sampler`), the end conditions (EOS, stop ids, `max_tokens`, a deadline, a cancel
  check) and the text, decoded incrementally and passed through a `TextStop` (stop sequences with
  hold-back, or the daemon's stop rules);
- a driver runs the model. `decode()` drives one sequence: with no hook active it lets the core step
  and sample in one call (`step_sample`: the logits never cross into Python). The HTTP worker drives
  many decoders together with batched steps and gives each its row of logits.

`TokenStream` (token ids) and `TextStream` (text chunks) are the iterators the CLI and the Python API
use; the daemon's worker, the HTTP worker and `bitmamba eval` use `Decoder` (and `decode`) directly.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from bitmamba_lsp import _core
from bitmamba_lsp.engine.drafts import Drafter, DraftSettings

StopCheck = Callable[[], bool]


class StopReason(StrEnum):
    """Why decoding ended (a str: compares equal to its value)."""

    LENGTH = "length"  # max_tokens generated
    EOS = "eos"  # the model's end-of-text token
    STOP = "stop"  # a stop sequence, a stop id, or the TextStop said so
    CANCELLED = "cancelled"  # the cancel check (a newer request, a disconnected client)
    DEADLINE = "time_budget"  # the wall-clock budget ran out
    CONFIDENCE = "confidence"  # the cut said the token is not likely enough (it is not kept)
    ERROR = "error"  # the driver failed (HTTP worker)


class LogitsHook(Protocol):
    """Something that changes the next-token distribution (a constraint, a mixed-in model)."""

    def active(self) -> bool:
        """False: this hook leaves the logits alone (the core may then sample by itself)."""
        ...

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Logits to sample from (a new array, or `logits` itself)."""
        ...

    def accept(self, token: int) -> None:
        """The token that was sampled (a hook may change its state)."""
        ...


class TextStop(Protocol):
    """Fed the generated text chunk by chunk; decides when to stop and what text is kept."""

    text: str  # the kept text so far

    def feed(self, chunk: str) -> bool:
        """Add generated text; True when generation should stop."""
        ...

    def finish(self) -> None:
        """Generation ended for another reason (length, EOS, deadline): settle any held text."""
        ...


@dataclass(frozen=True)
class GenerationConfig:
    max_tokens: int = 128
    temperature: float = 0.8  # below 0.05: greedy
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    penalty_window: int = 256
    protected_ids: tuple[int, ...] | None = None  # None: the model's default (EOS, newlines, '.')
    stop: tuple[str, ...] = ()
    stop_at_eos: bool = True
    seed: int | None = None
    draft: int = 3  # speculative decoding: draft tokens per verification step at most (0: off)

    def replace(self, **changes: object) -> GenerationConfig:
        changes = {k: v for k, v in changes.items() if v is not None}
        if "stop" in changes:
            stop = changes["stop"]
            changes["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)  # type: ignore[arg-type]
        if "protected_ids" in changes:
            changes["protected_ids"] = tuple(changes["protected_ids"])  # type: ignore[arg-type]
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown generation options: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def validate(self) -> None:
        if self.max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")
        if not 0 <= self.draft <= 32:
            raise ValueError("draft must be between 0 (off) and 32")

    @property
    def greedy(self) -> bool:
        return self.temperature < 0.05


# The reference CLI's defaults (bitmamba.cpp): docs/formats.md, "Sampling defaults of the reference CLI".
REFERENCE_DEFAULTS = GenerationConfig(
    max_tokens=400, temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.15
)
GREEDY = GenerationConfig(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


class DecodingModel(Protocol):
    """What decoding needs from a model (`engine.model.Model` is one)."""

    core: Any

    @property
    def vocab_size(self) -> int: ...
    @property
    def eos_id(self) -> int | None: ...
    def default_protected_ids(self) -> list[int]: ...
    def step(self, state: Any, token: int) -> np.ndarray: ...
    def prefill(self, state: Any, ids: Sequence[int] | np.ndarray) -> np.ndarray: ...
    def require_tokenizer(self) -> Any: ...


def make_sampler(model: DecodingModel, cfg: GenerationConfig, history: Sequence[int] = ()) -> _core.Sampler:
    protected = list(cfg.protected_ids) if cfg.protected_ids is not None else model.default_protected_ids()
    seed = cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(8), "little")
    sampler = _core.Sampler(
        model.vocab_size,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        min_p=cfg.min_p,
        repetition_penalty=cfg.repetition_penalty,
        penalty_window=cfg.penalty_window,
        protected_ids=protected,
        seed=seed & 0xFFFFFFFFFFFFFFFF,
    )
    if cfg.repetition_penalty != 1.0 and cfg.penalty_window > 0:
        for t in history[-cfg.penalty_window :]:
            sampler.accept(int(t))
    return sampler


# ---------------------------------------------------------------------------------------- text
class StopMatcher:
    """A `TextStop` for stop sequences. Text that could be the start of a stop sequence is held back
    until it is known not to be one; the stop sequence and what follows it are never released.
    `text` is everything released so far; `take()` returns what was released since the last call."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = tuple(stops)
        self.text = ""
        self.stopped = False
        self._held = ""
        self._taken = 0

    def feed(self, chunk: str) -> bool:
        if self.stopped:
            return True
        held = self._held + chunk
        if not held:
            return False
        cut = find_stop(held, self.stops)
        if cut is not None:
            # a longer stop sequence that starts before `cut` may still complete ("a\na" and "\n"
            # over "a\n" + "a"): wait for it, releasing only what precedes its start
            early = next((j for j in range(cut) if self._could_start(held[j:])), None)
            if early is None:
                self.text += held[:cut]
                self._held = ""
                self.stopped = True
                return True
            self.text += held[:early]
            self._held = held[early:]
            return False
        keep = partial_stop_len(held, self.stops)
        self.text += held[: len(held) - keep]
        self._held = held[len(held) - keep :]
        return False

    def _could_start(self, tail: str) -> bool:
        """Is `tail` a proper prefix of some stop sequence (it may still become that one)?"""
        return any(len(s) > len(tail) and s.startswith(tail) for s in self.stops)

    def finish(self) -> None:
        """Release the held text up to the earliest whole stop sequence in it, if any (a longer one
        that started earlier did not complete)."""
        if not self.stopped:
            cut = find_stop(self._held, self.stops)
            self.text += self._held if cut is None else self._held[:cut]
            self.stopped = cut is not None
        self._held = ""

    def take(self) -> str:
        out = self.text[self._taken :]
        self._taken = len(self.text)
        return out


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop sequence in text, or None."""
    best: int | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop sequence."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class SkipPrefix:
    """Removes a known text from the front of a stream of chunks (the text the first generated tokens
    are constrained to reproduce: token healing's dropped token)."""

    def __init__(self, text: str) -> None:
        self._left = text

    def feed(self, chunk: str) -> str:
        if not self._left or not chunk:
            return chunk
        n = min(len(self._left), len(chunk))
        self._left = self._left[n:]
        return chunk[n:]


# ---------------------------------------------------------------------------------------- decoder
class Decoder:
    """One sequence's decoding state. The driver calls `choose(logits)` for the next token (or lets
    the core sample when `hooked` is False), then `accept(token)`, until `reason` is set.

    tokens: the generated tokens kept (EOS is not kept); text_stop.text: their text (None without a
    stream decoder, i.e. a model without a tokenizer)."""

    def __init__(
        self,
        sampler: _core.Sampler,
        *,
        max_tokens: int,
        eos: int | None = None,
        stop_ids: frozenset[int] | set[int] = frozenset(),
        stream: Any = None,  # a tokenizer's StreamDecoder: the text of the tokens
        text_stop: TextStop | None = None,
        skip: str = "",
        hooks: Sequence[LogitsHook] = (),
        should_stop: StopCheck | None = None,
        deadline: float | None = None,  # time.perf_counter() value
        penalize: bool = False,  # feed accepted tokens to the sampler's repetition window
        cut: Callable[[int], bool] | None = None,  # True: end before this token (after the hooks saw it)
    ) -> None:
        self.sampler = sampler
        self.max_tokens = max_tokens
        self.eos = eos
        self.stop_ids = stop_ids
        self.stream = stream
        self.text_stop: TextStop | None = text_stop if text_stop is not None else (
            StopMatcher() if stream is not None else None
        )
        self.hooks = tuple(hooks)
        self.should_stop = should_stop
        self.deadline = deadline
        self.penalize = penalize
        self.cut = cut
        self.tokens: list[int] = []
        self.reason: StopReason | None = None
        self._skip = SkipPrefix(skip)

    @property
    def finished(self) -> bool:
        return self.reason is not None

    @property
    def hooked(self) -> bool:
        """A hook wants to see the next logits (the core must not sample by itself)."""
        return any(h.active() for h in self.hooks)

    @property
    def text(self) -> str:
        return self.text_stop.text if self.text_stop is not None else ""

    def choose(self, logits: np.ndarray) -> int:
        """The next token from the logits after the last fed token (hooks applied)."""
        for h in self.hooks:
            if h.active():
                logits = h.apply(logits)
        return int(self.sampler.sample(logits))

    def accept(self, token: int) -> bool:
        """Record a sampled token; True when it is kept as output. Sets `reason` when decoding is over."""
        for h in self.hooks:
            h.accept(token)
        if self.reason is not None:
            return False
        if self.should_stop is not None and self.should_stop():
            self.finish(StopReason.CANCELLED)
            return False
        if self.eos is not None and token == self.eos:
            self.finish(StopReason.EOS)
            return False
        if self.cut is not None and self.cut(token):
            self.finish(StopReason.CONFIDENCE)
            return False
        self.tokens.append(token)
        if token in self.stop_ids:
            self.finish(StopReason.STOP)
            return True
        text_stop = self.text_stop if self.stream is not None else None
        if text_stop is not None and text_stop.feed(self._skip.feed(self.stream.feed(token))):
            self.reason = StopReason.STOP  # the text decided: nothing more to flush
            return True
        if len(self.tokens) >= self.max_tokens:
            self.finish(StopReason.LENGTH)
        elif self.deadline is not None and time.perf_counter() > self.deadline:
            self.finish(StopReason.DEADLINE)
        elif self.penalize:
            self.sampler.accept(token)
        return True

    def finish(self, reason: StopReason) -> None:
        """End decoding (the driver may call this: cancellation, errors). Except when cancelled, the
        bytes still pending in the stream decoder are decoded and the text stop settles its text."""
        if self.reason is not None:
            return
        self.reason = reason
        if reason is StopReason.CANCELLED or self.stream is None or self.text_stop is None:
            return
        tail = self._skip.feed(self.stream.flush())
        if tail and self.text_stop.feed(tail) and reason is not StopReason.ERROR:
            self.reason = StopReason.STOP
        self.text_stop.finish()


def decode(
    model: DecodingModel, state: Any, decoder: Decoder, logits: np.ndarray, drafter: Drafter | None = None
) -> Iterator[int]:
    """Drive one sequence: the first token from `logits` (after the prompt), then one model step per
    token until the decoder finishes. Yields the kept tokens. The state ends after every kept token
    but the last (which was sampled, not fed).

    With a `drafter` (engine/drafts.py), a step may feed the last token and a draft of the next few
    in one batched pass (`verify`): the decoder chooses from each position's logits in turn, exactly
    as it would have one step at a time, and the draft is kept while it agrees. The tokens, the
    state and the sampler's random stream are then those of plain decoding."""
    token = decoder.choose(logits)
    while True:
        if decoder.accept(token):
            if drafter is not None:
                drafter.observe(token)
            yield token
        if decoder.finished:
            return
        draft = drafter.propose() if drafter is not None else []
        if draft:
            chosen = yield from verify(model, state, decoder, token, draft, drafter)
            if chosen is None:
                return
            token = chosen
            continue
        t0 = time.perf_counter()
        if decoder.hooked:
            logits = model.step(state, token)
            t1 = time.perf_counter()
            token = decoder.choose(logits)
        else:
            token = int(model.core.step_sample(state, token, decoder.sampler))
            t1 = time.perf_counter()
        if drafter is not None:
            drafter.plain_step(t1 - t0)


def verify(
    model: DecodingModel, state: Any, decoder: Decoder, token: int, draft: list[int], drafter: Drafter | None = None
) -> Iterator[int]:
    """Feed `token` and `draft` in one batched step and let the decoder choose at each position: every
    chosen token that equals the draft's next is kept (yielded), the first that differs is returned
    (to be accepted by the caller, like a sampled token); None when the decoder finished on a draft
    token. The state is rolled back to just after the last token whose successor was chosen."""
    ids = np.asarray([token, *draft], dtype=np.int32)
    k = len(draft)
    pool = drafter.states(model, k) if drafter is not None else None
    t0 = time.perf_counter()
    all_logits, snaps = model.core.prefill(state, ids, True, True, list(range(1, k + 1)), pool)
    accepted, produced = 0, 0
    spent = time.perf_counter() - t0  # the batched model call (a plain step's choices are not timed either)
    try:
        for i in range(k + 1):
            chosen = decoder.choose(all_logits[i])
            produced += 1
            if i == k or chosen != draft[i]:
                if i < k:
                    state.copy_from(snaps[i])  # after ids[: i + 1]: `chosen` is sampled, not fed
                return chosen
            accepted += 1
            if decoder.accept(chosen):
                if drafter is not None:
                    drafter.observe(chosen)
                yield chosen
            if decoder.finished:
                state.copy_from(snaps[i])
                return None
        raise AssertionError("unreachable")
    finally:
        if drafter is not None:
            drafter.verified(k, accepted, spent, produced)


# ---------------------------------------------------------------------------------------- streams
class TokenStream:
    """Iterator of generated token ids from a prompt. After it ends, `finish_reason` is a StopReason:
    LENGTH, EOS, CANCELLED (the stop callback) or STOP (a stop sequence, with text)."""

    def __init__(
        self,
        model: DecodingModel,
        state: Any,
        prompt: Sequence[int],
        cfg: GenerationConfig,
        should_stop: StopCheck | None = None,
        *,
        text: bool = False,
    ) -> None:
        cfg.validate()
        if not len(prompt):
            raise ValueError("generation needs at least one prompt token")
        self.model = model
        self.state = state
        self.cfg = cfg
        ids = list(prompt)
        self.decoder = Decoder(
            make_sampler(model, cfg, ids),
            max_tokens=cfg.max_tokens,
            eos=model.eos_id if cfg.stop_at_eos else None,
            stream=model.require_tokenizer().stream_decoder() if text else None,
            text_stop=StopMatcher(cfg.stop) if text else None,
            should_stop=should_stop,
            penalize=cfg.repetition_penalty != 1.0,
        )
        self._prompt = ids
        self._it: Iterator[int] | None = None
        self.drafter = (
            Drafter(ids, vocab=model.vocab_size, settings=DraftSettings(max_draft=cfg.draft)) if cfg.draft > 0 else None
        )

    @property
    def tokens(self) -> list[int]:
        return self.decoder.tokens

    @property
    def finish_reason(self) -> StopReason | None:
        return self.decoder.reason

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self._it is None:
            if self.cfg.max_tokens == 0:
                self.decoder.finish(StopReason.LENGTH)
            elif self.decoder.should_stop is not None and self.decoder.should_stop():
                self.decoder.finish(StopReason.CANCELLED)
            if self.decoder.finished:
                raise StopIteration
            logits = self.model.prefill(self.state, self._prompt)
            self._it = decode(self.model, self.state, self.decoder, logits, self.drafter)
        return next(self._it)


def generate_tokens(
    model: DecodingModel,
    state: Any,
    prompt: Sequence[int],
    cfg: GenerationConfig,
    should_stop: StopCheck | None = None,
) -> TokenStream:
    return TokenStream(model, state, prompt, cfg, should_stop)


class TextStream:
    """Iterator of text chunks with stop sequences (see StopMatcher); the stop sequence itself is not
    emitted."""

    def __init__(
        self,
        model: DecodingModel,
        state: Any,
        prompt: str | Sequence[int],
        cfg: GenerationConfig,
        should_stop: StopCheck | None = None,
    ) -> None:
        tok = model.require_tokenizer()
        ids = tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids and model.eos_id is not None:
            ids = [model.eos_id]  # empty prompt: start from the document separator
        self.prompt_tokens = len(ids)
        self.tokens = TokenStream(model, state, ids, cfg, should_stop, text=True)
        self._matcher = self.tokens.decoder.text_stop
        assert isinstance(self._matcher, StopMatcher)

    @property
    def finish_reason(self) -> StopReason | None:
        return self.tokens.finish_reason

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens.tokens)

    @property
    def text(self) -> str:
        return self._matcher.text

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        for _ in self.tokens:
            out = self._matcher.take()
            if out:
                return out
        out = self._matcher.take()
        if out:
            return out
        raise StopIteration


def generate_text(
    model: DecodingModel,
    state: Any,
    prompt: str | Sequence[int],
    cfg: GenerationConfig,
    should_stop: StopCheck | None = None,
) -> TextStream:
    return TextStream(model, state, prompt, cfg, should_stop)
