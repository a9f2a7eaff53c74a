"""`bitmamba demo`: see the daemon work from a terminal.

Starts `bitmamba lsp` as an editor would (a subprocess speaking LSP over stdio), opens a sample
Python file, types a new function into it keystroke by keystroke, asks for an inline completion
after each keystroke and prints the ghost text with its latency. Then it accepts suggestions with
"Tab" a few times (the next suggestion is precomputed, so it is instant) and prints the daemon's
own status: latency percentiles, checkpoints and memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

SAMPLE = Path(__file__).resolve().parent / "data" / "demo_sample.py"

TYPED = '''

def word_frequencies(path):
    """Count how often each word appears in a text file."""
    counts = {}
    with open(path) as f:
        for line in f:
            for word in line.split():
                counts[word] = counts.get(word, 0) + 1
    return counts
'''

ACCEPT_PROMPT = """

class Stack:
    def __init__(self"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="type into a sample file through the daemon and print each completion")
    p.add_argument("--model", "-m", default=None, help="model (default: the shipped one)")
    p.add_argument("--threads", "-t", type=int, default=None)
    p.add_argument("--file", help="a Python file to open instead of the bundled sample")
    p.add_argument(
        "--every-key", action="store_true", help="print every keystroke (default: one line per word)"
    )
    p.add_argument("--delay-ms", type=float, default=0.0, help="pause between keystrokes, like a typist")
    p.set_defaults(func=lambda a: asyncio.run(run(a)))


class Term:
    def __init__(self) -> None:
        color = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
        self.dim = "\x1b[2m" if color else ""
        self.bold = "\x1b[1m" if color else ""
        self.green = "\x1b[32m" if color else ""
        self.reset = "\x1b[0m" if color else ""

    def ghost(self, text: str) -> str:
        shown = text.replace("\n", "⏎")
        if len(shown) > 60:
            shown = shown[:57] + "..."
        if not self.dim:  # no colours: mark the ghost text
            return f"‹{shown}›"
        return f"{self.dim}{shown}{self.reset}"

    def legend(self) -> str:
        ghost = self.ghost("ghost text")
        return (
            f"each line: what was typed so far on the line, then {ghost} (the daemon's suggestion, what Tab\n"
            f"would insert), then the time from the keystroke to the answer; {self.dim}(silent){self.reset} means the\n"
            "daemon was not sure enough to suggest anything"
        )


async def run(args: argparse.Namespace) -> int:
    from lsprotocol import types as T
    from pygls.lsp.client import LanguageClient

    t = Term()
    sample = Path(args.file or SAMPLE).read_text(encoding="utf-8")
    cmd = [sys.executable, "-m", "bitmamba_lsp.cli", "lsp", "--log-level", "WARNING"]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    client = LanguageClient("bitmamba-demo", "0.1")

    @client.feature(T.WINDOW_LOG_MESSAGE)
    def _log(params: T.LogMessageParams) -> None:  # the daemon's log lines: not the demo's business
        pass

    @client.feature(T.WINDOW_SHOW_MESSAGE)
    def _show(params: T.ShowMessageParams) -> None:
        print(f"daemon: {params.message}", file=sys.stderr)

    await client.start_io(*cmd)
    server = client._server
    drain = asyncio.create_task(_drain(server.stderr)) if server and server.stderr else None
    try:
        caps = T.ClientCapabilities(general=T.GeneralClientCapabilities(position_encodings=["utf-16"]))
        await client.initialize_async(
            T.InitializeParams(capabilities=caps, initialization_options={"debounceMs": 0, "maxTokens": 48})
        )
        client.initialized(T.InitializedParams())
        st = await _wait_ready(client)
        if st["model_state"] != "ready":
            print(f"the model did not load: {st['model_error']}", file=sys.stderr)
            return 1
        print(
            f"{t.bold}bitmamba-lsp demo{t.reset}: model {st['model']} ({st['arch']}), SIMD {st['simd']}, "
            f"{st['threads']} threads\n"
        )
        uri = "file:///demo/sample.py"
        client.text_document_did_open(
            T.DidOpenTextDocumentParams(
                T.TextDocumentItem(uri=uri, language_id="python", version=1, text=sample)
            )
        )
        lines = sample.split("\n")
        print(f"opened a {len(lines)}-line sample file; typing a new function at its end.")
        print(t.legend() + "\n")
        doc = Doc(client, uri, sample)
        latencies = await type_text(doc, TYPED, t, every_key=args.every_key, delay=args.delay_ms / 1000)
        print()
        await accept_demo(doc, t)
        st = await _status(client)
        print(f"\n{t.bold}daemon status{t.reset}")
        ft, tot = st.get("first_token_ms") or {}, st.get("total_ms") or {}
        print(f"  keystrokes typed          {len(latencies)}")
        print(
            f"  latency per request (ms)  median {_median(latencies):.1f}, "
            f"first token p50 {ft.get('p50', 0):.1f} / p90 {ft.get('p90', 0):.1f}, "
            f"full suggestion p50 {tot.get('p50', 0):.1f} / p90 {tot.get('p90', 0):.1f}"
        )
        print(
            f"  served without a model call  {st['served_from_cache']} (typed-ahead and precomputed suggestions)"
        )
        print(
            f"  checkpoints kept          {st['checkpoints']} "
            f"({st['state_memory_bytes'] / 2**20:.1f} MB, spacing {st['checkpoint_spacing']} tokens)"
        )
        print(f"  last request              {st['last']}")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_async(None), 10)
            client.exit(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.stop(), 10)
        if drain:
            drain.cancel()
    return 0


