"""The Python face of the engine: a loaded model with its tokenizer.

    m = bitmamba_lsp.load("model.bin")        # or a folder, a Hub repo id, or None for the default
    s = m.new_state()
    logits = m.prefill(s, ids)                # logits after the last id
    logits = m.step(s, next_id)
    for tok in m.generate(s, ids, max_tokens=32):
        ...

Every call into the C++ core releases the GIL. A model runs one forward pass at a time (calls
from several threads are serialised by the core); states are independent objects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bitmamba_lsp import _core
from bitmamba_lsp.engine.formats.bitmamba_bin import (
    BinModel,
    BitMamba2Config,
    ModelFormatError,
    TernaryTensor,
    read_bin,
    release_ternary_pages,
)
from bitmamba_lsp.engine.formats.student import StudentConfig, core_config, read_student
from bitmamba_lsp.engine.generation import GenerationConfig, generate_tokens

if TYPE_CHECKING:
    from bitmamba_lsp.engine.tokenizer import TextTokenizer

State = _core.State


@dataclass
class Model:
    """A loaded model: the C++ core, its tokenizer (if any) and where it came from."""

    core: _core.Model
    config: BitMamba2Config | StudentConfig
    tokenizer: TextTokenizer | None
    name: str
    path: Path | None = None
    load_seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)
    _keep: object = None  # the mapped file behind the embedding

    # ------------------------------------------------------------------ properties
    @property
    def arch(self) -> str:
        return str(self.core.info["arch"])

    @property
    def vocab_size(self) -> int:
        return int(self.core.vocab_size)

    @property
    def threads(self) -> int:
        return int(self.core.threads)

    @threads.setter
    def threads(self, n: int) -> None:
        self.core.threads = int(n)

    @property
    def kernel_level(self) -> str:
        return str(self.core.kernel_level)

    @property
    def state_bytes(self) -> int:
        return int(self.core.state_bytes)

    @property
    def weight_bytes(self) -> int:
        return int(self.core.weight_bytes)

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_id if self.tokenizer is not None else None

    def describe(self) -> dict[str, object]:
        info = dict(self.core.info)
        info.update(
            name=self.name,
            path=str(self.path) if self.path else None,
            simd=_core.simd_level(),
            kernel_level=self.kernel_level,
            threads=self.threads,
            weight_bytes=self.weight_bytes,
            state_bytes=self.state_bytes,
            tokenizer=None if self.tokenizer is None else f"{self.tokenizer.vocab_size} tokens",
        )
        return info

    # ------------------------------------------------------------------ forward
    def new_state(self) -> State:
        return self.core.new_state()

    def state_from_bytes(self, data: bytes) -> State:
        s = self.core.new_state()
        s.load_bytes(data)
        return s

    def prefill(
        self, state: State, ids: Sequence[int] | np.ndarray, *, all_logits: bool = False
    ) -> np.ndarray:
        """Consume ids (batched). Returns the logits after the last id, or [T, vocab] with all_logits."""
        logits, _ = self.core.prefill(state, _ids(ids), True, all_logits, [])
        return logits

    def prefill_snapshots(
        self, state: State, ids: Sequence[int] | np.ndarray, positions: Sequence[int], *, logits: bool = False
    ) -> tuple[np.ndarray | None, list[State]]:
        """Consume ids, also returning copies of the state after positions[i] ids (1-based, increasing)."""
        return self.core.prefill(state, _ids(ids), logits, False, list(positions))

    def advance(self, state: State, ids: Sequence[int] | np.ndarray) -> None:
        """Consume ids without computing logits (cheapest way to move a state forward)."""
        ids = _ids(ids)
        if len(ids):
            self.core.prefill(state, ids, False, False, [])

    def step(self, state: State, token: int) -> np.ndarray:
        return self.core.step(state, int(token))

    def step_batch(self, states: Sequence[State], tokens: Sequence[int]) -> np.ndarray:
        return self.core.step_batch(list(states), _ids(tokens))

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        return self._tok().encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok().decode(list(ids))

    def _tok(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise RuntimeError(f"model {self.name} has no tokenizer; pass token ids instead of text")
        return self.tokenizer

    def generate(
        self,
        state: State,
        ids: Sequence[int],
        config: GenerationConfig | None = None,
        **overrides: object,
    ) -> Iterator[int]:
        """Feed ids then yield generated token ids (see generation.generate_tokens)."""
        cfg = (config or GenerationConfig()).replace(**overrides)
        return generate_tokens(self, state, list(ids), cfg)

    def complete(self, text: str, config: GenerationConfig | None = None, **overrides: object) -> str:
        """Generate a continuation of text from a fresh state and return it as text."""
        from bitmamba_lsp.engine.generation import generate_text

        cfg = (config or GenerationConfig()).replace(**overrides)
        return "".join(chunk for chunk in generate_text(self, self.new_state(), text, cfg))

    def default_protected_ids(self) -> list[int]:
        """Tokens never penalised for repetition: EOS, newline(s), full stop (bitmamba.cpp's set)."""
        out: set[int] = set()
        if self.tokenizer is None:
            return []
        if self.tokenizer.eos_id is not None:
            out.add(self.tokenizer.eos_id)
        for piece in ("\n", "\n\n", "."):
            ids = self.tokenizer.encode(piece)
            if len(ids) == 1:
                out.add(ids[0])
        return sorted(out)


def _ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError("token ids must be a flat sequence")
    return arr


# ---------------------------------------------------------------------------------------- building


def core_tensors(binmodel: BinModel) -> dict[str, object]:
    """The loader's tensors in the form _core.build_bitmamba2 takes (zero-copy where possible)."""
    out: dict[str, object] = {}
    for name, t in binmodel.tensors.items():
        if isinstance(t, TernaryTensor):
            out[name] = ("codes", t.packed, t.cols, t.scale)
        else:
            out[name] = t
    return out


def build_from_bin(
    binmodel: BinModel,
    *,
    threads: int | None = None,
    kernels: str = "simd",
    tokenizer: TextTokenizer | None = None,
    name: str | None = None,
) -> Model:
    cfg = binmodel.config
    try:
        core = _core.build_bitmamba2(
            core_tensors(binmodel),
            cfg.vocab_size,
            cfg.d_model,
            cfg.n_layers,
            cfg.n_heads,
            threads=_threads(threads),
            level=kernels,
        )
    except _core.FormatError as e:
        raise ModelFormatError(f"{binmodel.path}: {e}") from None
    release_ternary_pages(binmodel)  # repacked: the file's codes need not stay resident
    return Model(
        core=core,
        config=cfg,
        tokenizer=tokenizer,
        name=name or binmodel.path.name,
        path=binmodel.path,
        _keep=binmodel,
    )


def load_bin(
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    kernels: str = "simd",
    tokenizer: TextTokenizer | None = None,
    name: str | None = None,
) -> Model:
    """Load a bitmamba.cpp ``.bin`` file (memory-mapped; ternary weights repacked)."""
    return build_from_bin(read_bin(path), threads=threads, kernels=kernels, tokenizer=tokenizer, name=name)


def load_student(
    folder: str | os.PathLike[str],
    *,
    threads: int | None = None,
    kernels: str = "simd",
    quantize: bool = True,
    lm_head: str = "int8",
    name: str | None = None,
) -> Model:
    """Load a bitmamba-student checkpoint (config.json + safetensors). quantize=False keeps the
    in/out projections in float (reference checks); lm_head="f32" keeps the output layer in float
    instead of int8 per row."""
    folder = Path(folder)
    cfg, tensors, files = read_student(folder)
    core_tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    try:
        core = _core.build_mamba1(
            core_tensors,
            core_config(cfg, quantize=quantize, lm_head=lm_head),
            threads=_threads(threads),
            level=kernels,
        )
    except _core.FormatError as e:
        raise ModelFormatError(f"{folder}: {e}") from None
    return Model(core=core, config=cfg, tokenizer=None, name=name or folder.name, path=folder, _keep=files)


def _threads(threads: int | None) -> int:
    if threads is None:
        env = os.environ.get("BITMAMBA_THREADS")
        threads = int(env) if env else 0
    if threads < 0:
        raise ValueError("threads must be >= 0 (0 = one per core)")
    return threads
