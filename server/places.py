"""Where macprovider keeps its files: the XDG base directories, with their HOME fallbacks.

One rule for every folder, as the XDG Base Directory spec states it: `$XDG_CONFIG_HOME`,
`$XDG_STATE_HOME` or `$XDG_DATA_HOME` when set to an absolute path, else `~/.config`,
`~/.local/state` or `~/.local/share`. An empty
or relative value is ignored, as the spec says, rather than read against whatever the current
directory happens to be. `~` is `$HOME` when set and non-empty, else the account's home.
`MACPROVIDER_MODELS_DIR` is ours, not the spec's: a relative value is refused (ConfigError), not
ignored, since an operator who set it meant it. Pure functions of the environment mapping they
are given, so callers and tests can pass their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from macprovider.server.errors import ConfigError

__all__ = ["config_dir", "config_home", "home_dir", "models_dir", "state_dir"]

_APP_FOLDER = "macprovider"
MODELS_DIR_ENV = "MACPROVIDER_MODELS_DIR"


def home_dir(env: Mapping[str, str]) -> Path:
    """`$HOME` when set and non-empty, else the account's home directory."""
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _xdg_base(env: Mapping[str, str], var: str, *fallback: str) -> tuple[Path, str]:
    """The base folder `var` names, or `~/<fallback>`, and what chose it (`env VAR`, `default`)."""
    value = env.get(var, "")
    if value and Path(value).is_absolute():
        return Path(value), f"env {var}"
    return home_dir(env).joinpath(*fallback), "default"


def config_home(env: Mapping[str, str]) -> Path:
    """The user's config base: `$XDG_CONFIG_HOME`, else `~/.config` (systemd user units too)."""
    return _xdg_base(env, "XDG_CONFIG_HOME", ".config")[0]


def config_dir(env: Mapping[str, str]) -> tuple[Path, str]:
    """macprovider's config folder (config.yaml, the autotune DB) and what chose it:
    `env XDG_CONFIG_HOME`, or `default` for `~/.config/macprovider`."""
    base, source = _xdg_base(env, "XDG_CONFIG_HOME", ".config")
    return base / _APP_FOLDER, source


def state_dir(env: Mapping[str, str]) -> Path:
    """macprovider's state folder (the provider's logs): `$XDG_STATE_HOME/macprovider`, else
    `~/.local/state/macprovider`."""
    return _xdg_base(env, "XDG_STATE_HOME", ".local", "state")[0] / _APP_FOLDER


def models_dir(env: Mapping[str, str]) -> tuple[Path, str]:
    """The folder `models import` writes into and `serve --model NAME` looks in, and what chose
    it (`env MACPROVIDER_MODELS_DIR`, `env XDG_DATA_HOME` or `default`, for messages):
    `$MACPROVIDER_MODELS_DIR` (models are big, operators put them on another disk), else
    `$XDG_DATA_HOME/macprovider/models`, else `~/.local/share/macprovider/models`.

    An empty `$MACPROVIDER_MODELS_DIR` counts as unset; a relative one raises ConfigError (exit
    64): read against the current directory it would name a different folder for every command
    run from elsewhere, and ignoring it would send models where the operator did not ask."""
    override = env.get(MODELS_DIR_ENV, "")
    if override:
        if not Path(override).is_absolute():
            raise ConfigError(
                f"invalid {MODELS_DIR_ENV} {override!r} from env: must be an absolute path"
            )
        return Path(override), f"env {MODELS_DIR_ENV}"
    base, source = _xdg_base(env, "XDG_DATA_HOME", ".local", "share")
    return base / _APP_FOLDER / "models", source
