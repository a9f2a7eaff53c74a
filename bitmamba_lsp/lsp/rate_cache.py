"""The prefill rate measured for a model on this machine, kept in the user's cache.

The daemon sizes a request's foreground feed (and a FIM model's suffix window) from the prompt
tokens per second the model prefills here (worker.measure_prefill_rate: 25-40 ms at the 255M
shape). That is the same number at every start of the same model file with the same threads on
the same CPU, so it is measured once and read back afterwards (``<user cache>/prefill-rates.json``):
a cold start's first completion does not wait for it. Background prefill still raises the rate
when it sees a faster one (worker.py). A damaged or unwritable file is never an error: the rate
is then measured, as without a cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from bitmamba_lsp import __version__, _core
from bitmamba_lsp.engine.tokenizer import user_cache_dir

FILE = "prefill-rates.json"
MAX_ENTRIES = 64  # models x thread counts kept; the oldest go first


def _cpu() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("model name", "Hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def key(model: Any) -> str | None:
    """What the rate depends on: the model file (path, size, time), its threads, the SIMD level
    built, this package's version and the CPU; None for a model without a file."""
    path = getattr(model, "path", None)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    parts = (os.path.realpath(path), st.st_size, st.st_mtime_ns, model.threads, _core.simd_level(), __version__, _cpu(), os.cpu_count())
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
    return {k: float(v) for k, v in data.items() if isinstance(k, str) and isinstance(v, int | float) and v > 0}


def cached(model: Any) -> float | None:
    k = key(model)
    return None if k is None else _read().get(k)


def store(model: Any, rate: float) -> None:
    k = key(model)
    if k is None or not rate > 0:
        return
    rates = _read()
    rates.pop(k, None)
    rates[k] = round(float(rate), 1)
    while len(rates) > MAX_ENTRIES:
        rates.pop(next(iter(rates)))
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


def prefill_rate(model: Any) -> float:
    """The model's prefill rate on this machine: from the cache, else measured (and stored)."""
    from bitmamba_lsp.lsp.worker import measure_prefill_rate

    rate = cached(model)
    if rate is None:
        rate = measure_prefill_rate(model)
        store(model, rate)
    return rate
