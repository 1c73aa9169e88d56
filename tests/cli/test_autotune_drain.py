"""`autotune` with a provider already live: refuse, or `--drain` then restore exactly once.

The service managers are the fakes of `tests/actors/fake_services.py` (first on PATH,
recording every call); the tuning itself is real, on the `tiny` fixture.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from macprovider.actors.exit_reasons import ExitReason
from tests.actors.fake_services import FakeServices
from tests.cli.autotune_runs import ONE_CELL, QUICK, RUN_TIMEOUT, Autotune, Finished, Models
from tests.conftest import clean_env, wait_until

pytestmark = pytest.mark.slow  # whole `autotune --drain` runs as subprocesses

UNIT = "macprovider.service"
LABEL = "live.streamvc.macprovider"


@pytest.fixture
def services(tmp_path: Path) -> FakeServices:
    return FakeServices(tmp_path / "services")


def env_with(services: FakeServices, tmp_path: Path) -> dict[str, str]:
    return services.env(clean_env(HOME=str(tmp_path / "home")))


def verbs(services: FakeServices, tool: str) -> list[str]:
    return [
        call[2] if call[1] == "--user" else call[1] for call in services.calls() if call[0] == tool
    ]


def test_a_live_service_is_refused_without_drain(
    autotune: Autotune, models: Models, services: FakeServices, tmp_path: Path
) -> None:
    services.add_systemd_unit(UNIT)
    args = ("--candidate-models", models("tiny"), *QUICK, *ONE_CELL)
    done = autotune.run(*args, env=env_with(services, tmp_path))
    assert done.code == 69, done.stderr
    assert "systemd-managed" in done.stderr and "--drain" in done.stderr
    assert "stop" not in verbs(services, "systemctl")  # nothing was touched
    assert done.runs()[-1].exit_reason is ExitReason.PROVIDER_CONFLICT
    assert not done.trials()


def test_drain_tune_restore_with_apply_writes_the_config_first(
    autotune: Autotune, models: Models, services: FakeServices, tmp_path: Path
) -> None:
    services.add_systemd_unit(UNIT)
    config = tmp_path / "config.yaml"
    config.write_text("port: 18080\n")
    args = ("--candidate-models", models("tiny"), *QUICK, *ONE_CELL, "--drain", "--apply")
    done = autotune.run(*args, "--config", str(config), env=env_with(services, tmp_path))
    assert done.code == 0, done.stderr
    systemd = verbs(services, "systemctl")
    assert systemd.count("stop") == 1 and systemd.count("start") == 1
    assert systemd.index("stop") < systemd.index("start")
    assert services.systemd_unit(UNIT)["state"] == "active"
    # The config was written before the restore: the start is the last call made.
    assert config.stat().st_mtime_ns <= services.log_path.stat().st_mtime_ns
    assert f"model: {models('tiny')}" in config.read_text()
    assert "restored: systemd-managed" in done.stderr
    assert "hint:" not in done.stderr  # the restored service already reads the new config


def test_launchd_is_booted_out_then_bootstrapped_once(
    autotune: Autotune, models: Models, services: FakeServices, tmp_path: Path
) -> None:
    plist = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    services.add_launchd_job(LABEL, plist)
    args = ("--candidate-models", models("tiny"), *QUICK, *ONE_CELL, "--drain")
    done = autotune.run(*args, env=env_with(services, tmp_path))
    assert done.code == 0, done.stderr
    changes = [
        c for c in services.calls() if c[0] == "launchctl" and c[1] in ("bootout", "bootstrap")
    ]
    uid = os.getuid()
    assert changes == [
        ("launchctl", "bootout", f"gui/{uid}/{LABEL}"),
        ("launchctl", "bootstrap", f"gui/{uid}", str(plist)),
    ]


def test_a_failed_restore_prints_the_manual_command_and_exits_71(
    autotune: Autotune, models: Models, services: FakeServices, tmp_path: Path
) -> None:
    services.add_systemd_unit(UNIT)
    services.fail("systemctl", "start", stderr="Failed to start macprovider.service")
    args = ("--candidate-models", models("tiny"), *QUICK, *ONE_CELL, "--drain")
    done = autotune.run(*args, env=env_with(services, tmp_path))
    assert done.code == 71, done.stderr
    assert (
        "restore failed" in done.stderr
        and "systemctl --user start macprovider.service" in done.stderr
    )
    assert done.runs()[-1].exit_reason is ExitReason.OK  # the tuning itself went fine


def test_sigint_mid_tune_still_restores_exactly_once(
    autotune: Autotune, models: Models, services: FakeServices, tmp_path: Path
) -> None:
    services.add_systemd_unit(UNIT)
    long_run = ("--target-context", "64", "--probe-max-tokens", "64", "--stage2-replicates", "50")
    args = ("--candidate-models", models("small"), *long_run, *ONE_CELL, "--drain")
    proc = subprocess.Popen(
        autotune.argv(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_with(services, tmp_path),
    )
    try:
        wait_until(
            lambda: (
                autotune.db_path.exists() and bool(Finished(0, "", "", autotune.db_path).trials(1))
            ),
            RUN_TIMEOUT,
            "the Stage 1 trial to be recorded",
        )
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr.decode()
    systemd = verbs(services, "systemctl")
    assert systemd.count("stop") == 1 and systemd.count("start") == 1
    run = Finished(130, "", "", autotune.db_path).runs()[-1]
    assert run.exit_reason is ExitReason.INTERRUPTED
