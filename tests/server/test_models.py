"""Where a model argument's weights are: the one lookup `serve` and pre-warm share, its
weight-file names, and the errors (exit 66) `serve` gives for a model it cannot find."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from macprovider.server.errors import ModelNotFoundError
from macprovider.server.models import (
    NotAModelId,
    NotInHfCache,
    locate_model,
    resolve_model_path,
    weight_files,
)
from tests.model_files import hf_cache_repo, offline_hf_cache


@pytest.fixture(autouse=True)
def hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return offline_hf_cache(monkeypatch, tmp_path)


def cached_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A repo of `files` in the HF cache; returns its snapshot folder."""
    source = cache.parent / "source" / repo_id
    source.mkdir(parents=True)
    for name, content in files.items():
        (source / name).write_bytes(content)
    return hf_cache_repo(cache, repo_id, source)


@pytest.mark.parametrize(
    ("files", "weights"),
    [
        (["model.safetensors", "config.json"], ["model.safetensors"]),
        (
            [
                "model-00002-of-00002.safetensors",
                "model-00001-of-00002.safetensors",
                "model.safetensors.index.json",
            ],
            ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
        ),
        # mlx-lm loads neither: a duplicate for another runtime, LoRA adapters.
        (
            ["model.safetensors", "consolidated.safetensors", "adapters.safetensors"],
            ["model.safetensors"],
        ),
        (["weights.npz", "config.json"], []),
    ],
)
def test_weight_files_are_the_ones_mlx_lm_loads(
    tmp_path: Path, files: list[str], weights: list[str]
) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in weight_files(tmp_path)] == weights


def test_a_local_folder_is_itself(tmp_path: Path) -> None:
    assert locate_model(str(tmp_path)) == tmp_path


def test_a_bare_name_is_its_folder_in_the_models_folder(tmp_path: Path, hf_cache: Path) -> None:
    imported = tmp_path / "models" / "smol"
    imported.mkdir(parents=True)
    cached_snapshot(hf_cache, "smol", {"config.json": b"{}"})
    # The models folder comes before the HF cache: `models import --name smol` is what the
    # operator made on this machine.
    assert locate_model("smol", models_root=tmp_path / "models") == imported
    # A name with an organisation is a repo id, never a models-folder entry.
    (tmp_path / "models" / "org").mkdir()
    with pytest.raises(NotInHfCache):
        locate_model("org/smol", models_root=tmp_path / "models")


def test_the_models_folder_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "macprovider" / "models" / "smol").mkdir(parents=True)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("MACPROVIDER_MODELS_DIR", raising=False)
    assert locate_model("smol") == tmp_path / "macprovider" / "models" / "smol"


def test_a_cached_repo_is_its_snapshot(hf_cache: Path) -> None:
    snapshot = cached_snapshot(hf_cache, "org/m", {"config.json": b"{}"})
    assert locate_model("org/m") == snapshot
    assert locate_model("org/m", cache_dir=hf_cache) == snapshot
    assert resolve_model_path("org/m") == snapshot.resolve()


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("org/absent", NotInHfCache),
        ("absent", NotInHfCache),  # a repo id without an organisation is valid on the Hub
        ("a/b/c", NotAModelId),
        ("/no/such/dir", NotAModelId),
    ],
)
def test_a_model_that_is_not_here(model: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        locate_model(model)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("org/absent", r"^model 'org/absent' is not a local folder, a name in the models folder"),
        ("org/absent", r"fetch it first with `macprovider-supervise models pull org/absent`"),
        (
            "/no/such/dir",
            r"^model '/no/such/dir': no such folder, no such name in the models folder, and not "
            r"a Hugging Face repo id$",
        ),
    ],
)
def test_serve_says_what_to_do_about_a_model_that_is_not_here(model: str, message: str) -> None:
    with pytest.raises(ModelNotFoundError, match=message):
        resolve_model_path(model)


def test_serve_wants_a_config_json(tmp_path: Path, hf_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=f"^model folder {tmp_path} has no config.json$"):
        resolve_model_path(str(tmp_path))
    snapshot = cached_snapshot(hf_cache, "org/m", {"model.safetensors": b""})
    with pytest.raises(ModelNotFoundError, match=f"^model folder {snapshot} has no config.json$"):
        resolve_model_path("org/m")


def test_the_serve_command_does_not_import_the_hub_client_or_safetensors() -> None:
    """Both are imported when a repo id is looked up, or the weights are read, not before."""
    code = (
        "import sys, macprovider.cli.main; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'huggingface_hub', 'safetensors'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
