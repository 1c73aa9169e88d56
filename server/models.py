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
    """`model` has no folder on this machine; the text is huggingface_hub's reason.

    `models_folder` is the models folder that was searched and what chose it (`places.models_dir`'s
    source, or `given`), None when `model` was no bare name and so never looked for there;
    `hf_cache` is the HF cache asked, None when `model` was no repo id."""

    def __init__(
        self, reason: str, models_folder: tuple[Path, str] | None, hf_cache: Path | None
    ) -> None:
        super().__init__(reason)
        self.models_folder = models_folder
        self.hf_cache = hf_cache


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

    Never touches the network. Raises NotAModelId or NotInHfCache, or ConfigError when the
    models folder is to be searched and MACPROVIDER_MODELS_DIR is invalid.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    searched: tuple[Path, str] | None = None
    if "/" not in model and model not in (".", ".."):
        searched = (models_root, "given") if models_root else models_dir(os.environ)
        named = searched[0] / model
        if named.is_dir():
            return named
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, cache_dir=cache_dir, local_files_only=True))
    except HFValidationError as e:
        raise NotAModelId(str(e), searched, None) from e
    except LocalEntryNotFoundError as e:  # IncompleteSnapshotError included
        raise NotInHfCache(str(e), searched, cache_dir or Path(constants.HF_HUB_CACHE)) from e


def resolve_model_path(model: str, *, require_config: bool = True) -> Path:
    """The folder `serve --model model` loads: `locate_model`'s, resolved. Raises
    ModelNotFoundError (exit 66) naming the folders searched and saying what to do.

    `models verify` passes `require_config=False`: a folder without config.json is a damaged
    model to it (exit 65, from the integrity check), not a missing one."""
    try:
        folder = locate_model(model)
    except ModelNotLocal as e:
        raise ModelNotFoundError(_not_found(model, e)) from None
    if require_config and not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"model folder {folder} has no config.json")
    return folder.resolve()


def _not_found(model: str, error: ModelNotLocal) -> str:
    """One line naming every place searched, so an operator whose model sits in another models
    folder (`models import --models-dir`) or HF cache sees which one this process used."""
    searched = ["no such local folder"]
    if error.models_folder is not None:
        folder, source = error.models_folder
        searched.append(f"no such name in the models folder {folder} ({source})")
    if isinstance(error, NotAModelId):
        return f"model {model!r}: {', '.join(searched)}, and not a Hugging Face repo id"
    searched.append(f"no complete snapshot in the Hugging Face cache {error.hf_cache}")
    return (
        f"model {model!r}: {', '.join(searched)}; fetch it with "
        f"`macprovider-supervise models pull {model}` (or let autotune pre-warm it)"
    )
