"""Cold start (issue 17 item 6): the GPT-2 merges derived once into the user cache (reused, a damaged
cache rebuilt, the same tokens as without it, safe under concurrent first uses), `bitmamba generate`
importing only what it needs, and the daemon's first completion with a bare `.bin`.

Every test points XDG_CACHE_HOME at a temporary folder: the real user cache is never written."""

from __future__ import annotations

import hashlib
import json
import logging
import marshal
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from raw_client import Raw

from bitmamba_lsp.engine import tokenizer as T

TEXTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "It’s a — test: naïve café, 日本語のテキスト, emoji 🎉👍🏽 and \t tabs  \n\n  spaces",
    "x = {'a': [1, 2.5e-3, None]}  # <|endoftext|> inside text\r\n\r\n",
    "   leading spaces, trailing spaces   ",
]
BUNDLED = T.bundled_gpt2_path()


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.delenv("BITMAMBA_LSP_CACHE_DIR", raising=False)  # conftest's, for the other tests
    return home


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records each call of the merge derivation (the second-long step the cache is there to skip)."""
    calls: list[object] = []
    real = T._derive_merges

    def spy(tokens, source):
        calls.append(source)
        return real(tokens, source)

    monkeypatch.setattr(T, "_derive_merges", spy)
    return calls


def cache_file() -> Path:
    return T.gpt2_cache_path(BUNDLED.read_bytes())


@pytest.fixture(scope="module")
def reference() -> T.TextTokenizer:
    """The bundled GPT-2 tokenizer with its merges derived here, no cache involved."""
    return T.TextTokenizer(T.gpt2_tokenizer_from_tokens(T.read_bin_vocab(BUNDLED), BUNDLED))


def same_tokens(tok: T.TextTokenizer, ref: T.TextTokenizer) -> None:
    for text in TEXTS:
        assert tok.encode(text) == ref.encode(text)
        assert tok.encode_with_offsets(text) == ref.encode_with_offsets(text)
        assert tok.decode(ref.encode(text)) == text
    assert tok._table == ref._table
    # the byte order token healing searches (kept in the cache's head): ids by (bytes, id)
    assert tok.ids_by_bytes().tolist() == [i for _, i in sorted((b, i) for i, b in enumerate(ref._table) if b)]
    assert (tok.vocab_size, tok.eos_id, tok.special_ids) == (ref.vocab_size, ref.eos_id, ref.special_ids)


def test_cache_is_built_once_in_the_user_cache_and_reused(cache_home: Path, derivations: list) -> None:
    path = cache_file()
    assert path.parent == cache_home / "bitmamba-lsp" / "tokenizers" and path.name.startswith("gpt2-")
    assert not path.exists()
    T.TextTokenizer.from_path(BUNDLED)
    assert len(derivations) == 1 and path.is_file()
    stamp = path.stat().st_mtime_ns
    for _ in range(2):  # later loads (a new process in real use) read it: no derivation, no rewrite
        T.TextTokenizer.from_path(BUNDLED)
        T.load_tokenizer(BUNDLED)
        T.gpt2_tokenizer_from_bin(BUNDLED)
    assert len(derivations) == 1 and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_tokens_identical_with_and_without_the_cache(cache_home: Path, derivations: list, reference) -> None:
    built = T.TextTokenizer.from_path(BUNDLED)  # derives and writes the cache
    cached = T.TextTokenizer.from_path(BUNDLED)  # reads it
    assert len(derivations) == 1
    # the BPE is built on first use; the strings every load encodes are known before
    assert cached._tok is None
    assert {s: cached.encode(s) for s in T._PRECOMPUTED} == {s: reference.encode(s) for s in T._PRECOMPUTED}
    assert cached._tok is None and cached.eos_id == reference.eos_id and cached.decode([15496, 995]) == "Hello world"
    same_tokens(built, reference)
    same_tokens(cached, reference)
    hf = T.load_tokenizer(BUNDLED)  # the plain tokenizers.Tokenizer, from the cache
    plain = T.gpt2_tokenizer_from_tokens(T.read_bin_vocab(BUNDLED), BUNDLED)  # derived here
    for text in TEXTS:
        assert hf.encode(text).ids == plain.encode(text).ids
    assert hf.to_str() == plain.to_str()


def test_a_tokenizer_bin_beside_a_model_is_cached_by_its_bytes(cache_home: Path, derivations: list, tmp_path: Path) -> None:
    copy = tmp_path / "model" / "tokenizer.bin"  # bitmamba.cpp's layout: tokenizer.bin beside model.bin
    copy.parent.mkdir()
    copy.write_bytes(BUNDLED.read_bytes())
    T.TextTokenizer.from_path(copy.parent)
    T.TextTokenizer.from_path(BUNDLED)  # the same bytes: the same cache entry
    assert len(derivations) == 1


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "empty", "bit flip", "wrong magic", "foreign payload"],
)
def test_a_damaged_cache_is_rebuilt_with_one_warning(
    cache_home: Path, derivations: list, reference, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    T.TextTokenizer.from_path(BUNDLED)
    path = cache_file()
    blob = path.read_bytes()
    n = len(T._CACHE_MAGIC)
    head = marshal.dumps(([b"a", b"<|endoftext|>"], {}))  # too few ids for a GPT-2 vocabulary
    foreign = struct.pack("<Q", len(head)) + head + marshal.dumps(({}, []))
    damaged = {
        "truncated": blob[: len(blob) // 2],
        "garbage": b"\x00\xffnot a cache" * 100,
        "empty": b"",
        "bit flip": blob[: len(blob) // 2] + bytes([blob[len(blob) // 2] ^ 0x10]) + blob[len(blob) // 2 + 1 :],
        "wrong magic": b"X" + blob[1:],
        # a well-formed file whose payload is not what the cache holds (checksum right, contents wrong)
        "foreign payload": T._CACHE_MAGIC + hashlib.sha256(foreign).digest() + foreign,
    }[damage]
    path.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="bitmamba_lsp"):
        tok = T.TextTokenizer.from_path(BUNDLED)
    same_tokens(tok, reference)
    assert len(derivations) == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage() and "rebuilding" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    T._unpack_cache(path.read_bytes())  # rewritten whole
    assert path.read_bytes()[:n] == T._CACHE_MAGIC
    T.TextTokenizer.from_path(BUNDLED)
    assert len(derivations) == 2


def test_a_bad_bpe_part_behind_a_good_checksum_is_rebuilt_on_first_use(
    cache_home: Path, derivations: list, reference, caplog: pytest.LogCaptureFixture
) -> None:
    T.TextTokenizer.from_path(BUNDLED)
    path = cache_file()
    table, encoded, order, pairs, _ = T._unpack_cache(path.read_bytes())
    head = marshal.dumps((table, encoded, order.tobytes(), pairs.tobytes()))
    body = struct.pack("<Q", len(head)) + head + marshal.dumps(({"a": 0}, []))
    path.write_bytes(T._CACHE_MAGIC + hashlib.sha256(body).digest() + body)
    tok = T.TextTokenizer.from_path(BUNDLED)  # the head is fine: nothing is noticed yet
    assert len(derivations) == 1
    with caplog.at_level(logging.WARNING, logger="bitmamba_lsp"):
        same_tokens(tok, reference)  # the first encode builds the BPE: the tail is bad, rebuilt
    assert len(derivations) == 2
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [logging.WARNING]
    *_, tail = T._unpack_cache(path.read_bytes())
    T._unpack_tail(tail, len(table))  # rewritten whole


def test_an_unwritable_cache_only_warns(tmp_path: Path, monkeypatch, derivations: list, reference, caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # mkdir under a regular file fails
    monkeypatch.delenv("BITMAMBA_LSP_CACHE_DIR", raising=False)
    with caplog.at_level(logging.WARNING, logger="bitmamba_lsp"):
        tok = T.TextTokenizer.from_path(BUNDLED)
    same_tokens(tok, reference)
    assert any("cannot write the tokenizer cache" in r.getMessage() for r in caplog.records)


def test_where_the_cache_goes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BITMAMBA_LSP_CACHE_DIR", raising=False)
    for value in ("", "relative/cache"):  # ignored, as the XDG spec says
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert T.user_cache_dir() == Path.home() / ".cache" / "bitmamba-lsp"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert T.user_cache_dir() == tmp_path / "xdg" / "bitmamba-lsp"
    monkeypatch.setenv("BITMAMBA_LSP_CACHE_DIR", str(tmp_path / "own"))
    assert T.user_cache_dir() == tmp_path / "own"


def test_concurrent_first_uses_leave_one_whole_cache(cache_home: Path, reference) -> None:
    code = (
        "from bitmamba_lsp.engine.tokenizer import TextTokenizer, bundled_gpt2_path\n"
        "print(TextTokenizer.from_path(bundled_gpt2_path()).encode('hello world'))\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()
        assert json.loads(out) == reference.encode("hello world")
        assert b"damaged" not in err
    files = list(cache_file().parent.iterdir())
    assert files == [cache_file()]  # one file, no temporary leftovers
    T._unpack_cache(cache_file().read_bytes())


HEAVY = ("pygls", "lsprotocol", "starlette", "uvicorn", "torch", "transformers", "huggingface_hub", "safetensors")


def test_generate_imports_only_what_it_needs(model_factory, cache_home: Path) -> None:
    path, _, _ = model_factory(50257, 64, 2, 4, seed=1)  # a bare .bin: the bundled GPT-2 tokenizer
    code = (
        "import json, sys\n"
        "from bitmamba_lsp.cli import main\n"
        f"rc = main(['generate', '--model', {str(path)!r}, '--ids', '1 2 3', '-n', '2', '--quiet'])\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.split()) == 2  # the two generated ids
    modules = json.loads(p.stderr.strip().splitlines()[-1])
    heavy = [m for m in modules if m.split(".")[0] in HEAVY]
    ours = [m for m in modules if m.startswith(("bitmamba_lsp.lsp", "bitmamba_lsp.http", "bitmamba_lsp.train"))]
    assert heavy == [] and ours == []
    assert "tokenizers" in modules and cache_file().is_file()  # the bundled tokenizer, now cached


def test_generate_with_ids_never_builds_the_bpe(model_factory, cache_home: Path) -> None:
    """With the cache warm, `generate --ids` takes its ids, end of text and protected tokens from the
    cache's head: the BPE (the cost of a tokenizer load) is never built."""
    path, _, _ = model_factory(50257, 64, 2, 4, seed=1)
    code = (
        "import sys\n"
        "from bitmamba_lsp.engine import tokenizer as T\n"
        "T.TextTokenizer.from_path(T.bundled_gpt2_path()).encode('warm the cache')\n"
        "builds = []\n"
        "real = T._tokenizer_from_parts\n"
        "T._tokenizer_from_parts = lambda *a: builds.append(1) or real(*a)\n"
        "from bitmamba_lsp.cli import main\n"
        f"rc = main(['generate', '--model', {str(path)!r}, '--ids', '1 2 3', '-n', '3', '--quiet'])\n"
        "print('builds', len(builds), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "builds 0" in p.stderr and len(p.stdout.split()) == 3


def test_help_still_lists_every_command(cache_home: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "bitmamba_lsp.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0
    for name in ("generate", "lsp", "serve", "train", "warmup"):
        assert name in p.stdout


def test_warmup_builds_the_cache(cache_home: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    p = subprocess.run(
        [sys.executable, "-m", "bitmamba_lsp.cli", "warmup"], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    assert str(cache_file()) in p.stdout and cache_file().is_file()


def test_daemon_first_completion_with_a_bare_bin(model_factory, cache_home: Path) -> None:
    """`bitmamba-lsp --model X.bin` (loaded from the process's start, preload.py) answers the first
    completion, with the bundled tokenizer from the cache it built in the user cache."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_cold_start import time_daemon

    path, _, _ = model_factory(50257, 64, 2, 4, seed=2)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    t_init, t_first, text = time_daemon(path, 1, env)
    assert 0 < t_init <= t_first and isinstance(text, str)
    assert cache_file().is_file()


def test_the_daemon_imports_no_lsp_library(model_factory, cache_home: Path) -> None:
    """The daemon speaks JSON-RPC itself (lsp/jsonrpc.py): from its start to its exit, through a
    whole session with a completion, neither pygls nor lsprotocol (0.35-0.47 s to import) is
    imported, nor any other heavy package."""
    path, _, _ = model_factory(50257, 64, 2, 4, seed=2)
    code = (
        "import json, os, sys\n"
        "real = os._exit\n"
        "def leave(code):\n"
        "    print(json.dumps(sorted(sys.modules)), file=sys.stderr, flush=True)\n"
        "    real(code)\n"
        "os._exit = leave\n"
        "from bitmamba_lsp.cli import main\n"
        f"main(['lsp', '--model', {str(path)!r}, '--threads', '1'])\n"
    )

    d = Raw(None, {"maxTokens": 2, "minConfidence": 0}, command=[sys.executable, "-c", code],
            env={**os.environ, "XDG_CACHE_HOME": str(cache_home)})  # fmt: skip
    try:
        d.initialize()
        uri = "file:///tmp/imports.py"
        text = "def f(x):\n    return"
        d.send({"jsonrpc": "2.0", "method": "textDocument/didOpen",
                "params": {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}})  # fmt: skip
        d.request(2, "textDocument/inlineCompletion",
                  {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 10}, "context": {"triggerKind": 2}})  # fmt: skip
        assert "result" in d.reply(2)
        assert d.shutdown_and_exit() == 0
        time.sleep(0.1)  # the stderr reader thread
    finally:
        d.close()
    err = b"".join(d.stderr).decode()
    modules = json.loads(err.strip().splitlines()[-1])
    assert [m for m in modules if m.split(".")[0] in HEAVY] == []


def test_the_preload_derives_what_the_first_request_needs(model_factory, cache_home: Path, monkeypatch) -> None:
    """`bitmamba-lsp --model X` loads X from the start with the core's ASCII BPE, the healer and the
    clean-start table derived during the load (preload.py): the first request builds none of them.
    The library's BPE is left for later (ModelSlot builds it on a thread once the model is ready)."""
    from bitmamba_lsp.engine import healing
    from bitmamba_lsp.lsp import documents, preload

    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    T.bundled_text_tokenizer.cache_clear()  # a tokenizer object of this test's own
    path, _, _ = model_factory(50257, 64, 2, 4, seed=4)
    preload.start(str(path), 1)
    model = preload.take(str(path), None)
    tok = model.tokenizer
    assert tok._ascii_bpe is not None and not tok.library_ready
    assert tok in healing._HEALERS and (model.eos_id,) in healing._HEALERS[tok]
    assert tok in documents._CLEAN
    assert preload.take(str(path), None) is None  # taken once


def test_the_library_bpe_is_built_in_the_background_after_the_model_is_ready(model_factory, cache_home, monkeypatch) -> None:
    """A daemon's load leaves the `tokenizers` library's BPE unbuilt (the core's ASCII BPE serves
    ASCII text); ModelSlot builds it on a thread once the model is ready, so that the first text
    outside ASCII does not wait for it, and the daemon keeps answering meanwhile."""
    import asyncio

    from bitmamba_lsp.lsp import model_slot
    from bitmamba_lsp.lsp.session import Session

    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.setattr(model_slot, "LIBRARY_BPE_DELAY_S", 0.05)
    T.bundled_text_tokenizer.cache_clear()
    path, _, _ = model_factory(50257, 64, 2, 4, seed=5)

    async def go() -> None:
        s = Session(lambda *a: None)
        s.configure({"model": str(path), "threads": 1, "debounceMs": 0, "minConfidence": 0})
        model = await s.start_model_load()
        tok = model.tokenizer
        assert not tok.library_ready  # loaded with the ASCII BPE only
        s.open("file:///a.py", "def f(x):\n    return", 1)
        await s.complete("file:///a.py", (1, 10), "utf-16")  # answered before the library BPE exists
        for _ in range(200):
            if tok.library_ready:
                break
            await asyncio.sleep(0.02)
        assert tok.library_ready
        s.open("file:///b.py", "s = 'naïve café'\n", 1)  # not ASCII: the library's BPE, already built
        assert s.docs["file:///b.py"].ids.tolist() == tok.tokenizer.encode("s = 'naïve café'\n").ids
        s.shutdown(wait=True)

    asyncio.run(go())
