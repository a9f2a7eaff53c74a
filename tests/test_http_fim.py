"""Fill-in-the-middle over HTTP, end to end: a real uvicorn server on a loopback port serving a tiny
random model that declares FIM (conftest.fim_model_dir), driven with httpx by the requests llama.vim
and llama.vscode send to llama.cpp's /infill, and by /v1/completions with a suffix. Every greedy
answer is checked against a decode written here from the model alone: the prompt ids built from
FimSpec.ids, prefill, argmax, one token at a time."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from bitmamba_lsp import load  # noqa: E402
from bitmamba_lsp.engine.formats.bitmamba_bin import write_bin  # noqa: E402
from bitmamba_lsp.engine.healing import HealingConstraint, TokenHealer  # noqa: E402
from bitmamba_lsp.engine.model import Model  # noqa: E402
from bitmamba_lsp.http import ServerSettings, create_app  # noqa: E402
from bitmamba_lsp.http.infill import InfillText, extra_text, fit_fim, parse_infill, select_fields  # noqa: E402
from bitmamba_lsp.http.schemas import Limits, parse_completion  # noqa: E402

pytestmark = pytest.mark.timeout(120)

KEY = "fim-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
LIMIT = 512  # --max-prompt-tokens of the test server

# ---------------------------------------------------------------- what the editors send (verbatim shapes)
# llama.vim (autoload/llama.vim, s:fim): the local context around the cursor, the ring buffer of
# chunks, and the samplers it asks for; `model` is always sent (empty unless configured).
LLAMA_VIM_RESPONSE_FIELDS = [
    "content",
    "timings/prompt_n",
    "timings/prompt_ms",
    "timings/prompt_per_token_ms",
    "timings/prompt_per_second",
    "timings/predicted_n",
    "timings/predicted_ms",
    "timings/predicted_per_token_ms",
    "timings/predicted_per_second",
    "truncated",
    "tokens_cached",
]


def llama_vim_fim(prefix: str, suffix: str, middle: str, extra: list[dict], indent: int, **over: Any) -> dict:
    body = {
        "id_slot": 0,
        "input_prefix": prefix,
        "input_suffix": suffix,
        "input_extra": extra,
        "prompt": middle,
        "n_predict": 128,
        "stop": [],
        "n_indent": indent,
        "top_k": 40,
        "top_p": 0.90,
        "samplers": ["top_k", "top_p", "infill"],
        "stream": False,
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1000,
        "response_fields": LLAMA_VIM_RESPONSE_FIELDS,
        "model": "",
    }
    body.update(over)
    return body


def llama_vim_ring_update(extra: list[dict]) -> dict:
    """llama.vim's s:ring_update: new extra context sent with n_predict 0 so the server caches it."""
    return {
        "id_slot": 0,
        "input_prefix": "",
        "input_suffix": "",
        "input_extra": extra,
        "prompt": "",
        "n_predict": 0,
        "temperature": 0.0,
        "samplers": [],
        "stream": False,
        "cache_prompt": True,
        "t_max_prompt_ms": 1,
        "t_max_predict_ms": 1,
        "response_fields": [""],
        "model": "",
    }


def llama_vscode_fim(
    prefix: str, suffix: str, prompt: str, chunks: list[dict], nindent: int, **over: Any
) -> dict:
    """llama.vscode (src/llama-server.ts, createRequestPayload(false, ...))."""
    body = {
        "id_slot": 0,
        "input_prefix": prefix,
        "input_suffix": suffix,
        "input_extra": chunks,
        "prompt": prompt,
        "n_predict": 128,
        "n_cmpl": 3,
        "top_k": 40,
        "top_p": 0.99,
        "stream": False,
        "samplers": ["top_k", "top_p", "infill"],
        "cache_prompt": True,
        **({"n_indent": nindent} if nindent else {}),
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 2500,
    }
    body.update(over)
    return body


def llama_vscode_prepare(chunks: list[dict]) -> dict:
    """llama.vscode's updateExtraContext (createRequestPayload(true, "", "", chunks, "", ...))."""
    return {
        "id_slot": 0,
        "input_prefix": "",
        "input_suffix": "",
        "input_extra": chunks,
        "prompt": "",
        "n_predict": 0,
        "samplers": [],
        "cache_prompt": True,
        "t_max_prompt_ms": 500,
        "t_max_predict_ms": 1,
    }


def vim_chunk(filename: str, lines: list[str]) -> dict:
    # llama.vim: {'text': join(lines, "\n") . "\n", 'time': reltime(), 'filename': expand('%')}
    return {"text": "\n".join(lines) + "\n", "time": [1733, 42], "filename": filename}


def vscode_chunk(filename: str, text: str) -> dict:
    return {"text": text, "time": 1733000000000, "filename": filename}


# ------------------------------------------------------------------------------------------ server
@dataclass
class Served:
    url: str
    ref: Model  # an independently loaded copy of the served model
    server: Any  # bitmamba_lsp.http.app.Server

    @property
    def model_id(self) -> str:
        return self.server.model_id

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=kw.pop("headers", AUTH), timeout=60, **kw)

    def built(self, path: str, body: dict[str, Any]) -> list[int]:
        """The prompt ids the server builds for this body (its own request parsing and prompt
        building, run here): the random test model's answers depend on the last few prompt tokens
        only, so the whole prompt is checked this way."""
        srv = self.server
        if path == "/infill":
            return srv.prepare_infill(parse_infill(body, srv.limits, srv.model.vocab_size)).ids
        return srv.prepare(parse_completion(body, srv.limits, srv.model.vocab_size)).ids


