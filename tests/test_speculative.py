"""Exact speculative decoding (engine/drafts.py, decoding.decode with a drafter): with drafts or
without, the same tokens, the same final state, the same sampler stream.

Random models never accept a lookup draft, so besides the real drafter the tests use an oracle
that proposes plain decoding's own continuation with errors put in at random places: every path
(whole draft accepted, a draft cut at the first error, the decoder finishing inside a draft) runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitmamba_lsp import load
from bitmamba_lsp.engine.decoding import GREEDY, Decoder, GenerationConfig, decode, make_sampler
from bitmamba_lsp.engine.drafts import Drafter, DraftSettings, NGramIndex


class OracleDrafter(Drafter):
    """Proposes `truth` (the plain decode's tokens) from the current position, with the tokens at
    `wrong` positions replaced."""

    def __init__(self, truth: list[int], wrong: set[int], k: int, vocab: int) -> None:
        super().__init__([], settings=DraftSettings(max_draft=k))
        self.truth, self.wrong, self.vocab, self.pos = truth, wrong, vocab, 0
        self.k = k

    def propose(self) -> list[int]:
        out = []
        for j in range(self.pos, min(self.pos + self.k, len(self.truth) + 2)):
            t = self.truth[j] if j < len(self.truth) else 0
            out.append((t + 1) % self.vocab if j in self.wrong else t)
        return out

    def observe(self, token: int) -> None:
        self.pos += 1

    def verified(self, proposed: int, accepted: int, seconds: float = 0.0, produced: int | None = None) -> None:
        super().verified(proposed, accepted, 0.0, produced)  # untimed: never pauses
        self.k = self.settings.max_draft


def run(model, prompt, cfg, drafter=None, hooks=(), eos=None):
    state = model.new_state()
    logits = model.prefill(state, prompt)
    dec = Decoder(make_sampler(model, cfg), max_tokens=cfg.max_tokens, eos=eos, hooks=hooks)
    out = list(decode(model, state, dec, logits, drafter))
    return out, state, dec


@pytest.fixture(scope="module")
def random_model(model_factory):
    path, _, _ = model_factory(vocab=96, d_model=64, n_layers=2, n_heads=4, seed=3)
    return load(str(path), threads=1)


@settings(max_examples=40, deadline=None)
@given(
    prompt=st.lists(st.integers(0, 95), min_size=1, max_size=40),
    n=st.integers(1, 40),
    k=st.integers(1, 9),
    wrong=st.sets(st.integers(0, 45), max_size=12),
    sampled=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_oracle_drafts_change_nothing(random_model, prompt, n, k, wrong, sampled, seed) -> None:
    cfg = (GenerationConfig(temperature=0.9, top_k=20, top_p=0.95, min_p=0.0, seed=seed) if sampled else GREEDY)
    cfg = cfg.replace(max_tokens=n)
    plain, s_plain, d_plain = run(random_model, prompt, cfg)
    drafter = OracleDrafter(plain, wrong, k, random_model.vocab_size)
    spec, s_spec, d_spec = run(random_model, prompt, cfg, drafter)
    assert spec == plain
    assert s_spec.equals(s_plain)
    assert s_spec.n_tokens == s_plain.n_tokens
    assert d_spec.reason == d_plain.reason
    # the benchmarks' accounting: plain decoding's steps (one per token after the first) are the
    # drafter's plain steps plus the tokens its verification steps produced
    assert drafter.plain_steps + sum(p for _, _, p in drafter.log) == len(plain) - 1
    if not wrong and n > 1:
        assert drafter.accepted > 0  # the oracle's drafts were used


class BanToken:
    """A logits hook: never token `t` (a constraint like healing's)."""

    def __init__(self, t: int) -> None:
        self.t = t

    def active(self) -> bool:
        return True

    def apply(self, logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        out[self.t] = -np.inf
        return out

    def accept(self, token: int) -> None:
        assert token != self.t


@settings(max_examples=15, deadline=None)
@given(prompt=st.lists(st.integers(0, 95), min_size=1, max_size=30), wrong=st.sets(st.integers(0, 30), max_size=6))
def test_drafts_under_a_logits_hook(random_model, prompt, wrong) -> None:
    cfg = GREEDY.replace(max_tokens=24)
    plain, s_plain, _ = run(random_model, prompt, cfg, hooks=[BanToken(prompt[0])])
    spec, s_spec, _ = run(
        random_model, prompt, cfg, OracleDrafter(plain, wrong, 5, random_model.vocab_size), hooks=[BanToken(prompt[0])]
    )
    assert spec == plain and s_spec.equals(s_plain)


def test_lookup_drafter_on_the_shipped_model() -> None:
    """The real drafter (prompt lookup) on code: drafts are proposed and accepted, output unchanged."""
    model = load()
    tok = model.require_tokenizer()
    src = (Path(__file__).resolve().parent / "data" / "indentation" / "engine_decoding.py.txt").read_text()
    ids = tok.encode(src)
    accepted = 0
    for cut in (600, 1400, 2400):
        prompt = ids[:cut]
        for cfg in (GREEDY.replace(max_tokens=48), GenerationConfig(temperature=0.7, seed=cut, max_tokens=48)):
            plain, s_plain, _ = run(model, prompt, cfg, eos=model.eos_id)
            # its steps are too cheap for drafts to pay, so the daemon would not draft: force them here
            drafter = Drafter(prompt, vocab=model.vocab_size, settings=DraftSettings(min_step_seconds=0.0))
            spec, s_spec, _ = run(model, prompt, cfg, drafter, eos=model.eos_id)
            assert spec == plain
            assert s_spec.equals(s_plain)
            accepted += drafter.accepted
    assert accepted > 0


def test_no_drafts_where_a_step_is_too_cheap() -> None:
    d = Drafter([1, 2, 3, 1, 2], vocab=16)
    d.plain_step(1e-5)  # a tiny model's step
    assert d.propose() == []
    d = Drafter([1, 2, 3, 1, 2], vocab=16)
    d.plain_step(1e-3)
    assert d.propose() == [3, 1, 2]


def test_drafter_proposes_the_longest_match_and_adapts() -> None:
    history = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    d = Drafter(history, vocab=16, settings=DraftSettings(max_draft=8, order=4))
    assert d.propose() == []  # the first step is a plain one, timed
    d.plain_step(1e-3)
    assert d.propose()[:2] == [4, 5]  # what followed 1 2 3 before
    assert d.k == 3  # a verification step of 4 tokens: one tile
    d.verified(3, 3, 2e-3)  # 4 tokens in 2 ms against 1 ms a token: it pays
    assert d.k == 7 and d.propose()  # 8 tokens: two tiles (max_draft 8 would be 9 tokens, a third tile)
    d.verified(7, 1, 1e-3)
    assert d.k == 2 and d.propose()  # 2 tokens in 1 ms: still pays
    d.verified(2, 0, 3e-3)  # 1 token in 3 ms: pause 2 plain steps
    assert d.propose() == []
    d.plain_step(1e-3)
    assert d.propose() == []
    d.plain_step(1e-3)
    assert d.propose()
    d.verified(2, 0, 3e-3)  # again: pause 4
    for _ in range(4):
        assert d.propose() == []
        d.plain_step(1e-3)
    assert d.propose()
    never = Drafter([1, 2, 3, 4], vocab=16)
    never.plain_step(1e-3)
    assert never.propose() == []  # nothing repeats: no draft
    off = Drafter(history, vocab=16, settings=DraftSettings(max_draft=0))
    off.plain_step(1e-3)
    assert off.propose() == []


def test_drafter_reads_shared_indexes_innermost_last() -> None:
    outer, inner = NGramIndex(4, 16), NGramIndex(4, 16)
    a = np.array([7, 8, 1, 7, 8, 1, 7, 8, 1], dtype=np.int32)
    b = np.array([7, 8, 2], dtype=np.int32)
    outer.update(a, 1, len(a), 1)
    inner.update(b, 1, len(b), 1)
    d = Drafter([5, 7, 8], [(outer, None), (inner, None)], settings=DraftSettings(max_draft=1))
    d.plain_step(1e-3)
    assert d.propose() == [2]  # equal context length: the inner index decides
    d = Drafter([5, 7, 8], [(outer, None)], settings=DraftSettings(max_draft=3))
    d.plain_step(1e-3)
    assert d.propose() == [1, 7, 8]


def test_daemon_suggestions_with_drafts_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's own path (Session: the cache levels, healing, the mixture, the stop rules and the
    weighing) with drafts forced on gives the suggestions it gives with them off."""
    import asyncio
    import functools

    import bitmamba_lsp.lsp.hooks as hooks_module
    from bitmamba_lsp.lsp.session import Session

    monkeypatch.setattr(hooks_module, "DraftSettings", functools.partial(DraftSettings, min_step_seconds=0.0))
    text = (Path(__file__).resolve().parent / "data" / "indentation" / "engine_healing.py.txt").read_text()
    lines = text.split("\n")
    cursors = [(i, len(lines[i]) // 2) for i in range(20, len(lines), 17) if lines[i].strip()][:10]
    cursors += [(i, 0) for i in range(25, len(lines), 23)][:6]

    async def suggestions(draft_tokens: int) -> tuple[list[str | None], int]:
        session = Session(lambda level, msg, popup: None)
        session.configure({"threads": 1, "debounceMs": 0, "speculative": False, "draftTokens": draft_tokens})
        await session.start_model_load()
        uri = "file:///drafts.py"
        session.open(uri, text, 1)
        await asyncio.to_thread(session.worker.wait_idle, 60)
        out, accepted = [], 0
        for line, col in cursors:
            session.pending.clear()
            session.last_result = None
            got = await session.complete(uri, (line, col), "utf-32")
            out.append(got.text if got is not None else None)
            if session.last_result is not None:
                accepted += session.last_result.draft_accepted
        session.shutdown()
        return out, accepted

    plain, none = asyncio.run(suggestions(0))
    spec, accepted = asyncio.run(suggestions(8))
    assert none == 0
    assert spec == plain
    assert accepted > 0
