"""The command trees' shape: which children, in which order, and which finalize the run.
The trees running for real are tested by the Tuner's supervised rig (`test_tuner.py`) and
the interrupt harness (`test_interrupts.py`), which build them here too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from macprovider.actors.autotune_inputs import TuneSettings
from macprovider.actors.keeper import Target
from macprovider.actors.messages import Knobs
from macprovider.actors.supervisor import ChildSpec
from macprovider.actors.trees import AutotuneJob, autotune_tree, provider_env, run_tree
from tests.actors.test_store import make_run


def autotune_children(tmp_path: Path) -> tuple[ChildSpec, ...]:
    job = AutotuneJob(TuneSettings(candidates=("m",)), make_run("r"), tmp_path / "db", tmp_path, {})
    return autotune_tree(job).children


def run_children(tmp_path: Path) -> tuple[ChildSpec, ...]:
    target = Target("m", 8000, Knobs(), tmp_path / "config.yaml")
    return run_tree(target, lambda: target, tmp_path, {}).children


@pytest.mark.parametrize(
    ("children", "order", "finalized"),
    [
        # The drain restores last and the store closes the run after the work and the
        # providers are stopped; the tuner's finalizer is its cancel event, set first.
        (
            autotune_children,
            ["drain", "store", "provider", "prewarm", "probe", "tuner"],
            ["drain", "store", "tuner"],
        ),
        (run_children, ["provider", "keeper"], []),
    ],
    ids=["autotune", "run"],
)
def test_children_in_start_order_with_their_finalizers(
    tmp_path: Path,
    children: Callable[[Path], tuple[ChildSpec, ...]],
    order: list[str],
    finalized: list[str],
) -> None:
    built = children(tmp_path)
    assert [child.name for child in built] == order
    assert [child.name for child in built if child.finalize is not None] == finalized


@pytest.mark.parametrize(
    ("env", "kept"),
    [
        ({"PATH": "/bin", "HOME": "/h"}, {"PATH": "/bin", "HOME": "/h"}),
        (
            {"MACPROVIDER_API_KEY": "k", "MACPROVIDER_KV_BITS": "4", "PATH": "/bin"},
            {"PATH": "/bin"},
        ),
        ({"XDG_CONFIG_HOME": "/home/me/.config"}, {}),
        (
            {"MACPROVIDER_MODELS_DIR": "/disk/models", "MACPROVIDER_MODEL": "m"},
            {"MACPROVIDER_MODELS_DIR": "/disk/models"},
        ),
    ],
    ids=[
        "passes-the-rest",
        "hides-our-variables",
        "hides-the-config-file",
        "keeps-the-models-folder",
    ],
)
def test_autotunes_providers_see_no_config_of_the_operator(
    env: dict[str, str], kept: dict[str, str]
) -> None:
    state = Path("/state")
    assert provider_env(env, state) == kept | {"XDG_CONFIG_HOME": "/state/no-config"}