def _start(app: Any) -> tuple[str, Any, threading.Thread]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}", server, thread


def _serve(folder: Path, **settings: Any) -> Iterator[Served]:
    model = load(str(folder), threads=1)
    limits = Limits(
        max_body_bytes=256 << 10, max_prompt_tokens=LIMIT, max_tokens_limit=256, default_max_tokens=32
    )
    app = create_app(model, ServerSettings(api_key=KEY, limits=limits, max_batch=4, **settings))
    url, server, thread = _start(app)
    try:
        yield Served(url, load(str(folder), threads=1), app.state.server)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def fim(fim_model_dir: Path) -> Iterator[Served]:
    # token healing off by default, so that the editors' requests (which never ask) are the plain
    # FIM prompt; test_infill_token_healing turns it on per request
    yield from _serve(fim_model_dir, token_healing=False)


@pytest.fixture(scope="module")
def plain(fim_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The same model files with a model.json that declares no FIM."""
    folder = tmp_path_factory.mktemp("no-fim")
    for name in ("model.bin", "tokenizer.json"):
        shutil.copy(fim_model_dir / name, folder / name)
    meta = json.loads((fim_model_dir / "model.json").read_text())
    del meta["fim"]
    (folder / "model.json").write_text(json.dumps(meta))
    yield from _serve(folder)


SENTINEL_CASE = ("def f(x):\n", "\n    return y\n")  # prefix, suffix (no typed part)


@pytest.fixture(scope="module")
def sentinel(fim_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The FIM model with one output row changed so that greedy decoding of SENTINEL_CASE writes
    <|fim_prefix|> after a few tokens (the row is the sign of the hidden state there, solved from the
    logits: no other row can score higher), then goes on as before."""
    from bitmamba_lsp.engine.formats.bitmamba_bin import (
        BitMamba2Config,
        TernaryTensor,
        pack_ternary,
        random_tensors,
    )

    m = load(str(fim_model_dir), threads=1)
    assert m.fim is not None
    cfg = BitMamba2Config(m.vocab_size, 64, 2, 4)  # conftest.write_fim_model's shape and seed
    tensors = random_tensors(cfg, 0)
    head = tensors["lm_head"]
    assert isinstance(head, TernaryTensor)
    state = m.new_state()
    logits = m.prefill(state, fim_ids(m, *SENTINEL_CASE))
    for _ in range(3):
        logits = m.prefill(state, [int(np.argmax(logits))])
    q = head.unpack()
    x, *_ = np.linalg.lstsq(q.astype(np.float64), logits.astype(np.float64), rcond=None)
    q[m.fim.prefix_id] = np.sign(x).astype(np.int8)
    tensors["lm_head"] = TernaryTensor(head.rows, head.cols, head.scale, pack_ternary(q))
    folder = tmp_path_factory.mktemp("sentinel-model")
    for name in ("tokenizer.json", "model.json"):
        shutil.copy(fim_model_dir / name, folder / name)
    write_bin(folder / "model.bin", cfg, tensors)
    yield from _serve(folder)


# ------------------------------------------------------------------------------------------ reference
def fim_ids(m: Model, prefix: str, suffix: str, middle: str = "") -> list[int]:
    assert m.fim is not None
    return m.fim.ids(m.encode(prefix), m.encode(suffix), m.encode(middle))


@dataclass
class Ref:
    tokens: list[int]  # generated, the end (EOS or a sentinel) not included
    ended: bool  # ended by EOS or a FIM sentinel (else: n tokens)
    chunks: list[str]  # each token's text, as a streaming decoder releases it
    end: str = ""  # "eos", "sentinel" or ""

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def counted(self) -> int:
        """Completion tokens as the server counts them: a sentinel that ends the middle counts
        (a stop token), the end-of-text token does not."""
        return len(self.tokens) + (self.end == "sentinel")


def greedy(m: Model, ids: list[int], n: int) -> Ref:
    """Argmax decoding from scratch: prefill the prompt, then feed each chosen token back."""
    assert m.fim is not None and m.tokenizer is not None
    state = m.new_state()
    logits = m.prefill(state, ids)
    out: list[int] = []
    end = ""
    while len(out) < n:
        t = int(np.argmax(logits))
        if t == m.eos_id:
            end = "eos"
            break
        if t in (m.fim.prefix_id, m.fim.suffix_id, m.fim.middle_id):
            end = "sentinel"
            break
        out.append(t)
        logits = m.prefill(state, [t])
    sd = m.tokenizer.stream_decoder()
    chunks = [sd.feed(t) for t in out]
    chunks[-1:] = [chunks[-1] + sd.flush()] if chunks else []
    assert "".join(chunks) == m.decode(out)
    return Ref(out, bool(end), chunks, end)


def healed_greedy(m: Model, ids: list[int], n: int) -> str:
    """Greedy with token healing, as the daemon does it: the last prompt token is taken back, the
    first tokens are constrained to re-create its bytes (the engine's HealingConstraint), and those
    bytes are left out of the text."""
    assert m.tokenizer is not None and m.fim is not None
    tok = m.tokenizer
    healer = TokenHealer(tok, sorted({*tok.special_ids, m.eos_id}))
    h = healer.heal(np.asarray(ids))
    assert h.raw, "the prompt's last token should be healable"
    hook = HealingConstraint(healer, h.raw)
    state = m.new_state()
    logits = m.prefill(state, h.ids)
    out: list[int] = []
    rest, silent = h.raw, 0
    while len(out) < n + silent:
        t = int(np.argmax(hook.apply(logits) if hook.active() else logits))
        hook.accept(t)
        if t == m.eos_id or t in m.fim.sentinel_ids:
            break
        b = tok.token_bytes(t)
        if rest and rest.startswith(b):  # only re-creates the healed bytes: not an answer token
            rest, silent = rest[len(b) :], silent + 1
        else:
            rest = b""
        out.append(t)
        logits = m.prefill(state, [t])
    text = m.decode(out)
    assert text.startswith(h.text)
    return text[len(h.text) :]


def cut_indent(text: str, n: int) -> str | None:
    """llama.cpp's n_indent rule, from the text: the first line after the first line break whose first
    character that is not a space or tab (a line break included) comes after fewer than n of them
    ends the text there. None: no such line."""
    i = text.find("\n")
    while i != -1:
        k = i + 1
        while k < len(text) and text[k] in " \t":
            k += 1
        if k < len(text) and k - (i + 1) < n:
            return text[:k]
        i = text.find("\n", i + 1)
    return None


# candidate prompts (prefix, suffix, typed part): the random model's greedy middles differ between them
CASES = [
    ("def f(x):\n", "\n    return y\n", "    y = "),
    ("for i in range(3):\n", "print(i)\n", "    "),
    ("class A:\n    def g(self):\n", "\n", "        "),
    ("import os\n", "\n", ""),
    ("x = [\n", "]\n", "    1,"),
]


# ------------------------------------------------------------------------------------------ /infill
def test_llama_vim_request_is_the_reference_greedy_middle(fim: Served) -> None:
    """llama.vim's request as it sends it (top_k 1 for a deterministic answer): the content is the
    greedy middle of <pre> extra + prefix <suf> suffix <mid> prompt, and the response has exactly
    the fields llama.vim asks for (response_fields, slashes unnested into keys)."""
    prefix, suffix, middle = CASES[0]
    extra = [vim_chunk("src/util.py", ["def helper():", "    return 42"])]
    body = llama_vim_fim(prefix, suffix, middle, extra, indent=4, top_k=1, n_predict=24)
    r = fim.post("/infill", body)
    assert r.status_code == 200, r.text
    # llama.vim's own check before it decodes the answer
    assert re.match(r"^\s*{", r.text) and re.search(r'"content"\s*:"', r.text)
    got = r.json()
    assert set(got) == set(LLAMA_VIM_RESPONSE_FIELDS)
    ids = fim_ids(fim.ref, "# src/util.py\ndef helper():\n    return 42\n" + prefix, suffix, middle)
    assert fim.built("/infill", body) == ids
    ref = greedy(fim.ref, ids, 24)
    assert ref.tokens and got["content"] == (cut_indent(ref.text, 4) or ref.text)
    if cut_indent(ref.text, 4) is None:
        assert got["timings/predicted_n"] == ref.counted
    assert got["timings/prompt_n"] + got["tokens_cached"] == len(ids)
    assert got["truncated"] is False
    for k in LLAMA_VIM_RESPONSE_FIELDS:
        if k.startswith("timings/"):
            assert isinstance(got[k], int | float) and got[k] >= 0


def test_llama_vim_ring_update_warms_the_cache(fim: Served) -> None:
    """n_predict 0 with extra context answers at once with nothing generated, and the next request
    with the same chunks resumes from the states it left in the prefix cache."""
    lines = [f"value_{i} = compute({i}, 'warm-up chunk')" for i in range(16)]
    extra = [vim_chunk("warm.py", lines)]
    r = fim.post("/infill", llama_vim_ring_update(extra))
    assert r.status_code == 200 and r.json() == {}  # response_fields [""]: nothing selected
    text = "# warm.py\n" + "\n".join(lines) + "\n"
    assert fim.built("/infill", llama_vim_ring_update(extra)) == fim_ids(fim.ref, text, "")
    body = llama_vim_fim("x = 1\n", "\n", "y = ", extra, indent=0, top_k=1, n_predict=4)
    got = fim.post("/infill", body).json()
    n_extra = len(fim.ref.encode("# warm.py\n" + "\n".join(lines) + "\n"))
    assert 128 < n_extra < LIMIT - 32 and got["tokens_cached"] >= n_extra - 64
    ids = fim_ids(fim.ref, text + "x = 1\n", "\n", "y = ")
    assert fim.built("/infill", body) == ids and got["content"] == greedy(fim.ref, ids, 4).text
    # the same request with chunks nobody sent before finds nothing to resume
    other = [vim_chunk("cold.py", [f"cold_{i} = {i} * {i}" for i in range(16)])]
    cold = fim.post("/infill", llama_vim_fim("x = 1\n", "\n", "y = ", other, indent=0, top_k=1, n_predict=4))
    assert cold.json()["tokens_cached"] == 0


def test_llama_vscode_requests(fim: Served) -> None:
    """llama.vscode's payloads: the FIM request (its samplers: top-k 40, top-p 0.99, no temperature
    step) answers a JSON object with content, and its extra-context preparation (n_predict 0) an
    empty content; with top_k 1 the content is the reference greedy middle."""
    chunks = [vscode_chunk("/home/u/proj/a.py", "import math\nprint(math.pi)\n")]
    prefix, suffix, prompt = "def area(r):\n", "\n\nprint(area(2))\n", "    return "
    prep = fim.post("/infill", llama_vscode_prepare(chunks))
    assert prep.status_code == 200
    p = prep.json()
    assert p["content"] == "" and p["stop"] is True and p["tokens_predicted"] == 0
    r = fim.post("/infill", llama_vscode_fim(prefix, suffix, prompt, chunks, nindent=4))
    assert r.status_code == 200, r.text
    got = r.json()
    for k in ("content", "stop", "tokens_predicted", "tokens_evaluated", "stop_type", "truncated",
              "tokens_cached", "timings", "generation_settings", "has_new_line"):  # fmt: skip
        assert k in got, k
    assert isinstance(got["content"], str) and got["stop"] is True
    assert 0 <= got["tokens_predicted"] <= 128
    assert got["stop_type"] in ("eos", "limit", "word")
    ids = fim_ids(fim.ref, "# /home/u/proj/a.py\nimport math\nprint(math.pi)\n" + prefix, suffix, prompt)
    assert fim.built("/infill", llama_vscode_fim(prefix, suffix, prompt, chunks, nindent=4)) == ids
    assert fim.built("/infill", llama_vscode_prepare(chunks)) == fim_ids(
        fim.ref, extra_text([("/home/u/proj/a.py", chunks[0]["text"])]), ""
    )
    assert got["tokens_evaluated"] == len(ids)
    assert got["generation_settings"]["top_k"] == 40 and got["generation_settings"]["temperature"] == 1.0
    t = got["timings"]
    assert {"prompt_n", "prompt_ms", "predicted_n", "predicted_ms", "predicted_per_second"} <= set(t)
    assert t["predicted_n"] == got["tokens_predicted"]
    g = fim.post(
        "/infill", llama_vscode_fim(prefix, suffix, prompt, chunks, nindent=0, top_k=1, n_predict=20)
    ).json()
    assert g["content"] == greedy(fim.ref, ids, 20).text


def test_input_extra_layout_and_chunk_without_filename(fim: Served) -> None:
    extra = [{"filename": "a.py", "text": "A = 1"}, {"text": "B = 2\n"}, {"filename": None, "text": ""}]
    body = {"input_prefix": "C = ", "input_suffix": "\n", "input_extra": extra, "n_predict": 12, "top_k": 1}
    got = fim.post("/infill", body).json()
    ids = fim_ids(fim.ref, "# a.py\nA = 1\nB = 2\nC = ", "\n")
    assert fim.built("/infill", body) == ids
    assert got["content"] == greedy(fim.ref, ids, 12).text
    assert got["tokens_evaluated"] == len(ids)


def test_n_predict_is_respected(fim: Served) -> None:
    prefix, suffix, middle = CASES[3]
    ids = fim_ids(fim.ref, prefix, suffix, middle)
    ref = greedy(fim.ref, ids, 40)
    assert len(ref.tokens) == 40, "the random model should not end this middle early"
    for n in (1, 5, 17, 40):
        got = fim.post(
            "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": n, "top_k": 1}
        ).json()
        assert got["tokens_predicted"] == n and got["stop_type"] == "limit" and got["stopped_limit"]
        assert got["content"] == fim.ref.decode(ref.tokens[:n])
    # without n_predict: the server's default (--default-max-tokens, 32 here); -1 too
    for body in ({}, {"n_predict": -1}):
        got = fim.post("/infill", {"input_prefix": prefix, "input_suffix": suffix, "top_k": 1, **body}).json()
        assert got["tokens_predicted"] == 32 and got["content"] == fim.ref.decode(ref.tokens[:32])
    t0 = time.monotonic()
    zero = fim.post("/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 0})
    assert zero.status_code == 200 and zero.json()["content"] == "" and zero.json()["tokens_predicted"] == 0
    assert time.monotonic() - t0 < 5


def _indented_case(fim: Served) -> tuple[tuple[str, str, str], Ref, int]:
    """A case whose greedy middle has a second line with some indentation and a character on it."""
    for case in CASES:
        ref = greedy(fim.ref, fim_ids(fim.ref, *case), 64)
        text = ref.text
        i = text.find("\n")
        if i == -1:
            continue
        line = text[i + 1 :]
        indent = len(line) - len(line.lstrip(" \t"))
        if indent > 0 and line.strip(" \t") and not line.lstrip(" \t").startswith("\n"):
            return case, ref, indent
    raise AssertionError("no candidate prompt gives an indented second line with this model")


def test_n_indent_stops_at_a_less_indented_line(fim: Served) -> None:
    (prefix, suffix, middle), ref, indent = _indented_case(fim)
    base = {"input_prefix": prefix, "input_suffix": suffix, "prompt": middle, "n_predict": 64, "top_k": 1}
    cut = fim.post("/infill", {**base, "n_indent": indent + 1}).json()
    expected = cut_indent(ref.text, indent + 1)
    assert expected is not None
    assert cut["content"] == expected
    assert cut["stop_type"] == "limit" and cut["content"].endswith("\n" + ref.text.split("\n")[1][:indent])
    assert cut["tokens_predicted"] < len(ref.tokens)
    # the line's own indentation is enough: it is not cut there
    kept = fim.post("/infill", {**base, "n_indent": indent}).json()
    after = cut_indent(ref.text, indent)
    assert kept["content"] == (after if after is not None else ref.text)
    assert len(kept["content"]) > len(cut["content"])
    # an empty line is a line with no indentation (llama.cpp stops there too)
    blank = "for i in range(3):\n", "print(i)\n", "    "
    bref = greedy(fim.ref, fim_ids(fim.ref, *blank), 64)
    assert bref.text.startswith("\n\n"), "this fixture model's middle for the case starts with an empty line"
    b = fim.post(
        "/infill",
        {**base, "input_prefix": blank[0], "input_suffix": blank[1], "prompt": blank[2], "n_indent": 1},
    ).json()
    assert b["content"] == "\n" == cut_indent(bref.text, 1)


def test_t_max_predict_ms_ends_at_the_next_line_break(fim: Served) -> None:
    """Past the time limit (counted from the first token) the answer ends with the next token that
    contains a line break."""
    for case in CASES:
        ref = greedy(fim.ref, fim_ids(fim.ref, *case), 64)
        nl = [i for i, c in enumerate(ref.chunks) if "\n" in c and i >= 1]
        if nl:
            break
    else:
        raise AssertionError("no candidate prompt gives a line break after the first token")
    prefix, suffix, middle = case
    base = {"input_prefix": prefix, "input_suffix": suffix, "prompt": middle, "n_predict": 64, "top_k": 1}
    got = fim.post("/infill", {**base, "t_max_predict_ms": 0.001}).json()
    assert got["content"] == fim.ref.decode(ref.tokens[: nl[0] + 1])
    assert got["stop_type"] == "limit" and got["tokens_predicted"] == nl[0] + 1
    free = fim.post("/infill", {**base, "t_max_predict_ms": 60000}).json()  # not reached
    assert free["content"] == ref.text


def test_stop_strings(fim: Served) -> None:
    prefix, suffix, middle = CASES[3]
    ref = greedy(fim.ref, fim_ids(fim.ref, prefix, suffix, middle), 40)
    word = ref.text[20:24]
    at = ref.text.find(word)
    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 40, "top_k": 1, "stop": [word, ""]}
    got = fim.post("/infill", body).json()
    assert got["content"] == ref.text[:at]
    assert got["stop_type"] == "word" and got["stopped_word"] and got["stopping_word"] == word


