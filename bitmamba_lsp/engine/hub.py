"""Hub repositories resolved to local folders, through huggingface_hub (its cache, revisions,
HF_HUB_OFFLINE). This module only resolves files: which files of a repository to fetch is the
loader's choice (each format names what it needs), and loading is the loader's job. For example
``Zhayr1/BitMamba-2-0.25B`` fetches only ``bitmamba_cpp/bitmamba_255m.bin`` and the tokenizer files
(the repository also holds PyTorch checkpoints we do not need); ``rileyseaburg/bitmamba-student``
fetches config.json and the safetensors.

Downloads show huggingface_hub's progress bars (stderr). With ``HF_HUB_OFFLINE=1`` (or no network)
only the local cache is used, and a model that is not cached gives a one-line error saying how
to get it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bitmamba_lsp.engine.errors import HubError


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


def resolve(repo_id: str, revision: str | None, choose: Callable[[list[str]], list[str]]) -> Path:
    """Local folder holding the repository's model files (downloading what is missing). `choose`
    picks the files to fetch from the repository listing (the loader asks its formats)."""
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
        wanted = choose(files)
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
