#!/usr/bin/env python3
"""Daemon latency: a single-character edit, then a completion, in documents of 1k, 10k and 100k tokens.

For each document size the document is opened (and prefilled in the background, as the daemon
does), then the user "types" at the end of a line in the middle of the document: each keystroke is
an edit followed by an inline-completion request at the cursor. Measured from the moment the edit
is applied:
  - first token: the first generated token of the completion is available;
  - full: the whole (post-processed) suggestion is ready.
The same is then run without speculative decoding (`draft_tokens` 0: what drafting costs where the
model never accepts a draft, as random weights never do; bench_drafts.py measures what it gains)
and with the incremental state disabled (every request re-prefills the whole prefix), the baseline
the checkpoints are there to beat. A third scenario, "jump", asks for a
completion at a random place not visited before (how far the nearest document checkpoint is).

The path measured is the daemon's own: documents.py (incremental tokens) -> worker.py
(checkpoints, prefill, generation, stop rules); bench_large_document.py times keystrokes through
the daemon over stdio (JSON-RPC transport and the event loop included).

    python benchmarks/bench_latency.py                         # 255M-shaped random model
    python benchmarks/bench_latency.py --shape tiny --sizes 1000 10000

Writes benchmarks/results/latency-<shape>.json and .md (min, median, p90 over repeats).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bitmamba_lsp.bench import machine_info, rss_mb
from bitmamba_lsp.cli import random_model_path
from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin
from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer
from bitmamba_lsp.lsp.documents import TrackedDocument, clean_start_table
from bitmamba_lsp.lsp.jobs import job_at
from bitmamba_lsp.lsp.settings import Settings
from bitmamba_lsp.lsp.worker import ModelWorker

SAMPLE = (Path(__file__).resolve().parents[1] / "bitmamba_lsp" / "data" / "demo_sample.py").read_text()
KEYS = "result = compute(value, 42)  # x"


def make_document(tok, n_tokens: int, seed: int = 0) -> str:
    """Python-like text of about n_tokens tokens (the sample module, varied)."""
    rng = random.Random(seed)
    parts, count, i = [], 0, 0
    while count < n_tokens:
        chunk = SAMPLE.replace("TextStats", f"TextStats{i}").replace("words(", f"words{rng.randint(0, 999)}(")
        parts.append(chunk)
        count += len(tok.encode(chunk))
        i += 1
    text = "".join(parts)
    ids, offs = tok.encode_with_offsets(text)
    return text[: offs[n_tokens]] if len(ids) > n_tokens else text


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def summarize(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "p90": pct(xs, 90), "n": len(xs)}


def run_size(
    model, tok, clean, n_tokens: int, repeats: int, incremental: bool, max_tokens: int, spacing: int, extra: dict
) -> dict:
    settings = Settings(
        max_tokens=max_tokens,
        debounce_ms=0,
        time_budget_ms=600_000,
        incremental_state=incremental,
        checkpoint_spacing=spacing,
        speculative=False,
        **extra,
    )
    worker = ModelWorker(settings)
    worker.load(lambda: model).result()
    uri = f"file:///bench_{n_tokens}.py"
    text = make_document(tok, n_tokens)
    doc = TrackedDocument(uri, text, 1, tok, clean)
    t0 = time.perf_counter()
    worker.doc_opened(uri, doc.ids)
    if incremental:
        worker.wait_idle(timeout=3600)
    open_s = time.perf_counter() - t0
    # the cursor: the end of the line nearest the middle of the document
    offset = doc.text.find("\n", len(doc.text) // 2)
    first, full, fed, edit_ms = [], [], [], []

    def request(at: int) -> tuple[float, object]:
        job = job_at(uri, doc, at, settings)  # as the session builds it (no workspace here)
        return time.perf_counter(), worker.complete(job).result()

    request(offset)  # the first request at a new place warms the cursor checkpoints
    if incremental:  # (or, farther than a request's budget from a checkpoint, asks background
        worker.wait_idle(timeout=600)  # prefill for one there: the user looks before typing)
    for i in range(repeats):
        ch = KEYS[i % len(KEYS)]
        t_edit = time.perf_counter()
        e = doc.replace(offset, offset, ch)  # the edit, as didChange applies it
        worker.doc_edited(uri, e.first_changed_token, doc.ids, doc.shared_before(e.new_end))
        offset += 1
        t_req, res = request(offset)
        edit_ms.append((t_req - t_edit) * 1000)
        first.append((res.first_token_at - t_edit) * 1000)
        full.append((res.first_token_at - t_edit) * 1000 + (res.total_ms - res.first_token_ms))
        fed.append(res.fed)
    # jumps: completions at random places never visited (the nearest document checkpoint decides)
    jumps = []
    if incremental:
        rng = random.Random(1)
        for _ in range(min(repeats, 20)):
            at = doc.text.find("\n", rng.randrange(len(doc.text) // 4, len(doc.text)))
            at = len(doc.text) if at < 0 else at
            t_req, res = request(at)
            jumps.append((res.first_token_at - t_req) * 1000)
    store = worker.store
    out = {
        "tokens": len(doc.ids),
        "incremental": incremental,
        "open_prefill_s": open_s,
        "first_token_ms": summarize(first),
        "full_ms": summarize(full),
        "edit_and_prompt_ms": summarize(edit_ms),
        "prompt_tokens_fed_median": statistics.median(fed),
        "jump_first_token_ms": summarize(jumps) if jumps else None,
        "checkpoints": sum(d.count() for d in store.docs.values()),
        "state_memory_mb": store.nbytes() / 2**20,
        "spacing": store.spacing,
    }
    worker.shutdown()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="255m")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--baseline-repeats", type=int, default=3, help="repeats with the incremental state disabled")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--spacing", type=int, default=0, help="checkpoint spacing (0: the daemon's default)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-draft-compare", action="store_true", help="skip the run without speculative decoding")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a daemon setting (snake_case)")
    ap.add_argument("--tag", default="", help="suffix for the result file names")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    extra = {k: json.loads(v) for k, _, v in (kv.partition("=") for kv in args.set)}

    tok = bundled_text_tokenizer()
    clean = clean_start_table(tok)
    path = random_model_path(args.shape)
    model = load_bin(path, threads=args.threads)
    model.tokenizer = tok
    if model.vocab_size != tok.vocab_size:
        print("the model must have GPT-2's vocabulary", file=sys.stderr)
        return 2
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, SIMD {info['simd']}; model {path.name}, {model.threads} threads")
    results = []
    modes = [("incremental", True, {})]
    if not args.no_draft_compare:
        modes.append(("incremental, no drafts", True, {"draft_tokens": 0}))
    if not args.no_baseline:
        modes.append(("full re-prefill", False, {}))
    for n in args.sizes:
        for label, incremental, more in modes:
            reps = args.repeats if incremental else args.baseline_repeats
            r = run_size(model, tok, clean, n, reps, incremental, args.max_tokens, args.spacing, {**extra, **more})
            r["mode"] = label
            results.append(r)
            ft, fu = r["first_token_ms"], r["full_ms"]
            jump = r["jump_first_token_ms"]
            print(
                f"{n:>7} tokens {label:>22}: first token "
                f"median {ft['median']:8.1f} ms (min {ft['min']:.1f}, p90 {ft['p90']:.1f}); full median "
                f"{fu['median']:8.1f} ms; fed {r['prompt_tokens_fed_median']:.0f} tokens"
                + (f"; jump median {jump['median']:.1f} ms" if jump else "")
                + f"; {r['checkpoints']} checkpoints, {r['state_memory_mb']:.1f} MB"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"latency-{args.shape}" + (f"-s{args.spacing}" if args.spacing else "") + args.tag
    payload = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": info,
        "model": str(path),
        "threads": model.threads,
        "max_tokens": args.max_tokens,
        "settings": extra,
        "rss_mb": rss_mb(),
        "results": results,
    }
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2))
    rows = [
        "| document | mode | first token ms (min / median / p90) | full ms (median) | tokens fed | jump ms (median) | checkpoints (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ft, fu, j = r["first_token_ms"], r["full_ms"], r["jump_first_token_ms"]
        jump = "" if j is None else f"{j['median']:.1f}"
        rows.append(
            f"| {r['tokens']} tokens | {r['mode']} | "
            f"{ft['min']:.1f} / {ft['median']:.1f} / {ft['p90']:.1f} | {fu['median']:.1f} | "
            f"{r['prompt_tokens_fed_median']:.0f} | {jump} | "
            f"{r['checkpoints']} ({r['state_memory_mb']:.0f}) |"
        )
    md = f"Machine: {info['cpu']}, {info['cores']} cores, SIMD {info['simd']}, {model.threads} threads, model {path.name}, max {args.max_tokens} tokens\n\n" + "\n".join(rows) + "\n"
    (out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
