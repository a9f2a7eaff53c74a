"""The daemon's workspace memory: every cache level, kept by the model worker thread (which alone
reads and writes them, in the order the session posts changes).

- one `DocumentCache` per open document, also counted into the union of the open documents;
- the workspace: the files of the workspace folders that are not open (read by a background thread,
  counted here in background slices); a file that is opened leaves the workspace level (the
  document level then holds it, without the cursor's line) and comes back with its last text
  when it is closed.

`levels(uri, line_tokens)` are the nested caches of one request, outermost first.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from bitmamba_lsp.lsp.cache_model import DocumentCache, Level, NGramIndex

BUILD_SLICE = 4096  # tokens counted per background slice (a few ms)
SYNC_BUILD = 20_000  # a request completes at most this much of its document's counts (a few ms)
MAX_DOCUMENT_TOKENS = 500_000  # a larger document gets no cache of its own (~75 MB of counts at most)


def uri_path(uri: str) -> Path | None:
    p = urlparse(uri)
    return Path(unquote(p.path)) if p.scheme == "file" else None


class Memory:
    def __init__(self, order: int, vocab: int) -> None:
        self.order, self.vocab = order, vocab
        self.open_union = NGramIndex(order, vocab)
        self.docs: dict[str, DocumentCache] = {}
        self.workspace = NGramIndex(order, vocab)
        self.workspace_files: dict[Path, DocumentCache] = {}
        self.roots: list[Path] = []
        self._incoming: deque[tuple[Path, np.ndarray]] = deque()  # read by the scanner, not yet counted

    # ------------------------------------------------------------------ documents (worker thread)
    def opened(self, uri: str, ids: np.ndarray) -> None:
        if len(ids) > MAX_DOCUMENT_TOKENS:
            self.closed(uri)  # too large to count (its memory would be its size x 150 bytes)
            return
        c = self.docs.get(uri)
        if c is None:
            c = self.docs[uri] = DocumentCache(NGramIndex(self.order, self.vocab), (self.open_union,))
            path = uri_path(uri)
            ws = self.workspace_files.pop(path, None) if path is not None else None
            if ws is not None:
                ws.drop()  # now a document: counted there, without the cursor's line
        c.reset(ids)

    def edited(self, uri: str, first: int, ids: np.ndarray) -> None:
        c = self.docs.get(uri)
        if c is not None:
            if len(ids) > MAX_DOCUMENT_TOKENS:
                self.closed(uri)
            else:
                c.edit(first, ids)

    def closed(self, uri: str) -> None:
        c = self.docs.pop(uri, None)
        if c is None:
            return
        ids = c.ids
        c.drop()
        path = uri_path(uri)
        if path is not None and any(path.is_relative_to(r) for r in self.roots):
            self._incoming.append((path, ids))  # back to the workspace with its last text

    # ------------------------------------------------------------------ workspace (any thread posts)
    def add_workspace_file(self, path: Path, ids: np.ndarray) -> None:
        self._incoming.append((path, ids))

    def background_work(self) -> bool:
        return bool(self._incoming) or any(not c.complete for c in self.docs.values()) or any(
            not c.complete for c in self.workspace_files.values()
        )

    def background_slice(self, budget: int = BUILD_SLICE) -> int:
        """Count up to `budget` tokens: open documents first, then workspace files."""
        done = 0
        for c in self.docs.values():
            if not c.complete:
                done += c.build(budget - done)
                if done >= budget:
                    return done
        while self._incoming and done < budget:
            path, ids = self._incoming.popleft()
            if any(uri_path(u) == path for u in self.docs):
                continue  # opened meanwhile
            old = self.workspace_files.pop(path, None)
            if old is not None:
                old.drop()
            c = self.workspace_files[path] = DocumentCache(self.workspace)  # no per-file index
            c.ids = np.asarray(ids, dtype=np.int32)
        for c in self.workspace_files.values():
            if not c.complete:
                done += c.build(budget - done)
                if done >= budget:
                    break
        return done

    # ------------------------------------------------------------------ a request
    def levels(
        self, uri: str, line_tokens: tuple[int, int], *, open_files: bool = True, workspace: bool = True
    ) -> list[Level]:
        """Workspace, the other open documents, this document (without its cursor line). This
        document's cache is completed first, so a suggestion never depends on how far background
        work got (the workspace level does: it is read as the files arrive)."""
        out: list[Level] = []
        doc = self.docs.get(uri)
        if doc is not None and not doc.complete and len(doc.ids) - doc.built <= SYNC_BUILD:
            doc.build(len(doc.ids))  # else what is counted so far: background slices do the rest
        if workspace and self.workspace.tokens:
            out.append(Level("workspace", self.workspace))
        if open_files and (len(self.docs) > 1 or (doc is None and self.docs)):
            out.append(Level("open", self.open_union, doc.index if doc is not None else None))
        if doc is not None:
            a, b = line_tokens
            exclude = NGramIndex(self.order, self.vocab)
            if b > a and doc.built > a:
                start = max(0, a - self.order)
                window = np.ascontiguousarray(doc.ids[start : b + self.order], dtype=np.int32)
                hi = min(b + self.order, doc.built) - start
                exclude.update(window, a - start, hi, +1, touching=(a - start, b - start))
            out.append(Level("file", doc.index, exclude))
        return out

    def stats(self) -> dict[str, int]:
        return {
            "documents": len(self.docs),
            "workspace_files": len(self.workspace_files),
            "workspace_tokens": self.workspace.tokens,
            "contexts": self.workspace.contexts + self.open_union.contexts + sum(c.index.contexts for c in self.docs.values()),
            "bytes": self.workspace.nbytes + self.open_union.nbytes + sum(c.index.nbytes for c in self.docs.values()),
        }


def release_memory() -> None:
    """Give freed memory back to the system (glibc keeps it otherwise: a closed 5 MB document's
    states would stay in the process's RSS)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    if _LIBC:
        with contextlib.suppress(Exception):
            _LIBC.malloc_trim(0)


_LIBC: Any = None
