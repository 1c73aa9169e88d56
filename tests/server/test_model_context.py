"""The served context: the RAM tier, at most the model's trained context; a longer one set by
flag, environment or YAML is served as set, with a warning."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from macprovider.cli.run import load_target
from macprovider.server.config import (
    MAX_CONTEXT,
    ServeConfig,
    resolve_model,
    resolve_serve_config,
)
from macprovider.server.errors import MemoryBudgetExceeded
from macprovider.server.knob_values import GIB
from macprovider.server.knobs import default_context_for
from macprovider.server.memory_budget import check_memory_budget

TRAINED = 4096
RAM = 32 * GIB  # tier 120,000


@pytest.mark.parametrize(
    ("ram_bytes", "trained", "expected"),
    [
        (8 * GIB, None, 20_000),
        (8 * GIB, 131_072, 20_000),
        (32 * GIB, 8192, 8192),
        (32 * GIB, 120_000, 120_000),
        (64 * GIB, None, 200_000),
        (64 * GIB, 262_144, 200_000),
    ],
)
def test_the_default_context_is_the_ram_tier_at_most_the_trained_context(
    ram_bytes: int, trained: int | None, expected: int
) -> None:
    assert default_context_for(ram_bytes, trained) == expected


@pytest.fixture(scope="module")
def short_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny fixture, its config saying it was trained for TRAINED tokens."""
    folder = tmp_path_factory.mktemp("short") / "tiny-4k"
    shutil.copytree(tiny_model, folder)
    config = folder / "config.json"
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "max_position_embeddings": TRAINED})
    )
    return folder


def served(
    model: Path, tmp_path: Path, *, cli: dict[str, str] | None = None, **sources: Any
) -> ServeConfig:
    """`serve`'s resolution: knobs, then the model's folder and its fitted config."""
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text(json.dumps(sources.get("yaml", {})))
    options = {"model": str(model), "config": str(yaml_file), **(cli or {})}
    config = resolve_serve_config(options, sources.get("env", {}), ram_bytes=RAM)
    fitted, folder = resolve_model(config, ram_bytes=RAM)
    assert folder == model.resolve()
    return fitted


def test_with_no_context_set_a_model_is_served_at_its_trained_context(
    short_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = served(short_model, tmp_path)
    assert config.max_context == TRAINED
    assert config.sources[MAX_CONTEXT.name] == "default (the model's trained context)"
    assert not caplog.records


def test_a_model_trained_longer_than_the_tier_is_served_at_the_tier(
    tiny_model: Path, tmp_path: Path
) -> None:
    config = served(tiny_model, tmp_path)  # trained for 262,144
    assert (config.max_context, config.sources[MAX_CONTEXT.name]) == (120_000, "default")


@pytest.mark.parametrize(
    ("sources", "where"),
    [
        ({"cli": {"max_context": "120000"}}, "--max-context"),
        ({"env": {MAX_CONTEXT.env: "120000"}}, f"env {MAX_CONTEXT.env}"),
        ({"yaml": {MAX_CONTEXT.yaml_key: 120000}}, f"({MAX_CONTEXT.yaml_key})"),
    ],
    ids=["flag", "env", "yaml"],
)
def test_a_set_context_past_the_trained_one_is_served_with_a_warning_naming_both(
    short_model: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    sources: dict[str, Any],
    where: str,
) -> None:
    with caplog.at_level(logging.WARNING, logger="macprovider.serve"):
        config = served(short_model, tmp_path, **sources)
    assert config.max_context == 120_000
    [record] = caplog.records
    message = record.getMessage()
    assert "\n" not in message
    assert "120000" in message and str(TRAINED) in message and where in message


def test_a_set_context_within_the_trained_one_is_served_silently(
    short_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = served(short_model, tmp_path, cli={"max_context": str(TRAINED)})
    assert (config.max_context, config.sources[MAX_CONTEXT.name]) == (TRAINED, "--max-context")
    assert not caplog.records


def test_the_memory_budget_counts_the_fitted_context(short_model: Path, tmp_path: Path) -> None:
    config = served(short_model, tmp_path, cli={"memory_limit_gb": "0.0001"})
    with pytest.raises(MemoryBudgetExceeded, match=f"at max context {TRAINED} "):
        check_memory_budget(config, short_model)


def test_run_forwards_the_fitted_context_to_its_provider(
    short_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [spec for spec in os.environ if spec.startswith("MACPROVIDER_")]:
        monkeypatch.delenv(name)
    (tmp_path / "config.yaml").write_text("{}")
    target = load_target({"model": str(short_model), "config": str(tmp_path / "config.yaml")})
    assert target.knobs.max_context == TRAINED


def test_smollm2_is_served_at_its_trained_8192_by_default(
    tmp_path: Path, smollm2_model: Path, smollm2_q4_model: Path
) -> None:
    for folder in (smollm2_model, smollm2_q4_model):
        assert served(folder, tmp_path).max_context == 8192
