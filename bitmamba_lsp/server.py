"""The LSP server: pygls handlers that translate between the protocol and the daemon's pieces.

- documents.py keeps each open document (text, tokens, what an edit changed);
- worker.py runs the model and keeps the per-document states (never on pygls' threads);
- completion.py decides what a suggestion may contain.

Handlers stay thin. Text sync is handled here rather than by pygls' workspace (which rebuilds
the whole text on every keystroke): the protocol class below keeps documents out of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method

from bitmamba_lsp import __version__, _core
from bitmamba_lsp.completion import CursorContext, finalize
from bitmamba_lsp.documents import PositionError, TrackedDocument, clean_start_table
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.settings import Settings
from bitmamba_lsp.worker import CompletionJob, CompletionResult, ModelWorker

log = logging.getLogger("bitmamba_lsp")

ACCEPT_COMMAND = "bitmamba.accept"
STATUS_COMMAND = "bitmamba.status"
STATUS_REQUEST = "bitmamba/status"
CONTEXT_CHARS = 4000  # text before the cursor looked at by the stop rules
NEXT_LINES = 5


class _Ignored:
    """A message already answered while it was being parsed (handle_message skips it)."""

    jsonrpc = "ignored"


class BitmambaProtocol(LanguageServerProtocol):
    """Documents are tracked by the server itself (incrementally), not by pygls' workspace."""

    def structure_message(self, data: dict[str, Any]) -> Any:
        """pygls drops a request whose params do not parse without answering it; answer it with
        InvalidParams so the client is not left waiting."""
        try:
            return super().structure_message(data)
        except Exception:
            msg_id = data.get("id") if isinstance(data, dict) else None
            if isinstance(msg_id, int | str) and "method" in data and "jsonrpc" in data:
                method = data.get("method")
                self._send_response(
                    msg_id, error=JsonRpcInvalidParams(f"invalid params for {method!r}").to_response_error()
                )
                return _Ignored()
            raise

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):  # type: ignore[override]
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):  # type: ignore[override]
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):  # type: ignore[override]
        if (handler := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield handler, (params,), None


@dataclass
class Pending:
    """A suggestion that stays valid while the user types through it (and the one precomputed
    for after its acceptance): segments[i] ends at sum(len(segments[:i+1])) chars past `anchor`."""

    anchor: int
    epoch: int
    segments: list[str]
    item_id: str
    speculating: bool = False


@dataclass
class Stats:
    shown: int = 0
    accepted: int = 0
    from_cache: int = 0
    cancelled: int = 0
    empty: int = 0
    first_token_ms: deque[float] = field(default_factory=lambda: deque(maxlen=500))
    total_ms: deque[float] = field(default_factory=lambda: deque(maxlen=500))
    last: dict[str, Any] = field(default_factory=dict)

    def percentiles(self, values: deque[float]) -> dict[str, float] | None:
        if not values:
            return None
        arr = np.asarray(values)
        return {f"p{q}": round(float(np.percentile(arr, q)), 2) for q in (50, 90, 99)}


class BitmambaServer(LanguageServer):
    def __init__(self, model_override: str | None = None, threads_override: int | None = None) -> None:
        super().__init__(
            "bitmamba-lsp",
            __version__,
            protocol_cls=BitmambaProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.settings = Settings()
        self.model_override = model_override
        self.threads_override = threads_override
        self.worker = ModelWorker(self.settings)
        self.model: Model | None = None
        self.model_state = "not loaded"
        self.model_error: str | None = None
        self._model_ready: asyncio.Future[Model] | None = None
        self._clean: np.ndarray | None = None
        self.docs: dict[str, TrackedDocument] = {}
        self.too_big: set[str] = set()
        self.jobs: dict[str, CompletionJob] = {}
        self.request_seq: dict[str, int] = {}
        self.pending: dict[str, Pending] = {}
        self.stats = Stats()
        self.started = time.time()

    # ------------------------------------------------------------------ helpers
    @property
    def encoding(self) -> str:
        try:
            enc = self.workspace.position_encoding
        except RuntimeError:
            return "utf-16"
        return str(getattr(enc, "value", enc) or "utf-16")

    def report_server_error(self, error: Exception, source: Any) -> None:
        # Log instead of a popup for every malformed notification; requests get error responses.
        log.error("server error (%s): %s", getattr(source, "__name__", source), error)

    def log_message(self, message: str, kind: types.MessageType = types.MessageType.Log) -> None:
        log.info(message)
        with contextlib.suppress(Exception):
            self.window_log_message(types.LogMessageParams(type=kind, message=message))

    def apply_settings(self, options: Any) -> list[str]:
        new = self.settings.copy()
        warnings = new.update(options)
        if self.model_override is not None:
            new.model = self.model_override
        if self.threads_override is not None:
            new.threads = self.threads_override
        old = self.settings
        self.settings = new
        self.pending.clear()  # suggestions made under the old settings
        self.worker.reconfigure(new)
        if self._model_ready is not None and (new.model, new.revision) != (old.model, old.revision):
            self.start_model_load()
        for w in warnings:
            self.log_message(f"bitmamba: {w}", types.MessageType.Warning)
        return warnings

    # ------------------------------------------------------------------ model loading
    def start_model_load(self) -> asyncio.Future[Model]:
        loop = asyncio.get_running_loop()
        s = self.settings
        self.model_state = "loading"
        self.model_error = None

        def loader() -> Model:
            from bitmamba_lsp.engine import load

            return load(s.model, threads=s.threads or None, revision=s.revision)

        fut = asyncio.wrap_future(self.worker.load(loader), loop=loop)
        self._model_ready = fut
        fut.add_done_callback(self._model_loaded)
        return fut

    def _model_loaded(self, fut: asyncio.Future[Model]) -> None:
        if fut is not self._model_ready:
            return
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.model_state = "failed"
            self.model_error = f"{type(exc).__name__}: {exc}"
            self.model = None
            msg = f"bitmamba: the model could not be loaded: {exc}. Completions are off until the model setting is fixed."
            log.error(msg)
            with contextlib.suppress(Exception):
                self.window_show_message(types.ShowMessageParams(type=types.MessageType.Error, message=msg))
            return
        model = fut.result()
        self.model = model
        self.model_state = "ready"
        if model.tokenizer is None:
            self.model_state = "failed"
            self.model_error = "the model has no tokenizer"
            return
        self._clean = clean_start_table(model.tokenizer)
        # (Re)track every open document with this model's tokenizer.
        for uri, doc in list(self.docs.items()):
            self._track(uri, doc.text, doc.version)
        self.log_message(
            f"bitmamba: model {model.name} ready ({model.arch}, {model.vocab_size} tokens, SIMD {_core.simd_level()}, "
            f"{model.threads} threads, loaded in {model.load_seconds * 1000:.0f} ms)"
        )

    async def model_or_none(self, wait_s: float) -> Model | None:
        if self.model is not None:
            return self.model
        fut = self._model_ready
        if fut is None or fut.done():
            return None
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(fut), wait_s)
        return self.model

    # ------------------------------------------------------------------ documents
    def _track(self, uri: str, text: str, version: int) -> TrackedDocument:
        tok = self.model.tokenizer if self.model is not None else None
        if len(text) > self.settings.max_document_chars:
            self.too_big.add(uri)
            tok = None
            self.log_message(
                f"bitmamba: {uri} has {len(text)} characters (limit {self.settings.max_document_chars}); "
                "no completions for it",
                types.MessageType.Warning,
            )
        else:
            self.too_big.discard(uri)
        doc = TrackedDocument(uri, text, version, tok, self._clean if tok is not None else None)
        self.docs[uri] = doc
        self.pending.pop(uri, None)
        if tok is not None:
            self.worker.doc_opened(uri, doc.ids)
        return doc

    def did_open(self, params: types.DidOpenTextDocumentParams) -> None:
        td = params.text_document
        self._track(td.uri, td.text, td.version)

    def did_change(self, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        doc = self.docs.get(uri)
        if doc is None:
            log.warning("didChange for a document that is not open: %s", uri)
            return
        enc = self.encoding
        first_changed = None
        last_end = 0
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                r = change.range
                edit = doc.apply_change(
                    (r.start.line, r.start.character), (r.end.line, r.end.character), change.text, enc
                )
            else:
                edit = doc.replace_all(change.text)
            first_changed = (
                edit.first_changed_token
                if first_changed is None
                else min(first_changed, edit.first_changed_token)
            )
            last_end = edit.new_end if len(doc.text) >= edit.new_end else len(doc.text)
        doc.version = params.text_document.version
        if len(doc.text) > self.settings.max_document_chars and uri not in self.too_big:
            self._track(uri, doc.text, doc.version)
            return
        if first_changed is not None and doc._tok is not None:
            _, target = doc.prefix_ids(min(last_end, len(doc.text)))
            self.worker.doc_edited(uri, first_changed, doc.ids, target)
        job = self.jobs.get(uri)
        if job is not None:
            job.cancel.set()  # its prompt is stale

    def did_close(self, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        self.docs.pop(uri, None)
        self.pending.pop(uri, None)
        self.too_big.discard(uri)
        job = self.jobs.pop(uri, None)
        if job is not None:
            job.cancel.set()
        self.worker.doc_closed(uri)

    # ------------------------------------------------------------------ completion
    def cursor_context(self, before: str, after: str) -> CursorContext:
        nl = before.rfind("\n")
        line_prefix = before[nl + 1 :]
        first, _, rest = after.partition("\n")
        return CursorContext(
            line_prefix=line_prefix.rstrip("\r") if line_prefix.endswith("\r") else line_prefix,
            line_suffix=first.rstrip("\r"),
            next_lines=[ln.rstrip("\r") for ln in rest.split("\n", NEXT_LINES)[:NEXT_LINES]],
            multiline=self.settings.multiline,
            max_lines=self.settings.max_lines,
        )

    def document_and_offset(self, uri: str, position: types.Position) -> tuple[TrackedDocument, int]:
        doc = self.docs.get(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"document is not open: {uri}")
        try:
            offset = doc.offset_at(position.line, position.character, self.encoding)
        except PositionError as e:
            raise JsonRpcInvalidParams(str(e)) from None
        return doc, offset

    def lookup_pending(self, doc: TrackedDocument, offset: int) -> str | None:
        """The rest of a suggestion the user is typing through, or the precomputed next one."""
        p = self.pending.get(doc.uri)
        if p is None or offset < p.anchor:
            return None
        edits = doc.edits_since(p.epoch)
        if edits is None or any(e.start < p.anchor for e in edits):
            self.pending.pop(doc.uri, None)  # text before the suggestion changed
            return None
        full = "".join(p.segments)
        typed = doc.text[p.anchor : offset]
        if not full.startswith(typed):
            self.pending.pop(doc.uri, None)
            return None
        k = len(typed)
        end = 0
        for seg in p.segments:
            end += len(seg)
            if k < end:
                return full[k:end]
        return None

    async def complete(
        self, uri: str, position: types.Position, *, speculate: bool = True
    ) -> tuple[str, int] | None:
        """(insert_text, replaced chars after the cursor) or None."""
        doc, offset = self.document_and_offset(uri, position)
        if uri in self.too_big:
            return None
        seq = self.request_seq.get(uri, 0) + 1
        self.request_seq[uri] = seq
        old = self.jobs.pop(uri, None)
        if old is not None:
            old.cancel.set()  # latest request wins
        cached = self.lookup_pending(doc, offset)
        if cached:
            self.stats.from_cache += 1
            return self._fit(doc, offset, cached)
        model = await self.model_or_none(self.settings.time_budget_ms / 1000)
        if model is None or doc._tok is None:
            return None
        if self.settings.debounce_ms:
            await asyncio.sleep(self.settings.debounce_ms / 1000)
            if self.request_seq.get(uri) != seq:
                return None  # a newer request for this document arrived
        doc = self.docs.get(uri)
        if doc is None:
            return None
        offset = min(offset, len(doc.text))
        prompt, shared = doc.prefix_ids(offset)
        ctx = self.cursor_context(
            doc.text[max(0, offset - CONTEXT_CHARS) : offset], doc.text[offset : offset + CONTEXT_CHARS]
        )
        job = CompletionJob(
            uri=uri,
            prompt=prompt,
            shared=shared,
            ctx=ctx,
            max_tokens=self.settings.max_tokens,
            deadline_ms=self.settings.time_budget_ms,
        )
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
        self.record(res)
        if res.cancelled or self.request_seq.get(uri) != seq:
            return None
        if res.suggestion is None:
            self.stats.empty += 1
            return None
        text = res.suggestion.insert_text
        item_id = uuid.uuid4().hex[:12]
        self.pending[uri] = Pending(anchor=offset, epoch=epoch, segments=[text], item_id=item_id)
        if speculate and self.settings.speculative:
            self.speculate_next(doc, offset, shared, prompt, text, res.suggestion.replace_chars)
        return text, res.suggestion.replace_chars

    def _fit(self, doc: TrackedDocument, offset: int, text: str) -> tuple[str, int]:
        """Recompute how a cached suggestion meets the text after the cursor."""
        after = doc.text[offset : offset + CONTEXT_CHARS]
        ctx = self.cursor_context(doc.text[max(0, offset - CONTEXT_CHARS) : offset], after)
        s = finalize(text, ctx)
        if s is None:
            return text, 0
        return s.insert_text, s.replace_chars

    def speculate_next(
        self, doc: TrackedDocument, offset: int, shared: int, prompt: np.ndarray, text: str, replaced: int
    ) -> None:
        """Compute, in the background, the suggestion that follows accepting `text`."""
        tok = doc._tok
        if tok is None:
            return
        pending = self.pending.get(doc.uri)
        if pending is None:
            return
        origin = doc.origin(shared)
        before = doc.text[max(0, offset - CONTEXT_CHARS) : offset] + text
        after = doc.text[offset + replaced : offset + replaced + CONTEXT_CHARS]
        next_prompt = np.concatenate(
            [prompt[:shared], np.asarray(tok.encode(doc.text[origin:offset] + text), dtype=np.int32)]
        )
        job = CompletionJob(
            uri=doc.uri,
            prompt=next_prompt,
            shared=shared,
            ctx=self.cursor_context(before, after),
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
            if (
                self.pending.get(doc.uri) is pending
                and res.suggestion is not None
                and res.suggestion.replace_chars == 0
            ):
                pending.segments.append(res.suggestion.insert_text)

        fut.add_done_callback(done)

    def record(self, res: CompletionResult) -> None:
        if res.cancelled:
            self.stats.cancelled += 1
            return
        self.stats.first_token_ms.append(res.first_token_ms)
        self.stats.total_ms.append(res.total_ms)
        self.stats.last = {
            "first_token_ms": round(res.first_token_ms, 2),
            "total_ms": round(res.total_ms, 2),
            "queue_ms": round(res.queue_ms, 2),
            "prefill_ms": round(res.prefill_ms, 2),
            "prompt_tokens_fed": res.fed,
            "resumed_from_token": res.resumed_from,
            "generated_tokens": res.tokens,
            "stop": res.reason,
        }

    def status(self) -> dict[str, Any]:
        m = self.model
        store = self.worker.store
        return {
            "version": __version__,
            "model": None if m is None else m.name,
            "model_path": None if m is None or m.path is None else str(m.path),
            "model_state": self.model_state,
            "model_error": self.model_error,
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
            "position_encoding": self.encoding,
            "shown": self.stats.shown,
            "accepted": self.stats.accepted,
            "accept_rate": round(self.stats.accepted / self.stats.shown, 4) if self.stats.shown else None,
            "served_from_cache": self.stats.from_cache,
            "cancelled": self.stats.cancelled,
            "empty": self.stats.empty,
            "first_token_ms": self.stats.percentiles(self.stats.first_token_ms),
            "total_ms": self.stats.percentiles(self.stats.total_ms),
            "last": self.stats.last,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def make_item(
        self, uri: str, position: types.Position, text: str, replaced: int
    ) -> types.InlineCompletionItem:
        end = position
        if replaced:
            doc = self.docs[uri]
            offset = doc.offset_at(position.line, position.character, self.encoding)
            line, ch = doc.position_of(offset + replaced, self.encoding)
            end = types.Position(line=line, character=ch)
        item_id = self.pending[uri].item_id if uri in self.pending else ""
        self.stats.shown += 1
        return types.InlineCompletionItem(
            insert_text=text,
            range=types.Range(start=position, end=end),
            command=types.Command(
                title="bitmamba: accepted", command=ACCEPT_COMMAND, arguments=[uri, item_id]
            ),
        )


def create_server(model: str | None = None, threads: int | None = None) -> BitmambaServer:
    server = BitmambaServer(model_override=model, threads_override=threads)

    @server.feature(types.INITIALIZE)
    def initialize(ls: BitmambaServer, params: types.InitializeParams) -> None:
        warnings = ls.settings.update(params.initialization_options)
        if ls.model_override is not None:
            ls.settings.model = ls.model_override
        if ls.threads_override is not None:
            ls.settings.threads = ls.threads_override
        ls.worker.reconfigure(ls.settings)
        for w in warnings:
            log.warning(w)
        if ls.settings.completion_fallback:
            ls.feature(
                types.TEXT_DOCUMENT_COMPLETION,
                types.CompletionOptions(trigger_characters=[".", "(", " "], resolve_provider=False),
            )(completion_fallback)

    @server.feature(types.INITIALIZED)
    async def initialized(ls: BitmambaServer, params: types.InitializedParams) -> None:
        token = str(uuid.uuid4())
        progress = False
        caps = ls.client_capabilities
        if caps.window is not None and caps.window.work_done_progress:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ls.work_done_progress.create_async(token), 5)
                ls.work_done_progress.begin(
                    token,
                    types.WorkDoneProgressBegin(title="bitmamba", message="loading model", cancellable=False),
                )
                progress = True
        fut = ls.start_model_load()
        with contextlib.suppress(Exception):
            await fut
        if progress:
            ls.work_done_progress.end(
                token,
                types.WorkDoneProgressEnd(
                    message="model ready" if ls.model is not None else "model failed to load"
                ),
            )

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: BitmambaServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.did_open(params)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: BitmambaServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.did_change(params)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: BitmambaServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.did_close(params)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: BitmambaServer, params: types.DidChangeConfigurationParams) -> None:
        ls.apply_settings(params.settings)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(
        ls: BitmambaServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList | None:
        got = await ls.complete(params.text_document.uri, params.position)
        if got is None:
            return None
        text, replaced = got
        return types.InlineCompletionList(
            items=[ls.make_item(params.text_document.uri, params.position, text, replaced)]
        )

    async def completion_fallback(ls: BitmambaServer, params: types.CompletionParams) -> types.CompletionList:
        got = await ls.complete(params.text_document.uri, params.position, speculate=False)
        items = []
        if got is not None:
            text, _ = got
            label = text.strip().split("\n", 1)[0][:60] or text[:60]
            items.append(
                types.CompletionItem(
                    label=f"✨ {label}",
                    kind=types.CompletionItemKind.Snippet,
                    detail="bitmamba (local model)",
                    insert_text=text,
                    insert_text_format=types.InsertTextFormat.PlainText,
                    filter_text=label,
                    sort_text="~bitmamba",  # after the language server's own items
                    command=types.Command(
                        title="bitmamba: accepted",
                        command=ACCEPT_COMMAND,
                        arguments=[params.text_document.uri, ""],
                    ),
                )
            )
        # incomplete: the client asks again as the user types instead of filtering a stale item
        return types.CompletionList(is_incomplete=True, items=items)

    @server.command(ACCEPT_COMMAND)
    def accept(ls: BitmambaServer, *args: Any) -> None:
        ls.stats.accepted += 1

    @server.command(STATUS_COMMAND)
    def status_command(ls: BitmambaServer, *args: Any) -> dict[str, Any]:
        return ls.status()

    @server.feature(STATUS_REQUEST)
    def status_request(ls: BitmambaServer, params: Any) -> dict[str, Any]:
        return ls.status()

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: BitmambaServer, params: Any) -> None:
        for job in ls.jobs.values():
            job.cancel.set()
        ls.worker.shutdown(wait=False)

    return server
