"""Context chunks: snippets of the other open files that go before the document in the prompt.

Hosted assistants put the windows of other open files most similar to the file being edited into
the prompt. Here they go before the document on its checkpoint track (lsp/prompt.py: the LEAD
segment), so they must be *stable*: a change of the chunks re-reads the whole document (in the
background). So they are chosen for the document as a whole, not for the cursor:

- every other open document is cut into windows of `WINDOW_LINES` lines (`STRIDE` apart);
- each window is scored by the Jaccard similarity of its identifier set with the document's;
- the best `count` windows (at most one per file, at least `MIN_SIMILARITY`) are kept, in a fixed
  order (by file name), each with a first line naming its file.

They are chosen again only when a document is opened or closed, and the document's track changes
only when the choice does. The setting `contextChunks` is the number of chunks (0: none).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

WINDOW_LINES = 60
STRIDE = 30
MAX_CHARS = 4000  # of one chunk
SCAN_CHARS = 200_000  # of a document, read for its identifiers and windows
MIN_SIMILARITY = 0.05
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


@dataclass(frozen=True)
class Chunk:
    uri: str
    line: int  # first line of the window
    text: str  # the window's text, with a first line naming its file
    similarity: float


def identifiers(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text[:SCAN_CHARS]))


def windows(text: str) -> list[tuple[int, str]]:
    lines = text[:SCAN_CHARS].split("\n")
    out = []
    for start in range(0, max(1, len(lines) - WINDOW_LINES // 2), STRIDE):
        w = "\n".join(lines[start : start + WINDOW_LINES])
        if w.strip():
            out.append((start, w))
    return out


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def header(uri: str) -> str:
    name = PurePosixPath(uri).name
    comment = "//" if name.endswith((".js", ".jsx", ".ts", ".tsx", ".mjs", ".cjs", ".c", ".cc", ".cpp", ".h", ".rs", ".go", ".java")) else "#"
    return f"{comment} {name}\n"


def pick(uri: str, text: str, others: Iterable[tuple[str, str]], count: int) -> tuple[Chunk, ...]:
    """The chunks for document `uri` (its `text`) from the `others` (uri, text), best first by
    similarity, then put in file-name order."""
    if count <= 0:
        return ()
    mine = identifiers(text)
    best: list[Chunk] = []
    for other_uri, other_text in others:
        if other_uri == uri:
            continue
        top: Chunk | None = None
        for line, w in windows(other_text):
            sim = jaccard(mine, identifiers(w))
            if sim >= MIN_SIMILARITY and (top is None or sim > top.similarity):
                top = Chunk(other_uri, line, header(other_uri) + w[:MAX_CHARS] + "\n", sim)
        if top is not None:
            best.append(top)
    best.sort(key=lambda c: (-c.similarity, c.uri))
    return tuple(sorted(best[:count], key=lambda c: (c.uri, c.line)))


MAX_OTHERS = 16  # other open documents looked at (the most recently opened)


class ContextChoice:
    """The chunks chosen for each open document; `refresh` says whose choice changed."""

    def __init__(self) -> None:
        self.chosen: dict[str, tuple[Chunk, ...]] = {}

    def refresh(self, docs: dict[str, str], count: int) -> dict[str, tuple[Chunk, ...]]:
        """Choose again for every document in `docs` (uri -> text, in opening order); the
        documents whose chunks changed, with their new chunks."""
        changed: dict[str, tuple[Chunk, ...]] = {}
        recent = list(docs.items())[-MAX_OTHERS - 1 :]
        for uri, text in docs.items():
            new = pick(uri, text, recent, count)
            old = self.chosen.get(uri, ())
            if [(c.uri, c.line) for c in new] != [(c.uri, c.line) for c in old]:
                changed[uri] = new
            self.chosen[uri] = new
        for uri in list(self.chosen):
            if uri not in docs:
                del self.chosen[uri]
        return changed

    def refresh_ids(self, docs: dict[str, str], count: int, model) -> dict:
        """`refresh`, with each changed document's chunks as the token ids that go before it:
        the chunks' text, then the model's end of text (the documents' separator)."""
        tok = model.tokenizer if model is not None else None
        if tok is None:
            return {}
        out = {}
        for uri, chunks in self.refresh(docs, count).items():
            ids = [*tok.encode("".join(c.text for c in chunks)), tok.eos_id or 0] if chunks else []
            out[uri] = np.asarray(ids, dtype=np.int32)
        return out
