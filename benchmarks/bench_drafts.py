"""Speculative decoding (engine/drafts.py) on code the model never saw, measured as two factors and
their product, as the issue asks (random weights never accept a draft, so acceptance comes from the
shipped model and the cost from random models of the public shapes):

1. acceptance: the shipped model through the daemon's own completion path (editor_eval: whole
   held-out files open, the line cut at the cursor; line-start and mid-line cursors of the "report"
   split of bench_usefulness's pinned packages), with drafts of a fixed length k (no adaptation)
   and with the adaptive drafter ("untimed": without the timing gate and pauses, which on the
   shipped model's cheap steps turn drafting off; the lengths a 255M or 1B model would draft):
   tokens produced per verification step, and how many of a suggestion's model steps were
   verification steps;
2. cost: a verification step of m tokens against one plain step, at the 255M and 1B shapes
   (random weights; bitmamba_lsp.bench.bench_verification, interleaved);
3. projection: per suggestion, plain decoding takes N single steps (one per token after the
   first); with drafts P single steps plus, per verification step of k drafted tokens, c(k+1) single
   steps. The projected suggestion time is their ratio summed over the suggestions, per shape and mode.

Also measured end to end: the shipped model's suggestion time through the daemon with drafts and
without (same cursors, the passes interleaved), and decode of a 255M random model on a prompt that
never repeats, with drafts and without (the lookup's own cost).

    python benchmarks/bench_drafts.py                 # everything (downloads the pinned packages once)
    python benchmarks/bench_drafts.py --shapes 255m   # skip the 1B shape

Writes JSON and markdown to benchmarks/results/drafts.*.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_usefulness import CACHE, PACKAGES, cap, fetch

import bitmamba_lsp.lsp.hooks as hooks_module
from bitmamba_lsp.bench import bench_verification, machine_info
from bitmamba_lsp.cli import random_model_path
from bitmamba_lsp.editor_eval import run_scoring
from bitmamba_lsp.engine import load
from bitmamba_lsp.engine.decoding import GREEDY, GenerationConfig, TokenStream
from bitmamba_lsp.engine.drafts import DraftSettings

MODES = ("line_start", "mid_line")


def acceptance(files: list, options: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per suggestion of the line-start and mid-line cursors."""
    out: list[dict[str, Any]] = []

    def on_result(case: Any, res: Any) -> None:
        if case.kind in MODES and not res.cancelled:
            out.append(
                {
                    "mode": case.kind,
                    "log": [list(x) for x in res.draft_log],
                    "plain": res.plain_steps,
                    "tokens": res.tokens,
                    "decode_ms": res.total_ms - res.prefill_ms - res.queue_ms,
                    "total_ms": res.total_ms,
                }
            )

    run_scoring(files, options, lines_per_file=args.lines_per_file, seed=args.seed, on_result=on_result)
    return out


def steps_of(rec: dict[str, Any]) -> int:
    """Single steps plain decoding takes for this suggestion (one per token produced after the first)."""
    return rec["plain"] + sum(p for _, _, p in rec["log"])


