"""Pre-warm's integrity check: is a model folder complete and undamaged, and how big is it.

Missing or damaged files are integrity failures (PrewarmIntegrityError), which stop the whole
autotune run: a candidate measured on corrupt weights would be a wrong answer, not a skipped one.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macprovider.actors.prewarm_errors import PrewarmIntegrityError
from macprovider.server.model_facts import count_parameters, trained_context
from macprovider.server.models import SHARD_INDEX, WEIGHT_GLOB, weight_files
from macprovider.server.safetensors_headers import DTYPE_BITS, TensorHeader

# Files every model needs besides its weights: a model without them cannot load.
REQUIRED_FILES = ("config.json", "tokenizer.json")
# The safetensors reference implementation refuses headers above 100 MB (MAX_HEADER_SIZE).
_MAX_HEADER_BYTES = 100_000_000
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1_NAME = re.compile(r"[0-9a-f]{40}")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class IntegrityReport:
    """What `check_integrity` found in a model folder that passed."""

    model: str
    folder: Path
    parameters: int  # the model's (model_facts.count_parameters), not the tensors' elements
    weight_bytes: int  # size of the weight files (WEIGHT_GLOB)
    total_bytes: int  # size of every file of the folder (symlinks followed)
    weight_files: tuple[str, ...]
    hashed_files: tuple[str, ...]  # files checked against a hash the HF cache recorded
    trained_context: int | None  # config.json's (model_facts.trained_context)


def _model_name(folder: Path) -> str:
    """`org/name` for a snapshot folder inside an HF cache, else the folder itself."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.removeprefix("models--").replace("--", "/")
    return str(folder)


def check_integrity(folder: Path, model: str | None = None) -> IntegrityReport:
    """Checks a model folder before anything is measured on it, and measures its real size.

    config.json (a JSON object) and tokenizer.json must be there, with at least one weight
    file (WEIGHT_GLOB, the files mlx-lm loads); every weight file's header must parse and its
    tensors must cover the data section exactly, back to back; a file the HF cache recorded a
    hash for (its blob's name, or the cached tree listing) must still have that hash. Raises
    PrewarmIntegrityError naming the model and the file.
    """
    name = model or _model_name(folder)
    for required in REQUIRED_FILES:
        if not (folder / required).is_file():
            raise PrewarmIntegrityError(name, required, "missing")
    config = _check_config(name, folder / "config.json")

    weights = weight_files(folder)
    if not weights:
        raise PrewarmIntegrityError(name, WEIGHT_GLOB, "no weight files in the folder")
    _check_shard_index(name, folder, {w.name for w in weights})
    tensors: list[TensorHeader] = []
    for weight in weights:
        if not weight.is_file():
            raise PrewarmIntegrityError(name, weight.name, "missing (dangling symlink)")
        tensors += _check_safetensors(name, weight)
    try:
        parameters = count_parameters(tensors, config)
    except ValueError as e:  # packed weights mlx-lm could not unpack either
        raise PrewarmIntegrityError(name, "config.json", str(e)) from e

    recorded = _recorded_hashes(folder)
    hashed: list[str] = []
    total_bytes = 0
    for item in sorted(folder.iterdir()):
        if not item.is_file():
            continue
        total_bytes += item.stat().st_size
        if _check_cache_hash(name, item, recorded.get(item.name)):
            hashed.append(item.name)
    return IntegrityReport(
        model=name,
        folder=folder,
        parameters=parameters,
        weight_bytes=sum(w.stat().st_size for w in weights),
        total_bytes=total_bytes,
        weight_files=tuple(w.name for w in weights),
        hashed_files=tuple(hashed),
        trained_context=trained_context(config),
    )


