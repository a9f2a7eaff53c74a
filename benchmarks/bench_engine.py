#!/usr/bin/env python3
"""Engine throughput on a random-weight model of a public shape (default: BitMamba-2 255M): the
whole table of the speed targets, the roofline, and a plot.

    python benchmarks/bench_engine.py                     # 255m, threads 1 and 2
    python benchmarks/bench_engine.py --shape 1b --threads 2 --repeats 10

Measures, per thread count: greedy decode with the full lm_head, sampled decode (temperature +
top-k/top-p/min-p + repetition penalty), prefill of T tokens (batched), batched decode of several
sequences (aggregate tok/s), the per-stage cost of a token outside the matrix products, the
sustained read bandwidth over a buffer the size of one token's weights (the decode roofline), and,
in a fresh process, cold start (load + first token, page cache warm) and RSS after load.
Prints machine info, min/best and median over repeated runs; writes JSON, a markdown table and a
PNG plot (tok/s against thread count and the roofline; needs matplotlib) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bitmamba_lsp import _core
from bitmamba_lsp.bench import bench_model, machine_info, markdown_table, verify_markdown
from bitmamba_lsp.cli import random_model_path

FRESH = r"""
import json, sys, time
t0 = time.perf_counter()
from bitmamba_lsp.bench import rss_mb as rss
from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin
t1 = time.perf_counter()
base = rss()
t2 = time.perf_counter()
m = load_bin(sys.argv[1], threads=int(sys.argv[2]))
s = m.new_state()
m.step(s, 0)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "cold_start_s": t3 - t2, "rss_before_mb": base, "rss_after_mb": rss()}))
"""


def fresh_process(path: str, threads: int, repeats: int) -> dict[str, float]:
    """Cold start and RSS as a user's process sees them (best of `repeats` fresh interpreters)."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", FRESH, path, str(threads)], capture_output=True, text=True, check=True
        )
        runs.append(json.loads(out.stdout))
    runs.sort(key=lambda r: r["cold_start_s"])
    return {
        "cold_start_best_ms": runs[0]["cold_start_s"] * 1000,
        "cold_start_median_ms": runs[len(runs) // 2]["cold_start_s"] * 1000,
        "rss_after_load_mb": max(r["rss_after_mb"] for r in runs),
        "rss_python_numpy_mb": max(r["rss_before_mb"] for r in runs),
    }


def plot(results: list[dict], roof: dict[int, dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; pip install 'bitmamba-lsp[bench]')")
        return False
    th = [r["threads"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [
        ("decode (greedy)", [r["decode"]["median_rate"] for r in results], "o-"),
        ("decode (sampled)", [r["decode_sampled"]["median_rate"] for r in results], "s--"),
    ]
    for T in results[0]["prefill"]:
        series.append((f"prefill T={T}", [r["prefill"][T]["median_rate"] for r in results], "^-"))
    for b in results[0].get("batch", {}):
        if b != "1":
            series.append((f"batched decode x{b} (aggregate)", [r["batch"][b]["median_rate"] for r in results], "d:"))
    for label, ys, style in series:
        ax.plot(th, ys, style, label=label)
    roof_y = [roof[t]["decode_roofline_tok_s"] for t in th]
    ax.plot(th, roof_y, "k-", lw=2.5, alpha=0.35, label="decode roofline (read bandwidth / weight bytes)")
    ax.set_xlabel("threads")
    ax.set_ylabel("tokens / s (median)")
    ax.set_xticks(th)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="255m")
    ap.add_argument("--model", help="use this model file instead of a random one")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prefill", type=int, nargs="*", default=[2, 4, 16, 64, 512])
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument(
        "--verify", type=int, nargs="*", default=[2, 3, 4, 5, 8, 9],
        help="speculative decoding: batched verification steps of these token counts, against one step",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    path = args.model or str(random_model_path(args.shape))
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['system']}, SIMD {info['simd']}")
    results, roof = [], {}
    for t in args.threads:
        print(f"threads={t}")
        r = bench_model(
            path,
            threads=t,
            repeats=args.repeats,
            decode_tokens=args.decode_tokens,
            prefill_lengths=tuple(args.prefill),
            batch_sizes=tuple(args.batch),
            verify_sizes=tuple(args.verify),
            log=lambda s: print("  " + s),
        )
        fresh = fresh_process(path, t, args.repeats)
        r.update(fresh)
        r["cold_start_s"] = fresh["cold_start_median_ms"] / 1000
        bw = _core.read_bandwidth(int(r["weight_bytes"]), t, 15)
        roof[t] = {
            "read_gbs_best": bw["best_gbs"],
            "read_gbs_median": bw["median_gbs"],
            "decode_roofline_tok_s": bw["median_gbs"] * 1e9 / r["weight_bytes"],
        }
        r["roofline"] = roof[t]
        print(
            f"  fresh process: cold start {fresh['cold_start_best_ms']:.1f} ms best, "
            f"{fresh['cold_start_median_ms']:.1f} median; RSS after load {fresh['rss_after_load_mb']:.0f} MB "
            f"(python + numpy {fresh['rss_python_numpy_mb']:.0f} MB)"
        )
        print(
            f"  read bandwidth over {r['weight_bytes'] / 1e6:.1f} MB: {bw['median_gbs']:.1f} GB/s median "
            f"-> decode roofline {roof[t]['decode_roofline_tok_s']:.0f} tok/s "
            f"(decode at {r['decode']['median_rate'] / roof[t]['decode_roofline_tok_s']:.0%})"
        )
        results.append(r)
    table = markdown_table(results)
    roof_line = ", ".join(
        f"{t} thread{'s' if t > 1 else ''}: {v['read_gbs_median']:.1f} GB/s -> {v['decode_roofline_tok_s']:.0f} tok/s"
        for t, v in roof.items()
    )
    print(table)
    print(f"roofline: {roof_line}")
    vtable = verify_markdown(results)
    if vtable:
        print("speculative decoding, a verification step of m tokens in single steps (median; min):")
        print(vtable)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"engine-{Path(path).stem if args.model else args.shape}"
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    (out / f"{stem}.json").write_text(json.dumps({"when": when, "machine": info, "results": results}, indent=2))
    title = f"{stem}: {info['cpu']}, {info['cores']} cores, SIMD {info['simd']} ({when})"
    png = out / f"{stem}.png"
    plotted = plot(results, roof, png, title)
    (out / f"{stem}.md").write_text(
        f"Machine: {info['cpu']}, {info['cores']} cores, SIMD {info['simd']}; {when}\n\n{table}\n\n"
        f"Decode roofline (sustained read bandwidth / {results[0]['weight_bytes'] / 1e6:.1f} MB of weights): "
        f"{roof_line}\n" + (f"\n![tok/s against threads]({png.name})\n" if plotted else "")
        + (f"\nSpeculative decoding: a verification step of m tokens, in single steps (median; min):\n\n{vtable}\n" if vtable else "")
    )
    print(f"wrote {out / stem}.json/.md" + (" and .png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
