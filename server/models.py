"""Where a model id's weights are on this machine. `serve` never downloads (pre-warm does)."""

from __future__ import annotations

import re
from pathlib import Path

from macprovider.server.errors import ModelNotFoundError

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model_path(model: str) -> Path:
    """A local checkpoint folder, or the snapshot of an HF repo id already in the HF cache."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {path} has no config.json")
        return path.resolve()
    if not _REPO_ID.fullmatch(model):
        raise ModelNotFoundError(f"model {model!r}: no such folder, and not a Hugging Face repo id")
    return _cached_snapshot(model)


def _cached_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError):
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local folder and is not in the Hugging Face cache; "
            f"fetch it first with `macprovider-supervise models pull {repo_id}`"
        ) from None
