"""`bitmamba eval`: baselines checked against brute-force references, cursor sampling, and an
end-to-end run on the shipped model, which must beat the trigram baseline on held-out files."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bitmamba_lsp.evaluation import LineFrequencyBaseline, NGramBaseline, char_match, pick_cursors

DEFAULT = Path(__file__).resolve().parent.parent / "bitmamba_lsp" / "data" / "default" / "model.bin"


def _wb_reference(tokens: list[int], v: int, a: int | None, b: int, c: int) -> float:
    """Witten-Bell interpolated trigram probability, written out from the definition."""
    n = len(tokens)
    uni = Counter(tokens)
    p1 = (uni[c] + 1) / (n + v)
    big = Counter(itertools.pairwise(tokens))
    ctx_b = {y: cnt for (x, y), cnt in big.items() if x == b}
    if ctx_b:
        tot, types = sum(ctx_b.values()), len(ctx_b)
        p2 = (ctx_b.get(c, 0) + types * p1) / (tot + types)
    else:
        p2 = p1
    if a is None:
        return p2
    tri = Counter(zip(tokens, tokens[1:], tokens[2:], strict=False))
    ctx_ab = {z: cnt for (x, y, z), cnt in tri.items() if (x, y) == (a, b)}
    if not ctx_ab:
        return p2
    tot, types = sum(ctx_ab.values()), len(ctx_ab)
    return (ctx_ab.get(c, 0) + types * p2) / (tot + types)


def test_ngram_matches_definition_and_is_normalised():
    rng = np.random.default_rng(0)
    v = 7
    tokens = rng.integers(0, v, size=300).tolist() + [1, 2, 3] * 20
    ng = NGramBaseline(np.asarray(tokens), v)
    for a, b in [(1, 2), (None, 4), (6, 6), (0, 5), (None, 3)]:
        probs = []
        for c in range(v):
            got = math.exp(-ng.nll(np.asarray([-1 if a is None else a]), np.asarray([b]), np.asarray([c]))[0])
            want = _wb_reference(tokens, v, a, b, c)
            assert got == pytest.approx(want, rel=1e-12)
            probs.append(got)
        assert sum(probs) == pytest.approx(1.0, abs=1e-9)
    # greedy: the most frequent follower of the longest context seen
    assert ng.next_token([1, 2]) == 3
    follow = Counter(z for x, y, z in zip(tokens, tokens[1:], tokens[2:], strict=False) if (x, y) == (4, 4))
    if follow:
        best = max(follow.values())
        assert ng.next_token([4, 4]) in {z for z, n in follow.items() if n == best}


def test_line_frequency_completes_most_common_line():
    texts = ["    return None\n    return None\n    return self.x\nimport os\n", "import sys\nimport os\n"]
    lf = LineFrequencyBaseline(texts)
    assert lf.complete("ret") == "urn None"
    assert lf.complete("import ") == "os"
    assert lf.complete("zzz") == ""


def test_cursors_split_lines_into_typed_and_target():
    text = "import os\n\nclass A:\n    def f(self, x):\n        return x + 1   \n"
    cursors = pick_cursors(text, 10, seed=1, name="a.py")
    kinds = Counter(c.kind for c in cursors)
    assert kinds["mid_line"] == 4 and kinds["line_start"] == 3  # line 0 starts at offset 0: no prompt
    for c in cursors:
        line_start = text.rfind("\n", 0, c.offset) + 1
        line_end = text.find("\n", c.offset)
        line = text[line_start:line_end]
        assert text[c.offset:line_end].rstrip() == c.target and c.target
        assert text[line_start:c.offset].lstrip() == c.typed
        if c.kind == "line_start":
            assert c.typed == "" and c.offset - line_start == len(line) - len(line.lstrip())
    assert pick_cursors(text, 10, seed=1, name="a.py") == cursors  # deterministic
    assert char_match("return x", "return x + 1") == pytest.approx(8 / 12)
    assert char_match("x + 1  ", "x + 1") == 1.0


@pytest.mark.skipif(not DEFAULT.is_file(), reason="no shipped default model")
def test_eval_end_to_end_model_beats_trigram(tmp_path, capsys):
    from bitmamba_lsp.cli import main

    out = tmp_path / "eval.json"
    rc = main(
        [
            "eval",
            "--stdlib",
            "--max-files",
            "4",
            "--max-tokens-per-file",
            "1024",
            "--lines-per-file",
            "4",
            "--baseline-tokens",
            "300000",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "| model |" in table and "| ngram |" in table
    res = json.loads(out.read_text())
    assert res["files"] == 4
    model, ngram = res["results"]["model"], res["results"]["ngram"]
    assert model["tokens"] == ngram["tokens"] > 1000
    for rep in res["results"].values():
        for k, v in rep.items():
            if k.startswith(("exact_match", "char_match", "next_token")):
                assert 0.0 <= v <= 1.0
    # the trained model has learned more than trigram statistics of the same corpus
    assert model["perplexity"] < ngram["perplexity"]
    assert model["next_token_accuracy"] > ngram["next_token_accuracy"]
