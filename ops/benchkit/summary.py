"""From samples to the headline ratios and the performance targets `serve` is held to: pure
functions."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchkit.plan import (
    BASE_PROMPT_TOKENS,
    ENGINE,
    OURS,
    OURS_MIXED,
    RAW,
    THEIRS,
    Memory,
    Plan,
    Results,
    Sample,
    sweep_contenders,
)
from macprovider.actors.tuning import nearest_rank_percentile

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
                for name in sweep_contenders(kv, plan.mixed)
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
    """The headline ratios, the tables they come from, and the targets."""
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
        # The ceiling for the line above: mlx-lm's batched engine alone, no server.
        "engine_c4_vs_c1": ratio(
            aggregate_median(sweep, None, 4, ENGINE), aggregate_median(sweep, None, 1, ENGINE)
        ),
        "vs_engine": {
            str(c): ratio(
                aggregate_median(sweep, None, c, OURS), aggregate_median(sweep, None, c, ENGINE)
            )
            for c in plan.concurrency
        },
        # Mixed requests through ours against the plain (greedy) engine: the per-request
        # parameters should cost little once sampled as one batch.
        "mixed_vs_engine": {
            str(c): ratio(
                aggregate_median(sweep, None, c, OURS_MIXED),
                aggregate_median(sweep, None, c, ENGINE),
            )
            for c in plan.concurrency
        }
        if plan.mixed
        else {},
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
    """The targets, from one run's ratios: `serve` costs at most 5 % of the raw engine's
    single-stream decode rate, serves at least mlx_lm.server's aggregate tok/s at every
    concurrency (1.5× with `--kv-bits 8` at 4 streams, where mlx_lm.server serialises), makes
    4 streams at least twice one, and matches mlx_lm.server's long-prompt TTFT (within 5 %)
    and idle RSS."""
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
    if plan.mixed:
        c = max(plan.concurrency)
        mixed = summary["mixed_vs_engine"].get(str(c))
        found.append(Target(f"mixed requests at {c}, ours / plain engine", mixed, 0.9, True))
    return found
