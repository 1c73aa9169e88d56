"""The provider's service under launchd (macOS) and systemd (Linux): its names, the
`launchctl` / `systemctl` commands that ask about it, stop it and start it, and what their
answers mean.

One owner for three callers: `autotune --drain` (the DrainActor), `service status` and the
guard of `service uninstall`, and the restart hint `autotune --apply` prints. Everything here
is pure; `service_calls.run_tool` runs a command and returns the `ToolResult` read here.

Decisions:
- Live means "would hold the port during a tuning run, or be stranded if its file went away".
  launchd: the label is loaded in the user's GUI domain (`launchctl print` succeeds), running
  or not: a loaded job can be started at any moment (KeepAlive, a socket, a login).
  systemd: `is-active` says `active`, `reloading`, `refreshing` (running, re-reading its
  configuration or extensions) or `activating` (starting, or waiting out `Restart=on-failure`'s
  pause: it takes the port seconds later). Not `deactivating`: the service is already
  stopping on purpose; draining it would start it again afterwards, and uninstalling its file
  is what the operator is about to do anyway. Not `inactive`, `failed` or `maintenance`.
- One timeout, 10 s, for every call. A healthy manager answers a query in milliseconds, so
  the bound matters only when it hangs (no user bus, launchd wedged), and then 10 s is still
  a short wait for `status`. But `systemctl --user stop` and `launchctl bootout` return only
  once the service's processes are gone: `run` stops its provider gracefully (serve drains
  its requests for up to 3 s, then wraps up), so a bound near 5 s would call a slow but
  correct stop a failure.
- A drain stops and starts (`systemctl stop/start`, `launchctl bootout/bootstrap`), never
  disables or enables: the service stays installed as the operator left it. `service install`
  prints its own enable/disable commands for that.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "COMMAND_TIMEOUT_S",
    "DEFAULT_NAMES",
    "LAUNCHD_LABEL",
    "LIVE_SYSTEMD_STATES",
    "NOT_ON_PATH",
    "PLATFORMS",
    "SHELL_UID",
    "SYSTEMD_UNIT",
    "LaunchdEntry",
    "Platform",
    "ServiceNames",
    "ServiceState",
    "ToolResult",
    "launchd_domain",
    "launchd_list",
    "launchd_target",
    "main_pid_from_show",
    "parse_launchctl_list",
    "platform_of",
    "plist_path_from_print",
    "query",
    "restart",
    "service_state",
    "shell_command",
    "start",
    "stop",
    "systemd_main_pid",
]

Platform = Literal["macos", "linux"]
PLATFORMS: Final[tuple[Platform, ...]] = ("macos", "linux")

LAUNCHD_LABEL: Final = "live.streamvc.macprovider"
SYSTEMD_UNIT: Final = "macprovider.service"

COMMAND_TIMEOUT_S: Final = 10.0  # see the module docstring
LIVE_SYSTEMD_STATES: Final = frozenset({"active", "reloading", "refreshing", "activating"})

# In a command printed for the operator's shell, where their uid is looked up when they run it.
SHELL_UID: Final = "$(id -u)"
NOT_ON_PATH: Final = "is not on PATH"

_PLIST_PATH: Final = re.compile(r"^\s*path = (.+\.plist)\s*$", re.MULTILINE)

Uid = int | str  # a number, or SHELL_UID


def platform_of(sys_platform: str) -> Platform | None:
    """The service manager of a `sys.platform`: launchd on darwin, systemd on linux."""
    if sys_platform == "darwin":
        return "macos"
    if sys_platform.startswith("linux"):
        return "linux"
    return None


@dataclass(frozen=True)
class ServiceNames:
    """The names a provider service is installed under (`service install`'s defaults)."""

    launchd_label: str = LAUNCHD_LABEL
    systemd_unit: str = SYSTEMD_UNIT

    def launchd_plist(self, home: Path) -> Path:
        return home / "Library" / "LaunchAgents" / f"{self.launchd_label}.plist"

    def name(self, platform: Platform) -> str:
        return self.launchd_label if platform == "macos" else self.systemd_unit


DEFAULT_NAMES: Final = ServiceNames()


# --- the commands ----------------------------------------------------------------------------
# Each returns an argv naming the tool bare (`run_tool` finds it on PATH); `name` is the
# launchd label or the systemd unit.


def launchd_domain(uid: Uid) -> str:
    return f"gui/{uid}"


def launchd_target(uid: Uid, label: str) -> str:
    return f"{launchd_domain(uid)}/{label}"


def query(platform: Platform, name: str, *, uid: Uid) -> list[str]:
    """The command whose answer `service_state` reads."""
    if platform == "macos":
        return ["launchctl", "print", launchd_target(uid, name)]
    return ["systemctl", "--user", "is-active", name]


def launchd_list() -> list[str]:
    """Every loaded job with its PID and last exit status (`parse_launchctl_list`)."""
    return ["launchctl", "list"]


def systemd_main_pid(unit: str) -> list[str]:
    """The unit's main PID, a bare number, 0 when none (`main_pid_from_show`)."""
    return ["systemctl", "--user", "show", "--property=MainPID", "--value", unit]


def stop(platform: Platform, name: str, *, uid: Uid) -> list[str]:
    if platform == "macos":
        return ["launchctl", "bootout", launchd_target(uid, name)]
    return ["systemctl", "--user", "stop", name]


def start(platform: Platform, name: str, *, uid: Uid, plist: Path) -> list[str]:
    """launchd loads a job from its plist (`name` unused); systemd starts the unit by name."""
    if platform == "macos":
        return ["launchctl", "bootstrap", launchd_domain(uid), str(plist)]
    return ["systemctl", "--user", "start", name]


def restart(platform: Platform, name: str, *, uid: Uid) -> list[str]:
    """Stops and starts a running service in one step, so it reads its config again."""
    if platform == "macos":
        return ["launchctl", "kickstart", "-k", launchd_target(uid, name)]
    return ["systemctl", "--user", "restart", name]


def shell_command(argv: Sequence[str]) -> str:
    """An argv as the operator types it: each word quoted for a shell, except one holding
    SHELL_UID, which must stay unquoted to expand (the label beside it is validated)."""
    return " ".join(word if SHELL_UID in word else shlex.quote(word) for word in argv)


# --- the answers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolResult:
    """One `launchctl` / `systemctl` call as it ended."""

    argv: tuple[str, ...]  # as asked: the tool's bare name first
    code: int | None = None  # None: it did not run, or gave no answer in time
    stdout: str = ""
    stderr: str = ""
    unavailable: str = ""  # why `code` is None: NOT_ON_PATH, "gave no answer within 10 s", …

    @property
    def tool(self) -> str:
        return self.argv[0]

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def problem(self) -> str:
        """Why it failed, one line: what the tool said last, or why it said nothing."""
        if self.code is None:
            return f"{self.tool} {self.unavailable}"
        said = self.stderr.strip().splitlines() or self.stdout.strip().splitlines()
        return f"exit {self.code}" + (f": {said[-1].strip()}" if said else "")


@dataclass(frozen=True)
class ServiceState:
    """What the service manager says: `live` is None when it cannot say."""

    live: bool | None
    text: str  # "loaded", "not loaded", systemd's word ("active", "failed"…), "unknown (…)"


def service_state(platform: Platform, answer: ToolResult) -> ServiceState:
    """The state `query(platform, …)` answered."""
    if answer.code is None:
        return ServiceState(None, f"unknown ({answer.problem})")
    if platform == "macos":
        # `print` fails (113) for a label not loaded in the domain; its text is for people.
        loaded = answer.code == 0
        return ServiceState(loaded, "loaded" if loaded else "not loaded")
    # `is-active` prints the state whatever its exit status; with no user manager to ask it
    # prints nothing on stdout and says why on stderr.
    words = answer.stdout.split()
    if words:
        return ServiceState(words[0] in LIVE_SYSTEMD_STATES, words[0])
    why = answer.stderr.strip().splitlines()
    return ServiceState(
        None, f"unknown ({answer.tool}: {why[0] if why else f'exit {answer.code}'})"
    )


@dataclass(frozen=True)
class LaunchdEntry:
    """The label's line in `launchctl list`."""

    pid: int | None  # None: loaded but not running (`-`)
    status: str  # the last exit status launchd saw


def parse_launchctl_list(text: str, label: str) -> LaunchdEntry | None:
    """The line whose LABEL column equals `label` exactly (`PID\\tStatus\\tLabel` lines)."""
    for line in text.splitlines():
        # Tab-separated in launchctl's output; whitespace as a fallback for hand-made text.
        fields = line.split("\t") if "\t" in line else line.split(None, 2)
        if len(fields) != 3 or fields[2].strip() != label:
            continue
        pid = fields[0].strip()
        return LaunchdEntry(int(pid) if pid.isdigit() else None, fields[1].strip())
    return None


def plist_path_from_print(text: str) -> Path | None:
    """The plist a loaded job came from (`path = …` in `launchctl print`), if it says."""
    match = _PLIST_PATH.search(text)
    return Path(match.group(1)) if match else None


def main_pid_from_show(answer: ToolResult) -> int | None:
    """The main PID `systemd_main_pid` answered; None when it has none or did not say."""
    value = answer.stdout.strip()
    return int(value) if answer.ok and value.isdigit() and int(value) > 0 else None
