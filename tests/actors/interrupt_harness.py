"""A supervised provider start/stop loop with a run row, to be interrupted at random.

`python -m tests.actors.interrupt_harness DB STATE_DIR PORT` runs, under the real
Supervisor and main-thread runtime, a Store (run row written first), a ProviderActor
driving the stand-in provider, and a Looper that starts, awaits and stops it over and
over. SIGINT must end it in order: the run row closed as `interrupted`, the provider
stopped, nothing left. Exit code 1 for an interrupted run, 70 for anything else.
"""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pykka

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.messages import Knobs, RunOutcome
from macprovider.actors.provider import ProcessGroups, ProviderProxy, start_provider_actor
from macprovider.actors.runtime import supervise
from macprovider.actors.store import StoreProxy, start_store_actor
from macprovider.actors.supervisor import ChildSpec, SupervisorProxy
from tests.actors.test_provider import STANDIN_COMMAND
from tests.actors.test_store import make_run
from tests.conftest import clean_env

TIMEOUT_S = 30.0


class Looper(pykka.ThreadingActor):
    """One start → ready → stop cycle per message, so a stop request lands between cycles."""

    def __init__(self, provider: ProviderProxy, port: int):
        super().__init__()
        self._provider = provider
        self._port = port

    def on_start(self) -> None:
        cast(LooperProxy, self.actor_ref.proxy()).cycle()

    def cycle(self) -> None:
        self._provider.start_provider("standin", self._port, Knobs()).get(timeout=TIMEOUT_S)
        self._provider.wait_ready(TIMEOUT_S).get(timeout=TIMEOUT_S + 5)
        self._provider.stop_provider(5.0).get(timeout=TIMEOUT_S)
        cast(LooperProxy, self.actor_ref.proxy()).cycle()


class LooperProxy(pykka.ActorProxy[Looper]):
    cycle: Any


def main(db: Path, state_dir: Path, port: int) -> int:
    run_id = uuid.uuid4().hex
    groups = ProcessGroups()
    actors: dict[str, Any] = {}

    def store_child(_: SupervisorProxy) -> pykka.ActorRef[Any]:
        store = start_store_actor(db)
        store.begin_run(make_run(run_id)).get(timeout=TIMEOUT_S)
        actors["store"] = store
        print("run started", flush=True)
        return store.actor_ref

    def close_run(outcome: RunOutcome) -> None:
        reason = ExitReason.INTERRUPTED if outcome.reason == "stopped" else outcome.reason
        store: StoreProxy = actors["store"]
        store.finish_run(run_id, ExitReason(reason), ended_at=datetime.now(UTC)).get(
            timeout=TIMEOUT_S
        )

    def provider_child(_: SupervisorProxy) -> pykka.ActorRef[Any]:
        env = clean_env(STANDIN_MODE="ok")
        proxy = start_provider_actor(
            state_dir, serve_command=STANDIN_COMMAND, env=env, groups=groups
        )
        actors["provider"] = proxy
        return proxy.actor_ref

    def looper_child(_: SupervisorProxy) -> pykka.ActorRef[Any]:
        return Looper.start(actors["provider"], port)

    outcome = supervise(
        [
            ChildSpec("store", store_child, finalize=close_run),
            ChildSpec("provider", provider_child),
            ChildSpec("looper", looper_child),
        ],
        groups,
    )
    return 1 if outcome.reason == "stopped" else 70


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
