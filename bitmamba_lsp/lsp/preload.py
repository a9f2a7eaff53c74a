"""The model the command line names (`bitmamba-lsp --model M`), loaded from the daemon's first
instant, while the main thread still imports the daemon's modules and reads the first messages.

The settings cannot change a model given on the command line (it overrides them), so it can be
loaded before `initialize` arrives. The C++ parts (building the weights, the prefill-rate
measurement of worker.py) release the GIL and run beside those imports; ModelSlot takes the result
instead of loading again.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Callable
from typing import Any

_pending: dict[str, cf.Future[Any]] = {}
_lock = threading.Lock()



def start(name: str, threads: int | None) -> None:
    """Begin loading `name` (what `engine.load` takes) on a background thread."""
    # imported here, on the caller's thread: two threads importing the same modules at once could
    # meet in the import locks
    from bitmamba_lsp.engine import load
    from bitmamba_lsp.lsp.prefill_rate import prefill_rate
    from bitmamba_lsp.lsp.worker import PREFILL_RATE

    derive = derived_from(library=False)

    with _lock:
        if name in _pending:  # offered by the warm server (warm.py): already loaded
            return
    fut: cf.Future[Any] = cf.Future()

    def run() -> None:
        try:
            model = load(name, threads=threads, prepare_tokenizer=derive)
            model.extra[PREFILL_RATE] = (model.threads, prefill_rate(model))
            fut.set_result(model)
        except BaseException as exc:  # given to whoever takes the model, as loading there would
            fut.set_exception(exc)

    with _lock:
        _pending[name] = fut
    threading.Thread(target=run, name="bitmamba-preload", daemon=True).start()


def derived_from(library: bool = True) -> Callable[[Any], None]:
    """What a daemon derives from a model's tokenizer before its first request can be served: the
    BPE (built on first use otherwise), the token healer and the clean-start table (each cached
    per tokenizer object). A load does it while the core repacks the weights (`prepare_tokenizer`).
    library=False: a tokenizer.bin's ASCII BPE only, not the `tokenizers` library's (ModelSlot
    builds that one in the background once the model is ready: LIBRARY_BPE_DELAY_S)."""
    from bitmamba_lsp.engine.healing import healer_for
    from bitmamba_lsp.lsp.documents import clean_start_table

    def derive(tok: Any) -> None:
        tok.prepare(library=library)
        healer_for(tok, [tok.eos_id] if tok.eos_id is not None else [])
        clean_start_table(tok)

    return derive


def offer(name: str, model: Any) -> None:
    """`model`, already loaded (and its prefill rate measured), as the one `start(name)` would load."""
    fut: cf.Future[Any] = cf.Future()
    fut.set_result(model)
    with _lock:
        _pending[name] = fut


def take(name: str | None, revision: str | None) -> Any:
    """The preloaded model for the `name` setting (waiting for it; its load error is raised here),
    or None when none was started for it. A model is taken once."""
    if name is None or revision is not None:
        return None
    with _lock:
        fut = _pending.pop(name, None)
    return None if fut is None else fut.result()
