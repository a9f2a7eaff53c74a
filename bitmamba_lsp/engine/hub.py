"""Models from the Hugging Face Hub, through huggingface_hub (its cache, revisions, HF_HUB_OFFLINE).

Supported repositories:
- BitMamba-2 (bitmamba.cpp ``.bin``), e.g. ``Zhayr1/BitMamba-2-0.25B`` with
  ``bitmamba_cpp/bitmamba_255m.bin``: only the ``.bin`` and tokenizer files are fetched (the
  repositories also hold PyTorch checkpoints we do not need);
- safetensors repositories with a ``config.json``, e.g. ``rileyseaburg/bitmamba-student``
  (Mamba-1 blocks with BitLinear projections).

Downloads show huggingface_hub's progress bars (stderr). With ``HF_HUB_OFFLINE=1`` (or no network)
only the local cache is used, and a model that is not cached gives a one-line error saying how
to get it.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bitmamba_lsp.engine.loader import ModelNotFoundError

if TYPE_CHECKING:
    from bitmamba_lsp.engine.model import Model

BIN_PATTERNS = ["bitmamba_cpp/*.bin", "*.bin"]
TOKENIZER_PATTERNS = ["tokenizer.json", "tokenizer_config.json", "tokenizer.bin", "special_tokens_map.json"]
SAFETENSORS_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json"]
# Files that are never a model for us even though they match "*.bin" (PyTorch pickles).
NOT_OUR_BIN = ("pytorch_model", "training_args", "optimizer", "scheduler", "rng_state")


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> str | None:
    """The Hub cache directory, read from the environment at call time (tests change it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return os.environ["HUGGINGFACE_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _is_model_bin(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".bin") and base != "tokenizer.bin" and not base.startswith(NOT_OUR_BIN)


def choose_files(files: list[str]) -> list[str]:
    """The files to fetch from a repository listing (BitMamba-2 .bin preferred)."""
    bins = [f for f in files if _is_model_bin(f)]
    preferred = [f for f in bins if f.startswith("bitmamba_cpp/")] or bins
    tokenizers = [
        f for f in files if any(fnmatch.fnmatch(f.rsplit("/", 1)[-1], p) for p in TOKENIZER_PATTERNS)
    ]
    if preferred:
        return [sorted(preferred)[0], *tokenizers]
    safetensors = [f for f in files if any(fnmatch.fnmatch(f, p) for p in SAFETENSORS_PATTERNS)]
    if "config.json" in files and any(f.endswith(".safetensors") for f in files):
        return [*safetensors, *tokenizers]
    raise FileNotFoundError(
        "no BitMamba model in this repository (neither a bitmamba.cpp .bin nor config.json + safetensors)"
    )


class HubError(ModelNotFoundError):
    """A Hub model could not be resolved; the message is one actionable line."""


def resolve(repo_id: str, revision: str | None = None) -> Path:
    """Local folder holding the repository's model files (downloading what is missing)."""
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise HubError("huggingface_hub is not installed: pip install huggingface-hub") from e

    cache = cache_dir()
    rev = f" (revision {revision})" if revision else ""
    if offline():
        try:
            folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
            raise HubError(
                f"model '{repo_id}'{rev} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                f"run once online, or `huggingface-cli download {repo_id}`, or pass a local path"
            ) from None
        return Path(folder)
    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
        wanted = choose_files(files)
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=wanted)
        return Path(folder)
    except RepositoryNotFoundError:
        raise HubError(
            f"no model '{repo_id}' on the Hugging Face Hub (or it is private: set HF_TOKEN)"
        ) from None
    except GatedRepoError:
        raise HubError(f"'{repo_id}' is gated: accept its terms on huggingface.co and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise HubError(f"'{repo_id}' has no revision '{revision}'") from None
    except FileNotFoundError as e:
        raise HubError(f"'{repo_id}': {e}") from None
    except Exception as e:  # network down, DNS...: fall back to the cache
        try:
            folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True)
            return Path(folder)
        except Exception:
            raise HubError(
                f"cannot reach the Hugging Face Hub for '{repo_id}'{rev} ({type(e).__name__}) and it is not "
                "cached: connect once, or pass a local path"
            ) from None


def load_from_hub(
    repo_id: str,
    *,
    threads: int | None = None,
    kernels: str = "simd",
    revision: str | None = None,
    lm_head: str = "int8",
) -> Model:
    from bitmamba_lsp.engine.loader import load_path

    folder = resolve(repo_id, revision)
    model = load_path(folder, threads=threads, kernels=kernels, name=repo_id, lm_head=lm_head)
    model.extra["hub_revision"] = revision
    return model
