"""Where a model argument's weights are: the one lookup `serve` and pre-warm share, its
weight-file names, and the errors (exit 66) `serve` gives for a model it cannot find."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from macprovider.server.errors import ConfigError, ModelNotFoundError
from macprovider.server.models import (
    NotAModelId,
    NotInHfCache,
    locate_model,
    resolve_model_path,
    weight_files,
)
from tests.model_files import (
    WEIGHTS,
    hf_cache_repo,
    listed_files,
    offline_hf_cache,
    write_tree_listing,
)


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


@pytest.fixture
def models_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "big-disk" / "models"
    monkeypatch.setenv("MACPROVIDER_MODELS_DIR", str(folder))
    return folder


@pytest.mark.parametrize(
    ("model", "message"),
    [
        # A repo id is never a models-folder name, so that folder goes unnamed.
        (
            "org/absent",
            "model 'org/absent': no such local folder, no complete snapshot in the Hugging Face "
            "cache {cache}; fetch it with `macprovider-supervise models pull org/absent` (or let "
            "autotune pre-warm it)",
        ),
        (
            "absent",
            "model 'absent': no such local folder, no such name in the models folder {models} "
            "(env MACPROVIDER_MODELS_DIR), no complete snapshot in the Hugging Face cache "
            "{cache}; fetch it with `macprovider-supervise models pull absent` (or let autotune "
            "pre-warm it)",
        ),
        (
            "not a name!",
            "model 'not a name!': no such local folder, no such name in the models folder "
            "{models} (env MACPROVIDER_MODELS_DIR), and not a Hugging Face repo id",
        ),
        (
            "/no/such/dir",
            "model '/no/such/dir': no such local folder, and not a Hugging Face repo id",
        ),
    ],
)
def test_serve_names_every_folder_it_searched_and_what_to_do(
    model: str, message: str, hf_cache: Path, models_folder: Path
) -> None:
    with pytest.raises(ModelNotFoundError) as missing:
        resolve_model_path(model)
    assert str(missing.value) == message.format(cache=hf_cache, models=models_folder)


def test_a_snapshot_missing_a_listed_file_is_not_found(hf_cache: Path, tiny_model: Path) -> None:
    """What `models pull` leaves after taking a damaged file out: serve must not load the rest."""
    snapshot = hf_cache_repo(hf_cache, "org/m", tiny_model)
    write_tree_listing(hf_cache, "org/m", listed_files(tiny_model))
    assert resolve_model_path("org/m") == snapshot.resolve()
    (snapshot / WEIGHTS).unlink()

    with pytest.raises(ModelNotFoundError, match="no complete snapshot in the Hugging Face cache"):
        resolve_model_path("org/m")


def test_a_relative_models_dir_variable_is_refused_only_when_a_name_is_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MACPROVIDER_MODELS_DIR", "models")
    assert locate_model(str(tmp_path)) == tmp_path
    with pytest.raises(ConfigError, match="MACPROVIDER_MODELS_DIR 'models'"):
        resolve_model_path("smol")


def test_serve_wants_a_config_json(tmp_path: Path, hf_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=f"^model folder {tmp_path} has no config.json$"):
        resolve_model_path(str(tmp_path))
    snapshot = cached_snapshot(hf_cache, "org/m", {"model.safetensors": b""})
    with pytest.raises(ModelNotFoundError, match=f"^model folder {snapshot} has no config.json$"):
        resolve_model_path("org/m")
    # `models verify` finds it all the same, to call it damaged.
    assert resolve_model_path("org/m", require_config=False) == snapshot.resolve()


def test_the_serve_command_does_not_import_the_hub_client_or_safetensors() -> None:
    """Both are imported when a repo id is looked up, or the weights are read, not before."""
    code = (
        "import sys, macprovider.cli.main; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'huggingface_hub', 'safetensors'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
