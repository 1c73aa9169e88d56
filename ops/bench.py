"""Benchmarks (issue 7): serving overhead and batching against raw mlx-lm and mlx_lm.server,
and where the demo autotune's time goes.

`ops/bench [--model PATH] [--repetitions N] [--quick] [--json FILE] [--write-docs]`

Contenders, all on the same model, prompt (exact token count, the model's own tokenizer and
chat template), `max_tokens` and client:

- `raw`: `mlx_lm.stream_generate` in this process, the engine limit (single stream only);
- `ours`: `macprovider-supervise serve --no-join --max-batch C [--kv-bits 8]`;
- `mlx_lm.server`: `--decode-concurrency C --prompt-concurrency C [--kv-bits 8
  --quantized-kv-start 0]` (its kv-bits path serves one request at a time).

Each server is started once per configuration (kv-bits × concurrency), waited for
(`/v1/models` 200), warmed up with one replicate, then measured; the contenders are
interleaved repetition by repetition in a rotating order so machine drift hits all alike.
The client is autotune's probe (`measure_replicate`): streaming chat completions at
temperature 0 with `stream_options.include_usage`, the stop tokens banned through
`logit_bias` so every request generates exactly `max_tokens`. Every prompt (every stream's,
every repetition's) starts with a different three-word prefix, so no prompt cache
(mlx_lm.server keeps one) can serve a measured prompt's prefill from another request.

Definitions:
- decode tok/s (single stream) = (generated tokens − 1) / (wall − TTFT): the rate after the
  first token, wall running from the request's start to the stream's end;
- aggregate tok/s (C streams) = all streams' tokens / the replicate's wall time (first
  request start to last stream end), as autotune ranks cells;
- TTFT = request start to the first non-empty content chunk (raw: call to first token);
  p50/p95 are nearest-rank over every stream of every repetition;
- RSS = resident set of the server's process tree (psutil): idle after the warm-up, before
  any measured load; peak sampled every 50 ms from start to stop.

`ops/bench autotune [--json FILE] [--write-docs]` runs the demo autotune (ops/demo's flags,
its own temporary DB and state folder, a free port, `-v`) and splits its wall time per
stage from the log lines, the provider logs and the DB (see `AUTOTUNE_METHOD`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final

import httpx
import psutil

from macprovider.actors.messages import ProbeSpec
from macprovider.actors.probe import measure_replicate
from macprovider.actors.probe_prompt import FILLER, build_probe_prompt, load_prompt_tokenizer
from macprovider.actors.tuning import Replicate, nearest_rank_percentile
from macprovider.cli.autotune import provider_env

ROOT: Final = Path(__file__).resolve().parent.parent
DOCS: Final = ROOT / "docs" / "PERFORMANCE.md"

RAW: Final = "raw"
OURS: Final = "ours"
THEIRS: Final = "mlx_lm.server"
LABELS: Final = {
    RAW: "raw mlx_lm.stream_generate",
    OURS: "macprovider serve",
    THEIRS: "mlx_lm.server",
}

CONCURRENCY: Final = (1, 2, 4, 8)
QUICK_CONCURRENCY: Final = (1, 4)
PROMPT_LENGTHS: Final = (128, 512, 2000)
QUICK_PROMPT_LENGTHS: Final = (128,)
KV_SETTINGS: Final[tuple[int | None, ...]] = (None, 8)
BASE_PROMPT_TOKENS: Final = 128
MAX_TOKENS: Final = 128
# The prompt-length sweep measures TTFT only: a few tokens after the first are enough.
SWEEP_MAX_TOKENS: Final = 8

READY_TIMEOUT_S: Final = 180.0
REPLICATE_TIMEOUT_S: Final = 600.0
STOP_TIMEOUT_S: Final = 30.0
RSS_PERIOD_S: Final = 0.05
MIB: Final = 1024 * 1024


# --- what is measured -----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one bench run measures."""

    model: Path
    repetitions: int
    concurrency: tuple[int, ...]
    prompt_lengths: tuple[int, ...]
    kv_settings: tuple[int | None, ...]
    max_tokens: int
    quick: bool


@dataclass(frozen=True)
class Sample:
    """One measured replicate: `concurrency` streams of one contender, or a raw generation.

    `kind` is `stream` (the base prompt, `max_tokens` new tokens: single stream and the
    concurrency sweeps) or `prompt` (the prompt-length sweep: TTFT).
    """

    contender: str
    kind: str
    kv_bits: int | None
    concurrency: int
    prompt_tokens: int
    max_tokens: int
    repetition: int
    position: int  # where this contender came in this repetition's rotation
    ok: bool
    reason: str | None
    tokens: int
    wall_s: float
    ttft_ms: list[float]
    aggregate_tps: float | None
    decode_tps: float | None  # single stream only


@dataclass(frozen=True)
class Memory:
    """One server's resident set in one configuration, in bytes."""

    contender: str
    kv_bits: int | None
    concurrency: int
    ready_s: float  # from start to `/v1/models` answering 200
    idle_rss: int
    peak_rss: int


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    load_before: float = 0.0  # the 1-minute load average when the run started
    foreign_cpu_s: float = 0.0  # CPU seconds other processes used during the run
    wall_s: float = 0.0


