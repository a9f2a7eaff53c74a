"""The Starlette application: routes, API key, body limits, JSON and server-sent-event answers.

Nothing here runs the model: requests are validated and tokenized (in a thread pool), turned into
`Job`s for the `GenerationWorker` thread, and the worker's per-token events are relayed to the
client as they arrive. A client that disconnects (streamed or not) cancels its job.

The `model` field must name what this server serves (its id, the model's name, an alias, or nothing),
else 404 model_not_found. A prompt over --max-prompt-tokens keeps its last tokens (reported in
usage.prompt_tokens_truncated and the X-Prompt-Truncated header) unless the server or the request
says `error` (the old 400). Completions are token-healed by default (`token_healing`), chat is not.

Fill-in-the-middle (a model whose model.json declares "fim"): `/v1/completions` with a `suffix`, and
llama.cpp's `POST /infill` (llama.vim, llama.vscode; infill.py). A model without FIM answers those
with a 400 (`suffix`) or a 501 (`/infill`) that names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bitmamba_lsp import _core
from bitmamba_lsp.engine.decoding import GenerationConfig, make_sampler
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.http.chat import ChatFormatter
from bitmamba_lsp.http.infill import (
    InfillFormat,
    InfillRequest,
    fit_fim,
    infill_job,
    parse_infill,
)
from bitmamba_lsp.http.logprobs import Entry, Scoring, completion_logprobs, full_logprobs, plan
from bitmamba_lsp.http.schemas import (
    MODEL_ALIASES,
    OVERFLOW,
    APIError,
    GenRequest,
    Limits,
    bad,
    openapi_schema,
    parse_chat,
    parse_completion,
)
from bitmamba_lsp.http.worker import Channel, GenerationWorker, Job, Result

log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    model_id: str | None = None  # default: the model's name
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 16
    max_queue: int = 256
    prefill_chunk: int = 512
    cache_mb: float = 256.0
    cache_spacing: int = 64
    model_aliases: tuple[str, ...] = ()  # more accepted `model` values (besides MODEL_ALIASES)
    prompt_overflow: str = "truncate"  # a prompt over the limit: truncate (keep its end) | error (400)
    token_healing: bool = True  # the default of /v1/completions (chat: off unless a request asks)


class Server:
    def __init__(self, model: Model, settings: ServerSettings) -> None:
        if model.tokenizer is None:
            raise ValueError(f"model {model.name} has no tokenizer; the HTTP API needs one")
        self.model = model
        self.settings = settings
        self.limits = settings.limits
        if settings.prompt_overflow not in OVERFLOW:
            raise ValueError(f"prompt_overflow must be one of {OVERFLOW}, not {settings.prompt_overflow!r}")
        self.model_id = settings.model_id or model.name
        # every accepted `model` value, the served id first
        self.model_ids = tuple(
            dict.fromkeys(
                m for m in (self.model_id, model.name, *MODEL_ALIASES, *settings.model_aliases) if m
            )
        )
        self.chat = ChatFormatter(model)
        self.fim = getattr(model, "fim", None)  # the model's FimSpec, or None
        self.worker = GenerationWorker(
            model,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            prefill_chunk=settings.prefill_chunk,
            cache_bytes=int(settings.cache_mb * (1 << 20)),
            cache_spacing=settings.cache_spacing,
        )
        self.started = time.time()
        self._openapi = openapi_schema(
            self.limits,
            model.vocab_size,
            self.model_id,
            settings.api_key is not None,
            model_ids=self.model_ids,
            prompt_overflow=settings.prompt_overflow,
            token_healing=settings.token_healing,
            fim=self.fim is not None,
        )
        tok = model.tokenizer
        self._special_ids = frozenset(tok.special_ids) | (
            {model.eos_id} if model.eos_id is not None else set()
        )

    # ------------------------------------------------------------------ helpers
    def check_auth(self, request: Request) -> None:
        key = self.settings.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        token = (
            header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        )
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise APIError(
                401,
                "Incorrect or missing API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    def check_model(self, name: str | None) -> None:
        """A `model` this server does not serve is a 404, as OpenAI answers."""
        if not name or name in self.model_ids:
            return
        raise APIError(
            404,
            f"The model '{name}' does not exist on this server: it serves '{self.model_id}' "
            f"(also accepted: {', '.join(repr(m) for m in self.model_ids[1:])}, or no model)",
            param="model",
            code="model_not_found",
        )

    async def read_json(self, request: Request) -> Any:
        limit = self.limits.max_body_bytes
        too_big = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
        cl = request.headers.get("content-length", "")
        if cl.isdigit() and int(cl) > limit:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError):
            raise bad("the request body is not valid JSON", None, "invalid_json") from None

    def no_fim(self) -> str:
        return (
            f"model '{self.model_id}' does not declare fill-in-the-middle (no \"fim\" sentinels in its "
            "model.json): it only continues text left to right"
        )

    def check_suffix(self, req: GenRequest) -> None:
        if req.suffix and self.fim is None:
            raise bad(
                f"'suffix' (fill-in-the-middle) cannot be used: {self.no_fim()}; send the text before the "
                "cursor as 'prompt' only",
                "suffix",
                "unsupported_value",
            )

    def check_fim_overflow(self, n: int, overflow: str | None, param: str) -> None:
        """The 400 for a FIM prompt of `n` tokens over --max-prompt-tokens when prompt_overflow
        'error' asks for it (or when not even the three sentinels fit)."""
        limit = self.limits.max_prompt_tokens
        if n > limit and ((overflow or self.settings.prompt_overflow) == "error" or limit < 3):
            raise bad(
                f"the fill-in-the-middle prompt has {n} tokens, more than this server's limit of {limit} "
                "(--max-prompt-tokens; send prompt_overflow: 'truncate' to keep the end of the prefix "
                "and the start of the suffix)",
                param,
                "context_length_exceeded",
            )

    def prepare(self, req: GenRequest) -> Job:
        """Tokenize and build the job (runs in a thread pool: tokenizing can take a while)."""
        stops = req.stop
        stop_ids: frozenset[int] = frozenset()
        fim = req.kind == "completion" and bool(req.suffix)
        if req.kind == "chat":
            assert req.messages is not None
            ids = self.chat.encode(self.chat.render(req.messages))
            stops = tuple(dict.fromkeys((*stops, *self.chat.stop_texts)))
            stop_ids = self.chat.stop_ids
            param = "messages"
        else:
            ids = req.prompt if isinstance(req.prompt, list) else self.model.encode(req.prompt)
            param = "prompt"
        limit = self.limits.max_prompt_tokens
        truncated = 0
        if fim:  # <pre> prompt <suf> suffix <mid>: the model writes the middle
            assert self.fim is not None and req.suffix is not None
            suffix = self.model.encode(req.suffix)
            self.check_fim_overflow(3 + len(ids) + len(suffix), req.prompt_overflow, param)
            ids, truncated = fit_fim(self.fim, list(ids), suffix, [], limit)
            stop_ids = self.fim.sentinel_ids  # a sentinel ends the middle as the end-of-text does
        elif not ids:
            if self.model.eos_id is None:
                raise bad("the prompt is empty", param)
            ids = [self.model.eos_id]  # an empty prompt starts from the document separator
        if not fim and len(ids) > limit:
            if (req.prompt_overflow or self.settings.prompt_overflow) == "error":
                raise bad(
                    f"the prompt has {len(ids)} tokens, more than this server's limit of {limit} "
                    "(--max-prompt-tokens; send prompt_overflow: 'truncate' to keep its last tokens)",
                    param,
                    "context_length_exceeded",
                )
            truncated = len(ids) - limit
            if req.kind == "chat" and limit > 1 and ids[0] in self._special_ids:
                ids = [ids[0], *ids[len(ids) - limit + 1 :]]  # a template's leading BOS stays
            else:
                ids = ids[-limit:]
        cfg = GenerationConfig(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            min_p=req.min_p,
            repetition_penalty=req.repetition_penalty,
            stop=stops,
            seed=req.seed,
        )
        try:  # the sampler checks its settings; a refusal is the request's fault, so a 400 now
            make_sampler(self.model, cfg)
        except ValueError as e:
            raise bad(str(e), None, "invalid_value") from None
        heal = req.token_healing
        if heal is None:  # logprobs and echo describe the prompt's tokens as given: not healed
            heal = self.settings.token_healing and req.kind == "completion"
            heal = heal and req.logprobs is None and not req.echo
        if fim:
            # not healed: the prefix is tokenized on its own, as FIM training pieces were (cut at
            # any character), and the prompt ends with the <mid> sentinel, a token boundary
            heal = False
        return Job(
            ids=list(ids),
            cfg=cfg,
            stop_ids=stop_ids,
            ignore_eos=req.ignore_eos,
            heal=heal,
            truncated=truncated,
            scoring=plan(self.model, req.logprobs, req.echo, list(ids), req.prompt, fim),
        )

    def submit(self, job: Job) -> None:
        job.channel = Channel(asyncio.get_running_loop())
        if not self.worker.submit(job):
            raise APIError(
                429, "too many requests are queued; retry later", type="rate_limit_error", code="server_busy"
            )

    # ------------------------------------------------------------------ endpoints
    async def health(self, request: Request) -> Response:
        m = self.model
        return JSONResponse(
            {
                "status": "ok",
                "model": {
                    "id": self.model_id,
                    "loaded": True,
                    "arch": m.arch,
                    "vocab_size": m.vocab_size,
                    "state_bytes": m.state_bytes,
                    "threads": m.threads,
                    "chat_template": self.chat.source,
                },
                "simd": _core.simd_level(),
                "kernel_level": m.kernel_level,
                "uptime_s": round(time.time() - self.started, 3),
                "stats": self.worker.stats(),
            }
        )

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "object": "model",
            "created": int(self.started),
            "owned_by": "bitmamba-lsp",
        }

    async def models(self, request: Request) -> Response:
        self.check_auth(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def retrieve_model(self, request: Request) -> Response:
        self.check_auth(request)
        name = request.path_params["model_id"]
        if name not in self.model_ids:
            raise APIError(404, f"model '{name}' is not served here", param="model", code="model_not_found")
        return JSONResponse(self._model_card())

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self._openapi)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def _generate(self, request: Request, kind: str) -> Response:
        self.check_auth(request)
        body = await self.read_json(request)
        parse = parse_chat if kind == "chat" else parse_completion
        req = parse(body, self.limits, self.model.vocab_size)
        self.check_model(req.model)
        self.check_suffix(req)
        job = await run_in_threadpool(self.prepare, req)
        self.submit(job)
        fmt = ChunkFormat(req, self.model_id, job.truncated, job.scoring)
        headers = {"X-Prompt-Truncated": str(job.truncated)} if job.truncated else {}
        if req.stream:
            return EventStream(job, fmt, headers)
        result = await _until_done_or_disconnect(job, request.receive)
        if result is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        return JSONResponse(fmt.full(result), headers=headers)

    # ------------------------------------------------------------------ llama.cpp's /infill
    def prepare_infill(self, req: InfillRequest) -> Job:
        """The job of an /infill request (infill.infill_job; runs in the thread pool)."""
        assert self.fim is not None
        return infill_job(self.fim, self.model, req, self.limits.max_prompt_tokens, self.settings.token_healing,
                          lambda n: self.check_fim_overflow(n, req.prompt_overflow, "input_prefix"))  # fmt: skip

    async def infill(self, request: Request) -> Response:
        self.check_auth(request)
        if self.fim is None:
            raise APIError(
                501,
                f"Infill is not supported by this model: {self.no_fim()}",
                type="not_supported_error",
                code="fim_not_supported",
            )
        body = await self.read_json(request)
        req = parse_infill(body, self.limits, self.model.vocab_size)
        job = await run_in_threadpool(self.prepare_infill, req)
        fmt = InfillFormat(req, self.model_id, len(job.ids), job.truncated, job.text_stop)
        headers = {"X-Prompt-Truncated": str(job.truncated)} if job.truncated else {}
        if req.n_predict == 0 and not req.cache_prompt:  # nothing to generate nor to keep
            return JSONResponse(
                fmt.full(Result("length", len(job.ids), 0, "", 0, [], reason="length")), headers=headers
            )
        self.submit(job)
        if req.stream:
            return EventStream(job, fmt, headers)
        result = await _until_done_or_disconnect(job, request.receive)
        if result is None:
            return Response(status_code=499)
        return JSONResponse(fmt.full(result), headers=headers)


class ChunkFormat:
    """OpenAI response bodies: whole (`full`) and streamed chunks."""

    def __init__(
        self, req: GenRequest, model_id: str, truncated: int = 0, scoring: Scoring | None = None
    ) -> None:
        self.chat = req.kind == "chat"
        self.scoring = scoring  # logprobs / echo (completions)
        self.echo = scoring.echo if scoring is not None and scoring.echo is not None else ""
        self.truncated = truncated
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = model_id
        self.include_usage = req.include_usage
        self.object = "chat.completion.chunk" if self.chat else "text_completion"
        self._text_template: tuple[bytes, bytes] | None = None

    def usage(self, r: Result) -> dict[str, int]:
        out = {
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
        }
        if self.truncated:
            out["prompt_tokens_truncated"] = self.truncated
        return out

    def full(self, r: Result) -> dict[str, Any]:
        head = {"id": self.id, "created": self.created, "model": self.model, "system_fingerprint": None}
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": None,
                "finish_reason": r.finish_reason,
            }
            return {**head, "object": "chat.completion", "choices": [choice], "usage": self.usage(r)}
        lp = full_logprobs(r.logprobs) if self.scoring is not None and self.scoring.top is not None else None
        choice = {"index": 0, "text": self.echo + r.text, "logprobs": lp, "finish_reason": r.finish_reason}
        return {**head, "object": "text_completion", "choices": [choice], "usage": self.usage(r)}

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        out: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [choice],
        }
        if self.include_usage:
            out["usage"] = None
        return b"data: " + json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"

    def start(self) -> bytes:
        if not self.chat:  # an echoed prompt comes first (with logprobs: when the worker has scored it)
            scored = self.scoring is not None and self.scoring.prompt
            return self.text(self.echo) if self.echo and not scored else b""
        return self._chunk(
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        )

    def text(self, text: str) -> bytes:
        """One token's chunk: a template made once per request with only the text encoded each time."""
        if self._text_template is None:
            marker = "\x00TEXT\x00"
            if self.chat:
                choice = {"index": 0, "delta": {"content": marker}, "logprobs": None, "finish_reason": None}
            else:
                choice = {"index": 0, "text": marker, "logprobs": None, "finish_reason": None}
            head, _, tail = self._chunk(choice).partition(json.dumps(marker).encode())
            self._text_template = (head, tail)
        head, tail = self._text_template
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    def logprobs(self, text: str, entries: list[Entry]) -> bytes:
        """A completion chunk of text with the logprobs of its tokens."""
        return self._chunk(
            {"index": 0, "text": text, "logprobs": completion_logprobs(entries), "finish_reason": None}
        )

    def end(self, r: Result) -> bytes:
        if self.chat:
            last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": r.finish_reason}
        else:
            last = {"index": 0, "text": "", "logprobs": None, "finish_reason": r.finish_reason}
        out = self._chunk(last)
        if self.include_usage:
            tail = {
                "id": self.id,
                "object": self.object,
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage(r),
            }
            out += b"data: " + json.dumps(tail, separators=(",", ":")).encode() + b"\n\n"
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def error(message: str) -> bytes:
        body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        return b"data: " + json.dumps(body).encode() + b"\n\ndata: [DONE]\n\n"


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _events(job: Job) -> AsyncIterator[tuple[str, Any]]:
    assert job.channel is not None
    while True:
        for kind, value in await job.channel.get():
            yield kind, value
            if kind in ("done", "error"):
                return


