"""A disk cache of the methods attrs generates, for the daemon's start.

pygls speaks LSP through lsprotocol, whose ~550 attrs classes get their `__init__`, `__repr__`,
`__eq__`... as source text that attrs compiles at import: half of the 0.33 s `import lsprotocol.types`
takes, on every start of the daemon. The compiled code objects are the same each time (same source,
same file name), so they are kept in a file of the user's cache (``marshal``, keyed by the
interpreter's bytecode magic and the attrs installed) and attrs evaluates them instead of compiling
again. Anything unexpected (another attrs without the hook, an unreadable or foreign file) leaves
attrs as it is: the cache only ever saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import marshal
import os
import sys
import tempfile
import threading
from pathlib import Path
from types import CodeType
from typing import Any

log = logging.getLogger(__name__)

_table: dict[bytes, CodeType] = {}
_used: set[bytes] = set()  # what this process asked for: what the file keeps (a script that differs
# per run, e.g. one naming an object's address, is not carried from start to start)
_path: Path | None = None
_dirty = False


def _cache_file(make: Any) -> Path:
    """Keyed by the bytecode magic, the interpreter and the attrs installed (its _make.py's size and
    time: attrs.__version__ would import importlib.metadata, 30 ms)."""
    from bitmamba_lsp.engine.tokenizer import user_cache_dir

    st = os.stat(make.__file__)
    ident = f"{sys.version}|{make.__file__}|{st.st_size}|{st.st_mtime_ns}".encode()
    tag = hashlib.sha256(importlib.util.MAGIC_NUMBER + ident).hexdigest()[:16]
    return user_cache_dir() / "codecache" / f"attrs-{tag}.marshal"


def install() -> bool:
    """Serve attrs' generated methods from the cache from now on; True when the hook is in place."""
    global _path
    try:
        import attr._make as make
    except ImportError:
        return False
    orig = getattr(make, "_compile_and_eval", None)
    if orig is None or getattr(orig, "_bitmamba_cached", False):
        return bool(orig)
    try:
        _path = _cache_file(make)
    except OSError:
        return False
    with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
        loaded = marshal.loads(_path.read_bytes())
        if isinstance(loaded, dict):
            _table.update({k: v for k, v in loaded.items() if isinstance(k, bytes) and isinstance(v, CodeType)})

    def compile_and_eval(
        script: str, globs: dict[str, Any] | None, locs: Any = None, filename: str = ""
    ) -> None:
        global _dirty
        key = hashlib.blake2b(f"{filename}\0{script}".encode(), digest_size=16).digest()
        _used.add(key)
        code = _table.get(key)
        if code is None:
            code = compile(script, filename, "exec")
            _table[key] = code
            _dirty = True
        eval(code, globs, locs)  # attrs' own generated source, as attrs itself does

    compile_and_eval._bitmamba_cached = True  # type: ignore[attr-defined]
    make._compile_and_eval = compile_and_eval  # type: ignore[assignment]
    return True


def save(background: bool = False) -> None:
    """When something was compiled since the cache was read, write the code this process used
    (atomically: a temporary file renamed; errors are only logged). `background`: on a daemon
    thread, off the start's path."""
    global _dirty
    if not _dirty or _path is None:
        return
    _dirty = False
    payload = {k: _table[k] for k in _used if k in _table}
    path = _path

    def write() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".codecache-")
            with os.fdopen(fd, "wb") as f:
                f.write(marshal.dumps(payload))
            os.replace(tmp, path)
        except OSError as e:
            log.debug("attrs code cache not written: %s", e)

    if background:
        threading.Thread(target=write, name="bitmamba-codecache", daemon=True).start()
    else:
        write()
