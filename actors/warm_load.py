"""Load time: start a provider through the ProviderActor, wait until it is
ready, then complete one disposable request, so that nothing a first request pays for (lazy
weight mapping, kernel set-up, the first prefill's allocations) is charged to a measured TTFT.

The wait is taken in short slices so that a Ctrl-C (the shared `cancel` event) is noticed
within about a second even during a slow load.
"""

from __future__ import annotations

import threading
import time
from typing import Final

import httpx

from macprovider.actors.errors import PortBusy, SpawnFailed
from macprovider.actors.messages import Exited, Knobs, Loaded, LoadFailed, Ready
from macprovider.actors.provider import LOCALHOST, ProviderProxy
from macprovider.actors.trial_outcome import INTERRUPTED

READY_SLICE_S: Final = 1.0
# Bounds on a call into the ProviderActor: its longest (a stop) takes well under this.
CALL_TIMEOUT_S: Final = 60.0
WARM_UP_TIMEOUT_S: Final = 120.0
WARM_UP_BODY: Final = {"max_tokens": 1, "temperature": 0, "stream": False}


def died_during_load(exited: Exited) -> LoadFailed:
    """A provider's death during load, its notes line naming the exit code or the signal."""
    return LoadFailed(
        exited.describe("during load"),
        exited=True,
        killed_from_outside=exited.killed_from_outside,
    )


def load_and_warm(
    provider: ProviderProxy,
    model: str,
    port: int,
    knobs: Knobs,
    *,
    ready_timeout: float,
    cancel: threading.Event,
) -> Loaded | LoadFailed:
    """Starts the provider and measures its load; the provider is left running on success.

    On failure the provider may still be running (not ready in time, a failed disposable
    request): the caller stops it, as it stops every provider after a trial.
    """
    started = time.perf_counter()
    try:
        provider.start_provider(model, port, knobs).get(timeout=CALL_TIMEOUT_S)
    except (PortBusy, SpawnFailed) as error:
        return LoadFailed(f"provider did not start: {error}", exited=False)
    waited = _wait_ready(provider, started, ready_timeout, cancel)
    if waited is not None:
        return waited
    try:
        _disposable_request(port, model)
    except httpx.HTTPError as error:
        exited = provider.check().get(timeout=CALL_TIMEOUT_S)
        if exited is not None:
            return died_during_load(exited)
        return LoadFailed(f"the disposable first request failed: {error}", exited=False)
    return Loaded(time.perf_counter() - started)


def _wait_ready(
    provider: ProviderProxy, started: float, ready_timeout: float, cancel: threading.Event
) -> LoadFailed | None:
    deadline = started + ready_timeout
    while True:
        if cancel.is_set():
            return LoadFailed(INTERRUPTED, exited=False)
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return LoadFailed(f"provider not ready within {ready_timeout:g} s", exited=False)
        result = provider.wait_ready(min(READY_SLICE_S, remaining)).get(timeout=CALL_TIMEOUT_S)
        if isinstance(result, Ready):
            return None
        if isinstance(result, Exited):
            return died_during_load(result)


def _disposable_request(port: int, model: str) -> None:
    body = {**WARM_UP_BODY, "model": model, "messages": [{"role": "user", "content": "hi"}]}
    url = f"http://{LOCALHOST}:{port}/v1/chat/completions"
    response = httpx.post(url, json=body, timeout=WARM_UP_TIMEOUT_S, trust_env=False)
    response.raise_for_status()
