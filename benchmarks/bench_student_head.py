#!/usr/bin/env python3
"""What the int8 lm_head of bitmamba-student costs: accuracy and speed against the fp32 head.

The real head is 151,665 x 768 fp32 (466 MB); the loader quantizes it to int8 per row (117 MB)
unless `--lm-head f32`. This builds a random student with the real hidden size (768) and a large
vocabulary, runs the same token sequence through both heads and reports top-1 agreement, the KL
divergence of the next-token distributions, the relative logit error, decode speed and load-time
memory. Random weights give near-uniform logits, a harder case for top-1 agreement than a trained
model's peaked ones.

    python benchmarks/bench_student_head.py                 # vocab 65536, 2 layers
    python benchmarks/bench_student_head.py --vocab 151665  # the real head (writes ~0.5 GB)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bitmamba_lsp.bench import machine_info
from bitmamba_lsp.engine.formats.student import StudentConfig, load_student, random_student, write_student


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, SIMD {info['simd']}; threads {args.threads}")
    cfg = StudentConfig(
        vocab_size=args.vocab, d_model=768, n_layers=args.layers
    )  # d_inner 1536, state 16, dt_rank 48
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "student"
        write_student(folder, cfg, random_student(cfg, seed=0))
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size, args.tokens)
        out: dict[str, dict] = {}
        logits = {}
        for head in ("f32", "int8"):
            t0 = time.perf_counter()
            m = load_student(folder, threads=args.threads, lm_head=head)
            load_s = time.perf_counter() - t0
            logits[head] = m.prefill(m.new_state(), ids, all_logits=True)
            s = m.new_state()
            m.prefill(s, ids[:8])
            times = []
            for _ in range(5):
                t = time.perf_counter()
                for i in range(32):
                    m.step(s, int(ids[i]))
                times.append((time.perf_counter() - t) / 32)
            out[head] = {
                "load_s": load_s,
                "weight_mb": m.weight_bytes / 1e6,
                "decode_tok_s_best": 1 / min(times),
                "decode_tok_s_median": 1 / float(np.median(times)),
            }
            print(
                f"  {head:>4}: weights {out[head]['weight_mb']:.0f} MB, load {load_s * 1000:.0f} ms, "
                f"decode {out[head]['decode_tok_s_median']:.0f} tok/s median"
            )
    a, b = logits["f32"], logits["int8"]
    p, q = softmax(a.astype(np.float64)), softmax(b.astype(np.float64))
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-300) - np.log(q + 1e-300)), axis=1)))
    top1 = float(np.mean(np.argmax(a, 1) == np.argmax(b, 1)))
    top5 = float(
        np.mean(
            [len(set(np.argsort(-x)[:5]) & set(np.argsort(-y)[:5])) / 5 for x, y in zip(a, b, strict=True)]
        )
    )
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(a))
    acc = {"top1_agreement": top1, "top5_overlap": top5, "mean_kl_nats": kl, "relative_logit_error": rel}
    print(
        f"int8 vs f32 head over {args.tokens} positions, vocab {args.vocab}: top-1 agreement {top1:.1%}, "
        f"top-5 overlap {top5:.1%}, mean KL {kl:.2e} nats, relative logit error {rel:.2%}"
    )
    res = {"machine": info, "config": vars(args), "heads": out, "accuracy": acc}
    path = Path(args.out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "student-head.json").write_text(json.dumps(res, indent=2))
    print(f"wrote {path / 'student-head.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
