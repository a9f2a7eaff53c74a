"""The suggestion on screen, kept while the user types through it.

After a suggestion is shown, typing its next characters should not cost a model call: the rest of
the same suggestion is still right. `Pending` keeps it (and, once speculation has computed it, the
suggestion that follows accepting it) until the text before it changes or the user types something
else.
"""

from __future__ import annotations

from dataclasses import dataclass

from bitmamba_lsp.lsp.documents import TrackedDocument


@dataclass
class Pending:
    """A suggestion anchored at `anchor` (a character offset) in the document as of `epoch`:
    segments[i] ends sum(len(segments[:i+1])) characters past the anchor (segment 0 is the one
    shown; later ones were precomputed for after accepting it)."""

    anchor: int
    epoch: int
    segments: list[str]
    item_id: str
    speculating: bool = False

    def rest_at(self, doc: TrackedDocument, offset: int) -> str | None:
        """The rest of the current segment for a cursor at `offset`, "" when the typed text left
        the suggestion (drop it), None when the cursor is not inside it."""
        if offset < self.anchor:
            return None
        edits = doc.edits_since(self.epoch)
        if edits is None or any(e.start < self.anchor for e in edits):
            return ""  # the text before the suggestion changed
        full = "".join(self.segments)
        typed = doc.text[self.anchor : offset]
        if not full.startswith(typed):
            return ""
        k = len(typed)
        end = 0
        for seg in self.segments:
            end += len(seg)
            if k < end:
                return full[k:end]
        return None


class PendingSuggestions:
    """The pending suggestion of each document."""

    def __init__(self) -> None:
        self._by_uri: dict[str, Pending] = {}

    def get(self, uri: str) -> Pending | None:
        return self._by_uri.get(uri)

    def set(self, uri: str, pending: Pending) -> None:
        self._by_uri[uri] = pending

    def drop(self, uri: str) -> None:
        self._by_uri.pop(uri, None)

    def clear(self) -> None:
        self._by_uri.clear()

    def lookup(self, doc: TrackedDocument, offset: int) -> str | None:
        """The rest of a suggestion the user is typing through, or the precomputed next one."""
        p = self._by_uri.get(doc.uri)
        if p is None:
            return None
        rest = p.rest_at(doc, offset)
        if rest == "":
            self.drop(doc.uri)
            return None
        return rest
