"""The usefulness benchmark's scoring (bitmamba_lsp/editor_eval.py): the cases it cuts, how a
suggestion is scored, and a whole run of the daemon's path on a small local fixture."""

from __future__ import annotations

from pathlib import Path

from bitmamba_lsp.editor_eval import MODES, SourceFile, Tally, markdown, middle_of, pick_cases, run_scoring

CODE = "\n".join(
    [
        "import os",
        "",
        "def total_size(folder, pattern='*'):",
        "    sizes = [os.path.getsize(p) for p in glob(folder, pattern)]",
        "    return sum(sizes) if sizes else 0",
        "",
        "class Walker:",
        "    def __init__(self, root):",
        "        self.root = root",
        "        self.seen = set()",
    ]
) + "\n"


def test_cases_cut_each_line_four_ways() -> None:
    cases = pick_cases(CODE, 5, seed=3, name="x.py")
    lines = CODE.split("\n")
    by_line: dict[int, dict[str, object]] = {}
    for c in cases:
        by_line.setdefault(c.line, {})[c.kind] = c
    assert len(by_line) == 5
    for i, kinds in by_line.items():
        code = lines[i].rstrip()
        start, mid, inside = kinds["line_start"], kinds["mid_line"], kinds["inside_line"]
        assert code.strip() == start.truth and start.col == len(code) - len(code.lstrip())
        assert code[: mid.col] + mid.truth == code and mid.typed and mid.truth
        assert (inside.col, inside.truth) == (mid.col, mid.truth)
        if "middle" in kinds:
            m = kinds["middle"]
            assert m.col == mid.col and m.truth and mid.truth.startswith(m.truth) and m.truth != mid.truth
            assert code[: m.col] + m.truth + code[m.line_end :] == code
    # the middle spans have their own random stream: the other cases are those of a 3-way cut
    again = [c for c in pick_cases(CODE, 5, seed=3, name="x.py") if c.kind != "middle"]
    assert again == [c for c in cases if c.kind != "middle"]


def test_what_a_suggestion_puts_in_the_middle() -> None:
    after = ") if sizes else 0"
    assert middle_of("sum(sizes", 0, after) == "sum(sizes"  # inserted before the rest
    assert middle_of("sum(sizes)", 1, after) == "sum(sizes"  # replaces the `)` it ends with
    assert middle_of("sum(x) + 1", 0, after) == "sum(x) + 1"  # runs on: not cut
    assert middle_of("a\nb", 0, after) == "a\nb"


def test_the_tally() -> None:
    t = Tally()
    t.add("return x", "return x")  # exact
    t.add("return", "return x")  # right prefix, not exact
    t.add("yield y", "return x")  # wrong
    t.add(None, "return x")  # silent
    t.add("\nreturn x", "return x")  # shown (a ghost text), but it leaves the line blank: wrong
    r = t.report()
    assert r["n"] == 5 and r["exact"] == 0.2 and r["shown"] == 0.8
    assert abs(r["precision"] - 2 / 4) < 1e-9
    assert r["chars_gained"] == (len("return x") + len("return")) / 5


def test_a_whole_run_on_a_local_fixture(fim_model_dir: Path) -> None:
    files = [SourceFile("demo", "walk.py", CODE), SourceFile("demo", "sizes.py", CODE.replace("sizes", "lengths"))]
    res = run_scoring(files, {"model": str(fim_model_dir), "minConfidence": 0, "threads": 1}, lines_per_file=4, seed=0)
    r = res["results"]
    assert set(r) == {"daemon", "no suggestion", "same-file lookup", "same-package lookup"}
    assert set(r["daemon"]) == set(MODES)
    assert r["no suggestion"]["line_start"]["shown"] == 0
    for mode in ("line_start", "mid_line", "middle"):
        n = r["daemon"][mode]["n"]
        assert n == r["no suggestion"][mode]["n"] and n > 0
        assert 0 <= r["daemon"][mode]["exact"] <= r["daemon"][mode]["shown"] <= 1
    # the second file repeats the first with one word changed: the same-package lookup finds
    # whole lines there that the same-file lookup (lines above the cursor) cannot
    assert r["same-package lookup"]["line_start"]["exact"] >= r["same-file lookup"]["line_start"]["exact"]
    assert "| daemon | middle |" in markdown(r)
