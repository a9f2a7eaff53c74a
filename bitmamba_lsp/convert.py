"""`bitmamba convert IN.msgpack OUT.bin`: a JAX/Flax msgpack checkpoint of BitMamba-2 (the Hub
repositories' ``jax_weights/*.msgpack``) written as the ``.bin`` bitmamba.cpp reads, what its
``scripts/export_bin.py`` writes from the same checkpoint (same records in the same order, the
same absmean ternary weights and float32 scales). Loading a ``.msgpack`` directly works too but
converts at every load; a converted ``.bin`` starts at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def cmd_convert(args: argparse.Namespace) -> int:
    from bitmamba_lsp.engine.errors import ModelFormatError
    from bitmamba_lsp.engine.formats import flax_msgpack

    src = Path(args.input).expanduser()
    dst = Path(args.output).expanduser()
    if not src.exists():
        raise ModelFormatError(f"{src}: no such file")
    found = flax_msgpack.find(src)
    if found is None:
        what = "folder holds no *.msgpack" if src.is_dir() else "is not a .msgpack file"
        raise ModelFormatError(f"{src}: {what} (convert reads a Flax msgpack checkpoint)")
    if dst.exists() and dst.resolve() == found.resolve():
        raise ModelFormatError(f"{dst}: the output would overwrite the input")
    if dst.is_dir():
        dst = dst / (found.stem + ".bin")
    t0 = time.perf_counter()
    try:
        cfg = flax_msgpack.convert(found, dst)
    except OSError as e:
        print(f"error: {dst}: cannot write: {e.strerror or e}", file=sys.stderr)
        return 1
    if cfg.d_model % 4:
        print(
            f"warning: d_model {cfg.d_model} is not a multiple of 4: rows are padded to whole bytes; "
            "bitmamba-lsp reads this .bin, bitmamba.cpp expects cols divisible by 4",
            file=sys.stderr,
        )
    print(
        f"wrote {dst}: vocab {cfg.vocab_size}, d_model {cfg.d_model}, {cfg.n_layers} layers, "
        f"{cfg.n_heads} heads, {dst.stat().st_size:,} bytes ({time.perf_counter() - t0:.1f} s)"
    )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a Flax .msgpack checkpoint to the .bin bitmamba.cpp reads (as its export_bin.py)",
        description=__doc__,
    )
    p.add_argument("input", help="a .msgpack file (or a folder holding one, e.g. a Hub snapshot)")
    p.add_argument("output", help="the .bin to write (a folder: <input name>.bin in it)")
    p.set_defaults(func=cmd_convert)
