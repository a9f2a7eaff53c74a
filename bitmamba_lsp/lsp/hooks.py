"""How one request changes the model's distribution, and the decoder that generates under it:
token healing's constraint and the cache mixture as logits hooks, the stop rules as the text stop,
the generation floor (`min_line_confidence`) as the cut; and the drafter that guesses ahead from the
same caches (speculative decoding: the suggestion is unchanged)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bitmamba_lsp.engine.decoding import Decoder, GenerationConfig, LogitsHook, make_sampler
from bitmamba_lsp.engine.drafts import Drafter, DraftSettings
from bitmamba_lsp.engine.healing import HealingConstraint, TokenHealer
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.lsp.cache_model import CacheMixture, Level
from bitmamba_lsp.lsp.completion import StopRules
from bitmamba_lsp.lsp.jobs import CompletionJob
from bitmamba_lsp.lsp.settings import Settings


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
        if self.levels or s.min_confidence or self.scoring:
            self.mixture = CacheMixture(self.levels, self.history, alpha=s.cache_alpha, min_order=s.cache_min_order)
            hooks.append(self.mixture)
        return hooks

    def drafter(self, model: Model) -> Drafter | None:
        """Speculative decoding's drafter for this request (setting `draftTokens`): the same cache
        levels the mixture reads, and the prompt's last tokens and the suggestion so far."""
        s = self.settings
        if s.draft_tokens <= 0:
            return None
        indexes = [(lv.index, lv.exclude) for lv in self.levels]
        ds = DraftSettings(
            max_draft=s.draft_tokens,
            order=s.cache_order,
            min_order=max(2, s.cache_min_order),
            adaptive=not s.draft_fixed,
        )
        return Drafter(self.history, indexes, vocab=model.vocab_size, settings=ds)


def confidence_cut(mixture: CacheMixture, settings: Settings) -> Callable[[int], bool]:
    """Stop generating once the product of the tokens' probabilities falls below
    `min_line_confidence` (nothing past that point could be shown; only while choosing, with
    minConfidence above 0)."""
    floor = settings.min_line_confidence
    running = [1.0]

    def cut(token: int) -> bool:
        running[0] *= mixture.chosen[-1] if mixture.chosen else 1.0
        return running[0] < floor

    return cut


def line_decoder(
    model: Model,
    cfg: GenerationConfig,
    job: CompletionJob,
    skip: str,
    hooks: list[LogitsHook],
    mixture: CacheMixture | None,
    settings: Settings,
) -> tuple[Decoder, StopRules]:
    """The decoder of one suggestion: the request's hooks, the stop rules as its text stop."""
    rules = StopRules(job.ctx)
    decoder = Decoder(
        make_sampler(model, cfg),
        max_tokens=job.max_tokens,
        eos=model.eos_id,
        stop_ids=model.fim.sentinel_ids if model.fim is not None else frozenset(),  # a sentinel ends it too
        stream=model.require_tokenizer().stream_decoder(),
        text_stop=rules,
        skip=skip,
        hooks=hooks,
        should_stop=job.cancel.is_set,
        deadline=job.submitted + job.deadline_ms / 1000,
        cut=confidence_cut(mixture, settings) if mixture is not None and settings.min_confidence > 0 else None,
    )
    return decoder, rules