def summarize(recs: list[dict[str, Any]], cost: dict[str, dict[int, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        rs = [r for r in recs if r["mode"] == mode]
        log = [x for r in rs for x in r["log"]]
        plain_steps = sum(steps_of(r) for r in rs)
        res: dict[str, Any] = {
            "suggestions": len(rs),
            "plain_steps": plain_steps,
            "verification_steps": len(log),
            "drafted": sum(k for k, _, _ in log),
            "accepted": sum(a for _, a, _ in log),
            "tokens_per_verification": (sum(p for _, _, p in log) / len(log)) if log else 0.0,
            "share_of_tokens_from_verification": (sum(p for _, _, p in log) / plain_steps) if plain_steps else 0.0,
        }
        for shape, c in cost.items():
            spec = sum(r["plain"] + sum(c.get(k + 1, c[max(c)] * (k + 1) / max(c)) for k, _, _ in r["log"]) for r in rs)
            res[f"projected_{shape}"] = spec / plain_steps if plain_steps else 1.0
        out[mode] = res
    return out


def no_repeat_decode(shape: str, repeats: int, tokens: int) -> dict[str, Any]:
    """Greedy decode on a random-token prompt (nothing repeats: the drafter only looks up), with
    drafts and without, interleaved."""
    model = load(str(random_model_path(shape)))
    rng = np.random.default_rng(5)
    prompt = rng.integers(0, model.vocab_size, 256).tolist()
    default = GenerationConfig().draft
    times: dict[int, list[float]] = {0: [], default: []}
    drafted = 0
    for r in range(repeats + 1):
        for draft in (0, default):
            st = model.new_state()
            stream = TokenStream(model, st, prompt, GREEDY.replace(max_tokens=tokens, draft=draft, stop_at_eos=False))
            next(stream)  # the prefill and the first token are not decode
            t1 = time.perf_counter()
            for _ in stream:
                pass
            if r:
                times[draft].append(time.perf_counter() - t1)
            if stream.drafter is not None:
                drafted += stream.drafter.proposed
    med = {d: statistics.median(v) for d, v in times.items()}
    return {
        "shape": shape,
        "tokens": tokens,
        "plain_median_ms": med[0] * 1e3,
        "drafts_median_ms": med[default] * 1e3,
        "ratio_median": med[default] / med[0],
        "ratio_min": min(times[default]) / min(times[0]),
        "drafted": drafted,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", type=int, nargs="*", default=[2, 3, 7])
    ap.add_argument("--shapes", nargs="*", default=["255m", "1b"])
    ap.add_argument("--files-per-package", type=int, default=10)
    ap.add_argument("--lines-per-file", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {info.get('cpu')} | {info.get('cores')} cores | SIMD {info.get('simd')} | threads {args.threads}")

    # 2. the cost of a verification step, per shape
    sizes = tuple(sorted({k + 1 for k in args.ks} | {9}))
    cost: dict[str, dict[int, float]] = {}
    costs_raw: dict[str, Any] = {}
    for shape in args.shapes:
        model = load(str(random_model_path(shape)), threads=args.threads)
        print(f"{shape}: verification cost")
        v = bench_verification(model, sizes, args.repeats, lambda s: print("  " + s))
        costs_raw[shape] = v
        cost[shape] = {1: 1.0, **{int(m): r["steps_median"] for m, r in v["sizes"].items()}}
        del model

    # 1. acceptance through the daemon's path, the shipped model
    files = []
    packages = []
    for name, version in PACKAGES["report"]:
        got, licence = fetch(name, version, args.cache)
        files += got
        packages.append({"name": name, "version": version, "licence": licence})
    files = cap(files, args.files_per_package)
    base = {"threads": args.threads}
    configs: dict[str, dict[str, Any]] = {"plain": {**base, "draftTokens": 0}}
    for k in args.ks:
        configs[f"k={k}"] = {**base, "draftTokens": k, "draftFixed": True}
    configs["adaptive"] = {**base}  # the default: draftTokens 3, adaptive, timed
    configs["adaptive, untimed"] = {**base}  # the same lengths, as a model whose steps cost more would see
    records: dict[str, list[dict[str, Any]]] = {}
    # plain and adaptive twice, interleaved with the others: their end-to-end times are compared
    order = ["plain", "adaptive", "adaptive, untimed", *[f"k={k}" for k in args.ks], "plain", "adaptive"]
    for name in order:
        t0 = time.perf_counter()
        untimed = functools.partial(DraftSettings, timed=False)
        hooks_module.DraftSettings = untimed if name == "adaptive, untimed" else DraftSettings  # type: ignore[misc]
        recs = acceptance(files, configs[name], args)
        records.setdefault(name, []).extend(recs)
        print(f"{name}: {len(recs)} suggestions in {time.perf_counter() - t0:.0f} s")

    results: dict[str, Any] = {}
    for name, recs in records.items():
        if name == "plain":
            continue
        results[name] = summarize(recs, cost)
    e2e: dict[str, Any] = {}
    for mode in MODES:
        p = [r["decode_ms"] for r in records["plain"] if r["mode"] == mode]
        a = [r["decode_ms"] for r in records["adaptive"] if r["mode"] == mode]
        e2e[mode] = {
            "plain_decode_ms_median": statistics.median(p),
            "drafts_decode_ms_median": statistics.median(a),
            "ratio_median": statistics.median(a) / statistics.median(p),
            "plain_total_ms_median": statistics.median(r["total_ms"] for r in records["plain"] if r["mode"] == mode),
            "drafts_total_ms_median": statistics.median(r["total_ms"] for r in records["adaptive"] if r["mode"] == mode),
        }
    norep = [no_repeat_decode(s, max(5, args.repeats // 2), 64) for s in args.shapes]

    lines = [
        f"Machine: {info.get('cpu')}, {info.get('cores')} cores, SIMD {info.get('simd')}, {args.threads} threads; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}. Held-out: "
        + ", ".join(f"{p['name']} {p['version']}" for p in packages)
        + f" ({len(files)} files, {args.lines_per_file} lines each, seed {args.seed}).",
        "",
        "Cost of a verification step of m tokens, in single steps (median of interleaved runs):",
        "",
        "| shape | single step ms | " + " | ".join(f"m={m}" for m in sizes) + " |",
        "|" + "---|" * (2 + len(sizes)),
    ]
    for shape, v in costs_raw.items():
        lines.append(
            f"| {shape} | {v['single_step']['median_s'] * 1e3:.2f} | "
            + " | ".join(f"{v['sizes'][str(m)]['steps_median']:.2f}" for m in sizes)
            + " |"
        )
    lines += [
        "",
        "Acceptance through the daemon (shipped model) and the projected suggestion time (with drafts / plain):",
        "",
        "| drafts | mode | suggestions | verification steps | tokens per verification | share of tokens from verification | "
        + " | ".join(f"projected {s}" for s in args.shapes)
        + " |",
        "|" + "---|" * (6 + len(args.shapes)),
    ]
    for name, res in results.items():
        for mode in MODES:
            r = res[mode]
            lines.append(
                f"| {name} | {mode} | {r['suggestions']} | {r['verification_steps']} | {r['tokens_per_verification']:.2f} | "
                f"{r['share_of_tokens_from_verification']:.0%} | "
                + " | ".join(f"{r[f'projected_{s}']:.2f}x" for s in args.shapes)
                + " |"
            )
    lines += [
        "",
        "End to end, the shipped model through the daemon (decode = total - prefill - queue; medians):",
        "",
        "| mode | plain decode ms | with drafts | ratio | plain total ms | with drafts |",
        "|---|---|---|---|---|---|",
    ]
    for mode, r in e2e.items():
        lines.append(
            f"| {mode} | {r['plain_decode_ms_median']:.2f} | {r['drafts_decode_ms_median']:.2f} | {r['ratio_median']:.2f}x | "
            f"{r['plain_total_ms_median']:.2f} | {r['drafts_total_ms_median']:.2f} |"
        )
    lines += ["", "Decode on a prompt that never repeats (64 tokens, greedy, random weights):", ""]
    lines += ["| shape | plain ms | with drafts | ratio (median) | ratio (min) | tokens drafted |", "|---|---|---|---|---|---|"]
    for r in norep:
        lines.append(
            f"| {r['shape']} | {r['plain_median_ms']:.1f} | {r['drafts_median_ms']:.1f} | {r['ratio_median']:.3f} | "
            f"{r['ratio_min']:.3f} | {r['drafted']} |"
        )
    md = "\n".join(lines)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drafts.md").write_text(md + "\n")
    (args.out / "drafts.json").write_text(
        json.dumps(
            {
                "machine": info,
                "threads": args.threads,
                "packages": packages,
                "cost": costs_raw,
                "acceptance": results,
                "end_to_end": e2e,
                "no_repeats": norep,
                "records": records,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out / 'drafts.md'} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
