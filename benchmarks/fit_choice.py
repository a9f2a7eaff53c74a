"""Fit the calibration of the daemon's "what to show" choice (bitmamba_lsp/lsp/choice.py) on the
"tune" split of bench_usefulness.py, choose the threshold, and score both on the "report" split.

1. Run the daemon over the tune split, recording every option it weighed (the greedy line's
   prefixes, the runners-up's lines, the whole-line candidates) with its features and whether the
   truth starts with it.
2. Choose the L2 strength and the threshold (minConfidence) by leave-one-package-out within the
   tune split: fit a logistic regression (Newton's method) on two packages, replay the choice
   (the option with the largest expected utility, p x (characters + a bonus for a whole line),
   among p >= threshold) on the third, pool the three held-out packages; keep the pair with the
   most realised utility per request among those whose shown suggestions are right >=
   --min-precision of the time at line starts and mid-line. (The
   calibration must carry over to code it was not fitted on: that is what the report split asks.)
3. Fit the weights on the whole tune split with that L2 strength; write them and the threshold to
   bitmamba_lsp/data/choice.json; score the report split once with the real daemon.

    python benchmarks/fit_choice.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_usefulness import CACHE, PACKAGES, cap, fetch

from bitmamba_lsp.bench import machine_info
from bitmamba_lsp.editor_eval import SCORED_MODES, markdown, run_scoring
from bitmamba_lsp.lsp import choice

WEIGHTS_FILE = Path(choice.__file__).resolve().parent.parent / "data" / "choice.json"


def load_split(split: str, per_package: int) -> list:
    files = []
    for name, version in PACKAGES[split]:
        files += fetch(name, version, CACHE)[0]
    return cap(files, per_package)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> np.ndarray:
    """Weights of a logistic regression (Newton's method; no penalty on the bias, column 0)."""
    w = np.zeros(x.shape[1])
    reg = np.full(x.shape[1], l2)
    reg[0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        grad = x.T @ (p - y) + reg * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def replay(opts: list[dict], cases: list[dict], p: np.ndarray, threshold: float) -> dict[str, dict[str, float]]:
    """What the daemon would show with these probabilities: per case, the option with the largest
    p x characters among p >= threshold; scored like editor_eval (precision, chars gained)."""
    best: dict[str, tuple[float, dict]] = {}
    bonus = choice.WHOLE_LINE_BONUS
    for r, pr in zip(opts, p, strict=True):
        if pr >= threshold:
            gain = pr * (len(r["text"]) + bonus * r["features"]["whole_line"])  # choice.utility
            if r["case"] not in best or gain > best[r["case"]][0]:
                best[r["case"]] = (gain, r)
    out = {}
    for mode in SCORED_MODES:
        ids = [c["case"] for c in cases if c["kind"] == mode]
        shown = [best[i][1] for i in ids if i in best]
        right = [r for r in shown if r["right"]]
        whole = [r for r in right if r["features"]["whole_line"]]
        out[mode] = {
            "n": len(ids),
            "shown": len(shown) / max(1, len(ids)),
            "precision": len(right) / len(shown) if shown else 0.0,
            "chars_gained": sum(len(r["text"].rstrip()) for r in right) / max(1, len(ids)),
            "whole_lines": len(whole) / max(1, len(ids)),
            # what the choice maximises (choice.utility): characters, plus the bonus per whole line
            "utility": (sum(len(r["text"].rstrip()) for r in right) + bonus * len(whole)) / max(1, len(ids)),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--min-precision", type=float, default=0.40)
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6])
    ap.add_argument("--l2", type=float, nargs="*", default=[1.0, 10.0, 100.0])
    ap.add_argument("--files-per-package", type=int, default=40)
    ap.add_argument("--lines-per-file", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--floor", type=float, default=0.001, help="minLineConfidence while collecting")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {info['cpu']} | {info['cores']} cores | SIMD {info['simd']} | threads {args.threads}")
    base = {"threads": args.threads}
    tune = load_split("tune", args.files_per_package)
    t0 = time.perf_counter()
    records: list[dict] = []
    # a tiny minConfidence: every option is built and weighed (shown or not does not matter here)
    run_scoring(tune, {**base, "minConfidence": 1e-6, "minLineConfidence": args.floor},
                lines_per_file=args.lines_per_file, seed=0, collect=records)
    names = list(choice.FEATURES)
    opts = [r for r in records if not r.get("marker")]
    cases = [r for r in records if r.get("marker")]
    x = np.asarray([[r["features"][k] for k in names] for r in opts], dtype=np.float64)
    y = np.asarray([float(r["right"]) for r in opts])
    print(f"{len(opts)} options ({int(y.sum())} right), {len(cases)} cases in {time.perf_counter() - t0:.0f} s")
    packages = sorted({r["package"] for r in cases})
    trials = []
    for l2 in args.l2:
        p_held = np.zeros(len(opts))
        for pkg in packages:  # leave one package out
            train = np.asarray([r["package"] != pkg for r in opts])
            w = fit_logistic(x[train], y[train], l2)
            p_held[~train] = 1.0 / (1.0 + np.exp(-np.clip(x[~train] @ w, -50, 50)))
        for t in args.thresholds:
            res = replay(opts, cases, p_held, t)
            ok = all(res[m]["precision"] >= args.min_precision for m in SCORED_MODES)
            gained = sum(res[m]["chars_gained"] for m in SCORED_MODES)
            util = sum(res[m]["utility"] for m in SCORED_MODES)
            trials.append({"l2": l2, "min_confidence": t, "ok": ok, "chars_gained": gained, "utility": util, "held_out": res})
            print(f"  l2 {l2:g} minConfidence {t}: utility {util:.2f}, gained {gained:.2f} | precision "
                  f"{res['line_start']['precision']:.2f} / {res['mid_line']['precision']:.2f} | whole lines "
                  f"{res['line_start']['whole_lines']:.3f} / {res['mid_line']['whole_lines']:.3f}" + ("" if ok else "  (below the bar)"))
    best = max([t for t in trials if t["ok"]] or trials, key=lambda t: t["utility"])
    w = fit_logistic(x, y, best["l2"])
    weights = {k: round(float(v), 4) for k, v in zip(names, w, strict=True)}
    p_all = 1.0 / (1.0 + np.exp(-(x @ w)))
    for lo, hi in zip(np.linspace(0, 0.8, 5), np.linspace(0.2, 1.0, 5), strict=True):
        m = (p_all >= lo) & (p_all < hi)
        if m.any():
            print(f"  calibration (fitted): predicted {lo:.1f}-{hi:.1f}: {m.sum():5d} options, right {y[m].mean():.2f}")
    print(f"chosen by leave-one-package-out on the tune split: l2 {best['l2']}, minConfidence {best['min_confidence']}")
    print(f"weights: {weights}")
    old = dict(choice.WEIGHTS)
    choice.WEIGHTS.clear()
    choice.WEIGHTS.update(weights)  # this process's daemon sessions use the fitted weights
    report = run_scoring(load_split("report", args.files_per_package), {**base, "minConfidence": best["min_confidence"]},
                         lines_per_file=args.lines_per_file, seed=0)
    print("\n## report split\n")
    print(markdown(report["results"]))
    WEIGHTS_FILE.write_text(json.dumps({
        "fitted_on": "tune split of benchmarks/bench_usefulness.py (" + ", ".join(f"{n} {v}" for n, v in PACKAGES["tune"]) + ")",
        "model": report["model"], "options": len(opts), "l2": best["l2"], "weights": weights,
        "min_confidence": best["min_confidence"]}, indent=2) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fit-choice.json").write_text(json.dumps({
        "machine": info, "weights": weights, "previous_weights": old, "trials": trials,
        "chosen": {"l2": best["l2"], "min_confidence": best["min_confidence"]}, "report": report}, indent=2) + "\n")
    print(f"wrote {WEIGHTS_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
