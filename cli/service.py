"""`macprovider-supervise service install|uninstall|status`: run `run` under launchd or systemd.

macOS gets a launchd agent, `~/Library/LaunchAgents/<label>.plist`; Linux a systemd user unit,
`$XDG_CONFIG_HOME/systemd/user/<unit>` (else `~/.config/systemd/user/<unit>`). Both start
`<this environment's macprovider-supervise> run` and restart it only after a failure.

Decisions:
- Templates. The canonical templates are `ops/launchd.plist.template` and
  `ops/systemd.service.template` (`string.Template` placeholders). The command reads the copies
  shipped in the package, `cli/templates/`, found next to this module's real path: a strict
  editable install links this file back to the source tree, and a wheel carries them as package
  data. A test keeps the two copies byte-identical, so they cannot drift.
- The service runs the `macprovider-supervise` script beside `sys.executable` (the environment
  this command runs from), else `sys.executable -m macprovider.cli`; always absolute paths, since
  neither launchd nor systemd searches our PATH. The plist sets PATH to that folder, then the
  usual system ones (launchd's default PATH has no Homebrew and no virtualenv).
- Nothing here runs launchctl or systemctl to change anything: `install` and `uninstall` print
  the exact commands to load, start, stop or unload, for the operator to run. `status` (and the
  guard of `uninstall`) only asks: `launchctl print`, `systemctl --user is-active`. The names,
  the commands, which states count as live and the timeout are `actors.service_manager`'s,
  shared with `autotune --drain`.
- `install` writes atomically (temp file, fsync, rename), mode 0644, creating missing folders
  (on macOS the log folder too: launchd does not create it). The same content already there is
  not rewritten; a different file is refused without `--force`.
- `uninstall` refuses, without `--force`, while the service is loaded (launchd), active or
  enabled (systemd): it prints the stop command to run first. Removing an enabled unit's file
  first would leave systemd's `default.target.wants` link dangling.
- `--dry-run` writes and removes nothing: `install --dry-run` prints the file on stdout (so it
  can be redirected) and where it would go on stderr.
- Errors: a bad `--label`/`--unit`/`--platform` is a click usage error (exit 64); any refusal
  or file-system failure is a one-line ServiceError (exit 73, mapped in exits.py).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Literal

import click

from macprovider.actors import service_manager as manager
from macprovider.actors.service_calls import run_tool
from macprovider.actors.service_manager import PLATFORMS, SHELL_UID, Platform, ServiceState
from macprovider.cli.atomic_file import replace_file
from macprovider.cli.errors import ServiceError
from macprovider.server.places import config_home

__all__ = [
    "PLATFORMS",
    "TEMPLATES_DIR",
    "ServiceError",
    "ServiceFile",
    "install",
    "manager_state",
    "service",
    "service_file",
    "supervise_command",
    "uninstall",
]

PROG = "macprovider-supervise"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PLIST_TEMPLATE = "launchd.plist.template"
UNIT_TEMPLATE = "systemd.service.template"
FILE_MODE = 0o644  # launchd refuses a plist others can write; nothing in it is secret
SYSTEM_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # also a file name: no `/`, no leading dot
_UNIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.-]*\.service")
_SYSTEMD_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")  # an ExecStart word that needs no quotes


@dataclass(frozen=True)
class ServiceFile:
    """What `install` writes for one platform, and where."""

    platform: Platform
    name: str  # the launchd label or the systemd unit
    path: Path
    content: str
    extra_dirs: tuple[Path, ...]  # folders the service needs besides the file's own

    @property
    def kind(self) -> str:
        return "launchd agent" if self.platform == "macos" else "systemd user unit"


# --- the file -------------------------------------------------------------------------------


def supervise_command(executable: str = sys.executable) -> list[str]:
    """The absolute command that runs this environment's `macprovider-supervise`."""
    python = os.path.abspath(executable)  # not resolved: a venv's python is a symlink out of it
    script = Path(python).parent / PROG
    if os.access(script, os.X_OK):
        return [str(script)]
    return [python, "-m", "macprovider.cli"]


def service_file(
    platform: Platform, label: str, unit: str, env: Mapping[str, str], command: list[str]
) -> ServiceFile:
    """The file `install` would write for `platform`, running `command run`."""
    home = Path(env.get("HOME") or Path.home())
    argv = [*command, "run"]
    if platform == "macos":
        log_dir = home / "Library" / "Logs" / "macprovider"
        path = home / "Library" / "LaunchAgents" / f"{label}.plist"
        return ServiceFile(platform, label, path, _plist(label, argv, log_dir), (log_dir,))
    path = config_home(env) / "systemd" / "user" / unit
    return ServiceFile(platform, unit, path, _unit(argv), ())


def _plist(label: str, argv: list[str], log_dir: Path) -> str:
    bin_dir = str(Path(argv[0]).parent)
    path = ":".join(dict.fromkeys((bin_dir, *SYSTEM_PATH)))  # in order, without repeats
    arguments = "\n".join(f"\t\t<string>{_xml(arg)}</string>" for arg in argv)
    return _template(PLIST_TEMPLATE).substitute(
        label=_xml(label),
        program_arguments=arguments,
        path=_xml(path),
        log_file=_xml(str(log_dir / "run.log")),  # one file: stdout and stderr interleave
    )


