"""Fixtures of the `autotune` end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.autotune_runs import Autotune, Models


@pytest.fixture
def autotune(tmp_path: Path) -> Autotune:
    return Autotune(tmp_path)


@pytest.fixture
def models(fixtures_dir: Path) -> Models:
    """`models("large", "tiny")` → the `--candidate-models` value for those fixtures."""
    return lambda *names: ",".join(str(fixtures_dir / name) for name in names)
