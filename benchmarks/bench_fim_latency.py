#!/usr/bin/env python3
"""Edit -> first token with fill-in-the-middle prompts, through the daemon's own Session.

A real source file is opened whole (background prefill finishes first, as a while after opening),
then, interleaved, for FIM on and off (the left-to-right prompt):
  - keystroke: one character typed at the cursor on the same line, then a completion request:
    the time from applying the edit to the first generated token (FIM: the typed tokens after
    <mid> are fed, everything before is a checkpoint);
  - move: a completion request on another line, at a random mid-line column, with no edit (FIM:
    the suffix window and the line are fed from the line start's nearest checkpoint).

Models: the shipped default (FIM) and a 255M-shaped random model declaring FIM (GPT-2 vocabulary
plus the three sentinels; weights random: only the time is meaningful).

    python benchmarks/bench_fim_latency.py                   # both models
    python benchmarks/bench_fim_latency.py --models default --repeats 20

Prints min / median / p90 per scenario and writes benchmarks/results/fim-latency.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bitmamba_lsp.bench import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


def fim_255m(folder: Path) -> Path:
    """A 255M-shaped random model that declares FIM (written once)."""
    if (folder / "model.json").is_file():
        return folder
    from tokenizers import AddedToken

    from bitmamba_lsp.engine.formats.bitmamba_bin import BitMamba2Config, random_tensors, write_bin
    from bitmamba_lsp.engine.tokenizer import bundled_gpt2_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = bundled_gpt2_tokenizer()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tok.to_str())
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in FIM_TOKENS])
    tok.save(str(folder / "tokenizer.json"))
    cfg = BitMamba2Config(tok.get_vocab_size(with_added_tokens=True), 1024, 24, 16)
    print(f"writing a random 255M-shaped FIM model to {folder} ...", file=sys.stderr)
    write_bin(folder / "model.bin", cfg, random_tensors(cfg, seed=0))
    meta = {"fim": {"prefix": FIM_TOKENS[0], "suffix": FIM_TOKENS[1], "middle": FIM_TOKENS[2], "order": "psm"}}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "n": len(xs),
        "min": round(xs[0], 2),
        "median": round(statistics.median(xs), 2),
        "p90": round(xs[int(0.9 * (len(xs) - 1))], 2),
    }


async def measure(model: str, text: str, repeats: int, seed: int, threads: int) -> dict[str, Any]:
    from bitmamba_lsp.lsp.documents import Change
    from bitmamba_lsp.lsp.session import Session

    rng = random.Random(seed)
    lines = text.split("\n")
    usable = [i for i, ln in enumerate(lines) if len(ln.strip()) >= 8 and 20 < i < len(lines) - 20]
    out: dict[str, Any] = {}
    sessions = {}
    for fim in (True, False):
        s = Session(lambda level, msg, popup: None)
        s.configure({"model": model, "threads": threads, "debounceMs": 0, "speculative": False, "fim": fim,
                     "minConfidence": 0, "maxTokens": 8, "cacheWorkspace": False})  # fmt: skip
        await s.start_model_load()
        if s.slot.model is None:
            raise SystemExit(f"{model}: {s.slot.error}")
        if fim and s.worker.fim is None:
            raise SystemExit(f"{model} does not declare fill-in-the-middle")
        s.open("file:///bench.py", text, 1)
        await asyncio.to_thread(s.worker.wait_idle, 600)
        sessions[fim] = s
        out[f"fim_{fim}"] = {"keystroke": [], "move": [], "fed_keystroke": [], "fed_move": []}
    out["suffix_window"] = None if sessions[True].worker.fim is None else sessions[True].status("utf-32")["fim"]
    versions = {True: 1, False: 1}
    for r in range(repeats):
        line = rng.choice(usable)
        code = lines[line]
        col = rng.randint(len(code) - len(code.lstrip()) + 1, len(code) - 1)
        for fim in ((True, False) if r % 2 == 0 else (False, True)):  # interleaved, alternating order
            s = sessions[fim]
            rec = out[f"fim_{fim}"]
            # move: a request on this line, no edit (the line was not visited before)
            t0 = time.perf_counter()
            await s.complete("file:///bench.py", (line, col), "utf-32")
            res = s.last_result
            rec["move"].append((res.first_token_at - t0) * 1000)
            rec["fed_move"].append(res.fed)
            # keystroke: type one character on this line, ask again
            versions[fim] += 1
            t0 = time.perf_counter()
            s.change("file:///bench.py", versions[fim], [Change("x", (line, col), (line, col))], "utf-32")
            await s.complete("file:///bench.py", (line, col + 1), "utf-32")
            res = s.last_result
            rec["keystroke"].append((res.first_token_at - t0) * 1000)
            rec["fed_keystroke"].append(res.fed)
            versions[fim] += 1  # undo, so both sessions always see the file as it is
            s.change("file:///bench.py", versions[fim], [Change("", (line, col), (line, col + 1))], "utf-32")
            await asyncio.to_thread(s.worker.wait_idle, 60)
    for fim, s in sessions.items():
        rec = out[f"fim_{fim}"]
        for k in ("keystroke", "move"):
            rec[k] = stats(rec[k])
        for k in ("fed_keystroke", "fed_move"):
            rec[k] = {"median": statistics.median(rec[k]), "max": max(rec[k])}
        s.shutdown()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["default", "255m"], help="default, 255m, or model paths")
    ap.add_argument("--file", default=None, help="source file to type into (default: lsp/session.py of this package)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "bitmamba-lsp" / "random" / "fim-255m"))
    ap.add_argument("--out", default=str(RESULTS / "fim-latency"))
    args = ap.parse_args()
    import bitmamba_lsp

    path = Path(args.file) if args.file else Path(bitmamba_lsp.__file__).parent / "lsp" / "session.py"
    text = path.read_text("utf-8")
    report: dict[str, Any] = {"machine": machine_info(), "threads": args.threads, "file": str(path),
                              "file_lines": text.count("\n"), "repeats": args.repeats, "models": {}}  # fmt: skip
    print(json.dumps(report["machine"]))
    rows = ["| model | prompt | keystroke min / median / p90 ms | fed | move to another line min / median / p90 ms | fed |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for name in args.models:
        model = {"default": None, "255m": str(fim_255m(Path(args.cache)))}.get(name, name)
        res = asyncio.run(measure(model, text, args.repeats, args.seed, args.threads))
        report["models"][name] = res
        for fim in (True, False):
            r = res[f"fim_{fim}"]
            k, m = r["keystroke"], r["move"]
            rows.append(
                f"| {name} | {'FIM' if fim else 'left to right'} | {k['min']} / {k['median']} / {k['p90']} | "
                f"{r['fed_keystroke']['median']:g} | {m['min']} / {m['median']} / {m['p90']} | {r['fed_move']['median']:g} |"
            )
        print("\n".join(rows[-2:]), f"(suffix window {res['suffix_window']})", flush=True)
    md = "\n".join(rows)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(
        f"# FIM latency ({report['machine'].get('cpu')}, {args.threads} threads, {report['file_lines']} lines, "
        f"{args.repeats} repeats)\n\n{md}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
