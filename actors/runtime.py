"""The main thread of a supervised command: start the Supervisor, wait, relay signals.

Signal handlers only hand a message to the Supervisor (DESIGN §3): the first
SIGINT/SIGTERM asks for the orderly stop, SIGHUP for a reload; a second
SIGINT/SIGTERM is the fastest safe exit: SIGKILL to our own providers' process
groups, then exit 130 at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from macprovider.actors.messages import RunOutcome
from macprovider.actors.provider import ProcessGroups
from macprovider.actors.supervisor import ChildSpec, SupervisorProxy, start_supervisor

log = logging.getLogger("macprovider.supervisor")

EXIT_SECOND_SIGNAL = 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def supervise(
    children: Sequence[ChildSpec],
    groups: ProcessGroups,
    on_reload: Callable[[], None] | None = None,
    stop_reason: str = "stopped",
) -> RunOutcome:
    """Runs the children under a Supervisor until it reports how the run ended; a first
    SIGINT/SIGTERM ends it with `stop_reason`."""
    done = threading.Event()
    outcomes: list[RunOutcome] = []

    def finished(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        done.set()

    supervisor = start_supervisor(children, finished)
    previous = _install(supervisor, groups, on_reload, stop_reason)
    try:
        done.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return outcomes[0]


def _install(
    supervisor: SupervisorProxy,
    groups: ProcessGroups,
    on_reload: Callable[[], None] | None,
    stop_reason: str,
) -> dict[int, signal._HANDLER]:
    stopping = threading.Event()

    def on_stop_signal(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.warning("%s again: killing our providers and exiting now", name)
            groups.kill_all()
            logging.shutdown()
            os._exit(EXIT_SECOND_SIGNAL)
        stopping.set()
        log.info("%s: stopping in order (again to exit at once)", name)
        supervisor.shutdown(stop_reason)

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        if on_reload is not None:
            on_reload()

    previous: dict[int, signal._HANDLER] = {
        s: signal.signal(s, on_stop_signal) for s in STOP_SIGNALS
    }
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    return previous
