"""Whole-line candidates, the workspace's lines and names, and the "never invent a word" rule."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer
from bitmamba_lsp.lsp.candidates import (
    WorkspaceLines,
    known_words,
    lead_of,
    led_candidates,
    line_candidates,
    middle_candidates,
    middle_of,
    partial_word,
    previous_line,
    request_candidates,
    request_led,
)
from bitmamba_lsp.lsp.completion import CursorContext
from bitmamba_lsp.lsp.prompt import token_prompt
from bitmamba_lsp.lsp.suggest import CompletionJob, invents_word


def test_lines_after_the_same_line_and_lines_starting_with_what_is_typed() -> None:
    text = "a = 1\nfoo(x)\nbar(y)\nz = 2\nfoo(x)\nbar(q)\nfoo(x)\n    \nbaz(1)\n"
    at = text.index("    \n") + 4
    got = line_candidates(text, at)
    assert [c.text for c in got] == ["bar(q)", "bar(y)"]  # after "foo(x)": nearest first at equal counts
    assert all(c.after_prev and c.source == "file" and c.count == 1 for c in got)
    text = "import os\nimport sys\nfrom x import y\nimp"
    got = line_candidates(text, len(text))
    assert [c.text for c in got] == ["ort sys", "ort os"] and not any(c.after_prev for c in got)
    # the line goes on after the cursor: no whole line fits
    assert line_candidates("x = 1\nx = 2\nx = ", 6) == []


def test_lines_before_a_line_equal_to_the_one_below_the_cursor() -> None:
    # the cursor's line sits between "x = 1" and "check(x)": "log(x)" came before "check(x)" twice,
    # "log(y)" after "x = 1" and before "check(x)": both at once, so it ranks first
    text = "x = 1\nlog(y)\ncheck(x)\nlog(x)\ncheck(x)\nz = 0\nlog(x)\ncheck(x)\nx = 1\n\ncheck(x)\n"
    at = text.index("x = 1\n\n") + len("x = 1\n")
    got = line_candidates(text, at)
    assert [c.text for c in got][:2] == ["log(y)", "log(x)"]
    assert got[0].after_prev and got[0].before_next
    assert got[1].before_next and not got[1].after_prev and got[1].count == 2
    # the line below the cursor itself is not a line that came before it
    assert "x = 1" not in [c.text for c in got if c.before_next]


def test_lines_that_start_like_the_models_line() -> None:
    assert lead_of("    return self._d.keys()") == "return "
    assert lead_of("self.x = x") == "self."
    assert lead_of(">>> glom(target, spec)") == ">>> glom("
    assert lead_of("   ") is None and lead_of("))") is None
    text = "def f(self):\n    return self.a\n    x = 2\n    return self.b\n\n    y = 3\n    return None\n"
    at = text.index("\n\n") + 1
    got = led_candidates(text, at, ["return ", "y "], per_lead=2)
    # nearest first, above or below, `per_lead` for each lead
    assert [c.text for c in got] == ["return self.b", "return None", "y = 3"]
    assert [c.distance for c in got] == [1, 2, 1]
    assert all(c.led and c.source == "file" for c in got)
    assert led_candidates(text, at + 1, ["return "]) == []  # not an empty line (the cursor's holds "y = 3")
    ws = WorkspaceLines()
    ws.add_file(Path("w.py"), "return cls(x)\nreturn cls(x)\nreturn None\n")
    ws.finish()
    settings = SimpleNamespace(line_candidates=True, lead_candidates=True, cache_workspace=True)
    got = request_led(text, at, settings, ws, ["return self.c"], {"return None"})
    assert [(c.text, c.source) for c in got] == [("return self.b", "file"), ("return self.a", "file"), ("return cls(x)", "workspace")]
    settings.lead_candidates = False
    assert request_led(text, at, settings, ws, ["return self.c"], set()) == []


def test_middles_other_lines_put_between_the_same_ends() -> None:
    assert middle_of("foo(a, b=2)", "foo(a, ", ")") == "b=2"
    assert middle_of("x = a + b", "x = ", " + b") == "a"  # the space before the rest stays the rest's
    assert middle_of("foo(a)", "foo(a", ")") is None  # nothing between
    assert middle_of("bar(a, b)", "foo(", ")") is None
    assert middle_of("foo()", "foo(", "))") is None  # shorter than both ends
    text = "def f():\n    foo(a, b=2)\n    y = 1\n    foo(a, )\n    foo(a, c=3)\n    foo(a, c=3)\n"
    at = text.index("foo(a, )") + len("foo(a, ")
    got = middle_candidates(text, at)
    assert [(c.text, c.count, c.distance) for c in got] == [("c=3", 2, 1), ("b=2", 1, 2)]  # most frequent first
    assert middle_candidates(text, text.index("y = 1") + 5) == []  # nothing after the cursor
    assert middle_candidates(text, text.index("y = 1") + 4) == []  # the line has no other like it
    ws = WorkspaceLines()
    ws.add_file(Path("w.py"), "    foo(a, d=4)\nfoo(a, d=4)\nfoo(a, e=5)\n")
    ws.finish()
    assert [(c.text, c.count, c.source) for c in ws.middles("foo(a, ", ")", 5)] == [("d=4", 2, "workspace"), ("e=5", 1, "workspace")]
    assert ws.middles("", ")", 5) == []


def _middles_reference(text: str, offset: int, window: int) -> list[tuple[str, int, int]]:
    """middle_candidates by the plain reading: every line within `window` lines of the cursor's."""
    lines = text.split("\n")
    row = text.count("\n", 0, offset)
    col = offset - (text.rfind("\n", 0, offset) + 1)
    typed, rest = lines[row][:col].lstrip(), lines[row][col:].rstrip()
    if not rest.strip() or not typed.strip():
        return []
    found: dict[str, list[int]] = {}
    for k, ln in enumerate(lines):
        if k != row and abs(k - row) <= window:
            x = middle_of(ln.strip(), typed, rest)
            if x:
                found.setdefault(x, []).append(abs(k - row))
    ranked = sorted(found, key=lambda x: (-len(found[x]), min(found[x])))
    return [(x, len(found[x]), min(found[x])) for x in ranked[:3]]


