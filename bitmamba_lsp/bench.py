"""Engine benchmarks: decode and prefill throughput, load time, memory. Used by `bitmamba bench`
and by the scripts in benchmarks/. Every figure is reported as min and median over repeats."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bitmamba_lsp import _core


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "simd": _core.simd_level(),
    }


def rss_mb() -> float:
    """Current resident set size in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summary(seconds: list[float], work: float = 1.0) -> dict[str, float]:
    """min/median seconds and the corresponding rate (work per second; best = from min)."""
    mn, med = min(seconds), statistics.median(seconds)
    return {
        "min_s": mn,
        "median_s": med,
        "best_rate": work / mn,
        "median_rate": work / med,
        "runs": len(seconds),
    }


def per_round(a: list[float], b: list[float]) -> dict[str, float]:
    """The ratios a_i / b_i of measurements taken in the same round (interleaved, so that each
    pair saw the same load of a shared host): their median and their range."""
    if len(a) != len(b) or not a:
        raise ValueError("per_round: two lists of the same nonzero length")
    r = [x / max(y, 1e-12) for x, y in zip(a, b, strict=True)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r)}


# Sampler settings bench_sampling compares with greedy decode: the reference CLI's (bench_model's
# "sampled"), each filter alone, and what the HTTP API does by default (temperature 1, nothing else).
SAMPLING_CONFIGS: dict[str, dict[str, float]] = {
    "reference (T 0.8, top-k 40, top-p 0.9, min-p 0.05, penalty 1.15)": dict(
        temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.15
    ),
    "temperature 1 alone (the HTTP API's default)": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    "top-k 40 alone": dict(temperature=0.8, top_k=40, top_p=1.0, min_p=0.0),
    "top-p 0.9 alone": dict(temperature=0.8, top_k=0, top_p=0.9, min_p=0.0),
    "top-p 0.95 alone, T 1": dict(temperature=1.0, top_k=0, top_p=0.95, min_p=0.0),
    "min-p 0.05 alone": dict(temperature=0.8, top_k=0, top_p=1.0, min_p=0.05),
    "penalty 1.15, greedy": dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.15),
}


