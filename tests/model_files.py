"""Model folders for tests: the `tiny` fixture's weights, and a Hugging Face cache of a test's
own laid out by hand (no test reaches a hub)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import constants

REVISION = "0123456789abcdef0123456789abcdef01234567"
# The real model's known answer: SmolLM2-135M-Instruct (its Q4_1 GGUF, as `models import` copies
# or dequantizes it) at temperature 0, with its own chat template and default system prompt.
NEURAL_NETWORK = "Explain what a neural network is in two sentences."
NEURAL_NETWORK_ANSWER = (
    "A neural network is a type of machine learning algorithm inspired by the human brain's"
    " neural network, which is composed of interconnected layers of interconnected nodes."
)
WEIGHTS = "model.safetensors"


def fixture_entry(tiny_model: Path) -> dict[str, Any]:
    index = json.loads((tiny_model.parent / "index.json").read_text())
    entry: dict[str, Any] = next(m for m in index["models"] if m["name"] == "tiny")
    return entry


def weights_of(tiny_model: Path) -> bytes:
    return (tiny_model / WEIGHTS).read_bytes()


def offline_hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Offline mode, and an empty HF cache under `tmp_path` as huggingface_hub's default."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def hf_cache_repo(cache: Path, repo_id: str, model: Path) -> Path:
    """`model`'s files as huggingface_hub lays them out: blobs named by their etag (sha256 for
    LFS weights, git blob sha1 for small files), a snapshot of relative symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / REVISION
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for item in sorted(model.iterdir()):
        if item.name.startswith("."):
            continue
        data = item.read_bytes()
        is_lfs = item.suffix == ".safetensors"
        etag = hashlib.sha256(data).hexdigest() if is_lfs else git_blob_sha1(data)
        (blobs / etag).write_bytes(data)
        (snapshot / item.name).symlink_to(Path("..", "..", "blobs", etag))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def write_tree_listing(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """The tree listing huggingface_hub 2.4 caches per commit (`<repo>/trees/<commit>.json`,
    format_version 1, documented in huggingface_hub/_tree_cache.py)."""
    entries: dict[str, dict[str, Any]] = {}
    for name, data in files.items():
        entry: dict[str, Any] = {"size": len(data), "blob_id": git_blob_sha1(data)}
        if name.endswith(".safetensors"):
            entry |= {"lfs_sha256": hashlib.sha256(data).hexdigest(), "lfs_size": len(data)}
        entries[name] = entry
    trees = cache / ("models--" + repo_id.replace("/", "--")) / "trees"
    trees.mkdir()
    listing = {"format_version": 1, "files": entries}
    (trees / f"{REVISION}.json").write_text(json.dumps(listing))


def listed_files(model: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in model.iterdir() if not p.name.startswith(".")}
