#!/usr/bin/env python3
"""Sampled decode against greedy decode, per sampler setting (issue 18: sampling at greedy's cost).

Each setting of `bitmamba_lsp.bench.SAMPLING_CONFIGS` (the reference CLI's, each filter alone, the
HTTP API's default of temperature 1 and nothing else) decodes the same number of tokens as greedy
decode, in interleaved rounds (all settings once per round, the order reversed every other round);
the figure is the per-round ratio of a setting's time to greedy's (median and range), which the
noise of a shared host affects far less than a ratio of separate runs.

    python benchmarks/bench_sampling.py                        # random 255M model, threads 1 and 2
    python benchmarks/bench_sampling.py --model m.bin --threads 2 --rounds 20

Floor (issue 18): sampled decode within 5 % of greedy. Prints the machine and writes
benchmarks/results/sampling-<shape>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bitmamba_lsp.bench import bench_sampling, machine_info, sampling_markdown
from bitmamba_lsp.cli import random_model_path
from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="255m")
    ap.add_argument("--model", help="use this model file instead of a random one")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    path = args.model or str(random_model_path(args.shape))
    info = machine_info()
    print(json.dumps(info))
    results = []
    for t in args.threads:
        model = load_bin(path, threads=t)
        r = bench_sampling(model, tokens=args.tokens, rounds=args.rounds)
        results.append(r)
        for name, s in r["settings"].items():
            v = s["vs_greedy"]
            print(f"threads {t}: {name}: {s['median_rate']:.1f} tok/s median, {(v['median'] - 1) * 100:+.1f} % of greedy's time per round")
    md = sampling_markdown(results)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = Path(args.model).stem if args.model else args.shape
    (out / f"sampling-{tag}.json").write_text(json.dumps({"machine": info, "model": path, "results": results}, indent=2))
    head = f"Machine: {info.get('cpu', '?')}; model {path}; {args.tokens} tokens a run, {args.rounds} interleaved rounds.\n\n"
    (out / f"sampling-{tag}.md").write_text(head + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
