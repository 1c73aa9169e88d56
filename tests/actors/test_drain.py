"""DrainActor: detect / drain / restore against fake `launchctl` and `systemctl` first on
PATH and real stand-in providers named like the real one (its decisions are in
test_drain_decisions.py and test_service_manager.py).

Other sessions may run real providers on this machine at the same time: tests only ever
drain findings they made themselves, and look foreground findings up by PID.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from macprovider.actors.drain import DrainProxy, DrainRefused, start_drain_actor
from macprovider.actors.drain_decisions import conflict_message, provider_subcommand
from macprovider.actors.messages import Drained, DrainFailed, Finding, RestoreReport
from macprovider.actors.provider import port_is_free
from macprovider.actors.service_manager import ServiceNames
from tests.actors.fake_services import (
    STANDIN_BODY,
    UP_TIMEOUT,
    FakeServices,
    Programs,
    write_program,
)
from tests.conftest import clean_env, free_port, wait_until

LABEL = "live.streamvc.macprovider"
UNIT = "macprovider.service"
UID = os.getuid()
ACTOR_TIMEOUT = 30.0  # every future: a wedged actor fails the test instead of hanging it
GRACE = 1.0  # the drain grace in tests: short, so a process that will not go fails fast
SECRET = "k-never-shown"

# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def fakes(tmp_path: Path) -> FakeServices:
    return FakeServices(tmp_path / "fakes")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def plist(home: Path) -> Path:
    return ServiceNames().launchd_plist(home)


MakeDrain = Callable[..., DrainProxy]


@pytest.fixture
def make_drain(fakes: FakeServices, home: Path) -> Iterator[MakeDrain]:
    """`make_drain(port, **kwargs)`: a DrainActor with the fakes first on PATH."""
    started: list[DrainProxy] = []

    def make(port: int, **kwargs: object) -> DrainProxy:
        options: dict[str, object] = {"env": fakes.env(clean_env()), "home": home}
        options.update(kwargs)
        proxy = start_drain_actor(port, drain_grace_s=GRACE, **options)  # type: ignore[arg-type]
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.actor_ref.stop(timeout=ACTOR_TIMEOUT)


@pytest.fixture
def programs(tmp_path: Path) -> Iterator[Programs]:
    found = Programs(tmp_path)
    yield found
    found.end_all()


def detect(proxy: DrainProxy) -> tuple[Finding, ...]:
    return proxy.detect().get(timeout=ACTOR_TIMEOUT)


def drain(proxy: DrainProxy, *findings: Finding) -> Drained | DrainFailed:
    return proxy.drain(findings).get(timeout=ACTOR_TIMEOUT)


def restore(proxy: DrainProxy) -> RestoreReport:
    return proxy.restore().get(timeout=ACTOR_TIMEOUT)


def of_kind(findings: tuple[Finding, ...], kind: str) -> list[Finding]:
    return [finding for finding in findings if finding.kind == kind]


def services(findings: tuple[Finding, ...]) -> list[Finding]:
    """The fake services' findings, in detection order: never another session's serve."""
    return [*of_kind(findings, "launchd"), *of_kind(findings, "systemd")]


def foreground(findings: tuple[Finding, ...], pid: int) -> Finding | None:
    return next((f for f in of_kind(findings, "foreground") if f.pid == pid), None)


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def calls_of(fakes: FakeServices, tool: str) -> list[tuple[str, ...]]:
    """One tool's calls, each without the tool's name."""
    return [call[1:] for call in fakes.calls() if call[0] == tool]


def systemd_actions(fakes: FakeServices) -> list[tuple[str, ...]]:
    return [call for call in calls_of(fakes, "systemctl") if call[1] in ("stop", "start")]


LIST_AND_PRINT = [("list",), ("print", f"gui/{UID}/{LABEL}")]
STOP = ("--user", "stop", UNIT)
START = ("--user", "start", UNIT)


# --- detection -----------------------------------------------------------------------------


def test_a_loaded_but_not_running_launchd_job_is_found_and_confirmed(
    make_drain: MakeDrain, fakes: FakeServices, plist: Path
) -> None:
    fakes.add_launchd_job(LABEL, plist, pid=None)
    findings = detect(make_drain(free_port()))
    assert of_kind(findings, "launchd") == [
        Finding(
            "launchd",
            "launchd-managed",
            f"launchd job {LABEL} (loaded, not running)",
            service=LABEL,
        )
    ]
    assert calls_of(fakes, "launchctl") == LIST_AND_PRINT


def test_a_label_that_merely_contains_ours_is_not_ours(
    make_drain: MakeDrain, fakes: FakeServices, home: Path
) -> None:
    fakes.add_launchd_job(f"{LABEL}.helper", home / "a.plist", pid=None)
    fakes.add_launchd_job(f"com.example.{LABEL}", home / "b.plist", pid=None)
    findings = detect(make_drain(free_port()))
    assert of_kind(findings, "launchd") == []
    assert calls_of(fakes, "launchctl") == [("list",)]


def test_a_listed_job_that_print_cannot_find_is_not_a_finding(
    make_drain: MakeDrain, fakes: FakeServices, plist: Path
) -> None:
    fakes.add_launchd_job(LABEL, plist, pid=None)
    fakes.fail("launchctl", "print", code=113, stderr="Could not find service")
    assert of_kind(detect(make_drain(free_port())), "launchd") == []


@pytest.mark.parametrize(
    ("state", "main_pid", "detail"),
    [
        ("active", 4242, f"systemd user unit {UNIT} (active, main PID 4242)"),
        ("activating", 0, f"systemd user unit {UNIT} (activating)"),
        ("reloading", 4242, f"systemd user unit {UNIT} (reloading, main PID 4242)"),
        ("deactivating", 4242, None),
        ("inactive", 0, None),
        ("failed", 0, None),
    ],
)
def test_a_systemd_unit_is_found_when_is_active_says_so(
    make_drain: MakeDrain, fakes: FakeServices, state: str, main_pid: int, detail: str | None
) -> None:
    fakes.add_systemd_unit(UNIT, state=state, main_pid=main_pid)
    found = of_kind(detect(make_drain(free_port())), "systemd")
    if detail is None:
        assert found == []
        assert calls_of(fakes, "systemctl") == [("--user", "is-active", UNIT)]
    else:
        pid = main_pid or None
        assert found == [Finding("systemd", "systemd-managed", detail, pid, service=UNIT)]


def test_no_tool_on_path_means_no_service_check(
    make_drain: MakeDrain, fakes: FakeServices, plist: Path, tmp_path: Path
) -> None:
    fakes.add_launchd_job(LABEL, plist, pid=None)
    fakes.add_systemd_unit(UNIT)
    env = clean_env(PATH=str(tmp_path / "empty"))
    findings = detect(make_drain(free_port(), env=env))
    assert of_kind(findings, "launchd") == of_kind(findings, "systemd") == []
    assert fakes.calls() == []


def test_a_foreground_serve_is_found_once_with_what_restarts_it(
    make_drain: MakeDrain, programs: Programs
) -> None:
    pid, port = programs.serve()
    findings = detect(make_drain(port))
    found = foreground(findings, pid)
    assert found is not None
    assert found.name == f"foreground-PID-{pid}"
    assert found.argv == tuple(psutil.Process(pid).cmdline())
    assert found.argv[1:] == (
        str(programs.bin_dir / "macprovider-supervise"),
        "serve",
        "--no-join",
        "--port",
        str(port),
        "--model",
        "m",
    )
    assert found.cwd == str(programs.cwd)
    assert ("STANDIN_MODE", "ok") in found.env
    assert of_kind(findings, "port") == []  # its port is reported as this finding


@pytest.mark.parametrize("key_args", [("--api-key", SECRET), (f"--api-key={SECRET}",)])
def test_a_foreground_serve_with_a_key_is_refused_and_drained_without_showing_the_key(
    make_drain: MakeDrain,
    programs: Programs,
    caplog: pytest.LogCaptureFixture,
    key_args: tuple[str, ...],
) -> None:
    pid, port = programs.serve("macprovider-supervise", "ok", *key_args)
    with caplog.at_level(logging.INFO, logger="macprovider.actors.drain"):
        proxy = make_drain(port)
        findings = detect(proxy)
        found = foreground(findings, pid)
        assert found is not None and SECRET in " ".join(found.argv)  # what a restart needs
        refusal = conflict_message(findings, port)
        assert f"foreground-PID-{pid}" in refusal and "--api-key" in refusal
        assert drain(proxy, found) == Drained((found,))
        report = restore(proxy)
    (restart_line,) = report.not_restarted
    assert "--api-key" in restart_line and "<hidden>" in restart_line
    for shown in (refusal, repr(findings), repr(report), caplog.text):
        assert SECRET not in shown


def test_a_port_holder_with_a_key_is_described_without_it(
    make_drain: MakeDrain, programs: Programs
) -> None:
    pid, port = programs.serve("macprovider-supervise-helper", "ok", "--api-key", SECRET)
    findings = detect(make_drain(port))
    (held,) = of_kind(findings, "port")
    assert held.pid == pid and "macprovider-supervise-helper serve" in held.detail
    assert SECRET not in conflict_message(findings, port)


def test_a_helper_whose_name_contains_the_program_is_only_a_port_holder(
    make_drain: MakeDrain, programs: Programs, fakes: FakeServices
) -> None:
    pid, port = programs.serve(name="macprovider-supervise-helper")
    findings = detect(make_drain(port))
    assert foreground(findings, pid) is None
    (held,) = of_kind(findings, "port")
    assert (held.name, held.pid) == (f"port-{port}-in-use", pid)
    assert "macprovider-supervise-helper serve" in held.detail


def test_self_pid_and_its_ancestors_are_never_found(
    make_drain: MakeDrain, programs: Programs
) -> None:
    serve_pid, port = programs.serve()
    assert foreground(detect(make_drain(port, self_pid=serve_pid)), serve_pid) is None

    parent_pid, child_pid = programs.parent("serve")
    assert foreground(detect(make_drain(free_port())), parent_pid) is not None
    assert foreground(detect(make_drain(free_port(), self_pid=child_pid)), parent_pid) is None


def test_this_test_process_is_not_a_provider(make_drain: MakeDrain) -> None:
    findings = detect(make_drain(free_port()))
    assert foreground(findings, os.getpid()) is None
    assert provider_subcommand(psutil.Process().cmdline()) is None


def test_a_serve_under_run_is_reported_as_the_run(
    make_drain: MakeDrain, programs: Programs
) -> None:
    port = free_port()
    standin = write_program(programs.bin_dir / "inner", "macprovider-supervise", STANDIN_BODY)
    child = [str(standin), "serve", "--no-join", "--port", str(port), "--model", "m"]
    run_pid, serve_pid = programs.parent("run", child)
    wait_until(lambda: not port_is_free(port), UP_TIMEOUT, "the serve under run")
    findings = detect(make_drain(port))
    assert foreground(findings, run_pid) is not None
    assert foreground(findings, serve_pid) is None
    assert of_kind(findings, "port") == []


def test_a_process_inside_a_service_is_that_service(
    make_drain: MakeDrain, programs: Programs, fakes: FakeServices, plist: Path
) -> None:
    pid, port = programs.serve()
    fakes.add_launchd_job(LABEL, plist, pid=pid)
    proxy = make_drain(port)
    findings = detect(proxy)
    assert [f.name for f in findings if f.pid == pid] == ["launchd-managed"]
    assert of_kind(findings, "port") == []
    # bootout ends the job's process, as launchd would: the port comes free.
    (service,) = of_kind(findings, "launchd")
    assert drain(proxy, service) == Drained((service,))
    assert port_is_free(port)
    assert not running(pid)


def test_a_free_port_and_nothing_running_is_no_finding(
    make_drain: MakeDrain, fakes: FakeServices
) -> None:
    findings = detect(make_drain(free_port()))
    assert of_kind(findings, "launchd") == of_kind(findings, "systemd") == []
    assert of_kind(findings, "port") == []


# --- drain and restore ---------------------------------------------------------------------


def test_launchd_drain_then_restore_is_bootout_then_bootstrap_of_the_plist(
    make_drain: MakeDrain, fakes: FakeServices, tmp_path: Path
) -> None:
    own_plist = tmp_path / "elsewhere" / f"{LABEL}.plist"  # where `launchctl print` says
    fakes.add_launchd_job(LABEL, own_plist, pid=None)
    proxy = make_drain(free_port())
    (service,) = of_kind(detect(proxy), "launchd")
    assert drain(proxy, service) == Drained((service,))
    assert not fakes.launchd_job(LABEL)["loaded"]
    report = restore(proxy)
    bootstrap = ("bootstrap", f"gui/{UID}", str(own_plist))
    assert report == RestoreReport(restored=(f"launchd-managed: launchctl {' '.join(bootstrap)}",))
    assert calls_of(fakes, "launchctl") == [
        *LIST_AND_PRINT,
        ("bootout", f"gui/{UID}/{LABEL}"),
        bootstrap,
    ]
    assert fakes.launchd_job(LABEL)["loaded"]


def test_without_a_path_from_print_the_plist_is_the_users_launch_agent(
    make_drain: MakeDrain, fakes: FakeServices, plist: Path
) -> None:
    fakes.add_launchd_job(LABEL, plist, pid=None, print_path=False)
    proxy = make_drain(free_port())
    drain(proxy, *of_kind(detect(proxy), "launchd"))
    restore(proxy)
    assert calls_of(fakes, "launchctl")[-1] == ("bootstrap", f"gui/{UID}", str(plist))


def test_systemd_drain_then_restore_is_stop_then_start_and_runs_once(
    make_drain: MakeDrain, fakes: FakeServices
) -> None:
    fakes.add_systemd_unit(UNIT)
    proxy = make_drain(free_port())
    (service,) = of_kind(detect(proxy), "systemd")
    assert drain(proxy, service) == Drained((service,))
    assert fakes.systemd_unit(UNIT)["state"] == "inactive"
    first = restore(proxy)
    assert (
        restore(proxy)
        == first
        == RestoreReport(restored=(f"systemd-managed: systemctl --user start {UNIT}",))
    )
    assert systemd_actions(fakes) == [STOP, START]
    assert fakes.systemd_unit(UNIT)["state"] == "active"


def test_stopping_the_actor_restores_what_was_drained_exactly_once(
    make_drain: MakeDrain, fakes: FakeServices
) -> None:
    fakes.add_systemd_unit(UNIT)
    proxy = make_drain(free_port())
    drain(proxy, *of_kind(detect(proxy), "systemd"))
    assert proxy.actor_ref.stop(timeout=ACTOR_TIMEOUT)
    assert systemd_actions(fakes) == [STOP, START]


def test_a_restored_actor_restores_nothing_more_when_stopped(
    make_drain: MakeDrain, fakes: FakeServices
) -> None:
    fakes.add_systemd_unit(UNIT)
    proxy = make_drain(free_port())
    drain(proxy, *of_kind(detect(proxy), "systemd"))
    restore(proxy)
    proxy.actor_ref.stop(timeout=ACTOR_TIMEOUT)
    assert systemd_actions(fakes) == [STOP, START]


def test_nothing_drained_restores_nothing(make_drain: MakeDrain, fakes: FakeServices) -> None:
    proxy = make_drain(free_port())
    assert drain(proxy) == Drained(())
    assert restore(proxy) == RestoreReport()
    assert fakes.calls() == []


def test_a_second_drain_is_refused(make_drain: MakeDrain) -> None:
    proxy = make_drain(free_port())
    drain(proxy)
    with pytest.raises(DrainRefused):
        drain(proxy)


def test_a_foreground_serve_is_sigtermed_and_the_port_comes_free(
    make_drain: MakeDrain, programs: Programs
) -> None:
    pid, port = programs.serve()
    proxy = make_drain(port)
    found = foreground(detect(proxy), pid)
    assert found is not None
    assert drain(proxy, found) == Drained((found,))
    assert port_is_free(port)
    assert not running(pid)
    assert programs.started[0].wait(timeout=UP_TIMEOUT) == 0  # SIGTERM: a clean exit
    command = f"cd {programs.cwd} && {' '.join(found.argv)}"
    assert restore(proxy) == RestoreReport(
        not_restarted=(f"{found.name}: not restarted; start it again with: {command}",)
    )
    assert port_is_free(port)  # nothing started it again


def test_restart_foreground_relaunches_it_detached_from_its_argv_cwd_and_env(
    make_drain: MakeDrain, programs: Programs
) -> None:
    pid, port = programs.serve()
    proxy = make_drain(port, restart_foreground=True)
    found = foreground(detect(proxy), pid)
    assert found is not None
    assert drain(proxy, found) == Drained((found,))
    report = restore(proxy)
    (line,) = report.restored
    assert line.startswith(f"{found.name}: restarted as PID ")
    new = psutil.Process(int(line.split("restarted as PID ")[1].split(":")[0]))
    assert new.pid != pid
    assert tuple(new.cmdline()) == found.argv
    assert new.cwd() == found.cwd
    assert new.environ()["STANDIN_MODE"] == "ok"
    assert os.getsid(new.pid) == new.pid != os.getsid(0)  # its own session
    wait_until(lambda: not port_is_free(port), UP_TIMEOUT, "the restarted serve to listen")


def test_a_serve_that_ignores_sigterm_fails_the_drain_is_not_killed_and_the_rest_returns(
    make_drain: MakeDrain, programs: Programs, fakes: FakeServices
) -> None:
    fakes.add_systemd_unit(UNIT)
    pid, port = programs.serve(mode="ignore-sigterm")
    proxy = make_drain(port, restart_foreground=True)
    findings = detect(proxy)
    found = foreground(findings, pid)
    assert found is not None
    began = time.monotonic()
    result = drain(proxy, *of_kind(findings, "systemd"), found)
    assert time.monotonic() - began < GRACE + 2.0
    assert isinstance(result, DrainFailed)
    assert result.reason.startswith(f"{found.name} still running 1 s after being asked to stop")
    assert "never SIGKILLed" in result.reason
    # Still alive: never killed, and not restarted as a second copy beside itself.
    assert running(pid)
    assert result.restore == RestoreReport(
        restored=(f"systemd-managed: systemctl --user start {UNIT}",)
    )
    assert systemd_actions(fakes) == [STOP, START]
    calls = len(fakes.calls())
    assert restore(proxy) == result.restore  # the restore already ran: nothing runs again
    assert len(fakes.calls()) == calls


def test_a_port_held_by_something_else_fails_before_anything_is_stopped(
    make_drain: MakeDrain, programs: Programs, fakes: FakeServices
) -> None:
    fakes.add_systemd_unit(UNIT)
    pid, port = programs.serve(name="macprovider-supervise-helper")
    proxy = make_drain(port)
    findings = detect(proxy)
    result = drain(proxy, *of_kind(findings, "systemd"), *of_kind(findings, "port"))
    assert isinstance(result, DrainFailed)
    assert result.reason.startswith(
        f"port-{port}-in-use: not a provider we can stop; stop it yourself"
    )
    assert result.restore == RestoreReport()
    assert running(pid)
    assert systemd_actions(fakes) == []


def test_a_failing_stop_fails_the_drain_and_restores_what_was_stopped(
    make_drain: MakeDrain, fakes: FakeServices, plist: Path
) -> None:
    fakes.add_launchd_job(LABEL, plist, pid=None)
    fakes.add_systemd_unit(UNIT)
    fakes.fail("systemctl", "stop", code=1, stderr="Failed to stop: Access denied")
    proxy = make_drain(free_port())
    result = drain(proxy, *services(detect(proxy)))
    assert isinstance(result, DrainFailed)
    assert result.reason == (
        f"systemd-managed: `systemctl --user stop {UNIT}` failed"
        " (exit 1: Failed to stop: Access denied); stop it yourself"
    )
    assert [call[0] for call in calls_of(fakes, "launchctl")][-2:] == ["bootout", "bootstrap"]
    assert systemd_actions(fakes) == [STOP]  # refused: so never started either


def test_a_failing_restore_says_what_to_run_by_hand(
    make_drain: MakeDrain, fakes: FakeServices, plist: Path
) -> None:
    fakes.add_launchd_job(LABEL, plist, pid=None)
    fakes.add_systemd_unit(UNIT)
    proxy = make_drain(free_port())
    assert isinstance(drain(proxy, *services(detect(proxy))), Drained)
    fakes.fail("systemctl", "start", code=1, stderr="Job for macprovider.service failed.")
    fakes.fail("launchctl", "bootstrap", code=5, stderr="Bootstrap failed: 5: Input/output error")
    report = restore(proxy)
    assert report == RestoreReport(
        failed=(
            "systemd-managed: restore failed (exit 1: Job for macprovider.service failed.);"
            f" run: systemctl --user start {UNIT}",
            "launchd-managed: restore failed (exit 5: Bootstrap failed: 5: Input/output error);"
            f" run: launchctl bootstrap gui/{UID} {plist}",
        )
    )
    assert restore(proxy) == report
    assert [c[0] for c in calls_of(fakes, "launchctl")].count("bootstrap") == 1
    assert systemd_actions(fakes) == [STOP, START]


def test_a_restart_that_cannot_start_is_a_failed_line(
    make_drain: MakeDrain, programs: Programs
) -> None:
    pid, port = programs.serve()
    proxy = make_drain(port, restart_foreground=True)
    found = foreground(detect(proxy), pid)
    assert found is not None
    drain(proxy, found)
    os.rename(programs.cwd, programs.cwd.with_name("moved"))  # its working directory is gone
    (line,) = restore(proxy).failed
    assert line.startswith(f"{found.name}: restore failed (could not start: ")
    assert line.endswith(f"run: cd {programs.cwd} && {' '.join(found.argv)}")


def test_a_serve_gone_before_the_drain_is_not_signalled(
    make_drain: MakeDrain, programs: Programs
) -> None:
    pid, port = programs.serve()
    proxy = make_drain(port)
    found = foreground(detect(proxy), pid)
    assert found is not None
    os.kill(pid, signal.SIGTERM)
    programs.started[0].wait(timeout=UP_TIMEOUT)
    assert drain(proxy, found) == Drained(())
    assert restore(proxy) == RestoreReport()
