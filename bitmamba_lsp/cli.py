"""Command-line entry points: `bitmamba` (engine tools), `bitmamba-lsp` (the daemon),
`bitmamba-server` (the OpenAI-compatible HTTP API)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bitmamba_lsp.engine.formats.bitmamba_bin import SHAPES, BitMamba2Config


def _add_model(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--model",
        "-m",
        default=None,
        required=required,
        help="model: a .bin file, a folder, a Hub repo id (owner/name), or omit for the shipped default",
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) to pin")
    p.add_argument("--threads", "-t", type=int, default=None, help="worker threads (default: one per core)")
    p.add_argument(
        "--lm-head",
        choices=["int8", "f32"],
        default="int8",
        help="float output layers (bitmamba-student): quantize to int8 per row at load (default) or keep fp32",
    )
    p.add_argument(
        "--lora",
        default=None,
        metavar="FILE",
        help="apply a LoRA adapter (bitmamba.cpp's .lora.bin format; `bitmamba train --lora` writes one)",
    )
    g = p.add_argument_group("layer repetition (RYS, bitmamba.cpp's flags)")
    g.add_argument("--repeat-start", type=int, default=None, metavar="S", help="first layer of the repeated slice")
    g.add_argument("--repeat-end", type=int, default=None, metavar="E", help="last layer of the slice (inclusive)")
    g.add_argument("--repeat-count", type=int, default=1, metavar="N", help="extra passes of the slice (default 1)")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the bitmamba.cpp reference CLI)")
    g.add_argument("--max-tokens", "-n", type=int, default=400)
    g.add_argument("--temperature", type=float, default=0.8, help="below 0.05 means greedy")
    g.add_argument("--top-k", type=int, default=40, help="0 disables")
    g.add_argument("--top-p", type=float, default=0.9, help="1 disables")
    g.add_argument("--min-p", type=float, default=0.05, help="0 disables")
    g.add_argument("--repeat-penalty", type=float, default=1.15, help="1 disables")
    g.add_argument("--penalty-window", type=int, default=256, help="tokens of history the penalty looks at")
    g.add_argument("--seed", type=int, default=None, help="RNG seed (default: random)")
    g.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    g.add_argument("--greedy", action="store_true", help="deterministic argmax decoding")
    g.add_argument(
        "--draft", type=int, default=3, metavar="K",
        help="speculative decoding: guess up to K tokens from the prompt's repeats and check them in one "
        "batched step (the output is unchanged; default 3: a 4-token step, measured best)",
    )
    g.add_argument("--no-draft", dest="draft", action="store_const", const=0, help="plain decoding (same as --draft 0)")


def _load(args: argparse.Namespace):
    from bitmamba_lsp.engine import load

    return load(
        args.model,
        threads=args.threads,
        revision=getattr(args, "revision", None),
        lm_head=args.lm_head,
        repeat=repeat_of(args),
        lora=getattr(args, "lora", None),
    )


def repeat_of(args: argparse.Namespace) -> tuple[int, int, int] | None:
    """--repeat-start/--repeat-end/--repeat-count as load()'s `repeat` (None: no repetition)."""
    start, end = getattr(args, "repeat_start", None), getattr(args, "repeat_end", None)
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise SystemExit("error: --repeat-start and --repeat-end go together")
    return (start, end, args.repeat_count)


# ------------------------------------------------------------------------------------------ info
def cmd_info(args: argparse.Namespace) -> int:
    from bitmamba_lsp import __version__, _core
    from bitmamba_lsp.bench import machine_info
    from bitmamba_lsp.engine.loader import DEFAULT_MODEL_DIR, is_default

    print(f"bitmamba-lsp {__version__}")
    print(f"SIMD level: {_core.simd_level()} (supported by this CPU: {_core.simd_supported_by_cpu()})")
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    print(f"default threads: {_core.default_threads()}")
    if is_default(args.model) and not (DEFAULT_MODEL_DIR / "model.bin").exists():
        print("default model: not installed")
        return 0
    model = _load(args)
    print(f"model: {model.name} ({model.path})")
    for k, v in model.describe().items():
        if k not in ("name", "path"):
            print(f"  {k}: {v}")
    print(f"  load time: {model.load_seconds * 1000:.1f} ms")
    return 0


