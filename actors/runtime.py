"""The main thread of a supervised command: start the Supervisor, wait, relay signals.

Signal handlers only hand a message to the Supervisor: the first SIGINT/SIGTERM asks for the
orderly stop, SIGHUP for a reload; a second SIGINT/SIGTERM is the fastest safe exit: SIGKILL
to our own providers' process groups, then exit 130 at once. The handlers themselves live in
`stop_signals`, installed from the process's first line, so a signal that comes before the
Supervisor exists is honoured too.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Final

import pykka

from macprovider.actors.messages import RunOutcome
from macprovider.actors.provider import ProcessGroups
from macprovider.actors.stop_signals import STOP
from macprovider.actors.supervisor import ChildSpec, start_supervisor

# How long a stop signal that landed on another thread may wait for its handler.
SIGNAL_CHECK_S: Final = 0.1


def supervise(
    children: Sequence[ChildSpec],
    groups: ProcessGroups,
    on_reload: Callable[[], None] | None = None,
    stop_reason: str = "stopped",
) -> RunOutcome:
    """Runs the children under a Supervisor until it reports how the run ended; a first
    SIGINT/SIGTERM ends it with `stop_reason`."""
    STOP.install()  # the command line did so first thing; a bare caller (a harness) gets it here
    done = threading.Event()
    outcomes: list[RunOutcome] = []

    def finished(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        done.set()

    def start() -> Callable[[str], None]:
        supervisor = start_supervisor(children, finished)

        def stop(_signal_name: str) -> None:
            # A message: the handler never waits. A Supervisor that has just finished on its
            # own is already gone, and its outcome stands.
            with contextlib.suppress(pykka.ActorDeadError):
                supervisor.shutdown(stop_reason)

        return stop

    with STOP.supervising(start, groups.kill_all, on_reload):
        # Never one long blocking wait: the kernel may hand a process-directed signal to any
        # thread, and then CPython only flags it; the handler runs when the main thread next
        # executes bytecode. A plain `done.wait()` would sit on a Ctrl-C until the run ended.
        while not done.wait(SIGNAL_CHECK_S):
            pass
    return outcomes[0]
