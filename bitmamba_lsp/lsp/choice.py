"""What to show: one of several options, or nothing.

The options of a request are the prefixes of the greedy line (cut at each token: a cut suggestion
is a right prefix more often than a whole line is right) and the whole-line candidates
(candidates.py). Each gets a calibrated probability of being right (the truth starts with it), from
a few features (how likely the model and the caches find its tokens, how long it is, where it came
from), through a logistic model fitted on the "tune" split of the held-out benchmark
(benchmarks/fit_choice.py writes the weights below). The option with the largest expected gain,
probability times (characters + a bonus for a whole line) less (1 - probability) times what a wrong
suggestion costs the reader (the mode's fitted `miss_cost`, in characters), is shown when its
probability reaches `minConfidence` (`minConfidenceLineStart` at an empty line; a whole line needs
that bar times the mode's fitted `whole_line_bar`) and, with a cost, its expected gain is positive;
otherwise the daemon stays silent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitmamba_lsp.lsp.candidates import Candidate

FEATURES = (
    "bias",
    "candidate",  # a retrieved line (else a prefix of the model's own line)
    "workspace",  # retrieved from the workspace (else the file)
    "after_prev",  # it followed a line equal to the line above the cursor
    "log_count",
    "log_distance",
    "line_start",  # nothing typed on the line yet
    "logp",  # log of the mixture probability of its tokens
    "mean_logp",  # per token
    "min_logp",  # of its least likely token
    "log_tokens",
    "log_chars",
    "whole_line",  # it reaches the end of the line (the model's line: it wrote a line break or stopped)
    "cand_logp",  # candidate x logp: the candidates' own slope
    "runner_up",  # the model's line from a runner-up first token
    "agree",  # another source backs it: a model line that a candidate starts with, or a candidate
    # that starts like the model's greedy line
    "log_typed",  # characters already typed on the line
    "led",  # a retrieved line that starts like a line the model wrote (candidates.led_candidates)
    "before_next",  # it came before a line equal to the line below the cursor
    "between",  # both: after a line equal to the one above, before a line equal to the one below
    # the candidates' own slopes (a retrieved line and the model's line are judged differently)
    "cand_mean_logp",
    "cand_log_tokens",
    "cand_agree",
    "whole_logp",  # whole_line x logp
    "first_logp",  # of its first token (at an empty line: what kind of line it is)
    "cand_first_logp",
)

WEIGHTS_FILE = Path(__file__).resolve().parent.parent / "data" / "choice.json"


def _load_fit() -> dict:
    try:
        data = json.loads(WEIGHTS_FILE.read_text("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _load_weights(fit: dict) -> dict[str, float]:
    """The weights benchmarks/fit_choice.py fitted on the tune split (with the shipped model; other
    models use them too), or a plain "trust the model's probability" fallback."""
    try:
        return {k: float(v) for k, v in fit["weights"].items() if k in FEATURES}
    except (KeyError, TypeError, ValueError, AttributeError):
        return {"bias": 0.0, "logp": 1.0}


_FIT = _load_fit()
WEIGHTS: dict[str, float] = _load_weights(_FIT)


@dataclass
class Option:
    text: str  # what would be shown (before finalize), after the cursor
    candidate: Candidate | None  # None: a prefix of the model's own line
    logps: list[float]  # the mixture's log-probability of each of its tokens
    whole_line: bool
    line_start: bool
    branch: int = 0  # for the model's own lines: 0 is the greedy line, k the line from the k-th runner-up
    agree: bool = False  # set by agreement(): another source backs it
    typed: int = 0  # characters typed on the line before the cursor
    features: dict[str, float] = field(default_factory=dict)
    p: float = 0.0  # calibrated probability of being right

    def describe(self) -> dict[str, object]:
        return {"text": self.text, "p": round(self.p, 4), "features": self.features}


def features(o: Option) -> dict[str, float]:
    c = o.candidate
    logp = sum(o.logps)
    n = max(len(o.logps), 1)
    f = {
        "bias": 1.0,
        "candidate": float(c is not None),
        "workspace": float(c is not None and c.source == "workspace"),
        "after_prev": float(c is not None and c.after_prev),
        "log_count": math.log1p(c.count) if c is not None else 0.0,
        "log_distance": math.log1p(c.distance) if c is not None else 0.0,
        "line_start": float(o.line_start),
        "logp": logp,
        "mean_logp": logp / n,
        "min_logp": min(o.logps, default=0.0),
        "log_tokens": math.log1p(len(o.logps)),
        "log_chars": math.log1p(len(o.text)),
        "whole_line": float(o.whole_line),
        "cand_logp": logp if c is not None else 0.0,
        "runner_up": float(o.branch > 0),
        "agree": float(o.agree),
        "log_typed": math.log1p(o.typed),
        "led": float(c is not None and c.led),
        "before_next": float(c is not None and c.before_next),
        "between": float(c is not None and c.before_next and c.after_prev),
    }
    cand = f["candidate"]
    f["cand_mean_logp"] = cand * f["mean_logp"]
    f["cand_log_tokens"] = cand * f["log_tokens"]
    f["cand_agree"] = cand * f["agree"]
    f["whole_logp"] = f["whole_line"] * logp
    f["first_logp"] = o.logps[0] if o.logps else 0.0
    f["cand_first_logp"] = cand * f["first_logp"]
    return f


def calibrate(o: Option, weights: dict[str, float] = WEIGHTS) -> float:
    o.features = features(o)
    z = sum(weights.get(k, 0.0) * v for k, v in o.features.items())
    o.p = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))
    return o.p


def greedy_prefixes(
    pieces: Sequence[tuple[str, float]], line_start: bool, ended: bool, branch: int = 0
) -> list[Option]:
    """The prefixes of the model's first line, one per token: pieces are (the token's text, its
    log-probability) after the healed text; `ended`: the line ends where the pieces end."""
    out: list[Option] = []
    text = ""
    logps: list[float] = []
    for i, (piece, lp) in enumerate(pieces):
        cut = piece.find("\n")
        logps.append(lp)
        if cut >= 0:
            if cut == 0 and out and out[-1].text == text:
                out[-1].whole_line = True  # the line ends right after the last prefix
                return out
            text += piece[:cut]
            if text.strip():
                out.append(Option(text, None, list(logps), True, line_start, branch))
            return out
        text += piece
        if text.strip():
            out.append(Option(text, None, list(logps), ended and i == len(pieces) - 1, line_start, branch))
    return out


class FirstChoices:
    """A logits hook that notes the k most likely tokens at the step where the line's content is
    chosen (after the other hooks), so the line can also be written from the runners-up
    (`ForceTokens`). With `token_bytes`, that is the first step that offers a token with something
    other than blanks beyond the `healed` bytes still to re-type: at an indented empty line healing
    takes back the line break and the indentation, so the first steps may only re-type them; the
    tokens accepted until then are `prefix`. A runner-up with nothing but blanks beyond them would
    write the same line with other indentation, or an empty line, and is passed over. Without
    `token_bytes`: the k most likely first tokens."""

    MAX_PREFIX = 8  # steps of blanks before the choice is given up

    def __init__(self, k: int, token_bytes: Callable[[int], bytes] | None = None, healed: bytes = b"") -> None:
        self.k = k
        self.token_bytes = token_bytes
        self.rest = healed  # healed bytes not re-typed yet
        self.prefix: list[int] = []
        self.tokens: list[int] = []
        self.done = False

    def active(self) -> bool:
        return not self.done

    def _beyond(self, token: int) -> bytes:
        """What `token` writes beyond the healed bytes still to re-type."""
        b = self.token_bytes(token) if self.token_bytes is not None else b""
        return b[len(self.rest) :] if b.startswith(self.rest) else b""

    def apply(self, logits: np.ndarray) -> np.ndarray:
        n = min(self.k * 3 if self.token_bytes else self.k, len(logits))
        top = np.argpartition(logits, -n)[-n:]
        top = top[np.argsort(-logits[top])]
        tokens = [int(t) for t in top if np.isfinite(logits[t])]
        if self.token_bytes is not None and tokens:
            tokens = [tokens[0], *(t for t in tokens[1:] if self._beyond(t).strip())]
        self.tokens = tokens[: self.k]
        return logits

    def accept(self, token: int) -> None:
        if self.token_bytes is None or len(self.tokens) > 1 or len(self.prefix) >= self.MAX_PREFIX:
            self.done = True
            return
        extra = self._beyond(token)
        if extra.strip() or b"\n" in extra:  # the line's content, or its end, came with no choice
            self.done, self.tokens = True, []
            return
        b = self.token_bytes(token)
        self.rest = self.rest[len(b) :] if self.rest.startswith(b) else b""
        self.prefix.append(token)


class ForceTokens:
    """A logits hook that makes the next tokens `tokens`, one per step (placed after the others,
    which still see and score the real distribution)."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens = list(tokens)
        self.at = 0

    def active(self) -> bool:
        return self.at < len(self.tokens)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        out = logits.copy()
        out[self.tokens[self.at]] = float(np.max(logits[np.isfinite(logits)])) + 1e4
        return out

    def accept(self, token: int) -> None:
        self.at += 1


