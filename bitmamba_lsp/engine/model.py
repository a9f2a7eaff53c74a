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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bitmamba_lsp import _core
from bitmamba_lsp.engine.decoding import GenerationConfig, TokenStream, generate_text
from bitmamba_lsp.engine.errors import NoTokenizerError
from bitmamba_lsp.engine.fim import FimSpec

if TYPE_CHECKING:
    from bitmamba_lsp.engine.tokenizer import TextTokenizer

State = _core.State


@dataclass
class Model:
    """A loaded model: the C++ core, its tokenizer (if any) and where it came from."""

    core: _core.Model
    config: Any  # the format's config (BitMamba2Config, StudentConfig)
    tokenizer: TextTokenizer | None
    name: str
    path: Path | None = None
    load_seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)
    fim: FimSpec | None = None  # the fill-in-the-middle sentinels, when the model declares them
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
        return self.require_tokenizer().encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.require_tokenizer().decode(list(ids))

    def require_tokenizer(self) -> TextTokenizer:
        """The tokenizer, or NoTokenizerError for models that take token ids only."""
        if self.tokenizer is None:
            raise NoTokenizerError(f"model {self.name} has no tokenizer; pass token ids instead of text")
        return self.tokenizer

    def generate(
        self,
        state: State,
        ids: Sequence[int],
        config: GenerationConfig | None = None,
        **overrides: object,
    ) -> Iterator[int]:
        """Feed ids then yield generated token ids (see decoding.TokenStream)."""
        cfg = (config or GenerationConfig()).replace(**overrides)
        return TokenStream(self, state, list(ids), cfg)

    def complete(self, text: str, config: GenerationConfig | None = None, **overrides: object) -> str:
        """Generate a continuation of text from a fresh state and return it as text."""
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
