"""The Supervisor: starts its children in order, stops them in reverse, and turns a child's
crash into the same orderly stop. It never does the work itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from macprovider.actors.messages import RunOutcome

log = logging.getLogger("macprovider.supervisor")

CHILD_STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ChildSpec:
    """A child by name, how to start it given the supervisor's proxy (to report to), and
    what to do with the run's outcome just before it is stopped (e.g. the Store closes
    the run row, after every later child is already stopped)."""

    name: str
    start: Callable[[SupervisorProxy], pykka.ActorRef[Any]]
    finalize: Callable[[RunOutcome], None] | None = None


class Supervisor(pykka.ThreadingActor):
    def __init__(self, children: Sequence[ChildSpec], finished: Callable[[RunOutcome], None]):
        super().__init__()
        self._specs = tuple(children)
        self._finished = finished
        self._started: list[tuple[ChildSpec, pykka.ActorRef[Any]]] = []
        self._stopping = False

    def on_start(self) -> None:
        me = cast(SupervisorProxy, self.actor_ref.proxy())
        for spec in self._specs:
            try:
                self._started.append((spec, spec.start(me)))
            except Exception as exc:  # a child that cannot start ends the run in order
                log.exception("%s failed to start", spec.name)
                self.shutdown("internal_error", f"{spec.name} failed to start: {exc}")
                return

    def shutdown(self, reason: str, failure: str | None = None) -> None:
        """Stops every child, newest first, then reports how the run ended. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        log.info("stopping (%s)", reason)
        outcome = RunOutcome(reason, failure)
        for spec, ref in reversed(self._started):
            try:
                if spec.finalize is not None:
                    spec.finalize(outcome)
            except Exception:  # the child must still stop, or its thread keeps the process
                log.exception("%s could not finish its part of the run", spec.name)
            try:
                ref.stop(block=True, timeout=CHILD_STOP_TIMEOUT_S)
            except Exception:  # one stuck child must not keep the others running
                log.exception("%s did not stop cleanly", spec.name)
        self._finished(outcome)
        self.actor_ref.stop(block=False)

    def child_failed(self, name: str, description: str) -> None:
        log.error("%s failed: %s", name, description)
        self.shutdown("internal_error", f"{name}: {description}")

    def give_up(self, reason: str, description: str) -> None:
        """A child ends the run on purpose (e.g. a crash loop), with its own exit reason."""
        log.error("%s", description)
        self.shutdown(reason, description)


class SupervisorProxy(ActorMemberMixin, pykka.ActorProxy[Supervisor]):
    shutdown = proxy_method(Supervisor.shutdown)
    child_failed = proxy_method(Supervisor.child_failed)
    give_up = proxy_method(Supervisor.give_up)


def start_supervisor(
    children: Sequence[ChildSpec], finished: Callable[[RunOutcome], None]
) -> SupervisorProxy:
    return cast(SupervisorProxy, Supervisor.start(children, finished).proxy())
