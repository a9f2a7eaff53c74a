"""The daemon's session: everything between the protocol and the model worker, with no LSP types.

It owns the open documents, the model's lifecycle (loading on the worker, re-tokenizing documents
when the tokenizer changes), request ordering (the newest request for a document wins; older ones
are cancelled), the pending suggestion the user is typing through and the speculative one after it,
and the counters behind `bitmamba/status`. The server (server.py) translates protocol messages into
calls here; tests and benchmarks can drive a Session without a client.

Positions are (line, character) in the negotiated position encoding; the session turns them into
character offsets through the document.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitmamba_lsp import __version__, _core
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.lsp.candidates import WorkspaceLines
from bitmamba_lsp.lsp.completion import CursorContext, finalize
from bitmamba_lsp.lsp.context_chunks import ContextChoice
from bitmamba_lsp.lsp.documents import Change, Position, PositionError, TrackedDocument
from bitmamba_lsp.lsp.jobs import CompletionJob, CompletionResult, job_at, window_job
from bitmamba_lsp.lsp.memory import uri_path
from bitmamba_lsp.lsp.model_slot import ModelSlot
from bitmamba_lsp.lsp.notify import Notify
from bitmamba_lsp.lsp.opening import LARGE_DOCUMENT_CHARS, tokenize_later
from bitmamba_lsp.lsp.pending import Pending, PendingSuggestions
from bitmamba_lsp.lsp.prompt import prompt_at
from bitmamba_lsp.lsp.settings import Settings
from bitmamba_lsp.lsp.stats import Stats
from bitmamba_lsp.lsp.worker import ModelWorker
from bitmamba_lsp.lsp.workspace import ScanLimits, WorkspaceReader

log = logging.getLogger("bitmamba_lsp")

class RequestError(ValueError):
    """A request the session cannot serve as asked (unknown document, bad position): the server
    answers it with InvalidParams."""


@dataclass(frozen=True)
class Completion:
    """A suggestion for a cursor: insert `text` at the cursor, replacing the document up to `end`
    (a position; None: replace nothing)."""

    text: str
    end: Position | None
    item_id: str


class Session:
    def __init__(
        self,
        notify: Notify | None = None,
        *,
        model_override: str | None = None,
        threads_override: int | None = None,
    ) -> None:
        self.notify: Notify = notify or (lambda level, msg, popup: log.info("%s: %s", level, msg))
        self.settings = Settings()
        self.model_override = model_override
        self.threads_override = threads_override
        self.worker = ModelWorker(self.settings)
        self.slot = ModelSlot(self.worker, self.notify)
        self.docs: dict[str, TrackedDocument] = {}
        self.context, self.context_ids = ContextChoice(), {}  # the documents' context chunks
        self.too_big: set[str] = set()
        self.jobs: dict[str, CompletionJob] = {}
        self.request_seq: dict[str, int] = {}
        self.pending = PendingSuggestions()
        self.workspace = WorkspaceReader()
        self.last_result: CompletionResult | None = None
        self.stats = Stats()
        self.started = time.time()

    # ------------------------------------------------------------------ settings and the model
    def configure(self, options: Any) -> list[str]:
        """Apply a settings object (initializationOptions, didChangeConfiguration); returns the
        warnings (also told to the user). A changed model setting reloads the model."""
        new = self.settings.copy()
        warnings = new.update(options)
        if self.model_override is not None:
            new.model = self.model_override
        if self.threads_override is not None:
            new.threads = self.threads_override
        old, self.settings = self.settings, new
        self.pending.clear()  # suggestions made under the old settings
        self.worker.reconfigure(new)
        if self.slot.requested and new.model_key() != old.model_key():
            self.start_model_load()
        if new.context_chunks != old.context_chunks:
            self._refresh_context()
        for w in warnings:
            self.notify("warning", f"bitmamba: {w}", False)
        return warnings

    def start_model_load(self) -> asyncio.Future[Model]:
        return self.slot.load(self.settings, self._retrack)

    def _retrack(self) -> None:
        """The model (and so the tokenizer) changed: track every open document anew, read the
        workspace again."""
        for uri, doc in list(self.docs.items()):
            self._track(uri, doc.text, doc.version)
        self.context.chosen.clear()
        self._refresh_context()
        self._scan_workspace()

    def set_workspace(self, folders: list[Path]) -> None:
        """The workspace folders (from initialize): read in the background for the workspace cache."""
        self.workspace.folders = [f for f in folders if f.is_dir()]
        if self.slot.model is not None:
            self._scan_workspace()

    def _scan_workspace(self) -> None:
        model, s = self.slot.model, self.settings
        tok = model.tokenizer if model is not None and s.cache_model and s.cache_workspace else None
        open_paths = {p for p in (uri_path(u) for u in self.docs) if p is not None}
        self.workspace.start(tok, self.worker, ScanLimits(s.workspace_max_files, max_tokens=s.workspace_max_tokens), open_paths)

    # ------------------------------------------------------------------ documents
    def _track(self, uri: str, text: str, version: int) -> TrackedDocument:
        model = self.slot.model
        tok = model.tokenizer if model is not None and self.slot.clean is not None else None
        if len(text) > self.settings.max_document_chars:
            self.too_big.add(uri)
            tok = None
            self.notify(
                "warning",
                f"bitmamba: {uri} has {len(text)} characters (limit {self.settings.max_document_chars}); "
                "no completions for it",
                False,
            )
        else:
            self.too_big.discard(uri)
        self.pending.drop(uri)
        if tok is not None and len(text) > LARGE_DOCUMENT_CHARS:  # tokenized on a thread (opening.py)
            doc = self.docs[uri] = TrackedDocument(uri, text, version, None, None)
            tokenize_later(doc, tok, self.slot.clean, lambda: self.docs.get(uri), self._tokenized)
            return doc
        doc = self.docs[uri] = TrackedDocument(uri, text, version, tok, self.slot.clean)
        if tok is not None:
            self.worker.doc_opened(uri, doc.ids)
        return doc

    def _tokenized(self, doc: TrackedDocument) -> None:
        self.docs[doc.uri] = doc
        self.worker.doc_opened(doc.uri, doc.ids)

    def open(self, uri: str, text: str, version: int) -> None:
        self._track(uri, text, version)
        self._refresh_context()

    def _refresh_context(self) -> None:
        """Choose the other open files' chunks for each document again (context_chunks.py)."""
        docs = {u: d.text for u, d in self.docs.items() if d.tokenizer is not None}
        for uri, ids in self.context.refresh_ids(docs, self.settings.context_chunks, self.slot.model).items():
            self.context_ids[uri] = ids
            self.pending.drop(uri)  # made from the old prompt
            self.worker.set_context(uri, ids)

    def change(self, uri: str, version: int, changes: Iterable[Change], encoding: str) -> None:
        doc = self.docs.get(uri)
        if doc is None:
            log.warning("didChange for a document that is not open: %s", uri)
            return
        changed = doc.apply_changes(changes, encoding, version)
        if len(doc.text) > self.settings.max_document_chars and uri not in self.too_big:
            self._track(uri, doc.text, doc.version)
            return
        if changed.first_token is not None and doc.tokenizer is not None:
            self.worker.doc_edited(uri, changed.first_token, doc.ids, doc.shared_before(changed.end))
        job = self.jobs.get(uri)
        if job is not None:
            job.cancel.set()  # its prompt is stale

    def close(self, uri: str) -> None:
        doc = self.docs.pop(uri, None)
        path = uri_path(uri)
        if doc is not None and path is not None:
            self.workspace.file_closed(path, doc.text)
        self.pending.drop(uri)
        self.too_big.discard(uri)
        job = self.jobs.pop(uri, None)
        if job is not None:
            job.cancel.set()
        self.worker.doc_closed(uri)
        self.context_ids.pop(uri, None)
        self._refresh_context()

    def document_and_offset(self, uri: str, position: Position, encoding: str) -> tuple[TrackedDocument, int]:
        doc = self.docs.get(uri)
        if doc is None:
            raise RequestError(f"document is not open: {uri}")
        try:
            return doc, doc.offset_at(*position, encoding)
        except PositionError as e:
            raise RequestError(str(e)) from None

    def cursor_context(self, doc: TrackedDocument, offset: int, insert: str = "", replaced: int = 0) -> CursorContext:
        s = self.settings
        return CursorContext.at(
            doc.text,
            offset,
            insert=insert,
            replaced=replaced,
            multiline=s.multiline,
            max_lines=s.max_lines,
            safety=s.suffix_safety,
        )

    # ------------------------------------------------------------------ completion
    async def complete(
        self, uri: str, position: Position, encoding: str, *, fallback: bool = False
    ) -> Completion | None:
        """The suggestion for a cursor, or None. fallback: for a completion-menu item (no
        speculation, not counted as shown)."""
        doc, offset = self.document_and_offset(uri, position, encoding)
        if uri in self.too_big:
            return None
        seq = self.request_seq[uri] = self.request_seq.get(uri, 0) + 1
        old = self.jobs.pop(uri, None)
        if old is not None:
            old.cancel.set()  # latest request wins
        cached = self.pending.lookup(doc, offset)
        if cached:
            self.stats.from_cache += 1
            return self._completion(doc, offset, cached, encoding, fallback)
        model = await self.slot.wait(self.settings.time_budget_ms / 1000)
        if model is None or model.tokenizer is None or doc.uri in self.too_big:
            return None
        if self.settings.debounce_ms:
            await asyncio.sleep(self.settings.debounce_ms / 1000)
            if self.request_seq.get(uri) != seq:
                return None  # a newer request for this document arrived
        doc = self.docs.get(uri)  # type: ignore[assignment]
        if doc is None:
            return None
        offset = min(offset, len(doc.text))
        if doc.tokenizer is None:  # a large document still being tokenized: a window of its text
            job = window_job(uri, doc, offset, model.tokenizer, self.settings)
        else:
            job = job_at(uri, doc, offset, self.settings, self._workspace_lines(), fim=self.worker.fim,
                         context=self.context_ids.get(uri))  # fmt: skip
        self.jobs[uri] = job
        epoch = doc.epoch
        try:
            res: CompletionResult = await asyncio.wrap_future(self.worker.complete(job))
        except asyncio.CancelledError:
            job.cancel.set()
            self.stats.cancelled += 1
            raise
        finally:
            if self.jobs.get(uri) is job:
                del self.jobs[uri]
        self.stats.record(res)
        self.last_result = res  # diagnostics (what was weighed: res.options)
        if res.cancelled or self.request_seq.get(uri) != seq:
            return None
        if res.suggestion is None:
            self.stats.empty += 1
            return None
        text, replaced = res.suggestion.insert_text, res.suggestion.replace_chars
        pending = Pending(anchor=offset, epoch=epoch, segments=[text], item_id=uuid.uuid4().hex[:12])
        self.pending.set(uri, pending)
        if not fallback and self.settings.speculative and doc.tokenizer is not None:
            self._speculate(doc, offset, pending, text, replaced)
        return self._item(doc, offset, text, replaced, encoding, fallback)

    def _workspace_lines(self) -> WorkspaceLines | None:
        return self.workspace.lines_for({p for p in map(uri_path, self.docs) if p is not None})

    def _completion(self, doc: TrackedDocument, offset: int, text: str, encoding: str, fallback: bool) -> Completion:
        """A cached suggestion fitted again to the text after the cursor."""
        s = finalize(text, self.cursor_context(doc, offset))
        if s is None:
            return self._item(doc, offset, text, 0, encoding, fallback)
        return self._item(doc, offset, s.insert_text, s.replace_chars, encoding, fallback)

    def _item(
        self, doc: TrackedDocument, offset: int, text: str, replaced: int, encoding: str, fallback: bool
    ) -> Completion:
        pending = self.pending.get(doc.uri)
        if not fallback:
            self.stats.shown += 1
        end = doc.position_of(offset + replaced, encoding) if replaced else None
        return Completion(text, end, pending.item_id if pending is not None else "")

    def _speculate(self, doc: TrackedDocument, offset: int, pending: Pending, text: str, replaced: int) -> None:
        """Compute, in the background, the suggestion that follows accepting `text`."""
        job = CompletionJob(
            uri=doc.uri,
            prompt=prompt_at(
                doc, offset, insert=text, fim=self.worker.fim, replaced=replaced, context=self.context_ids.get(doc.uri)
            ),
            ctx=self.cursor_context(doc, offset, insert=text, replaced=replaced),
            max_tokens=self.settings.max_tokens,
            deadline_ms=10 * self.settings.time_budget_ms,
        )
        pending.speculating = True
        fut = asyncio.wrap_future(self.worker.speculate(job))

        def done(f: asyncio.Future[CompletionResult]) -> None:
            pending.speculating = False
            if f.cancelled() or f.exception() is not None:
                return
            res = f.result()
            if self.pending.get(doc.uri) is pending and res.suggestion is not None and not res.suggestion.replace_chars:
                pending.segments.append(res.suggestion.insert_text)

        fut.add_done_callback(done)

    def accepted(self) -> None:
        self.stats.accepted += 1

    # ------------------------------------------------------------------ status and shutdown
    def status(self, encoding: str) -> dict[str, Any]:
        m = self.slot.model
        store = self.worker.store
        return {
            "version": __version__,
            "model": None if m is None else m.name,
            "model_path": None if m is None or m.path is None else str(m.path),
            "model_state": self.slot.state,
            "model_error": self.slot.error,
            "arch": None if m is None else m.arch,
            "simd": _core.simd_level(),
            "threads": None if m is None else m.threads,
            "documents": len(self.docs),
            "documents_with_states": 0 if store is None else len(store.docs),
            "checkpoints": 0 if store is None else sum(d.count() for d in store.docs.values()),
            "state_memory_bytes": 0 if store is None else store.nbytes(),
            "state_bytes": None if m is None else m.state_bytes,
            "checkpoint_spacing": None if store is None else store.spacing,
            "memory_budget_bytes": None if store is None else store.budget,
            "evictions": 0 if store is None else store.evictions,
            "background_prefill_tokens": self.worker.background_tokens,
            "fim": self.worker.fim.report() if self.worker.fim is not None else None,  # None: left to right
            "position_encoding": encoding,
            **self.stats.report(),
            "uptime_s": round(time.time() - self.started, 1),
        }

    def shutdown(self, wait: bool = False) -> None:
        """Cancel the running jobs and stop the model worker (wait: until it has stopped, between
        two model calls)."""
        for job in self.jobs.values():
            job.cancel.set()
        self.workspace.stop()
        self.worker.shutdown(wait=wait)
