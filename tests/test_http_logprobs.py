"""`logprobs` and `echo` on /v1/completions (OpenAI's legacy completions semantics), end to end: a real
uvicorn server, driven by the `openai` client and httpx, on the shipped default model and on a random
model with GPT-2's vocabulary (byte-level tokens that split characters). Every value is checked
against an independent reference computed here: the engine's `prefill(..., all_logits=True)` and a
NumPy log-softmax in float64 (plus `scoring.logprob_of_last`, the CLI's `bitmamba logprob`)."""

from __future__ import annotations

import codecs
import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

from test_http import KEY, Served, _start  # noqa: E402

from bitmamba_lsp.engine.decoding import GREEDY  # noqa: E402
from bitmamba_lsp.engine.loader import DEFAULT_MODEL_DIR, load  # noqa: E402
from bitmamba_lsp.engine.model import Model  # noqa: E402
from bitmamba_lsp.http import ServerSettings, create_app  # noqa: E402
from bitmamba_lsp.http.schemas import Limits  # noqa: E402
from bitmamba_lsp.scoring import logprob_of_last  # noqa: E402

pytestmark = pytest.mark.timeout(180)

PROMPT = "import os\nimport sys\n\n\ndef read_config(path):\n"
UNICODE = "# café ünïcode — 😀 日本語 ✓\nname = 'naïve'\n"
TOL = 2e-3  # the server steps token by token (or in a batch); the reference prefills all at once
HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module", params=["default", "random-gpt2"])
def served(request: pytest.FixtureRequest, model_factory: Any) -> Iterator[Served]:
    if request.param == "default":
        if not (DEFAULT_MODEL_DIR / "model.bin").is_file():
            pytest.skip("the shipped default model is absent")
        source = None
    else:  # a random model with GPT-2's vocabulary gets the bundled GPT-2 tokenizer
        path, _, _ = model_factory(50257, 64, 2, 4, seed=5)
        source = str(path)
    model = load(source, threads=1)
    ref = load(source, threads=1)
    settings = ServerSettings(
        api_key=KEY,
        limits=Limits(max_body_bytes=64 << 10, max_prompt_tokens=2048, max_tokens_limit=512),
        max_batch=8,
    )
    app = create_app(model, settings)
    url, server, thread = _start(app)
    yield Served(url, model, ref, app.state.server)
    server.should_exit = True
    thread.join(15)


# ------------------------------------------------------------------------------------------ reference
def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def ref_rows(ref: Model, ids: list[int]) -> np.ndarray:
    """[len(ids), vocab]: row i is log p(next token | ids[: i + 1])."""
    return log_softmax64(ref.prefill(ref.new_state(), ids, all_logits=True))


def tok_str(ref: Model, i: int) -> str:
    """A token's string as documented: its text, or OpenAI's bytes:\\xNN for a piece of a character."""
    raw = ref.require_tokenizer().token_bytes(i)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def ids_of(ref: Model, strings: list[str]) -> list[int]:
    """Token ids back from their strings (each string names one token in these vocabularies)."""
    table: dict[str, int] = {}
    for i in range(ref.vocab_size):
        table.setdefault(tok_str(ref, i), i)
    return [table[s] for s in strings]


def greedy_ids(ref: Model, ids: list[int], n: int, **kw: Any) -> list[int]:
    return list(ref.generate(ref.new_state(), ids, GREEDY, max_tokens=n, **kw))


