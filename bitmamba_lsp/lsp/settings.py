"""Daemon settings: defaults, and parsing from LSP initializationOptions / didChangeConfiguration.

Keys may be camelCase (editors) or snake_case, at the top level or under a "bitmamba" section.
Unknown keys are reported back (logged), never fatal; bad values keep the previous setting.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any


@dataclass
class Settings:
    model: str | None = None  # path, folder or Hub repo id; None: the shipped default model
    revision: str | None = None  # Hub revision to pin
    # layer repetition (RYS, BitMamba-2): layers repeatStart..repeatEnd run repeatCount more times
    repeat_start: int = -1  # -1: no repetition
    repeat_end: int = -1
    repeat_count: int = 1
    lora: str | None = None  # a LoRA adapter file (bitmamba.cpp's .lora.bin) for the model; None: none
    threads: int = 0  # 0: one per core
    max_tokens: int = 64  # per completion
    temperature: float = 0.0  # 0: greedy (deterministic suggestions)
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    multiline: bool = True  # multi-line suggestions at empty lines and after block openers
    max_lines: int = 12
    debounce_ms: int = 30  # wait this long for more keystrokes before computing
    time_budget_ms: int = 1500  # generation stops here and returns what it has
    checkpoint_spacing: int = 0  # document checkpoint every N tokens; 0: chosen from the model
    dense_checkpoints: int = 24  # checkpoints after each of the last N prompt tokens
    memory_budget_mb: int = 0  # all documents' checkpoints; 0: 512 states of the model, within 64..1024 MB
    completion_fallback: bool = False  # also answer textDocument/completion (Helix, eglot, Zed)
    prefill_on_open: bool = True  # prefill whole documents in the background when opened
    speculative: bool = True  # precompute the suggestion that follows accepting the current one
    token_healing: bool = True  # regenerate the prompt's last token under a prefix constraint
    cache_model: bool = True  # mix n-gram caches of the document (and workspace) into the model's distribution
    cache_open_files: bool = True  # the other open documents as a cache level
    cache_workspace: bool = True  # the workspace folders' files as a cache level
    cache_order: int = 6  # longest context the caches count
    cache_alpha: float = 2.0  # a cache context seen n times gets weight n / (n + alpha)
    cache_min_order: int = 2  # shorter contexts are not used
    workspace_max_files: int = 20_000  # workspace files looked at for the workspace cache
    workspace_max_tokens: int = 1_000_000  # tokens of workspace files kept in it
    suffix_safety: bool = True  # inside a finished line only offer what leads back to it; cut loops
    line_branches: int = 0  # at an empty line, also write the line from the next most likely first tokens
    line_candidates: bool = True  # also score whole lines of the document that could follow, show the best
    lead_candidates: bool = True  # at an empty line, also lines that start like the model's own lines
    # show a suggestion only when its calibrated probability of being right reaches this (choice.py;
    # chosen on the tune split by benchmarks/fit_choice.py); 0: show everything
    min_confidence: float = 0.1
    # the same at an empty line (the cursor at the line's indentation), where suggestions are less
    # often right and calibration carries over less well (chosen the same way); -1: minConfidence
    min_confidence_line_start: float = 0.65
    min_line_confidence: float = 0.001  # stop generating once the line's probability falls below this
    # fill-in-the-middle (lsp/prompt.py), for models that declare it in model.json: the model reads
    # the text after the cursor too; the suffix window is N lines, at most T tokens (0: chosen from
    # the model's measured prefill rate, so a line change re-feeds it within ~12 ms). Off by default:
    # on the tune split it made the shipped model's suggestions worse (README, "The default model")
    fim: bool = False
    fim_suffix_lines: int = 8
    fim_suffix_tokens: int = 0
    # snippets of other open files before the document (lsp/context_chunks.py): how many (0: none)
    context_chunks: int = 0
    # speculative decoding (engine/drafts.py): guess up to N tokens from the caches and the prompt and
    # check them in one batched step; the suggestion is the same, sooner on large models (0: off)
    draft_tokens: int = 3  # a 4-token verification step: the best measured (benchmarks/results/drafts.md)
    draft_fixed: bool = False  # always draft draftTokens where the caches offer them, no adaptation (benchmarks)
    incremental_state: bool = True  # False: re-prefill the whole prefix per request (benchmarks, debugging)
    max_document_chars: int = 20_000_000  # larger documents are not tracked (completions disabled)

    def update(self, options: Any) -> list[str]:
        """Apply a settings object; returns warnings (unknown keys, bad values)."""
        warnings: list[str] = []
        if not isinstance(options, dict):
            if options is not None:
                warnings.append(f"settings must be an object, got {type(options).__name__}")
            return warnings
        if isinstance(options.get("bitmamba"), dict):
            options = {**{k: v for k, v in options.items() if k != "bitmamba"}, **options["bitmamba"]}
        fields = {f.name: f for f in dataclasses.fields(self)}
        for key, value in options.items():
            name = _snake(key)
            if name not in fields:
                warnings.append(f"unknown setting '{key}'")
                continue
            try:
                setattr(self, name, _coerce(name, value, fields[name].type))
            except (TypeError, ValueError) as e:
                warnings.append(f"setting '{key}': {e}")
        return warnings

    def repeat(self) -> tuple[int, int, int] | None:
        """The layer repetition for engine.load (None: none)."""
        if self.repeat_start < 0 or self.repeat_end < 0:
            return None
        return (self.repeat_start, self.repeat_end, self.repeat_count)

    def model_key(self) -> tuple[object, ...]:
        """What the loaded model depends on: a change reloads it."""
        return (self.model, self.revision, self.repeat(), self.lora)

    def copy(self) -> Settings:
        return dataclasses.replace(self)


_LIMITS: dict[str, tuple[float, float]] = {
    "threads": (0, 256),
    "max_tokens": (1, 4096),
    "temperature": (0, 5),
    "top_k": (0, 100000),
    "top_p": (0.01, 1),
    "min_p": (0, 0.99),
    "max_lines": (1, 1000),
    "debounce_ms": (0, 10000),
    "time_budget_ms": (10, 600000),
    "checkpoint_spacing": (0, 1 << 20),
    "dense_checkpoints": (1, 4096),
    "memory_budget_mb": (0, 1 << 20),
    "max_document_chars": (1000, 1 << 31),
    "cache_order": (1, 16),
    "cache_alpha": (0.001, 1000),
    "cache_min_order": (1, 16),
    "min_confidence": (0, 1),
    "min_confidence_line_start": (-1, 1),
    "workspace_max_files": (0, 10_000_000),
    "line_branches": (0, 8),
    "workspace_max_tokens": (0, 100_000_000),
    "min_line_confidence": (0, 1),
    "fim_suffix_lines": (0, 1000),
    "repeat_start": (-1, 1023),
    "repeat_end": (-1, 1023),
    "repeat_count": (0, 64),
    "fim_suffix_tokens": (0, 100_000),
    "context_chunks": (0, 8),
    "draft_tokens": (0, 32),
}


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def _coerce(name: str, value: Any, typ: Any) -> Any:
    t = str(typ)
    if "bool" in t:
        if not isinstance(value, bool):
            raise TypeError(f"expected true/false, got {value!r}")
        return value
    if t.startswith("str"):
        if value is None and "None" in t:
            return None
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value or None if "None" in t else value
    if "int" in t or "float" in t:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        lo, hi = _LIMITS.get(name, (float("-inf"), float("inf")))
        if not lo <= value <= hi:
            raise ValueError(f"{value} is outside {lo:g}..{hi:g}")
        return int(value) if "int" in t else float(value)
    return value
