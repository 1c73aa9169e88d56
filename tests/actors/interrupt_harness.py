"""The real autotune tree, with a provider start/stop loop for its work, to be interrupted
at random.

`python -m tests.actors.interrupt_harness DB STATE_DIR PORT` runs the tree of
`actors/trees.py` (Drain, Store, Provider, Prewarm, Probe, with their finalizers) under the
real Supervisor and main-thread runtime, with the stand-in provider as the serve command
and, in the Tuner's place, a Looper that writes the run row then starts, awaits and stops
the provider over and over. SIGINT must end it in order: the run row closed as
`interrupted` (by the Store's finalizer, as for a real run), the provider stopped, nothing
left. Exit code 1 for an interrupted run, 70 for anything else.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any, cast

import pykka

from macprovider.actors.autotune_inputs import TuneSettings
from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.messages import Knobs
from macprovider.actors.provider import ProviderProxy
from macprovider.actors.store_actor import StoreProxy
from macprovider.actors.store_records import RunStart
from macprovider.actors.supervisor import SupervisorProxy
from macprovider.actors.trees import AutotuneJob, AutotuneParts, tune
from macprovider.actors.tuner import Peers
from tests.actors.test_provider import STANDIN_COMMAND
from tests.actors.test_store import make_run
from tests.conftest import clean_env

TIMEOUT_S = 30.0


class Looper(pykka.ThreadingActor):
    """One start → ready → stop cycle per message, so a stop request lands between cycles."""

    def __init__(self, store: StoreProxy, run: RunStart, provider: ProviderProxy, port: int):
        super().__init__()
        self._store = store
        self._run = run
        self._provider = provider
        self._port = port

    def on_start(self) -> None:
        self._store.begin_run(self._run).get(timeout=TIMEOUT_S)
        print("run started", flush=True)  # the test's signal that the run row exists
        cast(LooperProxy, self.actor_ref.proxy()).cycle()

    def cycle(self) -> None:
        self._provider.start_provider("standin", self._port, Knobs()).get(timeout=TIMEOUT_S)
        self._provider.wait_ready(TIMEOUT_S).get(timeout=TIMEOUT_S + 5)
        self._provider.stop_provider(5.0).get(timeout=TIMEOUT_S)
        cast(LooperProxy, self.actor_ref.proxy()).cycle()


class LooperProxy(pykka.ActorProxy[Looper]):
    cycle: Any


def main(db: Path, state_dir: Path, port: int) -> int:
    run = make_run(uuid.uuid4().hex)
    settings = TuneSettings(candidates=("standin",), port=port)
    env = clean_env(STANDIN_MODE="ok")
    job = AutotuneJob(settings, run, db, state_dir, env, serve_command=STANDIN_COMMAND)

    def looper(_: SupervisorProxy, peers: Peers) -> pykka.ActorRef[Any]:
        return Looper.start(peers.store, run, peers.provider, port)

    result = tune(job, parts=AutotuneParts(work=looper))
    return 1 if result.outcome.reason == ExitReason.INTERRUPTED else 70


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])))
