"""Request validation for the OpenAI-compatible endpoints, OpenAI-style errors and the OpenAPI
document served at /openapi.json.

Validation is explicit (no model framework): every accepted field is type- and range-checked and
every failure is an `APIError` that renders as ``{"error": {"message", "type", "param", "code"}}``.
Unknown fields are ignored (clients send `user`, `metadata`, ...); OpenAI features the engine does
not have are rejected with a 400 naming the field instead of being silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

# Roles accepted in chat messages.
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP = 16
OVERFLOW = ("truncate", "error")  # what a prompt longer than --max-prompt-tokens gets
# Model ids accepted besides the served id and the model's name (an omitted, null or empty
# `model` is accepted too); anything else is a 404 model_not_found, as OpenAI answers.
MODEL_ALIASES = ("default",)
MAX_LOGPROBS = 5  # OpenAI's legacy completions limit for `logprobs`


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 8192
    max_tokens_limit: int = 4096
    default_max_tokens: int = 256  # chat requests without max_tokens (completions: OpenAI's 16)


@dataclass
class GenRequest:
    kind: Literal["completion", "chat"]
    model: str | None
    prompt: str | list[int]  # text, or token ids (completions only)
    messages: list[dict[str, str]] | None
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    seed: int | None
    ignore_eos: bool
    token_healing: bool | None = None  # None: the server's default (completions on, chat off)
    prompt_overflow: str | None = None  # None: the server's --prompt-overflow
    suffix: str | None = None  # completions: the text after the cursor (fill-in-the-middle models only)
    logprobs: int | None = None  # completions: N alternatives per token (0..MAX_LOGPROBS); None: none
    echo: bool = False  # completions: the prompt is put before the answer (and scored, with logprobs)


# ------------------------------------------------------------------------------------------ fields
def _present(body: dict[str, Any], name: str) -> bool:
    return body.get(name) is not None


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise bad(f"'{name}' must be a number", name, "invalid_type")
    if not lo <= v <= hi:
        raise bad(f"'{name}' must be between {lo} and {hi}, got {v}", name)
    return float(v)


def _int(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"'{name}' must be an integer", name, "invalid_type")
    if not lo <= v <= hi:
        raise bad(f"'{name}' must be between {lo} and {hi}, got {v}", name)
    return v


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be a boolean", name, "invalid_type")
    return v


def _overflow(body: dict[str, Any]) -> str | None:
    v = body.get("prompt_overflow")
    if v is None:
        return None
    if v not in OVERFLOW:
        raise bad(f"'prompt_overflow' must be one of {', '.join(OVERFLOW)}", "prompt_overflow")
    return v


def _min_p(body: dict[str, Any]) -> float:
    v = _number(body, "min_p", 0.0, 0.0, 1.0)
    if v >= 1.0:
        raise bad("'min_p' must be below 1", "min_p")
    return v


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(items) > MAX_STOP:
        raise bad(f"at most {MAX_STOP} stop sequences are supported", "stop")
    if any(s == "" for s in items):
        raise bad("stop sequences must be non-empty strings", "stop")
    return tuple(dict.fromkeys(items))


def _logprobs(body: dict[str, Any]) -> tuple[int | None, bool]:
    """/v1/completions' `logprobs` (an integer 0..5; null or false: none) and `echo`."""
    v = body.get("logprobs")
    if v is True:
        raise bad(
            f"'logprobs' on /v1/completions is the number of alternatives per token (0..{MAX_LOGPROBS}), "
            "not a boolean",
            "logprobs",
            "invalid_type",
        )
    top = None if v is False else _int(body, "logprobs", None, 0, MAX_LOGPROBS)
    if body.get("top_logprobs") not in (None, 0):
        raise bad(
            "'top_logprobs' belongs to chat completions; on /v1/completions send 'logprobs': N",
            "top_logprobs",
            "unsupported_value",
        )
    echo = _bool(body, "echo", False)
    if echo and isinstance(body.get("suffix"), str) and body["suffix"]:
        raise bad("'echo' cannot be combined with 'suffix' (fill-in-the-middle)", "echo", "unsupported_value")
    if (top is not None or echo) and body.get("token_healing") is True:
        raise bad(
            "'token_healing' cannot be combined with 'logprobs' or 'echo': the logprobs describe the prompt's "
            "tokens as given, which healing would take back (send token_healing false or omit it)",
            "token_healing",
            "unsupported_value",
        )
    return top, echo


