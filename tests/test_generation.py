"""Decoding loops: greedy equivalence, max tokens, stop sequences, EOS, cancellation, text streaming."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bitmamba_lsp.engine.decoding import GREEDY, GenerationConfig, TextStream, TokenStream
from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin
from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer


@pytest.fixture(scope="module")
def model(model_factory):
    path, _, _ = model_factory(50257, 32, 2, 2, seed=11)  # GPT-2 vocabulary size: text works
    m = load_bin(path, threads=2)
    m.tokenizer = bundled_text_tokenizer()
    return m


def test_greedy_generation_equals_manual_argmax_loop(model) -> None:
    prompt = model.encode("def hello(name):\n    return")
    got = list(TokenStream(model, model.new_state(), prompt, GREEDY.replace(max_tokens=12)))
    s = model.new_state()
    logits = model.prefill(s, prompt)
    manual = []
    for _ in range(12):
        t = int(np.argmax(logits))
        if t == model.eos_id:
            break
        manual.append(t)
        logits = model.step(s, t)
    assert got == manual


def test_max_tokens_and_finish_reason(model) -> None:
    ts = TokenStream(model, model.new_state(), [1, 2, 3], GREEDY.replace(max_tokens=5, stop_at_eos=False))
    assert len(list(ts)) == 5 and ts.finish_reason == "length"
    ts = TokenStream(model, model.new_state(), [1], GREEDY.replace(max_tokens=0))
    assert list(ts) == [] and ts.finish_reason == "length"


def test_cancellation_within_one_token(model) -> None:
    produced: list[int] = []
    ts = TokenStream(
        model, model.new_state(), [5, 6], GREEDY.replace(max_tokens=50), lambda: len(produced) >= 3
    )
    for t in ts:
        produced.append(t)
    assert len(produced) == 3 and ts.finish_reason == "cancelled"


def test_eos_ends_generation(model) -> None:
    prompt = [10, 20, 30]
    first = list(
        TokenStream(model, model.new_state(), prompt, GREEDY.replace(max_tokens=6, stop_at_eos=False))
    )

    class FakeEos:  # the engine is real; only the tokenizer's EOS id is chosen for the test
        eos_id = first[3]
        encode = staticmethod(model.tokenizer.encode)

    m2 = dataclasses.replace(model, tokenizer=FakeEos())  # type: ignore[arg-type]
    ts = TokenStream(m2, m2.new_state(), prompt, GREEDY.replace(max_tokens=6))
    out = list(ts)
    assert out == first[: first.index(first[3])] and ts.finish_reason == "eos"


def test_stop_sequences_cut_the_text(model) -> None:
    cfg = GREEDY.replace(max_tokens=40, stop_at_eos=False)
    full = "".join(TextStream(model, model.new_state(), "import os\n", cfg))
    assert len(full) > 10
    stop = full[5:8]
    ts = TextStream(model, model.new_state(), "import os\n", cfg.replace(stop=[stop, "\x00never"]))
    chunks = list(ts)
    text = "".join(chunks)
    assert text == full[: full.index(stop)]
    assert ts.finish_reason == "stop" and stop not in text
    # a stop sequence that never appears changes nothing
    ts = TextStream(model, model.new_state(), "import os\n", cfg.replace(stop=["\x00never"]))
    assert "".join(ts) == full and ts.finish_reason == "length"


def test_sampling_is_seeded(model) -> None:
    cfg = GenerationConfig(max_tokens=20, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=123)
    a = list(TokenStream(model, model.new_state(), [1, 2], cfg))
    b = list(TokenStream(model, model.new_state(), [1, 2], cfg))
    c = list(TokenStream(model, model.new_state(), [1, 2], cfg.replace(seed=124)))
    assert a == b and a != c


def test_complete_and_config_validation(model) -> None:
    text = model.complete("x = 1\n", max_tokens=8, temperature=0)
    assert isinstance(text, str)
    with pytest.raises(TypeError):
        GREEDY.replace(bogus=1)
    with pytest.raises(ValueError):
        list(TokenStream(model, model.new_state(), [], GREEDY))
    with pytest.raises(ValueError):
        GREEDY.replace(stop=[""]).validate()