def sample_from(
    replicate: Replicate,
    contender: str,
    kind: str,
    kv_bits: int | None,
    concurrency: int,
    prompt_tokens: int,
    max_tokens: int,
    turn: tuple[int, int],
) -> Sample:
    """A replicate as a sample, with its rates computed (see the module docstring)."""
    measured = replicate.tokens > 0 and replicate.wall_s > 0
    ok = replicate.ok and measured and not replicate.stop_token_leaked
    reason = None
    if not ok:
        reason = replicate.reason or ("a stop token leaked" if measured else "nothing generated")
    aggregate = replicate.tokens / replicate.wall_s if ok else None
    decode = None
    if ok and concurrency == 1 and replicate.ttft_ms and replicate.tokens > 1:
        after_first = replicate.wall_s - replicate.ttft_ms[0] / 1000
        decode = (replicate.tokens - 1) / after_first if after_first > 0 else None
    return Sample(
        contender=contender,
        kind=kind,
        kv_bits=kv_bits,
        concurrency=concurrency,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        repetition=turn[0],
        position=turn[1],
        ok=ok,
        reason=reason,
        tokens=replicate.tokens,
        wall_s=replicate.wall_s,
        ttft_ms=list(replicate.ttft_ms),
        aggregate_tps=aggregate,
        decode_tps=decode,
    )


# --- prompts ---------------------------------------------------------------------------------


