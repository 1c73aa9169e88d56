"""Pre-warm's lookup of a model's folder through a hand-built HF cache (never a hub), and
the parameter count of a model already local."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from macprovider.actors.prewarm_errors import ModelNotCached, PrewarmError
from macprovider.actors.prewarm_resolve import LocalSize, local_size, resolve_local
from tests.conftest import model_variant
from tests.model_files import (
    WEIGHTS,
    hf_cache_repo,
    listed_files,
    offline_hf_cache,
    write_tree_listing,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test may reach a hub: offline mode, and an empty HF cache of the test's own."""
    return offline_hf_cache(monkeypatch, tmp_path)


def test_a_local_directory_resolves_to_itself(tiny_model: Path) -> None:
    assert resolve_local(str(tiny_model)) == tiny_model


@pytest.mark.parametrize("repo_id", ["fixture-org/absent", "absent"])
def test_an_uncached_repo_says_a_fetch_is_needed(repo_id: str, offline: Path) -> None:
    with pytest.raises(ModelNotCached, match=f"^{repo_id} is not in the local Hugging Face cache"):
        resolve_local(repo_id, cache_dir=offline)


def test_an_incomplete_snapshot_says_a_fetch_is_needed(tiny_model: Path, offline: Path) -> None:
    """An interrupted download: the cached tree listing names weights that never arrived."""
    snapshot = hf_cache_repo(offline, "fixture-org/tiny", tiny_model)
    write_tree_listing(offline, "fixture-org/tiny", listed_files(tiny_model))
    (snapshot / WEIGHTS).unlink()
    with pytest.raises(
        ModelNotCached, match=rf"is incomplete: 1 file\(s\) are missing \({WEIGHTS}\)"
    ):
        resolve_local("fixture-org/tiny", cache_dir=offline)


@pytest.mark.parametrize("model_id", ["/no/such/dir", "a/b/c"])
def test_neither_a_directory_nor_a_repo_id_is_a_plain_prewarm_error(model_id: str) -> None:
    with pytest.raises(PrewarmError) as failure:
        resolve_local(model_id)
    assert not isinstance(failure.value, ModelNotCached)
    assert model_id in str(failure.value)


def test_local_size_reads_headers_of_local_models_only(
    tiny_model: Path, tmp_path: Path, offline: Path
) -> None:
    size = LocalSize(656_000, (tiny_model / WEIGHTS).stat().st_size)
    assert local_size(str(tiny_model)) == size
    hf_cache_repo(offline, "fixture-org/tiny", tiny_model)
    assert local_size("fixture-org/tiny", cache_dir=offline) == size
    assert local_size("fixture-org/absent", cache_dir=offline) is None
    assert local_size("a/b/c") is None
    garbage = {WEIGHTS: struct.pack("<Q", 8) + b"{garbage"}
    assert local_size(str(model_variant(tiny_model, tmp_path / "bad", garbage))) is None
