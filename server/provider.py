"""State the routes share: the engine, admission, and routing of engine events to requests.

The engine calls `emit` from its own thread once per decode step; the events
reach the trio loop through `TrioToken.run_sync_soon` (a non-blocking hand-off)
and are routed to each request's memory channel.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from macprovider.server.api import DEFAULT_MAX_TOKENS, GenerationParams
from macprovider.server.config import ServeConfig
from macprovider.server.engine import Engine, Event, Job, JobFailed, JobFinished, SamplingParams
from macprovider.server.errors import EngineDied, ModelLoadError, Overloaded, ServeError
from macprovider.server.metrics import Metrics

log = logging.getLogger("macprovider.serve")


class Provider:
    def __init__(self, config: ServeConfig, model_path: Path, metrics: Metrics):
        self.config = config
        self.model_path = model_path
        self.metrics = metrics
        self.served_id = config.model or model_path.name
        self.created = int(time.time())
        self.shutdown = trio.Event()
        self.failure: ServeError | None = None  # why the server stopped by itself
        self.engine: Engine | None = None
        self.in_flight = 0
        self._channels: dict[int, trio.MemorySendChannel[Event]] = {}
        self._next_job = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._tokenizer_lock = trio.CapacityLimiter(1)

    async def start(self, nursery: trio.Nursery) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.engine = Engine(
            self.model_path,
            max_batch=self.config.max_batch,
            kv_bits=self.config.kv_bits,
            metrics=self.metrics,
            emit=self._emit_from_engine,
        )
        self.engine.start()
        nursery.start_soon(self._watch_load)

    async def _watch_load(self) -> None:
        assert self.engine is not None
        await trio.to_thread.run_sync(self.engine.ready.wait, abandon_on_cancel=True)
        if self.engine.load_error:
            self._fail(ModelLoadError(self.engine.load_error))
            return
        log.info("model loaded from %s; serving it as %r", self.model_path, self.served_id)
        await trio.to_thread.run_sync(self.engine.finished.wait, abandon_on_cancel=True)
        if not self.shutdown.is_set():
            self._fail(EngineDied("the engine thread ended unexpectedly"))

    def _fail(self, failure: ServeError) -> None:
        self.failure = failure
        self.shutdown.set()

    @property
    def ready(self) -> bool:
        engine = self.engine
        return engine is not None and engine.ready.is_set() and not engine.load_error

    @property
    def tokenizer(self) -> object:
        assert self.engine is not None
        return self.engine.tokenizer

    def accepts_model(self, name: str | None) -> bool:
        return name is None or name in (self.served_id, self.model_path.name)

    async def encode(self, fn: Callable[[], list[int]]) -> list[int]:
        # The HF tokenizer is not safe for concurrent use, so calls go one at a time.
        return await trio.to_thread.run_sync(fn, limiter=self._tokenizer_lock)

    def admit(self, prompt: list[int], params: GenerationParams) -> Generation:
        config = self.config
        if self.in_flight >= config.max_batch + config.max_queue:
            raise Overloaded(
                f"all {config.max_batch} batch slots and {config.max_queue} queue places are "
                "taken; retry shortly",
                code="server_overloaded",
            )
        # The KV cache holds the prompt and every generated token but the last (which is
        # never fed back), so this many new tokens keep it within max_context.
        room = config.max_context - len(prompt) + 1
        job = Job(
            job_id=self._next_job,
            prompt_tokens=prompt,
            max_tokens=min(params.max_tokens or DEFAULT_MAX_TOKENS, room),
            sampling=SamplingParams(
                params.temperature, params.top_p, params.seed, params.logit_bias
            ),
            stop=params.stop,
        )
        self._next_job += 1
        return Generation(self, job)

    def _attach(self, job: Job) -> trio.MemoryReceiveChannel[Event]:
        assert self.engine is not None
        send, receive = trio.open_memory_channel[Event](math.inf)
        self._channels[job.job_id] = send
        self.in_flight += 1
        self.engine.submit(job)
        return receive

    def _detach(self, job_id: int, *, cancel: bool) -> None:
        del self._channels[job_id]
        self.in_flight -= 1
        if cancel and self.engine is not None:
            self.engine.cancel(job_id)

    def _emit_from_engine(self, events: list[Event]) -> None:
        assert self._token is not None
        # Once the loop is gone nobody is listening any more.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._route, events)

    def _route(self, events: list[Event]) -> None:
        for event in events:
            channel = self._channels.get(event.job_id)
            if channel is not None:
                channel.send_nowait(event)


class Generation:
    """One admitted job. `close` is synchronous so it also works under cancellation."""

    def __init__(self, provider: Provider, job: Job):
        self.job = job
        self._provider = provider
        self._events = provider._attach(job)
        self._open = True
        self._finished = False

    async def batches(self) -> AsyncIterator[list[Event]]:
        """Every event since the last batch: a slow reader gets fewer, fuller chunks."""
        while not self._finished:
            batch = [await self._events.receive()]
            while True:
                try:
                    batch.append(self._events.receive_nowait())
                except trio.WouldBlock:
                    break
            self._finished = any(isinstance(e, JobFinished | JobFailed) for e in batch)
            yield batch

    def close(self) -> None:
        if self._open:
            self._open = False
            self._provider._detach(self.job.job_id, cancel=not self._finished)
