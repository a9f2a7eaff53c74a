"""A small text-statistics module: the file `bitmamba demo` opens and types into."""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

WORD = re.compile(r"[A-Za-z']+")


def read_text(path: str | Path) -> str:
    """Return the contents of a text file."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def words(text: str) -> list[str]:
    """Split text into lower-case words."""
    return [w.lower() for w in WORD.findall(text)]


def strip_punctuation(text: str) -> str:
    """Remove ASCII punctuation from text."""
    return text.translate(str.maketrans("", "", string.punctuation))


def most_common(text: str, n: int = 10) -> list[tuple[str, int]]:
    """The n most frequent words of text."""
    return Counter(words(text)).most_common(n)


class TextStats:
    """Statistics about one document."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.words = words(text)

    def __len__(self) -> int:
        return len(self.words)

    def average_word_length(self) -> float:
        if not self.words:
            return 0.0
        return sum(len(w) for w in self.words) / len(self.words)

    def lines(self) -> list[str]:
        return self.text.splitlines()

    def summary(self) -> dict[str, float]:
        return {
            "words": len(self),
            "lines": len(self.lines()),
            "average_word_length": self.average_word_length(),
        }
