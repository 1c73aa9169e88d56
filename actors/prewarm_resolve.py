"""Pre-warm's first step: find a model's folder on this machine, and fetch it from the Hub only
when the local Hugging Face cache lacks it (the only network access of pre-warm)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download
from safetensors import SafetensorError

from macprovider.actors.prewarm_errors import ModelNotCached, PrewarmError
from macprovider.server.model_facts import parameter_count
from macprovider.server.models import NotAModelId, NotInHfCache, locate_model, weight_files

Fetch = Callable[[str, Path | None], object]


def resolve_local(model_id: str, cache_dir: Path | None = None) -> Path:
    """`locate_model`'s folder of `model_id` (a local directory, or its snapshot in the HF cache
    `cache_dir`), in pre-warm's errors.

    Never touches the network. Raises ModelNotCached when the repo has no complete snapshot in
    the cache (the caller fetches it then), PrewarmError when `model_id` is neither.
    """
    try:
        return locate_model(model_id, cache_dir)
    except NotAModelId as e:
        raise PrewarmError(
            f"{model_id} is neither a local directory nor a Hugging Face repo id ({e})", model_id
        ) from e
    except NotInHfCache as e:
        raise ModelNotCached(model_id, str(e)) from e


def fetch_from_hub(model_id: str, cache_dir: Path | None) -> object:
    """Downloads `model_id` into the HF cache."""
    return snapshot_download(model_id, cache_dir=cache_dir)


@dataclass(frozen=True)
class LocalSize:
    parameters: int  # `model_facts.parameter_count`: the same for every dtype of a model
    weight_bytes: int  # the weight files mlx-lm loads, as they are on disk


def local_size(model_id: str, cache_dir: Path | None = None) -> LocalSize | None:
    """The size of a model already on this machine; None when it is not local (nothing is
    fetched) or unreadable."""
    try:
        folder = resolve_local(model_id, cache_dir)
        # Headers only: hashing gigabytes of weights just to rank them is not worth it.
        parameters = parameter_count(folder)
        weight_bytes = sum(path.stat().st_size for path in weight_files(folder))
    except (PrewarmError, OSError, ValueError, SafetensorError):
        return None
    return LocalSize(parameters, weight_bytes) if parameters else None
