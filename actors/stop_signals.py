"""SIGINT and SIGTERM from the first line of a command to its exit: one handler, four phases.

A first stop signal means "stop" whenever it comes; what that takes depends on how far the
command has got:

- **early** (nothing started yet): the command leaves at once with one line and exit 130.
  Nothing has been written, so there is nothing to undo.
- **deferred** (inside `deferred()`: a step that must not be cut half-way, such as writing a
  file): the signal is recorded; the step asks `raise_if_requested()` at its commit point and
  gives up there, leaving the old file as it was.
- **supervised** (a Supervisor runs): the Supervisor is asked for the ordered stop (the
  in-flight trial recorded, providers stopped, the run row closed).
- **finished** (the supervised work has ended; only output is left): the signal is noted and
  the command ends as it would have; after the exit handlers it is ignored, so the exit code
  stands.

A second stop signal, in any phase, is the fastest safe exit: our own providers' process
groups are killed and the process exits 130 without waiting for anything.

This module imports only the standard library: it is installed before anything heavy is
imported, so a Ctrl-C during start-up never becomes a traceback or a lost signal. Until it is
installed, Python's own SIGINT handler raises KeyboardInterrupt; the launcher turns one raised
in its first lines into the same early exit. (Python's own start-up, before our first line
runs, is the only window left: tens of milliseconds.)
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Final, NoReturn

log = logging.getLogger("macprovider.supervisor")

EXIT_INTERRUPTED: Final = 130
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
PROG: Final = "macprovider-supervise"


class Interrupted(Exception):
    """A stop signal arrived before the step's commit point: nothing was changed."""


class StopSignals:
    """The process's one handler of SIGINT/SIGTERM (and SIGHUP); see the module docstring."""

    def __init__(self) -> None:
        self.requested: str | None = None  # the first stop signal's name, once one came
        self._installed = False
        self._deferring = 0
        self._depth_lock = threading.Lock()
        self._finished = False
        self._on_stop: Callable[[str], None] | None = None
        self._kill_providers: Callable[[], None] | None = None
        self._on_hangup: Callable[[], None] | None = None

    def install(self) -> None:
        """Takes over SIGINT, SIGTERM and SIGHUP; idempotent. Main thread only."""
        if self._installed:
            return
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle_stop)
        # The default action of SIGHUP ends the process; `run` reloads on it instead.
        signal.signal(signal.SIGHUP, self._handle_hangup)
        # Registered first, so it runs last: once the other exit handlers have run, Python's
        # teardown puts the default actions back, and a late Ctrl-C would then turn the exit
        # code the command chose into "killed by SIGINT".
        atexit.register(_ignore_stop_signals)
        self._installed = True

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A step that must finish or not start: a first signal inside it is only recorded."""
        with self._depth_lock:
            self._deferring += 1
        try:
            yield
        finally:
            with self._depth_lock:
                self._deferring -= 1

    def raise_if_requested(self) -> None:
        """The commit point of a deferred step: past it the step completes, before it not."""
        if self.requested is not None:
            raise Interrupted(f"{self.requested} arrived first; nothing was changed")

    @contextlib.contextmanager
    def supervising(
        self,
        start: Callable[[], Callable[[str], None]],
        kill_providers: Callable[[], None],
        on_hangup: Callable[[], None] | None,
    ) -> Iterator[None]:
        """`start()` creates the Supervisor and returns how to ask it to stop; a signal while
        it is being created is recorded and handed over as soon as it exists."""
        with self.deferred():
            on_stop = start()
            self._kill_providers = kill_providers
            self._on_hangup = on_hangup
            self._on_stop = on_stop
        if self.requested is not None:
            on_stop(self.requested)
        try:
            yield
        finally:
            self._on_stop = None
            self._on_hangup = None
            self._finished = True

    def _handle_stop(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            self._exit_now(name)
        self.requested = name
        on_stop = self._on_stop
        if on_stop is not None:
            log.info("%s: stopping in order (again to exit at once)", name)
            on_stop(name)
        elif self._deferring:
            log.info(
                "%s: finishing the step under way, then stopping (again to exit at once)", name
            )
        elif self._finished:
            log.info("%s: the run has already ended; finishing its output", name)
        else:
            stopped_before_anything(name)

    def _exit_now(self, name: str) -> None:
        if self._kill_providers is not None:
            log.warning("%s again: killing our providers and exiting now", name)
            self._kill_providers()
        else:
            _say(f"{PROG}: {name} again: exiting now")
        logging.shutdown()
        os._exit(EXIT_INTERRUPTED)

    def _handle_hangup(self, signum: int, frame: FrameType | None) -> None:
        # Outside `run`'s supervision there is nothing to reload: ignored.
        if self._on_hangup is not None:
            self._on_hangup()


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def stopped_before_anything(name: str) -> NoReturn:
    """The early phase's exit: one line, 130, nothing to undo."""
    _say(f"{PROG}: {name}: stopped before anything started; nothing was changed")
    os._exit(EXIT_INTERRUPTED)


def _say(line: str) -> None:
    # Straight to the file descriptor: the process leaves at once, and Python's buffered
    # stderr may be in the middle of a write of the interrupted thread.
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode())


STOP: Final = StopSignals()