def agreement(options: Sequence[Option]) -> None:
    """Mark the options another source backs: a model line that a candidate starts with, a
    candidate that starts with the greedy line's first characters (when it has three or more)."""
    cands = [o for o in options if o.candidate is not None]
    greedy = [o for o in options if o.candidate is None and o.branch == 0]
    head = max((o.text for o in greedy), key=len, default="")[:3]
    for o in options:
        if o.candidate is None:
            o.agree = any(c.text.startswith(o.text) for c in cands)
        else:
            o.agree = len(head) == 3 and o.text.startswith(head)


# what a whole right line is worth beyond its characters (nothing left to check), chosen with the
# weights on the tune split
_bonus = _FIT.get("whole_line_bonus", 10.0)
WHOLE_LINE_BONUS = float(_bonus) if isinstance(_bonus, int | float) else 10.0


def _per_mode(fit: dict, key: str, lo: float, hi: float) -> dict[str, float]:
    values = fit.get(key, {})
    if not isinstance(values, dict):
        return {}
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi and v > 0
    }


# a whole line is shown from a lower probability than a line cut short: the mode's bar times this
# (per mode: "line_start", "mid_line"; chosen with the weights on the tune split). Accepting it
# finishes the line.
WHOLE_LINE_BAR: dict[str, float] = _per_mode(_FIT, "whole_line_bar", 0.0, 1.0)

