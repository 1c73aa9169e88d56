"""One configuration's measurements, and the whole run over every configuration."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from benchkit.contenders import (
    REPLICATE_TIMEOUT_S,
    RawEngine,
    RssSampler,
    Server,
    free_port,
    server_argv,
    tree_rss,
)
from benchkit.plan import (
    BASE_PROMPT_TOKENS,
    ENGINE_MIXED,
    IN_PROCESS,
    LABELS,
    OURS,
    OURS_MIXED,
    RAW,
    SERVED_BY,
    STEP_MIXED,
    SWEEP_MAX_TOKENS,
    THEIRS,
    Memory,
    Plan,
    Results,
    mixed_sampling,
    sample_from,
    sweep_contenders,
)
from benchkit.prompts import Prompts
from macprovider.actors.messages import ProbeSpec
from macprovider.actors.probe import measure_replicate
from macprovider.actors.tuning import Replicate


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
        mixed = [mixed_sampling(i) for i in range(concurrency)]
        if contender in IN_PROCESS:
            contents = [self.prompts.make(prompt) for _ in range(concurrency)]
            rows = mixed if contender in (ENGINE_MIXED, STEP_MIXED) else []
            step = contender == STEP_MIXED
            return self.raw.measure_batch(contents, max_tokens, banned, rows, step)
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
        if contender == OURS_MIXED:
            specs = [
                replace(s, temperature=m.temperature, top_p=m.top_p, seed=m.seed, bias=m.bias)
                for s, m in zip(specs, mixed, strict=True)
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
        sweep = [
            n
            for n in sweep_contenders(kv_bits, bench.plan.mixed)
            if n in IN_PROCESS or SERVED_BY.get(n, n) in servers
        ]
        names = ([RAW] if single else []) + sweep
        for name in names:
            if name in IN_PROCESS or name == RAW:  # a warm-up, as the servers got
                bench.replicate(name, None, c, BASE_PROMPT_TOKENS, 8)
        for repetition in range(bench.plan.repetitions):
            order = rotation(names, repetition)
            ports = {
                name: servers[SERVED_BY.get(name, name)].port
                for name in sweep
                if name not in IN_PROCESS
            }
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
        # TTFT by prompt length compares one stream of greedy requests: the batched engine
        # and the mixed requests add nothing there.
        swept = (RAW, OURS, THEIRS)
        turn = order if kind == "stream" else [name for name in order if name in swept]
        for position, name in enumerate(turn):
            replicate = bench.replicate(name, ports.get(name), c, prompt, tokens)
            sample = sample_from(
                replicate, name, kind, kv_bits, c, prompt, tokens, (repetition, position)
            )
            bench.results.samples.append(sample)
            if not sample.ok:
                bench.results.errors.append(f"{LABELS[name]} {kind} c={c}: {sample.reason}")


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