def test_infill_streaming_events(fim: Served) -> None:
    prefix, suffix, middle = CASES[0]
    body = {
        "input_prefix": prefix,
        "input_suffix": suffix,
        "prompt": middle,
        "n_predict": 16,
        "top_k": 1,
        "stream": True,
    }
    events = []
    with httpx.stream("POST", fim.url + "/infill", json=body, headers=AUTH, timeout=60) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        raw = s.read().decode()
    for block in raw.split("\n\n"):
        if block.strip():
            assert block.startswith("data: ") and "[DONE]" not in block
            events.append(json.loads(block[len("data: ") :]))
    *parts, last = events
    assert parts and all(e["stop"] is False and isinstance(e["content"], str) for e in parts)
    assert last["stop"] is True and last["content"] == "" and "timings" in last
    ref = greedy(fim.ref, fim_ids(fim.ref, prefix, suffix, middle), 16)
    assert "".join(e["content"] for e in parts) == ref.text
    assert last["tokens_predicted"] == ref.counted
    # one event per generated token (a sentinel that ends the middle sends none), and one for the
    # decoder's last bytes when a token left some pending
    assert len(ref.tokens) <= len(parts) <= len(ref.tokens) + 1


def test_infill_token_healing(fim: Served) -> None:
    """token_healing: true takes back the last token of `prompt` (after <mid>) and regenerates it, as
    the daemon does; the healed text is not part of the content."""
    prefix, suffix, middle = CASES[0]  # the typed part ends with a space
    ids = fim_ids(fim.ref, prefix, suffix, middle)
    healed = healed_greedy(fim.ref, ids, 16)
    plain = greedy(fim.ref, ids, 16).text
    assert healed != plain, "pick a case where healing changes the greedy middle"
    base = {"input_prefix": prefix, "input_suffix": suffix, "prompt": middle, "n_predict": 16, "top_k": 1}
    assert fim.post("/infill", {**base, "token_healing": True}).json()["content"] == healed
    assert fim.post("/infill", base).json()["content"] == plain  # the server's default here: off


