"""The provider's service under launchd and systemd: the commands, how their answers map to
states (tables), and the same mapping end to end through `run_tool` and the fake
`launchctl` / `systemctl` of fake_services.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from macprovider.actors import service_calls
from macprovider.actors.service_calls import run_tool
from macprovider.actors.service_manager import (
    NOT_ON_PATH,
    SHELL_UID,
    LaunchdEntry,
    Platform,
    ServiceNames,
    ServiceState,
    ToolResult,
    main_pid_from_show,
    parse_launchctl_list,
    platform_of,
    plist_path_from_print,
    query,
    restart,
    service_state,
    shell_command,
    start,
    stop,
)
from tests.actors.fake_services import FakeServices
from tests.conftest import clean_env

LABEL = "live.streamvc.macprovider"
UNIT = "macprovider.service"
PLIST = Path(f"/Users/op/Library/LaunchAgents/{LABEL}.plist")
IS_ACTIVE = ("systemctl", "--user", "is-active", UNIT)
PRINT = ("launchctl", "print", f"gui/501/{LABEL}")

# --- what the answers mean -----------------------------------------------------------------


def answer(
    argv: tuple[str, ...], code: int | None, stdout: str = "", stderr: str = ""
) -> ToolResult:
    return ToolResult(argv, code, stdout, stderr)


@pytest.mark.parametrize(
    ("result", "state"),
    [
        (answer(IS_ACTIVE, 0, "active\n"), ServiceState(True, "active")),
        (answer(IS_ACTIVE, 0, "reloading\n"), ServiceState(True, "reloading")),
        (answer(IS_ACTIVE, 0, "refreshing\n"), ServiceState(True, "refreshing")),
        # Starting, or waiting out Restart=on-failure's pause: it takes the port seconds later.
        (answer(IS_ACTIVE, 3, "activating\n"), ServiceState(True, "activating")),
        # Already stopping on purpose: neither drained (and started again) nor guarded.
        (answer(IS_ACTIVE, 3, "deactivating\n"), ServiceState(False, "deactivating")),
        (answer(IS_ACTIVE, 3, "inactive\n"), ServiceState(False, "inactive")),
        (answer(IS_ACTIVE, 3, "failed\n"), ServiceState(False, "failed")),
        (answer(IS_ACTIVE, 3, "maintenance\n"), ServiceState(False, "maintenance")),
        (
            answer(IS_ACTIVE, 1, "", "Failed to connect to bus: No medium found\n"),
            ServiceState(None, "unknown (systemctl: Failed to connect to bus: No medium found)"),
        ),
        (answer(IS_ACTIVE, 1), ServiceState(None, "unknown (systemctl: exit 1)")),
        (
            ToolResult(IS_ACTIVE, unavailable=NOT_ON_PATH),
            ServiceState(None, "unknown (systemctl is not on PATH)"),
        ),
        (
            ToolResult(IS_ACTIVE, unavailable="gave no answer within 10 s"),
            ServiceState(None, "unknown (systemctl gave no answer within 10 s)"),
        ),
    ],
)
def test_systemctl_is_active_maps_to_a_state(result: ToolResult, state: ServiceState) -> None:
    assert service_state("linux", result) == state


@pytest.mark.parametrize(
    ("result", "state"),
    [
        (
            answer(PRINT, 0, f"gui/501/{LABEL} = {{\n\tstate = running\n}}"),
            ServiceState(True, "loaded"),
        ),
        # Loaded but not running is still live: launchd may start it at any moment.
        (
            answer(PRINT, 0, f"gui/501/{LABEL} = {{\n\tstate = not running\n}}"),
            ServiceState(True, "loaded"),
        ),
        (
            answer(PRINT, 113, "", f'Could not find service "{LABEL}" in domain for port'),
            ServiceState(False, "not loaded"),
        ),
        (
            ToolResult(PRINT, unavailable=NOT_ON_PATH),
            ServiceState(None, "unknown (launchctl is not on PATH)"),
        ),
    ],
)
def test_launchctl_print_maps_to_a_state(result: ToolResult, state: ServiceState) -> None:
    assert service_state("macos", result) == state


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (answer(IS_ACTIVE, 1, "out\n", "first\n  last  \n"), "exit 1: last"),
        (answer(IS_ACTIVE, 5, "only stdout\n"), "exit 5: only stdout"),
        (answer(IS_ACTIVE, 1), "exit 1"),
        (
            ToolResult(IS_ACTIVE, unavailable="could not run: Permission denied"),
            "systemctl could not run: Permission denied",
        ),
    ],
)
def test_a_failed_call_says_why_in_one_line(result: ToolResult, problem: str) -> None:
    assert not result.ok
    assert result.problem == problem


@pytest.mark.parametrize(
    ("result", "pid"),
    [
        (answer(IS_ACTIVE, 0, "4242\n"), 4242),
        (answer(IS_ACTIVE, 0, "0\n"), None),
        (answer(IS_ACTIVE, 0, ""), None),
        (answer(IS_ACTIVE, 1, "4242\n"), None),
        (answer(IS_ACTIVE, 0, "[not set]\n"), None),
    ],
)
def test_the_main_pid_comes_from_systemctl_show(result: ToolResult, pid: int | None) -> None:
    assert main_pid_from_show(result) == pid


# --- launchctl output ----------------------------------------------------------------------

LIST_HEADER = "PID\tStatus\tLabel\n"


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        (LIST_HEADER + f"812\t0\t{LABEL}\n", LaunchdEntry(812, "0")),
        (LIST_HEADER + f"-\t0\t{LABEL}\n", LaunchdEntry(None, "0")),
        (LIST_HEADER + f"-\t-15\t{LABEL}\n", LaunchdEntry(None, "-15")),
        (LIST_HEADER + f"-\t0\tcom.apple.x\n77\t0\t{LABEL}\n", LaunchdEntry(77, "0")),
        (f"  90   0   {LABEL}  \n", LaunchdEntry(90, "0")),  # spaces instead of tabs
        (LIST_HEADER + f"1\t0\t{LABEL}.helper\n", None),
        (LIST_HEADER + f"1\t0\tcom.example.{LABEL}\n", None),
        (LIST_HEADER + "1\t0\tlive.streamvc\n", None),
        (LIST_HEADER, None),
        ("", None),
        (f"{LABEL}\n", None),
    ],
)
def test_launchctl_list_matches_the_label_column_exactly(
    text: str, entry: LaunchdEntry | None
) -> None:
    assert parse_launchctl_list(text, LABEL) == entry


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (f"gui/501/{LABEL} = {{\n\tactive count = 1\n\tpath = /U/x/{LABEL}.plist\n}}", True),
        (f"gui/501/{LABEL} = {{\n\tstate = running\n}}", False),
        ("\tpath = /tmp/not-a-plist\n", False),
    ],
)
def test_the_plist_path_comes_from_launchctl_print(text: str, path: bool) -> None:
    assert plist_path_from_print(text) == (Path(f"/U/x/{LABEL}.plist") if path else None)


def test_service_names_put_the_plist_in_the_users_launch_agents(tmp_path: Path) -> None:
    names = ServiceNames(launchd_label="org.example.mp")
    assert names.launchd_plist(tmp_path) == tmp_path / "Library/LaunchAgents/org.example.mp.plist"
    assert ServiceNames().launchd_label == LABEL
    assert ServiceNames().systemd_unit == UNIT


# --- the commands --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "name", "commands"),
    [
        (
            "macos",
            LABEL,
            [
                f"launchctl print gui/501/{LABEL}",
                f"launchctl bootout gui/501/{LABEL}",
                f"launchctl bootstrap gui/501 {PLIST}",
                f"launchctl kickstart -k gui/501/{LABEL}",
            ],
        ),
        (
            "linux",
            UNIT,
            [
                f"systemctl --user is-active {UNIT}",
                f"systemctl --user stop {UNIT}",
                f"systemctl --user start {UNIT}",
                f"systemctl --user restart {UNIT}",
            ],
        ),
    ],
)
def test_each_platform_names_its_commands(
    platform: Platform, name: str, commands: list[str]
) -> None:
    argvs = [
        query(platform, name, uid=501),
        stop(platform, name, uid=501),
        start(platform, name, uid=501, plist=PLIST),
        restart(platform, name, uid=501),
    ]
    assert [" ".join(argv) for argv in argvs] == commands


def test_a_printed_command_leaves_the_uid_lookup_to_the_shell() -> None:
    plist = Path("/Users/a b/Library/LaunchAgents/x.plist")
    assert shell_command(start("macos", LABEL, uid=SHELL_UID, plist=plist)) == (
        "launchctl bootstrap gui/$(id -u) '/Users/a b/Library/LaunchAgents/x.plist'"
    )
    assert shell_command(stop("macos", LABEL, uid=SHELL_UID)) == (
        f"launchctl bootout gui/$(id -u)/{LABEL}"
    )


@pytest.mark.parametrize(
    ("sys_platform", "platform"),
    [("darwin", "macos"), ("linux", "linux"), ("linux2", "linux"), ("freebsd14", None)],
)
def test_the_service_manager_follows_sys_platform(
    sys_platform: str, platform: Platform | None
) -> None:
    assert platform_of(sys_platform) == platform


# --- end to end: run_tool and the fakes ----------------------------------------------------


@pytest.fixture
def fakes(tmp_path: Path) -> FakeServices:
    return FakeServices(tmp_path / "fakes")


@pytest.mark.parametrize(
    ("unit_state", "live"),
    [
        ("active", True),
        ("reloading", True),
        ("activating", True),
        ("deactivating", False),
        ("inactive", False),
        ("failed", False),
    ],
)
def test_a_units_state_through_the_fake_systemctl(
    fakes: FakeServices, unit_state: str, live: bool
) -> None:
    fakes.add_systemd_unit(UNIT, state=unit_state)
    result = run_tool(query("linux", UNIT, uid=os.getuid()), fakes.env(clean_env()))
    assert service_state("linux", result) == ServiceState(live, unit_state)
    assert fakes.calls() == [IS_ACTIVE]


def test_a_jobs_state_through_the_fake_launchctl(fakes: FakeServices, tmp_path: Path) -> None:
    env = fakes.env(clean_env())
    ask = query("macos", LABEL, uid=os.getuid())
    assert service_state("macos", run_tool(ask, env)) == ServiceState(False, "not loaded")
    fakes.add_launchd_job(LABEL, tmp_path / f"{LABEL}.plist", pid=None)
    assert service_state("macos", run_tool(ask, env)) == ServiceState(True, "loaded")


def test_a_tool_missing_from_path_is_not_run(tmp_path: Path) -> None:
    result = run_tool(query("linux", UNIT, uid=0), clean_env(PATH=str(tmp_path / "empty")))
    assert result == ToolResult(IS_ACTIVE, unavailable=NOT_ON_PATH)


def test_a_hung_tool_is_given_up_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_calls, "COMMAND_TIMEOUT_S", 0.3)
    sleep = shutil.which("sleep")
    assert sleep is not None
    tool = tmp_path / "bin" / "systemctl"
    tool.parent.mkdir()
    tool.write_text(f"#!/bin/sh\nexec {sleep} 30\n")  # exec: the timeout's kill reaches it
    tool.chmod(0o755)
    result = run_tool(query("linux", UNIT, uid=0), clean_env(PATH=str(tool.parent)))
    assert service_state("linux", result) == ServiceState(
        None, "unknown (systemctl gave no answer within 0.3 s)"
    )