def _unsupported(body: dict[str, Any], kind: str) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise bad("only n=1 is supported (one choice per request)", "n", "unsupported_value")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise bad("best_of is not supported (only 1)", "best_of", "unsupported_value")
    for name in ("presence_penalty", "frequency_penalty"):
        v = body.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise bad(f"'{name}' must be a number", name, "invalid_type")
        if v != 0:
            raise bad(
                f"'{name}' is not supported by this engine (it has a multiplicative repetition penalty "
                "instead): omit it or send 0, and use 'repetition_penalty' (e.g. 1.1)",
                name,
                "unsupported_value",
            )
    if kind == "chat":
        if body.get("logprobs") not in (None, False, 0):
            raise bad(
                "logprobs are not supported on chat completions: /v1/completions has them ('logprobs': N)",
                "logprobs",
                "unsupported_value",
            )
        if body.get("top_logprobs") not in (None, 0):
            raise bad(
                "top_logprobs is not supported on chat completions: /v1/completions has them ('logprobs': N)",
                "top_logprobs",
                "unsupported_value",
            )
        if body.get("echo") not in (None, False):
            raise bad("echo is not supported on chat completions", "echo", "unsupported_value")
    if body.get("logit_bias") not in (None, {}):
        raise bad("logit_bias is not supported", "logit_bias", "unsupported_value")
    for name in ("tools", "functions"):
        if body.get(name) not in (None, []):
            raise bad(f"'{name}' (function calling) is not supported", name, "unsupported_value")
    rf = body.get("response_format")
    if rf is not None and not (isinstance(rf, dict) and rf.get("type", "text") == "text"):
        raise bad(
            "only response_format {'type': 'text'} is supported", "response_format", "unsupported_value"
        )