def test_infill_long_prompt_is_truncated_and_reported(fim: Served) -> None:
    m = fim.ref
    prefix = "".join(f"a_{i} = {i}\n" for i in range(300))
    suffix = "".join(f"b_{i} = {i}\n" for i in range(300))
    p, s, mid = m.encode(prefix), m.encode(suffix), m.encode("c = ")
    total = 3 + len(p) + len(s) + len(mid)
    assert total > LIMIT
    # what is kept: the end of the prefix, the start of the suffix (at least a quarter of the room)
    room = LIMIT - 3 - len(mid)
    s_keep = max(room // 4, room - len(p))
    ids = m.fim.ids(p[len(p) - (room - s_keep) :], s[:s_keep], mid)
    assert len(ids) == LIMIT and fit_fim(m.fim, p, s, mid, LIMIT) == (ids, total - LIMIT)
    body = {"input_prefix": prefix, "input_suffix": suffix, "prompt": "c = ", "n_predict": 8, "top_k": 1}
    assert fim.built("/infill", body) == ids
    r = fim.post("/infill", body)
    got = r.json()
    assert r.headers["x-prompt-truncated"] == str(total - LIMIT)
    assert got["truncated"] is True and got["tokens_evaluated"] == LIMIT
    assert got["prompt_tokens_truncated"] == total - LIMIT
    assert got["content"] == greedy(m, ids, 8).text
    err = fim.post("/infill", {**body, "prompt_overflow": "error"})
    assert err.status_code == 400 and err.json()["error"]["code"] == "context_length_exceeded"


def test_infill_too_much_extra_context_drops_the_oldest_chunks_whole(fim: Served) -> None:
    """Over the limit, the first (oldest) extra chunks go, whole: the kept ones, and so the prefix
    cache's states after them, do not move when the prefix grows by a token."""
    m = fim.ref
    chunks = [
        vim_chunk(f"m{k}.py", [f"def f{k}_{i}(a, b):  # chunk {k}" for i in range(12)]) for k in range(6)
    ]
    pairs = [(c["filename"], c["text"]) for c in chunks]
    prefix, suffix, middle = "def main():\n", "\n", "    run("
    full = fim_ids(m, extra_text(pairs) + prefix, suffix, middle)
    assert len(full) > LIMIT

    def expected(prefix: str) -> tuple[list[int], int]:  # the most recent chunks that fit
        for k in range(len(pairs), -1, -1):
            ids = fim_ids(m, extra_text(pairs[len(pairs) - k :]) + prefix, suffix, middle)
            if len(ids) <= LIMIT:
                return ids, k
        raise AssertionError

    ids, kept = expected(prefix)
    assert 0 < kept < len(pairs)
    body = {"input_prefix": prefix, "input_suffix": suffix, "input_extra": chunks, "prompt": middle,
            "n_predict": 6, "top_k": 1}  # fmt: skip
    assert fim.built("/infill", body) == ids
    r = fim.post("/infill", body)
    got = r.json()
    assert got["truncated"] is True and got["tokens_evaluated"] == len(ids)
    assert r.headers["x-prompt-truncated"] == str(len(full) - len(ids))
    assert got["content"] == greedy(m, ids, 6).text
    # one more line typed above: the same chunks are kept and the cache resumes after them
    longer = prefix + "    setup()\n"
    ids2, kept2 = expected(longer)
    assert kept2 == kept and fim.built("/infill", {**body, "input_prefix": longer}) == ids2
    again = fim.post("/infill", {**body, "input_prefix": longer}).json()
    n_chunks = len(m.encode(extra_text(pairs[len(pairs) - kept :])))
    assert again["tokens_cached"] >= n_chunks - 64 and again["content"] == greedy(m, ids2, 6).text


# ------------------------------------------------------------------------------------------ /v1/completions
def test_completion_suffix_is_the_greedy_middle(fim: Served) -> None:
    prompt, suffix = "def mean(xs):\n    total = ", "\n    return total / len(xs)\n"
    ids = fim_ids(fim.ref, prompt, suffix)
    ref = greedy(fim.ref, ids, 24)
    body = {"model": fim.model_id, "prompt": prompt, "suffix": suffix, "max_tokens": 24, "temperature": 0}
    assert fim.built("/v1/completions", body) == ids
    assert fim.built("/v1/completions", {**body, "prompt": fim.ref.encode(prompt)}) == ids
    r = fim.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["choices"][0]["text"] == ref.text
    assert got["usage"]["prompt_tokens"] == len(ids) and got["usage"]["completion_tokens"] == ref.counted
    assert got["choices"][0]["finish_reason"] == ("stop" if ref.ended else "length")
    # FIM prompts are never token-healed: asking for it changes nothing
    healed = fim.post("/v1/completions", {**body, "token_healing": True}).json()
    assert healed["choices"][0]["text"] == ref.text
    # streamed: the chunks add up to the same middle
    texts, finish = [], None
    with httpx.stream("POST", fim.url + "/v1/completions", json={**body, "stream": True}, headers=AUTH) as s:
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                c = json.loads(line[6:])["choices"][0]
                texts.append(c["text"])
                finish = c["finish_reason"] or finish
    assert "".join(texts) == ref.text and finish == got["choices"][0]["finish_reason"]
    # token ids as the prompt are the prefix
    ids_prompt = fim.post("/v1/completions", {**body, "prompt": fim.ref.encode(prompt)}).json()
    assert ids_prompt["choices"][0]["text"] == ref.text


def test_completion_suffix_truncation(fim: Served) -> None:
    m = fim.ref
    prompt = "".join(f"p{i} = {i}\n" for i in range(400))
    suffix = "".join(f"s{i} = {i}\n" for i in range(12))
    p, s = m.encode(prompt), m.encode(suffix)
    assert len(s) < (LIMIT - 3) // 4
    total = 3 + len(p) + len(s)
    ids, dropped = fit_fim(m.fim, p, s, [], LIMIT)
    assert dropped == total - LIMIT > 0 and ids[-len(s) - 2 : -1] == [
        m.fim.suffix_id,
        *s,
    ]  # the short suffix stays whole
    body = {"prompt": prompt, "suffix": suffix, "max_tokens": 6, "temperature": 0}
    assert fim.built("/v1/completions", body) == ids
    r = fim.post("/v1/completions", body)
    got = r.json()
    assert r.headers["x-prompt-truncated"] == str(dropped)
    assert got["usage"]["prompt_tokens"] == LIMIT and got["usage"]["prompt_tokens_truncated"] == dropped
    assert got["choices"][0]["text"] == greedy(m, ids, 6).text


def test_a_sentinel_ends_the_middle_and_is_never_text(sentinel: Served) -> None:
    m = sentinel.ref
    ref = greedy(m, fim_ids(m, *SENTINEL_CASE), 32)
    assert ref.end == "sentinel" and len(ref.tokens) == 3, "the fixture should write <|fim_prefix|> 4th"
    prefix, suffix = SENTINEL_CASE
    got = sentinel.post(
        "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 32, "top_k": 1}
    ).json()
    assert got["content"] == ref.text and "<|fim" not in got["content"]
    assert got["stop_type"] == "eos" and got["stopped_eos"] and got["tokens_predicted"] == 4
    body = {"prompt": prefix, "suffix": suffix, "max_tokens": 32, "temperature": 0}
    c = sentinel.post("/v1/completions", body).json()
    assert c["choices"][0]["text"] == ref.text and c["choices"][0]["finish_reason"] == "stop"
    texts = []
    with httpx.stream(
        "POST", sentinel.url + "/v1/completions", json={**body, "stream": True}, headers=AUTH
    ) as s:
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                texts.append(json.loads(line[6:])["choices"][0]["text"])
    assert "".join(texts) == ref.text


# ------------------------------------------------------------------------------------------ without FIM
def test_a_model_without_fim_refuses_clearly(plain: Served) -> None:
    r = plain.post("/v1/completions", {"prompt": "def f(", "suffix": "):\n", "max_tokens": 4})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "suffix" and plain.model_id in err["message"]
    assert "does not declare fill-in-the-middle" in err["message"]
    # an empty suffix is an ordinary completion, as before
    ok = plain.post("/v1/completions", {"prompt": "def f(", "suffix": "", "max_tokens": 2})
    assert ok.status_code == 200
    inf = plain.post("/infill", llama_vim_fim("a\n", "b\n", "c", [], indent=0))
    assert inf.status_code == 501
    e = inf.json()["error"]
    assert "does not declare fill-in-the-middle" in e["message"] and e["code"] == "fim_not_supported"
    assert httpx.get(plain.url + "/health").json()["status"] == "ok"
    # the OpenAPI document says so
    doc = httpx.get(plain.url + "/openapi.json").json()
    assert (
        "does not declare"
        in doc["components"]["schemas"]["CompletionRequest"]["properties"]["suffix"]["description"]
    )


# ------------------------------------------------------------------------------------------ robustness
BAD_BODIES = [
    b"{not json",
    b"[1, 2]",
    b'"text"',
    b"{}",
    b'{"input_suffix": ""}',
    b'{"input_prefix": ""}',
    b'{"input_prefix": 3, "input_suffix": ""}',
    b'{"input_prefix": "", "input_suffix": null}',
    b'{"input_prefix": "", "input_suffix": "", "prompt": 5}',
    b'{"input_prefix": "", "input_suffix": "", "input_extra": "x"}',
    b'{"input_prefix": "", "input_suffix": "", "input_extra": [{"filename": "a"}]}',
    b'{"input_prefix": "", "input_suffix": "", "input_extra": [{"text": 1}]}',
    b'{"input_prefix": "", "input_suffix": "", "input_extra": [{"text": "a", "filename": 3}]}',
    b'{"input_prefix": "", "input_suffix": "", "input_extra": [7]}',
    b'{"input_prefix": "", "input_suffix": "", "n_predict": "x"}',
    b'{"input_prefix": "", "input_suffix": "", "n_predict": 1.5}',
    b'{"input_prefix": "", "input_suffix": "", "n_indent": "4"}',
    b'{"input_prefix": "", "input_suffix": "", "temperature": "hot"}',
    b'{"input_prefix": "", "input_suffix": "", "temperature": 5}',
    b'{"input_prefix": "", "input_suffix": "", "top_k": [1]}',
    b'{"input_prefix": "", "input_suffix": "", "stop": 3}',
    b'{"input_prefix": "", "input_suffix": "", "stop": [1]}',
    b'{"input_prefix": "", "input_suffix": "", "samplers": 3}',
    b'{"input_prefix": "", "input_suffix": "", "stream": "yes"}',
    b'{"input_prefix": "", "input_suffix": "", "response_fields": 3}',
    b'{"input_prefix": "", "input_suffix": "", "seed": "x"}',
    b'{"input_prefix": "", "input_suffix": "", "repeat_penalty": 0}',
    b'{"input_prefix": "", "input_suffix": "", "t_max_predict_ms": NaN}',
    b'{"input_prefix": "", "input_suffix": "", "token_healing": "no"}',
]


@pytest.mark.parametrize("body", BAD_BODIES)
def test_malformed_infill_bodies_are_400(fim: Served, body: bytes) -> None:
    r = httpx.post(fim.url + "/infill", content=body, headers=AUTH, timeout=30)
    assert r.status_code == 400, (body, r.text)
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and err["type"] == "invalid_request_error"


def test_the_server_keeps_serving_after_bad_requests(fim: Served) -> None:
    for body in BAD_BODIES:
        httpx.post(fim.url + "/infill", content=body, headers=AUTH, timeout=30)
    r = fim.post("/infill", {"input_prefix": "a = ", "input_suffix": "\n", "n_predict": 3, "top_k": 1})
    assert r.status_code == 200 and r.json()["tokens_predicted"] == 3
    # unknown llama.cpp fields are ignored, as llama.cpp ignores them
    extra = {
        "lora": [{"id": 0, "scale": 0.5}],
        "n_probs": 3,
        "dry_multiplier": 0.5,
        "id_slot": "any",
        "n_cmpl": 9,
    }
    assert (
        fim.post("/infill", {"input_prefix": "a", "input_suffix": "", "n_predict": 1, **extra}).status_code
        == 200
    )
    # the API key is required as on /v1, /health stays open
    assert httpx.post(fim.url + "/infill", json={"input_prefix": "", "input_suffix": ""}).status_code == 401
    assert httpx.get(fim.url + "/health").json()["status"] == "ok"


def test_llama_vim_instruction_warm_up_on_chat(fim: Served) -> None:
    """llama.vim's llama#inst sends n_predict 0 (and llama.cpp fields) to /v1/chat/completions while
    the user types an instruction: nothing is generated."""
    body = {
        "id_slot": 3,
        "messages": [
            {"role": "system", "content": "You are a code assistant."},
            {"role": "user", "content": "x"},
        ],
        "samplers": [],
        "n_predict": 0,
        "stream": False,
        "cache_prompt": True,
        "response_fields": [""],
    }
    r = fim.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["choices"][0]["message"]["content"] == "" and got["usage"]["completion_tokens"] == 0
    two = fim.post("/v1/chat/completions", {**body, "n_predict": 2, "temperature": 0}).json()
    assert two["usage"]["completion_tokens"] == 2


# ------------------------------------------------------------------------------------------ units
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _feed(ts: InfillText, chunks: list[str]) -> list[str]:
    out = []
    for c in chunks:
        stop = ts.feed(c)
        out.append(ts.take())
        if stop:
            break
    ts.finish()
    out.append(ts.take())
    return out


def test_infill_text_rules() -> None:
    # n_indent: the first line is never checked; a less indented line is cut after its indentation
    ts = InfillText(n_indent=4)
    _feed(ts, ["x = 1", "\n    ", "y = 2\n", "  z", " = 3"])
    assert ts.text == "x = 1\n    y = 2\n  " and ts.stop_type == "limit"
    # whitespace-only so far: undecided, nothing cut; a blank line counts as no indentation
    ts = InfillText(n_indent=2)
    _feed(ts, ["a\n", "  ", "  b\n", "\n", "c"])
    assert ts.text == "a\n    b\n" and ts.stopped
    ts = InfillText(n_indent=2)
    _feed(ts, ["a\n  ", "\tb"])
    assert not ts.stopped and ts.text == "a\n  \tb"
    # stop strings are held back while they may start, never released
    ts = InfillText(stops=["END"])
    parts = _feed(ts, ["abc E", "N", "Dxyz"])
    assert ts.text == "abc " and parts[0] == "abc " and ts.stop_type == "word" and ts.stopping_word == "END"
    ts = InfillText(stops=["END"])
    _feed(ts, ["abc EN"])
    assert ts.text == "abc EN" and not ts.stopped
    # the earlier of a stop string and an indentation cut wins
    ts = InfillText(stops=["\n}"], n_indent=4)
    _feed(ts, ["f()\n", "}"])
    assert ts.text == "f()" and ts.stop_type == "word"
    # time: only a chunk with a line break after the limit ends the text (kept whole)
    clock = Clock()
    ts = InfillText(t_max_predict_ms=10, clock=clock)
    ts.feed("a\n")  # the first token starts the clock
    clock.t = 0.5
    assert not ts.feed("bbb") and not ts.stopped
    assert ts.feed("c\n  d") and ts.text == "a\nbbbc\n  d" and ts.stop_type == "limit"


def test_fit_fim_and_select_fields(fim_model_dir: Path) -> None:
    spec = load(str(fim_model_dir), threads=1).fim
    assert spec is not None
    p, s, m = list(range(100)), list(range(200, 260)), [7, 8]
    assert fit_fim(spec, p, s, m, 1000) == (spec.ids(p, s, m), 0)
    ids, dropped = fit_fim(spec, p, s, m, 45)  # room 40: the suffix gets 10, the prefix 30
    assert ids == spec.ids(p[-30:], s[:10], m) and dropped == 3 + 100 + 60 + 2 - 45
    ids, _ = fit_fim(spec, p[:5], s, m, 45)  # a short prefix leaves the rest to the suffix
    assert ids == spec.ids(p[:5], s[:35], m)
    ids, _ = fit_fim(spec, p, s, list(range(50)), 20)  # the typed part alone is too long
    assert ids == spec.ids([], [], list(range(33, 50)))
    obj = {"content": "x", "timings": {"prompt_n": 3}, "stop": True}
    assert select_fields(obj, ["content", "timings/prompt_n", "timings/nope", "missing", ""]) == {
        "content": "x",
        "timings/prompt_n": 3,
    }
