"""``bitmamba eval``: how well a model completes code on held-out files, beside trivial baselines.

Metrics, on files the model never trained on (the held-out split of the training corpus, chosen
by a hash of each file's name, see :func:`bitmamba_lsp.train.corpus.heldout`):

* next-token accuracy and perplexity over each file's first ``max_tokens_per_file`` tokens, the
  file preceded by the end-of-text separator (as in training);
* exact match of single-line completions: for random lines, a cursor at the start of the line's
  code (after its indentation, as an editor auto-indents) and one at a random point inside it; the
  prompt is exactly the daemon's (``lsp.prompt.prompt_at``: the document's text up to the
  cursor, with the daemon's token healing, see :mod:`bitmamba_lsp.engine.healing`), generation is
  greedy (the engine's decode loop) until the end of the line, and the suggestion must equal the rest of
  the line (trailing whitespace ignored). ``char_match`` is the mean fraction of the rest of the line
  that the suggestion gets right before its first wrong character.

Baselines (what "learned something" is measured against), trained on the corpus' training split,
by default on as many tokens as the model saw in training:

* ``ngram``: a token trigram model (Witten-Bell interpolation for perplexity; greedy = the most
  frequent next token after the longest context seen);
* ``line_freq``: the most frequent training line (indentation stripped) that starts with what the
  current line already holds; completes it.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_LINE_TOKENS = 48


# ------------------------------------------------------------------------------------ samples
@dataclass
class Cursor:
    offset: int  # code point offset of the cursor in the file
    kind: str  # "line_start" | "mid_line"
    typed: str  # what the line holds before the cursor, indentation stripped
    target: str  # the rest of the line, trailing whitespace stripped


def pick_cursors(text: str, n_lines: int, seed: int, name: str) -> list[Cursor]:
    """Up to n_lines random lines with code on them; two cursors per line (start of code, inside)."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{name}".encode()).digest()[:8], "big")
    rng = np.random.default_rng(h)
    lines: list[tuple[int, str]] = []
    pos = 0
    for line in text.split("\n"):
        if len(line.strip()) >= 4:
            lines.append((pos, line))
        pos += len(line) + 1
    if not lines:
        return []
    picks = sorted(rng.choice(len(lines), size=min(n_lines, len(lines)), replace=False).tolist())
    out: list[Cursor] = []
    for i in picks:
        start, line = lines[i]
        code = line.rstrip()
        indent = len(code) - len(code.lstrip())
        if start + indent > 0:
            out.append(Cursor(start + indent, "line_start", "", code[indent:]))
        cut = int(rng.integers(indent + 1, len(code)))  # at least one character typed and one left
        out.append(Cursor(start + cut, "mid_line", code[indent:cut], code[cut:]))
    return out


def char_match(pred: str, target: str) -> float:
    pred = pred.rstrip()
    n = 0
    for a, b in zip(pred, target, strict=False):
        if a != b:
            break
        n += 1
    return n / len(target) if target else 1.0


