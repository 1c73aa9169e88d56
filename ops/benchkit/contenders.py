"""The contenders: the raw engine in this process, and the two servers as child processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import httpx
import psutil

from benchkit.places import ROOT
from benchkit.plan import OURS, StreamSampling
from macprovider.actors.probe import BAN_BIAS
from macprovider.actors.trees import provider_env
from macprovider.actors.tuning import Replicate

READY_TIMEOUT_S: Final = 180.0
REPLICATE_TIMEOUT_S: Final = 600.0
STOP_TIMEOUT_S: Final = 30.0
RSS_PERIOD_S: Final = 0.05


class RawEngine:
    """mlx-lm's own generation in this process, no server in between: the engine limit.

    `measure` is `stream_generate` (one stream, what mlx-lm users call); `measure_batch` is
    `BatchGenerator` with every stream inserted at once (the continuous-batching engine both
    servers drive), so a server's figure at C streams has the engine's at C to compare with.
    Both ban the stop tokens as the servers' requests do, so every stream makes max_tokens.
    With `mixed` streams, `measure_batch` gives each stream its own mlx-lm sampler and
    logit-bias processor (mlx-lm's per-row path), or with `step` the same parameters to our
    whole-batch step (`BatchStepGenerator`), the engine `serve` runs.
    """

    def __init__(self, model: Path) -> None:
        from mlx_lm.utils import load  # heavy: only when measuring

        self._model, self._tokenizer = load(str(model))

    def _ids(self, content: str) -> list[int]:
        messages = [{"role": "user", "content": content}]
        ids: list[int] = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return ids

    def measure(self, content: str, max_tokens: int, banned: Sequence[int]) -> Replicate:
        import mlx.core as mx
        from mlx_lm.generate import stream_generate

        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        for response in stream_generate(
            self._model,
            self._tokenizer,
            mx.array(self._ids(content)),
            max_tokens=max_tokens,
            logits_processors=_ban(banned),
        ):
            if first is None:
                first = time.perf_counter()
            tokens = response.generation_tokens
        ended = time.perf_counter()
        ttft = () if first is None else ((first - started) * 1000,)
        return Replicate(True, tokens, ended - started, ttft, None, False)

    def measure_batch(
        self,
        contents: Sequence[str],
        max_tokens: int,
        banned: Sequence[int],
        mixed: Sequence[StreamSampling] = (),
        step: bool = False,
    ) -> Replicate:
        from mlx_lm.generate import BatchGenerator

        from macprovider.server.batch_generator import BatchStepGenerator

        n = len(contents)
        prompts = [self._ids(content) for content in contents]
        generator = (BatchStepGenerator if step else BatchGenerator)(
            self._model,
            stop_tokens=[[t] for t in sorted(self._tokenizer.eos_token_ids)],
            completion_batch_size=n,
            prefill_batch_size=n,
        )
        started = time.perf_counter()
        firsts: dict[int, float] = {}
        finished: set[int] = set()
        tokens = 0
        try:
            per_row = _step_rows(banned, mixed, n) if step else _mlx_lm_rows(banned, mixed, n)
            generator.insert(prompts, max_tokens=[max_tokens] * n, **per_row)
            while len(finished) < n:
                _, responses = generator.next()
                now = time.perf_counter()
                for response in responses:
                    firsts.setdefault(response.uid, now)
                    tokens += 1
                    if response.finish_reason is not None:
                        finished.add(response.uid)
        finally:
            generator.close()
        ended = time.perf_counter()
        ttft = tuple((first - started) * 1000 for first in firsts.values())
        return Replicate(True, tokens, ended - started, ttft, None, False)


def _ban(banned: Sequence[int], extra: Sequence[tuple[int, float]] = ()) -> list[Any]:
    """The logit_bias the servers get from the probe: BAN_BIAS on every stop token."""
    from mlx_lm.sample_utils import make_logits_processors

    processors: list[Any] = make_logits_processors(logit_bias=_bias(banned, extra))
    return processors


def _bias(banned: Sequence[int], extra: Sequence[tuple[int, float]]) -> dict[int, float]:
    return {t: float(BAN_BIAS) for t in banned} | dict(extra)


def _mlx_lm_rows(
    banned: Sequence[int], mixed: Sequence[StreamSampling], n: int
) -> dict[str, list[Any]]:
    """`BatchGenerator.insert`'s per-row arguments: each mixed stream its own sampler and
    processors, as `serve` built them before its batch step."""
    from mlx_lm.sample_utils import make_sampler

    if not mixed:
        return {"logits_processors": [_ban(banned)] * n}
    return {
        "samplers": [make_sampler(m.temperature, m.top_p) for m in mixed],
        "logits_processors": [_ban(banned, m.bias) for m in mixed],
    }


def _step_rows(
    banned: Sequence[int], mixed: Sequence[StreamSampling], n: int
) -> dict[str, list[Any]]:
    from macprovider.server.batch_sampling import SamplingParams

    if not mixed:
        return {"samplers": [SamplingParams(logit_bias=tuple(_bias(banned, ()).items()))] * n}
    rows = [
        SamplingParams(m.temperature, m.top_p, m.seed, tuple(_bias(banned, m.bias).items()))
        for m in mixed
    ]
    return {"samplers": rows}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_argv(contender: str, model: Path, port: int, kv_bits: int | None, c: int) -> list[str]:
    if contender == OURS:
        argv = [sys.executable, "-m", "macprovider.cli", "serve", "--no-join"]
        argv += ["--model", str(model), "--port", str(port), "--max-batch", str(c)]
        return argv + (["--kv-bits", str(kv_bits)] if kv_bits else [])
    argv = [sys.executable, "-m", "mlx_lm.server", "--model", str(model), "--port", str(port)]
    argv += ["--decode-concurrency", str(c), "--prompt-concurrency", str(c)]
    # Ours quantizes from token 0 with group size 64: theirs is set to do the same work.
    quantized = ["--kv-bits", str(kv_bits), "--kv-group-size", "64", "--quantized-kv-start", "0"]
    return argv + (quantized if kv_bits else [])


class Server:
    """One server child on a free loopback port, its output in a log file."""

    def __init__(self, contender: str, argv: list[str], port: int, log: Path) -> None:
        self.contender = contender
        self.port = port
        self.log = log
        self.ready_s = 0.0  # set by wait_ready
        self.started = time.perf_counter()
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=provider_env(os.environ, ROOT / "build"),
            )

    def tail(self, lines: int = 5) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def wait_ready(self) -> float:
        """Seconds from start to `/v1/models` answering 200; raises when it never does."""
        deadline = self.started + READY_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited {self.proc.returncode}: {self.tail()}")
            with contextlib.suppress(httpx.TransportError):
                url = f"http://127.0.0.1:{self.port}/v1/models"
                if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                    self.ready_s = time.perf_counter() - self.started
                    return self.ready_s
            time.sleep(0.1)
        raise RuntimeError(f"not ready after {READY_TIMEOUT_S:.0f} s: {self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants; 0 once it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


class RssSampler:
    """Samples each registered process tree's RSS every 50 ms and keeps the peak."""

    def __init__(self) -> None:
        self._pids: dict[str, int] = {}
        self._peaks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._pids[name] = pid
            self._peaks[name] = 0

    def peak(self, name: str) -> int:
        self._sample()  # the very latest reading counts too
        with self._lock:
            return self._peaks.get(name, 0)

    def _sample(self) -> None:
        with self._lock:
            pids = dict(self._pids)
        for name, pid in pids.items():
            rss = tree_rss(pid)
            with self._lock:
                self._peaks[name] = max(self._peaks.get(name, 0), rss)

    def _run(self) -> None:
        while not self._done.wait(RSS_PERIOD_S):
            self._sample()

    def close(self) -> None:
        self._done.set()
        self._thread.join()
