"""The daemon's default thresholds are the ones benchmarks/fit_choice.py chose with the weights it
wrote (bitmamba_lsp/data/choice.json): a refit that is not carried into settings.py fails here."""

from __future__ import annotations

import json

from bitmamba_lsp.lsp import choice
from bitmamba_lsp.lsp.settings import Settings


def test_default_thresholds_are_the_fitted_ones() -> None:
    fit = json.loads(choice.WEIGHTS_FILE.read_text("utf-8"))
    s = Settings()
    assert s.min_confidence == fit["min_confidence"]
    assert s.min_confidence_line_start == fit["min_confidence_line_start"]
    assert fit["whole_line_bonus"] == choice.WHOLE_LINE_BONUS
    assert fit["whole_line_bar"] == choice.WHOLE_LINE_BAR and set(fit["whole_line_bar"]) == {"line_start", "mid_line"}
    assert set(fit["miss_cost"]) == {"line_start", "mid_line"}
    assert {m: c for m, c in fit["miss_cost"].items() if c > 0} == choice.MISS_COST
    assert set(fit["weights"]) == set(choice.FEATURES)  # every feature has its fitted weight


def test_the_line_start_threshold_applies_at_an_empty_line_only() -> None:
    s = Settings()
    warnings = s.update({"minConfidenceLineStart": -1, "minConfidence": 0.2})
    assert not warnings and s.min_confidence_line_start == -1 and s.min_confidence == 0.2
    assert s.update({"minConfidenceLineStart": 3})  # out of range: a warning, the setting kept
    assert s.min_confidence_line_start == -1


def test_runner_up_first_tokens_skip_blank_ones() -> None:
    """The lines written from the runners-up of the first token: a token of blanks only would
    write the same line with other indentation, so the next non-blank one is taken instead (the
    most likely token stays first whatever it is)."""
    import numpy as np

    vocab = [b"x", b"a", b" ", b"\n  ", b"b", b"c", b"d"]
    logits = np.asarray([0.0, 5.0, 4.0, 3.0, 2.0, 1.0, -np.inf], dtype=np.float32)
    fc = choice.FirstChoices(3, vocab.__getitem__)
    assert fc.apply(logits) is logits and fc.tokens == [1, 4, 5]
    fc.accept(1)
    assert not fc.active() and fc.prefix == []
    plain = choice.FirstChoices(3)
    assert plain.apply(logits) is logits and plain.tokens == [1, 2, 3]
    logits[1] = -1.0  # a blank token on top stays the greedy one
    fc = choice.FirstChoices(2, vocab.__getitem__)
    fc.apply(logits)
    assert fc.tokens == [2, 4]


def test_runner_ups_are_chosen_where_the_content_of_the_line_is() -> None:
    """At an indented empty line healing takes back the line break and the indentation: the first
    steps may only re-type them (every other token is masked), so the runners-up are noted at the
    first step that offers a token with something beyond the healed bytes, after the greedy
    line's tokens up to there (`prefix`), and ForceTokens writes that prefix then the runner-up."""
    import numpy as np

    vocab = [b"\n   ", b"\n    ", b" ", b" return", b" self", b" if", b"\n", b"  "]
    healed = b"\n    "  # a line break and four spaces
    fc = choice.FirstChoices(3, vocab.__getitem__, healed)
    masked = np.full(len(vocab), -np.inf, dtype=np.float32)
    masked[[0, 1]] = [3.0, 2.0]  # only what re-types the healed bytes: no choice of content yet
    fc.apply(masked)
    fc.accept(0)  # "\n   ": one space of the healed bytes still to come
    assert fc.active() and fc.prefix == [0]
    free = np.asarray([-9, -9, 1.0, 4.0, 3.0, 2.0, 5.0, 0.5], dtype=np.float32)  # " ..." fit the rest
    fc.apply(free)
    assert fc.tokens == [6, 3, 4]  # the greedy "\n" (an empty line) first, then content only
    fc.accept(6)
    assert not fc.active()
    force = choice.ForceTokens([*fc.prefix, fc.tokens[1]])
    out = force.apply(masked)
    assert int(np.argmax(out)) == 0 and out[5] == -np.inf
    force.accept(0)
    assert force.active() and int(np.argmax(force.apply(free))) == 3
    force.accept(3)
    assert not force.active()
    # the content came with no choice (a single token fits): no runners-up
    fc = choice.FirstChoices(3, vocab.__getitem__, b"")
    only = np.full(len(vocab), -np.inf, dtype=np.float32)
    only[3] = 0.0
    fc.apply(only)
    fc.accept(3)
    assert not fc.active() and fc.tokens == []


def test_per_mode_values_from_choice_json_are_checked() -> None:
    """A hand-edited choice.json with a cost that is not a positive number in range leaves that
    mode without a cost (0: the choice as it was before costs), never a crash or a bool read as 1."""
    fit = {"miss_cost": {"line_start": True, "mid_line": "5", "a": -1.0, "b": 3, "c": float("nan"), "d": 1e9}}
    assert choice._per_mode(fit, "miss_cost", 0.0, 1000.0) == {"b": 3.0}
    assert choice._per_mode({"miss_cost": [5]}, "miss_cost", 0.0, 1000.0) == {}
    assert choice._per_mode({}, "miss_cost", 0.0, 1000.0) == {}
    assert choice._per_mode({"whole_line_bar": {"line_start": 0.8, "mid_line": 1.5}}, "whole_line_bar", 0.0, 1.0) == {"line_start": 0.8}
