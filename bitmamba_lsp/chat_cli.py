"""`bitmamba chat`: a conversation whose model state is kept in a file, as bitmamba.c's
`--chat --state F`.

Each turn feeds only the new turn's tokens on top of the state the last turn left, generates the
reply, and saves the state (with the conversation) to `--state FILE` after the turn; started again
with the same file, the conversation resumes without reading its history again. Input: an
interactive prompt on a terminal, or one user message per line of piped stdin.

Turn format: the HTTP server's default chat template (ChatML):
`<|im_start|>user\\n{message}<|im_end|>\\n<|im_start|>assistant\\n`, the reply ending at `<|im_end|>`;
or, with `--template`, bitmamba.c's style: the template with `%s` replaced by the message (its
default there is `Question: %s\\nDetailed answer:`), the reply ending at the template's first word
on a new line (`\\nQuestion:`) or at the end of text.

State file: `BMCHAT1\\n`, a 4-byte little-endian header length, a JSON header (the model's shape,
the state size, the messages, the tokens read), then the state's bytes. A file saved by another
model is refused with a message naming both shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"BMCHAT1\n"
CHATML_END = "<|im_end|>"


class StateFileError(ValueError):
    pass


@dataclass
class Conversation:
    messages: list[dict[str, str]] = field(default_factory=list)
    tokens: int = 0  # tokens the state has read


def model_shape(model: Any) -> dict[str, Any]:
    c = model.config
    shape = {k: getattr(c, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads") if hasattr(c, k)}
    return {"arch": model.arch, **shape, "state_bytes": model.state_bytes}


def save_state(path: Path, model: Any, state: Any, conv: Conversation) -> None:
    header = json.dumps({"model": model_shape(model), "messages": conv.messages, "tokens": conv.tokens}).encode()
    data = MAGIC + struct.pack("<I", len(header)) + header + state.to_bytes()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a crash mid-write keeps the previous turn's file


def load_state(path: Path, model: Any) -> tuple[Any, Conversation]:
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise StateFileError(f"{path}: not a bitmamba chat state file")
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start : start + n])
    except ValueError as e:
        raise StateFileError(f"{path}: corrupt header ({e})") from None
    want = model_shape(model)
    if header.get("model") != want:
        raise StateFileError(f"{path} was saved by another model ({header.get('model')}); this model is {want}")
    blob = data[start + n :]
    size = len(model.new_state().to_bytes())
    if len(blob) != size:
        raise StateFileError(f"{path}: the state has {len(blob)} bytes, this model's has {size} (truncated?)")
    try:
        state = model.state_from_bytes(blob)
    except Exception as e:  # the core's own check of the bytes
        raise StateFileError(f"{path}: the state does not load: {e}") from None
    return state, Conversation(list(header.get("messages", [])), int(header.get("tokens", 0)))


@dataclass(frozen=True)
class TurnFormat:
    template: str | None  # bitmamba.c style "...%s..."; None: ChatML

    def user(self, message: str, first: bool) -> str:
        if self.template is None:
            return f"<|im_start|>user\n{message}{CHATML_END}\n<|im_start|>assistant\n"
        return ("" if first else "\n") + self.template.replace("%s", message)

    @property
    def stops(self) -> tuple[str, ...]:
        if self.template is None:
            return (CHATML_END,)
        head = self.template.split("%s", 1)[0].strip()
        return (f"\n{head}",) if head else ()

    def close(self, ended_by_stop: bool) -> str:
        """What the state reads after the reply so the next turn starts clean."""
        if self.template is None:
            return "\n" if ended_by_stop else f"{CHATML_END}\n"
        return ""


def turn(model: Any, state: Any, fmt: TurnFormat, conv: Conversation, message: str, cfg: Any, out) -> str:
    """Feed one user message, stream the reply to `out`, leave the state after the whole turn."""
    from bitmamba_lsp.engine.decoding import StopReason, TextStream

    tok = model.require_tokenizer()
    prompt = tok.encode(fmt.user(message, first=conv.tokens == 0))
    stream = TextStream(model, state, prompt, cfg.replace(stop=fmt.stops))
    for chunk in stream:
        out.write(chunk)
        out.flush()
    out.write("\n")
    kept = stream.tokens.tokens
    reason = stream.finish_reason
    # decode() leaves the last kept token sampled but not fed when it stopped on it (a stop
    # sequence, the length limit): the state must have read every token of the reply
    if kept and reason in (StopReason.STOP, StopReason.LENGTH):
        model.step(state, kept[-1])
    tail = tok.encode(fmt.close(reason is StopReason.STOP))
    if tail:
        model.prefill(state, tail)
    conv.tokens += len(prompt) + len(kept) + len(tail)
    reply = stream.text
    conv.messages += [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]
    return reply


def cmd_chat(args: argparse.Namespace) -> int:
    from bitmamba_lsp.cli import _gen_config, _load

    model = _load(args)
    model.require_tokenizer()
    cfg = _gen_config(args)
    fmt = TurnFormat("%s" if args.no_template else args.template)
    path = Path(args.state) if args.state else None
    if path is not None and path.exists():
        try:
            state, conv = load_state(path, model)
        except StateFileError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"[resumed {path}: {len(conv.messages) // 2} turns, {conv.tokens} tokens]", file=sys.stderr)
    else:
        state, conv = model.new_state(), Conversation()
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line:
            break
        message = line.rstrip("\n")
        if not message.strip():
            continue
        before = conv.tokens
        turn(model, state, fmt, conv, message, cfg, sys.stdout)
        if args.verbose:
            print(f"[turn {len(conv.messages) // 2}: read {conv.tokens - before} tokens, {conv.tokens} in all]", file=sys.stderr)
        if path is not None:
            save_state(path, model, state, conv)
    return 0


def register(sub) -> None:
    from bitmamba_lsp.cli import _add_model, _add_sampling

    p = sub.add_parser("chat", help="chat, the model state kept in a file between runs (bitmamba.c's --chat --state)")
    _add_model(p)
    _add_sampling(p)
    p.add_argument("--state", metavar="FILE", help="save the state here after each turn, resume from it")
    p.add_argument("--template", default=None, help="bitmamba.c-style turn template with %%s (default: ChatML)")
    p.add_argument("--no-template", action="store_true", help="feed the messages as they are")
    p.add_argument("--verbose", action="store_true", help="say how many tokens each turn read")
    p.set_defaults(func=cmd_chat)
