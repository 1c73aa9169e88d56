"""Stop signals in every phase of a command: early, deferred, supervised, finished.

The in-process tests deliver real signals to this process (the handler runs on the main
thread, as in a command) with the test's own StopSignals, and put pytest's handlers back
afterwards. The phases that end the process run in a child.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from macprovider.actors.stop_signals import EXIT_INTERRUPTED, Interrupted, StopSignals
from tests.conftest import ROOT, clean_env


@pytest.fixture
def stop() -> Iterator[StopSignals]:
    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signals = StopSignals()
    signals.install()
    yield signals
    for signum, handler in kept.items():
        signal.signal(signum, handler)


def deliver(signum: signal.Signals) -> None:
    # Handled before `raise_signal` returns: Python runs the handler at the next bytecode.
    signal.raise_signal(signum)


def test_a_signal_inside_a_deferred_step_is_recorded_and_stops_it_at_its_commit_point(
    stop: StopSignals,
) -> None:
    with stop.deferred():
        stop.raise_if_requested()  # nothing yet: the step may commit
        deliver(signal.SIGTERM)
        with pytest.raises(Interrupted, match="SIGTERM"):
            stop.raise_if_requested()
    assert stop.requested == "SIGTERM"


def supervise_with(
    stop: StopSignals, during_start: Callable[[], None] = lambda: None
) -> tuple[list[str], list[str]]:
    asked: list[str] = []
    events: list[str] = []

    def start() -> Callable[[str], None]:
        events.append("started")
        during_start()
        return asked.append

    with stop.supervising(start, lambda: events.append("killed"), lambda: events.append("hup")):
        events.append("supervising")
        deliver(signal.SIGINT)
        deliver(signal.SIGHUP)
    return asked, events


def test_a_signal_while_supervised_asks_the_supervisor_to_stop(stop: StopSignals) -> None:
    asked, events = supervise_with(stop)
    assert asked == ["SIGINT"]
    assert events == ["started", "supervising", "hup"]


def test_a_signal_while_the_supervisor_is_being_created_is_handed_to_it_once_it_exists(
    stop: StopSignals,
) -> None:
    asked: list[str] = []

    def start() -> Callable[[str], None]:
        deliver(signal.SIGTERM)  # before the Supervisor can be asked anything
        return asked.append

    with stop.supervising(start, lambda: None, None):
        assert asked == ["SIGTERM"]
    assert asked == ["SIGTERM"]


def test_after_supervision_a_first_signal_is_only_noted(stop: StopSignals) -> None:
    with stop.supervising(lambda: lambda name: None, lambda: None, None):
        pass
    deliver(signal.SIGINT)  # the process would have exited here in the early phase
    assert stop.requested == "SIGINT"


def test_sighup_outside_supervision_is_ignored(stop: StopSignals) -> None:
    deliver(signal.SIGHUP)  # its default action would end the process
    assert stop.requested is None


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from macprovider.actors.stop_signals import STOP
    STOP.install()
    phase, marker = sys.argv[1], sys.argv[2]
    if phase == "early":
        signal.raise_signal(signal.SIGTERM)
    elif phase == "second":
        def kill() -> None:
            open(marker, "w").close()
        with STOP.supervising(lambda: lambda name: None, kill, None):
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
    print("survived", flush=True)
    """
)


def run_child(phase: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    marker = tmp_path / "providers-killed"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, phase, str(marker)],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, marker


def test_an_early_signal_exits_130_at_once_with_one_line(tmp_path: Path) -> None:
    done, _ = run_child("early", tmp_path)
    assert done.returncode == EXIT_INTERRUPTED
    assert done.stdout == ""  # it went no further
    assert done.stderr.splitlines() == [
        "macprovider-supervise: SIGTERM: stopped before anything started; nothing was changed"
    ]


def test_a_second_signal_kills_our_providers_and_exits_130(tmp_path: Path) -> None:
    done, marker = run_child("second", tmp_path)
    assert done.returncode == EXIT_INTERRUPTED
    assert done.stdout == ""
    assert marker.exists()
    assert "Traceback" not in done.stderr


def test_what_runs_before_the_handlers_are_installed_imports_nothing_heavy() -> None:
    # The launcher's first lines: a signal during the heavy imports that follow is handled.
    code = (
        "import sys\n"
        "from macprovider.server.parent_guard import arm_for_supervisor\n"
        "from macprovider.actors.stop_signals import STOP\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    loaded = set(done.stdout.split())
    assert "macprovider.actors.stop_signals" in loaded
    assert not loaded & {"mlx", "mlx.core", "pykka", "trio", "click", "httpx", "psutil", "yaml"}


def test_a_stop_signal_after_the_exit_handlers_leaves_the_exit_code_alone() -> None:
    # Registered before the handlers are installed, so it runs after their own exit handler,
    # as Python's teardown does; a signal then must not replace the command's exit code.
    code = textwrap.dedent(
        """
        import atexit, os, signal, sys
        atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))
        from macprovider.actors.stop_signals import STOP
        STOP.install()
        sys.exit(3)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (3, "")