def test_middles_match_a_plain_reading_of_the_lines(monkeypatch) -> None:
    import random

    from bitmamba_lsp.lsp import candidates as cand

    rnd = random.Random(7)
    pieces = ["f(a, ", "b", "c=1", ")", " + t", "y = ", "s", "u", "", "    "]
    for trial in range(300):
        lines = ["".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 4))) for _ in range(rnd.randint(1, 30))]
        text = "\n".join(lines)
        offset = rnd.randint(0, len(text))
        window = rnd.choice([1, 3, 2000])
        if trial % 3 == 0:  # the character window binds too: it must never yield a piece of a line
            monkeypatch.setattr(cand, "WINDOW_CHARS", rnd.randint(1, 40))
            got = [(c.text, c.count, c.distance) for c in middle_candidates(text, offset, window=window)]
            full = {x for x, _, _ in _middles_reference(text, offset, len(lines))}
            assert {x for x, _, _ in got} <= full
            monkeypatch.setattr(cand, "WINDOW_CHARS", 200_000)
        else:
            got = [(c.text, c.count, c.distance) for c in middle_candidates(text, offset, window=window)]
            assert got == _middles_reference(text, offset, window), (text, offset, window)


def test_led_lines_match_a_plain_reading_of_the_lines() -> None:
    import random

    rnd = random.Random(11)
    pieces = ["return ", "x", "self.", "a", "(1)", " ", "if "]
    for _ in range(300):
        lines = ["".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 3))) for _ in range(rnd.randint(1, 25))]
        row = rnd.randrange(len(lines))
        lines[row] = "  "
        text = "\n".join(lines)
        offset = sum(len(x) + 1 for x in lines[:row]) + rnd.randint(0, 2)
        leads, window, per = rnd.sample(["return ", "self.", "if ", "x"], 2), rnd.choice([2, 2000]), rnd.choice([1, 5])
        want, seen = [], set()
        for lead in leads:
            found: dict[str, list[int]] = {}
            for k, ln in enumerate(lines):
                st = ln.strip()
                if k != row and abs(k - row) <= window and st.startswith(lead) and len(st) > len(lead):
                    found.setdefault(st, []).append(abs(k - row))
            for st in sorted(found, key=lambda x: (min(found[x]), -len(found[x])))[:per]:
                if st not in seen:
                    seen.add(st)
                    want.append((st, len(found[st]), min(found[st])))
        got = [(c.text, c.count, c.distance) for c in led_candidates(text, offset, leads, window=window, per_lead=per)]
        assert got == want, (text, offset, leads)


