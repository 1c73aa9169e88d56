"""The XDG folder rule: an absolute XDG variable wins; unset, empty or relative falls back to
HOME (and HOME unset or empty to the account's home)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from macprovider.server.errors import ConfigError
from macprovider.server.places import config_dir, config_home, home_dir, models_dir, state_dir

HOME = "/home/op"

# (env, config_home, config_dir with its source, state_dir)
CASES: list[tuple[dict[str, str], str, tuple[str, str], str]] = [
    (
        {"HOME": HOME, "XDG_CONFIG_HOME": "/x/cfg", "XDG_STATE_HOME": "/x/state"},
        "/x/cfg",
        ("/x/cfg/macprovider", "env XDG_CONFIG_HOME"),
        "/x/state/macprovider",
    ),
    (
        {"HOME": HOME},
        f"{HOME}/.config",
        (f"{HOME}/.config/macprovider", "default"),
        f"{HOME}/.local/state/macprovider",
    ),
    (
        {"HOME": HOME, "XDG_CONFIG_HOME": "", "XDG_STATE_HOME": ""},
        f"{HOME}/.config",
        (f"{HOME}/.config/macprovider", "default"),
        f"{HOME}/.local/state/macprovider",
    ),
    (
        {"HOME": HOME, "XDG_CONFIG_HOME": "rel/cfg", "XDG_STATE_HOME": "./state"},
        f"{HOME}/.config",
        (f"{HOME}/.config/macprovider", "default"),
        f"{HOME}/.local/state/macprovider",
    ),
    (
        {"HOME": HOME, "XDG_CONFIG_HOME": "/x/cfg"},
        "/x/cfg",
        ("/x/cfg/macprovider", "env XDG_CONFIG_HOME"),
        f"{HOME}/.local/state/macprovider",
    ),
]


@pytest.mark.parametrize(
    ("env", "home", "config", "state"),
    CASES,
    ids=["xdg-absolute", "xdg-unset", "xdg-empty", "xdg-relative", "only-config-set"],
)
def test_xdg_folders(
    env: Mapping[str, str], home: str, config: tuple[str, str], state: str
) -> None:
    assert config_home(env) == Path(home)
    assert config_dir(env) == (Path(config[0]), config[1])
    assert state_dir(env) == Path(state)


@pytest.mark.parametrize("env", [{}, {"HOME": ""}], ids=["home-unset", "home-empty"])
def test_without_home_the_accounts_home_is_used(env: Mapping[str, str]) -> None:
    assert home_dir(env) == Path.home()
    assert config_dir(env) == (Path.home() / ".config" / "macprovider", "default")
    assert state_dir(env) == Path.home() / ".local" / "state" / "macprovider"


@pytest.mark.parametrize("folder", [config_home, state_dir], ids=["config", "state"])
def test_a_relative_xdg_value_never_reads_against_the_current_directory(
    folder: Callable[[Mapping[str, str]], Path],
) -> None:
    env = {"HOME": HOME, "XDG_CONFIG_HOME": "cfg", "XDG_STATE_HOME": "state"}
    assert folder(env).is_absolute()


@pytest.mark.parametrize(
    ("env", "folder", "source"),
    [
        ({"HOME": HOME}, f"{HOME}/.local/share/macprovider/models", "default"),
        (
            {"HOME": HOME, "XDG_DATA_HOME": "/x/data"},
            "/x/data/macprovider/models",
            "env XDG_DATA_HOME",
        ),
        (
            {"HOME": HOME, "XDG_DATA_HOME": "data"},
            f"{HOME}/.local/share/macprovider/models",
            "default",
        ),
        (
            {"HOME": HOME, "XDG_DATA_HOME": "/x/data", "MACPROVIDER_MODELS_DIR": "/big/disk"},
            "/big/disk",
            "env MACPROVIDER_MODELS_DIR",
        ),
        # Empty is unset, as for the XDG variables.
        (
            {"HOME": HOME, "MACPROVIDER_MODELS_DIR": ""},
            f"{HOME}/.local/share/macprovider/models",
            "default",
        ),
    ],
    ids=["default", "xdg-data", "xdg-relative", "override", "override-empty"],
)
def test_models_folder(env: Mapping[str, str], folder: str, source: str) -> None:
    assert models_dir(env) == (Path(folder), source)


@pytest.mark.parametrize("value", ["models", "./models", "~/models"])
def test_a_relative_models_dir_variable_is_refused_naming_it(value: str) -> None:
    """Ours, not the spec's: set, it was meant, so it is refused rather than ignored (which
    would put models in the default folder) or read against whatever the cwd is."""
    with pytest.raises(ConfigError) as refused:
        models_dir({"HOME": HOME, "MACPROVIDER_MODELS_DIR": value})
    assert str(refused.value) == (
        f"invalid MACPROVIDER_MODELS_DIR {value!r} from env: must be an absolute path"
    )
