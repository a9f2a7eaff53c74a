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

    logits = np.asarray([0.0, 5.0, 4.0, 3.0, 2.0, 1.0, -np.inf], dtype=np.float32)
    blank = {2, 3}.__contains__
    fc = choice.FirstChoices(3, blank)
    assert fc.apply(logits) is logits and fc.tokens == [1, 4, 5]
    assert choice.FirstChoices(3).apply(logits) is logits
    plain = choice.FirstChoices(3)
    plain.apply(logits)
    assert plain.tokens == [1, 2, 3]
    logits[1] = -1.0  # a blank token on top stays the greedy one
    fc = choice.FirstChoices(2, {2}.__contains__)
    fc.apply(logits)
    assert fc.tokens == [2, 3]
