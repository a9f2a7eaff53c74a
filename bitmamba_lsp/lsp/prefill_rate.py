"""The prefill rate of a model on this machine: measured, and kept in the user's cache.

The daemon sizes a request's foreground feed (and a FIM model's suffix window) from the prompt
tokens per second the model prefills here (`measure_prefill_rate`: 25-40 ms at the 255M shape).
That is the same number at every start of the same model file with the same threads on the same
CPU, so it is measured once and read back afterwards (``<user cache>/prefill-rates.json``): a cold
start's first completion does not wait for it. Background prefill still raises the rate when it
sees a faster one (worker.py), and stores it when it is well above the stored one (`raised`). A damaged or unwritable file is never an error: the rate is then
measured, as without a cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bitmamba_lsp import __version__, _core
from bitmamba_lsp.engine.model import Model
from bitmamba_lsp.engine.tokenizer import user_cache_dir

FILE = "prefill-rates.json"
MIN_RATE, MAX_RATE = 1.0, 1e7  # tokens/s a stored rate may hold (anything else is damage)
RAISE_BY = 1.25  # background prefill stores a rate this much above the stored one (worker.py)
MAX_ENTRIES = 64  # models x thread counts kept; the oldest go first


def measure_prefill_rate(model: Model, tokens: int = 64, budget_s: float = 0.02) -> float:
    """Prompt tokens per second of a batched prefill on this machine (a warm-up run, then the best
    of up to three timed ones while they fit in `budget_s`: one at the 255M shape; 64 tokens, one
    full chunk: the rate of longer prefills within a few per cent, and half the time of 128 at the
    daemon's start, where it shares the cores with the imports). The best, not the last: a run
    that waited for the GIL or a busy core would make every later request answer from a window
    (statecache.py) for the daemon's whole life; background prefill raises it further when it sees
    a faster rate (ModelWorker)."""
    ids = np.arange(tokens) % max(1, model.vocab_size)
    model.prefill(model.new_state(), ids[:8])
    best = float("inf")
    start = time.perf_counter()
    for _ in range(3):
        t0 = time.perf_counter()
        model.prefill(model.new_state(), ids)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start + best > budget_s:
            break
    return tokens / max(best, 1e-6)


def _cpu() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("model name", "Hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    import platform  # not at the top: a daemon's start imports only what it needs

    return platform.processor() or platform.machine()


def key(model: Any) -> str | None:
    """What the rate depends on: the model file (path, size, time), what runs of it (the layer
    passes of a repetition, a LoRA adapter), its threads, the SIMD level built, this package's
    version and the CPU; None for a model without a file."""
    path = getattr(model, "path", None)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    core = getattr(model, "core", None)
    shape = sorted(dict(core.info).items()) if core is not None else None
    lora = getattr(model, "extra", {}).get("lora")
    parts = (os.path.realpath(path), st.st_size, st.st_mtime_ns, shape, lora, model.threads, _core.simd_level(),
             __version__, _cpu(), os.cpu_count())  # fmt: skip
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def _path() -> Path:
    return user_cache_dir() / FILE


def _read() -> dict[str, float]:
    try:
        data = json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(k, str) and _sane(v)}


def _sane(rate: Any) -> bool:
    """A rate read back can be used: a finite number of tokens per second, not absurd."""
    return isinstance(rate, int | float) and not isinstance(rate, bool) and MIN_RATE <= rate <= MAX_RATE


def cached(model: Any) -> float | None:
    k = key(model)
    return None if k is None else _read().get(k)


def store(model: Any, rate: float) -> None:
    k = key(model)
    if k is None or not _sane(rate):
        return
    rates = _read()
    rates.pop(k, None)
    rates[k] = round(float(rate), 1)
    while len(rates) > MAX_ENTRIES:
        rates.pop(next(iter(rates)))
    import tempfile  # not at the top: a daemon's start imports only what it needs

    path = _path()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(rates, f)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def raised(model: Any, rate: float) -> float:
    """Background prefill saw `rate` (returned): stored when it is well above the stored one (a
    measure at load that shared the cores with a start heals for the next starts too)."""
    old = cached(model)
    if old is not None and rate > RAISE_BY * old:
        store(model, rate)
    return rate


def prefill_rate(model: Any) -> float:
    """The model's prefill rate on this machine: from the cache, else measured (and stored)."""
    rate = cached(model)
    if rate is None:
        rate = measure_prefill_rate(model)
        store(model, rate)
    return rate
