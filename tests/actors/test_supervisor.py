"""The Supervisor's contract, with small recording actors."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pykka

from macprovider.actors.messages import RunOutcome
from macprovider.actors.supervisor import ChildSpec, SupervisorProxy, start_supervisor

TIMEOUT_S = 10.0


class Recorder(pykka.ThreadingActor):
    def __init__(self, name: str, events: list[str]):
        super().__init__()
        self.name = name
        self.events = events

    def on_start(self) -> None:
        self.events.append(f"start {self.name}")

    def on_stop(self) -> None:
        self.events.append(f"stop {self.name}")


def spec(name: str, events: list[str]) -> ChildSpec:
    return ChildSpec(name, lambda _: Recorder.start(name, events))


def run(children: list[ChildSpec]) -> tuple[SupervisorProxy, Callable[[], RunOutcome]]:
    done = threading.Event()
    outcomes: list[RunOutcome] = []

    def finished(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        done.set()

    supervisor = start_supervisor(children, finished)

    def outcome() -> RunOutcome:
        assert done.wait(TIMEOUT_S), "the supervisor never finished"
        return outcomes[0]

    return supervisor, outcome


def test_children_start_in_order_and_stop_in_reverse() -> None:
    events: list[str] = []
    supervisor, outcome = run([spec(n, events) for n in ("store", "provider", "tuner")])
    supervisor.shutdown("stopped").get(timeout=TIMEOUT_S)
    assert outcome() == RunOutcome("stopped")
    assert events == [
        "start store",
        "start provider",
        "start tuner",
        "stop tuner",
        "stop provider",
        "stop store",
    ]


def test_a_child_failure_stops_everything_with_internal_error() -> None:
    events: list[str] = []
    supervisor, outcome = run([spec("store", events), spec("tuner", events)])
    supervisor.child_failed("tuner", "Traceback: boom").get(timeout=TIMEOUT_S)
    assert outcome() == RunOutcome("internal_error", "tuner: Traceback: boom")
    assert events[-2:] == ["stop tuner", "stop store"]
    supervisor.shutdown("stopped")  # a late second request changes nothing
    assert outcome().reason == "internal_error"


def test_a_child_that_cannot_start_stops_the_ones_before_it() -> None:
    events: list[str] = []

    def broken(_: SupervisorProxy) -> pykka.ActorRef[Any]:
        raise RuntimeError("no database")

    _, outcome = run([spec("store", events), ChildSpec("drain", broken), spec("tuner", events)])
    assert outcome() == RunOutcome("internal_error", "drain failed to start: no database")
    assert events == ["start store", "stop store"]
