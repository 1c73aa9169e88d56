"""The engine thread: the only place MLX runs.

One loop, as in mlx-lm's `generate.py`: take commands (submit, cancel,
stop), admit waiting jobs while batch slots are free, run one step of
mlx-lm's continuous-batching `BatchGenerator` (with our whole-batch sampling
step, `batch_generator`), turn its tokens into text events. HTTP handlers
never touch MLX: they `submit`/`cancel` through a thread-safe queue and
receive events through the `emit` callback, called once per step with every
job's events of that step.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer
from mlx_lm.utils import load

from macprovider.server.batch_cache import GROUP_SIZE, MergeableQuantizedKVCache
from macprovider.server.batch_generator import BatchStepGenerator
from macprovider.server.batch_sampling import SamplingParams, TokenLogprobs
from macprovider.server.errors import ModelLoadError
from macprovider.server.metrics import Metrics
from macprovider.server.model_facts import stop_token_ids
from macprovider.server.stops import StopStringFilter

log = logging.getLogger("macprovider.serve")

# Reading the KV-cache size walks every layer's arrays, so it is refreshed whenever the batch
# changes and otherwise once per this many steps.
_KV_BYTES_EVERY = 16


@dataclass(frozen=True)
class Job:
    job_id: int
    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    received_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Sampled:
    """A generated token and its logprobs, for a job that asked for them."""

    token: int
    logprobs: TokenLogprobs


@dataclass(frozen=True)
class TextDelta:
    """The text one step added to a job (may be empty while the detokenizer or a stop
    string holds it back), and the step's token where the job asked for logprobs."""

    job_id: int
    text: str
    sampled: Sampled | None = None


@dataclass(frozen=True)
class JobFinished:
    job_id: int
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class JobFailed:
    job_id: int
    message: str


Event = TextDelta | JobFinished | JobFailed
Emit = Callable[[list[Event]], None]


@dataclass(frozen=True)
class _Submit:
    job: Job


@dataclass(frozen=True)
class _Cancel:
    job_id: int


@dataclass(frozen=True)
class _Stop:
    pass


_Command = _Submit | _Cancel | _Stop


@dataclass
class _Slot:
    job: Job
    detokenizer: Any
    stops: StopStringFilter
    generated: int = 0


class _UntrimmedBPEDetokenizer(BPEStreamingDetokenizer):  # type: ignore[misc]
    """mlx-lm's byte-level BPE detokenizer, keeping the first token's leading space.

    mlx-lm drops it (so does mlx_lm.server): "The colours are" completed as "the primary…"
    read "arethe". A completion continues the prompt, so its text must be the tokenizer's
    `decode` of the new tokens, which keeps it (as OpenAI, vLLM and HF do). mlx-lm 0.32 has no
    switch for this, only the one method to override. Chat is no different: after the
    template's `assistant\n` a model rarely starts with a space, and if it does, it said one.
    SentencePiece's trim (and the naive detokenizer's) already match `decode`, which drops
    the word-start mark of the first piece."""

    def _maybe_trim_space(self, current_text: str) -> str:
        return current_text


def text_detokenizer(tokenizer: Any) -> Any:
    """A streaming detokenizer whose text is `tokenizer.decode` of its tokens: a prototype,
    copied and reset per job as mlx-lm's own `TokenizerWrapper.detokenizer` does."""
    detokenizer = tokenizer.detokenizer
    if type(detokenizer) is BPEStreamingDetokenizer:
        return _UntrimmedBPEDetokenizer(tokenizer)
    return detokenizer


def fresh_detokenizer(prototype: Any) -> Any:
    detokenizer = copy.copy(prototype)
    detokenizer.reset()
    return detokenizer


