"""The Prompt: what the model reads for a request (lsp/prompt.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bitmamba_lsp.engine.healing import TokenHealer
from bitmamba_lsp.engine.tokenizer import bundled_text_tokenizer
from bitmamba_lsp.lsp.documents import TrackedDocument, clean_start_table
from bitmamba_lsp.lsp.prompt import Prompt, Segment, SegmentKind, prompt_at, token_prompt


@pytest.fixture(scope="module")
def tok():
    return bundled_text_tokenizer()


@pytest.fixture(scope="module")
def clean(tok):
    return clean_start_table(tok)


TEXT = "import os\n\n\ndef main(argv):\n    for a in argv:\n        print(a, os.sep)\n    return 0\n"


@pytest.mark.parametrize("offset", [0, 1, 10, 25, 40, 50, 60, len(TEXT) - 3, len(TEXT)])
def test_prompt_at_is_the_text_before_the_cursor(tok, clean, offset) -> None:
    doc = TrackedDocument("u", TEXT, 1, tok, clean)
    p = prompt_at(doc, offset)
    assert p.ids.tolist() == tok.encode(TEXT[:offset])
    assert p.segments[0].kind is SegmentKind.PREFIX
    assert p.ids[: p.shared].tolist() == doc.ids[: p.shared].tolist()  # the document's own tokens
    assert p.shared == doc.shared_before(offset)
    ins = prompt_at(doc, offset, insert="x = 1")
    assert ins.ids.tolist() == tok.encode(TEXT[:offset] + "x = 1") and ins.shared == p.shared


def test_heal_takes_back_the_last_token(tok) -> None:
    healer = TokenHealer(tok, [tok.eos_id])
    ids = tok.encode("def f(x):\n    return x ")
    p = token_prompt(ids, own=3)
    healed_prompt, healed = p.heal(healer)
    assert healed_prompt.ids.tolist() == ids[:-1]
    assert healed.raw == tok.token_bytes(ids[-1]) and healed.text == " "
    assert healed_prompt.shared == 3
    one = token_prompt(ids[:1])
    assert one.heal(healer)[0] is one  # a one-token prompt is never healed


def test_segments_concatenate_and_the_shared_part_stops_at_the_first_new_token() -> None:
    a = Segment(SegmentKind.PREFIX, np.arange(5, dtype=np.int32), 5)
    b = Segment(SegmentKind.PREFIX, np.arange(5, 9, dtype=np.int32), 2)
    c = Segment(SegmentKind.PREFIX, np.arange(9, 12, dtype=np.int32), 3)
    p = Prompt((a, b, c))
    assert p.ids.tolist() == list(range(12)) and len(p) == 12
    assert p.shared == 7  # a whole, then 2 of b; c comes after tokens made for this request
    assert Prompt(()).or_start(7).ids.tolist() == [7]
    assert p.or_start(7) is p


def test_checkpoint_plan_positions() -> None:
    p = token_prompt(np.arange(100), own=90)
    plan = p.plan(10, spacing=16, dense=3, document_limit=90)
    assert plan.document == [16, 32, 48, 64, 80] and plan.cursor == [98, 99, 100]
    assert p.plan(99, spacing=16, dense=3, document_limit=90).positions == [100]
