"""Whole-line candidates, the workspace's lines and names, and the "never invent a word" rule."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer
from bitmamba_lsp.lsp.candidates import (
    WorkspaceLines,
    known_words,
    line_candidates,
    partial_word,
    previous_line,
    request_candidates,
)
from bitmamba_lsp.lsp.completion import CursorContext
from bitmamba_lsp.lsp.prompt import token_prompt
from bitmamba_lsp.lsp.suggest import CompletionJob, invents_word


def test_lines_after_the_same_line_and_lines_starting_with_what_is_typed() -> None:
    text = "a = 1\nfoo(x)\nbar(y)\nz = 2\nfoo(x)\nbar(q)\nfoo(x)\n    \nbaz(1)\n"
    at = text.index("    \n") + 4
    assert line_candidates(text, at) == ["bar(q)", "bar(y)"]  # after "foo(x)": nearest first at equal counts
    text = "import os\nimport sys\nfrom x import y\nimp"
    assert line_candidates(text, len(text)) == ["ort sys", "ort os"]
    # the line goes on after the cursor: no whole line fits
    assert line_candidates("x = 1\nx = 2\nx = ", 6) == []


def test_the_cursors_own_line_is_never_a_candidate() -> None:
    text = "def f():\n    return compute(value)\n"
    at = text.index("compute")
    assert "compute(value)" not in line_candidates(text, at)


def test_workspace_lines_follow_files_in_and_out() -> None:
    ws = WorkspaceLines()
    ws.add_file(Path("a.py"), "import os\nimport sys\nsetup(name='a')\n")
    ws.add_file(Path("b.py"), "import os\nimport json\n")
    ws.finish()
    assert set(ws.candidates("import os", "", 5)) == {"import sys", "import json"}
    assert ws.candidates("", "setup(", 5) == ["name='a')"]
    assert "setup" in ws.words("set")
    ws.remove_file(Path("a.py"))  # opened in the editor: it leaves the workspace level
    assert ws.candidates("import os", "", 5) == ["import json"]
    assert ws.candidates("", "setup(", 5) == []
    ws.add_file(Path("a.py"), "import os\nimport re\n")  # closed again, with its last text
    assert set(ws.candidates("import os", "", 5)) == {"import re", "import json"}


def test_request_candidates_file_first_then_workspace() -> None:
    ws = WorkspaceLines()
    ws.add_file(Path("other.py"), "x = load()\nprint(x.shape)\n")
    ws.finish()
    settings = SimpleNamespace(line_candidates=True, cache_workspace=True)
    text = "x = load()\nprint(x.size)\n\nx = load()\n"
    got = request_candidates(text, len(text), settings, ws)
    assert got[0] == "print(x.size)" and "print(x.shape)" in got
    assert request_candidates(text, len(text), SimpleNamespace(line_candidates=False, cache_workspace=True), ws) == []
    assert previous_line(text, len(text)) == ("x = load()", "")


def test_partial_words_and_known_words() -> None:
    text = "def fetch_rows(table):\n    return fetch_"
    assert partial_word(text, len(text)) == "fetch_"
    assert partial_word("x = fo(1)", 5) is None  # a word goes on after the cursor
    assert partial_word("x = 1 ", 6) is None
    words = known_words(text, len(text), "fetch_")
    assert "fetch_rows" in words
    assert "return" in known_words("    retur", 9, "retur")  # a keyword


def test_healing_never_invents_a_word() -> None:
    tok = bundled_text_tokenizer()

    def job(line_prefix: str, known: set[str]) -> CompletionJob:
        return CompletionJob("u", token_prompt([1]), CursorContext(line_prefix, ""), known_words=known)

    tokens = tok.encode("retur" + "l = 1")
    sure = SimpleNamespace(chosen=[0.99] * len(tokens))
    unsure = SimpleNamespace(chosen=[0.3] * len(tokens))
    # "retur" + "l" makes "returl": unknown, and the model is not sure of it
    assert invents_word(job("    retur", {"return"}), "l = 1", unsure, tokens, tok, "retur")
    # unless the model is sure of it, or the word is known
    assert not invents_word(job("    retur", {"return"}), "l = 1", sure, tokens, tok, "retur")
    assert not invents_word(job("    retur", {"return", "returl"}), "l = 1", unsure, tokens, tok, "retur")
    # finishing it as "return" is fine
    tokens = tok.encode("return x")
    assert not invents_word(job("    retur", {"return"}), "n x", SimpleNamespace(chosen=[0.1] * len(tokens)), tokens, tok, "retur")