# ------------------------------------------------------------------------------------ baselines
class NGramBaseline:
    """Token trigram counts. ``nll`` interpolates with Witten-Bell down to add-one unigrams;
    ``predict`` backs off to the longest context seen and returns its most frequent next token."""

    def __init__(self, tokens: np.ndarray, vocab_size: int) -> None:
        v = int(vocab_size)
        t = np.asarray(tokens, dtype=np.int64)
        self.v = v
        self.c1 = np.bincount(t, minlength=v).astype(np.float64)
        self.n = float(len(t))
        self.best1 = int(np.argmax(self.c1))
        self.k2, self.c2 = np.unique(t[:-1] * v + t[1:], return_counts=True)
        self.k3, self.c3 = np.unique((t[:-2] * v + t[1:-1]) * v + t[2:], return_counts=True)
        self.ctx2, self.tot2, self.typ2, self.best2 = _context_stats(self.k2, self.c2, v)
        self.ctx3, self.tot3, self.typ3, self.best3 = _context_stats(self.k3, self.c3, v)

    def nll(self, prev2: np.ndarray, prev1: np.ndarray, target: np.ndarray) -> np.ndarray:
        """-log p(target | prev2, prev1) per position (natural log). prev2 < 0: no such token."""
        v = self.v
        p = (self.c1[target] + 1.0) / (self.n + v)
        tot, typ = _lookup(self.ctx2, prev1, self.tot2, self.typ2)
        c = _count(self.k2, self.c2, prev1 * v + target)
        p = np.where(tot > 0, (c + typ * p) / np.maximum(tot + typ, 1), p)
        ctx = np.where(prev2 >= 0, prev2 * v + prev1, -1)
        tot, typ = _lookup(self.ctx3, ctx, self.tot3, self.typ3)
        c = _count(self.k3, self.c3, ctx * v + target)
        p = np.where(tot > 0, (c + typ * p) / np.maximum(tot + typ, 1), p)
        return -np.log(p)

    def predict(self, prev2: np.ndarray, prev1: np.ndarray) -> np.ndarray:
        out = np.full(len(prev1), self.best1, dtype=np.int64)
        i2 = _find(self.ctx2, prev1)
        out = np.where(i2 >= 0, self.best2[np.maximum(i2, 0)], out)
        ctx = np.where(prev2 >= 0, prev2 * self.v + prev1, -1)
        i3 = _find(self.ctx3, ctx)
        return np.where(i3 >= 0, self.best3[np.maximum(i3, 0)], out)

    def next_token(self, ids: Sequence[int]) -> int:
        p2 = np.asarray([ids[-2] if len(ids) >= 2 else -1])
        p1 = np.asarray([ids[-1] if ids else -1])
        if p1[0] < 0:
            return self.best1
        return int(self.predict(p2, p1)[0])


def _context_stats(keys: np.ndarray, counts: np.ndarray, v: int):
    ctx = keys // v
    nxt = keys % v
    order = np.lexsort((-counts, ctx))  # by context, most frequent next token first
    ctx_s = ctx[order]
    first = np.ones(len(ctx_s), dtype=bool)
    first[1:] = ctx_s[1:] != ctx_s[:-1]
    uctx = ctx_s[first]
    best = nxt[order][first]
    starts = np.flatnonzero(first)
    tot = np.add.reduceat(counts[order].astype(np.float64), starts) if len(starts) else np.zeros(0)
    typ = np.diff(np.append(starts, len(ctx_s))).astype(np.float64)
    return uctx, tot, typ, best


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    i = np.searchsorted(sorted_keys, keys)
    i = np.minimum(i, len(sorted_keys) - 1)
    return np.where((sorted_keys[i] == keys) & (keys >= 0), i, -1)


def _lookup(sorted_keys, keys, *arrays):
    i = _find(sorted_keys, keys)
    return tuple(np.where(i >= 0, a[np.maximum(i, 0)], 0.0) for a in arrays)


def _count(sorted_keys, counts, keys) -> np.ndarray:
    i = _find(sorted_keys, keys)
    return np.where(i >= 0, counts[np.maximum(i, 0)], 0).astype(np.float64)


class LineFrequencyBaseline:
    """The most frequent training line that starts with what the current line holds."""

    def __init__(self, texts: Sequence[str]) -> None:
        counts: Counter[str] = Counter()
        for text in texts:
            for line in text.split("\n"):
                s = line.strip()
                if s:
                    counts[s] += 1
        self.lines = sorted(counts)
        self.counts = np.asarray([counts[s] for s in self.lines], dtype=np.int64)

    def complete(self, typed: str) -> str:
        lo = bisect.bisect_left(self.lines, typed)
        hi = bisect.bisect_left(self.lines, typed + "\U0010ffff")
        if hi <= lo:
            return ""
        best = lo + int(np.argmax(self.counts[lo:hi]))
        return self.lines[best][len(typed) :]


# ------------------------------------------------------------------------------------ the model
def model_line(
    model, state, logits: np.ndarray, healer=None, healed=None, max_tokens: int = MAX_LINE_TOKENS
) -> str:
    """Greedy continuation until the end of the line (the daemon's single-line mode), through the
    engine's decode loop: reproducing and then removing the healed token's text when the prompt
    was healed."""
    from bitmamba_lsp.engine.decoding import GREEDY, Decoder, StopMatcher, decode, make_sampler
    from bitmamba_lsp.engine.healing import HealingConstraint

    heal = healed is not None and bool(healed.raw)
    line = StopMatcher(["\n"])
    decoder = Decoder(
        make_sampler(model, GREEDY),
        max_tokens=max_tokens,
        eos=model.eos_id,
        stream=model.require_tokenizer().stream_decoder(),
        text_stop=line,
        skip=healed.text if heal else "",
        hooks=[HealingConstraint(healer, healed.raw)] if heal else [],
    )
    for _ in decode(model, state, decoder, logits):
        pass
    return line.text