def _common(
    body: dict[str, Any],
    kind: Literal["completion", "chat"],
    limits: Limits,
    vocab: int,
    zero_ok: bool = False,
) -> dict:
    """The fields both endpoints share; `zero_ok`: max_tokens 0 is accepted (echo: score the prompt)."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("'model' must be a string", "model", "invalid_type")
    _unsupported(body, kind)
    default_max = min(16 if kind == "completion" else limits.default_max_tokens, limits.max_tokens_limit)
    max_tokens = _int(body, "max_tokens", None, 0 if zero_ok else 1, limits.max_tokens_limit)
    if max_tokens is None and kind == "chat":
        max_tokens = _int(body, "max_completion_tokens", None, 1, limits.max_tokens_limit)
    if max_tokens is None and body.get("n_predict") is not None:
        # llama.cpp's name (llama.vim sends it): 0 only evaluates the prompt (a cache warm-up),
        # a negative value is the default, more than the limit is the limit
        n = _int(body, "n_predict", None, -(1 << 62), 1 << 62)
        assert n is not None
        max_tokens = default_max if n < 0 else min(n, limits.max_tokens_limit)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p < 1e-6:
        temperature, top_p = 0.0, 1.0  # a nucleus of (nearly) nothing: the most likely token only
    stream = _bool(body, "stream", False)
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad("'stream_options' must be an object", "stream_options", "invalid_type")
        include_usage = _bool(opts, "include_usage", False)
    seed = _int(body, "seed", None, -(1 << 63), (1 << 64) - 1)
    return dict(
        model=model,
        max_tokens=default_max if max_tokens is None else max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=_int(body, "top_k", 0, 0, vocab),
        min_p=_min_p(body),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        stop=_stop(body),
        stream=stream,
        include_usage=include_usage,
        seed=seed,
        ignore_eos=_bool(body, "ignore_eos", False),
        token_healing=None if body.get("token_healing") is None else _bool(body, "token_healing", True),
        prompt_overflow=_overflow(body),
    )


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_type")
    return body


def parse_completion(body: Any, limits: Limits, vocab: int) -> GenRequest:
    body = _object(body)
    if "prompt" not in body:
        raise bad("'prompt' is required", "prompt", "missing_required_parameter")
    p = body["prompt"]
    prompt: str | list[int]
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        prompt = p
    elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        if any(t < 0 or t >= vocab for t in p):
            raise bad(f"token ids in 'prompt' must be in [0, {vocab})", "prompt")
        prompt = list(p)
    elif isinstance(p, list) and len(p) > 1:
        raise bad("only one prompt per request is supported (n=1)", "prompt", "unsupported_value")
    else:
        raise bad("'prompt' must be a string or a list of token ids", "prompt", "invalid_type")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise bad("'suffix' must be a string", "suffix", "invalid_type")
    top, echo = _logprobs(body)
    return GenRequest(
        kind="completion",
        prompt=prompt,
        messages=None,
        suffix=suffix or None,
        logprobs=top,
        echo=echo,
        **_common(body, "completion", limits, vocab, zero_ok=echo),
    )


def _content(m: dict[str, Any], i: int) -> str:
    c = m.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for part in c:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise bad(
                    f"messages[{i}].content: only text parts ({{'type': 'text', 'text': ...}}) are supported",
                    f"messages[{i}].content",
                    "unsupported_value",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def parse_chat(body: Any, limits: Limits, vocab: int) -> GenRequest:
    body = _object(body)
    msgs = body.get("messages")
    if msgs is None:
        raise bad("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise bad("'messages' must be a non-empty list", "messages", "invalid_type")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        messages.append({"role": role, "content": _content(m, i)})
    return GenRequest(kind="chat", prompt="", messages=messages, **_common(body, "chat", limits, vocab))


# ------------------------------------------------------------------------------------------ OpenAPI
def _error_responses() -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "400": {"description": "invalid request", **ref},
        "401": {"description": "missing or wrong API key", **ref},
        "404": {"description": "unknown model (code model_not_found)", **ref},
        "413": {"description": "request body too large", **ref},
        "429": {"description": "too many queued requests", **ref},
    }


def openapi_schema(
    limits: Limits,
    vocab: int,
    model_id: str,
    auth: bool,
    model_ids: Sequence[str] = (),
    prompt_overflow: str = "truncate",
    token_healing: bool = True,
    fim: bool = False,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document describing this server (limits and defaults from its settings).
    `model_ids`: every accepted `model` value (default: `model_id` and the aliases); `fim`: the model
    declares fill-in-the-middle (`suffix` is accepted)."""
    num = {"type": ["number", "null"]}
    accepted = list(dict.fromkeys(model_ids or (model_id, *MODEL_ALIASES)))
    sampling = {
        "model": {
            "type": ["string", "null"],
            "enum": [*accepted, "", None],
            "description": f"the server serves '{model_id}'; also accepted: {', '.join(accepted[1:]) or 'none'}, "
            "an empty or missing value. Any other id is a 404 (code model_not_found)",
        },
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": limits.max_tokens_limit},
        "temperature": {**num, "minimum": 0, "maximum": 2, "description": "below 0.05: greedy"},
        "top_p": {**num, "minimum": 0, "maximum": 1},
        "top_k": {"type": ["integer", "null"], "minimum": 0, "maximum": vocab, "description": "0 disables"},
        "min_p": {**num, "minimum": 0, "exclusiveMaximum": 1},
        "repetition_penalty": {**num, "minimum": 0.01, "maximum": 10},
        "presence_penalty": {**num, "description": "only 0 is accepted (use repetition_penalty)"},
        "frequency_penalty": {**num, "description": "only 0 is accepted (use repetition_penalty)"},
        "stop": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_STOP},
                {"type": "null"},
            ]
        },
        "stream": {"type": ["boolean", "null"]},
        "stream_options": {
            "type": ["object", "null"],
            "properties": {"include_usage": {"type": "boolean"}},
        },
        "n": {"type": ["integer", "null"], "enum": [1, None]},
        "seed": {"type": ["integer", "null"]},
        "ignore_eos": {"type": ["boolean", "null"], "description": "keep generating after end-of-text"},
        "prompt_overflow": {
            "type": ["string", "null"],
            "enum": [*OVERFLOW, None],
            "description": f"a prompt over {limits.max_prompt_tokens} tokens: 'truncate' keeps its last "
            f"{limits.max_prompt_tokens} tokens (reported in usage.prompt_tokens_truncated and the "
            "X-Prompt-Truncated header), 'error' answers 400 context_length_exceeded; default "
            f"'{prompt_overflow}'",
        },
        "user": {"type": "string"},
    }
    healing_doc = (
        "token healing: the prompt's last token is taken back and regenerated under the constraint that "
        "it re-creates the same text (removed from the answer), so a prompt ending in indentation or a "
        "space is continued as in training instead of with one more space"
    )
    healing = {
        "completion": {
            "type": ["boolean", "null"],
            "description": f"{healing_doc}; default {'true' if token_healing else 'false'}",
        },
        "chat": {
            "type": ["boolean", "null"],
            "description": f"{healing_doc}; default false (a chat template ends on a token boundary)",
        },
    }
    usage = {
        "type": "object",
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
            "prompt_tokens_truncated": {
                "type": "integer",
                "description": "prompt tokens dropped from the front (only when the prompt was truncated; "
                "prompt_tokens counts those kept)",
            },
        },
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    }
    finish = {"type": ["string", "null"], "enum": ["stop", "length", None]}

    def response(kind: str, choice: dict) -> dict:
        return {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "object": {"const": kind},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"index": {"type": "integer"}, **choice, "finish_reason": finish},
                    },
                },
                "usage": usage,
            },
            "required": ["id", "object", "created", "model", "choices"],
        }

    nums = {"type": "array", "items": {"type": ["number", "null"]}}
    completion_resp = response(
        "text_completion",
        {
            "text": {"type": "string"},
            "logprobs": {
                "type": ["object", "null"],
                "description": "with 'logprobs': N, one entry per token of the answer (with echo, the "
                "prompt's first): log-softmax of the model's raw logits (before temperature, top-k/top-p/"
                "min-p and the repetition penalty)",
                "properties": {
                    "tokens": {"type": "array", "items": {"type": "string"}},
                    "token_logprobs": nums,
                    "top_logprobs": {
                        "type": "array",
                        "items": {"type": ["object", "null"], "additionalProperties": {"type": "number"}},
                    },
                    "text_offset": {"type": "array", "items": {"type": "integer"}},
                },
            },
        },
    )
    chat_resp = response(
        "chat.completion",
        {
            "message": {
                "type": "object",
                "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}},
            }
        },
    )
    ok_stream = {"text/event-stream": {"schema": {"type": "string"}}}
    security = [{"bearer": []}] if auth else []

    def post(summary: str, request: str, response: dict, what: str) -> dict:
        return {
            "summary": summary,
            "security": security,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}},
            },
            "responses": {
                "200": {
                    "description": f"{what} (JSON, or SSE chunks with stream=true)",
                    "headers": {
                        "X-Prompt-Truncated": {
                            "description": "prompt tokens dropped from the front (only when truncated)",
                            "schema": {"type": "integer"},
                        }
                    },
                    "content": {"application/json": {"schema": response}, **ok_stream},
                },
                **_error_responses(),
            },
        }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bitmamba-lsp OpenAI-compatible API",
            "version": "1",
            "description": "Completions and chat completions from a local ternary Mamba model. "
            "stream=true answers with server-sent events, one per generated token.",
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "Model, SIMD level, uptime and counters",
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "The loaded model",
                    "security": security,
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_error_responses(),
                    },
                }
            },
            "/v1/completions": {
                "post": post("Text completion", "CompletionRequest", completion_resp, "the completion")
            },
            "/v1/chat/completions": {"post": post("Chat completion", "ChatRequest", chat_resp, "the answer")},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                            "required": ["message", "type"],
                        }
                    },
                    "required": ["error"],
                },
                "CompletionRequest": {
                    "type": "object",
                    "required": ["prompt"],
                    "properties": {
                        "prompt": {
                            "oneOf": [
                                {"type": "string"},
                                {
                                    "type": "array",
                                    "items": {"type": "integer", "minimum": 0, "maximum": vocab - 1},
                                },
                            ]
                        },
                        **sampling,
                        "max_tokens": {
                            "type": ["integer", "null"],
                            "minimum": 0,
                            "maximum": limits.max_tokens_limit,
                            "description": "default 16; 0 only with echo (score the prompt)",
                        },
                        "token_healing": healing["completion"],
                        "logprobs": {
                            "type": ["integer", "null"],
                            "minimum": 0,
                            "maximum": MAX_LOGPROBS,
                            "description": "the log-probability of each answer token and of the N most "
                            "likely tokens at its position (OpenAI's legacy completions logprobs; the prompt's "
                            "tokens too with echo); token healing is then off by default",
                        },
                        "echo": {
                            "type": ["boolean", "null"],
                            "description": "put the prompt before the answer in 'text' (and its tokens in "
                            "'logprobs'); with max_tokens 0 a text is scored without generating",
                        },
                        "suffix": {
                            "type": ["string", "null"],
                            "description": (
                                "fill-in-the-middle: the text after the insertion point; the prompt is "
                                "<pre> prompt <suf> suffix <mid> and the answer is the middle (not "
                                "token-healed). This model declares FIM"
                                if fim
                                else "fill-in-the-middle: this model does not declare it, so a non-empty "
                                "suffix is a 400"
                            ),
                        },
                    },
                },
                "ChatRequest": {
                    "type": "object",
                    "required": ["messages"],
                    "properties": {
                        "messages": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["role", "content"],
                                "properties": {
                                    "role": {"enum": list(ROLES)},
                                    "content": {"type": "string"},
                                },
                            },
                        },
                        "max_completion_tokens": {
                            "type": ["integer", "null"],
                            "minimum": 1,
                            "maximum": limits.max_tokens_limit,
                        },
                        **sampling,
                        "token_healing": healing["chat"],
                    },
                },
            },
        },
    }