def _unit(argv: list[str]) -> str:
    exec_start = " ".join(_systemd_word(arg, first=i == 0) for i, arg in enumerate(argv))
    return _template(UNIT_TEMPLATE).substitute(exec_start=exec_start)


def _template(name: str) -> Template:
    try:
        return Template((TEMPLATES_DIR / name).read_text(encoding="utf-8"))
    except OSError as err:
        raise ServiceError(f"cannot read the template {name}: {_reason(err)}") from None


def _printable(value: str) -> str:
    # A control character would end a unit's line or make the plist invalid XML.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ServiceError(f"cannot write {value!r} into a service file (control character)")
    return value


def _xml(value: str) -> str:
    # Imported here: xml.sax pulls in urllib and http.client (about 2 MB), and this module is
    # loaded by every command, `serve` included.
    from xml.sax.saxutils import escape

    return escape(_printable(value), {'"': "&quot;"})


def _systemd_word(arg: str, *, first: bool) -> str:
    """One ExecStart word. `%` specifiers are expanded in every word, so `%` is doubled;
    `$VAR` only in the arguments (the program's path is taken literally), so `$` is doubled
    there alone. Whitespace, quotes and backslashes need double quotes and escapes."""
    word = _printable(arg).replace("%", "%%")
    if not first:
        word = word.replace("$", "$$")
    if _SYSTEMD_BARE.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- what the operator runs -----------------------------------------------------------------


# systemd's enable and disable (a drain only stops and starts) make the unit start, or no
# longer start, at every login; a launchd agent in LaunchAgents is loaded at login anyway.


def start_commands(file: ServiceFile) -> list[str]:
    if file.platform == "macos":
        bootstrap = manager.start("macos", file.name, uid=SHELL_UID, plist=file.path)
        return [manager.shell_command(bootstrap)]
    return [f"systemctl --user daemon-reload && systemctl --user enable --now {file.name}"]


def reload_commands(file: ServiceFile) -> list[str]:
    """How a running service picks up a replaced file (a loaded launchd job keeps the old one)."""
    if file.platform == "macos":
        return [*stop_commands(file), *start_commands(file)]
    restart = manager.shell_command(manager.restart("linux", file.name, uid=SHELL_UID))
    return [f"systemctl --user daemon-reload && {restart}"]


def stop_commands(file: ServiceFile) -> list[str]:
    if file.platform == "macos":
        return [manager.shell_command(manager.stop("macos", file.name, uid=SHELL_UID))]
    return [f"systemctl --user disable --now {file.name}"]


def _after_removal(file: ServiceFile) -> list[str]:
    return [] if file.platform == "macos" else ["systemctl --user daemon-reload"]


# --- install and uninstall ------------------------------------------------------------------


Installed = Literal["created", "replaced", "unchanged"]


def install(file: ServiceFile, *, force: bool, dry_run: bool) -> Installed:
    """Writes `file` unless it is already there as is; says what it did (or would do)."""
    data = file.content.encode()
    existing = _read(file.path)
    if existing == data:
        return "unchanged"
    if existing is not None and not force:
        raise ServiceError(
            f"{file.path} exists and differs from what install writes; "
            "--dry-run shows the new one, --force replaces it"
        )
    outcome: Installed = "created" if existing is None else "replaced"
    if dry_run:
        return outcome
    try:
        for folder in (file.path.parent, *file.extra_dirs):
            folder.mkdir(parents=True, exist_ok=True)
        replace_file(file.path, data, FILE_MODE)
    except OSError as err:
        raise ServiceError(f"cannot write {file.path}: {_reason(err)}") from None
    return outcome


def uninstall(file: ServiceFile, *, force: bool, dry_run: bool) -> bool:
    """Removes `file`; returns whether it was there. Refuses while the service is in use."""
    if not file.path.exists() and not file.path.is_symlink():
        return False
    in_use = _in_use(file)
    if in_use and not force:
        first = " && ".join(stop_commands(file))
        raise ServiceError(
            f"{file.name} is {in_use}; stop it first: {first} (or pass --force to remove anyway)"
        )
    if not dry_run:
        try:
            file.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as err:
            raise ServiceError(f"cannot remove {file.path}: {_reason(err)}") from None
    return True


def _in_use(file: ServiceFile) -> str | None:
    """Why removing the file now would strand the service, or None."""
    state = manager_state(file)
    if state.live:
        return state.text  # "loaded", or systemd's word for it ("active", "activating"…)
    if file.platform == "linux" and any(file.path.parent.glob(f"*.wants/{file.name}")):
        return "enabled"
    return None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ServiceError(f"cannot read {path}: {_reason(err)}") from None


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


# --- asking the service manager -------------------------------------------------------------


