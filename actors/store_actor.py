"""The StoreActor: the autotune database's only writer within a run, on its own thread.

It owns one `Store`, opened on that thread (a SQLite connection stays on the thread that made
it), and only delegates to it; a database that cannot be opened makes every call raise why.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from macprovider.actors.autotune_inputs import DEFAULT_RETAIN_RUNS
from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.store import Store, checked_retain_runs
from macprovider.actors.store_errors import StoreUnavailable
from macprovider.actors.store_records import RunStart, StoredRun, StoredTrial, TrialRecord

log = logging.getLogger("macprovider.actors.store")


class StoreActor(pykka.ThreadingActor):
    """Owns the Store on the actor's thread, where its connection was opened."""

    def __init__(self, path: Path, *, retain_runs: int = DEFAULT_RETAIN_RUNS) -> None:
        super().__init__()
        self._path = path
        # Checked here, in the caller's thread, so a bad value fails the start call itself.
        self._retain_runs = checked_retain_runs(retain_runs)
        # Set by on_start, which pykka runs before handling any message.
        self._opened: Store | None = None
        self._unavailable: StoreUnavailable | None = None

    def on_start(self) -> None:
        try:
            self._opened = Store(self._path, retain_runs=self._retain_runs)
        except StoreUnavailable as error:
            # Kept, not raised: a failed on_start kills the actor, and every caller would get
            # an ActorDeadError instead of why. Each call now raises the reason.
            self._unavailable = error
            return
        self._opened.settle_pending_applies()

    @property
    def _store(self) -> Store:
        if self._opened is None:
            assert self._unavailable is not None  # on_start either opened it or kept why not
            raise self._unavailable
        return self._opened

    def on_stop(self) -> None:
        if self._opened is not None:
            self._opened.close()

    def begin_run(self, run: RunStart) -> None:
        self._store.begin_run(run)

    def record_trial(self, trial: TrialRecord) -> int:
        return self._store.record_trial(trial)

    def set_kept(self, run_id: str, trial_id: int) -> None:
        self._store.set_kept(run_id, trial_id)

    def finish_run(
        self,
        run_id: str,
        exit_reason: ExitReason,
        *,
        ended_at: datetime,
        recommendation_json: str | None = None,
        recipe_hash: str | None = None,
        applied: bool = False,
    ) -> None:
        self._store.finish_run(
            run_id,
            exit_reason,
            ended_at=ended_at,
            recommendation_json=recommendation_json,
            recipe_hash=recipe_hash,
            applied=applied,
        )

    def close_if_open(self, run_id: str, exit_reason: ExitReason, *, ended_at: datetime) -> bool:
        try:
            return self._store.close_if_open(run_id, exit_reason, ended_at=ended_at)
        except StoreUnavailable as error:
            # The backstop of a run that ends anyway: say why its row stays open, and let the
            # orderly stop go on (whoever failed to write first has reported it already).
            log.warning("run %s left open: %s", run_id, error)
            return False

    def runs(self) -> list[StoredRun]:
        return self._store.runs()

    def trials(self, run_id: str) -> list[StoredTrial]:
        return self._store.trials(run_id)

    def integrity_ok(self) -> bool:
        return self._store.integrity_ok()


class StoreProxy(ActorMemberMixin, pykka.ActorProxy[StoreActor]):
    """The StoreActor's methods as mypy sees them through a proxy: each returns a Future."""

    begin_run = proxy_method(StoreActor.begin_run)
    record_trial = proxy_method(StoreActor.record_trial)
    set_kept = proxy_method(StoreActor.set_kept)
    finish_run = proxy_method(StoreActor.finish_run)
    close_if_open = proxy_method(StoreActor.close_if_open)
    runs = proxy_method(StoreActor.runs)
    trials = proxy_method(StoreActor.trials)
    integrity_ok = proxy_method(StoreActor.integrity_ok)


def start_store_actor(path: Path, *, retain_runs: int = DEFAULT_RETAIN_RUNS) -> StoreProxy:
    """Starts a StoreActor on the database at `path` and returns its typed proxy."""
    return cast(StoreProxy, StoreActor.start(path, retain_runs=retain_runs).proxy())
