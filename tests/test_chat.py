"""bitmamba chat with a persisted state (bitmamba.c's --chat --state): a conversation resumed from
its state file continues exactly as one that never stopped, each turn reads only its own tokens,
and a state file of another model or a damaged one gets a one-line error."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bitmamba_lsp.chat_cli import MAGIC, TurnFormat

CHAT = [sys.executable, "-m", "bitmamba_lsp.cli", "chat", "--greedy", "-n", "8", "--threads", "1", "--verbose"]


def chat(stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CHAT, *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_a_resumed_conversation_is_the_same_conversation(tmp_path: Path) -> None:
    one, split = tmp_path / "one.state", tmp_path / "split.state"
    whole = chat("def add(a, b):\nand subtract?\nthanks\n", "--state", str(one))
    assert whole.returncode == 0, whole.stderr
    first = chat("def add(a, b):\nand subtract?\n", "--state", str(split))
    second = chat("thanks\n", "--state", str(split))
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    assert "[resumed" in second.stderr and "2 turns" in second.stderr
    assert first.stdout + second.stdout == whole.stdout  # the same replies
    assert split.read_bytes() == one.read_bytes()  # and the same state, bit for bit
    # the resumed turn read only its own tokens (the prompt of the turn, the reply, its end)
    read = [int(n) for n in re.findall(r"read (\d+) tokens", second.stderr)]
    total = [int(n) for n in re.findall(r"(\d+) in all", whole.stderr)]
    assert read[0] == total[2] - total[1] and read[0] < total[1]


def test_bitmamba_c_template(tmp_path: Path) -> None:
    fmt = TurnFormat("Question: %s\nDetailed answer:")
    assert fmt.user("why?", first=True) == "Question: why?\nDetailed answer:"
    assert fmt.user("why?", first=False).startswith("\nQuestion: why?") and fmt.stops == ("\nQuestion:",)
    r = chat("why is the sky blue\n", "--template", "Question: %s\nDetailed answer:")
    assert r.returncode == 0 and "\nQuestion:" not in r.stdout.rstrip("\n"), r


def test_state_files_of_other_models_or_damaged_ones_are_refused(tmp_path: Path, model_factory) -> None:
    path = tmp_path / "s.state"
    assert chat("hello\n", "--state", str(path)).returncode == 0
    other, _, _ = model_factory(4096, 64, 2, 4)  # another shape
    r = subprocess.run([*CHAT, "--model", str(other), "--state", str(path)], input="hi\n", capture_output=True, text=True)
    assert r.returncode != 0
    # the model has no tokenizer: refused before the state is read, in one line
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    bad = tmp_path / "bad.state"
    bad.write_bytes(b"not a state")
    r = chat("hi\n", "--state", str(bad))
    assert r.returncode == 1 and "not a bitmamba chat state file" in r.stderr
    cut = tmp_path / "cut.state"
    cut.write_bytes(path.read_bytes()[:-100])
    r = chat("hi\n", "--state", str(cut))
    assert r.returncode == 1 and "truncated" in r.stderr
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    wrong = tmp_path / "wrong.state"
    n_layers = re.search(rb'"n_layers": (\d+)', data)
    assert n_layers, "the state header names the model's shape"
    other = str(int(n_layers.group(1)) + 1).encode()
    wrong.write_bytes(data.replace(n_layers.group(0), b'"n_layers": ' + other))
    r = chat("hi\n", "--state", str(wrong))
    assert r.returncode == 1 and "saved by another model" in r.stderr


@pytest.mark.parametrize("stdin", ["", "\n\n"])
def test_no_input_is_no_turn(stdin: str) -> None:
    r = chat(stdin)
    assert r.returncode == 0 and r.stdout == ""
