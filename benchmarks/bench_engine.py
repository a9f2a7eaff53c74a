#!/usr/bin/env python3
"""Engine throughput on a random-weight model of a public shape (default: BitMamba-2 255M).

    python benchmarks/bench_engine.py                     # 255m, threads 1 and 2
    python benchmarks/bench_engine.py --shape 1b --threads 2 --repeats 10

Prints machine info, thread count, min and median over repeated runs; writes JSON and a markdown
table to benchmarks/results/ (named after the shape) so runs can be compared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bitmamba_lsp.bench import bench_model, machine_info, markdown_table
from bitmamba_lsp.cli import random_model_path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="255m")
    ap.add_argument("--model", help="use this model file instead of a random one")
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prefill", type=int, nargs="*", default=[64, 512])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    path = args.model or str(random_model_path(args.shape))
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['system']}, SIMD {info['simd']}")
    results = []
    for t in args.threads:
        print(f"threads={t}")
        results.append(
            bench_model(
                path,
                threads=t,
                repeats=args.repeats,
                decode_tokens=args.decode_tokens,
                prefill_lengths=tuple(args.prefill),
                log=lambda s: print("  " + s),
            )
        )
    table = markdown_table(results)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"engine-{Path(path).stem if args.model else args.shape}"
    (out / f"{stem}.json").write_text(
        json.dumps({"when": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results}, indent=2)
    )
    (out / f"{stem}.md").write_text(
        f"Machine: {info['cpu']}, {info['cores']} cores, SIMD {info['simd']}\n\n{table}\n"
    )
    print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
