"""`models list`: every model on this machine, where it is, how big it is and whether it fits.

Two places hold models: the Hugging Face cache (what `models pull` and autotune's pre-warm
fill) and the models folder (what `models import` writes). Each entry is read from its files
only, headers and JSON, never weights, so listing a cache of large models stays quick; a
folder whose files cannot be read is still listed, with what is wrong in `problem`. The full
check, every hash included, is `models verify`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from macprovider.actors.prewarm_integrity import REQUIRED_FILES
from macprovider.cli.size_text import bytes_text, parameters_text
from macprovider.server.knobs import DEFAULT_MAX_BATCH, default_context_for
from macprovider.server.memory_budget import estimate_need, format_gb, model_shape, read_weights
from macprovider.server.model_facts import parameter_count, read_config, trained_context
from macprovider.server.models import weight_files
from macprovider.server.safetensors_headers import tensor_headers

if TYPE_CHECKING:
    from huggingface_hub import CachedRevisionInfo

HF_CACHE = "hf-cache"
MODELS_FOLDER = "models-folder"
# safetensors dtype → the label operators know it by.
_FLOAT_LABELS = {"BF16": "bf16", "F16": "f16", "F32": "f32", "F64": "f64"}


@dataclass(frozen=True)
class ModelEntry:
    """One row of `models list`; the `--json` keys are these field names (null: unknown)."""

    id: str  # the repo id of an HF cache entry, the folder name of a models-folder one
    source: str  # HF_CACHE or MODELS_FOLDER
    path: str
    revision: str | None  # the snapshot's commit (HF cache only)
    refs: list[str]  # branches and tags pointing at it (HF cache only)
    architecture: str | None  # config.json `architectures`, else `model_type`
    model_type: str | None
    parameters: int | None  # the model's, unpacked when quantized (model_facts)
    size_bytes: int | None  # on disk
    quantization: str | None  # "4-bit g32", "mixed 4/8-bit g32", "bf16", …
    trained_context: int | None
    serving_context: int | None  # the default `serve` would use here
    memory_need_bytes: int | None  # weights + KV cache at serving_context, batch 1
    fits_ram: bool | None
    problem: str | None  # why some facts are missing; None when the files read cleanly


@dataclass(frozen=True)
class Listing:
    hf_cache: Path
    models_folder: Path
    models_source: str  # what chose the models folder (`places.models_dir`'s, or the flag)
    entries: list[ModelEntry]


def list_models(hf_cache: Path, models_folder: tuple[Path, str], ram_bytes: int) -> Listing:
    """`models_folder` is the folder and what chose it, as `places.models_dir` returns them."""
    folder, source = models_folder
    entries = [*_hf_cache_entries(hf_cache, ram_bytes), *_folder_entries(folder, ram_bytes)]
    return Listing(hf_cache, folder, source, entries)


# --- where models are -----------------------------------------------------------------------


def _hf_cache_entries(cache: Path, ram_bytes: int) -> Iterator[ModelEntry]:
    from huggingface_hub import CacheNotFound, scan_cache_dir

    try:
        scan = scan_cache_dir(cache)
    except CacheNotFound:
        return
    scanned: set[Path] = set()
    for repo in sorted(scan.repos, key=lambda r: r.repo_id):
        scanned.add(repo.repo_path)
        if repo.repo_type != "model":
            continue
        for revision in sorted(repo.revisions, key=lambda r: r.commit_hash):
            yield _describe(
                repo.repo_id,
                HF_CACHE,
                revision.snapshot_path,
                ram_bytes,
                revision=revision.commit_hash,
                refs=sorted(revision.refs),
                size_bytes=revision.size_on_disk,
                missing=_missing_from_snapshot(cache, repo.repo_id, revision),
            )
    # A repo folder huggingface_hub could not read is listed with its complaint, not dropped:
    # a half-deleted cache entry is exactly what an operator looking at this list needs to see.
    complaints = [str(warning) for warning in scan.warnings]
    for folder in sorted(cache.glob("models--*")):
        if folder.resolve() in scanned:
            continue
        problem = next((c for c in complaints if folder.name in c), "not a valid cache entry")
        repo_id = folder.name.removeprefix("models--").replace("--", "/")
        yield _unreadable(repo_id, HF_CACHE, folder, problem)


def _missing_from_snapshot(cache: Path, repo_id: str, revision: CachedRevisionInfo) -> str | None:
    """What the snapshot lacks of the repo's file listing, which huggingface_hub caches beside it
    (None when complete, or when no listing was cached and so nothing can tell). A pull cut short,
    or one whose damaged file was taken out, leaves the snapshot so: `serve` will not load it."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        listed = get_cached_repo_tree(repo_id, revision=revision.commit_hash, cache_dir=cache)
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return None
    missing = [f.path for f in listed if not (revision.snapshot_path / f.path).is_file()]
    if not missing:
        return None
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return f"incomplete: {shown} missing; `models pull {repo_id}` fetches what is missing"


