"""`bitmamba lsp` (also installed as `bitmamba-lsp`): run the completion daemon."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from bitmamba_lsp.lsp import warm


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("lsp", help="run the LSP completion daemon (stdio by default)")
    p.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    p.add_argument("--tcp", metavar="HOST:PORT", help="listen on a TCP socket instead (for debugging)")
    p.add_argument(
        "--model", "-m", default=None, help="override the model setting (path, folder or Hub repo id)"
    )
    p.add_argument("--threads", "-t", type=int, default=None, help="override the threads setting")
    p.add_argument("--log-file", help="write the daemon's log here (stderr by default)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--warm",
        action="store_true",
        help="start fast: hand this start to a warm process that has the daemon imported (Linux; one is "
        f"started on first use and ends after {warm.IDLE_S / 60:.0f} idle minutes; {warm.ENV}=0 turns it off)",
    )
    p.set_defaults(func=run)


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line that gives `args` (what a warm server's daemon parses again)."""
    out = ["--warm"]
    for flag, value in (("--model", args.model), ("--threads", args.threads), ("--log-file", args.log_file)):
        if value is not None:
            out += [flag, str(value)]
    return [*out, "--log-level", args.log_level]


def run(args: argparse.Namespace) -> int:
    if args.warm and not args.tcp:  # `bitmamba lsp --warm` (`bitmamba-lsp` tried before parsing)
        code = warm.try_warm(_argv(args))
        if code is not None:
            return code
    handler: logging.Handler = (
        logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level), handlers=[handler])

    if args.model is not None:  # overrides the settings: load it while the daemon's modules are imported
        from bitmamba_lsp.lsp import preload

        preload.start(args.model, args.threads)

    from bitmamba_lsp.lsp.server import create_server

    # Threads that hold the GIL for long (tokenizing a large document) must not starve the event
    # loop: hand the GIL over every 0.5 ms instead of 5 ms.
    sys.setswitchinterval(0.0005)

    server = create_server(model=args.model, threads=args.threads)
    warm.spawn_later()  # the warm server a --warm start found missing, for the next start
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
    else:
        server.start_io()
    code = server.stopped
    # Stop the model thread between two model calls (bounded: calls are short slices), then leave
    # without interpreter finalisation: a thread inside the C++ engine must never meet a finalising
    # interpreter (that ends in std::terminate, SIGABRT).
    server.session.shutdown(wait=True)
    warm.spawn_pending()  # a short session: the warm server it owes the next start, now
    logging.shutdown()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
