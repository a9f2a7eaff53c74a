"""Fill-in-the-middle: the sentinel tokens a model was trained with, read from its ``model.json``.

A model that declares FIM has in its ``model.json``::

    "fim": {"prefix": "<|fim_prefix|>", "suffix": "<|fim_suffix|>", "middle": "<|fim_middle|>",
            "order": "psm"}

and those three strings as special tokens of its tokenizer. The prompt is then
``<pre> prefix <suf> suffix <mid> middle`` (PSM order) and the model writes the rest of the middle,
ending it with its end-of-text token. Models without the field are read left to right only.

The sentinels are always inserted as ids: text that happens to contain ``<|fim_prefix|>`` is
tokenized as ordinary text (engine/tokenizer.py), so a document cannot forge a sentinel.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitmamba_lsp.engine.errors import ModelFormatError

METADATA = "model.json"


@dataclass(frozen=True)
class FimSpec:
    prefix_id: int
    suffix_id: int
    middle_id: int
    order: str = "psm"

    @property
    def sentinel_ids(self) -> frozenset[int]:
        return frozenset((self.prefix_id, self.suffix_id, self.middle_id))

    def ids(self, prefix: Sequence[int], suffix: Sequence[int], middle: Sequence[int] = ()) -> list[int]:
        """The prompt ids: ``<pre> prefix <suf> suffix <mid> middle``."""
        return [self.prefix_id, *prefix, self.suffix_id, *suffix, self.middle_id, *middle]

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], tokenizer: Any, where: str = METADATA) -> FimSpec | None:
        """The spec a ``model.json`` declares, checked against the tokenizer; None when it declares none."""
        fim = meta.get("fim")
        if fim is None:
            return None
        if not isinstance(fim, dict):
            raise ModelFormatError(f"{where}: 'fim' must be an object")
        order = fim.get("order", "psm")
        if order != "psm":
            raise ModelFormatError(f"{where}: fim order {order!r} is not supported (only 'psm')")
        if tokenizer is None:
            raise ModelFormatError(f"{where}: declares fim but the model has no tokenizer")
        ids = []
        for key in ("prefix", "suffix", "middle"):
            token = fim.get(key)
            if not isinstance(token, str):
                raise ModelFormatError(f"{where}: fim.{key} must be a token string")
            i = tokenizer.tokenizer.token_to_id(token)
            if i is None or i not in tokenizer.special_ids:
                raise ModelFormatError(f"{where}: fim.{key} {token!r} is not a special token of the tokenizer")
            ids.append(i)
        return cls(ids[0], ids[1], ids[2], order)


def read_fim(folder: Path, tokenizer: Any) -> FimSpec | None:
    """The FIM spec of the model whose files are in ``folder`` (its model.json), or None."""
    path = folder / METADATA
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        return None
    return FimSpec.from_metadata(meta, tokenizer, str(path))