# what a wrong suggestion costs, in characters (per mode; chosen with the weights on the tune split):
# reading it and typing on. It makes the choice take a shorter, surer option over a long doubtful
# one, and stay silent where even the best one is expected to cost more than it saves.
MISS_COST: dict[str, float] = _per_mode(_FIT, "miss_cost", 0.0, 1000.0)


def utility(o: Option, miss_cost: float = 0.0) -> float:
    """The expected gain of showing `o`: p x (characters, plus the bonus for a whole line), less
    (1 - p) x what a wrong one costs."""
    return o.p * (len(o.text) + WHOLE_LINE_BONUS * o.whole_line) - (1.0 - o.p) * miss_cost


def choose(
    options: Sequence[Option],
    min_p: float,
    weights: dict[str, float] = WEIGHTS,
    whole_bar: float = 1.0,
    miss_cost: float = 0.0,
) -> Option | None:
    """The option with the largest expected gain (utility) among those with p >= min_p (a whole
    line: p >= min_p x whole_bar); with a miss cost, only an option whose expected gain is positive."""
    best: Option | None = None
    best_gain = 0.0
    for o in options:
        calibrate(o, weights)
        bar = min_p * whole_bar if o.whole_line else min_p
        gain = utility(o, miss_cost)
        if o.p < bar or (miss_cost > 0 and gain <= 0):
            continue
        if best is None or gain > best_gain:
            best, best_gain = o, gain
    return best
