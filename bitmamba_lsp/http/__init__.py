"""OpenAI-compatible HTTP API (`bitmamba serve`): /v1/completions, /v1/chat/completions with real
per-token streaming, a prompt-prefix state cache and batched decoding; for fill-in-the-middle
models also a completion `suffix` and llama.cpp's /infill (llama.vim, llama.vscode).

    app.py          Starlette routes, auth, body limits, SSE responses
    schemas.py      request validation, OpenAI-style errors, the OpenAPI document
    infill.py       /infill: llama.cpp's fields and answers, the FIM prompt and its truncation
    chat.py         chat prompt rendering (the model's template, else ChatML)
    worker.py       the generation thread: owns the model, batches decode steps
    prefixcache.py  SSM states along recent prompts, resumed by later requests sharing a prefix
    cli.py          the `serve` subcommand
"""

from __future__ import annotations

from bitmamba_lsp.http.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
