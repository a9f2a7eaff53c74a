"""The Helix, Zed and Emacs configurations in editors/: they parse, name real daemon settings, and the
settings they send make the daemon answer textDocument/completion (the menu those editors show)."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from lsp_client import open_doc, start_server, stop_server
from lsprotocol import types as T

from bitmamba_lsp.lsp.settings import Settings

EDITORS = Path(__file__).resolve().parents[1] / "editors"
FIELDS = {f.name for f in dataclasses.fields(Settings)} - {"extra"}


def snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def helix_config() -> dict[str, Any]:
    cfg = tomllib.loads((EDITORS / "helix" / "languages.toml").read_text())
    server = cfg["language-server"]["bitmamba"]
    assert server["command"] == "bitmamba-lsp"
    for lang in cfg["language"]:
        assert "bitmamba" in lang["language-servers"]
    return server["config"]


def zed_settings() -> dict[str, Any]:
    text = (EDITORS / "zed" / "settings.json").read_text()
    text = re.sub(r"^\s*//.*$", "", text, flags=re.M)  # JSON with comments
    return json.loads(text)


def test_helix_config_names_daemon_settings() -> None:
    config = helix_config()
    assert config["completionFallback"] is True  # Helix has no inline completion
    assert {snake(k) for k in config} <= FIELDS


def test_zed_extension_and_settings() -> None:
    zed = zed_settings()
    server = zed["lsp"]["bitmamba-lsp"]
    assert server["initialization_options"]["completionFallback"] is True
    assert {snake(k) for k in server["initialization_options"]} <= FIELDS
    manifest = tomllib.loads((EDITORS / "zed" / "extension.toml").read_text())
    assert "bitmamba-lsp" in manifest["language_servers"]  # the name settings.json configures
    assert "bitmamba-lsp" in zed["languages"]["Python"]["language_servers"]
    lib = (EDITORS / "zed" / "src" / "lib.rs").read_text()
    assert '"completionFallback"' in lib and "register_extension!" in lib


def test_emacs_snippets_name_daemon_settings() -> None:
    for name in ("bitmamba-eglot.el", "bitmamba-lsp-mode.el"):
        text = (EDITORS / "emacs" / name).read_text()
        assert text.count("(") == text.count(")"), name  # balanced (no parens in strings/comments here)
        for key in re.findall(r":([a-z][A-Za-z]+)\b", text):
            if key != "initializationOptions" and any(c.isupper() for c in key):  # camelCase plist keys
                assert snake(key) in FIELDS, (name, key)
    assert ":completionFallback t" in (EDITORS / "emacs" / "bitmamba-eglot.el").read_text()


@pytest.mark.asyncio
@pytest.mark.parametrize("editor", ["helix", "zed"])
async def test_their_settings_give_a_completion_menu_item(editor: str) -> None:
    options = (
        helix_config()
        if editor == "helix"
        else zed_settings()["lsp"]["bitmamba-lsp"]["initialization_options"]
    )
    # minConfidence 0: the daemon shows what it has (whether it should is tests/test_session.py's)
    lc, result = await start_server(None, client="neovim", options={**options, "debounceMs": 0, "minConfidence": 0})
    try:
        assert result.capabilities.completion_provider is not None
        uri = f"file:///tmp/{editor}.py"
        open_doc(lc, uri, "class Point:\n    def __init__(self\n")
        res = await lc.text_document_completion_async(
            T.CompletionParams(text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(1, 21))
        )
        assert isinstance(res, T.CompletionList) and len(res.items) == 1
        item = res.items[0]
        assert item.insert_text and ")" in item.insert_text
        if options.get("multiline") is False:
            assert "\n" not in item.insert_text
    finally:
        await stop_server(lc)
