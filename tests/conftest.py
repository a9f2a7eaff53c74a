from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/reference.py

from bitmamba_lsp.engine.formats.bitmamba_bin import BitMamba2Config, random_tensors, write_bin

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data is absent ({SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def model_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., tuple[Path, BitMamba2Config, dict]]:
    """Write a random-weight .bin of a given shape once per session; returns (path, config, tensors)."""
    cache: dict[tuple, tuple[Path, BitMamba2Config, dict]] = {}
    folder = tmp_path_factory.mktemp("models")

    def make(vocab: int = 256, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, seed: int = 0):
        key = (vocab, d_model, n_layers, n_heads, seed)
        if key not in cache:
            cfg = BitMamba2Config(vocab, d_model, n_layers, n_heads)
            tensors = random_tensors(cfg, seed)
            path = folder / f"m_{vocab}_{d_model}_{n_layers}_{n_heads}_{seed}.bin"
            write_bin(path, cfg, tensors)
            cache[key] = (path, cfg, tensors)
        return cache[key]

    return make


@pytest.fixture(autouse=True, scope="session")
def _offline() -> None:
    # Tests never touch the network.
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The tokenizer merges cache (engine/tokenizer.py) of this session's processes, daemons included,
    # goes to a folder of the session, never into the user's ~/.cache.
    os.environ["BITMAMBA_LSP_CACHE_DIR"] = str(tmp_path_factory.mktemp("bitmamba-lsp-cache"))


@pytest.fixture(autouse=True, scope="session")
def _no_warm_start() -> None:
    # No daemon started by a test hands its start to a warm server (lsp/warm.py) or spawns one that
    # would outlive the session; tests/test_warm_start.py runs its own, in folders of its own.
    os.environ["BITMAMBA_LSP_WARM"] = "0"


FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


def write_fim_model(folder: Path, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, seed: int = 0) -> Path:
    """A model directory that declares FIM: the shipped model's tokenizer plus the three sentinels
    (ids 4096-4098), random weights of that vocabulary, and a model.json with the "fim" field."""
    import json

    from tokenizers import AddedToken, Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_file(str(REPO / "bitmamba_lsp" / "data" / "default" / "tokenizer.json"))
    if tok.token_to_id(FIM_TOKENS[0]) is None:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in FIM_TOKENS])
    tok.save(str(folder / "tokenizer.json"))
    cfg = BitMamba2Config(tok.get_vocab_size(with_added_tokens=True), d_model, n_layers, n_heads)
    write_bin(folder / "model.bin", cfg, random_tensors(cfg, seed))
    meta = {
        "architecture": "bitmamba2",
        "weights": "model.bin",
        "tokenizer": "tokenizer.json",
        "fim": {"prefix": FIM_TOKENS[0], "suffix": FIM_TOKENS[1], "middle": FIM_TOKENS[2], "order": "psm"},
    }
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="session")
def fim_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model that declares fill-in-the-middle (see write_fim_model)."""
    return write_fim_model(tmp_path_factory.mktemp("fim-model"))
