"""The daemon's Session driven directly, without an LSP client: documents, the pending
suggestion, request ordering and status, against an independent computation of the suggestion."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lsp_client import PLAIN, expected_suggestion

from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin
from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer
from bitmamba_lsp.lsp import choice
from bitmamba_lsp.lsp.documents import Change
from bitmamba_lsp.lsp.session import RequestError, Session

MAX_TOKENS = 6
URI = "file:///s.py"


@pytest.fixture(scope="module")
def model_path(model_factory):
    path, _, _ = model_factory(50257, 64, 2, 4, seed=5)  # GPT-2 vocabulary: the bundled tokenizer applies
    return path


@pytest.fixture(scope="module")
def engine(model_path):
    m = load_bin(model_path, threads=1)
    m.tokenizer = bundled_text_tokenizer()
    return m


def run(coro):
    return asyncio.run(coro)


async def ready_session(model_path, **options) -> tuple[Session, list[tuple[str, str, bool]]]:
    told: list[tuple[str, str, bool]] = []
    session = Session(lambda level, msg, popup: told.append((level, msg, popup)))
    session.configure(
        {"model": str(model_path), "threads": 1, "maxTokens": MAX_TOKENS, "debounceMs": 0, "speculative": False, **options}
    )
    await session.start_model_load()
    return session, told




def test_session_completes_like_a_fresh_prefill(model_path, engine) -> None:
    async def go():
        session, told = await ready_session(model_path, **PLAIN)
        text = "def add(a, b):\n    return a"
        session.open(URI, text, 1)
        got = await session.complete(URI, (1, 12), "utf-16")
        want = expected_suggestion(engine, text, len(text), MAX_TOKENS)
        assert (got.text if got is not None else None) == want
        assert any(level == "info" and "ready" in msg for level, msg, _ in told)
        st = session.status("utf-16")
        assert st["model_state"] == "ready" and st["documents"] == 1
        assert st["shown"] == (1 if got is not None else 0)
        # an edit through apply_changes, then the cursor at the new end
        session.change(URI, 2, [Change(" + b", (1, 12), (1, 12))], "utf-16")
        text2 = session.docs[URI].text
        assert text2 == text + " + b"
        got2 = await session.complete(URI, (1, 16), "utf-16")
        want2 = expected_suggestion(engine, text2, len(text2), MAX_TOKENS)
        assert (got2.text if got2 is not None else None) == want2
        session.close(URI)
        assert URI not in session.docs
        session.shutdown()

    run(go())


def test_typing_through_the_pending_suggestion_needs_no_model_call(model_path) -> None:
    async def go():
        session, _ = await ready_session(model_path, minConfidence=0)
        text = "import os\nimport sys\n\n\ndef main():\n    "
        session.open(URI, text, 1)
        first = await session.complete(URI, (5, 4), "utf-16")
        if first is None or len(first.text) < 2:
            pytest.skip("this random model suggests nothing here")
        calls = len(session.stats.total_ms)
        ch = first.text[0]
        session.change(URI, 2, [Change(ch, (5, 4), (5, 4))], "utf-16")
        again = await session.complete(URI, (5, 5), "utf-16")
        assert again is not None and again.text and first.text.startswith(ch + again.text)
        assert len(session.stats.total_ms) == calls  # served from the pending suggestion
        assert session.stats.from_cache == 1
        # typing something else drops it: the next request runs the model
        session.change(URI, 3, [Change("#", (5, 5), (5, 5))], "utf-16")
        await session.complete(URI, (5, 6), "utf-16")
        assert len(session.stats.total_ms) == calls + 1
        session.shutdown()

    run(go())


def test_it_shows_the_best_option_only_when_it_is_likely_right(model_path) -> None:
    """With minConfidence the daemon weighs options (the greedy line's prefixes, the runners-up's
    lines, the whole-line candidates) and shows the one with the largest expected gain whose
    calibrated probability reaches the threshold and whose expected gain after the miss cost is
    positive, or nothing; with 0 it shows the greedy text."""

    bar = choice.WHOLE_LINE_BAR.get("line_start", 1.0)  # a whole line: the bar times this
    cost = choice.MISS_COST.get("line_start", 0.0)  # what a wrong suggestion costs, in characters

    def gain(o) -> float:  # p x (characters + the bonus for a whole line) - (1 - p) x the cost
        return o.p * (len(o.text) + choice.WHOLE_LINE_BONUS * o.whole_line) - (1 - o.p) * cost

    def shown_at(o, threshold: float) -> bool:
        return o.p >= threshold * (bar if o.whole_line else 1.0) and (cost == 0 or gain(o) > 0)

    async def go():
        text = "import os\n\n\ndef load(path):\n    data = open(path).read()\n    return data\n\n\ndef save(path):\n    "
        line = text.count("\n")
        for threshold in (0.0, 0.2, 0.35, 0.9):
            # an empty line: minConfidenceLineStart (-1: the same as minConfidence)
            session, _ = await ready_session(model_path, minConfidence=threshold, minConfidenceLineStart=-1)
            session.open(URI, text, 1)
            got = await session.complete(URI, (line, 4), "utf-32")
            res = session.last_result
            assert res is not None
            if threshold == 0:
                plain = res.text
                continue
            options = res.options
            assert options and all(0.0 <= o.p <= 1.0 for o in options)
            eligible = [o for o in options if shown_at(o, threshold)]
            if not eligible:
                assert got is None
            else:
                best = max(eligible, key=gain)
                assert got is not None and got.text.split("\n")[0] == best.text.strip()
            session.shutdown()
        assert plain  # with minConfidence 0 the greedy text is shown
        # at an empty line minConfidenceLineStart decides, not minConfidence
        session, _ = await ready_session(model_path, minConfidence=0.01, minConfidenceLineStart=0.999)
        session.open(URI, text, 1)
        got = await session.complete(URI, (line, 4), "utf-32")
        assert session.last_result is not None and session.last_result.options
        assert (got is None) == (not any(shown_at(o, 0.999) for o in session.last_result.options))
        session.shutdown()

    run(go())


SHIPPED = Path(choice.__file__).resolve().parent.parent / "data" / "default"


@pytest.mark.parametrize("shipped", [False, True], ids=["gpt2-random", "shipped"])
def test_at_an_indented_empty_line_runners_up_write_other_lines(model_path, shipped) -> None:
    """lineBranches at an indented empty line: healing takes back the line break and the
    indentation, so the first steps only re-type them; the runners-up are those of the token that
    chooses the line's content, and each writes a line of its own (before, they were noted at the
    first step, where every token but the indentation is masked, and no branch was ever written)."""

    async def go():
        text = "import os\n\n\ndef load(path):\n    data = open(path).read()\n    return data\n\n\ndef save(path):\n    "
        line = text.count("\n")
        for branches in (0, 2):
            # the shipped tokenizer has line break + indentation tokens (a line break and seven
            # spaces): healing takes back the line break and the four spaces
            session, _ = await ready_session(SHIPPED if shipped else model_path, minConfidence=1e-6,
                                            minConfidenceLineStart=-1, lineBranches=branches,
                                            minLineConfidence=0)  # a random model: every line is unlikely
            session.open(URI, text, 1)
            await session.complete(URI, (line, 4), "utf-32")
            res = session.last_result
            assert res is not None and res.options
            written = {o.branch for o in res.options}
            assert written == ({0, 1, 2} if branches else {0})
            firsts = {o.branch: o.text.split()[0] for o in res.options if o.branch and o.text.strip()}
            assert all(not o.text[:1].isspace() for o in res.options if o.branch)  # no other indentation
            assert len(set(firsts.values())) == len(firsts) == branches  # two other lines, two other starts
            session.shutdown()

    run(go())


def test_inside_a_line_it_offers_what_other_lines_put_between_the_same_ends(model_path) -> None:
    """A span removed inside a line: the daemon offers what the document's other lines put between
    the same start and end (most frequent), replacing nothing of the rest."""

    async def go():
        text = "def f(a):\n    y = s + t\n    y = u + t\n    y = s + t\n    y =  + t\n    g(a, c=3)\n    g(a, )\n"
        for on in (True, False):
            # off: no candidates and no caches (the caches alone would lead the model to "s + t")
            session, _ = await ready_session(model_path, lineCandidates=on, cacheModel=on)
            session.open(URI, text, 1)
            got = await session.complete(URI, (4, len("    y = ")), "utf-32")  # words after the cursor
            if on:
                assert got is not None and got.text == "s" and got.end is None  # inserted, the rest stays
            else:
                assert got is None or got.text != "s"
            got = await session.complete(URI, (6, len("    g(a, ")), "utf-32")  # closing punctuation only
            if on:  # the suggestion's own bracket closes the line: it replaces the ")"
                assert got is not None and got.text == "c=3)" and got.end == (6, len("    g(a, )"))
            else:
                assert got is None or not got.text.startswith("c=3")
            session.shutdown()

    run(go())


def test_at_an_empty_line_a_suggestion_that_starts_with_a_line_break_is_not_shown(model_path) -> None:
    """The file's cache leads the model to write "\n" + the next statement at an empty line
    (shown with minConfidence 0); with abstention on, nothing that leaves the cursor's line blank
    is offered there, nor at the end of a line that opens no block."""

    async def go():
        text = "x = 1\n\ny = 2\n" * 12 + "x = 1\n\n"
        line = text.count("\n") - 1  # the empty line after the last "x = 1"
        got = {}
        for threshold in (0, 0.3):
            session, _ = await ready_session(model_path, minConfidence=threshold)
            session.open(URI, text, 1)
            got[threshold] = await session.complete(URI, (line, 0), "utf-32")
            session.shutdown()
        assert got[0] is not None and got[0].text.startswith("\n")  # what the model writes there
        assert got[0.3] is None or not got[0.3].text.startswith("\n")
        # the same at the end of a line that opens no block (its next line is all it would offer)
        text = "x = 1\ny = 2\n" * 12 + "x = 1"
        for threshold in (0, 0.3):
            session, _ = await ready_session(model_path, minConfidence=threshold)
            session.open(URI, text, 1)
            got[threshold] = await session.complete(URI, (24, 5), "utf-32")
            session.shutdown()
        assert got[0] is not None and got[0].text.startswith("\n")
        assert got[0.3] is None or not got[0.3].text.startswith("\n")

    run(go())


def test_bad_requests_are_request_errors(model_path) -> None:
    async def go():
        session, _ = await ready_session(model_path)
        with pytest.raises(RequestError, match="not open"):
            await session.complete("file:///nope.py", (0, 0), "utf-16")
        session.open(URI, "x = 1\n", 1)
        with pytest.raises(RequestError, match="negative"):
            await session.complete(URI, (-1, 0), "utf-16")
        session.change("file:///nope.py", 1, [Change("y")], "utf-16")  # logged, not fatal
        session.shutdown()

    run(go())


def test_a_newer_request_wins(model_path) -> None:
    async def go():
        session, _ = await ready_session(model_path, debounceMs=50)
        session.open(URI, "def f(x):\n    return x", 1)
        older = asyncio.ensure_future(session.complete(URI, (1, 12), "utf-16"))
        await asyncio.sleep(0)
        newer = await session.complete(URI, (1, 12), "utf-16")
        assert await older is None  # superseded while it waited
        assert newer is None or newer.text
        session.shutdown()

    run(go())


def test_a_model_that_fails_to_load_is_told_and_completions_are_off(tmp_path) -> None:
    async def go():
        bad = tmp_path / "bad.bin"
        bad.write_bytes(b"not a model")
        told: list[tuple[str, str, bool]] = []
        session = Session(lambda level, msg, popup: told.append((level, msg, popup)))
        session.configure({"model": str(bad), "debounceMs": 0})
        await asyncio.gather(session.start_model_load(), return_exceptions=True)
        assert session.status("utf-8")["model_state"] == "failed"
        assert any(level == "error" and popup for level, _, popup in told)
        session.open(URI, "x = ", 1)
        assert await session.complete(URI, (0, 4), "utf-8") is None
        session.shutdown()

    run(go())
