"""What the workspace memory costs: the cache mixture per generated token, building and updating
the counts, their memory, and reading a hostile workspace (100k files, binary files, symlink loops,
unreadable files) within its budget.

    python benchmarks/bench_cache.py                  # writes benchmarks/results/cache.{json,md}
    python benchmarks/bench_cache.py --files 10000    # a smaller synthetic workspace
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bitmamba_lsp.bench import machine_info, rss_mb
from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer
from bitmamba_lsp.lsp.cache_model import CacheMixture, DocumentCache, Level, NGramIndex
from bitmamba_lsp.lsp.workspace import ScanLimits, scan

REPO = Path(__file__).resolve().parents[1]


def corpus_ids(tok, limit: int) -> np.ndarray:
    """Tokens of this repository's own Python sources (a realistic code distribution)."""
    ids: list[int] = []
    for p in sorted((REPO / "bitmamba_lsp").rglob("*.py")):
        ids += tok.encode(p.read_text("utf-8"))
        if len(ids) >= limit:
            break
    return np.asarray(ids[:limit], dtype=np.int32)


def per_token_cost(tok, doc: np.ndarray, workspace: np.ndarray, steps: int, repeats: int) -> dict:
    """ms per generated token of the mixture hook (apply + prob + accept) on a GPT-2-sized
    vocabulary, with the file and workspace levels, against the softmax it replaces."""
    v = tok.vocab_size
    file_ix, ws_ix = NGramIndex(6, v), NGramIndex(6, v)
    file_ix.update(doc, 0, len(doc), +1)
    ws_ix.update(workspace, 0, len(workspace), +1)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(steps, v)).astype(np.float32)
    start = len(doc) // 2
    times, bare = [], []
    for _ in range(repeats):
        mix = CacheMixture([Level("workspace", ws_ix), Level("file", file_ix)], doc[:start].tolist())
        t0 = time.perf_counter()
        for i in range(steps):
            out = mix.apply(logits[i])
            t = int(doc[start + i])  # follow the document: the caches keep matching
            mix.prob(t)
            mix.accept(t)
        times.append((time.perf_counter() - t0) * 1000 / steps)
        t0 = time.perf_counter()
        for i in range(steps):
            int(np.argmax(logits[i]))  # what the core does without a hook: one pass over the logits
        bare.append((time.perf_counter() - t0) * 1000 / steps)
    assert out is not None
    return {
        "ms_per_token": {"min": min(times), "median": statistics.median(times)},
        "argmax_ms_per_token": {"median": statistics.median(bare)},
        "vocab": v,
        "file_tokens": len(doc),
        "workspace_tokens": len(workspace),
    }


def build_and_edit(doc: np.ndarray, vocab: int) -> dict:
    c = DocumentCache(NGramIndex(6, vocab))
    t0 = time.perf_counter()
    c.reset(doc)
    c.build(len(doc))
    build = time.perf_counter() - t0
    edits = []
    ids = doc
    rng = np.random.default_rng(1)
    for _ in range(200):
        at = int(rng.integers(10, len(ids) - 10))
        new = np.concatenate([ids[:at], rng.integers(0, vocab, size=2).astype(np.int32), ids[at + 1 :]])
        t0 = time.perf_counter()
        c.edit(at, new)
        edits.append((time.perf_counter() - t0) * 1000)
        ids = new
    return {
        "tokens": len(doc),
        "build_us_per_token": build / len(doc) * 1e6,
        "edit_ms": {"min": min(edits), "median": statistics.median(edits), "max": max(edits)},
        "contexts": c.index.contexts,
        "bytes_per_token": c.index.nbytes / len(doc),
    }


def hostile_workspace(root: Path, n_files: int) -> None:
    """n_files small source files in nested folders, plus binary files, a symlink loop, an
    unreadable file and a huge file."""
    rng = np.random.default_rng(2)
    body = "def f{0}(x):\n    return x + {0}\n"
    for i in range(n_files):
        d = root / f"pkg{i % 100}" / f"sub{(i // 100) % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i}.py").write_text(body.format(i))
    (root / "blob.py").write_bytes(bytes(rng.integers(0, 256, size=65536, dtype=np.uint8)))
    (root / "huge.py").write_text("x = 1\n" * 2_000_000)
    os.symlink(root, root / "pkg0" / "loop")
    bad = root / "pkg1" / "unreadable.py"
    bad.write_text("y = 2\n")
    bad.chmod(0)


def scan_cost(tok, n_files: int, limits: ScanLimits) -> dict:
    with tempfile.TemporaryDirectory(prefix="bitmamba-ws-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        hostile_workspace(root, n_files)
        made = time.perf_counter() - t0
        rss0 = rss_mb()
        t0 = time.perf_counter()
        files = tokens = 0
        ix = NGramIndex(6, tok.vocab_size)
        for _, _, ids in scan([root], tok.encode, limits):
            files += 1
            tokens += len(ids)
            a = np.asarray(ids, dtype=np.int32)
            ix.update(a, 0, len(a), +1)
        dt = time.perf_counter() - t0
        return {
            "files_created": n_files + 3,
            "create_s": round(made, 1),
            "scan_s": round(dt, 2),
            "files_read": files,
            "tokens_kept": tokens,
            "limits": vars(limits),
            "index_mb": ix.nbytes / 2**20,
            "rss_growth_mb": rss_mb() - rss0,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {info['cpu']} | {info['cores']} cores | python {info['python']}")
    tok = bundled_text_tokenizer()
    code = corpus_ids(tok, 400_000)
    doc, workspace = code[:20_000], code[20_000:]
    res = {
        "machine": info,
        "mixture": per_token_cost(tok, doc, workspace, args.steps, args.repeats),
        "document": build_and_edit(code[:200_000], tok.vocab_size),
        "workspace_scan": scan_cost(tok, args.files, ScanLimits()),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    m, d, w = res["mixture"], res["document"], res["workspace_scan"]
    md = "\n".join(
        [
            f"Machine: {info['cpu']}, {info['cores']} cores. GPT-2 vocabulary ({m['vocab']} tokens), code of this repository.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| mixture hook per generated token (file {m['file_tokens']:,} + workspace {m['workspace_tokens']:,} tokens), min / median | "
            f"{m['ms_per_token']['min']:.3f} / {m['ms_per_token']['median']:.3f} ms |",
            f"| (a bare argmax over the logits, for scale) | {m['argmax_ms_per_token']['median']:.3f} ms |",
            f"| counting a document ({d['tokens']:,} tokens) | {d['build_us_per_token']:.2f} us / token |",
            f"| an edit (2 tokens replacing 1), min / median / max | {d['edit_ms']['min']:.3f} / {d['edit_ms']['median']:.3f} / {d['edit_ms']['max']:.3f} ms |",
            f"| memory of the counts | {d['bytes_per_token']:.0f} bytes / token |",
            f"| hostile workspace: {w['files_created']:,} files (binary, 12 MB file, symlink loop, unreadable) | "
            f"read {w['files_read']:,} files, {w['tokens_kept']:,} tokens in {w['scan_s']} s; index {w['index_mb']:.0f} MB |",
        ]
    )
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "cache.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
