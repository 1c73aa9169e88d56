"""The DrainActor's decisions: the command-line matcher, the manual commands and the
conflict message, on hand-made findings."""

from __future__ import annotations

from pathlib import Path

import pytest

from macprovider.actors.drain_decisions import (
    conflict_message,
    manual_restore_command,
    manual_stop_command,
    provider_subcommand,
)
from macprovider.actors.messages import Finding

LABEL = "live.streamvc.macprovider"
UNIT = "macprovider.service"
SECRET = "k-never-shown"

# --- the command-line matcher --------------------------------------------------------------

VENV = "/opt/venv/bin"


@pytest.mark.parametrize(
    ("argv", "subcommand"),
    [
        (["macprovider-supervise", "serve", "--port", "1"], "serve"),
        (["/usr/local/bin/macprovider-supervise", "serve"], "serve"),
        (["macprovider-cli", "serve", "--no-join"], "serve"),  # the legacy name
        ([f"{VENV}/python3.11", f"{VENV}/macprovider-supervise", "serve"], "serve"),
        (["python", "-u", "-X", "dev", "./macprovider-supervise", "serve"], "serve"),
        (["python3", "-m", "macprovider.cli", "serve", "--no-join"], "serve"),
        (["python", "-W", "ignore", "-mmacprovider.cli", "serve"], "serve"),
        (["/Library/Frameworks/P/MacOS/Python", "-m", "macprovider.cli", "run"], "run"),
        (["macprovider-supervise", "--version"], None),
        (["macprovider-supervise"], None),
        (["macprovider-supervise", "autotune", "--port", "serve"], "autotune"),
        (["macprovider-supervise", "observe"], "observe"),
        (["macprovider-supervise", "server"], "server"),
        (["macprovider-supervise-helper", "serve"], None),
        (["my-macprovider-supervise", "serve"], None),
        ([f"{VENV}/python", f"{VENV}/macprovider-supervise-helper", "serve"], None),
        (["python", "-m", "macprovider.cli.main", "serve"], None),
        (["python", "-m", "pytest", "-k", "serve"], None),
        (["python", "-c", "import macprovider; serve()", "serve"], None),
        (["python", "-", "serve"], None),
        (["python"], None),
        (["bash", "-c", "macprovider-supervise serve"], None),
        (["sh", "/x/macprovider-supervise", "serve"], None),
        (["vim", "macprovider-supervise", "serve"], None),
        ([], None),
    ],
)
def test_provider_subcommand_reads_the_program_and_its_first_word(
    argv: list[str], subcommand: str | None
) -> None:
    assert provider_subcommand(argv) == subcommand


# --- manual commands and the conflict message ----------------------------------------------

LAUNCHD = Finding("launchd", "launchd-managed", f"launchd job {LABEL} (PID 5)", 5, service=LABEL)
SYSTEMD = Finding("systemd", "systemd-managed", f"systemd user unit {UNIT} (active)", service=UNIT)
FOREGROUND = Finding(
    "foreground",
    "foreground-PID-42",
    "macprovider-supervise serve --model 'my model'",
    42,
    ("macprovider-supervise", "serve", "--model", "my model"),
    "/home/op/work dir",
)
PORT = Finding("port", "port-18080-in-use", "127.0.0.1:18080 is held by PID 9: nginx", 9)
PLIST = Path(f"/Users/op/Library/LaunchAgents/{LABEL}.plist")


@pytest.mark.parametrize(
    ("finding", "stop", "restore"),
    [
        (
            LAUNCHD,
            f"launchctl bootout gui/501/{LABEL}",
            f"launchctl bootstrap gui/501 {PLIST}",
        ),
        (SYSTEMD, f"systemctl --user stop {UNIT}", f"systemctl --user start {UNIT}"),
        (
            FOREGROUND,
            "kill -TERM 42",
            "cd '/home/op/work dir' && macprovider-supervise serve --model 'my model'",
        ),
        (PORT, "lsof -nP -iTCP:18080 -sTCP:LISTEN", None),
    ],
)
def test_manual_commands_name_exactly_what_to_run(
    finding: Finding, stop: str, restore: str | None
) -> None:
    assert manual_stop_command(finding, uid=501, port=18080) == stop
    assert manual_restore_command(finding, uid=501, plist=PLIST) == restore


def test_a_foreground_process_without_a_known_cwd_restarts_from_its_argv() -> None:
    finding = Finding("foreground", "foreground-PID-1", "", 1, ("macprovider-supervise", "serve"))
    assert manual_restore_command(finding, uid=1, plist=PLIST) == "macprovider-supervise serve"


def test_a_restore_command_shows_the_api_key_flag_but_not_the_key() -> None:
    argv = ("macprovider-supervise", "serve", "--api-key", SECRET, "--host", "0.0.0.0")
    finding = Finding("foreground", "foreground-PID-1", "", 1, argv)
    assert manual_restore_command(finding, uid=1, plist=PLIST) == (
        "macprovider-supervise serve --api-key '<hidden>' --host 0.0.0.0"
    )
    assert SECRET not in repr(finding)


def test_conflict_message_names_each_finding_and_both_ways_out() -> None:
    message = conflict_message([LAUNCHD, FOREGROUND, PORT], 18080, uid=501)
    assert message.splitlines() == [
        "a provider is already running; autotune would measure beside it:",
        f"  launchd-managed: launchd job {LABEL} (PID 5)",
        "  foreground-PID-42: macprovider-supervise serve --model 'my model'",
        "  port-18080-in-use: 127.0.0.1:18080 is held by PID 9: nginx",
        "rerun with --drain: autotune stops it, tunes, then starts it again"
        " (a foreground process only with --restart-foreground)",
        "or stop it yourself, then rerun:",
        f"  launchctl bootout gui/501/{LABEL}",
        "  kill -TERM 42",
        "  lsof -nP -iTCP:18080 -sTCP:LISTEN   # --drain cannot stop it: find it,"
        " or use another --port",
    ]


def test_a_port_alone_offers_no_drain() -> None:
    message = conflict_message([PORT], 18080, uid=501)
    assert "--drain:" not in message
    assert "stop it yourself:" in message
    assert "port-18080-in-use" in message