class Engine:
    def __init__(
        self,
        model_path: Path,
        *,
        max_batch: int,
        kv_bits: int | None,
        metrics: Metrics,
        emit: Emit,
    ):
        self.model_path = model_path
        self.max_batch = max_batch
        self.kv_bits = kv_bits
        self._metrics = metrics
        self._emit = emit
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="mlx-engine", daemon=True)
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.load_error: str | None = None
        self.tokenizer: Any = None
        self._detokenizer: Any = None  # the prototype `text_detokenizer` gives, set at load
        self.model: Any = None
        self._waiting: deque[Job] = deque()
        self._active: dict[int, _Slot] = {}
        self._generator: BatchStepGenerator | None = None
        self._steps = 0

    # -- called from any thread -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._commands.put(_Submit(job))

    def cancel(self, job_id: int) -> None:
        self._commands.put(_Cancel(job_id))

    def stop(self, timeout: float) -> bool:
        """Ends every job as cancelled and the thread; False if it did not end in time."""
        if not self._thread.is_alive():
            return True
        self._commands.put(_Stop())
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the engine thread ------------------------------------------------------
    def _main(self) -> None:
        try:
            self._load()
        except Exception as exc:  # the loader's own error text is the operator's best clue
            self.load_error = f"cannot load the model in {self.model_path}: {exc}"
            self.finished.set()
            self.ready.set()
            return
        self.ready.set()
        try:
            self._serve_forever()
        finally:
            self.finished.set()

    def _load(self) -> None:
        try:
            self.model, self.tokenizer = load(str(self.model_path))
        except Exception as exc:
            raise ModelLoadError(str(exc)) from exc
        self._detokenizer = text_detokenizer(self.tokenizer)
        self._generator = self._new_generator()
        self._metrics.kv_cache_bits.set(self.kv_bits or 0)
        self._metrics.model_loaded.set(1)

    def _new_generator(self) -> BatchStepGenerator:
        return BatchStepGenerator(
            self.model,
            stop_tokens=[
                [t] for t in sorted(stop_token_ids(self.model_path, self.tokenizer.eos_token_ids))
            ],
            completion_batch_size=self.max_batch,
            prefill_batch_size=self.max_batch,
        )

    def _serve_forever(self) -> None:
        while True:
            commands = self._take_commands(block=not (self._active or self._waiting))
            if any(isinstance(c, _Stop) for c in commands):
                self._end_all("cancelled")
                return
            try:
                self._run_once(commands)
            except Exception as exc:  # one bad step fails its jobs, never the server
                log.exception("engine step failed")
                self._fail_all(f"generation failed: {exc}")

    def _run_once(self, commands: list[_Command]) -> None:
        for command in commands:
            if isinstance(command, _Submit):
                self._waiting.append(command.job)
            elif isinstance(command, _Cancel):
                self._drop(command.job_id)
        self._admit()
        if self._active:
            self._step()

    def _take_commands(self, *, block: bool) -> list[_Command]:
        commands: list[_Command] = [self._commands.get()] if block else []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _admit(self) -> None:
        assert self._generator is not None
        while self._waiting and len(self._active) < self.max_batch:
            job = self._waiting.popleft()
            caches = None
            if self.kv_bits is not None:
                layer_caches = [
                    MergeableQuantizedKVCache(group_size=GROUP_SIZE, bits=self.kv_bits)
                    for _ in self.model.layers
                ]
                caches = [layer_caches]
            (uid,) = self._generator.insert(
                [job.prompt_tokens],
                max_tokens=[job.max_tokens],
                caches=caches,
                samplers=[job.sampling],
            )
            detokenizer = fresh_detokenizer(self._detokenizer)
            self._active[uid] = _Slot(job, detokenizer, StopStringFilter(job.stop))
            self._metrics.prompt_tokens.inc(len(job.prompt_tokens))
        self._publish_occupancy()

    def _drop(self, job_id: int) -> None:
        for i, job in enumerate(self._waiting):
            if job.job_id == job_id:
                del self._waiting[i]
                self._emit([JobFinished(job_id, "cancelled", len(job.prompt_tokens), 0)])
                break
        for uid, slot in list(self._active.items()):
            if slot.job.job_id == job_id:
                self._remove(uid)
                self._emit([self._finished(slot, "cancelled")])
        self._publish_occupancy()

    def _remove(self, uid: int) -> None:
        assert self._generator is not None
        self._generator.remove([uid])
        del self._active[uid]

    def _step(self) -> None:
        assert self._generator is not None
        started = time.perf_counter()
        _, responses = self._generator.next()
        if not responses:
            return
        elapsed = time.perf_counter() - started
        self._metrics.batch_occupancy.observe(len(responses))
        events: list[Event] = []
        for response in responses:
            slot = self._active.get(response.uid)
            if slot is not None:
                events.extend(self._on_token(response, slot, elapsed))
        self._steps += 1
        if events:
            self._emit(events)
        batch_changed = any(r.finish_reason or self._is_first(r) for r in responses)
        if batch_changed or self._steps % _KV_BYTES_EVERY == 0:
            self._publish_occupancy()

    def _is_first(self, response: Any) -> bool:
        slot = self._active.get(response.uid)
        return slot is not None and slot.generated == 1

    def _on_token(self, response: Any, slot: _Slot, elapsed: float) -> list[Event]:
        job = slot.job
        slot.generated += 1
        self._metrics.generated_tokens.inc()
        self._metrics.token_latency.observe(elapsed)
        if slot.generated == 1:
            self._metrics.ttft.observe(time.perf_counter() - job.received_at)
        finish = response.finish_reason
        if finish != "stop":  # a "stop" from the generator is the EOS token: never shown
            slot.detokenizer.add_token(response.token)
        if finish is not None:
            slot.detokenizer.finalize()
        text, hit_stop = slot.stops.feed(slot.detokenizer.last_segment)
        if hit_stop:
            if finish is None:
                assert self._generator is not None
                self._generator.remove([response.uid])
            finish = "stop"
        elif finish is not None:
            text += slot.stops.flush()
        # The EOS token ("stop" from the generator) is never shown, nor its logprob.
        sampled = None
        if response.logprobs is not None and response.finish_reason != "stop":
            sampled = Sampled(response.token, response.logprobs)
        events: list[Event] = [TextDelta(job.job_id, text, sampled)] if text or sampled else []
        if finish is not None:
            del self._active[response.uid]
            events.append(self._finished(slot, finish))
        return events

    def _finished(self, slot: _Slot, reason: str) -> JobFinished:
        return JobFinished(slot.job.job_id, reason, len(slot.job.prompt_tokens), slot.generated)

    def _fail_all(self, message: str) -> None:
        events: list[Event] = [JobFailed(s.job.job_id, message) for s in self._active.values()]
        events += [JobFailed(j.job_id, message) for j in self._waiting]
        self._active.clear()
        self._waiting.clear()
        self._generator = self._new_generator()
        self._emit(events)
        self._publish_occupancy()

    def _end_all(self, reason: str) -> None:
        events: list[Event] = [self._finished(s, reason) for s in self._active.values()]
        events += [JobFinished(j.job_id, reason, len(j.prompt_tokens), 0) for j in self._waiting]
        self._active.clear()
        self._waiting.clear()
        if events:
            self._emit(events)

    def _publish_occupancy(self) -> None:
        self._metrics.running.set(len(self._active))
        self._metrics.queued.set(len(self._waiting))
        if self._generator is not None:
            self._metrics.observe_kv_bytes(self._generator.prompt_cache_nbytes)