def ngram_line(ngram: NGramBaseline, tok, prompt: Sequence[int], eos: int | None) -> str:
    ids = list(prompt)
    dec = tok.stream_decoder()
    text = ""
    for _ in range(MAX_LINE_TOKENS):
        t = ngram.next_token(ids)
        if t == eos:
            break
        ids.append(t)
        text += dec.feed(t)
        if "\n" in text:
            return text.split("\n", 1)[0]
    return (text + dec.flush()).split("\n", 1)[0]


@dataclass
class Tally:
    tokens: int = 0
    nll: float = 0.0
    correct: int = 0
    lines: dict[str, list[tuple[bool, float]]] = field(default_factory=dict)

    def add_line(self, kind: str, pred: str, target: str) -> None:
        self.lines.setdefault(kind, []).append((pred.rstrip() == target, char_match(pred, target)))

    def report(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {}
        if self.tokens:
            out["tokens"] = self.tokens
            out["next_token_accuracy"] = self.correct / self.tokens
            out["perplexity"] = math.exp(self.nll / self.tokens) if self.nll else float("nan")
        for kind, rows in sorted(self.lines.items()):
            out[f"exact_match_{kind}"] = sum(r[0] for r in rows) / len(rows)
            out[f"char_match_{kind}"] = sum(r[1] for r in rows) / len(rows)
            out[f"n_{kind}"] = len(rows)
        return out


def _log_softmax_stats(logits: np.ndarray, targets: np.ndarray) -> tuple[float, int]:
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))
    nll = lse - x[np.arange(len(targets)), targets]
    return float(nll.sum()), int((np.argmax(logits, axis=1) == targets).sum())


def evaluate_file(
    model,
    name: str,
    text: str,
    *,
    max_tokens: int,
    lines: int,
    seed: int,
    tallies: dict[str, Tally],
    ngram: NGramBaseline | None,
    line_freq: LineFrequencyBaseline | None,
    clean: np.ndarray,
    healer=None,
) -> None:
    from bitmamba_lsp.lsp.documents import TrackedDocument
    from bitmamba_lsp.lsp.prompt import prompt_at

    tok = model.tokenizer
    eos = model.eos_id if model.eos_id is not None else 0
    ids = tok.encode(text)[:max_tokens]
    seq = np.asarray([eos, *ids], dtype=np.int64)
    if len(seq) >= 2:
        state = model.new_state()
        nll = 0.0
        correct = 0
        chunk = 1024
        for a in range(0, len(seq) - 1, chunk):
            part = seq[a : a + chunk + 1]
            logits = model.prefill(state, part[:-1], all_logits=True)
            n, c = _log_softmax_stats(logits, part[1:])
            nll += n
            correct += c
        t = tallies["model"]
        t.tokens += len(seq) - 1
        t.nll += nll
        t.correct += correct
        if ngram is not None:
            prev2 = np.concatenate([[-1], seq[:-2]])
            prev1 = seq[:-1]
            b = tallies["ngram"]
            b.tokens += len(seq) - 1
            b.nll += float(ngram.nll(prev2, prev1, seq[1:]).sum())
            b.correct += int((ngram.predict(prev2, prev1) == seq[1:]).sum())

    cursors = pick_cursors(text, lines, seed, name)
    if not cursors:
        return
    doc = TrackedDocument(name, text, 0, tok, clean)
    prompts = []  # (the model's prompt, how much of it is the document's own tokens)
    unhealed = []  # the text before the cursor as tokens (the n-gram baseline's prompt)
    heals = []
    for c in cursors:
        prompt = prompt_at(doc, c.offset)
        unhealed.append(prompt.ids)
        healed = None
        if healer is not None:
            prompt, healed = prompt.heal(healer)
        prompts.append((prompt.ids, prompt.shared))
        heals.append(healed)
    starts = [min(shared, len(p) - 1) for p, shared in prompts]
    snap_at = sorted({s for s in starts if s > 0})
    states: dict[int, object] = {}
    if snap_at:
        _, snaps = model.prefill_snapshots(model.new_state(), doc.ids[: snap_at[-1]], snap_at)
        states = dict(zip(snap_at, snaps, strict=True))
    for c, (prompt, _), s, healed, full in zip(cursors, prompts, starts, heals, unhealed, strict=True):
        state = states[s].copy() if s > 0 else model.new_state()
        logits = model.prefill(state, prompt[s:])
        tallies["model"].add_line(c.kind, model_line(model, state, logits, healer, healed), c.target)
        if ngram is not None:
            tallies["ngram"].add_line(c.kind, ngram_line(ngram, tok, full, eos), c.target)
        if line_freq is not None:
            tallies["line_freq"].add_line(c.kind, line_freq.complete(c.typed), c.target)


