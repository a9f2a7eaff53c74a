"""Where a suggestion's time goes after the prompt is fed: the model's own calls (steps, batched
verification steps, candidate scoring) against the Python around them (the cache mixture, the
sampler, the stop rules, the choice), through the daemon's completion path on held-out code.

The model's calls are timed by a proxy around the loaded model's core (every call to `step`,
`step_sample`, `prefill` and `step_batch`); the prompt's feed is `StateStore.feed`. Whatever a
speculative decoder saves is a share of the model's calls, so 1 - (model's share) bounds the
suggestion time that drafts can reach against plain decoding: the "bound" column.

    python benchmarks/bench_suggestion_time.py                      # the shipped model, report split
    python benchmarks/bench_suggestion_time.py --model path/to/m.bin

Writes benchmarks/results/suggestion-time-<model>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_usefulness import CACHE, PACKAGES, cap, fetch

import bitmamba_lsp.lsp.worker as worker_module
from bitmamba_lsp.bench import machine_info
from bitmamba_lsp.editor_eval import run_scoring
from bitmamba_lsp.lsp.statecache import StateStore

MODES = ("line_start", "mid_line")
TIMED = frozenset({"step", "step_sample", "prefill", "step_batch"})


class Clock:
    """Seconds of the model's calls, split by phase (the prompt's feed or after it), per thread."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.model = {"feed": 0.0, "after": 0.0}

    @property
    def phase(self) -> str:
        return getattr(self.local, "phase", "after")

    def reset(self) -> None:
        self.model = {"feed": 0.0, "after": 0.0}


class TimedCore:
    """The core, with its forward calls timed into a Clock."""

    def __init__(self, core: Any, clock: Clock) -> None:
        self._core = core
        self._clock = clock

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._core, name, value)  # e.g. Model.threads = n

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._core, name)
        if name not in TIMED:
            return attr

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*a, **k)
            finally:
                self._clock.model[self._clock.phase] += time.perf_counter() - t0

        return timed


def instrument(clock: Clock) -> None:
    install = worker_module.ModelWorker._install
    feed = StateStore.feed
    suggest = worker_module.suggest

    def _install(self: Any, model: Any) -> None:
        if not isinstance(model.core, TimedCore):
            model.core = TimedCore(model.core, clock)
        install(self, model)

    def timed_feed(self: Any, *a: Any, **k: Any) -> Any:
        clock.local.phase = "feed"
        try:
            return feed(self, *a, **k)
        finally:
            clock.local.phase = "after"

    def timed_suggest(*a: Any, **k: Any) -> Any:
        clock.reset()
        res = suggest(*a, **k)
        res.model_ms = {p: s * 1e3 for p, s in clock.model.items()}  # type: ignore[attr-defined]
        return res

    worker_module.ModelWorker._install = _install  # type: ignore[method-assign]
    StateStore.feed = timed_feed  # type: ignore[method-assign]
    worker_module.suggest = timed_suggest  # type: ignore[assignment]


def measure(files: list, options: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def on_result(case: Any, res: Any) -> None:
        if case.kind in MODES and not res.cancelled and hasattr(res, "model_ms"):
            after = res.total_ms - res.prefill_ms - res.queue_ms
            out.append(
                {
                    "mode": case.kind,
                    "after_ms": after,
                    "model_after_ms": min(after, res.model_ms["after"]),
                    "tokens": res.tokens,
                    "drafted": res.drafted,
                }
            )

    run_scoring(files, options, lines_per_file=args.lines_per_file, seed=args.seed, on_result=on_result)
    return out


def summary(recs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in MODES:
        rs = [r for r in recs if r["mode"] == mode]
        after = sum(r["after_ms"] for r in rs)
        model = sum(r["model_after_ms"] for r in rs)
        out[mode] = {
            "suggestions": len(rs),
            "after_ms_median": statistics.median(r["after_ms"] for r in rs),
            "model_ms_median": statistics.median(r["model_after_ms"] for r in rs),
            "model_share": model / after if after else 0.0,
            "tokens_median": statistics.median(r["tokens"] for r in rs),
            "drafted": sum(r["drafted"] for r in rs),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model (default: the shipped one)")
    ap.add_argument("--files-per-package", type=int, default=8)
    ap.add_argument("--lines-per-file", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (plain, drafts), interleaved")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {info.get('cpu')} | {info.get('cores')} cores | SIMD {info.get('simd')} | threads {args.threads}")
    files: list = []
    packages = []
    for name, version in PACKAGES["report"]:
        got, _ = fetch(name, version, args.cache)
        files += got
        packages.append(f"{name} {version}")
    files = cap(files, args.files_per_package)
    clock = Clock()
    instrument(clock)
    base: dict[str, Any] = {"threads": args.threads}
    if args.model:
        base["model"] = args.model
    configs = {"plain": {**base, "draftTokens": 0}, "drafts": dict(base)}
    recs: dict[str, list[dict[str, Any]]] = {k: [] for k in configs}
    for r in range(args.rounds):
        for name, opts in configs.items():
            t0 = time.perf_counter()
            recs[name] += measure(files, opts, args)
            print(f"round {r + 1}, {name}: {time.perf_counter() - t0:.0f} s")
    results = {name: summary(rs) for name, rs in recs.items()}
    label = Path(args.model).stem if args.model else "bitmamba-default"
    lines = [
        f"Machine: {info.get('cpu')}, {info.get('cores')} cores, SIMD {info.get('simd')}, {args.threads} threads; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}. Model: {label}. Held-out: {', '.join(packages)} "
        f"({len(files)} files, {args.lines_per_file} lines each, seed {args.seed}), {args.rounds} interleaved rounds.",
        "",
        "After the prompt is fed (medians per suggestion; share: over all suggestions' time):",
        "",
        "| drafts | mode | suggestions | tokens | time after the feed, ms | the model's calls, ms | the model's share "
        "| bound on drafts' time against plain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for mode in MODES:
            x = res[mode]
            lines.append(
                f"| {name} | {mode} | {x['suggestions']} | {x['tokens_median']:.0f} | {x['after_ms_median']:.2f} | "
                f"{x['model_ms_median']:.2f} | {x['model_share']:.0%} | >= {1 - x['model_share']:.2f}x |"
            )
    md = "\n".join(lines)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"suggestion-time-{label}"
    stem.with_suffix(".md").write_text(md + "\n")
    stem.with_suffix(".json").write_text(
        json.dumps({"machine": info, "model": label, "packages": packages, "results": results, "records": recs}, indent=1)
    )
    print(f"wrote {stem}.md / .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