async def _race(main: Awaitable[Any], receive: Receive, job: Job) -> tuple[bool, Any]:
    """Run `main` until it ends or the client disconnects (then the job is cancelled).
    Returns (finished, main's result)."""
    task = asyncio.ensure_future(main)
    watch = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            job.cancel.set()
        for t in (task, watch):
            t.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)
    if task.cancelled():
        return False, None
    return True, task.result()


async def _until_done_or_disconnect(job: Job, receive: Receive) -> Result | None:
    async def collect() -> Result:
        async for kind, value in _events(job):
            if kind == "done":
                return value
            if kind == "error":
                raise APIError(503, value, type="server_error", code="generation_failed")
        raise APIError(503, "generation ended without a result", type="server_error")

    finished, result = await _race(collect(), receive, job)
    return result if finished else None


class EventStream(Response):
    """Server-sent events relayed from the worker: a chunk per generated token as it is produced."""

    def __init__(
        self, job: Job, fmt: ChunkFormat | InfillFormat, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.job = job
        self.fmt = fmt
        self.extra_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    *self.extra_headers,
                ],
            }
        )

        async def pump() -> None:
            first = self.fmt.start()
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for batch in _batches(self.job, self.fmt):
                await send({"type": "http.response.body", "body": batch, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        with contextlib.suppress(OSError, ClientDisconnect):
            await _race(pump(), receive, self.job)


async def _batches(job: Job, fmt: ChunkFormat | InfillFormat) -> AsyncIterator[bytes]:
    """Whatever the worker has produced since the last send, as SSE bytes (one event per token)."""
    assert job.channel is not None
    while True:
        out: list[bytes] = []
        for kind, value in await job.channel.get():
            if kind in ("token", "text"):
                out.append(fmt.text(value))
            elif kind == "lp":  # text and the logprobs of its tokens
                out.append(fmt.logprobs(*value))  # type: ignore[union-attr]
            elif kind == "prompt":  # echo with logprobs: the prompt, scored
                out.append(fmt.logprobs(fmt.echo, value))  # type: ignore[union-attr]
            elif kind == "done":
                if value.finish_reason != "cancelled":
                    out.append(fmt.end(value))
                    yield b"".join(out)
                return
            elif kind == "error":
                out.append(fmt.error(value))
                yield b"".join(out)
                return
        yield b"".join(out)


def create_app(model: Model, settings: ServerSettings | None = None) -> Starlette:
    server = Server(model, settings or ServerSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(server.worker.stop)

    def api(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except APIError as e:
                return JSONResponse(e.body(), status_code=e.status)
            except ClientDisconnect:
                return Response(status_code=499)

        return endpoint

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(APIError(exc.status_code, message, code=code).body(), status_code=exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        body = APIError(500, "internal server error", type="server_error").body()
        return JSONResponse(body, status_code=500)

    app = Starlette(
        routes=[
            Route("/health", api(server.health), methods=["GET"]),
            Route("/openapi.json", api(server.openapi), methods=["GET"]),
            Route("/v1/models", api(server.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", api(server.retrieve_model), methods=["GET"]),
            Route("/v1/completions", api(server.completions), methods=["POST"]),
            Route("/v1/chat/completions", api(server.chat_completions), methods=["POST"]),
            Route("/infill", api(server.infill), methods=["POST"]),  # llama.cpp's (llama.vim, llama.vscode)
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app