# ------------------------------------------------------------------------------------ data
@dataclass
class EvalData:
    heldout: list[tuple[str, str]]  # (name, text)
    train_texts: list[str]
    sources: list[str]


def baseline_budget(args: argparse.Namespace, meta: dict) -> int | None:
    """Training tokens for the baselines: --baseline-tokens, else as many as the model saw."""
    return args.baseline_tokens or int(meta.get("training", {}).get("tokens_seen", 0)) or None


def collect(args: argparse.Namespace, meta: dict, budget: int | None) -> EvalData:
    from bitmamba_lsp.train.corpus import CorpusOptions, build_corpus, normalize_text

    files = [Path(f) for f in args.files or []]
    heldout = [(str(f), normalize_text(f.read_text("utf-8"))) for f in files]
    tc = meta.get("train_config", {})
    corpus_dirs = list(args.corpus or [])
    stdlib, site = args.stdlib, args.site_packages
    if not (files or corpus_dirs or stdlib or site):  # the model's own training sources
        corpus_dirs = list(tc.get("corpus") or [])
        stdlib, site = bool(tc.get("stdlib")), bool(tc.get("site_packages"))
        if not (corpus_dirs or stdlib or site):
            raise SystemExit("bitmamba eval: give --corpus DIR or --files (the model has no training record)")
    train_texts: list[str] = []
    sources = [f"files: {len(files)}"] if files else []
    if corpus_dirs or stdlib or site:
        opts = CorpusOptions(
            extensions=tuple(tc.get("extensions") or (".py",)),
            heldout_permille=int(tc.get("heldout_permille", 30)),
            group_cap_bytes=int(tc["group_cap_mb"] * 1024 * 1024) if tc.get("group_cap_mb") else None,
        )
        corpus = build_corpus(stdlib=stdlib, site_packages=site, directories=corpus_dirs, options=opts)
        sources += corpus.sources
        heldout += [(d.name, d.read()) for d in corpus.split("heldout")]
        if not args.no_baselines:
            docs = corpus.split("train")
            rng = np.random.default_rng(args.seed)
            # ~3.3 characters per token for code with a 4k vocabulary; trimmed exactly after encoding
            chars = 0
            for i in rng.permutation(len(docs)):
                if budget and chars > budget * 5:
                    break
                t = docs[int(i)].read()
                train_texts.append(t)
                chars += len(t)
    heldout.sort()
    if args.max_files:
        heldout = heldout[: args.max_files]
    return EvalData(heldout, train_texts, sources)


def build_baselines(model, texts: list[str], budget: int | None, log) -> tuple[NGramBaseline, LineFrequencyBaseline]:
    eos = model.eos_id if model.eos_id is not None else 0
    enc = model.tokenizer.tokenizer.encode_batch(texts, add_special_tokens=False)
    parts: list[np.ndarray] = []
    used: list[str] = []
    total = 0
    for text, e in zip(texts, enc, strict=True):
        parts.append(np.asarray([*e.ids, eos], dtype=np.int64))
        used.append(text)
        total += len(e.ids) + 1
        if budget and total >= budget:
            break
    tokens = np.concatenate(parts)[: budget or None]
    log(f"baselines: {len(used)} training files, {len(tokens):,} tokens")
    return NGramBaseline(tokens, model.vocab_size), LineFrequencyBaseline(used)


