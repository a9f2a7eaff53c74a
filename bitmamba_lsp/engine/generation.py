"""Decoding loops: token ids out (TokenStream) or text out with stop sequences (TextStream).

Sampling itself (penalty, temperature, top-k, min-p, top-p, RNG) runs in C++ (`_core.Sampler`);
decoded tokens go through `Model.core.step_sample`, so logits never cross into Python.
A stop callback is checked before every token: returning True ends generation within one token.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bitmamba_lsp import _core

if TYPE_CHECKING:
    from bitmamba_lsp.engine.model import Model, State

StopCheck = Callable[[], bool]


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

    @property
    def greedy(self) -> bool:
        return self.temperature < 0.05


# The reference CLI's defaults (bitmamba.cpp): FORMATS.md "Sampling defaults of the reference CLI".
REFERENCE_DEFAULTS = GenerationConfig(
    max_tokens=400, temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.15
)
GREEDY = GenerationConfig(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


def make_sampler(model: Model, cfg: GenerationConfig, history: Sequence[int] = ()) -> _core.Sampler:
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


class TokenStream:
    """Iterator of generated token ids. After it ends, `finish_reason` is one of
    'length' (max_tokens), 'eos', 'cancelled' (stop callback) or 'stop' (set by TextStream)."""

    def __init__(
        self,
        model: Model,
        state: State,
        prompt: Sequence[int],
        cfg: GenerationConfig,
        should_stop: StopCheck | None = None,
    ) -> None:
        cfg.validate()
        if not prompt:
            raise ValueError("generation needs at least one prompt token")
        self.model = model
        self.state = state
        self.cfg = cfg
        self.should_stop = should_stop
        self.finish_reason: str | None = None
        self.tokens: list[int] = []
        self._prompt = list(prompt)
        self._sampler = make_sampler(model, cfg, self._prompt)
        self._next: int | None = None
        self._eos = model.eos_id if cfg.stop_at_eos else None

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.finish_reason is not None:
            raise StopIteration
        if len(self.tokens) >= self.cfg.max_tokens:
            return self._finish("length")
        if self.should_stop is not None and self.should_stop():
            return self._finish("cancelled")
        if self._next is None:
            logits = self.model.prefill(self.state, self._prompt)
            tok = int(self._sampler.sample(logits))
        else:
            self._sampler.accept(self._next)
            tok = int(self.model.core.step_sample(self.state, self._next, self._sampler))
        if self._eos is not None and tok == self._eos:
            return self._finish("eos")
        self._next = tok
        self.tokens.append(tok)
        return tok

    def _finish(self, reason: str) -> int:
        self.finish_reason = reason
        raise StopIteration

    def stop(self, reason: str = "stop") -> None:
        if self.finish_reason is None:
            self.finish_reason = reason


def generate_tokens(
    model: Model,
    state: State,
    prompt: Sequence[int],
    cfg: GenerationConfig,
    should_stop: StopCheck | None = None,
) -> TokenStream:
    return TokenStream(model, state, prompt, cfg, should_stop)


class TextStream:
    """Iterator of text chunks with stop sequences. Text that could be the start of a stop
    sequence is held back until it is known not to be one; the stop sequence itself is not emitted."""

    def __init__(
        self,
        model: Model,
        state: State,
        prompt: str | Sequence[int],
        cfg: GenerationConfig,
        should_stop: StopCheck | None = None,
    ) -> None:
        tok = model._tok()
        ids = tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids and model.eos_id is not None:
            ids = [model.eos_id]  # empty prompt: start from the document separator
        self.prompt_tokens = len(ids)
        self.tokens = TokenStream(model, state, ids, cfg, should_stop)
        self._decoder = tok.stream_decoder()
        self._stops = cfg.stop
        self._held = ""
        self.text = ""

    @property
    def finish_reason(self) -> str | None:
        return self.tokens.finish_reason

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens.tokens)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            try:
                tok = next(self.tokens)
            except StopIteration:
                rest = self._held + self._decoder.flush()
                self._held = ""
                if rest and self.tokens.finish_reason != "stop":
                    cut = _find_stop(rest, self._stops)
                    if cut is not None:
                        rest = rest[:cut]
                        self.tokens.finish_reason = "stop"
                    if rest:
                        self.text += rest
                        return rest
                raise
            self._held += self._decoder.feed(tok)
            if not self._held:
                continue
            cut = _find_stop(self._held, self._stops)
            if cut is not None:
                out = self._held[:cut]
                self._held = ""
                self.tokens.stop("stop")
                if out:
                    self.text += out
                    return out
                raise StopIteration
            keep = _partial_stop_len(self._held, self._stops)
            out, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
            if out:
                self.text += out
                return out


def generate_text(
    model: Model,
    state: State,
    prompt: str | Sequence[int],
    cfg: GenerationConfig,
    should_stop: StopCheck | None = None,
) -> TextStream:
    return TextStream(model, state, prompt, cfg, should_stop)


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    best: int | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def _partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop sequence."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