class Prompts:
    """Prompts of exactly N templated tokens, each with its own three-word prefix.

    The prefix makes every prompt differ from its fourth token on, so no prompt cache can
    reuse an earlier request's prefill; the rest is the probe's filler, topped up to N.
    """

    def __init__(self, model: Path) -> None:
        tokenizer = load_prompt_tokenizer(model)
        self._count = tokenizer.count
        self.stop_texts = tokenizer.stop_texts
        self.stop_ids = tokenizer.stop_ids
        self._made = 0
        self._words = sorted(set(FILLER))

    def _prefix(self) -> str:
        n, k = self._made, len(self._words)
        self._made += 1
        return " ".join(self._words[(n // k**i) % k] for i in range(3)) + " "

    def make(self, tokens: int) -> str:
        prefix = self._prefix()
        built = build_probe_prompt(lambda content: self._count(prefix + content), tokens)
        return prefix + built.content


# --- contenders ------------------------------------------------------------------------------


class RawEngine:
    """mlx-lm's own generation loop in this process: the engine limit."""

    def __init__(self, model: Path) -> None:
        from mlx_lm.utils import load  # heavy: only when measuring

        self._model, self._tokenizer = load(str(model))

    def measure(self, content: str, max_tokens: int, banned: Sequence[int]) -> Replicate:
        import mlx.core as mx
        from mlx_lm.generate import stream_generate
        from mlx_lm.sample_utils import make_logits_processors

        messages = [{"role": "user", "content": content}]
        ids = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        # The same ban the servers get through logit_bias: every run makes max_tokens tokens.
        processors = make_logits_processors(logit_bias={t: -100.0 for t in banned})
        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        for response in stream_generate(
            self._model,
            self._tokenizer,
            mx.array(ids),
            max_tokens=max_tokens,
            logits_processors=processors,
        ):
            if first is None:
                first = time.perf_counter()
            tokens = response.generation_tokens
        ended = time.perf_counter()
        ttft = () if first is None else ((first - started) * 1000,)
        return Replicate(True, tokens, ended - started, ttft, None, False)


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


# --- one configuration -----------------------------------------------------------------------


@dataclass
class Bench:
    """Everything a configuration's measurements need."""

    plan: Plan
    prompts: Prompts
    raw: RawEngine
    logs: Path
    results: Results
    rss: RssSampler

    def replicate(
        self, contender: str, port: int | None, concurrency: int, prompt: int, max_tokens: int
    ) -> Replicate:
        banned = self.prompts.stop_ids
        if contender == RAW:
            return self.raw.measure(self.prompts.make(prompt), max_tokens, banned)
        if port is None:
            raise ValueError(f"{contender} has no port")
        specs = [
            ProbeSpec(
                port=port,
                model=str(self.plan.model),
                prompt=self.prompts.make(prompt),
                max_tokens=max_tokens,
                concurrency=1,
                timeout_s=REPLICATE_TIMEOUT_S,
                stop_texts=self.prompts.stop_texts,
                banned_tokens=banned,
            )
            for _ in range(concurrency)
        ]
        return concurrent_streams(specs)


def concurrent_streams(specs: Sequence[ProbeSpec]) -> Replicate:
    """One replicate of `len(specs)` streams, each with its own prompt, fired together.

    The probe sends one prompt to all of a replicate's streams; identical concurrent prompts
    let mlx_lm.server's prompt cache serve later streams' prefill from the first one's (seen
    as one stream at single-prefill TTFT, the rest at about two). So each stream is a
    one-stream probe replicate on its own thread, released by a barrier; wall time runs from
    the earliest release to the latest return, which adds the probe's client set-up (a few
    ms) to every contender alike.
    """
    if len(specs) == 1:
        return measure_replicate(specs[0], threading.Event())
    barrier = threading.Barrier(len(specs))
    done: list[tuple[float, float, Replicate]] = []
    lock = threading.Lock()

    def one(spec: ProbeSpec) -> None:
        barrier.wait()
        started = time.perf_counter()
        replicate = measure_replicate(spec, threading.Event())
        with lock:
            done.append((started, time.perf_counter(), replicate))

    threads = [threading.Thread(target=one, args=(spec,)) for spec in specs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    parts = [replicate for _, _, replicate in done]
    failed = [r.reason for r in parts if not r.ok]
    return Replicate(
        ok=not failed,
        tokens=sum(r.tokens for r in parts),
        wall_s=max(end for _, end, _ in done) - min(start for start, _, _ in done),
        ttft_ms=tuple(t for r in parts for t in r.ttft_ms),
        reason=failed[0] if failed else None,
        stop_token_leaked=any(r.stop_token_leaked for r in parts),
    )


def rotation(names: Sequence[str], repetition: int) -> list[str]:
    """The contenders' order in a repetition: rotated by one each time."""
    shift = repetition % len(names)
    return [*names[shift:], *names[:shift]]


def start_servers(
    bench: Bench, kv_bits: int | None, c: int, started: list[Server]
) -> dict[str, Server]:
    """Both servers of a configuration, one after the other (so each loads alone), ready.

    Each goes into `started` as soon as it is spawned, for the caller to stop whatever happens.
    """
    servers: dict[str, Server] = {}
    for contender in (OURS, THEIRS):
        port = free_port()
        slug = f"{contender}-kv{kv_bits or 'unset'}-c{c}"
        argv = server_argv(contender, bench.plan.model, port, kv_bits, c)
        server = Server(contender, argv, port, bench.logs / f"{slug}.log")
        started.append(server)
        bench.rss.watch(contender, server.proc.pid)
        try:
            server.wait_ready()
        except RuntimeError as error:
            bench.results.errors.append(f"{LABELS[contender]} ({slug}): {error}")
            server.stop()
            continue
        servers[contender] = server
    return servers


def warm_up(bench: Bench, servers: dict[str, Server], c: int) -> dict[str, Server]:
    """One replicate each (loads lazily-built state, e.g. mlx_lm.server's model); a server
    whose warm-up fails is reported and left out."""
    kept: dict[str, Server] = {}
    for name, server in servers.items():
        done = bench.replicate(name, server.port, c, BASE_PROMPT_TOKENS, bench.plan.max_tokens)
        if done.ok:
            kept[name] = server
        else:
            bench.results.errors.append(f"{LABELS[name]} warm-up failed: {done.reason}")
    return kept


def measure_configuration(bench: Bench, kv_bits: int | None, c: int) -> None:
    print(f"bench: kv-bits {kv_bits or 'unset'}, {c} stream(s)", file=sys.stderr, flush=True)
    started: list[Server] = []
    try:
        servers = warm_up(bench, start_servers(bench, kv_bits, c, started), c)
        idle = {name: tree_rss(server.proc.pid) for name, server in servers.items()}
        single = kv_bits is None and c == 1
        names = ([RAW] if single else []) + [n for n in (OURS, THEIRS) if n in servers]
        if single:
            bench.raw.measure(bench.prompts.make(BASE_PROMPT_TOKENS), 8, bench.prompts.stop_ids)
        for repetition in range(bench.plan.repetitions):
            order = rotation(names, repetition)
            ports = {name: server.port for name, server in servers.items()}
            measure_turns(bench, order, ports, kv_bits, c, repetition, single)
        for name, server in servers.items():
            peak = bench.rss.peak(name)
            bench.results.memory.append(Memory(name, kv_bits, c, server.ready_s, idle[name], peak))
    finally:
        for server in started:
            server.stop()


def measure_turns(
    bench: Bench,
    order: list[str],
    ports: dict[str, int],
    kv_bits: int | None,
    c: int,
    repetition: int,
    single: bool,
) -> None:
    """One repetition: each contender in `order` per measurement, then the prompt sweep."""
    max_tokens = bench.plan.max_tokens
    kinds = [("stream", BASE_PROMPT_TOKENS, max_tokens)]
    if single:
        kinds += [("prompt", length, SWEEP_MAX_TOKENS) for length in bench.plan.prompt_lengths]
    for kind, prompt, tokens in kinds:
        for position, name in enumerate(order):
            replicate = bench.replicate(name, ports.get(name), c, prompt, tokens)
            sample = sample_from(
                replicate, name, kind, kv_bits, c, prompt, tokens, (repetition, position)
            )
            bench.results.samples.append(sample)
            if not sample.ok:
                bench.results.errors.append(f"{LABELS[name]} {kind} c={c}: {sample.reason}")


# --- summary ---------------------------------------------------------------------------------

Stats = dict[str, float | int]


def stats(values: Sequence[float]) -> Stats | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours is not None and theirs else None


def median_of(s: Stats | None) -> float | None:
    return None if s is None else float(s["median"])


def pick(
    samples: Sequence[Sample], contender: str, kind: str, kv: int | None, c: int, prompt: int
) -> list[Sample]:
    return [
        s
        for s in samples
        if s.ok
        and (s.contender, s.kind, s.kv_bits, s.concurrency, s.prompt_tokens)
        == (contender, kind, kv, c, prompt)
    ]


def sweep_cell(samples: Sequence[Sample]) -> dict[str, Any]:
    ttfts = [t for s in samples for t in s.ttft_ms]
    return {
        "aggregate_tps": stats([s.aggregate_tps for s in samples if s.aggregate_tps]),
        "ttft_p50_ms": nearest_rank_percentile(ttfts, 50) if ttfts else None,
        "ttft_p95_ms": nearest_rank_percentile(ttfts, 95) if ttfts else None,
    }


def kv_key(kv_bits: int | None) -> str:
    return "unset" if kv_bits is None else str(kv_bits)


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    goal: float
    at_least: bool  # True: value ≥ goal is met; False: value ≤ goal is met

    def verdict(self) -> str:
        if self.value is None:
            return "not measured"
        met = self.value >= self.goal if self.at_least else self.value <= self.goal
        if met:
            return "met"
        gap = abs(self.value - self.goal) / self.goal * 100
        return f"missed by {gap:.0f} %"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "goal": f"{'≥' if self.at_least else '≤'} {self.goal:g}",
            "met": None if self.value is None else self.verdict() == "met",
            "verdict": self.verdict(),
        }


def single_summary(samples: Sequence[Sample]) -> dict[str, dict[str, Stats | None]]:
    """Each contender's single-stream decode tok/s and TTFT at the base prompt."""
    out = {}
    for name in (RAW, OURS, THEIRS):
        mine = pick(samples, name, "stream", None, 1, BASE_PROMPT_TOKENS)
        out[name] = {
            "decode_tps": stats([s.decode_tps for s in mine if s.decode_tps]),
            "ttft_ms": stats([s.ttft_ms[0] for s in mine if s.ttft_ms]),
        }
    return out


def sweep_summary(plan: Plan, samples: Sequence[Sample]) -> dict[str, Any]:
    """kv-bits → concurrency → server → aggregate tok/s and TTFT p50/p95."""
    return {
        kv_key(kv): {
            str(c): {
                name: sweep_cell(pick(samples, name, "stream", kv, c, BASE_PROMPT_TOKENS))
                for name in (OURS, THEIRS)
            }
            for c in plan.concurrency
        }
        for kv in plan.kv_settings
    }


def prompt_summary(plan: Plan, samples: Sequence[Sample]) -> dict[str, Any]:
    """Prompt length → contender → TTFT ms."""
    out: dict[str, Any] = {}
    for length in plan.prompt_lengths:
        out[str(length)] = {
            name: stats(
                [s.ttft_ms[0] for s in pick(samples, name, "prompt", None, 1, length) if s.ttft_ms]
            )
            for name in (RAW, OURS, THEIRS)
        }
    return out


def memory_summary(memory: Sequence[Memory]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in memory:
        out.setdefault(f"kv-{kv_key(m.kv_bits)} c{m.concurrency}", {})[m.contender] = asdict(m)
    return out


def aggregate_median(sweep: dict[str, Any], kv: int | None, c: int, name: str) -> float | None:
    cell = sweep.get(kv_key(kv), {}).get(str(c), {}).get(name)
    return median_of(cell["aggregate_tps"]) if cell else None


def idle_ratio(memory: Sequence[Memory]) -> float | None:
    """Ours / theirs idle RSS, in the base configuration (unquantized, one stream)."""
    idle = {m.contender: m.idle_rss for m in memory if m.kv_bits is None and m.concurrency == 1}
    return ratio(float(idle[OURS]) if OURS in idle else None, float(idle.get(THEIRS, 0)) or None)


def summarize(plan: Plan, results: Results) -> dict[str, Any]:
    """The headline ratios (issue 7), the tables they come from, and the targets."""
    single = single_summary(results.samples)
    sweep = sweep_summary(plan, results.samples)
    prompts = prompt_summary(plan, results.samples)

    def vs_theirs(kv: int | None) -> dict[str, float | None]:
        return {
            str(c): ratio(
                aggregate_median(sweep, kv, c, OURS), aggregate_median(sweep, kv, c, THEIRS)
            )
            for c in plan.concurrency
        }

    ttft_2000 = prompts.get("2000", {})
    summary: dict[str, Any] = {
        "single_vs_raw": ratio(
            median_of(single[OURS]["decode_tps"]), median_of(single[RAW]["decode_tps"])
        ),
        "vs_mlx_lm_server": vs_theirs(None),
        "kv8_vs_mlx_lm_server": vs_theirs(8) if 8 in plan.kv_settings else {},
        "ours_c4_vs_c1": ratio(
            aggregate_median(sweep, None, 4, OURS), aggregate_median(sweep, None, 1, OURS)
        ),
        "ttft_2000_vs_mlx_lm_server": ratio(
            median_of(ttft_2000.get(OURS)), median_of(ttft_2000.get(THEIRS))
        ),
        "idle_rss_vs_mlx_lm_server": idle_ratio(results.memory),
        "single_stream": single,
        "sweep": sweep,
        "prompt_ttft_ms": prompts,
        "memory": memory_summary(results.memory),
    }
    summary["targets"] = [t.as_json() for t in targets(plan, summary)]
    return summary


def targets(plan: Plan, summary: dict[str, Any]) -> list[Target]:
    """Issue 7 item 3's targets, from one run's ratios."""
    found = [
        Target(
            "single-stream decode tok/s, ours / raw engine", summary["single_vs_raw"], 0.95, True
        )
    ]
    for c in plan.concurrency:
        value = summary["vs_mlx_lm_server"].get(str(c))
        found.append(Target(f"aggregate tok/s at {c}, ours / mlx_lm.server", value, 1.0, True))
    found.append(
        Target("aggregate tok/s, ours at 4 / ours at 1", summary["ours_c4_vs_c1"], 2.0, True)
    )
    kv8 = summary["kv8_vs_mlx_lm_server"].get("4")
    found.append(Target("kv-bits 8 aggregate tok/s at 4, ours / mlx_lm.server", kv8, 1.5, True))
    ttft = summary["ttft_2000_vs_mlx_lm_server"]
    found.append(Target("TTFT at 2000 prompt tokens, ours / mlx_lm.server", ttft, 1.05, False))
    idle = summary["idle_rss_vs_mlx_lm_server"]
    found.append(Target("idle RSS, ours / mlx_lm.server", idle, 1.0, False))
    return found


# --- rendering -------------------------------------------------------------------------------


def num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def spread(s: Stats | None, digits: int = 1) -> str:
    """`median (min–max)`, or n/a."""
    if s is None:
        return "n/a"
    low, mid, high = (float(s[k]) for k in ("min", "median", "max"))
    return f"{mid:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_targets(summary: dict[str, Any]) -> list[str]:
    rows = [[t["name"], num(t["value"], 2), t["goal"], t["verdict"]] for t in summary["targets"]]
    return ["### Targets (issue 7)", "", *table(["ratio", "value", "target", "verdict"], rows)]


def render_single(summary: dict[str, Any], plan: Plan) -> list[str]:
    rows = [
        [
            LABELS[name],
            spread(summary["single_stream"][name]["decode_tps"]),
            spread(summary["single_stream"][name]["ttft_ms"]),
        ]
        for name in (RAW, OURS, THEIRS)
    ]
    title = (
        f"### Single stream ({BASE_PROMPT_TOKENS}-token prompt, {plan.max_tokens} new tokens; "
        f"ours / raw = {num(summary['single_vs_raw'], 3)})"
    )
    return [title, "", *table(["contender", "decode tok/s", "TTFT ms"], rows)]


def render_sweep(summary: dict[str, Any], plan: Plan) -> list[str]:
    lines = ["### Concurrency sweep (aggregate tok/s; TTFT p50 / p95 ms over every stream)", ""]
    rows = []
    for kv in plan.kv_settings:
        ratios = summary["vs_mlx_lm_server" if kv is None else "kv8_vs_mlx_lm_server"]
        for c in plan.concurrency:
            cell = summary["sweep"][kv_key(kv)][str(c)]
            ours, theirs = cell[OURS], cell[THEIRS]
            rows.append(
                [
                    kv_key(kv),
                    str(c),
                    spread(ours["aggregate_tps"]),
                    spread(theirs["aggregate_tps"]),
                    num(ratios.get(str(c)), 2),
                    f"{num(ours['ttft_p50_ms'], 0)} / {num(ours['ttft_p95_ms'], 0)}",
                    f"{num(theirs['ttft_p50_ms'], 0)} / {num(theirs['ttft_p95_ms'], 0)}",
                ]
            )
    header = ["kv-bits", "streams", "ours tok/s", "mlx_lm.server tok/s", "ours / theirs"]
    return lines + table([*header, "ours TTFT", "theirs TTFT"], rows)


def render_prompts(summary: dict[str, Any], plan: Plan) -> list[str]:
    rows = []
    for length in plan.prompt_lengths:
        cell = summary["prompt_ttft_ms"][str(length)]
        mine, theirs = median_of(cell[OURS]), median_of(cell[THEIRS])
        rows.append(
            [
                str(length),
                *(spread(cell[n], 0) for n in (RAW, OURS, THEIRS)),
                num(ratio(mine, theirs), 2),
            ]
        )
    header = ["prompt tokens", "raw TTFT ms", "ours TTFT ms", "mlx_lm.server TTFT ms"]
    title = "### Prompt-length sweep (single stream, TTFT ms)"
    return [title, "", *table([*header, "ours / theirs"], rows)]


def render_memory(results: Results) -> list[str]:
    rows = []
    for m in results.memory:
        rows.append(
            [
                f"kv-bits {kv_key(m.kv_bits)}, {m.concurrency} stream(s)",
                LABELS[m.contender],
                num(m.idle_rss / MIB, 0),
                num(m.peak_rss / MIB, 0),
                num(m.ready_s, 1),
            ]
        )
    header = ["configuration", "server", "idle RSS MiB", "peak RSS MiB", "/v1/models 200 after s"]
    note = (
        "mlx_lm.server answers `/v1/models` before its model is loaded (it loads on its "
        "engine thread); ours only once loaded. Peak RSS includes the load."
    )
    return ["### Memory (process tree) and start-up", "", note, "", *table(header, rows)]


def render_report(plan: Plan, results: Results, summary: dict[str, Any]) -> str:
    scope = "QUICK, a reduced set" if plan.quick else "full set"
    head = [
        f"Model `{plan.model.name}` ({plan.model}); {scope}: {plan.repetitions} repetition(s), "
        f"concurrency {', '.join(map(str, plan.concurrency))}, "
        f"prompt lengths {', '.join(map(str, plan.prompt_lengths))}. "
        "Figures are median (min–max) over the repetitions.",
        f"Quiet machine? Load average (1 min) at the start {results.load_before:.2f}; other "
        f"processes used {results.foreign_cpu_s:.0f} CPU-s during the {results.wall_s:.0f} s "
        "run (all machine's busy time minus the bench's and its servers'; near 0 = no "
        "interference).",
    ]
    parts = [
        head,
        render_targets(summary),
        render_single(summary, plan),
        render_sweep(summary, plan),
        render_prompts(summary, plan),
        render_memory(results),
    ]
    lines = [line for part in parts for line in [*part, ""]]
    if results.errors:
        lines += ["### Errors", "", *(f"- {error}" for error in results.errors), ""]
    return "\n".join(lines).rstrip() + "\n"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = psutil.virtual_memory().total / 1024**3
    import mlx.core as mx

    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, "
        f"{os.cpu_count()} CPUs, {ram:.1f} GiB RAM; Python {platform.python_version()}, "
        f"mlx {version('mlx')} ({mx.default_device()}), mlx-lm {version('mlx-lm')}"
    )


def write_docs(section: str, body: str) -> None:
    """Replaces the text between `<!-- section:start -->` and `<!-- section:end -->` in
    docs/PERFORMANCE.md (appending the section when absent): hand-written notes around the
    generated figures survive a regeneration."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = DOCS.read_text() if DOCS.exists() else "# Performance\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)
    print(f"bench: wrote {DOCS.relative_to(ROOT)} ({section})", file=sys.stderr)


def provenance(command: Sequence[str]) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"Command: `{shlex.join(['ops/bench', *command])}`",
            "",
            f"Date: {now}",
            "",
            f"Machine: {machine_line()}",
        ]
    )


# --- the bench -------------------------------------------------------------------------------


def fixtures_dir() -> Path:
    """Builds (or reuses) the fixture models; ops/fixtures.py prints their folder last."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "fixtures.py")],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def make_plan(args: argparse.Namespace) -> Plan:
    model = args.model if args.model is not None else fixtures_dir() / "small"
    return Plan(
        model=model.resolve(),
        repetitions=1 if args.quick else args.repetitions,
        concurrency=QUICK_CONCURRENCY if args.quick else CONCURRENCY,
        prompt_lengths=QUICK_PROMPT_LENGTHS if args.quick else PROMPT_LENGTHS,
        kv_settings=KV_SETTINGS,
        max_tokens=args.max_tokens,
        quick=args.quick,
    )


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes)."""
    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def own_cpu_s() -> float:
    """CPU seconds of this process and its waited-for children (every server is waited)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_bench(plan: Plan) -> Results:
    results = Results(load_before=os.getloadavg()[0])
    busy, own, started = busy_cpu_s(), own_cpu_s(), time.perf_counter()
    logs = Path(tempfile.mkdtemp(prefix="macprovider-bench-"))
    rss = RssSampler()
    try:
        bench = Bench(plan, Prompts(plan.model), RawEngine(plan.model), logs, results, rss)
        for kv_bits in plan.kv_settings:
            for c in plan.concurrency:
                measure_configuration(bench, kv_bits, c)
    finally:
        rss.close()
    results.wall_s = time.perf_counter() - started
    results.foreign_cpu_s = max(0.0, (busy_cpu_s() - busy) - (own_cpu_s() - own))
    if results.errors:
        print(f"bench: server logs kept in {logs}", file=sys.stderr)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return results


def bench_main(args: argparse.Namespace, command: Sequence[str]) -> int:
    plan = make_plan(args)
    started = time.perf_counter()
    results = run_bench(plan)
    summary = summarize(plan, results)
    report = render_report(plan, results, summary)
    elapsed = time.perf_counter() - started
    print(report)
    print(f"bench: {elapsed:.0f} s", file=sys.stderr)
    if args.json is not None:
        document = {
            "plan": {**asdict(plan), "model": str(plan.model)},
            "machine": machine_line(),
            "elapsed_s": elapsed,
            "samples": [asdict(s) for s in results.samples],
            "memory": [asdict(m) for m in results.memory],
            "errors": results.errors,
            "load_average_at_start": results.load_before,
            "foreign_cpu_s": results.foreign_cpu_s,
            "summary": summary,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.write_docs:
        write_docs("bench", provenance(command) + "\n\n" + report)
    return 1 if results.errors else 0


# --- the autotune time breakdown -------------------------------------------------------------

AUTOTUNE_METHOD: Final = """\
Method: `ops/bench autotune` runs ops/demo's autotune (same candidates, target context and
memory budget; its own temporary DB and state folder, a free port, `-v`) and reads back:
its stderr log lines (each stamped to the millisecond), each provider's own log (named in
the `provider started` line) and the run's rows in the DB. Per trial:
- provider start = trial start (`stage N candidate|cell i/n`) → the provider logs `model
  loaded` (spawn, imports, weights, ready); a provider that dies in load counts here whole;
- warm-up = ready → trial start + the load seconds the DB row's notes record (the tuner's
  disposable request, never counted in TTFT);
- measurement = end of warm-up → the provider logs `SIGTERM` (the replicates);
- provider stop = `SIGTERM` → the `provider pid … Stopped` line;
- pre-warm = in Stage 1, the gap before each trial (weights check, tokenizer, probe prompt);
- our overhead = the rest of the stage (recording, decisions, actor hand-offs).
Set-up runs from launching the command to the `stage 1:` line (interpreter and imports up
to the DB's `started_at_utc`, then preflight); wind-down from `stopping` to the exit.
"""

LOG_LINE: Final = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) [\w.-]+: (.*)$")
STAGE_START: Final = re.compile(r"stage (\d): ")
TRIAL_START: Final = re.compile(r"stage (\d) (?:candidate|cell) (\d+)/(\d+): (.*)$")
TRIAL_END: Final = re.compile(r"stage (\d) \[(\d+)/(\d+)\] ")
PROVIDER_STARTED: Final = re.compile(r"provider started: pid \d+, .*, log (.+)$")
PROVIDER_STOPPED: Final = re.compile(r"provider pid \d+ ")
LOAD_NOTE: Final = re.compile(r"^load ([\d.]+) s$")
CATEGORIES: Final = ("setup", "prewarm", "start", "warmup", "measure", "stop", "overhead")
CATEGORY_TITLES: Final = {
    "setup": "set-up",
    "prewarm": "pre-warm",
    "start": "provider start",
    "warmup": "warm-up request",
    "measure": "measurement",
    "stop": "provider stop",
    "overhead": "our overhead",
}


def log_time(stamp: str) -> float:
    """A log line's local timestamp as seconds since the epoch."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def log_events(lines: Sequence[str]) -> list[tuple[float, str]]:
    events = []
    for line in lines:
        if match := LOG_LINE.match(line):
            events.append((log_time(match[1]), match[2]))
    return events


def find_event(path: Path | None, needle: str) -> float | None:
    """When a provider's log first says `needle`, or None."""
    if path is None or not path.exists():
        return None
    for at, text in log_events(path.read_text(errors="replace").splitlines()):
        if needle in text:
            return at
    return None


@dataclass
class Trial:
    stage: int
    index: int
    total: int
    what: str
    started: float
    log: Path | None = None
    stopped: float | None = None
    ended: float | None = None
    load_s: float | None = None

    def parts(self) -> dict[str, float]:
        """This trial's time per category (see AUTOTUNE_METHOD)."""
        ended = self.ended if self.ended is not None else self.stopped or self.started
        ready = find_event(self.log, "model loaded")
        sigterm = find_event(self.log, "SIGTERM")
        parts = dict.fromkeys(CATEGORIES, 0.0)
        if ready is None or sigterm is None or self.stopped is None:
            # It never served: all of it was starting a provider that died (or never came).
            parts["start"] = (self.stopped or ended) - self.started
        else:
            warmed = self.started + self.load_s if self.load_s is not None else ready
            warmed = min(max(warmed, ready), sigterm)
            parts["start"] = ready - self.started
            parts["warmup"] = warmed - ready
            parts["measure"] = sigterm - warmed
            parts["stop"] = self.stopped - sigterm
        parts["overhead"] = max(0.0, ended - self.started - sum(parts.values()))
        return parts


def parse_trials(events: Sequence[tuple[float, str]]) -> list[Trial]:
    trials: list[Trial] = []
    for at, text in events:
        if match := TRIAL_START.match(text):
            stage, index, total = (int(match[i]) for i in (1, 2, 3))
            trials.append(Trial(stage, index, total, match[4], at))
        elif trials and (match := PROVIDER_STARTED.match(text)):
            trials[-1].log = Path(match[1])
        elif trials and PROVIDER_STOPPED.match(text):
            trials[-1].stopped = at
        elif trials and TRIAL_END.match(text):
            trials[-1].ended = at
    return trials


def db_run(db: Path) -> tuple[float | None, list[tuple[float, str | None]]]:
    """The latest run's start, and its trials' (recorded at, notes), from the DB."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        run = conn.execute(
            "SELECT run_id, started_at_utc FROM tune_runs ORDER BY started_at_utc DESC LIMIT 1"
        ).fetchone()
        if run is None:
            return None, []
        rows = conn.execute(
            "SELECT ts_utc, notes FROM tune_trials WHERE run_id = ? ORDER BY id", (run[0],)
        ).fetchall()
    started = datetime.fromisoformat(run[1]).timestamp()
    return started, [(datetime.fromisoformat(ts).timestamp(), notes) for ts, notes in rows]


def attach_load_times(trials: Sequence[Trial], rows: Sequence[tuple[float, str | None]]) -> None:
    """Each trial's load seconds, from the DB row recorded when it ended (the nearest one)."""
    for trial in trials:
        if trial.ended is None or not rows:
            continue
        ended = trial.ended
        at, notes = min(rows, key=lambda row: abs(row[0] - ended))
        match = LOAD_NOTE.match(notes or "")
        if abs(at - trial.ended) < 2.0 and match:
            trial.load_s = float(match[1])


@dataclass
class Breakdown:
    rows: dict[str, dict[str, float]]  # part → category → seconds (and `wall`)
    trials: list[dict[str, Any]]
    tuner_line: str | None
    exit_code: int
    recommendation: str


def stage_bounds(
    events: Sequence[tuple[float, str]], exited: float
) -> dict[int, tuple[float, float]]:
    """Each stage's span: its `stage N:` line to the next stage's, or to `stopping`."""
    marks = [(at, int(m[1])) for at, text in events if (m := STAGE_START.match(text))]
    stopping = next((at for at, text in events if text.startswith("stopping")), exited)
    bounds = {}
    for i, (at, stage) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else stopping
        bounds[stage] = (at, end)
    return bounds


def stage_row(stage: int, span: tuple[float, float], trials: Sequence[Trial]) -> dict[str, float]:
    row = dict.fromkeys(CATEGORIES, 0.0)
    previous = span[0]
    for trial in trials:
        for category, seconds in trial.parts().items():
            row[category] += seconds
        gap = trial.started - previous
        # Stage 1 pre-warms each candidate before its trial starts; Stage 2 does not.
        row["prewarm" if stage == 1 else "overhead"] += max(0.0, gap)
        previous = trial.ended or trial.stopped or trial.started
    row["overhead"] += max(0.0, span[1] - previous)
    row["wall"] = span[1] - span[0]
    return row


def analyse(
    launched: float, exited: float, stderr: Sequence[str], db: Path, code: int, out: str
) -> Breakdown:
    events = log_events(stderr)
    trials = parse_trials(events)
    run_started, rows = db_run(db) if db.exists() else (None, [])
    attach_load_times(trials, rows)
    bounds = stage_bounds(events, exited)
    first = min((span[0] for span in bounds.values()), default=exited)
    last = max((span[1] for span in bounds.values()), default=exited)
    table_rows: dict[str, dict[str, float]] = {}
    setup = dict.fromkeys(CATEGORIES, 0.0) | {"setup": first - launched, "wall": first - launched}
    table_rows["set-up"] = setup
    if run_started is not None:
        setup["interpreter_and_imports"] = run_started - launched
    for stage, span in sorted(bounds.items()):
        mine = [t for t in trials if t.stage == stage]
        table_rows[f"stage {stage} ({len(mine)} trials)"] = stage_row(stage, span, mine)
    wind_down = dict.fromkeys(CATEGORIES, 0.0) | {"overhead": exited - last, "wall": exited - last}
    table_rows["wind-down"] = wind_down
    total = {
        key: sum(r.get(key, 0.0) for r in table_rows.values()) for key in (*CATEGORIES, "wall")
    }
    table_rows["total"] = total
    per_trial = [
        {"stage": t.stage, "trial": f"{t.index}/{t.total}", "what": t.what, **t.parts()}
        for t in trials
    ]
    tuner = next((line for line in stderr if line.startswith("time: ")), None)
    return Breakdown(table_rows, per_trial, tuner, code, out)


def short_model(what: str) -> str:
    """`/…/fixtures/medium (kv-bits 4, …)` → `medium (kv-bits 4, …)`: the table stays narrow."""
    model, _, knobs = what.partition(" (")
    return f"{Path(model).name} ({knobs}" if knobs else Path(model).name


def render_breakdown(found: Breakdown, wall_s: float) -> str:
    header = ["part", "wall s", *(CATEGORY_TITLES[c] for c in CATEGORIES)]
    rows = [
        [part, num(row["wall"]), *(num(row[c]) if row[c] else "" for c in CATEGORIES)]
        for part, row in found.rows.items()
    ]
    trial_rows = [
        [f"{t['stage']}", t["trial"], short_model(t["what"]), *(num(t[c]) for c in CATEGORIES[2:])]
        for t in found.trials
    ]
    setup = found.rows["set-up"]
    imports = setup.get("interpreter_and_imports")
    split = (
        ""
        if imports is None
        else (
            f" Set-up: {imports:.1f} s to the run row (interpreter, imports, CLI), "
            f"{setup['setup'] - imports:.1f} s preflight (provider check, machine, DB)."
        )
    )
    trial_header = [
        "stage",
        "trial",
        "model (knobs)",
        *(CATEGORY_TITLES[c] for c in CATEGORIES[2:]),
    ]
    lines = [
        f"Demo autotune (ops/demo's flags): {wall_s:.1f} s wall, exit {found.exit_code}.{split}",
        "",
        *table(header, rows),
        "",
        "Per trial (seconds):",
        "",
        *table(trial_header, trial_rows),
        "",
        f"The tuner's own split (stderr): `{found.tuner_line or 'n/a'}`",
        "",
        AUTOTUNE_METHOD,
    ]
    return "\n".join(lines).rstrip() + "\n"


def demo_argv(fixtures: Path, workdir: Path) -> list[str]:
    candidates = ",".join(str(fixtures / name) for name in ("large", "medium", "small", "tiny"))
    return [
        sys.executable,
        "-m",
        "macprovider.cli",
        "autotune",
        "--candidate-models",
        candidates,
        "--target-context",
        "256",
        "--provider-memory-limit-gb",
        "0.08",
        "--db-path",
        str(workdir / "autotune.sqlite"),
        "--state-dir",
        str(workdir / "state"),
        "--port",
        str(free_port()),
        "-v",
    ]


def run_streaming(argv: list[str]) -> tuple[int, list[str], str]:
    """Runs `argv`, echoing its stderr live to ours; returns the code, stderr lines, stdout."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else ""))
    reader.start()
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        lines.append(line.rstrip("\n"))
    code = proc.wait()
    reader.join()
    return code, lines, "".join(out)


def autotune_main(args: argparse.Namespace, command: Sequence[str]) -> int:
    fixtures = fixtures_dir()
    workdir = Path(tempfile.mkdtemp(prefix="macprovider-bench-autotune-"))
    try:
        launched = time.time()
        code, stderr, out = run_streaming(demo_argv(fixtures, workdir))
        exited = time.time()
        found = analyse(launched, exited, stderr, workdir / "autotune.sqlite", code, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(out.rstrip() + "\n", file=sys.stderr)
    if not found.trials:
        # e.g. exit 69: another provider is live. Never --drain here: it is not ours to stop.
        print(f"bench: the autotune measured nothing (exit {code}); see its log above")
        return code or 1
    report = render_breakdown(found, exited - launched)
    print(report)
    if args.json is not None:
        args.json.write_text(
            json.dumps({**asdict(found), "wall_s": exited - launched}, indent=2) + "\n"
        )
    if args.write_docs:
        write_docs("autotune", provenance(command) + "\n\n" + report)
    return code


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ops/bench",
        description="Serving benchmark (default) or `autotune`: the demo autotune's time split.",
        epilog="See the module docstring of ops/bench.py for every definition.",
    )
    parser.add_argument("what", nargs="?", choices=["serve", "autotune"], default="serve")
    parser.add_argument("--model", type=Path, help="a model folder (default: the small fixture)")
    parser.add_argument(
        "--repetitions", type=int, default=5, help="measured repetitions per figure (5)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=MAX_TOKENS,
        help=f"new tokens per request, stop tokens banned ({MAX_TOKENS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 repetition, concurrency 1 and 4, prompt length 128 only: a smoke run",
    )
    parser.add_argument("--json", type=Path, help="write every sample and the summary here")
    parser.add_argument(
        "--write-docs", action="store_true", help="regenerate docs/PERFORMANCE.md's section"
    )
    args = parser.parse_args(argv)
    if args.repetitions < 1 or args.max_tokens < 2:
        parser.error("--repetitions must be ≥ 1 and --max-tokens ≥ 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(command)
    if args.what == "autotune":
        return autotune_main(args, command)
    return bench_main(args, command)


if __name__ == "__main__":
    sys.exit(main())
