"""`logprobs` and `echo` on /v1/completions, as OpenAI's legacy completions define them.

`logprobs: N` (0..5) adds to the choice ``{"tokens", "token_logprobs", "top_logprobs",
"text_offset"}``, one entry per token of the answer: its text, its log-probability, the N most likely
tokens at that position with theirs (plus the chosen token when it is not among them: up to N + 1
entries, most likely first) and where its text starts. `echo: true` puts the prompt before the
answer in `text` and, with `logprobs`, the prompt's tokens before the answer's (the first prompt
token has no context: its logprob and top_logprobs are null). `echo` with `max_tokens: 0` scores a
text without generating (the values of `bitmamba logprob`: the same `scoring.log_softmax` of the
same logits).

Definitions:
- log-probabilities are the log-softmax (float64) of the model's raw logits, before temperature,
  top-k/top-p/min-p and the repetition penalty: the model's own distribution, not the one a token
  was sampled from (they agree only for greedy decoding without a penalty).
- a token's string is its bytes as UTF-8 text; a token whose bytes are not valid UTF-8 on their
  own (part of a multi-byte character) is written as OpenAI does: ``bytes:\\xe2\\x80``. Special
  tokens (end-of-text, ...) are named by their content and add no text.
- `text_offset` counts characters (code points) from the start of the prompt, with or without echo:
  the first answer token's offset is the prompt's length. The prompt is the text of the prompt tokens
  the model read (a truncated prompt: its kept end; an empty prompt, read as end-of-text: ""); for
  a fill-in-the-middle request, `prompt` (the prefix). A token that starts inside a character (its
  bytes continue the previous token's) has that character's offset.
- the entries follow the answer's text: a token whose text starts inside a stop sequence is left
  out with it (a token that straddles the cut keeps its whole string); the end-of-text token and
  stop tokens, which end the answer without text, are not listed.

Streaming: each chunk carries the entries of the tokens whose text it releases (text held back
while it may start a stop sequence keeps its tokens' entries with it); with echo the first chunk is
the prompt and its entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bitmamba_lsp.scoring import log_softmax

PROMPT_SLICE = 64  # prompt tokens per prefill pass when every position's logits are kept


@dataclass(frozen=True)
class Scoring:
    """What a completions request asks besides the answer's text."""

    top: int | None  # `logprobs`: N alternatives per token; None: no logprobs
    echo: str | None  # the prompt's text put before the answer (`echo`); None: no echo
    base: int = 0  # characters before the first generated one (text_offset counts from the prompt)

    @property
    def prompt(self) -> bool:
        """The prompt's tokens are scored too (echo with logprobs)."""
        return self.top is not None and self.echo is not None


def plan(
    model: Any, top: int | None, echo: bool, ids: list[int], prompt: str | list[int], fim: bool
) -> Scoring | None:
    """The Scoring of a request whose model input is `ids` (None when it asks for neither)."""
    if top is None and not echo:
        return None
    tok = model.require_tokenizer()
    text = tok.decode(ids)
    if fim:  # the model read <pre> prompt <suf> suffix <mid>: offsets count from the prompt field
        text = prompt if isinstance(prompt, str) else tok.decode(prompt)
    return Scoring(top, text if echo else None, len(text))


def token_string(tok: Any, token_id: int) -> str:
    raw = tok.token_bytes(token_id)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


@dataclass(frozen=True)
class Entry:
    token: str
    logprob: float | None
    top: dict[str, float] | None
    offset: int  # characters from the start of the prompt


class Tracker:
    """One request's logprobs, fed by the worker: the log-softmax of each row of logits the model
    gives (`observe`), the token chosen from it (`add`), released as the text is (`release`)."""

    def __init__(self, tok: Any, scoring: Scoring) -> None:
        assert scoring.top is not None
        self.tok = tok
        self.top = scoring.top
        self.base = scoring.base
        self.stream = tok.stream_decoder()  # the answer's text, as the Decoder decodes it
        self.chars = 0  # characters of the answer decoded so far
        self.row: np.ndarray | None = None  # log-probabilities of the next token
        self.prompt_entries: list[Entry] = []
        self.entries: list[Entry] = []
        self.released = 0
        self._prompt_stream = tok.stream_decoder()
        self._prompt_chars = 0

    # ------------------------------------------------------------------ computing
    def _entry(self, lp: np.ndarray | None, token: int, offset: int) -> Entry:
        if lp is None:
            return Entry(token_string(self.tok, token), None, None, offset)
        chosen = float(lp[token])
        top: dict[str, float] = {}
        if self.top:
            k = min(self.top, len(lp))
            idx = np.argpartition(-lp, k - 1)[:k]
            for i in idx[np.lexsort((idx, -lp[idx]))]:  # most likely first, ties by id
                top.setdefault(token_string(self.tok, int(i)), float(lp[i]))
        s = token_string(self.tok, token)
        if s not in top:
            top[s] = chosen  # the least likely of them (or the only one with logprobs 0)
        return Entry(s, chosen, top, offset)

    def prompt_rows(self, ids: np.ndarray, a: int, b: int, logits: np.ndarray) -> None:
        """Prompt tokens a..b-1 were fed and `logits` are the rows after each of them: the entries of
        tokens a..b-1 (a row scores the token after it; the first prompt token has none)."""
        lp = log_softmax(logits)
        for j in range(a, b):
            prev = lp[j - a - 1] if j > a else self.row
            self.prompt_entries.append(self._entry(prev if j > 0 else None, int(ids[j]), self._prompt_chars))
            self._prompt_chars += len(self._prompt_stream.feed(int(ids[j])))
        self.row = lp[-1]

    def observe(self, logits: np.ndarray) -> None:
        """The logits the next token is chosen from (the model's, before any sampling setting)."""
        self.row = log_softmax(logits)

    def add(self, token: int) -> None:
        """`token`, chosen from the last observed row, is part of the answer."""
        self.entries.append(self._entry(self.row, token, self.base + self.chars))
        self.chars += len(self.stream.feed(token))

    # ------------------------------------------------------------------ releasing
    def release(self, text_chars: int) -> list[Entry]:
        """The entries not released yet whose text starts in the answer's first `text_chars`
        characters (what the text stop released so far)."""
        end = self.released
        while end < len(self.entries) and self.entries[end].offset - self.base < text_chars:
            end += 1
        out, self.released = self.entries[self.released : end], end
        return out

    def finish(self, text_chars: int, stopped: bool) -> list[Entry]:
        """The answer is over: what is left (up to the stop sequence's start when one cut it)."""
        if stopped:
            out = self.release(text_chars)
            del self.entries[self.released :]
            return out
        out, self.released = self.entries[self.released :], len(self.entries)
        return out


# ---------------------------------------------------------------------------------- response bodies
def completion_logprobs(entries: list[Entry]) -> dict[str, Any]:
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [e.top for e in entries],
        "text_offset": [e.offset for e in entries],
    }


def full_logprobs(tracker: Tracker | None) -> dict[str, Any] | None:
    """The choice's `logprobs` of a whole (not streamed) answer."""
    if tracker is None:
        return None
    return completion_logprobs([*tracker.prompt_entries, *tracker.entries[: tracker.released]])