# ------------------------------------------------------------------------------------------ generate
def _gen_config(args: argparse.Namespace):
    from bitmamba_lsp.engine import GenerationConfig

    cfg = GenerationConfig(
        max_tokens=args.max_tokens,
        temperature=0.0 if args.greedy else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=1.0 if args.greedy else args.repeat_penalty,
        penalty_window=args.penalty_window,
        seed=args.seed,
        stop=tuple(args.stop),
        draft=args.draft,
    )
    try:
        cfg.validate()
    except ValueError as e:
        raise SystemExit(f"bitmamba: {e}") from None
    return cfg


def cmd_generate(args: argparse.Namespace) -> int:
    from bitmamba_lsp.engine.decoding import TextStream, TokenStream

    model = _load(args)
    cfg = _gen_config(args)
    state = model.new_state()
    t0 = time.perf_counter()
    if args.ids is not None:
        ids = [int(x) for x in args.ids.replace(",", " ").split()]
        stream = TokenStream(model, state, ids, cfg)
        for tok in stream:
            print(tok, end=" ", flush=True)
        print()
        n, reason = len(stream.tokens), stream.finish_reason
    else:
        prompt = args.prompt if args.prompt is not None else sys.stdin.read()
        if model.tokenizer is None:
            print("error: this model has no tokenizer; pass --ids", file=sys.stderr)
            return 2
        if args.echo:
            print(prompt, end="", flush=True)
        tstream = TextStream(model, state, prompt, cfg)
        for chunk in tstream:
            print(chunk, end="", flush=True)
        print()
        n, reason = tstream.completion_tokens, tstream.finish_reason
    dt = time.perf_counter() - t0
    if not args.quiet:
        print(f"[{n} tokens in {dt:.2f} s, {n / max(dt, 1e-9):.1f} tok/s, finish: {reason}]", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------ perplexity
def cmd_perplexity(args: argparse.Namespace) -> int:
    import numpy as np

    from bitmamba_lsp.engine.perplexity import perplexity

    model = _load(args)
    path = Path(args.file)
    if args.text:
        ids = model.encode(path.read_text(encoding="utf-8", errors="replace"))
    else:
        raw = path.read_text().replace(",", " ").split()
        try:
            ids = [int(x) for x in raw]
        except ValueError:
            print(
                f"error: {path} is not a token file (whitespace-separated ids); use --text for text",
                file=sys.stderr,
            )
            return 2
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    res = perplexity(model, np.asarray(ids), chunk=args.chunk)
    print(
        f"tokens: {res['tokens']}  nll: {res['nll']:.4f}  perplexity: {res['perplexity']:.3f}  ({res['seconds']:.2f} s)"
    )
    if args.json:
        print(json.dumps(res))
    return 0


# ------------------------------------------------------------------------------------------ bench
def cmd_bench(args: argparse.Namespace) -> int:
    from bitmamba_lsp.bench import (
        bench_model,
        machine_info,
        markdown_table,
        profile_markdown,
        profile_stages,
        profile_verification,
        verification_markdown,
    )

    path = args.model
    if path is None:
        path = str(random_model_path(args.shape))
    m = machine_info()
    print(
        f"machine: {m['cpu']} ({m['cores']} cores), SIMD {m['simd']}, Python {m['python']}", file=sys.stderr
    )
    if args.profile:
        from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin

        profiles, verify = [], []
        for threads in args.threads or [None]:
            model = load_bin(path, threads=threads)
            profiles.append({"threads": model.threads, **profile_stages(model, args.decode_tokens, args.repeats)})
            verify.append({"threads": model.threads, **profile_verification(model, args.verify_tokens, 3 * args.repeats)})
        print(profile_markdown(profiles))
        print()
        print(f"A verification step of {args.verify_tokens} tokens (every position's logits, snapshots), median:")
        print(verification_markdown(verify))
        if args.json:
            Path(args.json).write_text(json.dumps({"decode": profiles, "verification": verify}, indent=2))
            print(f"wrote {args.json}", file=sys.stderr)
        return 0
    results = []
    for threads in args.threads or [None]:
        print(f"--- model {path}, threads {threads or 'default'}", file=sys.stderr)
        results.append(
            bench_model(
                path,
                threads=threads,
                repeats=args.repeats,
                decode_tokens=args.decode_tokens,
                prefill_lengths=tuple(args.prefill),
                log=lambda s: print("  " + s, file=sys.stderr),
            )
        )
    print(markdown_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def random_model_path(shape: str) -> Path:
    """A random-weight model of a named shape, created once in the user cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bitmamba-lsp" / "random"
    path = cache / f"random-{shape}.bin"
    if not path.exists():
        from bitmamba_lsp.engine.formats.bitmamba_bin import random_tensors, write_bin

        cfg = _shape(shape)
        cache.mkdir(parents=True, exist_ok=True)
        print(f"writing random {shape} model to {path} ...", file=sys.stderr)
        write_bin(path, cfg, random_tensors(cfg, seed=0))
    return path


def _shape(name: str) -> BitMamba2Config:
    if name in SHAPES:
        return SHAPES[name]
    try:
        vocab, d, layers, heads = (int(x) for x in name.split("x"))
    except ValueError:
        raise SystemExit(
            f"unknown shape '{name}': use {', '.join(SHAPES)} or VOCABxDMODELxLAYERSxHEADS"
        ) from None
    return BitMamba2Config(vocab, d, layers, heads)


# ------------------------------------------------------------------------------------------ make-random
def cmd_make_random(args: argparse.Namespace) -> int:
    from bitmamba_lsp.engine.formats.bitmamba_bin import random_tensors, write_bin

    cfg = _shape(args.shape)
    if args.vocab:
        cfg = BitMamba2Config(args.vocab, cfg.d_model, cfg.n_layers, cfg.n_heads)
    cfg.validate()
    t0 = time.perf_counter()
    write_bin(args.out, cfg, random_tensors(cfg, seed=args.seed))
    size = Path(args.out).stat().st_size
    print(
        f"wrote {args.out}: vocab {cfg.vocab_size}, d_model {cfg.d_model}, {cfg.n_layers} layers, "
        f"{cfg.n_heads} heads, {size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s (random weights: output is noise)"
    )
    return 0


# ------------------------------------------------------------------------------------------ warmup
def cmd_warmup(args: argparse.Namespace) -> int:
    from bitmamba_lsp.engine.tokenizer import bundled_gpt2_path, bundled_text_tokenizer, gpt2_cache_path

    t0 = time.perf_counter()
    bundled_text_tokenizer()
    path = gpt2_cache_path(bundled_gpt2_path().read_bytes())
    print(f"GPT-2 tokenizer cache: {path} ({time.perf_counter() - t0:.2f} s)")
    return 0


# ------------------------------------------------------------------------------------------ parser
def positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `bitmamba` parser. With ``command`` (the subcommand about to run), only that command's
    plugin module is imported (a built-in command imports none): a command's start pays for what
    it uses, not for the daemon's, the server's or training's imports."""
    p = argparse.ArgumentParser(
        prog="bitmamba", description="1.58-bit Mamba engine: tools, daemon and server"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="build, CPU and model information")
    _add_model(s)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("generate", help="generate text (streams to stdout)")
    _add_model(s)
    s.add_argument("prompt", nargs="?", help="prompt text (default: read stdin)")
    s.add_argument("--ids", help="prompt as token ids ('15496 11 314') instead of text")
    s.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    s.add_argument("--quiet", "-q", action="store_true", help="no timing line on stderr")
    _add_sampling(s)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("perplexity", help="perplexity over a token file (or --text file)")
    _add_model(s)
    s.add_argument("file")
    s.add_argument("--text", action="store_true", help="the file is text: tokenize it")
    s.add_argument("--max-tokens", type=int, default=0)
    s.add_argument("--chunk", type=int, default=512, help="tokens per batched forward")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_perplexity)

    s = sub.add_parser("bench", help="decode/prefill throughput, load time, memory")
    s.add_argument("--model", "-m", default=None, help="model file (default: a random model of --shape)")
    s.add_argument("--shape", default="255m", help=f"random model shape: {', '.join(SHAPES)} or VxDxLxH")
    s.add_argument(
        "--threads", "-t", type=int, nargs="*", default=None, help="thread counts to run (e.g. 1 2)"
    )
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--decode-tokens", type=int, default=64)
    s.add_argument("--prefill", type=int, nargs="*", default=[64, 512], help="prefill lengths")
    s.add_argument("--json", help="write results to this JSON file")
    s.add_argument(
        "--profile",
        action="store_true",
        help="only the per-stage cost of a sampled decode step (ms/token: matrix products, lm_head, "
        "norms + quantization, conv + scan, sampling, other), median of --repeats runs, and of a "
        "verification step of --verify-tokens tokens against a single step",
    )
    s.add_argument(
        "--verify-tokens",
        type=positive_int,
        default=8,
        help="--profile: tokens of the verification step profiled (3x --repeats passes, interleaved with single steps)",
    )
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("make-random", help="write a random-weight model of any shape (for benchmarks)")
    s.add_argument("out")
    s.add_argument("--shape", default="255m", help=f"{', '.join(SHAPES)} or VOCABxDMODELxLAYERSxHEADS")
    s.add_argument("--vocab", type=int, default=0, help="override the vocabulary size")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_make_random)

    s = sub.add_parser("warmup", help="build the GPT-2 tokenizer cache now (its first use does it otherwise)")
    s.set_defaults(func=cmd_warmup)

    if command in sub.choices:  # a built-in command: no plugin is needed
        return p
    for register in _plugins(command):
        register(sub)
    return p


