"""Where a model's weights are on this machine, for `serve` and for autotune's pre-warm alike.

A model argument is, in this order: a local folder (taken as it is); the name of a folder in the
models folder (`places.models_dir`, where `models import` writes); or a Hugging Face repo id,
looked up in the local HF cache only: nothing here downloads (pre-warm and `models pull` fetch,
through huggingface_hub, when the lookup says the cache lacks the model). huggingface_hub is
imported on first lookup of a repo id, so `serve` of a local folder never loads it.

The weight-file names are mlx-lm's: its loader (`mlx_lm.utils.load_model`) reads every
`model*.safetensors` of the folder (`model.safetensors`, or shards named
`model-00001-of-00002.safetensors`) and nothing else, and a sharded checkpoint lists its
shards in `model.safetensors.index.json`. The memory budget, pre-warm's integrity check and
the size report all count these files, so they count what is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from macprovider.server.errors import ModelNotFoundError
from macprovider.server.places import models_dir

WEIGHT_GLOB = "model*.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


class ModelNotLocal(Exception):
    """`model` has no folder on this machine; the text is huggingface_hub's reason."""


class NotAModelId(ModelNotLocal):
    """Neither an existing folder nor a well-formed Hugging Face repo id."""


class NotInHfCache(ModelNotLocal):
    """A repo id with no complete snapshot in the local HF cache (a fetch would bring it)."""


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder, sorted by name (shard order)."""
    return sorted(folder.glob(WEIGHT_GLOB))


def locate_model(
    model: str, cache_dir: Path | None = None, models_root: Path | None = None
) -> Path:
    """The folder of `model`: a local directory is itself; a bare name (no `/`) with a folder
    in `models_root` (by default `places.models_dir` of this environment) is that folder; a
    repo id is its snapshot folder in the HF cache (`cache_dir`, by default huggingface_hub's,
    i.e. HF_HUB_CACHE).

    Never touches the network. Raises NotAModelId or NotInHfCache.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if "/" not in model and model not in (".", ".."):
        named = (models_root or models_dir(os.environ)[0]) / model
        if named.is_dir():
            return named
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, cache_dir=cache_dir, local_files_only=True))
    except HFValidationError as e:
        raise NotAModelId(str(e)) from e
    except LocalEntryNotFoundError as e:  # IncompleteSnapshotError included
        raise NotInHfCache(str(e)) from e


def resolve_model_path(model: str) -> Path:
    """`serve`'s model folder: `locate_model`'s, which must hold a config.json. Raises
    ModelNotFoundError (exit 66) saying what to do."""
    try:
        folder = locate_model(model)
    except NotAModelId:
        raise ModelNotFoundError(
            f"model {model!r}: no such folder, no such name in the models folder, and not a "
            "Hugging Face repo id"
        ) from None
    except NotInHfCache:
        raise ModelNotFoundError(
            f"model {model!r} is not a local folder, a name in the models folder or in the "
            f"Hugging Face cache; fetch it first with `macprovider-supervise models pull {model}` "
            "(or let autotune pre-warm it)"
        ) from None
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"model folder {folder} has no config.json")
    return folder.resolve()
