"""The TunerActor: runs one `Tuner` on its own thread and reports how it ended, then asks the
Supervisor to end the run (with the run's exit reason, or why the tuner could not finish)."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable
from typing import Any, Final

import pykka

from macprovider.actors.exit_reasons import DATABASE_UNAVAILABLE
from macprovider.actors.store_errors import StoreUnavailable
from macprovider.actors.supervisor import SupervisorProxy
from macprovider.actors.tune_events import TuneSummary
from macprovider.actors.tuner import Tuner

log = logging.getLogger("macprovider.autotune")

_TUNE: Final = "tune"


class TunerActor(pykka.ThreadingActor):
    """Runs one Tuner on its own thread, then asks the Supervisor to end the run."""

    def __init__(
        self, tuner: Tuner, supervisor: SupervisorProxy, report: Callable[[TuneSummary], None]
    ) -> None:
        super().__init__()
        self._tuner = tuner
        self._supervisor = supervisor
        self._report = report

    def on_start(self) -> None:
        # A told message, not a proxy call: an exception in it reaches on_failure.
        self.actor_ref.tell(_TUNE)

    def on_receive(self, message: Any) -> None:
        if message == _TUNE:
            self._tune()

    def _tune(self) -> None:
        try:
            summary = self._tuner.run()
        except StoreUnavailable as error:
            # Not a bug, and nothing can be recorded: the run ends on the one-line reason.
            # Every provider was stopped before the write that failed (see `_trial`).
            with contextlib.suppress(pykka.ActorDeadError):
                self._supervisor.give_up(DATABASE_UNAVAILABLE, str(error))
            return
        except Exception:
            trace = traceback.format_exc()
            log.error("the tuner failed:\n%s", trace)
            self._tuner.record_crash(trace)
            with contextlib.suppress(pykka.ActorDeadError):
                self._supervisor.child_failed("tuner", trace.strip().splitlines()[-1])
            return
        self._report(summary)
        with contextlib.suppress(pykka.ActorDeadError):  # a Ctrl-C may have ended it already
            self._supervisor.shutdown(summary.exit_reason.value)


def start_tuner(
    tuner: Tuner, supervisor: SupervisorProxy, report: Callable[[TuneSummary], None]
) -> pykka.ActorRef[TunerActor]:
    return TunerActor.start(tuner, supervisor, report)
