"""What the session asks of the model worker (a `CompletionJob`) and what it gets back (a
`CompletionResult`)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bitmamba_lsp.engine.decoding import StopReason
from bitmamba_lsp.lsp.candidates import Candidate, partial_word
from bitmamba_lsp.lsp.choice import Option
from bitmamba_lsp.lsp.completion import CursorContext, StopRule, Suggestion
from bitmamba_lsp.lsp.documents import TrackedDocument
from bitmamba_lsp.lsp.prompt import FimLayout, Prompt, prompt_at, token_prompt
from bitmamba_lsp.lsp.settings import Settings


@dataclass
class CompletionJob:
    uri: str
    prompt: Prompt  # what the model reads
    ctx: CursorContext  # the text around the cursor, for the stop rules
    line_tokens: tuple[int, int] = (0, 0)  # the cursor line's tokens in the document (not cached)
    candidates: list[Candidate] = field(default_factory=list)  # whole-line candidates (candidates.py)
    known_words: set[str] | None = None  # what a half-typed word at the cursor may become (candidates.py)
    # The document's text as of the request (an immutable str: safe to read on the worker) and the
    # cursor: the worker retrieves the candidates and the known words from it after the first
    # token, off the path a keystroke waits on.
    document: str | None = None
    offset: int = 0
    workspace_lines: Any = None  # candidates.WorkspaceLines of the workspace, or None
    partial_word: bool = False  # the cursor ends a half-typed identifier
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
    options: list[Option] = field(default_factory=list)  # what was weighed (choice.py): diagnostics, fitting
    approximate: bool = False  # answered from a window: background prefill had not reached the cursor
    drafted: int = 0  # speculative decoding: draft tokens checked
    draft_accepted: int = 0  # and kept
    draft_log: list[tuple[int, int, int]] = field(default_factory=list)  # per verification: drafted, kept, produced
    plain_steps: int = 0  # model steps of one token (with a drafter)

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


def job_at(
    uri: str,
    doc: TrackedDocument,
    offset: int,
    settings: Settings,
    workspace_lines: Any = None,
    fim: FimLayout | None = None,
    context: Any = None,
    **extra: Any,
) -> CompletionJob:
    """The job of a completion request at `offset` in `doc`, as the session builds it (the
    benchmarks build theirs the same way); `fim`: the model's FIM layout (worker.fim)."""
    s = settings
    return CompletionJob(
        uri=uri,
        prompt=prompt_at(doc, offset, fim=fim, context=context),
        ctx=CursorContext.at(
            doc.text, offset, multiline=s.multiline, max_lines=s.max_lines, safety=s.suffix_safety
        ),
        line_tokens=doc.line_tokens(offset),
        document=doc.text,
        offset=offset,
        workspace_lines=workspace_lines,
        partial_word=s.suffix_safety and partial_word(doc.text, offset) is not None,
        max_tokens=s.max_tokens,
        deadline_ms=s.time_budget_ms,
        **extra,
    )


WINDOW_CHARS = 2000  # text before the cursor read while a large document is still being tokenized


def window_job(uri: str, doc: TrackedDocument, offset: int, tokenizer: Any, settings: Settings) -> CompletionJob:
    """The job of a request in a document whose tokens are not ready yet (opening.py): the model
    reads a window of the text before the cursor; nothing of it is kept."""
    s = settings
    start = doc.text.find("\n", offset - WINDOW_CHARS, offset) + 1 if offset > WINDOW_CHARS else 0  # a line start
    ids = tokenizer.encode(doc.text[start:offset])
    return CompletionJob(
        uri=uri,
        prompt=token_prompt(ids),
        ctx=CursorContext.at(doc.text, offset, multiline=s.multiline, max_lines=s.max_lines, safety=s.suffix_safety),
        max_tokens=s.max_tokens,
        deadline_ms=s.time_budget_ms,
    )
