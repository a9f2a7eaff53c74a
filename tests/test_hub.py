"""Hub models, offline: tiny models in the exact on-Hub layout, placed in a temporary Hugging Face
cache, loaded by repo id with HF_HUB_OFFLINE=1 (and by local folder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from bitmamba_lsp.engine import load
from bitmamba_lsp.engine.errors import HubError
from bitmamba_lsp.engine.formats.bitmamba_bin import BitMamba2Config, random_tensors, write_bin
from bitmamba_lsp.engine.formats.student import StudentConfig, random_student, write_student
from bitmamba_lsp.engine.loader import choose_files

B2 = "Zhayr1/BitMamba-2-0.25B"
STUDENT = "rileyseaburg/bitmamba-student"


def snapshot(cache: Path, repo: str, commit: str, ref: str = "main") -> Path:
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    folder = root / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def small_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(
        ["def f(x):\n    return x + 1\n", "import os\nclass A:\n    pass\n"] * 50, trainer
    )
    return tok


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # BitMamba-2: the .bin where the public repo has it, no tokenizer file (the bundled GPT-2 one applies)
    cfg = BitMamba2Config(50257, 32, 2, 2)
    for commit, seed, ref in (("a" * 40, 0, "main"), ("b" * 40, 1, "v2")):
        folder = snapshot(cache, B2, commit, ref)
        (folder / "bitmamba_cpp").mkdir()
        write_bin(folder / "bitmamba_cpp" / "bitmamba_255m.bin", cfg, random_tensors(cfg, seed))
    # the student: config.json + safetensors + tokenizer.json
    tok = small_tokenizer()
    scfg = StudentConfig(vocab_size=tok.get_vocab_size(), d_model=32, n_layers=2, d_state=16, dt_rank=4)
    folder = snapshot(cache, STUDENT, "c" * 40)
    write_student(folder, scfg, random_student(scfg, seed=2), names="hf")
    tok.save(str(folder / "tokenizer.json"))
    return cache


def test_bitmamba2_by_repo_id_offline(hub) -> None:
    m = load(B2, threads=1)
    assert m.name == B2 and m.arch == "bitmamba2" and m.vocab_size == 50257
    assert m.tokenizer is not None and m.tokenizer.vocab_size == 50257  # bundled GPT-2 vocabulary
    text = m.complete("def main():", max_tokens=4, temperature=0)
    assert isinstance(text, str)


def test_revision_pinning(hub) -> None:
    ids = [15496, 11, 314, 716]
    main = load(B2)
    v2 = load(B2, revision="v2")
    by_commit = load(B2, revision="b" * 40)
    a = main.prefill(main.new_state(), ids)
    b = v2.prefill(v2.new_state(), ids)
    c = by_commit.prefill(by_commit.new_state(), ids)
    assert not np.array_equal(a, b) and np.array_equal(b, c)


def test_student_by_repo_id_and_by_folder(hub) -> None:
    m = load(STUDENT, threads=1)
    assert m.arch == "mamba1-bitlinear" and m.tokenizer is not None
    out = m.complete("def f(x):\n", max_tokens=5, temperature=0)
    assert isinstance(out, str)
    folder = next((hub / f"models--{STUDENT.replace('/', '--')}" / "snapshots").iterdir())
    local = load(folder)
    ids = m.encode("import os\n")
    assert np.array_equal(m.prefill(m.new_state(), ids), local.prefill(local.new_state(), ids))


def test_offline_and_not_cached_is_one_actionable_line(hub) -> None:
    with pytest.raises(HubError) as e:
        load("someone/not-cached")
    msg = str(e.value)
    assert (
        "\n" not in msg and "HF_HUB_OFFLINE" in msg and "huggingface-cli download someone/not-cached" in msg
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "bitmamba_lsp.cli", "generate", "-m", "someone/not-cached", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "not in the Hugging Face cache" in proc.stderr


def test_choose_files_from_a_repository_listing() -> None:
    listing = [
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "pytorch_model.bin",
        "bitmamba_cpp/bitmamba_255m.bin",
        "bitmamba_cpp/README.md",
        "tokenizer.json",
        "training_args.bin",
    ]
    assert choose_files(listing) == ["bitmamba_cpp/bitmamba_255m.bin", "tokenizer.json"]
    student = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"]
    assert choose_files(student) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    with pytest.raises(FileNotFoundError):
        choose_files(["README.md", "pytorch_model.bin"])