class Doc:
    """The client's copy of the document and a version counter."""

    def __init__(self, client: Any, uri: str, text: str) -> None:
        self.client, self.uri, self.text, self.version = client, uri, text, 1

    def position(self, offset: int | None = None) -> tuple[int, int]:
        before = self.text if offset is None else self.text[:offset]
        return before.count("\n"), _utf16(before[before.rfind("\n") + 1 :])

    def insert(self, s: str) -> None:
        from lsprotocol import types as T

        line, col = self.position()
        self.version += 1
        self.client.text_document_did_change(
            T.DidChangeTextDocumentParams(
                text_document=T.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
                content_changes=[
                    T.TextDocumentContentChangePartial(
                        range=T.Range(T.Position(line, col), T.Position(line, col)), text=s
                    )
                ],
            )
        )
        self.text += s

    async def suggest(self) -> tuple[str | None, float]:
        from lsprotocol import types as T

        line, col = self.position()
        t0 = time.perf_counter()
        res = await self.client.text_document_inline_completion_async(
            T.InlineCompletionParams(
                context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic),
                text_document=T.TextDocumentIdentifier(uri=self.uri),
                position=T.Position(line, col),
            )
        )
        ms = (time.perf_counter() - t0) * 1000
        if res is None:
            return None, ms
        items = res.items if hasattr(res, "items") else res
        return (items[0].insert_text if items else None), ms


async def type_text(doc: Doc, text: str, t: Term, every_key: bool, delay: float) -> list[float]:
    latencies: list[float] = []
    word_ms: list[float] = []
    for ch in text:
        doc.insert(ch)
        suggestion, ms = await doc.suggest()
        latencies.append(ms)
        word_ms.append(ms)
        if delay:
            await asyncio.sleep(delay)
        if every_key or ch in " \n(.:,=" or ch == text[-1]:
            line_text = doc.text[doc.text.rfind("\n") + 1 :]
            if ch == "\n":
                line_text = "⏎"
            ghost = t.ghost(suggestion) if suggestion else f"{t.dim}(silent){t.reset}"
            worst = max(word_ms)
            print(
                f"  {line_text}{ghost}  {t.green}{ms:5.1f} ms{t.reset} (max {worst:.1f} over {len(word_ms)} keys)"
            )
            word_ms = []
    return latencies


async def accept_demo(doc: Doc, t: Term) -> None:
    print(f"{t.bold}accepting suggestions with Tab{t.reset} (each next one was computed while you looked):")
    doc.insert(ACCEPT_PROMPT)
    for _ in range(4):
        suggestion, ms = await doc.suggest()
        if not suggestion:
            print(f"  (no suggestion, {ms:.1f} ms)")
            break
        tail = doc.text[doc.text.rfind("\n") + 1 :][-40:]
        print(f"  {tail}{t.ghost(suggestion)}  {t.green}{ms:5.1f} ms{t.reset}")
        doc.insert(suggestion)
        await asyncio.sleep(0.3)  # the user reading it; the daemon precomputes the next one meanwhile


async def _status(client: Any) -> dict[str, Any]:
    res = await client.protocol.send_request_async("bitmamba/status", None)
    return _to_dict(res)


def _to_dict(obj: Any) -> Any:
    if hasattr(obj, "_asdict"):
        return {k: _to_dict(v) for k, v in obj._asdict().items()}
    return obj


async def _wait_ready(client: Any, timeout: float = 120) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        st = await _status(client)
        if st["model_state"] not in ("loading", "not loaded") or time.monotonic() > end:
            return st
        await asyncio.sleep(0.05)


async def _drain(stream: Any) -> None:
    with contextlib.suppress(Exception):
        while await stream.readline():
            pass


def _utf16(s: str) -> int:
    return len(s) + sum(1 for c in s if ord(c) > 0xFFFF)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0