def _check_config(model: str, path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrewarmIntegrityError(model, path.name, f"not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise PrewarmIntegrityError(model, path.name, "not a JSON object")
    return config


def _check_shard_index(model: str, folder: Path, weights: set[str]) -> None:
    """A sharded checkpoint's index (SHARD_INDEX) must name only weight files present."""
    index = folder / SHARD_INDEX
    if not index.exists():
        return
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        shards = set(weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise PrewarmIntegrityError(model, index.name, f"unreadable ({e})") from e
    missing = sorted(str(shard) for shard in shards - weights)
    if missing:
        raise PrewarmIntegrityError(model, missing[0], f"missing (listed in {index.name})")


def _check_safetensors(model: str, path: Path) -> list[TensorHeader]:
    """Validates one safetensors file; returns its tensors' headers.

    Parsed here rather than by `safetensors.safe_open`, which refuses the same files (the
    tests check this) but with one text for several defects ("incomplete metadata, file not
    fully covered"): an integrity failure stops the whole run, so its line must say which
    tensor and which bytes are wrong, for the operator to tell a truncated download from a
    damaged file.
    """

    def fail(cause: str) -> PrewarmIntegrityError:
        return PrewarmIntegrityError(model, path.name, cause)

    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise fail(f"{size} bytes is too short for a safetensors header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_HEADER_BYTES:
            raise fail(f"header length {header_len} exceeds the format's limit")
        if 8 + header_len > size:
            raise fail(f"header length {header_len} points past the end of the file ({size} bytes)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(f"unreadable header ({e})") from e
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")

    spans: list[tuple[int, int, str]] = []
    tensors: list[TensorHeader] = []
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        begin, end = _tensor_span(info, fail, tensor)
        tensors.append(TensorHeader(tensor, info["dtype"], tuple(info["shape"])))
        spans.append((begin, end, tensor))

    data_len = size - 8 - header_len
    position = 0
    for begin, end, tensor in sorted(spans):
        if begin != position:
            what = "overlaps the previous one" if begin < position else "leaves a gap before it"
            raise fail(f"tensor {tensor!r} at offset {begin} {what} (expected {position})")
        position = end
    if position > data_len:
        raise fail(f"truncated: tensors need {position} data bytes, the file has {data_len}")
    if position < data_len:
        raise fail(f"{data_len - position} trailing bytes after the last tensor")
    return tensors


def _tensor_span(
    info: Any, fail: Callable[[str], PrewarmIntegrityError], tensor: str
) -> tuple[int, int]:
    """(begin, end) of one header entry, checked against its dtype and shape."""
    if not isinstance(info, dict):
        raise fail(f"tensor {tensor!r}: entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise fail(f"tensor {tensor!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise fail(f"tensor {tensor!r}: bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_natural(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise fail(f"tensor {tensor!r}: bad data_offsets {offsets!r}")
    elements = math.prod(shape)
    bits = elements * DTYPE_BITS[dtype]
    begin, end = offsets
    if bits % 8 or end - begin != bits // 8:
        raise fail(f"tensor {tensor!r}: {end - begin} bytes do not hold {dtype} {shape}")
    return begin, end


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _recorded_hashes(folder: Path) -> dict[str, tuple[str, str]]:
    """File name -> (algorithm, hex digest) from the tree listing huggingface_hub (2.4) caches
    for a snapshot at `<repo>/trees/<commit>.json` (format_version 1: `files` maps each path to
    its `blob_id`, the git blob sha1, and for LFS files its `lfs_sha256`). Empty without one."""
    if folder.parent.name != "snapshots":
        return {}
    listing = folder.parent.parent / "trees" / f"{folder.name}.json"
    try:
        files = json.loads(listing.read_bytes())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    recorded: dict[str, tuple[str, str]] = {}
    if isinstance(files, dict):
        for path, info in files.items():
            if not isinstance(info, dict):
                continue
            if isinstance(info.get("lfs_sha256"), str):
                recorded[path] = ("sha256", info["lfs_sha256"])
            elif isinstance(info.get("blob_id"), str):
                recorded[path] = ("git-sha1", info["blob_id"])
    return recorded


def _check_cache_hash(model: str, item: Path, recorded: tuple[str, str] | None) -> bool:
    """Checks a file against the hashes the HF cache recorded for it; False when it has none.

    huggingface_hub stores each file once under `blobs/<etag>` and symlinks it from the
    snapshot: the etag is the sha256 of an LFS file (weights) and the git blob sha1 of a small
    one. It may also have cached the repo's tree listing (`recorded`). A file outside an HF
    cache has no recorded hash.
    """
    expected: list[tuple[str, str]] = []
    if item.is_symlink():
        blob = item.resolve()
        if blob.parent.name == "blobs":
            if _SHA256_NAME.fullmatch(blob.name):
                expected.append(("sha256", blob.name))
            elif _GIT_SHA1_NAME.fullmatch(blob.name):
                expected.append(("git-sha1", blob.name))
    if recorded is not None:
        expected.append(recorded)
    actual: dict[str, str] = {}
    for algorithm, digest in expected:
        if algorithm not in actual:
            actual[algorithm] = _sha256(item) if algorithm == "sha256" else _git_sha1(item)
        if actual[algorithm] != digest:
            raise PrewarmIntegrityError(
                model,
                item.name,
                f"{algorithm} mismatch: cache recorded {digest}, file has {actual[algorithm]}",
            )
    return bool(expected)


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            yield chunk


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _git_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.hexdigest()
