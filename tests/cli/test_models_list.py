"""`models list`: the HF cache and the models folder, each entry read from its files."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from macprovider.cli.models_list import ModelEntry, _quantization_label
from tests.conftest import clean_env, model_variant, supervise_argv
from tests.model_files import (
    REVISION,
    WEIGHTS,
    hf_cache_repo,
    listed_files,
    weights_of,
    write_tree_listing,
)

REPO = "acme/tiny"


def run_models(
    tmp_path: Path, *args: str, models_dir: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`models ARGS` with the HF cache and the models folder (MACPROVIDER_MODELS_DIR, unless
    `models_dir` gives another value) inside `tmp_path`."""
    env = clean_env(
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_CACHE=str(tmp_path / "hf-cache"),
        MACPROVIDER_MODELS_DIR=models_dir or str(tmp_path / "models"),
        HF_HUB_OFFLINE="1",
    )
    return subprocess.run(
        supervise_argv("models", *args), env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="session")
def tiny_4bit(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny fixture quantized by mlx-lm to 4 bits in groups of 32."""
    from mlx_lm.convert import convert

    folder = tmp_path_factory.mktemp("quantized") / "tiny-4bit"
    convert(str(tiny_model), str(folder), quantize=True, q_group_size=32, q_bits=4)
    return folder


def listed(tmp_path: Path) -> dict[str, dict[str, Any]]:
    done = run_models(tmp_path, "list", "--json")
    assert done.returncode == 0, done.stderr
    entries: list[dict[str, Any]] = json.loads(done.stdout)
    return {entry["id"]: entry for entry in entries}


def test_lists_the_hf_cache_and_the_models_folder(tmp_path: Path, tiny_model: Path) -> None:
    snapshot = hf_cache_repo(tmp_path / "hf-cache", REPO, tiny_model)
    model_variant(tiny_model, tmp_path / "models" / "tiny", {})
    model_variant(tiny_model, tmp_path / "models" / ".tiny.importing", {})  # skipped

    entries = listed(tmp_path)

    assert set(entries) == {REPO, "tiny"}
    cached, local = entries[REPO], entries["tiny"]
    assert (cached["source"], cached["path"]) == ("hf-cache", str(snapshot))
    assert (cached["revision"], cached["refs"]) == (REVISION, ["main"])
    assert (local["source"], local["path"]) == ("models-folder", str(tmp_path / "models" / "tiny"))
    for entry in (cached, local):
        assert entry["architecture"] == "LlamaForCausalLM"
        assert entry["parameters"] == 656_000
        assert entry["quantization"] == "f32"
        assert entry["trained_context"] == 262_144
        assert entry["fits_ram"] is True
        assert entry["problem"] is None
        # f32 weights, and a KV cache of 2 layers × (key + value) × 1 head × 64 × 4 bytes a token.
        kv_cache = entry["serving_context"] * 2 * 2 * 64 * 4
        assert entry["memory_need_bytes"] == 656_000 * 4 + kv_cache
    assert local["size_bytes"] == sum(p.stat().st_size for p in tiny_model.iterdir())


def test_json_keys_are_stable(tmp_path: Path, tiny_model: Path) -> None:
    model_variant(tiny_model, tmp_path / "models" / "tiny", {})

    (entry,) = listed(tmp_path).values()

    assert list(entry) == list(ModelEntry.__dataclass_fields__)


def test_a_broken_model_is_listed_with_its_problem(tmp_path: Path, tiny_model: Path) -> None:
    truncated = weights_of(tiny_model)[:1000]
    model_variant(tiny_model, tmp_path / "models" / "broken", {WEIGHTS: truncated})
    (tmp_path / "hf-cache" / "models--acme--gone").mkdir(parents=True)  # no snapshots

    entries = listed(tmp_path)

    broken, gone = entries["broken"], entries["acme/gone"]
    assert broken["architecture"] == "LlamaForCausalLM"
    assert broken["parameters"] is None and broken["fits_ram"] is None
    assert broken["problem"].startswith("weights: ")
    assert gone["source"] == "hf-cache" and "Snapshots dir doesn't exist" in gone["problem"]
    table = run_models(tmp_path, "list")
    assert table.returncode == 0 and "Traceback" not in table.stderr
    assert "    problem: weights: " in table.stdout


def test_a_quantized_model_counts_the_parameters_of_its_unquantized_form(
    tmp_path: Path, tiny_model: Path, tiny_4bit: Path
) -> None:
    model_variant(tiny_model, tmp_path / "models" / "tiny", {})
    model_variant(tiny_4bit, tmp_path / "models" / "tiny-4bit", {})

    entries = listed(tmp_path)

    assert entries["tiny-4bit"]["parameters"] == entries["tiny"]["parameters"] == 656_000
    assert entries["tiny-4bit"]["quantization"] == "4-bit g32"
    assert entries["tiny-4bit"]["size_bytes"] < entries["tiny"]["size_bytes"]


def test_the_table_has_a_row_per_model(tmp_path: Path, tiny_model: Path) -> None:
    model_variant(tiny_model, tmp_path / "models" / "tiny", {})

    done = run_models(tmp_path, "list")

    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    assert header.split() == [
        "ID",
        "WHERE",
        "ARCHITECTURE",
        "PARAMS",
        "SIZE",
        "QUANT",
        "FITS",
        "RAM",
        "PATH",
    ]
    assert row.split()[:6] == ["tiny", "models-folder", "LlamaForCausalLM", "656.0K", "2.8", "MB"]


def test_nothing_to_list_says_where_it_looked(tmp_path: Path) -> None:
    done = run_models(tmp_path, "list")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "no models found",
        f"HF cache: {tmp_path / 'hf-cache'}",
        f"models folder: {tmp_path / 'models'} (env MACPROVIDER_MODELS_DIR)",
    ]
    assert run_models(tmp_path, "list", "--json").stdout.strip() == "[]"
    flag = run_models(tmp_path, "list", "--models-dir", str(tmp_path / "elsewhere"))
    assert flag.stdout.splitlines()[-1] == f"models folder: {tmp_path / 'elsewhere'} (--models-dir)"


def test_a_relative_models_dir_variable_is_refused(tmp_path: Path) -> None:
    done = run_models(tmp_path, "list", models_dir="models")

    assert done.returncode == 64
    assert done.stderr.strip().splitlines() == [
        "macprovider-supervise: error: invalid MACPROVIDER_MODELS_DIR 'models' from env: "
        "must be an absolute path"
    ]


def test_an_hf_cache_snapshot_missing_a_listed_file_is_incomplete(
    tmp_path: Path, tiny_model: Path
) -> None:
    cache = tmp_path / "hf-cache"
    snapshot = hf_cache_repo(cache, REPO, tiny_model)
    write_tree_listing(cache, REPO, listed_files(tiny_model))
    (snapshot / "tokenizer.json").unlink()  # an interrupted pull leaves the rest

    entry = listed(tmp_path)[REPO]

    assert entry["problem"].startswith(
        f"incomplete: tokenizer.json missing; `models pull {REPO}` fetches what is missing; "
    )
    # Without the listing nothing can tell a file is missing but what every model needs.
    (cache / "models--acme--tiny" / "trees" / f"{REVISION}.json").unlink()
    assert listed(tmp_path)[REPO]["problem"] == "tokenizer.json: missing"


@pytest.mark.parametrize(
    ("block", "label"),
    [
        ({"group_size": 64, "bits": 4}, "4-bit g64"),
        ({"group_size": 32, "bits": 4, "mode": "affine"}, "4-bit g32"),
        (
            {
                "group_size": 32,
                "bits": 4,
                "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8},
            },
            "mixed 4/8-bit g32",
        ),
        ({"group_size": 32, "bits": 4, "mode": "mxfp4"}, "mxfp4 4-bit g32"),
        (
            {"group_size": 64, "bits": 4, "lm_head": {"group_size": 32, "bits": 6}},
            "mixed 4/6-bit g32/64",
        ),
    ],
)
def test_quantization_labels(block: Mapping[str, Any], label: str) -> None:
    assert _quantization_label(block) == label
