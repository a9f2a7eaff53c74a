"""Helpers for driving the daemon through a real LSP client (pytest-lsp / pygls) and for computing,
independently of the daemon, the suggestion it should return."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from lsprotocol import types as T
from pytest_lsp import LanguageClient, client_capabilities, make_test_lsp_client

from bitmamba_lsp.lsp.completion import CursorContext, StopRules, finalize

SERVER = [sys.executable, "-m", "bitmamba_lsp.cli", "lsp", "--threads", "1"]
# `expected_suggestion` is the model alone with the stop rules and token healing: tests that compare
# the daemon with it turn off what it does not model (the workspace memory, whole-line candidates,
# the suffix-safety rules; each has its own tests).
PLAIN = {"cacheModel": False, "lineCandidates": False, "suffixSafety": False, "minConfidence": 0, "lineBranches": 0}
# Tests of editor mechanics (ghost text, accepting a word or a line) need suggestions to be shown:
# "show everything" (the abstention has its own tests).
SHOW_ALL = {"minConfidence": 0}


async def start_server(
    model: str | Path | None,
    *,
    client: str = "neovim",
    encodings: list[str] | None = None,
    options: dict[str, Any] | None = None,
    wait: bool = True,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[LanguageClient, T.InitializeResult]:
    """`command` replaces `bitmamba lsp --threads 1` (e.g. the `bitmamba-lsp --warm` launcher)."""
    lc = make_test_lsp_client()
    cmd = [*(command or SERVER)] + (["--model", str(model)] if model is not None else [])
    await lc.start_io(*cmd, **({"env": env} if env is not None else {}))
    caps = client_capabilities(client)
    if encodings is not None:  # [] : the client says nothing (utf-16 is then the only choice)
        caps.general = T.GeneralClientCapabilities(position_encodings=encodings or None)
    opts = {"debounceMs": 0, "speculative": False, **(options or {})}
    result = await lc.initialize_session(T.InitializeParams(capabilities=caps, initialization_options=opts))
    if wait:
        await wait_for_model(lc)
    return lc, result


async def raw_request(lc: LanguageClient, method: str, params: Any, timeout: float = 30) -> Any:
    """Send a request with hand-written (possibly invalid) JSON params, as a buggy client might."""
    from concurrent.futures import Future

    msg_id = f"raw-{uuid.uuid4().hex[:8]}"
    fut: Future[Any] = Future()
    lc.protocol._request_futures[msg_id] = fut
    lc.protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
    return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)


async def status(lc: LanguageClient) -> dict[str, Any]:
    res = await lc.protocol.send_request_async("bitmamba/status", None)
    return to_dict(res)


def to_dict(obj: Any) -> Any:
    if hasattr(obj, "_asdict"):
        return {k: to_dict(v) for k, v in obj._asdict().items()}
    return obj


async def wait_for_model(lc: LanguageClient, timeout: float = 60) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        st = await status(lc)
        if st["model_state"] not in ("loading", "not loaded"):
            return st
        await asyncio.sleep(0.02)
    raise TimeoutError("model did not load")


async def stop_server(lc: LanguageClient) -> int | None:
    await lc.shutdown_session()
    await lc.stop()
    return lc._server.returncode if lc._server else None


def open_doc(lc: LanguageClient, uri: str, text: str, version: int = 1) -> None:
    lc.text_document_did_open(
        T.DidOpenTextDocumentParams(
            T.TextDocumentItem(uri=uri, language_id="python", version=version, text=text)
        )
    )


def change(
    lc: LanguageClient, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str
) -> None:
    lc.text_document_did_change(
        T.DidChangeTextDocumentParams(
            text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[
                T.TextDocumentContentChangePartial(
                    range=T.Range(T.Position(*start), T.Position(*end)), text=text
                )
            ],
        )
    )


def inline_params(uri: str, line: int, character: int) -> T.InlineCompletionParams:
    return T.InlineCompletionParams(
        context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic),
        text_document=T.TextDocumentIdentifier(uri=uri),
        position=T.Position(line=line, character=character),
    )


async def inline(lc: LanguageClient, uri: str, line: int, character: int) -> T.InlineCompletionItem | None:
    res = await lc.text_document_inline_completion_async(inline_params(uri, line, character))
    if res is None:
        return None
    items = res.items if isinstance(res, T.InlineCompletionList) else res
    assert len(items) == 1
    return items[0]


_ALLOWED: dict[tuple[int, bytes], list[int]] = {}


def _fitting(tok: Any, eos: int | None, rest: bytes) -> list[int]:
    """Tokens that start with `rest` or are a (non-empty) proper prefix of it."""
    key = (id(tok), rest)
    if key not in _ALLOWED:
        blank = rest[-1:] in (b" ", b"\t")  # ends with blanks: no more blanks right after it
        pre, longer = [], []
        for i in range(tok.vocab_size):
            b = tok.token_bytes(i)
            if i == eos or not b:
                continue
            if len(b) < len(rest) and rest.startswith(b):
                pre.append(i)
            elif b.startswith(rest) and (
                not blank or (len(b) > len(rest) and b[len(rest) : len(rest) + 1] not in (b" ", b"\t"))
            ):
                longer.append(i)
        if blank and not pre and not longer:  # nothing fits the stricter rule: the plain one
            longer = [i for i in range(tok.vocab_size) if i != eos and tok.token_bytes(i).startswith(rest)]
        _ALLOWED[key] = sorted(pre + longer)
    return _ALLOWED[key]


def reference_fim_ids(model: Any, text: str, offset: int, suffix_lines: int, suffix_tokens: int) -> list[int]:
    """A FIM model's prompt, built from the text alone: <pre> the lines above the cursor's line
    <suf> the rest of the line and `suffix_lines` lines below (at most `suffix_tokens` tokens)
    <mid> the typed part of the line."""
    tok, spec = model.tokenizer, model.fim
    line_start = text.rfind("\n", 0, offset) + 1
    lines = text[offset:].split("\n")
    after = "\n".join(lines[: suffix_lines + 1]) + ("\n" if len(lines) > suffix_lines + 1 else "")
    return [
        spec.prefix_id,
        *tok.encode(text[:line_start]),
        spec.suffix_id,
        *tok.encode(after)[:suffix_tokens],
        spec.middle_id,
        *tok.encode(text[line_start:offset]),
    ]


def expected_suggestion(
    model: Any,
    text: str,
    offset: int,
    max_tokens: int,
    multiline: bool = True,
    healing: bool = True,
    fim: tuple[int, int] | None = None,
    context: list[int] | None = None,
) -> str | None:
    """What the daemon must suggest at `offset` (greedy), computed from scratch with the engine:
    a fresh prefill of the text before the cursor, token-by-token greedy decoding, the stop rules.
    Token healing: the prompt's last token is dropped (with the earlier pieces of a word it ends,
    or the blank tokens before a blank one),
    generation must reproduce its bytes (each
    token starting with what is left of them, or being a prefix of it), and those bytes are not
    part of the suggestion. `fim` = (suffix lines, suffix tokens): the prompt of a FIM model
    (reference_fim_ids); a FIM sentinel ends the suggestion like the end of text. `context`: token
    ids before the prompt (context chunks)."""
    before = text[:offset]
    ctx = CursorContext.at(text, offset, multiline=multiline, safety=False)  # PLAIN: suffixSafety off
    tok = model.tokenizer
    stops = {model.eos_id}
    if fim is not None:
        ids = reference_fim_ids(model, text, offset, *fim)
        stops |= set(model.fim.sentinel_ids)
    else:
        ids = tok.encode(before) or [model.eos_id]
    ids = [*(context or []), *ids]
    heal, rest = "", b""

    def text_of(t: int) -> str:
        if t in stops or t in tok.special_ids:
            return ""
        try:
            return tok.token_bytes(t).decode("utf-8")
        except UnicodeDecodeError:
            return ""

    def wordy(x: str) -> bool:
        return x != "" and all(c.isalnum() or c == "_" for c in x)

    if healing and len(ids) >= 2 and text_of(ids[-1]):
        # the last token; and while it is inside a word, the word's earlier pieces (up to 4 tokens,
        # 32 characters, one token always stays; a piece with a space before it starts the word)
        k, heal = 1, text_of(ids[-1])
        while k < 4 and k + 1 < len(ids) and wordy(heal):
            p = text_of(ids[-1 - k])
            if not (wordy(p) or (p[:1] == " " and wordy(p[1:]))) or len(p) + len(heal) > 32:
                break
            k, heal = k + 1, p + heal
            if p[:1] == " ":
                break
        # and while it is all blanks (blank lines, indentation), the blank tokens before it
        while k < 4 and k + 1 < len(ids) and not heal.strip():
            p = text_of(ids[-1 - k])
            if p == "" or p.strip() or len(p) + len(heal) > 32:
                break
            k, heal = k + 1, p + heal
        ids, rest = ids[:-k], heal.encode("utf-8")
    state = model.new_state()
    logits = model.prefill(state, ids)
    rules, dec = StopRules(ctx), tok.stream_decoder()
    by_rules = False
    guard = False  # the healed bytes ended in indentation, reproduced exactly: no more of it next
    for i in range(max_tokens):
        if rest:
            allowed = _fitting(tok, model.eos_id, rest)
            t = allowed[int(np.argmax(logits[allowed]))]
            b = tok.token_bytes(t)
            guard = b == rest and rest[-1:] in (b" ", b"\t")
            rest = rest[len(b) :] if rest.startswith(b) and len(b) < len(rest) else b""
        elif guard:
            ok = [j for j in range(len(logits)) if tok.token_bytes(j)[:1] not in (b" ", b"\t")]
            t = ok[int(np.argmax(logits[ok]))]
            guard = False
        else:
            t = int(np.argmax(logits))
        if t in stops:
            break
        piece = dec.feed(t)
        if heal:
            assert piece.startswith(heal[: len(piece)])
            cut = min(len(heal), len(piece))
            piece, heal = piece[cut:], heal[cut:]
        if rules.feed(piece):
            by_rules = True
            break
        if i + 1 < max_tokens:
            logits = model.step(state, t)
    if not by_rules:
        tail = dec.flush()
        rules.feed(tail[len(heal) :] if heal else tail)
        rules.finish()
    s = finalize(rules.text, ctx)
    return None if s is None else s.insert_text