def _folder_entries(models_folder: Path, ram_bytes: int) -> Iterator[ModelEntry]:
    if not models_folder.is_dir():
        return
    for folder in sorted(models_folder.iterdir()):
        # Dot-folders are `models import`'s work in progress, renamed into place when complete.
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        yield _describe(folder.name, MODELS_FOLDER, folder, ram_bytes, size_bytes=_du(folder))


def _du(folder: Path) -> int:
    """Bytes of the files under `folder`, symlinks followed (an entry may link to its files)."""
    total = 0
    for item in folder.rglob("*"):
        if item.is_file():
            total += item.stat().st_size
    return total


# --- what a folder says about itself --------------------------------------------------------


def _unreadable(model_id: str, source: str, path: Path, problem: str) -> ModelEntry:
    return ModelEntry(
        id=model_id,
        source=source,
        path=str(path),
        revision=None,
        refs=[],
        architecture=None,
        model_type=None,
        parameters=None,
        size_bytes=None,
        quantization=None,
        trained_context=None,
        serving_context=None,
        memory_need_bytes=None,
        fits_ram=None,
        problem=problem,
    )


def _describe(
    model_id: str,
    source: str,
    folder: Path,
    ram_bytes: int,
    *,
    revision: str | None = None,
    refs: list[str] | None = None,
    size_bytes: int | None,
    missing: str | None = None,
) -> ModelEntry:
    """Each fact is read on its own, so one unreadable file costs only the facts that need it;
    every failure is named in `problem`, after `missing` (an HF-cache snapshot's gap)."""
    problems: list[str] = [] if missing is None else [missing]
    problems += [f"{name}: missing" for name in REQUIRED_FILES if not (folder / name).is_file()]
    config: dict[str, Any] | None = None
    parameters: int | None = None
    context: int | None = None
    need: int | None = None
    quantization: str | None = None
    try:
        config = read_config(folder)
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        if (folder / "config.json").is_file():
            problems.append(f"config.json: {_one_line(e)}")
    try:
        parameters = parameter_count(folder)
        quantization = _quantization(folder, config or {})
    except (OSError, ValueError, SafetensorError) as e:
        problems.append(f"weights: {_one_line(e)}")
    if config is not None:
        context = default_context_for(ram_bytes, trained_context(config))
        if parameters is not None:  # else the weights' problem is already named
            need = _memory_need(folder, config, context, problems)
    architectures = (config or {}).get("architectures")
    model_type = (config or {}).get("model_type")
    return ModelEntry(
        id=model_id,
        source=source,
        path=str(folder),
        revision=revision,
        refs=refs or [],
        architecture=(
            ",".join(str(a) for a in architectures)
            if isinstance(architectures, list) and architectures
            else (model_type if isinstance(model_type, str) else None)
        ),
        model_type=model_type if isinstance(model_type, str) else None,
        parameters=parameters,
        size_bytes=size_bytes,
        quantization=quantization,
        trained_context=trained_context(config) if config is not None else None,
        serving_context=context,
        memory_need_bytes=need,
        fits_ram=None if need is None else need <= ram_bytes,
        problem="; ".join(problems) or None,
    )


