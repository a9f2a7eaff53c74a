"""The heart of the daemon: for any sequence of edits (and completions in between), the state
used at the cursor equals the state of a fresh prefill of the same prefix text."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin
from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer
from bitmamba_lsp.lsp.completion import CursorContext
from bitmamba_lsp.lsp.documents import TrackedDocument, clean_start_table
from bitmamba_lsp.lsp.jobs import CompletionJob
from bitmamba_lsp.lsp.prompt import prompt_at
from bitmamba_lsp.lsp.settings import Settings
from bitmamba_lsp.lsp.worker import ModelWorker

URI = "file:///prop.py"


@pytest.fixture(scope="module")
def setup(model_factory):
    path, _, _ = model_factory(50257, 32, 2, 2, seed=21)
    model = load_bin(path, threads=1)
    model.tokenizer = bundled_text_tokenizer()
    s = Settings(checkpoint_spacing=8, dense_checkpoints=4, max_tokens=3, debounce_ms=0)
    worker = ModelWorker(s)
    worker.load(lambda: model).result()
    yield model, worker, clean_start_table(model.tokenizer)
    worker.shutdown()


def greedy(model, state, n: int = 6) -> list[int]:
    """Greedy continuation of a state after a fixed probe token (the state is not modified)."""
    s = state.copy()
    logits = model.step(s, 0)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = model.step(s, out[-1])
    return out


PIECES = st.sampled_from(
    [
        "def f(x):",
        "\n",
        "\n    ",
        "return x",
        " + 1",
        "\n\n",
        "# 中文 😀",
        "    ",
        "class A:",
        "pass",
        "'s",
        "(",
        ")",
        "x",
        "\t",
    ]
)
TEXT = st.lists(PIECES, max_size=30).map("".join)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("edit"), st.floats(0, 1), st.integers(0, 6), TEXT),
        st.tuples(st.just("complete"), st.floats(0, 1), st.just(0), st.just("")),
        st.tuples(st.just("idle"), st.just(0.0), st.just(0), st.just("")),
    ),
    min_size=1,
    max_size=15,
)


@settings(
    max_examples=int(os.environ.get("BITMAMBA_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(base=TEXT, ops=OPS, cursor=st.floats(0, 1))
def test_state_at_cursor_equals_fresh_prefill(setup, base: str, ops, cursor: float) -> None:
    model, worker, clean = setup
    tok = model.tokenizer
    doc = TrackedDocument(URI, base, 1, tok, clean)
    worker.doc_closed(URI)
    worker.doc_opened(URI, doc.ids)
    for kind, frac, length, text in ops:
        if kind == "edit":
            a = int(frac * len(doc.text))
            e = doc.replace(a, min(len(doc.text), a + length), text)
            worker.doc_edited(URI, e.first_changed_token, doc.ids, doc.shared_before(e.new_end))
        elif kind == "complete":
            c = int(frac * len(doc.text))
            ctx = CursorContext.at(doc.text, c)
            worker.complete(CompletionJob(URI, prompt_at(doc, c), ctx, max_tokens=2)).result()
        else:
            worker.wait_idle()
    c = int(cursor * len(doc.text))
    prompt = prompt_at(doc, c).ids
    assert prompt.tolist() == tok.encode(doc.text[:c])  # same tokens as a fresh tokenization
    state = worker.state_for(URI, prompt_at(doc, c))
    fresh = model.new_state()
    if len(prompt):
        model.prefill(fresh, prompt)
    assert state.n_tokens == fresh.n_tokens == len(prompt)
    assert state.max_abs_diff(fresh) <= 1e-5 * max(1.0, float(np.abs(fresh.to_numpy()).max()))
    assert state.equals(fresh)  # in fact bit-identical: the batched and step paths share every float op
    assert greedy(model, state) == greedy(model, fresh)


def test_typing_resumes_from_the_token_before(setup) -> None:
    """Typing at the cursor re-feeds only the last token or two, whatever the file's size."""
    model, worker, clean = setup
    tok = model.tokenizer
    text = "def f(x):\n    return x + 1\n\n" * 300
    doc = TrackedDocument(URI, text, 1, tok, clean)
    worker.doc_closed(URI)
    worker.doc_opened(URI, doc.ids)
    worker.wait_idle()
    fed = []
    for ch in "value = compute(x)":
        e = doc.replace(len(doc.text), len(doc.text), ch)
        worker.doc_edited(URI, e.first_changed_token, doc.ids, doc.shared_before(e.new_end))
        ctx = CursorContext.at(doc.text, len(doc.text))
        res = worker.complete(CompletionJob(URI, prompt_at(doc, len(doc.text)), ctx, max_tokens=1)).result()
        fed.append(res.fed)
    assert len(doc.ids) > 3000
    assert max(fed[1:]) <= 3, fed