def bench_sampling(
    model: Any, *, tokens: int = 64, rounds: int = 12, configs: dict[str, dict[str, float]] | None = None
) -> dict[str, Any]:
    """Decode of `tokens` tokens with each sampler setting against greedy decode, in interleaved
    rounds (every setting once per round, the order reversed every other round, so that a drift of
    the host's load falls on all of them): per setting the median rate and the per-round ratio of
    its time to greedy's (median and range)."""
    configs = configs if configs is not None else SAMPLING_CONFIGS
    vocab = model.vocab_size
    prompt = (np.arange(16) * 7919) % vocab
    samplers = {"greedy": (_core.Sampler(vocab, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0), False)}
    for name, kw in configs.items():
        samplers[name] = (_core.Sampler(vocab, seed=1, **kw), kw.get("repetition_penalty", 1.0) != 1.0)

    def decode_time(smp: Any, penalize: bool) -> float:
        s = model.new_state()
        model.core.prefill(s, prompt, False, False, [])
        tok = int(prompt[-1])
        t = time.perf_counter()
        for _ in range(tokens):
            if penalize:
                smp.accept(tok)
            tok = model.core.step_sample(s, tok, smp)
        return time.perf_counter() - t

    names = list(samplers)
    for n in names:  # warm-up
        decode_time(*samplers[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            times[n].append(decode_time(*samplers[n]))
    out: dict[str, Any] = {"tokens": tokens, "rounds": rounds, "threads": model.threads, "settings": {}}
    for n in names:
        res = {**summary(times[n], tokens), "vs_greedy": per_round(times[n], times["greedy"])}
        if n != "greedy":
            res["config"] = configs[n]
        out["settings"][n] = res
    return out


def sampling_markdown(results: list[dict[str, Any]]) -> str:
    """One row per sampler setting, a column per thread count: median tok/s and the per-round time
    against greedy."""
    names = list(results[0]["settings"])
    rows = ["| setting | " + " | ".join(f"{r['threads']} thread(s): tok/s (median), time against greedy per round (median; range)" for r in results) + " |"]
    rows.append("|---|" + "---|" * len(results))
    for n in names:
        cells = []
        for r in results:
            s = r["settings"][n]
            v = s["vs_greedy"]
            cells.append(
                f"{s['median_rate']:.0f}, {(v['median'] - 1) * 100:+.1f} % ({(v['min'] - 1) * 100:+.1f} to {(v['max'] - 1) * 100:+.1f} %)"
            )
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def bench_model(
    model_path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    repeats: int = 5,
    decode_tokens: int = 64,
    prefill_lengths: tuple[int, ...] = (64, 512),
    kernels: str = "simd",
    batch_sizes: tuple[int, ...] = (1, 4),
    verify_sizes: tuple[int, ...] = (),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin

    say = log or (lambda _msg: None)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    model = load_bin(model_path, threads=threads, kernels=kernels)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb()
    rng = np.random.default_rng(0)
    vocab = model.vocab_size
    # cold start: load + first token (the file is in the page cache after the first load)
    st = model.new_state()
    t1 = time.perf_counter()
    model.step(st, 0)
    first_token_s = time.perf_counter() - t1

    result: dict[str, Any] = {
        "machine": machine_info(),
        "model": {"path": str(model_path), **{k: v for k, v in model.core.info.items()}},
        "threads": model.threads,
        "kernel_level": model.kernel_level,
        "load_s": load_s,
        "cold_start_s": load_s + first_token_s,
        "rss_before_mb": rss0,
        "rss_after_load_mb": rss_loaded,
        "weight_bytes": model.weight_bytes,
        "state_bytes": model.state_bytes,
        "repeats": repeats,
    }
    say(
        f"loaded in {load_s * 1000:.1f} ms, first token {first_token_s * 1000:.1f} ms, RSS {rss_loaded:.0f} MB"
    )

    # decode: greedy, full lm_head, logits stay in C++
    sampler = _core.Sampler(vocab, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0)
    prompt = rng.integers(0, vocab, 16)

    def decode_time(smp: _core.Sampler, penalize: bool) -> float:
        """Seconds for decode_tokens steps after a prefilled prompt (the prefill is not timed)."""
        s = model.new_state()
        model.core.prefill(s, prompt, False, False, [])
        tok = int(prompt[-1])
        t = time.perf_counter()
        for _ in range(decode_tokens):
            if penalize:
                smp.accept(tok)
            tok = model.core.step_sample(s, tok, smp)
        return time.perf_counter() - t

    # sampled decode (temperature + top-k/top-p/min-p + penalty) for the sampling overhead
    sampler2 = _core.Sampler(
        vocab, temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.15, seed=1
    )
    prefill_ids = {T: rng.integers(0, vocab, T) for T in prefill_lengths}

    def prefill_time(ids: np.ndarray) -> float:
        s = model.new_state()
        t = time.perf_counter()
        model.core.prefill(s, ids, True, False, [])
        return time.perf_counter() - t

    # Interleaved rounds (greedy, sampled, each prefill length): on a shared host the load changes
    # between rounds, so the ratios are taken within a round and their median reported.
    decode_time(sampler, False)  # warm-up
    decode_time(sampler2, True)
    for ids in prefill_ids.values():
        prefill_time(ids)
    dec: list[float] = []
    dec2: list[float] = []
    pre: dict[int, list[float]] = {T: [] for T in prefill_lengths}
    for _ in range(repeats):
        dec.append(decode_time(sampler, False))
        dec2.append(decode_time(sampler2, True))
        for T, ids in prefill_ids.items():
            pre[T].append(prefill_time(ids))
    result["decode"] = {"tokens": decode_tokens, **summary(dec, decode_tokens)}
    say(
        f"decode: {result['decode']['best_rate']:.1f} tok/s best, {result['decode']['median_rate']:.1f} median "
        f"({decode_tokens} tokens x {repeats})"
    )
    # time of a sampled decode over the greedy one of the same round
    result["decode_sampled"] = {"tokens": decode_tokens, **summary(dec2, decode_tokens), "vs_greedy": per_round(dec2, dec)}
    vg = result["decode_sampled"]["vs_greedy"]
    say(
        f"decode (sampled): {result['decode_sampled']['median_rate']:.1f} tok/s median; per round "
        f"{(vg['median'] - 1) * 100:+.1f} % of greedy's time (median; {(vg['min'] - 1) * 100:+.1f} to "
        f"{(vg['max'] - 1) * 100:+.1f} %)"
    )

    result["prefill"] = {}
    for T in prefill_lengths:
        # prefill tokens/s over the greedy decode tokens/s of the same round
        vs = per_round([d / decode_tokens for d in dec], [p / T for p in pre[T]])
        res = {"tokens": int(T), **summary(pre[T], T), "vs_decode": vs}
        result["prefill"][str(T)] = res
        say(
            f"prefill T={T}: {res['best_rate']:.1f} tok/s best, {res['median_rate']:.1f} median; "
            f"{vs['median']:.2f}x decode per round (median; {vs['min']:.2f}-{vs['max']:.2f}x)"
        )
    result["profile"] = profile_stages(model, decode_tokens, repeats)
    pr = result["profile"]
    say(
        f"profile (ms/token, median of {pr['runs']} runs): matmul {pr['matmul']:.3f}, lm_head {pr['lm_head']:.3f}, "
        f"outside the matrix products {pr['non_matrix_min']:.3f} min / {pr['non_matrix_median']:.3f} median "
        f"(norm+quantize {pr['norm_quantize']:.3f}, "
        f"conv+scan {pr['conv_scan']:.3f}, other {pr['other']:.3f}, sampling {pr['sampling']:.3f})"
    )
    result["batch"] = {}
    for b in batch_sizes:
        states = [model.new_state() for _ in range(b)]
        toks = rng.integers(0, vocab, b)

        def step_b(states=states, toks=toks) -> None:
            for _ in range(max(8, decode_tokens // 4)):
                model.core.step_batch(states, toks)

        res = summary(timed(step_b, repeats), b * max(8, decode_tokens // 4))
        result["batch"][str(b)] = res
        say(f"batched decode x{b}: {res['best_rate']:.1f} tok/s aggregate best, {res['median_rate']:.1f} median")
    if verify_sizes:
        result["verify"] = bench_verification(model, verify_sizes, max(repeats, 15), say)
        roof = compute_roof(model, result["verify"], say)
        if roof:
            result["verify"]["roof"] = roof
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def bench_verification(
    model: Any, sizes: tuple[int, ...], repeats: int, say: Callable[[str], None] = lambda _m: None
) -> dict[str, Any]:
    """The cost of speculative decoding's verification step (decoding.verify): m tokens fed in one
    batched step with every position's logits and the state after each of the first m - 1 kept
    (into reused states), against one plain step (`step`: one token, its logits). Interleaved (a
    plain step, then each size, per repeat), so the ratios see the same machine load."""
    rng = np.random.default_rng(1)
    vocab = model.vocab_size
    st = model.new_state()
    model.core.prefill(st, rng.integers(0, vocab, 64), False, False, [])
    pool = [model.new_state() for _ in range(max(sizes))]
    ids = {m: rng.integers(0, vocab, m).astype(np.int32) for m in sizes}
    single: list[float] = []
    batched: dict[int, list[float]] = {m: [] for m in sizes}
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        model.step(st, 1)
        if r:
            single.append(time.perf_counter() - t0)
        for m in sizes:
            t0 = time.perf_counter()
            model.core.prefill(st, ids[m], True, True, list(range(1, m)), pool)
            if r:
                batched[m].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"single_step": summary(single), "sizes": {}}
    s_med, s_min = statistics.median(single), min(single)
    for m in sizes:
        res = summary(batched[m])
        res["steps_median"] = res["median_s"] / s_med  # in single steps (medians)
        res["steps_min"] = res["min_s"] / s_min
        out["sizes"][str(m)] = res
        say(
            f"verification step of {m} tokens: {res['median_s'] * 1e3:.2f} ms median = {res['steps_median']:.2f} single "
            f"steps ({s_med * 1e3:.2f} ms; min {res['steps_min']:.2f})"
        )
    return out


def _in_proj_rows(info: dict[str, Any]) -> int:
    """A BitMamba-2 in_proj's output rows: z and x (d_inner each), then B, C and dt (n_heads each)."""
    return 2 * info["d_inner"] + 3 * info["n_heads"]


def ternary_macs_per_token(info: dict[str, Any]) -> int | None:
    """Multiply-adds of a BitMamba-2 model's ternary products for one token with its logits: every
    layer pass's in_proj and out_proj, and the lm_head. None for other architectures."""
    if info.get("arch") != "bitmamba2":
        return None
    d = info["d_model"]
    return info["layer_passes"] * (_in_proj_rows(info) * d + d * info["d_inner"]) + info["vocab_size"] * d


def compute_roof(
    model: Any, verify: dict[str, Any], say: Callable[[str], None] = lambda _m: None
) -> dict[str, Any] | None:
    """The MAC bound of a verification step: m tokens' ternary multiply-adds at the host's peak
    dot-product rate (`_core.dot_peak`, the model's thread count) and at the rate the build's GEMM
    reaches alone on this model's in_proj shape (`_core.gemm_rate`, random weights), in single steps
    (the median single step of `verify`). The peak is the best of its repeats, so no step of m tokens
    doing its multiply-adds with that instruction costs less than the first bound. Both probes use
    the build's best level. None where the build has no probe."""
    info = model.core.info
    macs = ternary_macs_per_token(info)
    if macs is None:
        return None
    peak = _core.dot_peak(model.threads)
    if peak is None:
        return None
    d, rows = info["d_model"], _in_proj_rows(info)
    w = _core.PackedMatrix.from_int8(np.random.default_rng(3).integers(-1, 2, (rows, d), dtype=np.int8))
    single = verify["single_step"]["median_s"]
    out: dict[str, Any] = {
        "macs_per_token": macs,
        "instruction": peak["instruction"],
        "peak_gmacs_median": peak["median_gmacs"],
        "peak_gmacs_best": peak["best_gmacs"],
        "gemm": {},
        "bound_steps": {},
    }
    for t in (8, 64):
        g = _core.gemm_rate(w, t, model.threads, 7)
        out["gemm"][str(t)] = {
            "median_gmacs": g["median_gmacs"],
            "of_peak": g["median_gmacs"] / peak["best_gmacs"],
        }
    g8 = out["gemm"]["8"]["median_gmacs"]
    for m in verify["sizes"]:
        work = int(m) * macs
        out["bound_steps"][m] = {
            "at_peak": work / (peak["best_gmacs"] * 1e9) / single,
            "at_gemm_rate": work / (g8 * 1e9) / single,
        }
    say(
        f"compute roof: {peak['instruction']} {peak['best_gmacs']:.0f} GMAC/s best on {model.threads} "
        f"thread(s); the GEMM alone ({rows}x{d}) {g8:.0f} GMAC/s at 8 tokens "
        f"({out['gemm']['8']['of_peak']:.0%} of it), {out['gemm']['64']['median_gmacs']:.0f} at 64; "
        f"{macs / 1e6:.0f} M multiply-adds a token with its logits"
    )
    for m, b in out["bound_steps"].items():
        say(
            f"  {m} tokens: >= {b['at_peak']:.2f} single steps at the peak, {b['at_gemm_rate']:.2f} at the GEMM's rate"
        )
    return out


def profile_stages(model, tokens: int = 128, repeats: int = 1) -> dict[str, float]:
    """Per-token milliseconds of each stage of a sampled decode step (the engine's stage clock).

    With several repeats, each stage is the median over the runs (``other`` and ``non_matrix`` are
    derived from those medians, so the parts add up), and ``non_matrix_min`` / ``non_matrix_median``
    are the min and median of the per-run totals outside the matrix products.
    """
    vocab = model.vocab_size
    sampler = _core.Sampler(vocab, temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.15, seed=1)
    s = model.new_state()
    tok = 0
    for _ in range(8):
        tok = model.core.step_sample(s, tok, sampler)
    runs: list[dict[str, float]] = []
    for _ in range(max(1, repeats)):
        model.core.set_profiling(True)
        try:
            for _ in range(tokens):
                sampler.accept(tok)
                tok = model.core.step_sample(s, tok, sampler)
            p = dict(model.core.profile())
        finally:
            model.core.set_profiling(False)
        n = max(1, int(p.pop("steps")))
        runs.append(_derived({k: v / n for k, v in p.items()}))
    out = _derived({k: statistics.median(r[k] for r in runs) for k in runs[0] if k not in _DERIVED})
    out["non_matrix_min"] = min(r["non_matrix"] for r in runs)
    out["non_matrix_median"] = statistics.median(r["non_matrix"] for r in runs)
    out["runs"] = len(runs)
    return out


def profile_verification(model, tokens: int = 8, repeats: int = 30) -> dict[str, Any]:
    """Milliseconds of each stage of one verification step of `tokens` tokens (a batched pass with
    every position's logits and a snapshot after each but the last, as `decoding.verify` runs it),
    interleaved with single steps profiled the same way (no sampling), medians over `repeats`
    passes; ``vs_step`` holds each stage in single steps (the whole single step's median)."""
    s = model.new_state()
    model.core.prefill(s, np.arange(64, dtype=np.int32) % model.vocab_size, False)
    work = model.new_state()
    pool = [model.new_state() for _ in range(tokens - 1)]
    ids = (np.arange(tokens, dtype=np.int32) * 7 + 100) % model.vocab_size

    def one(batched: bool) -> dict[str, float]:
        work.copy_from(s)
        model.core.set_profiling(True)
        try:
            if batched:
                model.core.prefill(work, ids, True, True, list(range(1, tokens)), pool)
            else:
                model.core.step(work, int(ids[0]))
            return dict(model.core.profile())
        finally:
            model.core.set_profiling(False)

    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for r in range(max(1, repeats) + 3):
        for batched in (False, True):
            p = one(batched)
            if r >= 3:  # three warm-up rounds
                runs[batched].append(p)
    keys = [k for k in runs[True][0] if k not in ("steps", "sampling")]
    single = {k: statistics.median(p[k] for p in runs[False]) for k in keys}
    batch = {k: statistics.median(p[k] for p in runs[True]) for k in keys}
    unit = single["step"]
    if unit <= 0:
        raise ValueError(f"{model.arch}: the stage clock does not time this architecture's single step")
    parts = ("matmul", "lm_head", "norm_quantize", "conv_scan")
    return {
        "tokens": tokens,
        "runs": len(runs[True]),
        "single_step_ms": single,
        "verification_ms": batch,
        "verification_min_ms": min(p["step"] for p in runs[True]),
        "vs_step": {k: v / unit for k, v in batch.items()},
        # per run, the timed stages over the whole pass (<= 1: the rest is untimed)
        "parts_of_step_max": {
            kind: max(sum(p[k] for k in parts) / p["step"] for p in runs[batched])
            for kind, batched in (("single", False), ("verification", True))
        },
    }


def verification_markdown(profiles: list[dict[str, Any]]) -> str:
    """Per-stage ms of `profile_verification` results: a single step, the batched step, and the
    batched step's stages in single steps."""
    labels = {
        "matmul": "matrix products (layers)",
        "lm_head": "lm_head (every position)",
        "norm_quantize": "norms + activation quantization",
        "conv_scan": "conv + scan (with the snapshots)",
        "step": "whole step",
    }
    head = " | ".join(
        f"{p['threads']} thread{'' if p['threads'] == 1 else 's'}: single / {p['tokens']} tokens / in single steps"
        for p in profiles
    )
    rows = [f"| stage (ms per step) | {head} |", "|---|" + "---|" * len(profiles)]
    for key, label in labels.items():
        rows.append(
            f"| {label} | "
            + " | ".join(
                f"{p['single_step_ms'][key]:.3f} / {p['verification_ms'][key]:.3f} / {p['vs_step'][key]:.2f}" for p in profiles
            )
            + " |"
        )
    return "\n".join(rows)


_DERIVED = ("other", "non_matrix")


def _derived(p: dict[str, float]) -> dict[str, float]:
    out = dict(p)
    out["other"] = max(0.0, p["step"] - p["matmul"] - p["lm_head"] - p["norm_quantize"] - p["conv_scan"])
    out["non_matrix"] = p["norm_quantize"] + p["conv_scan"] + out["other"] + p["sampling"]
    return out


_STAGES = (
    ("matmul", "matrix products (layers)"),
    ("lm_head", "lm_head"),
    ("norm_quantize", "norms + activation quantization"),
    ("conv_scan", "conv + scan"),
    ("sampling", "sampling"),
    ("other", "other"),
    ("non_matrix", "outside the matrix products"),
    ("step", "whole step (without sampling)"),
)


def profile_markdown(profiles: list[dict[str, Any]]) -> str:
    """Per-stage ms/token of `profile_stages` results (one column per thread count)."""
    heads = (f"{p['threads']} thread" + ("" if p["threads"] == 1 else "s") for p in profiles)
    rows = ["| stage (ms/token) | " + " | ".join(heads) + " |"]
    rows.append("|---|" + "---|" * len(profiles))
    for key, label in _STAGES:
        rows.append(f"| {label} | " + " | ".join(f"{p[key]:.3f}" for p in profiles) + " |")
    rows.append(
        "| outside the matrix products, min / median of the runs | "
        + " | ".join(f"{p['non_matrix_min']:.3f} / {p['non_matrix_median']:.3f}" for p in profiles)
        + " |"
    )
    return "\n".join(rows)


def _with_ratio(cell: str, res: dict[str, Any], key: str, unit: str) -> str:
    """A table cell with the per-round ratio of `res[key]` after it (when measured)."""
    r = res.get(key)
    if not r:
        return cell
    return f"{cell} ({(r['median'] - 1) * 100:+.1f} %)" if unit == "%" else f"{cell} ({r['median']:.2f}x)"


def markdown_table(results: list[dict[str, Any]]) -> str:
    first = results[0]
    batches = list(first.get("batch", {}))
    rows = [
        "| threads | decode tok/s (best / median) | sampled (median; time against greedy per round) | "
        + " | ".join(f"prefill T={t} (best / median; x decode per round)" for t in first["prefill"])
        + "".join(f" | batch {b} aggregate (median)" for b in batches)
        + " | outside matmul ms/token (min / median) | cold start ms | RSS MB |",
    ]
    rows.append("|" + "---|" * (6 + len(first["prefill"]) + len(batches)))
    for r in results:
        d = r["decode"]
        cells = [
            str(r["threads"]),
            f"{d['best_rate']:.0f} / {d['median_rate']:.0f}",
            _with_ratio(f"{r['decode_sampled']['median_rate']:.0f}", r["decode_sampled"], "vs_greedy", "%"),
            *(_with_ratio(f"{p['best_rate']:.0f} / {p['median_rate']:.0f}", p, "vs_decode", "x") for p in r["prefill"].values()),
            *(f"{r['batch'][b]['median_rate']:.0f}" for b in batches),
            f"{r['profile']['non_matrix_min']:.3f} / {r['profile']['non_matrix_median']:.3f}" if "profile" in r else "-",
            f"{r['cold_start_s'] * 1000:.0f}",
            f"{r['rss_after_load_mb']:.0f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def verify_markdown(results: list[dict[str, Any]]) -> str:
    """Verification steps in single steps (medians; min/min in brackets), per thread count."""
    with_v = [r for r in results if r.get("verify")]
    if not with_v:
        return ""
    sizes = list(with_v[0]["verify"]["sizes"])
    rows = [
        "| threads | single step ms (median) | " + " | ".join(f"{m} tokens" for m in sizes) + " |",
        "|" + "---|" * (2 + len(sizes)),
    ]
    for r in with_v:
        v = r["verify"]
        cells = [str(r["threads"]), f"{v['single_step']['median_s'] * 1e3:.2f}"]
        cells += [f"{v['sizes'][m]['steps_median']:.2f} ({v['sizes'][m]['steps_min']:.2f})" for m in sizes]
        rows.append("| " + " | ".join(cells) + " |")
    roofs = [r for r in with_v if r["verify"].get("roof")]
    if roofs:
        rows += [
            "",
            "The MAC bound of the same steps, in single steps (m tokens' ternary multiply-adds at the host's peak "
            "dot-product rate (best of its repeats) / at the rate the GEMM alone reaches at 8 tokens (median); `_core.dot_peak`, `_core.gemm_rate`):",
            "",
            "| threads | peak GMAC/s (best) | GEMM alone, 8 / 64 tokens | "
            + " | ".join(f"{m} tokens" for m in sizes)
            + " |",
            "|" + "---|" * (3 + len(sizes)),
        ]
        for r in roofs:
            ro = r["verify"]["roof"]
            cells = [
                str(r["threads"]),
                f"{ro['peak_gmacs_best']:.0f} ({ro['instruction']})",
                f"{ro['gemm']['8']['median_gmacs']:.0f} / {ro['gemm']['64']['median_gmacs']:.0f} "
                f"({ro['gemm']['8']['of_peak']:.0%} / {ro['gemm']['64']['of_peak']:.0%})",
            ]
            cells += [
                f"{ro['bound_steps'][m]['at_peak']:.2f} / {ro['bound_steps'][m]['at_gemm_rate']:.2f}"
                for m in sizes
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
