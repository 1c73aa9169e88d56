"""The KeeperActor behind `run`: keep exactly one provider alive.

A ticker thread asks the keeper to `tick` every `TICK_S`; each tick is short (at
most one readiness slice or one health check), so a shutdown never waits long
behind it. Restart timing comes from `restart_policy`; the keeper only acts.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from macprovider.actors.errors import PortBusy, SpawnFailed
from macprovider.actors.messages import Exited, Knobs, Ready, TimedOut
from macprovider.actors.provider import ProviderProxy
from macprovider.actors.restart_policy import GiveUp, after_crash
from macprovider.actors.supervisor import SupervisorProxy
from macprovider.server.errors import ServeError

log = logging.getLogger("macprovider.run")

TICK_S = 0.5
READY_SLICE_S = 1.0
READY_TIMEOUT_S = 150.0
HEALTH_INTERVAL_S = 10.0
HEALTH_TIMEOUT_S = 5.0
STOP_GRACE_S = 10.0
CALL_TIMEOUT_S = STOP_GRACE_S + 30.0  # the provider actor's longest call, plus margin


@dataclass(frozen=True)
class Target:
    """What `run` keeps alive: the resolved model, port, knobs and API key."""

    model: str
    port: int
    knobs: Knobs
    config_path: Path
    # Compared (a new key restarts the provider) but never shown: targets get logged.
    api_key: str | None = field(default=None, repr=False)


class KeeperActor(pykka.ThreadingActor):
    def __init__(
        self,
        provider: ProviderProxy,
        supervisor: SupervisorProxy,
        load_target: Callable[[], Target],
    ):
        super().__init__()
        self._provider = provider
        self._supervisor = supervisor
        self._load_target = load_target
        self._target = load_target()
        self._running = False  # a provider is started (ready or not yet)
        self._ready = False
        self._started_at = 0.0
        self._last_health = 0.0
        self._next_start_at = 0.0
        self._delay: float | None = None
        self._crashes: list[float] = []
        self._given_up = False
        self._ticker = Ticker(cast(KeeperProxy, self.actor_ref.proxy()), supervisor)

    def on_start(self) -> None:
        self._ticker.start()

    def tick(self) -> None:
        now = time.monotonic()
        if self._given_up:
            return
        if not self._running:
            if now >= self._next_start_at:
                self._start(now)
        elif not self._ready:
            self._await_ready(now)
        else:
            self._watch(now)

    def reload(self) -> None:
        """SIGHUP: read the config again; restart the provider if what it serves changed."""
        try:
            target = self._load_target()
        except ServeError as error:  # a bad edit must not take down a working provider
            log.error("config reload refused, keeping the running provider: %s", error)
            return
        if target == self._target:
            log.info("config reloaded: nothing changed")
            return
        log.info("config reloaded: restarting the provider with %s", target)
        self._target = target
        self._stop_provider()
        self._next_start_at = 0.0
        self._delay = None

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ticker.stop()
        trace = "".join(traceback.format_exception(exception_type, exception_value, tb))
        self._supervisor.child_failed("keeper", trace)

    def on_stop(self) -> None:
        self._ticker.stop()
        if self._running:
            self._stop_provider()

    def _start(self, now: float) -> None:
        t = self._target
        self._started_at = now
        try:
            self._provider.start_provider(t.model, t.port, t.knobs, t.api_key).get(
                timeout=CALL_TIMEOUT_S
            )
        except (PortBusy, SpawnFailed) as error:  # may pass (a port freed late): back off
            self._crashed(now, f"provider could not start: {error}")
            return
        self._running, self._ready = True, False

    def _await_ready(self, now: float) -> None:
        result = self._provider.wait_ready(READY_SLICE_S).get(timeout=CALL_TIMEOUT_S)
        if isinstance(result, Ready):
            log.info("provider ready on port %d", self._target.port)
            self._ready, self._last_health = True, now
        elif isinstance(result, Exited):
            self._crashed(now, result.describe("before it was ready"))
        elif isinstance(result, TimedOut) and now - self._started_at > READY_TIMEOUT_S:
            self._stop_provider()
            self._crashed(now, f"provider not ready within {READY_TIMEOUT_S:.0f} s")

    def _watch(self, now: float) -> None:
        exited = self._provider.check().get(timeout=CALL_TIMEOUT_S)
        if exited is not None:
            self._crashed(now, exited.describe("while serving"))
        elif now - self._last_health >= HEALTH_INTERVAL_S:
            if self._provider.is_healthy(HEALTH_TIMEOUT_S).get(timeout=CALL_TIMEOUT_S):
                self._last_health = now
            else:
                self._stop_provider()
                self._crashed(
                    now, f"provider stopped answering /health within {HEALTH_TIMEOUT_S:.0f} s"
                )

    def _crashed(self, now: float, what: str) -> None:
        """`what` is one line that names the provider (`provider exited while serving (exit
        1): ...`): it is logged as is and ends the give-up message."""
        self._provider.stop_provider(STOP_GRACE_S).get(
            timeout=CALL_TIMEOUT_S
        )  # reap, free the port
        self._running = self._ready = False
        self._crashes.append(now)
        decision = after_crash(self._crashes, self._started_at, self._delay)
        if isinstance(decision, GiveUp):
            self._given_up = True
            self._supervisor.give_up("crash_loop", f"{decision.reason}; last: {what}")
            return
        self._delay = decision.delay_s
        self._next_start_at = now + decision.delay_s
        log.warning("%s; restarting in %.0f s", what, decision.delay_s)

    def _stop_provider(self) -> None:
        self._provider.stop_provider(STOP_GRACE_S).get(timeout=CALL_TIMEOUT_S)  # logs the result
        self._running = self._ready = False


class KeeperProxy(ActorMemberMixin, pykka.ActorProxy[KeeperActor]):
    tick = proxy_method(KeeperActor.tick)
    reload = proxy_method(KeeperActor.reload)


class Ticker:
    """Asks the keeper to tick every `TICK_S` until stopped; a failed tick ends the run."""

    def __init__(self, keeper: KeeperProxy, supervisor: SupervisorProxy):
        self._keeper = keeper
        self._supervisor = supervisor
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="keeper-ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self._keeper.tick().get(timeout=CALL_TIMEOUT_S + READY_SLICE_S)
            except pykka.ActorDeadError:
                return
            except Exception:
                self._supervisor.child_failed("keeper", traceback.format_exc())
                return


def start_keeper(
    provider: ProviderProxy, supervisor: SupervisorProxy, load_target: Callable[[], Target]
) -> KeeperProxy:
    return cast(KeeperProxy, KeeperActor.start(provider, supervisor, load_target).proxy())
