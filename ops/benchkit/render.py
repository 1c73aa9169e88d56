"""The markdown report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from benchkit.plan import (
    BASE_PROMPT_TOKENS,
    ENGINE,
    ENGINE_MIXED,
    LABELS,
    OURS,
    OURS_MIXED,
    RAW,
    STEP_MIXED,
    THEIRS,
    Plan,
    Results,
)
from benchkit.summary import Stats, kv_key, median_of, ratio

MIB: Final = 1024 * 1024


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
    ceiling = (
        "Batching ceiling: mlx-lm's `BatchGenerator` alone (in process, no server) makes "
        f"{num(summary['engine_c4_vs_c1'], 2)}× its one-stream aggregate tok/s at 4 streams; "
        f"ours makes {num(summary['ours_c4_vs_c1'], 2)}×."
    )
    header = ["ratio", "value", "target", "verdict"]
    return ["### Targets", "", *table(header, rows), "", ceiling]


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
    title = "### Concurrency sweep (aggregate tok/s; TTFT p50 / p95 ms over every stream)"
    note = (
        "`engine` = mlx-lm's `BatchGenerator` in process with every stream inserted at once "
        "(unquantized only: mlx-lm cannot batch a quantized cache)."
    )
    rows = []
    for kv in plan.kv_settings:
        ratios = summary["vs_mlx_lm_server" if kv is None else "kv8_vs_mlx_lm_server"]
        for c in plan.concurrency:
            cell = summary["sweep"][kv_key(kv)][str(c)]
            ours, theirs, engine = cell[OURS], cell[THEIRS], cell.get(ENGINE)
            rows.append(
                [
                    kv_key(kv),
                    str(c),
                    spread(engine["aggregate_tps"]) if engine else "—",
                    spread(ours["aggregate_tps"]),
                    spread(theirs["aggregate_tps"]),
                    num(ratios.get(str(c)), 2),
                    num(summary["vs_engine"].get(str(c)), 2) if engine else "—",
                    f"{num(ours['ttft_p50_ms'], 0)} / {num(ours['ttft_p95_ms'], 0)}",
                    f"{num(theirs['ttft_p50_ms'], 0)} / {num(theirs['ttft_p95_ms'], 0)}",
                ]
            )
    header = ["kv-bits", "streams", "engine tok/s", "ours tok/s", "mlx_lm.server tok/s"]
    header += ["ours / theirs", "ours / engine", "ours TTFT", "theirs TTFT"]
    return [title, "", note, "", *table(header, rows)]


def render_mixed(summary: dict[str, Any], plan: Plan) -> list[str]:
    """Plain against mixed requests, unquantized: only with `--mixed`."""
    if not plan.mixed:
        return []
    names = (ENGINE, ENGINE_MIXED, STEP_MIXED, OURS, OURS_MIXED)
    rows = []
    for c in plan.concurrency:
        cell = summary["sweep"]["unset"][str(c)]
        rows.append(
            [
                str(c),
                *(spread(cell[n]["aggregate_tps"]) for n in names),
                num(summary["mixed_vs_engine"].get(str(c)), 2),
            ]
        )
    title = (
        "### Mixed requests (aggregate tok/s; each stream its own temperature, top-p, seed, bias)"
    )
    header = ["streams", *(LABELS[n] for n in names), "ours mixed / engine plain"]
    return [title, "", *table(header, rows)]


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
        render_mixed(summary, plan),
        render_prompts(summary, plan),
        render_memory(results),
    ]
    lines = [line for part in parts for line in [*part, ""]]
    if results.errors:
        lines += ["### Errors", "", *(f"- {error}" for error in results.errors), ""]
    return "\n".join(lines).rstrip() + "\n"
