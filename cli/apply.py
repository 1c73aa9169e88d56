"""`autotune --apply`: write a recommendation into the YAML config `serve` reads.

`owned_keys` rewrites the text; this module finds the config, backs it up and writes it.

Decisions:
- When the new bytes equal the old ones nothing is written and no backup is made: `changed` is
  False and the `applied:` line says so.
- A symlinked config is written through (its target is replaced, the link stays).
- A missing config is created with mode 0o600 (it holds `provider_token`), its own folder with
  0o700. Text that is not UTF-8 is refused, the file untouched.
- The backup is a byte-identical copy beside the config, `<name>.bak-<ts>-<n>`.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from macprovider.actors import service_manager as manager
from macprovider.actors.stop_signals import STOP
from macprovider.cli.atomic_file import create_file, replace_file
from macprovider.cli.owned_keys import OwnedValue, cannot_apply, rewrite_owned_keys
from macprovider.server.config import CONFIG_OPTION, MODEL, config_location

__all__ = [
    "MAX_BACKUP_COUNTER",
    "NEW_CONFIG_MODE",
    "Applied",
    "applied_line",
    "apply_to_config",
    "config_path",
    "owned_values",
    "restart_hint",
]

MAX_BACKUP_COUNTER = 65535
NEW_CONFIG_MODE = 0o600  # the config holds provider_token
_NEW_CONFIG_DIR_MODE = 0o700


@dataclass(frozen=True)
class Applied:
    """What an apply did; `config_path` is the path given (a symlink stays one)."""

    config_path: Path
    backup_path: Path | None  # None: the file was created, or nothing changed
    changed: bool


def config_path(flag: str | None, env: Mapping[str, str]) -> Path:
    """The config `serve` would read: `--config`, else MACPROVIDER_CONFIG, else the XDG default.

    Raises ConfigError (exit 64) for an empty path, as `serve` does.
    """
    path, _source, _explicit = config_location({CONFIG_OPTION.name: flag}, env)
    return path


def owned_values(model: str, knobs: Mapping[str, int | None]) -> dict[str, OwnedValue]:
    """What `--apply` writes: the model plus `Recommendation.knobs()` (already YAML-named)."""
    return {MODEL.yaml_key: model, **knobs}


# --- the file -----------------------------------------------------------------------------------


def apply_to_config(
    path: Path,
    values: Mapping[str, OwnedValue],
    *,
    now: Callable[[], float] = time.time,
    before_write: Callable[[bytes], None] | None = None,
) -> Applied:
    """Rewrite the owned keys of the config at `path` atomically, after a backup of it.

    A missing file (and its folders) is created with just the owned keys, mode 0o600, no backup.
    When nothing would change, nothing is written. `before_write(new_bytes)` runs just before
    the config is written (autotune records there what it is about to write). Raises ApplyError,
    or `Interrupted` when a stop signal came before the commit point; the config is then as it
    was, and no temporary file or backup of this call is left behind.
    """
    target = Path(os.path.realpath(path))  # through a symlink: replace its target, keep the link
    original = _read(target, path)
    text = "" if original is None else _decode(original, path)
    new = rewrite_owned_keys(text, values, source=str(path)).encode()
    if new == original:
        return Applied(path, None, changed=False)
    STOP.raise_if_requested()
    try:
        if original is None:
            target.parent.mkdir(mode=_NEW_CONFIG_DIR_MODE, parents=True, exist_ok=True)
            _write(target, new, NEW_CONFIG_MODE, before_write)
            return Applied(path, None, changed=True)
        mode = stat.S_IMODE(os.stat(target).st_mode)
        backup = _backup(target, original, mode, int(now()), path)
        try:
            _write(target, new, mode, before_write)
        except BaseException:
            backup.unlink(missing_ok=True)  # the config is unchanged: its copy is noise
            raise
        return Applied(path, backup, changed=True)
    except OSError as err:
        raise cannot_apply(str(path), _os_reason(err)) from None


def _write(
    target: Path, data: bytes, mode: int, before_write: Callable[[bytes], None] | None
) -> None:
    if before_write is not None:
        before_write(data)
    replace_file(target, data, mode)


def _os_reason(err: OSError) -> str:
    reason = err.strerror or str(err)
    return f"{reason}: {err.filename}" if err.filename else reason


def _read(target: Path, path: Path) -> bytes | None:
    try:
        return target.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise cannot_apply(str(path), _os_reason(err)) from None


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise cannot_apply(
            str(path), f"not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None


def _backup(target: Path, data: bytes, mode: int, ts: int, path: Path) -> Path:
    """A byte-identical copy of the config, `<name>.bak-<ts>-<n>` with the lowest free n."""
    for n in range(MAX_BACKUP_COUNTER + 1):
        backup = target.with_name(f"{target.name}.bak-{ts}-{n}")
        if create_file(backup, data, mode):
            return backup
    raise cannot_apply(
        str(path), f"backups {target.name}.bak-{ts}-0 to -{MAX_BACKUP_COUNTER} all exist"
    )


# --- what the operator reads ----------------------------------------------------------------------


def applied_line(applied: Applied) -> str:
    """The one `applied: …` line for stdout."""
    if not applied.changed:
        return f"applied: {applied.config_path} already holds these values (nothing written)"
    if applied.backup_path is None:
        return f"applied: created {applied.config_path}"
    return f"applied: {applied.config_path} (backup: {applied.backup_path})"


def restart_hint(platform: str = sys.platform) -> str:
    """How to make a running provider read the new config (for stderr, when not draining)."""
    by_hand = "stop it and start it again"
    manager_platform = manager.platform_of(platform)
    if manager_platform is None:
        return f"to use the new config, restart the provider: {by_hand}"
    name = manager.DEFAULT_NAMES.name(manager_platform)
    argv = manager.restart(manager_platform, name, uid=manager.SHELL_UID)
    service = manager.shell_command(argv)
    return f"to use the new config, restart the provider: {service} (started by hand: {by_hand})"
