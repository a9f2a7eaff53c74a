"""The engine's one decode loop (engine/decoding.py) against an independent loop written here
with NumPy: logits hooks, end conditions, stop sequences, the skipped prefix."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitmamba_lsp.engine.decoding import (
    GREEDY,
    Decoder,
    SkipPrefix,
    StopMatcher,
    StopReason,
    decode,
    find_stop,
    make_sampler,
)
from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin
from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer


@pytest.fixture(scope="module")
def model(model_factory):
    path, _, _ = model_factory(50257, 64, 2, 4, seed=9)
    m = load_bin(path, threads=1)
    m.tokenizer = bundled_text_tokenizer()
    return m


class Ban:
    """A hook that forbids some tokens for the first `n` steps."""

    def __init__(self, banned: list[int], n: int) -> None:
        self.banned, self.left, self.seen = banned, n, []

    def active(self) -> bool:
        return self.left > 0

    def apply(self, logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        out[self.banned] = -np.inf
        return out

    def accept(self, token: int) -> None:
        self.seen.append(token)
        self.left -= 1


def reference(model, prompt: list[int], n: int, banned: list[int], ban_steps: int) -> list[int]:
    """Greedy with NumPy argmax over the model's step logits, the ban applied by hand."""
    s = model.new_state()
    logits = model.prefill(s, prompt)
    out: list[int] = []
    for i in range(n):
        x = logits.copy()
        if i < ban_steps:
            x[banned] = -np.inf
        t = int(np.argmax(x))
        out.append(t)
        logits = model.step(s, t)
    return out


def test_decode_with_a_hook_matches_a_numpy_loop(model) -> None:
    prompt = model.encode("def f(x):\n    return")
    free = reference(model, prompt, 12, [], 0)
    banned = sorted(set(free[:3]))
    want = reference(model, prompt, 12, banned, 3)
    assert want != free  # the hook changes something
    hook = Ban(banned, 3)
    s = model.new_state()
    d = Decoder(make_sampler(model, GREEDY), max_tokens=12, hooks=[hook])
    got = list(decode(model, s, d, model.prefill(s, prompt)))
    assert got == want and d.reason is StopReason.LENGTH
    assert hook.seen[:3] == want[:3]  # the hook saw every sampled token
    # after the hook went quiet the core sampled on its own (step_sample): same tokens
    assert not d.hooked


def test_end_conditions(model) -> None:
    prompt = model.encode("x = 1\n")
    free = reference(model, prompt, 8, [], 0)
    s = model.new_state()
    d = Decoder(make_sampler(model, GREEDY), max_tokens=8, eos=free[3])
    got = list(decode(model, s, d, model.prefill(s, prompt)))
    assert got == free[:3] and d.reason is StopReason.EOS  # EOS is not kept
    s = model.new_state()
    d = Decoder(make_sampler(model, GREEDY), max_tokens=8, stop_ids={free[2]})
    assert list(decode(model, s, d, model.prefill(s, prompt))) == free[:3] and d.reason is StopReason.STOP
    s = model.new_state()
    calls = []
    d = Decoder(make_sampler(model, GREEDY), max_tokens=8, should_stop=lambda: len(calls.append(1) or calls) > 2)
    assert list(decode(model, s, d, model.prefill(s, prompt))) == free[:2] and d.reason is StopReason.CANCELLED
    s = model.new_state()
    d = Decoder(make_sampler(model, GREEDY), max_tokens=8, deadline=0.0)
    assert list(decode(model, s, d, model.prefill(s, prompt))) == free[:1] and d.reason is StopReason.DEADLINE


def test_text_with_a_skipped_prefix_and_a_stop(model) -> None:
    tok = model.tokenizer
    prompt = model.encode("for i in range(10):\n")
    free = reference(model, prompt, 20, [], 0)
    full = tok.decode(free)
    skip = full[:3]
    rest = full[3:]
    stop = rest[5:8] if len(rest) > 8 else None
    s = model.new_state()
    matcher = StopMatcher([stop] if stop else [])
    d = Decoder(make_sampler(model, GREEDY), max_tokens=20, stream=tok.stream_decoder(), text_stop=matcher, skip=skip)
    list(decode(model, s, d, model.prefill(s, prompt)))
    cut = find_stop(rest, [stop]) if stop else None
    assert matcher.text == (rest[:cut] if cut is not None else rest)
    assert d.reason is (StopReason.STOP if cut is not None else StopReason.LENGTH)


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.text(alphabet="ab\nxy", max_size=4), max_size=12),
    stops=st.lists(st.text(alphabet="ab\nx", min_size=1, max_size=3), max_size=3),
)
def test_stop_matcher_streams_what_a_whole_text_search_gives(chunks: list[str], stops: list[str]) -> None:
    m = StopMatcher(stops)
    streamed = []
    for c in chunks:
        stopped = m.feed(c)
        streamed.append(m.take())
        if stopped:
            break
    m.finish()
    streamed.append(m.take())
    whole = "".join(chunks)
    cut = find_stop(whole, stops)
    assert "".join(streamed) == m.text == (whole[:cut] if cut is not None else whole)
    assert m.stopped == (cut is not None)


def test_a_longer_stop_that_starts_earlier_wins() -> None:
    """Found by the property above: over "a\n" + "a" with stops "\n" and "a\na", the earliest
    stop of the whole text is "a\na" at 0; the matcher must wait for it rather than stop at the
    "\n" of the first chunk."""
    m = StopMatcher(["\n", "a\na"])
    assert not m.feed("a\n") and m.take() == ""
    assert m.feed("a") and m.text == "" and m.stopped
    m = StopMatcher(["\n", "a\na"])
    assert not m.feed("a\n")
    assert m.feed("b") and m.text == "a"  # it did not complete: the "\n" stop holds
    m = StopMatcher(["\n", "a\na"])
    m.feed("a\n")
    m.finish()  # the text ended before it could complete
    assert m.text == "a" and m.stopped


def test_skip_prefix_across_chunks() -> None:
    s = SkipPrefix("abc")
    assert [s.feed(c) for c in ["a", "bcd", "e"]] == ["", "d", "e"]