_PLUGINS = {
    "bitmamba_lsp.lsp.cli": ("lsp",),
    "bitmamba_lsp.lsp.warm": ("warm",),
    "bitmamba_lsp.http.cli": ("serve",),
    "bitmamba_lsp.train.cli": ("train",),
    "bitmamba_lsp.evaluation": ("eval",),
    "bitmamba_lsp.demo": ("demo",),
    "bitmamba_lsp.scoring": ("logprob", "score"),
    "bitmamba_lsp.chat_cli": ("chat",),
    "bitmamba_lsp.convert": ("convert",),
}


def _plugins(command: str | None = None) -> list:
    """Subcommands that live with their feature (daemon, HTTP server, training, demo): only the
    module of ``command`` when a plugin provides it, else all of them (help, a mistyped command). A
    feature whose module fails to import (a missing optional dependency, a broken install) does not
    take the others down: its commands report the error when used."""
    out = []
    wanted = [m for m, commands in _PLUGINS.items() if command in commands] or list(_PLUGINS)
    for mod in wanted:
        commands = _PLUGINS[mod]
        try:
            module = __import__(mod, fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):
                continue
            out.append(_unavailable(commands, f"{mod}: {type(e).__name__}: {e}"))
            continue
        except Exception as e:
            out.append(_unavailable(commands, f"{mod}: {type(e).__name__}: {e}"))
            continue
        out.append(module.register)
    return out


_BROKEN: dict[str, str] = {}


def _unavailable(commands: tuple[str, ...], error: str):
    def register(sub) -> None:
        for name in commands:
            _BROKEN[name] = error
            p = sub.add_parser(name, help=f"(unavailable: {error})")
            p.add_argument("args", nargs=argparse.REMAINDER)
            p.set_defaults(func=lambda _a, n=name: _report(n, error))

    return register


def _report(name: str, error: str) -> int:
    print(f"bitmamba {name}: this command cannot load: {error}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    from bitmamba_lsp.engine.errors import (
        ModelFormatError,
        ModelNotFoundError,
        NoTokenizerError,
        TokenizerFormatError,
    )

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    if argv and argv[0] in _BROKEN:  # before argparse, which would only say "unrecognized arguments"
        return _report(argv[0], _BROKEN[argv[0]])
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ModelNotFoundError, ModelFormatError, TokenizerFormatError, NoTokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def lsp_main(argv: Sequence[str] | None = None) -> int:
    return main(["lsp", *(sys.argv[1:] if argv is None else argv)])


def server_main(argv: Sequence[str] | None = None) -> int:
    return main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
