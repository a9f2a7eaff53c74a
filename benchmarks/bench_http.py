#!/usr/bin/env python3
"""HTTP API load test: N concurrent streaming clients against `bitmamba serve`, a fixed number of
requests in all.

The server runs as a separate process (the real `bitmamba serve`, on a free loopback port); the
clients are asyncio + httpx reading the SSE stream themselves (less client overhead than the openai
package on a small machine). Each request asks for a fixed number of tokens (`ignore_eos`, so every
request does the same work) after a prompt that is a prefix of the same source file of varying
length (like an editor asking for completions in one file, so the prefix cache is exercised).

Reported: aggregate generated tok/s (all completion tokens / wall time), time to first token
(request sent -> first content chunk) p50/p99, request latency p50/p99, errors, and the server's
own counters (batched decode steps, largest batch, prefix-cache hits). `--max-batch 16 1` compares
batched decoding with one request at a time.

    python benchmarks/bench_http.py                      # default model, 16 clients, 64 requests
    python benchmarks/bench_http.py --max-batch 16 1 --threads 1

Writes benchmarks/results/http-<model>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bitmamba_lsp.bench import machine_info

SAMPLE = (Path(__file__).resolve().parents[1] / "bitmamba_lsp" / "data" / "demo_sample.py").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


def start_server(args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "bitmamba_lsp.cli", "serve", "--port", str(port), "--log-level", "warning"]
    cmd += ["--max-batch", str(max_batch), "--max-tokens-limit", str(max(args.max_tokens, 16))]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    env = {k: v for k, v in os.environ.items() if k != "BITMAMBA_API_KEY"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server did not start within 60 s")
        time.sleep(0.1)


async def one_request(
    client: httpx.AsyncClient, url: str, prompt: str, args: argparse.Namespace, seed: int
) -> dict:
    body = {
        "model": "default",
        "prompt": prompt,
        "max_tokens": args.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": args.temperature,
        "seed": seed,
        "ignore_eos": True,
    }
    if args.top_k:
        body["top_k"] = args.top_k
    t0 = time.perf_counter()
    ttft = None
    usage = None
    chunks = 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"error": f"HTTP {r.status_code}: {r.text[:200]}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                return {"error": ev["error"]["message"]}
            if ev.get("usage"):
                usage = ev["usage"]
            if ev["choices"] and ev["choices"][0]["finish_reason"] is None:
                chunks += 1
                if ttft is None and ev["choices"][0]["text"]:
                    ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {
        "ttft": ttft,
        "latency": total,
        "tokens": usage["completion_tokens"] if usage else chunks,
        "prompt_tokens": usage["prompt_tokens"] if usage else None,
        "chunks": chunks,
    }


async def load(url: str, args: argparse.Namespace) -> tuple[list[dict], float]:
    lines = SAMPLE.splitlines(keepends=True)
    prompts = ["".join(lines[: 8 + (i * 7) % max(1, len(lines) - 8)]) for i in range(args.requests)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300), limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    results.append(await one_request(client, url, prompts[i], args, seed=i))
                except Exception as e:
                    results.append({"error": repr(e)})

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.clients)))
        wall = time.perf_counter() - t0
    return results, wall


def run(args: argparse.Namespace, max_batch: int) -> dict[str, Any]:
    proc, url = start_server(args, max_batch)
    try:
        health = httpx.get(url + "/health").json()
        asyncio.run(load(url, argparse.Namespace(**{**vars(args), "requests": args.clients})))  # warm-up
        before = httpx.get(url + "/health").json()["stats"]
        results, wall = asyncio.run(load(url, args))
        after = httpx.get(url + "/health").json()["stats"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    lat = [r["latency"] for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "max_batch": max_batch,
        "clients": args.clients,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "ok": len(ok),
        "errors": len(errors),
        "error_samples": errors[:3],
        "wall_s": wall,
        "completion_tokens": tokens,
        "agg_tok_s": tokens / wall if wall > 0 else float("nan"),
        "ttft_p50_ms": 1000 * pct(ttft, 50),
        "ttft_p99_ms": 1000 * pct(ttft, 99),
        "latency_p50_ms": 1000 * pct(lat, 50),
        "latency_p99_ms": 1000 * pct(lat, 99),
        "mean_prompt_tokens": statistics.mean(r["prompt_tokens"] for r in ok if r["prompt_tokens"])
        if ok
        else 0,
        "server": {
            "model": health["model"],
            "simd": health["simd"],
            "batched_steps": after["batched_steps"] - before["batched_steps"],
            "decode_steps": after["decode_steps"] - before["decode_steps"],
            "max_batch_seen": after["max_batch_seen"],
            "prefix_cache_hits": after["prefix_cache"]["hits"] - before["prefix_cache"]["hits"],
            "prefix_tokens_reused": after["prefix_cache"]["tokens_reused"]
            - before["prefix_cache"]["tokens_reused"],
            "prefill_tokens": after["prefill_tokens"] - before["prefill_tokens"],
        },
    }


def markdown(results: list[dict], machine: dict, args: argparse.Namespace) -> str:
    model = results[0]["server"]["model"]
    out = [
        f"# HTTP load test: {model['id']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['simd']}; Python {machine['python']}; "
        f"load average at start {machine.get('loadavg_at_start', ['?'])[0]:.2f}. "
        f"Server threads: {model['threads']}. {args.clients} concurrent streaming clients, {args.requests} "
        f"requests of {args.max_tokens} tokens (ignore_eos, temperature {args.temperature}, "
        f"top_k {args.top_k or 'off'}).",
        "",
        "| max batch | ok / errors | aggregate tok/s | TTFT p50 / p99 ms | latency p50 / p99 ms | batched steps | cache hits |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["server"]
        out.append(
            f"| {r['max_batch']} | {r['ok']} / {r['errors']} | {r['agg_tok_s']:.0f} | "
            f"{r['ttft_p50_ms']:.1f} / {r['ttft_p99_ms']:.1f} | {r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f} | "
            f"{s['batched_steps']} of {s['decode_steps']} (max {s['max_batch_seen']}) | {s['prefix_cache_hits']} |"
        )
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model for the server (default: the shipped default)")
    ap.add_argument("--threads", type=int, default=1, help="server engine threads")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument(
        "--top-k", type=int, default=0, help="send top_k (0: omit it, the server's default: no top-k)"
    )
    ap.add_argument("--max-batch", type=int, nargs="+", default=[16], help="server --max-batch values to run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    machine = machine_info()
    machine["loadavg_at_start"] = list(os.getloadavg())  # other work on the machine skews the figures
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['simd']}", file=sys.stderr)
    results = []
    for mb in args.max_batch:
        r = run(args, mb)
        results.append(r)
        print(
            f"max_batch {mb}: {r['ok']} ok, {r['errors']} errors, {r['agg_tok_s']:.0f} tok/s, "
            f"TTFT p50 {r['ttft_p50_ms']:.1f} ms p99 {r['ttft_p99_ms']:.1f} ms, "
            f"latency p50 {r['latency_p50_ms']:.0f} ms p99 {r['latency_p99_ms']:.0f} ms",
            file=sys.stderr,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"http-{results[0]['server']['model']['id']}" + (f"-topk{args.top_k}" if args.top_k else "")
    (out / f"{stem}.json").write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                "machine": machine,
                "args": vars(args),
                "results": results,
            },
            indent=2,
        )
    )
    (out / f"{stem}.md").write_text(markdown(results, machine, args))
    print(markdown(results, machine, args))
    print(f"wrote {out / stem}.json and .md", file=sys.stderr)
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
