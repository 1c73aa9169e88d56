"""Pre-warm: make a model's weights local, check their integrity, and classify every failure as
transient (the candidate is skipped) or integrity (the whole run aborts).

`prewarm` chains the steps, each in its own module: `prewarm_resolve` finds the files (fetching
only when the HF cache lacks them), `prewarm_integrity` checks them, `prewarm_classify` sorts a
fetch failure. PrewarmActor runs it on its own thread and also measures load time (a provider
start and one disposable request, in `warm_load`). The errors its calls raise
(`prewarm_errors`) and the fetch it is started with are part of its interface, so they are
exported here too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from macprovider.actors.errors import ProviderNotStarted
from macprovider.actors.messages import Knobs, Loaded, LoadFailed
from macprovider.actors.prewarm_classify import classify_failure
from macprovider.actors.prewarm_errors import (
    ModelNotCached,
    PrewarmError,
    PrewarmIntegrityError,
    PrewarmTransientError,
    one_line,
)
from macprovider.actors.prewarm_integrity import IntegrityReport, check_integrity
from macprovider.actors.prewarm_resolve import Fetch, fetch_from_hub, resolve_local
from macprovider.actors.provider import ProviderProxy
from macprovider.actors.warm_load import load_and_warm

__all__ = [
    "Fetch",
    "PrewarmActor",
    "PrewarmError",
    "PrewarmIntegrityError",
    "PrewarmOutcome",
    "PrewarmProxy",
    "PrewarmTransientError",
    "fetch_from_hub",
    "prewarm",
    "start_prewarm_actor",
]


@dataclass(frozen=True)
class PrewarmOutcome:
    """A model made local and checked; fetch time is kept apart from any measurement."""

    report: IntegrityReport
    fetched: bool
    fetch_seconds: float


def prewarm(
    model_id: str,
    *,
    cache_dir: Path | None = None,
    fetch: Fetch = fetch_from_hub,
    clock: Callable[[], float] = time.monotonic,
) -> PrewarmOutcome:
    """Makes `model_id` local (fetching with `fetch` only when the cache lacks it) and checks it.

    Raises PrewarmIntegrityError or PrewarmTransientError as classify_failure sorts a fetch
    failure; one it cannot sort is raised as a plain PrewarmError with the original as cause.
    """
    fetched, fetch_seconds = False, 0.0
    try:
        folder = resolve_local(model_id, cache_dir)
    except ModelNotCached:
        started = clock()
        try:
            fetch(model_id, cache_dir)
        except Exception as e:
            cause = one_line(f"{type(e).__name__}: {e}")
            verdict = classify_failure(e)
            if verdict == "transient":
                raise PrewarmTransientError(model_id, cause) from e
            if verdict == "integrity":
                raise PrewarmIntegrityError(model_id, "download", cause) from e
            raise PrewarmError(f"pre-warm failed: {model_id}: {cause}", model_id) from e
        fetched, fetch_seconds = True, clock() - started
        folder = resolve_local(model_id, cache_dir)
    return PrewarmOutcome(check_integrity(folder, model_id), fetched, fetch_seconds)


class PrewarmActor(pykka.ThreadingActor):
    """Pre-warms one model at a time on its own thread, and measures load time through the
    ProviderActor (the only one that starts providers)."""

    def __init__(
        self,
        *,
        provider: ProviderProxy | None = None,
        cancel: threading.Event | None = None,
        cache_dir: Path | None = None,
        fetch: Fetch = fetch_from_hub,
    ) -> None:
        super().__init__()
        self._provider = provider
        self._cancel = cancel if cancel is not None else threading.Event()
        self._cache_dir = cache_dir
        self._fetch = fetch

    def prewarm(self, model_id: str) -> PrewarmOutcome:
        return prewarm(model_id, cache_dir=self._cache_dir, fetch=self._fetch)

    def load(
        self, model: str, port: int, knobs: Knobs, ready_timeout: float
    ) -> Loaded | LoadFailed:
        """Starts `model`'s provider and measures its load (see `warm_load`)."""
        if self._provider is None:
            raise ProviderNotStarted("measure load time without a ProviderActor")
        return load_and_warm(
            self._provider, model, port, knobs, ready_timeout=ready_timeout, cancel=self._cancel
        )


class PrewarmProxy(ActorMemberMixin, pykka.ActorProxy[PrewarmActor]):
    """The PrewarmActor's methods as mypy sees them through a proxy: each returns a Future."""

    prewarm = proxy_method(PrewarmActor.prewarm)
    load = proxy_method(PrewarmActor.load)


def start_prewarm_actor(
    *,
    provider: ProviderProxy | None = None,
    cancel: threading.Event | None = None,
    cache_dir: Path | None = None,
    fetch: Fetch = fetch_from_hub,
) -> PrewarmProxy:
    """Starts a PrewarmActor and returns its typed proxy."""
    ref = PrewarmActor.start(provider=provider, cancel=cancel, cache_dir=cache_dir, fetch=fetch)
    return cast(PrewarmProxy, ref.proxy())
