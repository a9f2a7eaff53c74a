"""Choose the daemon's suggestion defaults (mixing weight, confidence cuts) on the "tune" split of
bench_usefulness.py, by a grid search: maximise the characters gained per request (line start +
mid-line) among the settings whose shown suggestions are right at least `--min-precision` of the
time in both modes. The chosen settings are then scored on the "report" split, which the search
never saw, and both are written to benchmarks/results/tune-usefulness.json.

    python benchmarks/tune_usefulness.py                 # the default grid
    python benchmarks/tune_usefulness.py --quick         # a small grid (a smoke test)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_usefulness import CACHE, PACKAGES, cap, fetch

from bitmamba_lsp.bench import machine_info
from bitmamba_lsp.editor_eval import SCORED_MODES, markdown, run_scoring

GRID = {
    "cacheAlpha": [0.5, 2.0, 8.0],
    "minConfidence": [0.0, 0.2, 0.35],
    "minLineConfidence": [0.2, 0.35, 0.5, 0.65],
}
QUICK = {"cacheAlpha": [2.0], "minConfidence": [0.0, 0.3], "minLineConfidence": [0.3, 0.5]}


def load_split(split: str, per_package: int) -> list:
    files = []
    for name, version in PACKAGES[split]:
        files += fetch(name, version, CACHE)[0]
    return cap(files, per_package)


def objective(results: dict, min_precision: float) -> tuple[bool, float]:
    daemon = results["daemon"]
    ok = all((daemon[m]["precision"] or 0.0) >= min_precision for m in SCORED_MODES)
    return ok, sum(daemon[m]["chars_gained"] for m in SCORED_MODES)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--min-precision", type=float, default=0.40)
    ap.add_argument("--files-per-package", type=int, default=17)
    ap.add_argument("--lines-per-file", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    base = {"threads": args.threads, **({"model": args.model} if args.model else {})}
    grid = QUICK if args.quick else GRID
    info = machine_info()
    print(f"machine: {info['cpu']} | {info['cores']} cores | SIMD {info['simd']} | threads {args.threads}")
    tune = load_split("tune", args.files_per_package)
    trials = []
    t0 = time.perf_counter()
    for values in itertools.product(*grid.values()):
        opts = dict(zip(grid, values, strict=True))
        res = run_scoring(tune, {**base, **opts}, lines_per_file=args.lines_per_file, seed=0)["results"]
        ok, gained = objective(res, args.min_precision)
        d = res["daemon"]
        trials.append({"settings": opts, "meets_precision": ok, "chars_gained": gained, "daemon": d})
        print(
            f"{opts}: gained {gained:.2f} | precision {d['line_start']['precision'] or 0:.2f} / "
            f"{d['mid_line']['precision'] or 0:.2f} | exact {d['line_start']['exact']:.3f} / {d['mid_line']['exact']:.3f}"
            f" | inside offers {d['inside_line']['shown']:.2f}" + ("" if ok else "  (below the precision bar)"),
            flush=True,
        )
    eligible = [t for t in trials if t["meets_precision"]] or trials
    best = max(eligible, key=lambda t: t["chars_gained"])
    print(f"\nchosen on the tune split: {best['settings']} ({time.perf_counter() - t0:.0f} s)")
    report = run_scoring(load_split("report", args.files_per_package), {**base, **best["settings"]},
                         lines_per_file=args.lines_per_file, seed=0)
    print("\n## report split, chosen settings\n")
    print(markdown(report["results"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune-usefulness.json").write_text(json.dumps(
        {"machine": info, "grid": grid, "min_precision": args.min_precision, "trials": trials,
         "chosen": best["settings"], "report": report}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