# ------------------------------------------------------------------------------------ command
def run(args: argparse.Namespace) -> int:
    from bitmamba_lsp.engine import load
    from bitmamba_lsp.lsp.documents import clean_start_table

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    model = load(args.model, threads=args.threads)
    if model.tokenizer is None:
        raise SystemExit("bitmamba eval: the model has no tokenizer")
    meta_path = Path(model.path).parent / "model.json" if model.path else None
    meta = json.loads(meta_path.read_text("utf-8")) if meta_path and meta_path.is_file() else {}
    budget = baseline_budget(args, meta)
    data = collect(args, meta, budget)
    log(f"held-out files: {len(data.heldout)} ({', '.join(data.sources)})")
    ngram = line_freq = None
    if data.train_texts:
        ngram, line_freq = build_baselines(model, data.train_texts, budget, log)
    tallies = {"model": Tally()}
    if ngram is not None:
        tallies["ngram"] = Tally()
        tallies["line_freq"] = Tally()
    clean = clean_start_table(model.tokenizer)
    healer = None
    if not args.no_healing:
        from bitmamba_lsp.engine.healing import TokenHealer

        healer = TokenHealer(model.tokenizer, [model.eos_id] if model.eos_id is not None else [])
    for i, (name, text) in enumerate(data.heldout):
        evaluate_file(
            model,
            name,
            text,
            max_tokens=args.max_tokens_per_file,
            lines=args.lines_per_file,
            seed=args.seed,
            tallies=tallies,
            ngram=ngram,
            line_freq=line_freq,
            clean=clean,
            healer=healer,
        )
        if (i + 1) % 20 == 0:
            log(f"  {i + 1}/{len(data.heldout)} files")
    result = {
        "model": model.name,
        "files": len(data.heldout),
        "sources": data.sources,
        "seed": args.seed,
        "max_tokens_per_file": args.max_tokens_per_file,
        "lines_per_file": args.lines_per_file,
        "baseline_tokens": budget if ngram is not None else None,
        "token_healing": healer is not None,
        "seconds": round(time.perf_counter() - t0, 1),
        "results": {k: v.report() for k, v in tallies.items()},
        # the split is a hash of each file's name, so it depends on what is installed: the list
        "heldout_files": [name for name, _ in data.heldout],
    }
    print(markdown(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    if args.write_metadata and meta_path is not None:
        meta["eval"] = {**meta.get("eval", {}), "heldout": {k: v for k, v in result.items() if k != "heldout_files"}}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n", "utf-8")
    return 0


COLUMNS = (
    ("next_token_accuracy", "next-token acc.", "{:.1%}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("exact_match_line_start", "exact line (start)", "{:.1%}"),
    ("exact_match_mid_line", "exact line (mid)", "{:.1%}"),
    ("char_match_line_start", "chars right (start)", "{:.1%}"),
    ("char_match_mid_line", "chars right (mid)", "{:.1%}"),
)


def markdown(result: dict) -> str:
    rows = ["| | " + " | ".join(c[1] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, rep in result["results"].items():
        cells = [fmt.format(rep[key]) if key in rep else "–" for key, _, fmt in COLUMNS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    r = result["results"]["model"]
    rows.append("")
    rows.append(
        f"{result['files']} held-out files, {r.get('tokens', 0):,} tokens, "
        f"{r.get('n_line_start', 0)} + {r.get('n_mid_line', 0)} line completions; {result['seconds']} s"
    )
    return "\n".join(rows)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="held-out next-token accuracy, perplexity and line-completion exact match, with baselines",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", "-m", default=None, help="model (default: the shipped one)")
    p.add_argument("--threads", "-t", type=int, default=None)
    p.add_argument("--corpus", action="append", default=None, metavar="DIR", help="held-out split of DIR")
    p.add_argument("--stdlib", action="store_true", help="held-out split of the standard library")
    p.add_argument("--site-packages", action="store_true", help="held-out split of permissive site-packages")
    p.add_argument("--files", nargs="+", default=None, help="evaluate exactly these files")
    p.add_argument("--max-files", type=int, default=0, help="evaluate at most N held-out files (0: all)")
    p.add_argument("--max-tokens-per-file", type=int, default=4096)
    p.add_argument("--lines-per-file", type=int, default=8, help="random lines per file for line completion")
    p.add_argument(
        "--baseline-tokens",
        type=int,
        default=0,
        help="training tokens for the baselines (default: as many as the model saw in training)",
    )
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--no-healing", action="store_true", help="feed the prompt as is (no token healing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--write-metadata", action="store_true", help="store the results in the model's model.json")
    p.set_defaults(func=run)
    return p
