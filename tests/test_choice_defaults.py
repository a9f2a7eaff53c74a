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
