"""Fill-in-the-middle in the daemon (issue 16 part 1): the prompt order for models that declare FIM
in their model.json, checked against a prompt built from the text alone (lsp_client.reference_fim_ids)
and, through a real LSP client, the daemon's suggestions against a from-scratch greedy decode of
that prompt; keystrokes on a line feed only the typed tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from lsp_client import (
    PLAIN,
    change,
    expected_suggestion,
    inline,
    open_doc,
    reference_fim_ids,
    start_server,
    status,
    stop_server,
)

import bitmamba_lsp
from bitmamba_lsp.engine.errors import ModelFormatError
from bitmamba_lsp.lsp.documents import TrackedDocument, clean_start_table
from bitmamba_lsp.lsp.prompt import FimLayout, SegmentKind, prompt_at

TEXT = (
    "import os\n"
    "\n"
    "\n"
    "def size(path):\n"
    "    total = 0\n"
    "    for name in os.listdir(path):\n"
    "        total += os.path.getsize(os.path.join(path, name))\n"
    "    return total\n"
    "\n"
    "\n"
    "print(size('.'))\n"
)
LINES, TOKENS = 8, 64
ASYNC = pytest.mark.asyncio(loop_scope="function")


@pytest.fixture(scope="module")
def fim_model(fim_model_dir: Path):
    return bitmamba_lsp.load(fim_model_dir, threads=1)


def offsets() -> list[int]:
    """Line starts, mid-line and line ends, the first and the last line, the end of the text."""
    out = [0, len(TEXT), TEXT.index("total = 0"), TEXT.index("0\n"), TEXT.index("os.listdir") + 5]
    out += [TEXT.index("return"), TEXT.index("return") - 4, TEXT.index("print"), TEXT.index("('.')")]
    return sorted(set(out))


def test_the_fim_model_declares_its_sentinels(fim_model, model_factory) -> None:
    spec = fim_model.fim
    assert spec is not None
    tok = fim_model.tokenizer
    assert [tok.tokenizer.id_to_token(i) for i in (spec.prefix_id, spec.suffix_id, spec.middle_id)] == [
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
    ]
    assert spec.sentinel_ids <= tok.special_ids
    # a document cannot forge a sentinel: the text is ordinary tokens
    assert not set(tok.encode("<|fim_prefix|> <|fim_middle|>")) & spec.sentinel_ids
    assert bitmamba_lsp.load(model_factory()[0]).fim is None  # no model.json: left to right


@pytest.mark.parametrize("offset", offsets())
def test_the_prompt_is_built_in_fim_order(fim_model, offset: int) -> None:
    doc = TrackedDocument("file:///t.py", TEXT, 1, fim_model.tokenizer, clean_start_table(fim_model.tokenizer))
    layout = FimLayout(fim_model.fim, suffix_lines=LINES, suffix_tokens=TOKENS)
    p = prompt_at(doc, offset, fim=layout)
    assert p.ids.tolist() == reference_fim_ids(fim_model, TEXT, offset, LINES, TOKENS)
    assert [s.kind for s in p.segments] == [SegmentKind.LEAD, SegmentKind.PREFIX, SegmentKind.SUFFIX, SegmentKind.MIDDLE]
    # the state worth keeping: after the lines above the cursor's line
    line_start = TEXT.rfind("\n", 0, offset) + 1
    assert p.boundaries() == [1 + len(fim_model.tokenizer.encode(TEXT[:line_start]))]
    # what the cache model reads: the text's tokens up to the cursor, no sentinel, no suffix
    assert p.text_ids().tolist() == fim_model.tokenizer.encode(TEXT[:line_start]) + fim_model.tokenizer.encode(
        TEXT[line_start:offset]
    )


@pytest.mark.parametrize("insert", ["x = 1", "x = 1\n    y = 2", "pass\n"])
def test_the_prompt_after_accepting_a_suggestion(fim_model, insert: str) -> None:
    """The speculative prompt (the text with `insert` typed at the cursor) is the prompt of that text."""
    offset = TEXT.index("return")
    doc = TrackedDocument("file:///t.py", TEXT, 1, fim_model.tokenizer, clean_start_table(fim_model.tokenizer))
    layout = FimLayout(fim_model.fim, suffix_lines=LINES, suffix_tokens=TOKENS)
    after = TEXT[:offset] + insert + TEXT[offset:]
    got = prompt_at(doc, offset, insert=insert, fim=layout).ids.tolist()
    assert got == reference_fim_ids(fim_model, after, offset + len(insert), LINES, TOKENS)
    # ... and over replaced characters (a suggestion that replaces the closing punctuation)
    off2 = TEXT.index("'.')") + 3
    got = prompt_at(doc, off2, insert="x')", fim=layout, replaced=1).ids.tolist()
    replaced = TEXT[:off2] + "x')" + TEXT[off2 + 1 :]
    assert got == reference_fim_ids(fim_model, replaced, off2 + 3, LINES, TOKENS)


OPTIONS = {**PLAIN, "fim": True, "maxTokens": 12, "debounceMs": 0, "speculative": False, "threads": 1,
           "fimSuffixLines": LINES, "fimSuffixTokens": TOKENS, "timeBudgetMs": 60000}  # fmt: skip


@ASYNC
async def test_the_daemon_suggests_what_the_fim_prompt_gives(fim_model, fim_model_dir: Path) -> None:
    lc, _ = await start_server(fim_model_dir, options=OPTIONS)
    try:
        st = await status(lc)
        assert st["fim"] == {"suffix_lines": LINES, "suffix_tokens": TOKENS}
        uri = "file:///fim.py"
        open_doc(lc, uri, TEXT)
        for offset in offsets():
            line = TEXT.count("\n", 0, offset)
            col = offset - (TEXT.rfind("\n", 0, offset) + 1)
            item = await inline(lc, uri, line, col)
            want = expected_suggestion(fim_model, TEXT, offset, 12, fim=(LINES, TOKENS))
            assert (item.insert_text if item else None) == want, (offset, item, want)
    finally:
        await stop_server(lc)


@ASYNC
async def test_keystrokes_on_a_line_feed_only_the_typed_tokens(fim_model, fim_model_dir: Path) -> None:
    lc, _ = await start_server(fim_model_dir, options=OPTIONS)
    try:
        uri = "file:///typing.py"
        text = TEXT
        open_doc(lc, uri, text)
        row = text[: text.index("return")].count("\n")
        col = len("    return")
        await inline(lc, uri, row, col)
        typed, fed = "", []
        for k, ch in enumerate(" tot"):
            change(lc, uri, 2 + k, (row, col + k), (row, col + k), ch)
            typed += ch
            await inline(lc, uri, row, col + k + 1)
            fed.append((await status(lc))["last"]["prompt_tokens_fed"])
        assert max(fed) <= 3, fed  # a keystroke: the new typed tokens (healing takes one back)
        # the suggestion is still the reference's for the edited text
        edited = text[: text.index("return") + 6] + typed + text[text.index("return") + 6 :]
        off = edited.index("return") + 6 + len(typed)
        item = await inline(lc, uri, row, col + len(typed))
        assert (item.insert_text if item else None) == expected_suggestion(fim_model, edited, off, 12, fim=(LINES, TOKENS))
        # another line: the suffix window and that line, from the line start's checkpoint or the
        # document track (never the whole prefix)
        await inline(lc, uri, 4, 4)
        moved = (await status(lc))["last"]["prompt_tokens_fed"]
        ids = reference_fim_ids(fim_model, edited, edited.index("total = 0"), LINES, TOKENS)
        assert moved < len(ids) and moved <= TOKENS + 2 + 64, (moved, len(ids))
    finally:
        await stop_server(lc)


@ASYNC
async def test_fim_off_reads_left_to_right(fim_model, fim_model_dir: Path) -> None:
    lc, _ = await start_server(fim_model_dir, options={**OPTIONS, "fim": False})
    try:
        assert (await status(lc))["fim"] is None
        uri = "file:///ltr.py"
        open_doc(lc, uri, TEXT)
        offset = TEXT.index("return") + 4
        line = TEXT.count("\n", 0, offset)
        item = await inline(lc, uri, line, 8)
        assert (item.insert_text if item else None) == expected_suggestion(fim_model, TEXT, offset, 12)
    finally:
        await stop_server(lc)


def test_a_bad_fim_declaration_is_a_clear_error(fim_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(fim_model_dir, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["fim"]["middle"] = "<|no_such_token|>"
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=r"fim\.middle"):
        bitmamba_lsp.load(bad)
    (bad / "model.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"model\.json"):
        bitmamba_lsp.load(bad)
    meta["fim"] = {"prefix": "<|fim_prefix|>", "suffix": "<|fim_suffix|>", "middle": "<|fim_middle|>", "order": "spm"}
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="order"):
        bitmamba_lsp.load(bad)


def test_sentinels_are_never_generated_into_text(fim_model) -> None:
    """A sentinel ends the suggestion (worker stop ids): the decode loop's stop ids hold them."""
    from bitmamba_lsp.engine.decoding import GenerationConfig
    from bitmamba_lsp.lsp.completion import CursorContext
    from bitmamba_lsp.lsp.hooks import line_decoder
    from bitmamba_lsp.lsp.jobs import CompletionJob
    from bitmamba_lsp.lsp.prompt import token_prompt
    from bitmamba_lsp.lsp.settings import Settings

    job = CompletionJob(uri="u", prompt=token_prompt([1]), ctx=CursorContext.at("x", 1))
    dec, _ = line_decoder(fim_model, GenerationConfig(), job, "", [], None, Settings())
    assert fim_model.fim.sentinel_ids <= set(dec.stop_ids)
    assert np.int32(fim_model.eos_id) == dec.eos
