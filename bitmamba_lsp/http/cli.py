"""`bitmamba serve` (also installed as `bitmamba-server`): the OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions; llama.cpp's "
        "/infill for fill-in-the-middle models)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--model", "-m", default=None, help="a .bin file, a folder, a Hub repo id, or omit for the default"
    )
    p.add_argument("--revision", default=None, help="Hub revision to pin")
    p.add_argument("--threads", "-t", type=int, default=None, help="engine threads (default: one per core)")
    p.add_argument(
        "--lm-head", choices=["int8", "f32"], default="int8", help="float output layers: int8 or fp32"
    )
    p.add_argument(
        "--lora", default=None, metavar="FILE", help="a LoRA adapter for the model (bitmamba.cpp's .lora.bin format)"
    )
    p.add_argument("--repeat-start", type=int, default=None, metavar="S", help="layer repetition (RYS): first layer")
    p.add_argument("--repeat-end", type=int, default=None, metavar="E", help="layer repetition: last layer")
    p.add_argument("--repeat-count", type=int, default=1, metavar="N", help="layer repetition: extra passes")
    p.add_argument(
        "--model-id", default=None, help="the id reported by /v1/models (default: the model's name)"
    )
    p.add_argument(
        "--model-alias",
        action="append",
        default=[],
        metavar="NAME",
        help="another accepted 'model' value (repeatable; the id, the model's name, 'default' and an "
        "omitted model are always accepted, anything else is a 404 model_not_found)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("BITMAMBA_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on /v1/* (default: $BITMAMBA_API_KEY; none = open)",
    )
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--max-prompt-tokens", type=int, default=8192, help="longest prompt in tokens")
    p.add_argument(
        "--prompt-overflow",
        choices=["truncate", "error"],
        default="truncate",
        help="a longer prompt: keep its last --max-prompt-tokens tokens (truncate, the default; reported "
        "in usage.prompt_tokens_truncated) or answer 400 (error); a request's prompt_overflow overrides",
    )
    p.add_argument(
        "--no-token-healing",
        dest="token_healing",
        action="store_false",
        help="do not token-heal /v1/completions prompts by default (a request's token_healing overrides)",
    )
    p.add_argument(
        "--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask for"
    )
    p.add_argument(
        "--default-max-tokens", type=int, default=256, help="max_tokens of chat requests that omit it"
    )
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together in one batched step")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond the batch (then 429)")
    p.add_argument(
        "--cache-mb", type=float, default=256.0, help="prompt-prefix state cache budget (0 disables)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_warning(host: str, api_key: str | None) -> str | None:
    if is_loopback(host):
        return None
    msg = (
        f"warning: binding to {host}: the API is reachable from other machines, and it runs a model on "
        "this CPU for anyone who can connect."
    )
    if not api_key:
        msg += " No API key is set: pass --api-key or set BITMAMBA_API_KEY."
    return msg


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from bitmamba_lsp.engine import load
    from bitmamba_lsp.http.app import ServerSettings, create_app
    from bitmamba_lsp.http.schemas import Limits

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(levelname)s %(name)s: %(message)s"
    )
    warning = bind_warning(args.host, args.api_key)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    from bitmamba_lsp.cli import repeat_of

    model = load(
        args.model,
        threads=args.threads,
        revision=args.revision,
        lm_head=args.lm_head,
        repeat=repeat_of(args),
        lora=args.lora,
    )
    if model.tokenizer is None:
        print(f"error: model {model.name} has no tokenizer; the HTTP API needs text", file=sys.stderr)
        return 1
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
    )
    settings = ServerSettings(
        model_id=args.model_id,
        api_key=args.api_key,
        limits=limits,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        cache_mb=args.cache_mb,
        model_aliases=tuple(args.model_alias),
        prompt_overflow=args.prompt_overflow,
        token_healing=args.token_healing,
    )
    app = create_app(model, settings)
    server = app.state.server
    print(
        f"bitmamba serve: model {server.model_id} ({model.kernel_level}, {model.threads} threads, "
        f"chat template: {server.chat.source}) on http://{args.host}:{args.port}/v1"
        + (", fill-in-the-middle on /infill" if server.fim is not None else "")
        + (" (API key required)" if args.api_key else ""),
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
