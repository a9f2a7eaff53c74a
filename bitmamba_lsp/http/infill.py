"""Fill-in-the-middle over HTTP: llama.cpp's ``POST /infill`` (what llama.vim and llama.vscode send)
and the prompt layout shared with ``/v1/completions``' ``suffix``.

The prompt is the model's FIM layout (engine/fim.py)::

    <pre> [input_extra chunks] input_prefix <suf> input_suffix <mid> prompt

and the model writes the rest of the middle, ending it with its end-of-text token (a FIM sentinel
ends it too). Each ``input_extra`` chunk is plain text before the prefix: a line ``# <filename>``
(when the chunk has a filename) and the chunk's text, ending with a line break. The shipped model
was not trained with such chunks; they are simply more text above the cursor.

A prompt over --max-prompt-tokens loses whole extra chunks first, the oldest (first) ones, as
many as needed (`fit_infill`): the kept chunks then stay the same while the user types, so the
prefix cache still resumes after them (a window cut at a token would move with every keystroke).
When that is not enough (or there are none), it keeps the end of the prefix and the start of the
suffix (`fit_fim`, also what `/v1/completions` does with a `suffix`): the typed part of the line
(`prompt`) is kept whole when it fits, the suffix keeps at least a quarter of what is left (more
when the prefix is short) and the prefix the rest.

`InfillText` is the job's text stop: llama.cpp's `stop` strings, `n_indent` and `t_max_predict_ms`
rules, applied to the generated text before any of it is sent. `InfillFormat` renders llama.cpp's
response bodies (whole, or server-sent events) and its `response_fields` selection.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bitmamba_lsp.engine.decoding import partial_stop_len
from bitmamba_lsp.http.schemas import MAX_STOP, OVERFLOW, Limits, _bool, _int, bad

# llama.cpp's /completion defaults (tools/server/README.md)
DEFAULTS = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0, repeat_last_n=64)
# llama.cpp sampler names (and its one-letter codes) that this engine's sampler has
SAMPLER_NAMES = {
    "top_k": "top_k", "top-k": "top_k", "k": "top_k",
    "top_p": "top_p", "top-p": "top_p", "nucleus": "top_p", "p": "top_p",
    "min_p": "min_p", "min-p": "min_p", "m": "min_p",
    "temperature": "temperature", "temp": "temperature", "t": "temperature",
    "penalties": "penalties", "e": "penalties",
}  # fmt: skip
RANDOM_SEEDS = (-1, 0xFFFFFFFF)  # llama.cpp's "pick a seed"


# ------------------------------------------------------------------------------------------ request
@dataclass
class InfillRequest:
    input_prefix: str
    input_suffix: str
    input_extra: list[tuple[str, str]]  # (filename, text)
    prompt: str  # the typed part of the cursor's line: after <mid>
    n_predict: int  # 0: prefill only (a cache warm-up)
    n_indent: int
    t_max_predict_ms: float
    stop: tuple[str, ...]
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    penalty_window: int
    seed: int | None
    samplers: list[str] | None  # the request's `samplers`, as given (None: llama.cpp's default chain)
    stream: bool
    ignore_eos: bool
    return_tokens: bool
    cache_prompt: bool
    response_fields: list[str] | None
    token_healing: bool | None = None
    prompt_overflow: str | None = None


def _str(body: dict[str, Any], name: str, required: bool = False) -> str:
    if name not in body:
        if required:
            raise bad(f'"{name}" is required', name, "missing_required_parameter")
        return ""
    v = body[name]
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise bad(f'"{name}" must be a string', name, "invalid_type")
    return v


def _num(body: dict[str, Any], name: str, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise bad(f"'{name}' must be a number", name, "invalid_type")
    return float(v)


def _whole(body: dict[str, Any], name: str, default: int) -> int:
    """An integer field without bounds (llama.cpp clamps them itself)."""
    return _int(body, name, default, -(1 << 63), 1 << 63)  # type: ignore[return-value]


def _strings(body: dict[str, Any], name: str) -> list[str] | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise bad(f"'{name}' must be a list of strings", name, "invalid_type")
    return v


def _extra(body: dict[str, Any]) -> list[tuple[str, str]]:
    v = body.get("input_extra")
    if v is None:
        return []
    shape = '"input_extra" must be an array of {"filename": string, "text": string}'
    if not isinstance(v, list):
        raise bad(shape, "input_extra", "invalid_type")
    out = []
    for i, chunk in enumerate(v):
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text"), str):
            raise bad(f'{shape}: input_extra[{i}] has no string "text"', f"input_extra[{i}]", "invalid_type")
        name = chunk.get("filename")
        if name is not None and not isinstance(name, str):
            raise bad(
                f"{shape}: input_extra[{i}].filename is not a string", f"input_extra[{i}]", "invalid_type"
            )
        out.append((name or "", chunk["text"]))
    return out


def _samplers(body: dict[str, Any]) -> list[str] | None:
    v = body.get("samplers")
    if v is None:
        return None
    if isinstance(v, str):  # llama.cpp's one-letter sequence, e.g. "kpt"
        return list(v)
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise bad("'samplers' must be a list of sampler names (or a string of their letters)", "samplers")
    return list(v)


def parse_infill(body: Any, limits: Limits, vocab: int) -> InfillRequest:
    """Validate a /infill body (llama.cpp's fields; unknown ones are ignored, as llama.cpp does)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_type")
    prefix = _str(body, "input_prefix", required=True)
    suffix = _str(body, "input_suffix", required=True)
    prompt = _str(body, "prompt")
    extra = _extra(body)

    n = _whole(body, "n_predict", -1)
    n_predict = limits.default_max_tokens if n < 0 else min(n, limits.max_tokens_limit)
    stops = [s for s in (_strings(body, "stop") or []) if s]
    if len(stops) > MAX_STOP:
        raise bad(f"at most {MAX_STOP} stop strings are supported", "stop")

    samplers = _samplers(body)
    used = None if samplers is None else {SAMPLER_NAMES[s] for s in samplers if s in SAMPLER_NAMES}

    def on(name: str) -> bool:  # llama.cpp: a sampler left out of `samplers` is not applied
        return used is None or name in used

    # every field is checked; then a sampler left out of `samplers` is not applied
    temperature = max(0.0, _num(body, "temperature", DEFAULTS["temperature"]))
    if temperature > 2.0:
        raise bad(f"'temperature' must be at most 2, got {temperature}", "temperature")
    top_k = min(max(0, _whole(body, "top_k", DEFAULTS["top_k"])), vocab)
    top_p = min(1.0, max(0.0, _num(body, "top_p", DEFAULTS["top_p"])))
    min_p = max(0.0, _num(body, "min_p", DEFAULTS["min_p"]))
    penalty = _num(body, "repeat_penalty", DEFAULTS["repeat_penalty"])
    if not 0.01 <= penalty <= 10.0:
        raise bad(f"'repeat_penalty' must be between 0.01 and 10, got {penalty}", "repeat_penalty")
    window = _whole(body, "repeat_last_n", DEFAULTS["repeat_last_n"])
    window = limits.max_prompt_tokens if window < 0 else window
    if not on("temperature"):
        temperature = 1.0  # no temperature step: the distribution as it is
    top_k = top_k if on("top_k") else 0
    top_p = top_p if on("top_p") else 1.0
    min_p = min_p if on("min_p") else 0.0
    if top_p < 1e-6 or min_p >= 1.0:  # only the most likely token survives
        temperature, top_p, min_p = 0.0, 1.0, 0.0
    if not on("penalties") or window == 0:
        penalty = 1.0
    n_seed = _whole(body, "seed", -1)
    seed = None if n_seed < 0 or n_seed in RANDOM_SEEDS else n_seed

    overflow = body.get("prompt_overflow")
    if overflow is not None and overflow not in OVERFLOW:
        raise bad(f"'prompt_overflow' must be one of {', '.join(OVERFLOW)}", "prompt_overflow")
    heal = body.get("token_healing")
    if heal is not None and not isinstance(heal, bool):
        raise bad("'token_healing' must be a boolean", "token_healing", "invalid_type")
    fields = _strings(body, "response_fields")
    return InfillRequest(
        input_prefix=prefix,
        input_suffix=suffix,
        input_extra=extra,
        prompt=prompt,
        n_predict=n_predict,
        n_indent=max(0, _whole(body, "n_indent", 0)),
        t_max_predict_ms=max(0.0, _num(body, "t_max_predict_ms", 0.0)),
        stop=tuple(dict.fromkeys(stops)),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=penalty,
        penalty_window=max(0, window),
        seed=seed,
        samplers=samplers,
        stream=_bool(body, "stream", False),
        ignore_eos=_bool(body, "ignore_eos", False),
        return_tokens=_bool(body, "return_tokens", False),
        cache_prompt=_bool(body, "cache_prompt", True),
        response_fields=fields or None,
        token_healing=heal,
        prompt_overflow=overflow,
    )


def extra_text(chunks: Sequence[tuple[str, str]]) -> str:
    """The extra context as plain text: per chunk a line ``# <filename>`` (if it has one) and its
    text, which ends with a line break."""
    out = []
    for name, text in chunks:
        if name:
            out.append(f"# {name}\n")
        out.append(text if not text or text.endswith("\n") else text + "\n")
    return "".join(out)


def fit_fim(
    spec: Any, prefix: Sequence[int], suffix: Sequence[int], middle: Sequence[int], limit: int
) -> tuple[list[int], int]:
    """The FIM prompt ids within `limit` tokens, and how many tokens were dropped: the prefix loses
    its start, the suffix its end (it keeps at least a quarter of the room left beside the middle,
    more when the prefix needs less), the middle (the typed part of the line) its start only when it
    alone does not fit."""
    total = 3 + len(prefix) + len(suffix) + len(middle)
    if total <= limit:
        return spec.ids(prefix, suffix, middle), 0
    room = max(0, limit - 3)
    m = list(middle[len(middle) - room :]) if len(middle) > room else list(middle)
    rest = room - len(m)
    s_keep = min(len(suffix), max(rest // 4, rest - len(prefix)))
    p_keep = min(len(prefix), rest - s_keep)
    p = list(prefix[len(prefix) - p_keep :]) if p_keep else []
    s = list(suffix[:s_keep])
    ids = spec.ids(p, s, m)
    return ids, total - len(ids)


def fit_infill(
    spec: Any,
    encode: Callable[[str], list[int]],
    chunks: Sequence[tuple[str, str]],
    prefix: str,
    suffix: Sequence[int],
    middle: Sequence[int],
    limit: int,
) -> tuple[list[int], int]:
    """The /infill prompt within `limit` tokens and how many tokens were dropped (module docstring):
    the fewest leading extra chunks are dropped so that the rest fits, then `fit_fim`."""
    fixed = 3 + len(suffix) + len(middle)
    full = encode(extra_text(chunks) + prefix)
    total = fixed + len(full)
    if total <= limit:
        return spec.ids(full, suffix, middle), 0
    if chunks:
        sizes = [len(encode(extra_text([c]))) for c in chunks]  # estimates (the joint text may merge)

        def ids_without(d: int) -> list[int]:
            return encode(extra_text(chunks[d:]) + prefix)

        d, room = 0, total - limit
        while d < len(chunks) and room > 0:  # estimate: drop until the sizes say it fits
            room -= sizes[d]
            d += 1
        p = ids_without(d)
        while d < len(chunks) and fixed + len(p) > limit:
            d += 1
            p = ids_without(d)
        while d > 0 and fixed + len(q := ids_without(d - 1)) <= limit:
            d, p = d - 1, q
        if fixed + len(p) <= limit:
            return spec.ids(p, suffix, middle), total - (fixed + len(p))
    ids, _ = fit_fim(spec, encode(prefix), suffix, middle, limit)
    return ids, total - len(ids)


# ------------------------------------------------------------------------------------------ text stop
class InfillText:
    """The text stop of an /infill job (a `TextStop`, with `take()` as `StopMatcher` has), with
    llama.cpp's rules on the generated text:

    - ``stop``: the text ends before the first stop string (stop_type ``word``);
    - ``n_indent``: a line after the first that starts (its first character that is not a space or a
      tab, a line break included) with less indentation than ``n_indent`` characters ends the text
      there; its indentation is kept, as llama.cpp keeps it (stop_type ``limit``);
    - ``t_max_predict_ms``: once that long has passed since the first generated token, the text ends
      after the next token that contains a line break (stop_type ``limit``).

    Text that may still be the start of a stop string is held back; nothing else is."""

    def __init__(
        self,
        stops: Sequence[str] = (),
        n_indent: int = 0,
        t_max_predict_ms: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.stops = tuple(s for s in stops if s)
        self.n_indent = max(0, n_indent)
        self.t_max = t_max_predict_ms / 1000.0 if t_max_predict_ms > 0 else None
        self.clock = clock
        self.text = ""
        self.stopped = False
        self.stop_type = ""  # "word" or "limit" once this text stop ended generation
        self.stopping_word = ""
        self._held = ""
        self._taken = 0
        self._t0: float | None = None
        self._in_indent = False  # inside the leading whitespace of a line after the first
        self._indent = 0

    def _indent_cut(self, chunk: str) -> int | None:
        """Index in `chunk` where a line indented less than n_indent shows its first character."""
        for j, c in enumerate(chunk):
            if self._in_indent:
                if c in " \t":
                    self._indent += 1
                    continue
                if self._indent < self.n_indent:
                    return j
                self._in_indent = False
            if c == "\n":
                self._in_indent, self._indent = True, 0
        return None

    def _word(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for s in self.stops:
            i = text.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        return best

    def feed(self, chunk: str) -> bool:
        if self.stopped:
            return True
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        held = len(self._held)
        buf = self._held + chunk
        cuts: list[tuple[int, int, str, str]] = []  # (position, priority, stop_type, word)
        word = self._word(buf)
        if word is not None:
            cuts.append((word[0], 0, "word", word[1]))
        if self.n_indent:
            j = self._indent_cut(chunk)
            if j is not None:
                cuts.append((held + j, 1, "limit", ""))
        if self.t_max is not None and "\n" in chunk and now - self._t0 > self.t_max:
            cuts.append((len(buf), 2, "limit", ""))
        if cuts:
            pos, _, self.stop_type, self.stopping_word = min(cuts)
            self.text += buf[:pos]
            self._held = ""
            self.stopped = True
            return True
        keep = partial_stop_len(buf, self.stops)
        self.text += buf[: len(buf) - keep]
        self._held = buf[len(buf) - keep :]
        return False

    def finish(self) -> None:
        if not self.stopped:
            self.text += self._held
        self._held = ""

    def take(self) -> str:
        out = self.text[self._taken :]
        self._taken = len(self.text)
        return out


# ------------------------------------------------------------------------------------------ responses
def select_fields(obj: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """llama.cpp's `response_fields`: each path ("timings/prompt_n") that exists, under its path as
    the key; missing ones are left out."""
    out: dict[str, Any] = {}
    for path in paths:
        cur: Any = obj
        for key in path.split("/"):
            if isinstance(cur, dict) and key in cur:
                cur = cur[key]
            else:
                break
        else:
            out[path] = cur
    return out


def _rate(n: int, ms: float) -> float:
    return round(1000.0 * n / ms, 3) if ms > 0 else 0.0


def _per(ms: float, n: int) -> float:
    return round(ms / n, 3) if n > 0 else 0.0


class InfillFormat:
    """llama.cpp's /infill answers: `full` (one JSON object) and the server-sent events (a chunk per
    token, ``{"content", "stop": false, ...}``, then the final object with ``"stop": true``)."""

    def __init__(
        self,
        req: InfillRequest,
        model_id: str,
        prompt_tokens: int,
        truncated: int,
        text_stop: InfillText,
    ) -> None:
        self.req = req
        self.model = model_id
        self.prompt_tokens = prompt_tokens
        self.truncated = truncated
        self.text_stop = text_stop
        self._sent = 0
        self._template: tuple[bytes, bytes] | None = None

    def stop_type(self, r: Any) -> str:
        if self.text_stop.stopped:
            return self.text_stop.stop_type
        if r.reason in ("eos", "stop"):  # the end-of-text token, or a FIM sentinel (a stop id)
            return "eos"
        if r.reason in ("length", "time_budget"):
            return "limit"
        return "none"

    def settings(self) -> dict[str, Any]:
        q = self.req
        return {
            "n_predict": q.n_predict,
            "temperature": q.temperature,
            "top_k": q.top_k,
            "top_p": q.top_p,
            "min_p": q.min_p,
            "repeat_penalty": q.repetition_penalty,
            "repeat_last_n": q.penalty_window,
            "n_indent": q.n_indent,
            "t_max_predict_ms": q.t_max_predict_ms,
            "stop": list(q.stop),
            "samplers": q.samplers
            if q.samplers is not None
            else ["penalties", "top_k", "top_p", "min_p", "temperature"],
            "seed": q.seed if q.seed is not None else 0xFFFFFFFF,
            "ignore_eos": q.ignore_eos,
            "stream": q.stream,
            "model": self.model,
        }

    def final(self, r: Any, content: str | None = None) -> dict[str, Any]:
        st = self.stop_type(r)
        text = r.text if content is None else content
        prompt_n = max(0, self.prompt_tokens - r.resumed_from)
        prompt_ms = round(r.prompt_ms, 3)
        predicted_ms = round(r.predicted_ms, 3)
        out = {
            "index": 0,
            "content": text,
            "tokens": list(r.tokens) if self.req.return_tokens and content is None else [],
            "id_slot": 0,
            "stop": True,
            "model": self.model,
            "tokens_predicted": r.completion_tokens,
            "tokens_evaluated": self.prompt_tokens,
            "generation_settings": self.settings(),
            "has_new_line": "\n" in r.text,
            "truncated": bool(self.truncated),
            "stop_type": st,
            "stopped_eos": st == "eos",
            "stopped_limit": st == "limit",
            "stopped_word": st == "word",
            "stopping_word": self.text_stop.stopping_word,
            "tokens_cached": r.resumed_from,
            "timings": {
                "cache_n": r.resumed_from,
                "prompt_n": prompt_n,
                "prompt_ms": prompt_ms,
                "prompt_per_token_ms": _per(prompt_ms, prompt_n),
                "prompt_per_second": _rate(prompt_n, prompt_ms),
                "predicted_n": r.completion_tokens,
                "predicted_ms": predicted_ms,
                "predicted_per_token_ms": _per(predicted_ms, r.completion_tokens),
                "predicted_per_second": _rate(r.completion_tokens, predicted_ms),
            },
        }
        if self.truncated:
            out["prompt_tokens_truncated"] = self.truncated
        return select_fields(out, self.req.response_fields) if self.req.response_fields else out

    def full(self, r: Any) -> dict[str, Any]:
        return self.final(r)

    # the EventStream interface (app.py)
    def start(self) -> bytes:
        return b""

    def text(self, text: str) -> bytes:
        self._sent += 1
        if self._template is None:
            marker = "\x00TEXT\x00"
            head, _, tail = _event(
                {
                    "index": 0,
                    "content": marker,
                    "tokens": [],
                    "stop": False,
                    "id_slot": -1,
                    "tokens_predicted": -1,
                    "tokens_evaluated": self.prompt_tokens,
                }
            ).partition(json.dumps(marker).encode())
            self._template = (head, tail)
        head, tail = self._template
        tail = tail.replace(b'"tokens_predicted":-1', b'"tokens_predicted":%d' % self._sent, 1)
        return head + json.dumps(text, ensure_ascii=False).encode() + tail

    def end(self, r: Any) -> bytes:
        return _event(self.final(r, content=""))

    @staticmethod
    def error(message: str) -> bytes:
        return _event({"error": {"code": 503, "message": message, "type": "server_error"}})


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def infill_job(
    fim: Any, model: Any, req: Any, max_prompt_tokens: int, token_healing: bool, check_overflow: Callable[[int], None]
) -> Any:
    """<pre> extra + input_prefix <suf> input_suffix <mid> prompt, as a generation job."""
    from bitmamba_lsp.engine.decoding import GenerationConfig, make_sampler
    from bitmamba_lsp.http.worker import Job

    enc = model.encode
    suffix, middle = enc(req.input_suffix), enc(req.prompt)
    # whole extra chunks go first, then the prefix's start and the suffix's end (fit_infill)
    ids, truncated = fit_infill(fim, enc, req.input_extra, req.input_prefix, suffix, middle, max_prompt_tokens)
    check_overflow(len(ids) + truncated)
    cfg = GenerationConfig(
        max_tokens=req.n_predict,
        temperature=req.temperature,
        top_k=req.top_k,
        top_p=req.top_p,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        penalty_window=req.penalty_window,
        stop=req.stop,
        seed=req.seed,
    )
    try:
        make_sampler(model, cfg)
    except ValueError as e:
        raise bad(str(e), None, "invalid_value") from None
    heal = token_healing if req.token_healing is None else req.token_healing
    return Job(
        ids=ids,
        cfg=cfg,
        stop_ids=fim.sentinel_ids,
        ignore_eos=req.ignore_eos,
        # healing takes back the last token of `prompt` (the typed part of the line), as the
        # daemon does; an empty `prompt` ends with <mid>, which is never healed
        heal=heal and bool(req.prompt) and req.n_predict > 0,
        truncated=truncated,
        text_stop=InfillText(req.stop, req.n_indent, req.t_max_predict_ms),
    )