def manager_state(file: ServiceFile) -> ServiceState:
    """Asks launchd whether the label is loaded, or systemd whether the unit is live."""
    query = manager.query(file.platform, file.name, uid=os.getuid())
    # launchctl/systemctl: the PATH's, as a shell would find them.
    return manager.service_state(file.platform, run_tool(query, os.environ))


# --- the command line -----------------------------------------------------------------------


def _label(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _LABEL.fullmatch(value):
        raise click.BadParameter(f"{value!r}: letters, digits, '.', '_' and '-' only")
    return value


def _unit_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _UNIT.fullmatch(value):
        raise click.BadParameter(f"{value!r}: a unit name ending in .service")
    return value


def _platform(value: Platform | None) -> Platform:
    found = value or manager.platform_of(sys.platform)
    if found is not None:
        return found
    raise click.UsageError(f"no launchd or systemd on {sys.platform}; choose one with --platform")


def _target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every subcommand shares: which platform, and the service's name on each."""
    fn = click.option(
        "--unit",
        default=manager.SYSTEMD_UNIT,
        show_default=True,
        callback=_unit_name,
        help="The systemd user unit (Linux).",
    )(fn)
    fn = click.option(
        "--label",
        default=manager.LAUNCHD_LABEL,
        show_default=True,
        callback=_label,
        help="The launchd label (macOS); the plist is <label>.plist.",
    )(fn)
    return click.option(
        "--platform",
        type=click.Choice(PLATFORMS),
        default=None,
        help="Write for this service manager. [default: this machine's]",
    )(fn)


def _file(platform: Platform | None, label: str, unit: str) -> ServiceFile:
    return service_file(_platform(platform), label, unit, os.environ, supervise_command())


def _say(*lines: str) -> None:
    """Commentary goes to stderr; stdout carries only data (the file, the status lines)."""
    for line in lines:
        click.echo(line, err=True)


def _indented(commands: list[str]) -> list[str]:
    return [f"  {command}" for command in commands]


@click.group("service")
def service() -> None:
    """Install `run` as a launchd agent (macOS) or a systemd user service (Linux).

    Nothing is started or stopped here: install and uninstall print the launchctl or
    systemctl commands to run. Exit codes: 64 bad flag, 73 refused or cannot write.
    """


@service.command("install", short_help="Write the plist or unit that keeps `run` alive.")
@_target_options
@click.option("--force", is_flag=True, help="Replace an existing file that differs.")
@click.option("--dry-run", is_flag=True, help="Print the file and where it goes; write nothing.")
def install_command(
    platform: Platform | None, label: str, unit: str, force: bool, dry_run: bool
) -> int:
    """Write the plist or unit that runs `macprovider-supervise run`, restarted on failure."""
    file = _file(platform, label, unit)
    outcome = install(file, force=force, dry_run=dry_run)
    if dry_run:
        click.echo(file.content, nl=False)
        verb = {"created": "would write", "replaced": "would replace"}.get(outcome)
        _say(f"{PROG}: {verb or 'would leave (already installed as is)'} {file.path}")
        return 0
    if outcome == "unchanged":
        _say(f"{PROG}: {file.path} is already installed as is (nothing written)")
    else:
        _say(f"{PROG}: {outcome} the {file.kind} {file.path}")
    _say("to start it now and at every login, run:", *_indented(start_commands(file)))
    if outcome == "replaced":
        _say("if it is running, restart it on the new file:", *_indented(reload_commands(file)))
    return 0


@service.command("uninstall", short_help="Remove it (refused while it runs).")
@_target_options
@click.option("--force", is_flag=True, help="Remove the file even while the service is in use.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def uninstall_command(
    platform: Platform | None, label: str, unit: str, force: bool, dry_run: bool
) -> int:
    """Remove the plist or unit (stop the service first: the refusal says how)."""
    file = _file(platform, label, unit)
    if not uninstall(file, force=force, dry_run=dry_run):
        _say(f"{PROG}: {file.path} is not installed (nothing to remove)")
        return 0
    _say(f"{PROG}: {'would remove' if dry_run else 'removed'} the {file.kind} {file.path}")
    follow_up = (stop_commands(file) if force else []) + _after_removal(file)
    if follow_up:
        _say("then run:", *_indented(follow_up))
    return 0


@service.command("status", short_help="Is it installed, loaded, active?")
@_target_options
def status_command(platform: Platform | None, label: str, unit: str) -> int:
    """Say whether the service file is installed, and whether launchd/systemd runs it."""
    file = _file(platform, label, unit)
    existing = _read(file.path)
    if existing is None:
        click.echo(f"{file.kind} {file.name}: not installed ({file.path} does not exist)")
    elif existing == file.content.encode():
        click.echo(f"{file.kind} {file.name}: installed at {file.path}")
    else:
        click.echo(
            f"{file.kind} {file.name}: installed at {file.path}, but not as install would write "
            "it now (install --force updates it)"
        )
    manager = "launchd" if file.platform == "macos" else "systemd"
    click.echo(f"{manager}: {manager_state(file).text}")
    return 0