def _memory_need(
    folder: Path, config: Mapping[str, Any], context: int, problems: list[str]
) -> int | None:
    """`serve`'s memory estimate at `context` and batch 1, unquantized KV cache."""
    try:
        weights = read_weights(folder)
        shape = model_shape(config, weights.dtype_bytes)
    except (OSError, ValueError, SafetensorError) as e:
        problems.append(f"memory estimate: {_one_line(e)}")
        return None
    need = estimate_need(
        weights.nbytes, shape, max_context=context, max_batch=DEFAULT_MAX_BATCH, kv_bits=None
    )
    return need.total


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _quantization(folder: Path, config: Mapping[str, Any]) -> str:
    """config.json's `quantization` block (per-module overrides make it mixed), else the float
    dtype holding most of the weight bytes."""
    block = config.get("quantization")
    if isinstance(block, Mapping):
        return _quantization_label(block)
    by_dtype: Counter[str] = Counter()
    for tensor in tensor_headers(weight_files(folder)):
        by_dtype[tensor.dtype] += tensor.nbytes
    dominant = by_dtype.most_common(1)[0][0]
    return _FLOAT_LABELS.get(dominant, dominant.lower())


def _quantization_label(block: Mapping[str, Any]) -> str:
    layouts = [block, *(v for v in block.values() if isinstance(v, Mapping))]
    bits = sorted({b for layout in layouts if isinstance(b := layout.get("bits"), int)})
    groups = sorted({g for layout in layouts if isinstance(g := layout.get("group_size"), int)})
    mode = block.get("mode")
    label = "/".join(map(str, bits)) + "-bit"
    if len(bits) > 1:
        label = f"mixed {label}"
    if groups:
        label += " g" + "/".join(map(str, groups))
    if isinstance(mode, str) and mode != "affine":
        label = f"{mode} {label}"
    return label


# --- rendering ------------------------------------------------------------------------------


def as_json(listing: Listing) -> str:
    return json.dumps([asdict(entry) for entry in listing.entries], indent=2)


_COLUMNS = ("ID", "WHERE", "ARCHITECTURE", "PARAMS", "SIZE", "QUANT", "FITS RAM", "PATH")


def as_table(listing: Listing) -> str:
    """Plain aligned text; problems go on an indented line under their row, whole."""
    looked = (
        f"HF cache: {listing.hf_cache}\n"
        f"models folder: {listing.models_folder} ({listing.models_source})"
    )
    if not listing.entries:
        return f"no models found\n{looked}"
    rows = [_COLUMNS, *(_row(entry) for entry in listing.entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    lines = []
    for row, entry in zip(rows, [None, *listing.entries], strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
        if entry is not None and entry.problem:
            lines.append(f"    problem: {entry.problem}")
    return "\n".join([*lines, "", looked])


def _row(entry: ModelEntry) -> Sequence[str]:
    model_id = entry.id
    if entry.revision is not None and "main" not in entry.refs:
        model_id += f"@{entry.revision[:8]}"
    return (
        model_id,
        entry.source,
        entry.architecture or "?",
        parameters_text(entry.parameters),
        bytes_text(entry.size_bytes),
        entry.quantization or "?",
        _fits(entry),
        entry.path,
    )


def _fits(entry: ModelEntry) -> str:
    if entry.fits_ram is None or entry.memory_need_bytes is None:
        return "?"
    verdict = "yes" if entry.fits_ram else "no"
    return f"{verdict} ({format_gb(entry.memory_need_bytes)} GB @ {entry.serving_context})"


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder as it reads it (HF_HUB_CACHE, else HF_HOME/hub, …)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def ram_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().total)