def test_the_cursors_own_line_is_never_a_candidate() -> None:
    text = "def f():\n    return compute(value)\n"
    at = text.index("compute")
    assert "compute(value)" not in [c.text for c in line_candidates(text, at)]


def test_workspace_lines_follow_files_in_and_out() -> None:
    ws = WorkspaceLines()
    ws.add_file(Path("a.py"), "import os\nimport sys\nsetup(name='a')\n")
    ws.add_file(Path("b.py"), "import os\nimport json\n")
    ws.finish()
    assert {c.text for c in ws.candidates("import os", "", 5)} == {"import sys", "import json"}
    assert [c.text for c in ws.candidates("", "setup(", 5)] == ["name='a')"]
    assert "setup" in ws.words("set")
    ws.remove_file(Path("a.py"))  # opened in the editor: it leaves the workspace level
    assert [c.text for c in ws.candidates("import os", "", 5)] == ["import json"]
    assert ws.candidates("", "setup(", 5) == []
    ws.add_file(Path("a.py"), "import os\nimport re\n")  # closed again, with its last text
    assert {c.text for c in ws.candidates("import os", "", 5)} == {"import re", "import json"}


def test_request_candidates_file_first_then_workspace() -> None:
    ws = WorkspaceLines()
    ws.add_file(Path("other.py"), "x = load()\nprint(x.shape)\n")
    ws.finish()
    settings = SimpleNamespace(line_candidates=True, cache_workspace=True)
    text = "x = load()\nprint(x.size)\n\nx = load()\n"
    got = [(c.text, c.source) for c in request_candidates(text, len(text), settings, ws)]
    assert got[0] == ("print(x.size)", "file") and ("print(x.shape)", "workspace") in got
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


def test_choice_picks_the_largest_expected_gain_above_the_threshold() -> None:
    from bitmamba_lsp.lsp.candidates import Candidate
    from bitmamba_lsp.lsp.choice import Option, agreement, choose, greedy_prefixes, utility

    pieces = [("return", -0.1), (" self", -0.2), (".x", -2.0), ("\n", -0.1), ("    pass", -0.1)]
    prefixes = greedy_prefixes(pieces, line_start=True, ended=False)
    assert [o.text for o in prefixes] == ["return", "return self", "return self.x"]
    assert prefixes[-1].whole_line and not prefixes[0].whole_line
    assert [len(o.logps) for o in prefixes] == [1, 2, 3]
    cand = Option("return self.y", Candidate("return self.y", "file", True, 3, 2), [-0.3, -0.2, -0.5], True, True)
    options = [*prefixes, cand]
    agreement(options)
    assert prefixes[0].agree and prefixes[1].agree and not prefixes[2].agree and cand.agree
    weights = {"bias": 0.0, "logp": 1.0}  # p = sigmoid(log p): a monotone stand-in
    best = choose(options, 0.0, weights)
    assert best is not None
    assert utility(best) == max(utility(o) for o in options)  # p x (characters + the whole-line bonus)
    assert choose(options, 0.99, weights) is None  # nothing is that sure: silence
    # a whole line is eligible from min_p x whole_bar, a line cut short only from min_p
    bar = max(o.p for o in options if o.whole_line) / 0.99 * 0.999  # just under the best whole line
    got = choose(options, 0.99, weights, whole_bar=bar)
    assert got is not None and got.whole_line
    assert choose(options, 0.99, weights, whole_bar=bar * 1.002) is None


def test_a_miss_cost_prefers_a_surer_option_and_keeps_silent_below_break_even(monkeypatch) -> None:
    """With a cost c for a wrong suggestion the expected gain is p x (characters + bonus) - (1 - p) x c:
    a short sure option beats a long doubtful one, and nothing is shown when no option gains."""
    from bitmamba_lsp.lsp import choice
    from bitmamba_lsp.lsp.choice import Option, choose, utility

    monkeypatch.setattr(choice, "WHOLE_LINE_BONUS", 10.0)
    monkeypatch.setattr(choice, "calibrate", lambda o, weights=None: o.p)  # p as given

    def option(text: str, p: float, whole: bool = False) -> Option:
        o = Option(text, None, [math.log(p)], whole, True)
        o.p = p
        return o

    sure, doubtful = option("return", 0.9), option("return self._items[key]", 0.3)
    assert choose([sure, doubtful], 0.05) is doubtful  # 0.3 x 23 = 6.9 > 0.9 x 6 = 5.4
    assert choose([sure, doubtful], 0.05, miss_cost=5.0) is sure  # 6.9 - 0.7 x 5 = 3.4 < 5.4 - 0.1 x 5 = 4.9
    assert math.isclose(utility(doubtful, 5.0), 0.3 * 23 - 0.7 * 5.0)
    weak = option("x", 0.2)
    assert choose([weak], 0.05) is weak  # above the bar, any gain is shown without a cost
    assert choose([weak], 0.05, miss_cost=5.0) is None  # 0.2 x 1 - 0.8 x 5 < 0: silence
    # a whole line's bonus carries it over the cost where the same text cut short does not
    whole, cut = option("pass", 0.4, whole=True), option("pass", 0.4)
    assert choose([cut], 0.05, miss_cost=5.0) is None  # 0.4 x 4 - 0.6 x 5 < 0
    assert choose([cut, whole], 0.05, miss_cost=5.0) is whole  # 0.4 x (4 + 10) - 0.6 x 5 > 0


