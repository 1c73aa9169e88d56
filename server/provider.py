"""State the routes share: the engine, admission, tokenizing, and routing of engine events.

The engine calls `emit` from its own thread once per decode step; the events
reach the trio loop through `TrioToken.run_sync_soon` (a non-blocking hand-off)
and are routed to each request's memory channel.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from macprovider.server import chat_prompt
from macprovider.server.api import DEFAULT_MAX_TOKENS, GenerationParams
from macprovider.server.batch_sampling import SamplingParams
from macprovider.server.config import ServeConfig
from macprovider.server.engine import Engine, Event, Job, JobFailed, JobFinished
from macprovider.server.errors import (
    EngineDied,
    ModelLoadError,
    Overloaded,
    ServeError,
    ShuttingDown,
)
from macprovider.server.metrics import Metrics

log = logging.getLogger("macprovider.serve")

# A prompt of more characters than this is tokenized in the large-prompt lane. At about
# 1 µs a byte that is some 60 ms of English: about the longest a small request waits.
LARGE_PROMPT_CHARS = 64 * 1024
# Pre-tokenizers that only split the text, never drop or rewrite any of it.
_SPLITTING_PRE_TOKENIZERS = frozenset({"ByteLevel", "Split", "Digits", "Punctuation"})


def longest_token_bytes(tokenizer: Any) -> int | None:
    """The most bytes of text one token can stand for (added and special tokens included),
    or None when this tokenizer rewrites the text before splitting it, so no such bound holds.

    With it, a text of B bytes is at least ceil(B / L) tokens. That is exact only when
    every token is a piece of the text as given: a normalizer may shrink it (NFC composes
    three Hangul jamo, 9 bytes, into one 3-byte syllable), a pre-tokenizer may drop
    whitespace, an added token with lstrip/rstrip swallows the whitespace beside it, and an
    unknown-token model may map a run of text to one token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if (
        spec.get("normalizer") is not None
        or not _splits_only(spec.get("pre_tokenizer"))
        or (spec.get("decoder") or {}).get("type") not in (None, "ByteLevel")
        or model.get("type") != "BPE"
        or model.get("unk_token") is not None
        or any(t.get("lstrip") or t.get("rstrip") for t in spec.get("added_tokens", []))
    ):
        return None
    # A byte-level piece of a character decodes to U+FFFD, 3 bytes for 1: an overestimate,
    # which only weakens the bound.
    pieces = tokenizer.batch_decode(
        [[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False
    )
    return max(1, *(len(piece.encode()) for piece in pieces))


def _splits_only(pre_tokenizer: dict[str, Any] | None) -> bool:
    if pre_tokenizer is None:
        return True
    if pre_tokenizer["type"] == "Sequence":
        return all(_splits_only(p) for p in pre_tokenizer["pretokenizers"])
    kind_ok = pre_tokenizer["type"] in _SPLITTING_PRE_TOKENIZERS
    return kind_ok and pre_tokenizer.get("behavior") != "Removed"


class Tokenization:
    """Tokenizing prompts in two lanes, small and large, each with its own tokenizer copy.

    Measured here (tokenizers 0.23, transformers 5): the tokenizer's `encode` releases the
    GIL for its Rust part (a Python thread beside it keeps 97 % of its pace) and takes
    about 1 µs a byte, so behind one shared lock a 5 MB prompt held every request for
    seconds. Two encodes on one tokenizer did run side by side, but transformers rewrites
    the backend's truncation and padding settings from inside a call whenever they differ
    from the last call's, which would reach into a concurrent one; a copy per lane costs
    a few MB and makes that moot. Each lane runs one call at a time: small prompts never
    wait behind a large one, and a burst of large prompts takes one core, not all of them.
    """

    def __init__(self, tokenizer: Any):
        self.max_token_bytes = longest_token_bytes(tokenizer)
        self._small = (tokenizer, trio.CapacityLimiter(1))
        self._large = (copy.deepcopy(tokenizer), trio.CapacityLimiter(1))

    def min_tokens(self, text_bytes: int) -> int:
        """The fewest tokens this many bytes of text can encode to (0 without a bound)."""
        if self.max_token_bytes is None:
            return 0
        return -(-text_bytes // self.max_token_bytes)

    async def encode(self, text: str, *, special_tokens: bool) -> list[int]:
        tokenizer, limiter = self._lane(len(text))

        def encode() -> list[int]:
            return list(tokenizer.encode(text, add_special_tokens=special_tokens))

        return await trio.to_thread.run_sync(encode, limiter=limiter)

    async def encode_chat(self, messages: chat_prompt.Messages, rendered: str) -> list[int]:
        """A chat's prompt ids (`chat_prompt.encode`), in the lane its `rendered` text's
        length picks: it flips tokenizer settings, so it must own its tokenizer copy."""
        tokenizer, limiter = self._lane(len(rendered))
        encode = chat_prompt.encode
        return await trio.to_thread.run_sync(encode, tokenizer, messages, limiter=limiter)

    def _lane(self, chars: int) -> tuple[Any, trio.CapacityLimiter]:
        if chars <= LARGE_PROMPT_CHARS:
            return self._small
        log.info("tokenizing a prompt of %d characters in the large-prompt lane", chars)
        return self._large


class Provider:
    def __init__(self, config: ServeConfig, model_path: Path, metrics: Metrics):
        self.config = config
        self.model_path = model_path
        self.metrics = metrics
        self.served_id = config.model or model_path.name
        self.created = int(time.time())
        # Set once the server is to stop (a signal, the supervisor gone, a failure): no job
        # is admitted after it; `drain` then ends the ones in flight.
        self.shutdown = trio.Event()
        self.failure: ServeError | None = None  # why the server stopped by itself
        self.engine: Engine | None = None
        self._tokenization: Tokenization | None = None
        self.in_flight = 0
        self._channels: dict[int, trio.MemorySendChannel[Event]] = {}
        self._next_job = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._all_detached = trio.lowlevel.ParkingLot()

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
        self._tokenization = await trio.to_thread.run_sync(Tokenization, self.engine.tokenizer)
        bound = self._tokenization.max_token_bytes
        log.info(
            "model loaded from %s; serving it as %r (%s)",
            self.model_path,
            self.served_id,
            f"no token is longer than {bound} bytes"
            if bound
            else "its tokenizer rewrites text, so prompts are measured only by tokenizing",
        )
        await trio.to_thread.run_sync(self.engine.finished.wait, abandon_on_cancel=True)
        if not self.shutdown.is_set():
            self._fail(EngineDied("the engine thread ended unexpectedly"))

    def _fail(self, failure: ServeError) -> None:
        self.failure = failure
        self.shutdown.set()

    @property
    def ready(self) -> bool:
        return self._tokenization is not None

    @property
    def tokenizer(self) -> object:
        assert self.engine is not None
        return self.engine.tokenizer

    def accepts_model(self, name: str | None) -> bool:
        return name is None or name in (self.served_id, self.model_path.name)

    def check_admitting(self) -> None:
        if self.shutdown.is_set():
            raise ShuttingDown("the server is shutting down and takes no new requests")

    @property
    def tokenization(self) -> Tokenization:
        assert self._tokenization is not None
        return self._tokenization

    def admit(self, prompt: list[int], params: GenerationParams) -> Generation:
        self.check_admitting()
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
                params.temperature,
                params.top_p,
                params.seed,
                params.logit_bias,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                repetition_penalty=params.repetition_penalty,
                top_logprobs=params.top_logprobs,
            ),
            stop=params.stop,
        )
        self._next_job += 1
        return Generation(self, job)

    async def drain(self, grace: float, wrap_up: float) -> None:
        """Returns once the connections may be closed. After a failure that is at once.
        After a shutdown, the jobs in flight get `grace` seconds to finish; the rest are
        then cancelled, and their requests get `wrap_up` seconds to send their last bytes
        (a client that stopped reading is not waited for)."""
        await self.shutdown.wait()
        if self.failure is not None:
            return
        with trio.move_on_after(grace):
            await self._until_idle()
        if self._channels:
            log.info("cancelling %d unfinished request(s)", len(self._channels))
            assert self.engine is not None
            for job_id in self._channels:
                # The engine answers each with a "cancelled" end, which closes its request.
                self.engine.cancel(job_id)
        with trio.move_on_after(wrap_up):
            await self._until_idle()

    async def _until_idle(self) -> None:
        while self.in_flight:
            await self._all_detached.park()

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
        if not self.in_flight:
            self._all_detached.unpark_all()
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
