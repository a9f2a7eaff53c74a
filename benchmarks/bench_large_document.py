"""A large file opened in the daemon, as `G` `o` in an editor does, measured over raw stdio (issue
15 items 1, 2 and 7): how long status waits after didOpen, the first completion at the end of the
file, a keystroke in another document meanwhile, `$/cancelRequest` during a long generation, RSS
with the file open and after didClose, and shutdown + exit while busy (time and exit code).

    python benchmarks/bench_large_document.py                      # 1, 2 and 5 MB, the shipped model
    python benchmarks/bench_large_document.py --model random-255m.bin --sizes 1

Writes benchmarks/results/large-document-<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_protocol_robustness import Raw, rss_mb

from bitmamba_lsp.bench import machine_info

UNIT = "def f(x):\n    return x + 1\n\n\nclass A:\n    def g(self, y):\n        return self.h(y) * 2\n\n"


def timed_reply(d: Raw, msg_id: int, method: str, params: dict, timeout: float = 300) -> float:
    t = time.perf_counter()
    d.request(msg_id, method, params)
    d.reply(msg_id, timeout)
    return (time.perf_counter() - t) * 1000


def inline(line: int, uri: str) -> dict:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": 0}, "context": {"triggerKind": 2}}


def one(model: Path | None, mb: float) -> dict:
    d = Raw(model, {"minConfidence": 0})
    try:
        d.initialize()
        for k in range(600):  # the model is loaded
            d.request(1000 + k, "bitmamba/status", {})
            if d.reply(1000 + k, 120)["result"]["model_state"] != "loading":
                break
            time.sleep(0.1)
        base = rss_mb(d.proc.pid)
        text = UNIT * int(mb * 1e6 / len(UNIT))
        last = text.count("\n")
        d.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///big.py", "languageId": "python", "version": 1, "text": text}}})
        status_ms = timed_reply(d, 3, "bitmamba/status", {})
        first_ms = timed_reply(d, 4, "textDocument/inlineCompletion", inline(last, "file:///big.py"))
        d.request(5, "bitmamba/status", {})
        last = d.reply(5)["result"]["last"]
        approximate, first_token = last.get("approximate"), last.get("first_token_ms")
        d.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///small.py", "languageId": "python", "version": 1, "text": "import os\n"}}})
        small = [timed_reply(d, 10 + i, "textDocument/inlineCompletion", inline(1, "file:///small.py")) for i in range(5)]
        # $/cancelRequest during a long generation
        d.send({"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration", "params": {"settings": {
            "maxTokens": 4000, "timeBudgetMs": 60000, "maxLines": 1000, "suffixSafety": False, "cacheModel": False}}})
        d.request(30, "textDocument/inlineCompletion", inline(last, "file:///big.py"))
        time.sleep(0.2)
        t = time.perf_counter()
        d.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 30}})
        cancelled = "error" in d.reply(30, 120)  # else it had finished before the cancel arrived
        cancel_ms = (time.perf_counter() - t) * 1000 if cancelled else None
        time.sleep(2)
        with_doc = rss_mb(d.proc.pid)
        d.send({"jsonrpc": "2.0", "method": "textDocument/didClose", "params": {"textDocument": {"uri": "file:///big.py"}}})
        d.request(40, "bitmamba/status", {})
        d.reply(40)
        time.sleep(0.5)
        after = rss_mb(d.proc.pid)
        # shutdown + exit while busy: reopen, so background prefill runs
        d.send({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": "file:///big2.py", "languageId": "python", "version": 1, "text": text}}})
        time.sleep(0.5)
        t = time.perf_counter()
        d.request(50, "shutdown")
        d.reply(50, 60)
        d.send({"jsonrpc": "2.0", "method": "exit"})
        code = d.wait(60)
        exit_ms = (time.perf_counter() - t) * 1000
        return {
            "mb": mb,
            "status_after_open_ms": status_ms,
            "first_completion_at_end_ms": first_ms,
            "first_completion_approximate": approximate,
            "first_completion_first_token_ms": first_token,
            "other_document_completion_ms": {"min": min(small), "median": statistics.median(small)},
            "cancel_answered_ms": cancel_ms,
            "rss_mb": {"before": base, "open": with_doc, "after_close": after},
            "shutdown_exit_ms": exit_ms,
            "exit_code": code,
        }
    finally:
        d.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--sizes", type=float, nargs="*", default=[1, 2, 5])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {info['cpu']} | {info['cores']} cores | SIMD {info['simd']}")
    rows = [one(args.model, mb) for mb in args.sizes]
    table = [
        "| file | status after didOpen | first completion at its end (its first token) | another document's keystroke (median) | $/cancelRequest answered | RSS before / open / after close | shutdown + exit while busy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["rss_mb"]
        table.append(
            f"| {r['mb']:g} MB | {r['status_after_open_ms']:.0f} ms | {r['first_completion_at_end_ms']:.0f} ms "
            f"({r['first_completion_first_token_ms'] or 0:.0f} ms){' (window)' if r['first_completion_approximate'] else ''} | "
            f"{r['other_document_completion_ms']['median']:.0f} ms | "
            f"{'finished first' if r['cancel_answered_ms'] is None else format(r['cancel_answered_ms'], '.0f') + ' ms'} | {m['before']:.0f} / {m['open']:.0f} / {m['after_close']:.0f} MB | "
            f"{r['shutdown_exit_ms']:.0f} ms, exit {r['exit_code']} |"
        )
    md = "\n".join(table)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.model.stem if args.model else "bitmamba-default"
    (args.out / f"large-document-{name}.json").write_text(json.dumps({"machine": info, "results": rows}, indent=2) + "\n")
    (args.out / f"large-document-{name}.md").write_text(f"Machine: {info['cpu']}, {info['cores']} cores\n\n{md}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