def test_the_fits_replay_is_the_daemons_choice(monkeypatch) -> None:
    """benchmarks/fit_choice.py chooses the thresholds and costs by replaying choice.choose over
    recorded options with arrays; on random options, thresholds, bars and costs both pick the same
    option (or both nothing)."""
    import random
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import numpy as np
    from fit_choice import ModeOptions, replay_mode

    from bitmamba_lsp.lsp import choice
    from bitmamba_lsp.lsp.choice import Option, choose

    rng = random.Random(3)
    bonus = 10.0
    monkeypatch.setattr(choice, "WHOLE_LINE_BONUS", bonus)
    monkeypatch.setattr(choice, "calibrate", lambda o, weights=None: o.p)  # p as recorded
    cases, opts, options = [], [], {}
    for k in range(300):
        case = f"c{k}"
        cases.append({"kind": "line_start", "case": case, "package": f"pkg{k % 3}", "marker": True})
        for _ in range(rng.randint(1, 6)):
            # half the cases from a few values: equal gains (the first option wins in both) and
            # gains of exactly 0 under a cost (0.5 x 5 - 0.5 x 5: never shown) occur
            coarse = k % 2 == 0
            text = "x" * (rng.choice([1, 2, 5]) if coarse else rng.randint(1, 30))
            p = rng.choice([0.1, 0.5, 0.9]) if coarse else rng.random()
            whole, right = rng.random() < 0.3, rng.random() < 0.5
            o = Option(text, None, [0.0], whole, True)
            o.p = p
            options.setdefault(case, []).append(o)
            opts.append({"kind": "line_start", "case": case, "package": f"pkg{k % 3}", "text": text,
                         "right": right, "features": {"whole_line": float(whole)}})
    m = ModeOptions(opts, cases, "line_start")
    p_all = np.asarray([o.p for case in options.values() for o in case])
    right_of = {id(o): r["right"] for o, r in zip((o for c in options.values() for o in c), opts, strict=True)}
    for threshold, bar, cost in [(0.3, 1.0, 0.0), (0.5, 0.2, 0.0), (0.1, 0.6, 5.0), (0.3, 0.8, 2.0), (0.05, 1.0, 20.0)]:
        shown = right = 0
        chars = 0.0
        for case in options.values():
            got = choose(case, threshold, whole_bar=bar, miss_cost=cost)
            if got is not None:
                shown += 1
                if right_of[id(got)]:
                    right += 1
                    chars += len(got.text.rstrip())
        got_replay = replay_mode(m, p_all, threshold, bar, bonus, cost)
        assert got_replay["shown"] == shown / len(cases)
        assert got_replay["precision"] == (right / shown if shown else 0.0)
        assert abs(got_replay["chars_gained"] - chars / len(cases)) < 1e-9


def test_runner_up_hooks_note_and_force_the_first_token() -> None:
    import numpy as np

    from bitmamba_lsp.lsp.choice import FirstChoices, ForceTokens

    logits = np.asarray([0.1, 3.0, -np.inf, 2.0, 1.0], dtype=np.float32)  # token 2: forbidden (healing)
    firsts = FirstChoices(4)
    assert firsts.active()
    assert firsts.apply(logits) is logits and firsts.tokens == [1, 3, 4, 0]
    firsts.accept(1)
    assert not firsts.active()
    force = ForceTokens([3])
    out = force.apply(logits)
    assert int(np.argmax(out)) == 3 and np.isfinite(out[3]) and out[2] == -np.inf
    force.accept(3)
    assert not force.active()
