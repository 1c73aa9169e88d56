"""The Tuner's peers for its tests: a stand-in `serve` that also answers the disposable
warm-up request, a scripted ProbeActor, a PrewarmActor that remembers what it pre-warmed,
and a clock the tests move by hand.

Only the ProbeActor is scripted: the Store, the ProviderActor (running the stand-in) and the
PrewarmActor are the real ones, so a trial really starts, waits for and stops a process.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import psutil
import pykka

from macprovider.actors.autotune_inputs import TuneSettings
from macprovider.actors.messages import ProbeSpec, ProviderHandle
from macprovider.actors.prewarm import (
    Fetch,
    PrewarmActor,
    PrewarmOutcome,
    PrewarmProxy,
    fetch_from_hub,
)
from macprovider.actors.probe import ProbeProxy
from macprovider.actors.provider import ProviderProxy
from macprovider.actors.store_records import RunStart
from macprovider.actors.trees import run_start as tree_run_start
from macprovider.actors.tuning import Cell, Replicate

CALL_TIMEOUT_S = 20.0
STANDIN_DIR = Path(__file__).resolve().parent
STANDIN_MARK = "tuner-peers-standin"

# `provider_standin` serves only `GET /v1/models`; the PrewarmActor's load also sends one
# disposable `POST /v1/chat/completions` (actors/warm_load.py). This wrapper adds that, and
# picks STANDIN_MODE per model from the JSON object in STANDIN_MODES, so that one
# ProviderActor can run a candidate that dies during load next to ones that load. Standard
# library only, like the stand-in, so a start costs one interpreter start and nothing more.
_WRAPPER = """# __MARK__
import json
import os
import sys
import time

sys.path.insert(0, __DIR__)
import provider_standin as standin


def do_POST(self):
    self.rfile.read(int(self.headers.get("Content-Length") or 0))
    if self.path != "/v1/chat/completions":
        self._answer(404, b'{"error": "not found"}')
        return
    if self.server.mode == "never-ready" or time.monotonic() < self.server.ready_at:
        self._answer(503, b'{"error": "loading"}')
        return
    answer = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok"},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    self._answer(200, json.dumps(answer).encode())


standin.StandinHandler.do_POST = do_POST
argv = sys.argv[1:]
model = argv[argv.index("--model") + 1]
mode = json.loads(os.environ.get("STANDIN_MODES", "{}")).get(model)
if mode is not None:
    os.environ["STANDIN_MODE"] = mode
sys.exit(standin.main(argv))
""".replace("__MARK__", STANDIN_MARK).replace("__DIR__", repr(str(STANDIN_DIR)))

STANDIN_COMMAND: tuple[str, ...] = (sys.executable, "-c", _WRAPPER)


def standin_env(modes: Mapping[str, str]) -> dict[str, str]:
    """The stand-in's own variables (added to a clean environment by the caller)."""
    return {"STANDIN_MODES": json.dumps(dict(modes)), "STANDIN_LOAD_DELAY": "0"}


def live_standins() -> list[psutil.Process]:
    """Our stand-in providers that are still running (a zombie counts as gone)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any(STANDIN_MARK in part for part in child.cmdline()) and (
                child.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


# --- where a probe lands ---------------------------------------------------------------------


@dataclass(frozen=True)
class At:
    """The provider a replicate measured: its model and knobs, as read from its argv."""

    model: str
    kv_bits: int | None
    max_batch: int | None
    max_context: int | None


def cell_at(model: str, cell: Cell) -> At:
    return At(model, cell.kv_bits, cell.max_batch, cell.max_context)


def _flag(argv: Sequence[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _int_flag(argv: Sequence[str], flag: str) -> int | None:
    value = _flag(argv, flag)
    return None if value is None else int(value)


def at_of(handle: ProviderHandle) -> At:
    argv = handle.argv
    return At(
        _flag(argv, "--model") or "",
        _int_flag(argv, "--kv-bits"),
        _int_flag(argv, "--max-batch"),
        _int_flag(argv, "--max-context"),
    )


@dataclass(frozen=True)
class ProbeCall:
    """One replicate the Tuner asked for, and the provider that was live when it did."""

    spec: ProbeSpec
    at: At
    handle: ProviderHandle
    live_providers: int  # stand-in processes running at that moment
    provider_alive: bool  # the handle's own process


# A scripted step: a fixed Replicate, or a function of the call (to move the clock, set the
# cancel event, or raise like a crashing actor).
Step = Replicate | Callable[[ProbeCall], Replicate]


class ScriptedProbe(pykka.ThreadingActor):
    """A ProbeActor stand-in: answers each replicate with the next scripted step for the
    provider that is live (read from the ProviderActor), and records every call.

    An unscripted provider, or a script used up, fails the call (and so the Tuner).
    """

    def __init__(
        self,
        provider: ProviderProxy,
        script: Mapping[At, Sequence[Step]],
        calls: list[ProbeCall],
    ) -> None:
        super().__init__()
        self._provider = provider
        self._script = {at: list(steps) for at, steps in script.items()}
        self._calls = calls

    def replicate(self, spec: ProbeSpec) -> Replicate:
        handle = self._provider.handle().get(timeout=CALL_TIMEOUT_S)
        if handle is None:
            raise AssertionError(f"a replicate was asked for with no provider: {spec}")
        call = ProbeCall(
            spec=spec,
            at=at_of(handle),
            handle=handle,
            live_providers=len(live_standins()),
            provider_alive=psutil.pid_exists(handle.pid),
        )
        self._calls.append(call)
        steps = self._script.get(call.at)
        if not steps:
            raise AssertionError(f"no scripted replicate left for {call.at}")
        step = steps.pop(0)
        return step if isinstance(step, Replicate) else step(call)


def start_scripted_probe(
    provider: ProviderProxy, script: Mapping[At, Sequence[Step]], calls: list[ProbeCall]
) -> ProbeProxy:
    """The scripted probe, typed as what the Tuner asks (only `.replicate` is used)."""
    return cast(ProbeProxy, ScriptedProbe.start(provider, script, calls).proxy())


# --- a PrewarmActor that remembers ------------------------------------------------------------


class RecordingPrewarmActor(PrewarmActor):
    """The real PrewarmActor, also noting every model it was asked to pre-warm."""

    def __init__(
        self,
        prewarmed: list[str],
        *,
        provider: ProviderProxy,
        cancel: threading.Event,
        cache_dir: Path | None = None,
        fetch: Fetch = fetch_from_hub,
    ) -> None:
        super().__init__(provider=provider, cancel=cancel, cache_dir=cache_dir, fetch=fetch)
        self._prewarmed = prewarmed

    def prewarm(self, model_id: str) -> PrewarmOutcome:
        self._prewarmed.append(model_id)
        return super().prewarm(model_id)


def start_recording_prewarm(
    prewarmed: list[str],
    *,
    provider: ProviderProxy,
    cancel: threading.Event,
    cache_dir: Path | None = None,
) -> PrewarmProxy:
    ref = RecordingPrewarmActor.start(
        prewarmed, provider=provider, cancel=cancel, cache_dir=cache_dir
    )
    return cast(PrewarmProxy, ref.proxy())


# --- time and the run row ---------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._now = start

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def run_start(run_id: str, settings: TuneSettings) -> RunStart:
    """The run row the CLI would write, under a test's own id."""
    return replace(tree_run_start(settings, datetime.now(UTC)), run_id=run_id)
