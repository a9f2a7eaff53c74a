"""Context chunks (issue 16): snippets of other open files before the document in the prompt,
chosen by identifier Jaccard similarity, stable while typing, and the daemon's suggestion with them
equal to a from-scratch greedy decode of the prompt built from the texts alone."""

from __future__ import annotations

from pathlib import Path

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
from lsprotocol import types as T

import bitmamba_lsp
from bitmamba_lsp.lsp.context_chunks import WINDOW_LINES, ContextChoice, header, jaccard, pick

A = "".join(f"def load_user(user_id, session):\n    return session.query(User).get(user_id + {i})\n\n" for i in range(40))
B = "".join(f"def save_user(user, session):\n    session.add(user)\n    session.commit()  # {i}\n\n" for i in range(40))
C = "".join(f"fn matrix_{i}(rows: usize, cols: usize) -> Matrix {{ Matrix::zeros(rows, cols) }}\n" for i in range(80))


def test_the_most_similar_window_of_each_file_is_picked() -> None:
    chunks = pick("file:///a.py", A, [("file:///b.py", B), ("file:///c.rs", C), ("file:///a.py", A)], 1)
    assert [c.uri for c in chunks] == ["file:///b.py"]  # c.rs shares no identifier; a.py is itself
    ch = chunks[0]
    assert ch.text.startswith(header("file:///b.py")) and ch.text.count("\n") <= WINDOW_LINES + 1
    assert ch.similarity == pytest.approx(
        max(jaccard(frozenset(__import__("re").findall(r"[A-Za-z_][A-Za-z0-9_]{2,}", A)),
                    frozenset(__import__("re").findall(r"[A-Za-z_][A-Za-z0-9_]{2,}", ch.text[len(header("file:///b.py")):-1]))), 0.0)
    )  # fmt: skip
    assert pick("file:///a.py", A, [("file:///b.py", B)], 0) == ()
    two = pick("file:///a.py", A, [("file:///c.rs", C), ("file:///b.py", B), ("file:///d.py", B.replace("save", "store"))], 2)
    assert [c.uri for c in two] == ["file:///b.py", "file:///d.py"]  # the best two, in file-name order


def test_the_choice_changes_only_when_documents_come_and_go() -> None:
    choice = ContextChoice()
    docs = {"file:///a.py": A}
    assert choice.refresh(docs, 1) == {}  # alone: nothing to choose, nothing changed
    docs["file:///b.py"] = B
    changed = choice.refresh(docs, 1)
    assert set(changed) == {"file:///a.py", "file:///b.py"}
    docs["file:///a.py"] = A + "x = 1\n"  # typing: the same choice, nothing changes
    assert choice.refresh(docs, 1) == {}
    del docs["file:///b.py"]
    assert choice.refresh(docs, 1) == {"file:///a.py": ()}


OPTIONS = {**PLAIN, "fim": True, "maxTokens": 10, "debounceMs": 0, "speculative": False, "threads": 1, "tokenHealing": False,
           "fimSuffixLines": 4, "fimSuffixTokens": 32, "timeBudgetMs": 60000, "contextChunks": 1,
           "cacheOpenFiles": False}  # fmt: skip


@pytest.mark.asyncio(loop_scope="function")
async def test_the_daemon_reads_the_chunks_first(fim_model_dir: Path) -> None:
    model = bitmamba_lsp.load(fim_model_dir, threads=1)
    tok = model.tokenizer
    lc, _ = await start_server(fim_model_dir, options=OPTIONS)
    try:
        a, b = "file:///w/a.py", "file:///w/b.py"
        open_doc(lc, a, A)
        open_doc(lc, b, B)
        line = 0  # near the chunk: a random model's state forgets within a few hundred tokens
        offset = sum(len(x) + 1 for x in A.split("\n")[:line]) + 4
        (chunk,) = pick(a, A, [(b, B)], 1)
        context = [*tok.encode(chunk.text), tok.eos_id]
        item = await inline(lc, a, line, 4)
        want = expected_suggestion(model, A, offset, 10, healing=False, fim=(4, 32), context=context)
        assert (item.insert_text if item else None) == want
        last = (await status(lc))["last"]  # the prompt read: the chunk, then the FIM prompt
        assert last["resumed_from_token"] + last["prompt_tokens_fed"] == len(context) + len(
            reference_fim_ids(model, A, offset, 4, 32)
        )
        # typing keeps the chunks (and their states): the suggestion is still the reference's
        change(lc, a, 2, (line, 4), (line, 4), "re")
        text = A[:offset] + "re" + A[offset:]
        item = await inline(lc, a, line, 6)
        want = expected_suggestion(model, text, offset + 2, 10, healing=False, fim=(4, 32), context=context)
        assert (item.insert_text if item else None) == want
        # closing the other file takes the chunk away: back to the plain FIM prompt
        lc.text_document_did_close(T.DidCloseTextDocumentParams(T.TextDocumentIdentifier(uri=b)))
        item = await inline(lc, a, line, 6)
        assert (item.insert_text if item else None) == expected_suggestion(model, text, offset + 2, 10, healing=False, fim=(4, 32))
        last = (await status(lc))["last"]
        assert last["resumed_from_token"] + last["prompt_tokens_fed"] == len(reference_fim_ids(model, text, offset + 2, 4, 32))
    finally:
        await stop_server(lc)