def post(served: Served, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(served.url + "/v1/completions", json=body, headers=HEADERS, timeout=60)


def stream_chunks(served: Served, body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    with httpx.stream(
        "POST", served.url + "/v1/completions", json={**body, "stream": True}, headers=HEADERS, timeout=60
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


def token_bytes_of(t: str, specials: set[str]) -> bytes:
    if t in specials:
        return b""  # special tokens add no text
    if t.startswith("bytes:"):
        return bytes(int(h, 16) for h in t[len("bytes:") :].split("\\x")[1:])
    return t.encode("utf-8")


def check_offsets(full: str, lp: dict[str, Any], specials: set[str], base: int = 0) -> None:
    """text_offset indexes `full` (the prompt's text, then the answer's), whose part from `base` the
    tokens spell: a token's offset is the index of the character holding its first byte (where its
    text starts, or the character a piece of it belongs to). Bytes that never make a character (a
    random model's) are U+FFFD, one per maximal invalid sequence, as Python decodes them."""
    offs, toks = lp["text_offset"], lp["tokens"]
    assert len(offs) == len(toks) == len(lp["token_logprobs"]) == len(lp["top_logprobs"])
    pieces = [token_bytes_of(t, specials) for t in toks]
    data = b"".join(pieces)
    assert data.decode("utf-8", "replace") == full[base:]
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    p = 0
    for off, t, raw in zip(offs, toks, pieces, strict=True):
        if valid:  # characters started before byte p, less the one byte p continues
            lead = sum(1 for b in data[:p] if b & 0xC0 != 0x80)
            want = lead - (p < len(data) and data[p] & 0xC0 == 0x80)
        else:  # the characters decoded from the bytes before it (the one it continues is not yet)
            dec = codecs.getincrementaldecoder("utf-8")("replace")
            want = len(dec.decode(data[:p]))
        assert off == base + want, (off, t, p)
        if raw and not t.startswith("bytes:") and valid:
            assert full[off : off + len(t)] == t
        p += len(raw)
    assert offs == sorted(offs)


# ------------------------------------------------------------------------------------------ echo: scoring
def test_echo_with_max_tokens_0_scores_the_prompt(served: Served) -> None:
    ref = served.ref
    ids = ref.encode(PROMPT)
    r = served.client().completions.create(
        model=served.model_id, prompt=PROMPT, max_tokens=0, echo=True, logprobs=3
    )
    c = r.choices[0]
    assert c.text == PROMPT and r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 0
    lp = c.logprobs
    assert lp.tokens == [tok_str(ref, i) for i in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first token has no context
    rows = ref_rows(ref, ids)
    for i in range(1, len(ids)):
        assert abs(lp.token_logprobs[i] - rows[i - 1, ids[i]]) < TOL
        top = lp.top_logprobs[i]
        # the 3 most likely, most likely first, then the prompt's token when it is not among them
        assert len(top) == 3 + (lp.tokens[i] not in list(top)[:3])
        vals = list(top.values())
        assert vals == sorted(vals, reverse=True)
        assert np.abs(np.asarray(vals[:3]) - np.sort(rows[i - 1])[::-1][:3]).max() < TOL
        assert top[lp.tokens[i]] == lp.token_logprobs[i]
    # the CLI's `bitmamba logprob -k n-1` of the same text
    total = logprob_of_last(ref, ids, len(ids) - 1).total
    assert abs(math.fsum(lp.token_logprobs[1:]) - total) < TOL * len(ids) ** 0.5
    check_offsets(PROMPT, lp.model_dump(), set())
    assert lp.text_offset[0] == 0


def test_echo_scores_a_long_prompt_after_a_cached_one(served: Served) -> None:
    """A prompt longer than one scoring slice (64 tokens), sent after a plain completion of the same
    prompt left its states in the prefix cache: every position is still scored, in one piece."""
    ref = served.ref
    text = (PROMPT + "    with open(path) as f:\n        return f.read()\n\n\n") * 6
    ids = ref.encode(text)
    assert len(ids) > 150
    post(served, {"prompt": text, "max_tokens": 2, "temperature": 0})  # caches states along it
    got = post(served, {"prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0}).json()
    lp = got["choices"][0]["logprobs"]
    rows = ref_rows(ref, ids)
    want = [None, *(float(rows[i - 1, ids[i]]) for i in range(1, len(ids)))]
    assert len(lp["token_logprobs"]) == len(ids) and lp["token_logprobs"][0] is None
    assert max(abs(a - b) for a, b in zip(lp["token_logprobs"][1:], want[1:], strict=True)) < TOL
    # logprobs 0: no alternatives, only the token itself
    assert all(
        t == {s: v}
        for t, s, v in zip(lp["top_logprobs"][1:], lp["tokens"][1:], lp["token_logprobs"][1:], strict=True)
    )
    assert got["choices"][0]["text"] == text
    check_offsets(text, lp, set())


def test_echo_of_characters_split_across_tokens(served: Served) -> None:
    ref = served.ref
    ids = ref.encode(UNICODE)
    lp = post(served, {"prompt": UNICODE, "max_tokens": 0, "echo": True, "logprobs": 1}).json()["choices"][0][
        "logprobs"
    ]
    assert lp["tokens"] == [tok_str(ref, i) for i in ids]
    check_offsets(UNICODE, lp, set())
    rows = ref_rows(ref, ids)
    assert all(abs(lp["token_logprobs"][i] - rows[i - 1, ids[i]]) < TOL for i in range(1, len(ids)))
    if served.model.vocab_size == 50257:  # GPT-2 splits the emoji into pieces that are not text alone
        assert any(t.startswith("bytes:\\x") for t in lp["tokens"])


def test_echo_without_logprobs_and_of_token_ids(served: Served) -> None:
    ref = served.ref
    ids = ref.encode(PROMPT)
    gen = greedy_ids(ref, ids, 10)
    r = post(served, {"prompt": PROMPT, "max_tokens": 10, "temperature": 0, "echo": True}).json()
    assert r["choices"][0]["text"] == PROMPT + ref.decode(gen) and r["choices"][0]["logprobs"] is None
    # token ids: the echo is their text
    r = post(served, {"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0}).json()
    assert r["choices"][0]["text"] == PROMPT and len(r["choices"][0]["logprobs"]["tokens"]) == len(ids)
    # the empty prompt is read as end-of-text: listed, without text
    eos = served.model.eos_id
    r = post(served, {"prompt": "", "max_tokens": 0, "echo": True, "logprobs": 2}).json()
    lp = r["choices"][0]["logprobs"]
    assert r["choices"][0]["text"] == "" and lp["tokens"] == [tok_str(ref, eos)] and lp["text_offset"] == [0]
    # streamed: the echo comes first, in one chunk
    chunks = stream_chunks(served, {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "echo": True})
    assert chunks[0]["choices"][0]["text"] == PROMPT
    assert "".join(c["choices"][0]["text"] for c in chunks) == PROMPT + ref.decode(gen[:4])


# ------------------------------------------------------------------------------------------ generated tokens
def _check_generated(served: Served, prompt: str, lp: dict[str, Any], gen: list[int], top: int) -> None:
    ref = served.ref
    ids = ref.encode(prompt)
    rows = ref_rows(ref, ids + gen)
    assert lp["tokens"] == [tok_str(ref, t) for t in gen]
    for k, t in enumerate(gen):
        row = rows[len(ids) - 1 + k]
        got, alts = lp["token_logprobs"][k], lp["top_logprobs"][k]
        assert abs(got - row[t]) < TOL
        assert got == max(alts.values())  # greedy: the chosen token is the row's most likely
        assert next(iter(alts)) == lp["tokens"][k] and len(alts) == top
        vals = list(alts.values())
        assert vals == sorted(vals, reverse=True)
        best = np.sort(row)[::-1][:top]
        assert np.abs(np.asarray(vals) - best).max() < TOL
    assert lp["text_offset"][0] == len(prompt)  # offsets count from the prompt's start


def test_greedy_generation_logprobs(served: Served) -> None:
    ref = served.ref
    ids = ref.encode(PROMPT)
    gen = greedy_ids(ref, ids, 24, stop_at_eos=False)
    r = served.client().completions.create(
        model=served.model_id, prompt=PROMPT, max_tokens=24, temperature=0, logprobs=5,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    c = r.choices[0]
    assert c.text == ref.decode(gen)  # logprobs do not heal the prompt: Model.generate's tokens
    lp = c.logprobs.model_dump()
    _check_generated(served, PROMPT, lp, gen, 5)
    specials = {tok_str(ref, i) for i in ref.require_tokenizer().special_ids}
    check_offsets(PROMPT + c.text, lp, specials, len(PROMPT))
    # with echo: the prompt's entries, then the same answer entries
    e = post(served, {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "logprobs": 5, "echo": True,
                      "ignore_eos": True}).json()["choices"][0]  # fmt: skip
    assert e["text"] == PROMPT + c.text
    n = len(ids)
    assert (
        e["logprobs"]["tokens"][n:] == lp["tokens"] and e["logprobs"]["text_offset"][n:] == lp["text_offset"]
    )
    assert np.allclose(e["logprobs"]["token_logprobs"][n:], lp["token_logprobs"], atol=TOL, rtol=0)
    check_offsets(e["text"], e["logprobs"], specials)


def test_sampled_tokens_report_the_models_distribution(served: Served) -> None:
    """At temperature 1.3 with top_k 20 and a repetition penalty, the reported values are still the
    log-softmax of the raw logits (not of the distribution the token was drawn from)."""
    body = {"prompt": PROMPT, "max_tokens": 20, "temperature": 1.3, "top_k": 20, "seed": 11,
            "repetition_penalty": 1.3, "logprobs": 2, "ignore_eos": True}  # fmt: skip
    got = post(served, body).json()["choices"][0]
    plain = {k: v for k, v in body.items() if k != "logprobs"}
    plain = post(served, {**plain, "token_healing": False}).json()["choices"][0]
    assert got["text"] == plain["text"]  # asking for logprobs does not change what is sampled
    lp = got["logprobs"]
    gen = ids_of(served.ref, lp["tokens"])
    assert served.ref.decode(gen) == got["text"]
    ids = served.ref.encode(PROMPT)
    rows = ref_rows(served.ref, ids + gen)
    for k, t in enumerate(gen):
        assert abs(lp["token_logprobs"][k] - rows[len(ids) - 1 + k, t]) < TOL
        assert len(lp["top_logprobs"][k]) in (2, 3)


def test_streamed_chunks_carry_their_tokens_logprobs(served: Served) -> None:
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0, "logprobs": 3}
    whole = post(served, body).json()["choices"][0]
    chunks = stream_chunks(served, body)
    text, merged = "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for ch in chunks[:-1]:
        c = ch["choices"][0]
        lp = c["logprobs"]
        assert lp is not None
        for o in lp["text_offset"]:  # each token's text starts in the chunk that carries it
            assert len(PROMPT) + len(text) <= o < len(PROMPT) + len(text) + len(c["text"])
        text += c["text"]
        for k in merged:
            merged[k] += lp[k]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]
    assert text == whole["text"] and merged == whole["logprobs"]
    # echo: the first chunk is the prompt, scored
    chunks = stream_chunks(served, {**body, "echo": True, "max_tokens": 3})
    first = chunks[0]["choices"][0]
    assert first["text"] == PROMPT and first["logprobs"]["token_logprobs"][0] is None
    assert len(first["logprobs"]["tokens"]) == len(served.ref.encode(PROMPT))
    assert "".join(c["choices"][0]["text"] for c in chunks) == PROMPT + served.ref.decode(
        greedy_ids(served.ref, served.ref.encode(PROMPT), 3)
    )


def test_a_stop_sequence_cuts_the_logprobs_with_the_text(served: Served) -> None:
    ref = served.ref
    ids = ref.encode(PROMPT)
    gen = greedy_ids(ref, ids, 40, stop_at_eos=False)
    full = ref.decode(gen)
    # a stop string starting inside the answer, a few characters in
    start = next(i for i in range(3, len(full) - 2) if full[i].strip() and full[i : i + 2].isprintable())
    stop = full[start : start + 2]
    cut = full.index(stop)
    body = {
        "prompt": PROMPT,
        "max_tokens": 40,
        "temperature": 0,
        "logprobs": 1,
        "stop": [stop],
        "ignore_eos": True,
    }
    c = post(served, body).json()["choices"][0]
    assert c["text"] == full[:cut] and c["finish_reason"] == "stop"
    lp = c["logprobs"]
    # every listed token starts before the cut; the next answer token would start at or after it
    n = len(lp["tokens"])
    assert all(o < len(PROMPT) + cut for o in lp["text_offset"])
    assert lp["tokens"] == [tok_str(ref, t) for t in gen[:n]]
    assert len(ref.decode(gen[:n])) >= cut  # the first token left out starts inside the stop sequence
    assert len(ref.decode(gen[: n - 1])) < cut if n else cut == 0  # the last one listed before it
    streamed = stream_chunks(served, body)
    tokens = [t for ch in streamed[:-1] for t in ch["choices"][0]["logprobs"]["tokens"]]
    assert tokens == lp["tokens"] and "".join(ch["choices"][0]["text"] for ch in streamed) == c["text"]


def test_batched_requests_with_and_without_logprobs(served: Served) -> None:
    """Requests decoded together (one batched step): each gets its own rows, and one that asks for no
    logprobs answers as before."""
    ref = served.ref
    prompts = [PROMPT, "class A:\n    def __init__(self):\n", "for i in range(10):\n", "x = [1, 2, 3]\n"]
    out: dict[int, Any] = {}

    def go(i: int) -> None:
        body = {"prompt": prompts[i], "max_tokens": 20, "temperature": 0, "ignore_eos": True,
                "token_healing": False}  # fmt: skip
        if i % 2 == 0:
            body = {**body, "logprobs": 2}
            del body["token_healing"]
        out[i] = post(served, body).json()["choices"][0]

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, p in enumerate(prompts):
        gen = greedy_ids(ref, ref.encode(p), 20, stop_at_eos=False)
        assert out[i]["text"] == ref.decode(gen)
        if i % 2 == 0:
            _check_generated(served, p, out[i]["logprobs"], gen, 2)
        else:
            assert out[i]["logprobs"] is None


def test_fill_in_the_middle_logprobs(fim_model_dir: Any) -> None:
    """With a suffix the model reads <pre> prompt <suf> suffix <mid>: the middle's tokens are scored
    after that layout, offsets count from the start of `prompt`, the sentinel that ends the middle is
    not listed; echo cannot be combined with a suffix."""
    model, ref = load(str(fim_model_dir), threads=1), load(str(fim_model_dir), threads=1)
    app = create_app(model, ServerSettings(api_key=KEY))
    url, server, thread = _start(app)
    try:
        prompt, suffix = "def f(x):\n    return ", "\n\nprint(f(2))\n"
        body = {"prompt": prompt, "suffix": suffix, "max_tokens": 12, "temperature": 0, "logprobs": 2}
        r = httpx.post(url + "/v1/completions", json=body, headers=HEADERS, timeout=60)
        c = r.json()["choices"][0]
        assert ref.fim is not None
        ids = ref.fim.ids(ref.encode(prompt), ref.encode(suffix))
        gen = greedy_ids(ref, ids, 12, stop_at_eos=False)
        ends = [k for k, t in enumerate(gen) if t == ref.eos_id or t in ref.fim.sentinel_ids]
        gen = gen[: ends[0]] if ends else gen
        lp = c["logprobs"]
        assert c["text"] == ref.decode(gen) and lp["tokens"] == [tok_str(ref, t) for t in gen]
        rows = ref_rows(ref, ids + gen)
        for k, t in enumerate(gen):
            assert abs(lp["token_logprobs"][k] - rows[len(ids) - 1 + k, t]) < TOL
        check_offsets(prompt + c["text"], lp, set(), len(prompt))
        bad = httpx.post(url + "/v1/completions", json={**body, "echo": True}, headers=HEADERS, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "echo"
    finally:
        server.should_exit = True
        thread.join(15)


# ------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": 6}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"logprobs": "x"}, "logprobs"),
        ({"logprobs": 1.5}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": [1]}, "logprobs"),
        ({"echo": "yes"}, "echo"),
        ({"echo": 1}, "echo"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": 2, "token_healing": True}, "token_healing"),
        ({"echo": True, "token_healing": True}, "token_healing"),
        ({"max_tokens": 0}, "max_tokens"),  # 0 only with echo
        ({"echo": True, "max_tokens": -1}, "max_tokens"),
    ],
)
def test_bad_values_are_400_and_the_server_keeps_serving(
    served: Served, extra: dict[str, Any], param: str
) -> None:
    r = post(served, {"prompt": "x = ", "max_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    ok = post(served, {"prompt": "x = ", "max_tokens": 2, "logprobs": 1, "temperature": 0})
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["logprobs"]["tokens"]) <= 2


def test_null_and_false_mean_no_logprobs(served: Served) -> None:
    for extra in ({"logprobs": None}, {"logprobs": False}, {"echo": False}, {"echo": None}):
        r = post(served, {"prompt": PROMPT, "max_tokens": 3, "temperature": 0, **extra})
        assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None


def test_chat_logprobs_stay_a_clear_400(served: Served) -> None:
    cases = [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"echo": True}, "echo"),
    ]
    for extra, param in cases:
        r = httpx.post(
            served.url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra},
            headers=HEADERS,
            timeout=30,
        )
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == param and err["code"] == "unsupported_value"
        if param != "echo":
            assert "/v1/completions" in err["message"]  # where logprobs are
    ok = httpx.post(
        served.url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": False},
        headers=HEADERS,
        timeout=30,
    )
    assert ok.status_code == 200


def test_openapi_documents_logprobs(served: Served) -> None:
    doc = httpx.get(served.url + "/openapi.json", timeout=10).json()
    props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
    assert props["logprobs"]["maximum"] == 5 and props["echo"]["type"] == ["boolean", "null"]
    assert props["max_tokens"]["minimum"] == 0
