"""``bitmamba train``: train (or fine-tune) a BitMamba-2 model on a directory of source files.

:func:`register` adds the ``train`` subcommand to an ``argparse`` subparsers object; the handler
is stored as ``func`` (call ``args.func(args)``, it returns an exit code). Importing this module
does not import torch; running the command without torch prints how to install it.

Examples::

    bitmamba train --corpus ~/src/myproject --out ~/.cache/bitmamba/myproject --minutes 10 --lr 1e-3
        (fine-tunes the shipped model on your repository; use it with --model ~/.cache/bitmamba/myproject)
    bitmamba train --from-scratch --corpus ~/src --out ./mine --minutes 45
    bitmamba train --lora --corpus ~/src/myproject --out myproject.lora.bin --minutes 20
        (a LoRA adapter for the shipped model, or --init MODEL.bin; use it with --lora myproject.lora.bin)
    python -m bitmamba_lsp.train train --from-scratch --stdlib --site-packages --out bitmamba_lsp/data/default
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

LR, LORA_LR = 3e-3, 1e-3
INSTALL_HINT = "training needs PyTorch: pip install 'bitmamba-lsp[train]'  (installs torch==2.13.0)"


def default_model_dir() -> Path:
    """The model shipped with the package (``bitmamba_lsp/data/default``)."""
    return Path(__file__).resolve().parent.parent / "data" / "default"


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("data")
    src.add_argument(
        "--corpus",
        action="append",
        default=[],
        metavar="DIR",
        help="directory of source files to train on (repeatable)",
    )
    src.add_argument("--stdlib", action="store_true", help="add the running Python's standard library")
    src.add_argument(
        "--site-packages",
        action="store_true",
        help="add installed packages whose license metadata is permissive (MIT/BSD/Apache/PSF/...)",
    )
    src.add_argument(
        "--ext",
        action="append",
        default=None,
        metavar="EXT",
        help="file extensions to include (repeatable; default: .py)",
    )
    src.add_argument(
        "--heldout-permille", type=int, default=30, help="files held out for evaluation, per mille"
    )
    src.add_argument(
        "--packages",
        nargs="?",
        const="default",
        default=None,
        metavar="FILE",
        help="add pinned PyPI/npm source packages (a JSON list; no FILE: the shipped "
        "train/registry_packages.json), downloaded once into ~/.cache/bitmamba/corpus, "
        "license checked per package, held out by package",
    )
    src.add_argument("--package-cache", default=None, metavar="DIR", help="where packages are downloaded")
    src.add_argument(
        "--heldout-package-permille", type=int, default=150, help="registry packages held out whole, per mille"
    )
    src.add_argument(
        "--fim-rate",
        type=float,
        default=0.0,
        help="share of training pieces in fill-in-the-middle form (e.g. 0.7; adds the FIM sentinel tokens)",
    )
    src.add_argument(
        "--group-cap-mb",
        type=float,
        default=3.0,
        help="max MB of text per package/top-level module (0: no cap)",
    )

    io = p.add_argument_group("input/output")
    io.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="model directory to write (model.bin, tokenizer.json, model.json); with --lora the adapter "
        "file (a directory: DIR/adapter.lora.bin)",
    )
    io.add_argument(
        "--run-dir", metavar="DIR", help="work directory for caches, checkpoints and logs (default: OUT.run)"
    )
    io.add_argument(
        "--init",
        metavar="DIR",
        default="default",
        help="fine-tune from an exported model directory (keeps its size and tokenizer); "
        "'default' (the default) means the model shipped with the package; with --lora also a .bin "
        "or a Hub repo id",
    )
    io.add_argument(
        "--from-scratch",
        action="store_true",
        help="train a new model (sizes below, a new tokenizer) instead of fine-tuning",
    )
    io.add_argument(
        "--deepen",
        type=int,
        metavar="N",
        help="grow the --init model to N layers before training (up to twice its depth): each added layer "
        "a copy of the one before it with a silent output projection, so training starts from the same "
        "function",
    )
    io.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")

    lo = p.add_argument_group("LoRA adapter (bitmamba.cpp's format)")
    lo.add_argument(
        "--lora",
        action="store_true",
        help="train only a LoRA adapter (A, B on every block's in_proj and out_proj) for the --init model, "
        "which stays frozen; --out names the adapter file",
    )
    lo.add_argument("--lora-rank", type=int, default=16, metavar="R", help="adapter rank (default 16)")
    lo.add_argument(
        "--lora-alpha", type=float, default=32.0, metavar="A", help="scale = alpha / rank (default 32)"
    )

    m = p.add_argument_group("model (only with --from-scratch)")
    m.add_argument("--vocab-size", type=int, default=4096)
    m.add_argument("--d-model", type=int, default=256)
    m.add_argument("--n-layers", type=int, default=4)
    m.add_argument("--n-heads", type=int, default=8)

    t = p.add_argument_group("training")
    t.add_argument(
        "--minutes", type=float, default=45.0, help="training time budget (the schedule anneals on time too)"
    )
    t.add_argument("--steps", type=int, default=3000, help="step budget")
    t.add_argument("--seq-len", type=int, default=512)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument(
        "--lr", type=float, default=None, help=f"peak learning rate (default {LR}; {LORA_LR} with --lora)"
    )
    t.add_argument("--min-lr-ratio", type=float, default=0.1)
    t.add_argument("--warmup-steps", type=int, default=100)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument(
        "--eval-every", type=int, default=200, help="steps between held-out evaluations (multiple of 10)"
    )
    t.add_argument("--checkpoint-minutes", type=float, default=5.0)
    t.add_argument("--no-compile", dest="compile", action="store_false", help="do not use torch.compile")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers`` (from ``ArgumentParser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune a BitMamba-2 model on source files (needs torch)",
        description=__doc__.split("\n\n")[0],
    )
    add_train_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        print(f"bitmamba train: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from . import registry
    from .trainer import TrainConfig, train

    if not (args.corpus or args.stdlib or args.site_packages or args.packages):
        print("bitmamba train: give --corpus DIR (or --stdlib / --site-packages / --packages)", file=sys.stderr)
        return 2
    if args.lora and args.from_scratch:
        print(
            "bitmamba train: --lora trains an adapter for an existing model (--init), not --from-scratch",
            file=sys.stderr,
        )
        return 2
    if args.deepen is not None and (args.from_scratch or args.lora):
        print("bitmamba train: --deepen grows the --init model; not with --from-scratch or --lora", file=sys.stderr)
        return 2
    init = None if args.from_scratch else args.init
    if init is not None and init.lower() == "default":
        init = str(default_model_dir())
        if not (Path(init) / "model.bin").is_file():
            print("bitmamba train: the shipped model is missing; pass --from-scratch", file=sys.stderr)
            return 2
    cfg = TrainConfig(
        out=args.out,
        run_dir=args.run_dir,
        corpus=list(args.corpus),
        stdlib=args.stdlib,
        site_packages=args.site_packages,
        extensions=tuple(args.ext) if args.ext else (".py",),
        heldout_permille=args.heldout_permille,
        group_cap_mb=args.group_cap_mb or None,
        init=init,
        deepen=args.deepen,
        packages=(str(registry.DEFAULT_LIST) if args.packages == "default" else args.packages),
        package_cache=args.package_cache,
        heldout_package_permille=args.heldout_package_permille,
        fim_rate=args.fim_rate,
        vocab_size=args.vocab_size,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else (LORA_LR if args.lora else LR),
        min_lr_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        steps=args.steps,
        minutes=args.minutes,
        seed=args.seed,
        threads=args.threads,
        eval_every=args.eval_every,
        checkpoint_minutes=args.checkpoint_minutes,
        compile=args.compile,
        resume=args.resume,
        lora=args.lora,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        command=getattr(args, "command_line", None) or "bitmamba " + " ".join(map(shlex.quote, sys.argv[1:])),
    )
    if cfg.lora:
        from .lora import train_lora

        train_lora(cfg)
    else:
        train(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bitmamba_lsp.train [train] ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] != "train" and argv[0] not in ("-h", "--help")):
        argv.insert(0, "train")
    parser = argparse.ArgumentParser(prog="python -m bitmamba_lsp.train")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.command_line = "python -m bitmamba_lsp.train " + " ".join(map(shlex.quote, argv))
    return args.func(args)
