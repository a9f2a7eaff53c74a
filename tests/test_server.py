"""The daemon end to end, through a real LSP client (pytest-lsp) talking to `bitmamba lsp` over stdio."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio
from lsp_client import (
    PLAIN,
    change,
    expected_suggestion,
    inline,
    inline_params,
    open_doc,
    raw_request,
    start_server,
    status,
    stop_server,
    wait_for_model,
)
from lsprotocol import types as T
from pygls.exceptions import JsonRpcException

from bitmamba_lsp.engine.formats.bitmamba_bin import load_bin
from bitmamba_lsp.engine.loader import DEFAULT_MODEL_DIR
from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer
from bitmamba_lsp.lsp.documents import TrackedDocument, chars_to_units

pytestmark = pytest.mark.asyncio(loop_scope="module")
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def model_path(model_factory):
    path, _, _ = model_factory(50257, 64, 2, 4, seed=5)  # GPT-2 vocabulary: the bundled tokenizer applies
    return path


@pytest.fixture(scope="module")
def engine(model_path):
    m = load_bin(model_path, threads=1)
    m.tokenizer = bundled_text_tokenizer()
    return m


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(model_path):
    lc, _ = await start_server(model_path, options={**PLAIN, "maxTokens": MAX_TOKENS})
    yield lc
    await stop_server(lc)


def offset_of(text: str, line: int, col_chars: int) -> int:
    lines = text.split("\n")
    return sum(len(x) + 1 for x in lines[:line]) + col_chars


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([], "utf-16"),
        (["utf-8", "utf-16"], "utf-8"),
        (["utf-32", "utf-16"], "utf-32"),
        (["latin-1"], "utf-16"),
    ],
)
async def test_initialize_negotiates_encoding(model_path, offered, expected) -> None:
    lc, result = await start_server(model_path, encodings=offered, wait=False)
    caps = result.capabilities
    assert caps.inline_completion_provider is not None  # advertised only with InlineCompletionOptions
    assert caps.completion_provider is None  # the popup fallback is off by default
    assert caps.position_encoding == expected
    sync = caps.text_document_sync
    assert sync.change == T.TextDocumentSyncKind.Incremental
    st = await wait_for_model(lc)
    assert st["model_state"] == "ready" and st["position_encoding"] == expected
    assert await stop_server(lc) == 0  # shutdown + exit: a clean exit


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8", "utf-32"])
async def test_edits_with_multibyte_text_and_completion_matches_engine(model_path, engine, encoding) -> None:
    lc, _ = await start_server(model_path, encodings=[encoding], options={**PLAIN, "maxTokens": MAX_TOKENS})
    uri = f"file:///mb_{encoding.replace('-', '')}.py"
    text = "s = '中文 😀 ok'\n\ndef greet(name):\n    return\n"
    open_doc(lc, uri, text)
    doc = TrackedDocument(uri, text, 1, None, None)  # mirror of the client's text, for expectations

    def edit(version: int, line: int, col: int, end_col: int, new: str) -> None:
        nonlocal text
        lt = text.split("\n")[line]
        s_units = chars_to_units(lt, col, encoding)
        e_units = chars_to_units(lt, end_col, encoding)
        change(lc, uri, version, (line, s_units), (line, e_units), new)
        a, b = offset_of(text, line, col), offset_of(text, line, end_col)
        text = text[:a] + new + text[b:]
        doc.replace(a, b, new)

    edit(2, 0, 9, 9, "🎉")  # after the emoji (a surrogate pair in utf-16)
    edit(3, 0, 12, 14, "yes")  # replaces "ok", past two 4-byte characters
    edit(4, 3, 10, 10, " f'hi {name}'")
    line = 3
    col = len(text.split("\n")[line])
    offset = offset_of(text, line, col)
    item = await inline(lc, uri, line, chars_to_units(text.split("\n")[line], col, encoding))
    want = expected_suggestion(engine, text, offset, MAX_TOKENS)
    assert (item.insert_text if item else None) == want
    if item is not None:
        assert (
            item.range.start
            == item.range.end
            == T.Position(line, chars_to_units(text.split("\n")[line], col, encoding))
        )
        assert item.command.command == "bitmamba.accept"
    # a position inside the first line, after the multi-byte characters
    col = text.split("\n")[0].index("yes")
    item = await inline(lc, uri, 0, chars_to_units(text.split("\n")[0], col, encoding))
    want = expected_suggestion(engine, text, offset_of(text, 0, col), MAX_TOKENS)
    assert (item.insert_text if item else None) == want
    await stop_server(lc)


async def test_typing_keeps_state_in_sync(client, engine) -> None:
    uri = "file:///typing.py"
    text = "import os\n\n\ndef main(argv):\n    "
    open_doc(client, uri, text)
    typed = "for arg in argv:"
    previous: str | None = None
    cached = (await status(client))["served_from_cache"]
    for i, ch in enumerate(typed):
        line = 4
        col = len(text.split("\n")[line])
        change(client, uri, i + 2, (line, col), (line, col), ch)
        text += ch
        item = await inline(client, uri, line, col + 1)
        got = item.insert_text if item else None
        if previous is not None and len(previous) > 1 and previous[0] == ch:
            # typed the suggestion's next character: the rest of it, without a model call
            assert got == previous[1:], i
            cached += 1
        else:
            assert got == expected_suggestion(engine, text, len(text), MAX_TOKENS), i
        previous = got
    st = await status(client)
    assert st["served_from_cache"] == cached
    assert st["last"]["prompt_tokens_fed"] <= 3  # resumed right before the cursor
    assert st["documents"] >= 1 and st["checkpoints"] > 0 and st["state_memory_bytes"] > 0


async def test_cancel_request_stops_generation(model_factory) -> None:
    # a wider model than the module's, so that the long generation takes a measurable time
    path, _, _ = model_factory(50257, 256, 4, 8, seed=7)  # greedy runs ~4000 tokens from "x = 1\n"
    opts = {**PLAIN, "maxTokens": 4000, "timeBudgetMs": 60000, "maxLines": 1000}
    lc, _ = await start_server(path, options=opts)  # the plain model: no loop rule (a random model loops)
    uri = "file:///cancel.py"
    open_doc(lc, uri, "x = 1\n")
    t0 = time.perf_counter()
    assert await inline(lc, uri, 1, 0) is not None  # uncancelled: a long generation (block mode, 4000 tokens)
    full = time.perf_counter() - t0
    assert full > 0.2
    change(lc, uri, 2, (0, 0), (0, 0), "#")  # an edit before the suggestion: no cached answer
    fut = lc.protocol.send_request("textDocument/inlineCompletion", inline_params(uri, 1, 0), msg_id=4242)
    await asyncio.sleep(0.05)
    lc.protocol.notify("$/cancelRequest", T.CancelParams(id=4242))
    t1 = time.perf_counter()
    try:
        res = await asyncio.wait_for(asyncio.wrap_future(fut), 30)
    except JsonRpcException as e:
        assert e.code == -32800  # RequestCancelled
        res = None
    assert res is None
    assert time.perf_counter() - t1 < full / 2  # the worker stopped, it did not finish the generation
    st = await status(lc)
    assert st["cancelled"] >= 1
    assert await inline(lc, uri, 0, 1) is not None  # and the server still answers
    await stop_server(lc)


async def test_newer_request_supersedes_older(model_path) -> None:
    lc, _ = await start_server(
        model_path, options={**PLAIN, "maxTokens": 2000, "timeBudgetMs": 60000, "debounceMs": 20}
    )
    uri = "file:///latest.py"
    open_doc(lc, uri, "value = 3\n")
    first = asyncio.ensure_future(lc.text_document_inline_completion_async(inline_params(uri, 1, 0)))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(lc.text_document_inline_completion_async(inline_params(uri, 0, 9)))
    r1, r2 = await asyncio.gather(first, second)
    assert r1 is None  # latest wins
    assert r2 is not None and len(r2.items) == 1
    await stop_server(lc)


async def test_configuration_change(client, engine) -> None:
    uri = "file:///config.py"
    text = "def add(a, b):\n    return a"
    open_doc(client, uri, text)
    client.workspace_did_change_configuration(
        T.DidChangeConfigurationParams(settings={"bitmamba": {"maxTokens": 2, "timeBudgetMs": 5000}})
    )
    item = await inline(client, uri, 1, 12)
    assert (item.insert_text if item else None) == expected_suggestion(engine, text, len(text), 2)
    client.workspace_did_change_configuration(
        T.DidChangeConfigurationParams(settings={"maxTokens": MAX_TOKENS, "bogus": 1})
    )
    item = await inline(client, uri, 1, 12)
    assert (item.insert_text if item else None) == expected_suggestion(engine, text, len(text), MAX_TOKENS)


async def test_model_load_failure_keeps_the_server_up(tmp_path) -> None:
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"not a model at all")
    lc, _ = await start_server(bad, wait=False)
    st = await wait_for_model(lc)
    assert st["model_state"] == "failed" and "wrong magic" in st["model_error"]
    for _ in range(100):
        if lc.messages:
            break
        await asyncio.sleep(0.02)
    assert (
        lc.messages
        and lc.messages[0].type == T.MessageType.Error
        and "could not be loaded" in lc.messages[0].message
    )
    uri = "file:///nomodel.py"
    open_doc(lc, uri, "x = 1\n")
    assert await inline(lc, uri, 0, 5) is None  # an empty answer, not an error
    assert await stop_server(lc) == 0


async def test_a_model_without_a_tokenizer_is_refused_and_fixing_the_setting_recovers(model_path, model_factory) -> None:
    """Chosen by didChangeConfiguration, a model that takes token ids only: a message, empty
    answers (never -32603), and back to completions when the setting is fixed."""
    no_tok, _, _ = model_factory(512, 64, 2, 4, seed=11)  # not GPT-2's vocabulary: no tokenizer found
    lc, _ = await start_server(None, options={**PLAIN, "maxTokens": 4, "model": str(model_path)})  # no --model override
    try:
        uri = "file:///tok.py"
        open_doc(lc, uri, "def add(a, b):\n    return a")
        assert await inline(lc, uri, 1, 12) is not None
        lc.messages.clear()
        lc.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"model": str(no_tok)}))
        for _ in range(200):
            st = await status(lc)
            if st["model_state"] == "failed":
                break
            await asyncio.sleep(0.02)
        assert st["model_state"] == "failed" and "no tokenizer" in st["model_error"]
        assert any(m.type == T.MessageType.Error and "no tokenizer" in m.message for m in lc.messages)
        assert await inline(lc, uri, 1, 12) is None  # an empty answer, not an error
        lc.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"model": str(model_path)}))
        st = await wait_for_model(lc)
        for _ in range(200):
            st = await status(lc)
            if st["model_state"] == "ready":
                break
            await asyncio.sleep(0.02)
        assert st["model_state"] == "ready"
        assert await inline(lc, uri, 1, 12) is not None  # the document was tracked again
    finally:
        await stop_server(lc)


async def test_malformed_input_gets_errors_and_the_server_goes_on(client, engine) -> None:
    uri = "file:///bad.py"
    text = "a = 1\nb = 2\n"
    open_doc(client, uri, text)
    with pytest.raises(
        JsonRpcException
    ) as e:  # a negative position (raw JSON: the client library refuses it)
        await raw_request(
            client,
            "textDocument/inlineCompletion",
            {
                "textDocument": {"uri": uri},
                "position": {"line": -1, "character": 0},
                "context": {"triggerKind": 2},
            },
        )
    assert e.value.code == -32602
    with pytest.raises(JsonRpcException) as e:
        await client.text_document_inline_completion_async(inline_params("file:///never-opened.py", 0, 0))
    assert e.value.code == -32602
    # invalid params: a request the client library would refuse to build
    with pytest.raises(JsonRpcException) as e:
        await raw_request(client, "textDocument/inlineCompletion", {"textDocument": 5})
    assert e.value.code == -32602
    # positions past the end of a line or of the document are clamped
    item = await inline(client, uri, 0, 999)
    assert (item.insert_text if item else None) == expected_suggestion(engine, text, 5, MAX_TOKENS)
    item = await inline(client, uri, 99, 0)
    assert (item.insert_text if item else None) == expected_suggestion(engine, text, len(text), MAX_TOKENS)
    # edits for unknown documents are ignored
    change(client, "file:///never-opened.py", 2, (0, 0), (0, 0), "x")
    # a 5 MB document
    big = "value = compute(value) + 1  # a line of code\n" * 120_000
    assert len(big) > 5_000_000
    open_doc(client, "file:///big.py", big)
    change(client, "file:///big.py", 2, (120_000, 0), (120_000, 0), "result = ")
    t0 = time.perf_counter()
    item = await inline(client, "file:///big.py", 120_000, 9)
    assert time.perf_counter() - t0 < 60
    st = await status(client)
    assert st["model_state"] == "ready"
    # and the server still answers normally
    item = await inline(client, uri, 1, 5)
    assert (item.insert_text if item else None) == expected_suggestion(engine, text, 11, MAX_TOKENS)


async def test_status_and_accept_commands(client) -> None:
    uri = "file:///accept.py"
    open_doc(client, uri, "import sys\n")
    item = await inline(client, uri, 1, 0)
    assert item is not None
    before = await client.workspace_execute_command_async(T.ExecuteCommandParams(command="bitmamba.status"))
    await client.workspace_execute_command_async(
        T.ExecuteCommandParams(command=item.command.command, arguments=list(item.command.arguments))
    )
    after = await status(client)
    assert after["accepted"] == before["accepted"] + 1 and after["shown"] >= 1
    assert after["accept_rate"] == round(after["accepted"] / after["shown"], 4)
    assert set(after["first_token_ms"]) == {"p50", "p90", "p99"}
    for key in ("model", "simd", "threads", "documents", "state_memory_bytes", "last"):
        assert key in after
    # didClose frees the document and its states
    client.text_document_did_close(T.DidCloseTextDocumentParams(T.TextDocumentIdentifier(uri=uri)))
    await asyncio.sleep(0.2)
    closed = await status(client)
    assert closed["documents"] == after["documents"] - 1
    assert closed["documents_with_states"] == after["documents_with_states"] - 1


async def test_typed_ahead_and_speculative_next(model_path, engine) -> None:
    lc, _ = await start_server(model_path, options={**PLAIN, "maxTokens": MAX_TOKENS, "speculative": True})
    uri = "file:///ahead.py"
    text = "def square(x):\n    return"
    open_doc(lc, uri, text)
    item = await inline(lc, uri, 1, 10)
    assert item is not None and len(item.insert_text) > 1
    s = item.insert_text
    # typing the first character of the suggestion: the rest is served without a model call
    change(lc, uri, 2, (1, 10), (1, 10), s[0])
    item2 = await inline(lc, uri, 1, 11)
    assert item2 is not None and item2.insert_text == s[1:]
    st = await status(lc)
    assert st["served_from_cache"] == 1
    # accepting the rest: the precomputed next suggestion is served, and equals a fresh computation
    change(lc, uri, 3, (1, 11), (1, 11), s[1:])
    text = text + s
    await asyncio.sleep(0.5)  # the speculative job runs in the background
    lines = text.split("\n")
    item3 = await inline(lc, uri, len(lines) - 1, len(lines[-1]))
    want = expected_suggestion(engine, text, len(text), MAX_TOKENS)
    assert (item3.insert_text if item3 else None) == want
    st = await status(lc)
    if want is not None:
        assert st["served_from_cache"] == 2
    await stop_server(lc)


async def test_completion_fallback_for_popup_clients(model_path, engine) -> None:
    lc, result = await start_server(
        model_path, client="emacs", options={**PLAIN, "completionFallback": True, "maxTokens": 4}
    )
    assert result.capabilities.completion_provider is not None
    uri = "file:///popup.py"
    text = "numbers = [1, 2, 3]\nprint("
    open_doc(lc, uri, text)
    res = await lc.text_document_completion_async(
        T.CompletionParams(text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(1, 6))
    )
    want = expected_suggestion(engine, text, len(text), 4)
    items = res.items if res is not None else []
    assert res.is_incomplete
    if want is None:
        assert items == []
    else:
        assert len(items) == 1 and items[0].insert_text == want and "bitmamba" in items[0].detail
    await stop_server(lc)


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model.bin").is_file(), reason="no shipped default model")
async def test_default_model_plausible_completions() -> None:
    """The daemon with no --model (the embedded default), typing real code: it suggests what a
    programmer would, and exactly what the engine computes independently (with token healing)."""
    from bitmamba_lsp.engine import load

    engine = load(None, threads=1)
    lc, _ = await start_server(None, options={**PLAIN, "maxTokens": 24})
    try:
        st = await status(lc)
        assert "bitmamba-default" in str(st["model"])
        cases = [
            ("import os\nimport numpy as ", lambda s: s.strip() == "np"),
            ("class Point:\n    def __init__(self", lambda s: "):" in s),
            ("def main():\n    pass\n\n\nif __name__ == ", lambda s: "__main__" in s),
            ("def add(a, b):\n    return a ", lambda s: s.startswith("+ b")),
        ]
        for n, (text, plausible) in enumerate(cases):
            uri = f"file:///plausible{n}.py"
            open_doc(lc, uri, text)
            lines = text.split("\n")
            item = await inline(lc, uri, len(lines) - 1, len(lines[-1]))
            assert item is not None, text
            assert item.insert_text == expected_suggestion(engine, text, len(text), 24), text
            assert plausible(item.insert_text), (text, item.insert_text)
    finally:
        await stop_server(lc)
