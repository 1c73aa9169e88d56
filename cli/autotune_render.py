"""What `autotune` prints: the plan of `--dry-run`, the RECOMMENDATION block or the
all-infeasible report (stdout, so `tee` keeps it), and one line per trial (stderr).

The tuned knobs are named and their values written as the knob table says (`TUNED_KNOBS`):
`--max-batch` beside a recommended value, the flag the operator would type, and `max-batch 2`
in running text.
"""

from __future__ import annotations

import shlex

from macprovider.actors.autotune_inputs import TuneSettings
from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.messages import Knobs
from macprovider.actors.recommendation import Recommendation
from macprovider.actors.tune_events import Timings, TrialEvent
from macprovider.actors.tuning import Cell, stage2_cells
from macprovider.cli.run_report import CandidateSizes, RunReport
from macprovider.server.knobs import TUNED_KNOBS

PROG = "macprovider-supervise"


def knobs_text(knobs: Knobs | Cell) -> str:
    """The tuned knobs in running text, e.g. `kv-bits unset, max-batch 2`. A knob left to
    the provider's default (None) is left out, unless None is one of its values (kv-bits)."""
    parts = []
    for spec in TUNED_KNOBS:
        value = getattr(knobs, spec.name)
        if value is not None or spec.none_is_value:
            parts.append(f"{spec.display} {spec.text(value)}")
    return ", ".join(parts)


def _flag_values(rec: Recommendation) -> list[tuple[str, str]]:
    """The recommended knobs beside their flags, as the serve command sets them."""
    return [(spec.flag, spec.text(getattr(rec.cell, spec.name))) for spec in TUNED_KNOBS]


# Alternates are the unprobed candidates no larger than the pick (`recommendation.alternates`).
NO_ALTERNATES = "(none of the same size or smaller)"


def render_plan(settings: TuneSettings, sizes: CandidateSizes) -> str:
    """`--dry-run`: what a run would do, in order; nothing is started or written."""
    lines = ["PLAN (dry run: nothing started, nothing written)", ""]
    lines.append(f"target context: {settings.target_context} tokens")
    lines.append(
        f"Stage 1: candidates in this order, stopping at the first that fits "
        f"({settings.stage1_replicates} replicate(s) each, TTFT gate {settings.gate_ttft_ms:g} ms):"
    )
    for rank, model in enumerate(settings.candidates, start=1):
        lines.append(f"  {rank}. {model}  ({sizes.text(model)})")
    cells = stage2_cells(settings.kv_bits_axis, settings.max_batch_axis, settings.max_context_axis)
    lines.append(
        f"Stage 2: {len(cells)} cells for the chosen model, "
        f"{settings.stage2_replicates} replicate(s) each (max-batch b fires b streams):"
    )
    for index, cell in enumerate(cells, start=1):
        lines.append(f"  {index}. {knobs_text(cell)}")
    lines.append(
        f"budget: {settings.max_duration_s:g} s; port {settings.port}; "
        f"{settings.probe_max_tokens} tokens per request"
    )
    if settings.provider_memory_limit_gb is not None:
        lines.append(f"provider memory limit: {settings.provider_memory_limit_gb:g} GB")
    return "\n".join(lines)


def render_report(report: RunReport) -> str:
    """The result block: the recommendation, or why there is none."""
    if report.recommendation is not None:
        return _recommendation_block(report.recommendation, report)
    reason = report.exit_reason.value if report.exit_reason else "unfinished: the run was killed"
    lines = [f"NO RECOMMENDATION ({reason})"]
    if (problem := report.problem()) is not None:
        lines.append(f"  {problem}")
    if report.infeasible:
        lines.append("  infeasible candidates, smallest first:")
        lines += [
            f"    {row.model} (candidate {row.rank}): {row.reason}" for row in report.infeasible
        ]
    if report.exit_reason is ExitReason.NO_FEASIBLE:
        lines.append("  try a smaller --target-context, or other --candidate-models")
    lines.append(f"  run id: {report.run.start.run_id}")
    return "\n".join(lines)


def _recommendation_block(rec: Recommendation, report: RunReport) -> str:
    title = "RECOMMENDATION"
    if rec.partial:
        reason = report.exit_reason.value if report.exit_reason else "unfinished"
        title += f" (PARTIAL: {reason}; the best cell measured so far)"
    lines = [
        title,
        f"  model:           {rec.model}  ({report.sizes.text(rec.model)})",
        f"  target context:  {rec.target_context} tokens",
        *(f"  {flag + ':':<17}{value}" for flag, value in _flag_values(rec)),
        f"  throughput:      {rec.tps_median:.1f} tok/s (median of {rec.replicates} replicates)",
        f"  TTFT p95:        {rec.ttft_p95_ms:.0f} ms",
        f"  alternates:      {', '.join(report.alternates) or NO_ALTERNATES}",
    ]
    if report.alternates:
        try_one = shlex.join([PROG, "autotune", "--candidate-models", report.alternates[0]])
        lines.append(f"  try one:         {try_one}")
    lines.append(f"  serve command:   {rec.serve_command()}")
    lines.append(f"  run id:          {report.run.start.run_id}")
    return "\n".join(lines)


def render_trial(event: TrialEvent) -> str:
    """One stderr line per finished trial."""
    result = event.result
    figures = "not measured"
    if result.tps_median is not None and result.ttft_p95_ms is not None:
        figures = f"{result.tps_median:.1f} tok/s, TTFT p95 {result.ttft_p95_ms:.0f} ms"
    verdict = "fits" if result.feasible else f"infeasible: {result.reason}"
    return (
        f"stage {event.stage} [{event.index}/{event.total}] {event.model} "
        f"({knobs_text(event.knobs)}): {figures}; {verdict}"
    )


def render_timings(timings: Timings, wall_s: float) -> str:
    """Where the run's time went; `other` is our own overhead (actors, DB, decisions)."""
    other = max(0.0, wall_s - timings.total())
    return (
        f"time: {wall_s:.1f} s in all: pre-warm and probe prompt {timings.prewarm_s:.1f} s, "
        f"load {timings.load_s:.1f} s, measurement {timings.measure_s:.1f} s, "
        f"provider stop {timings.stop_s:.1f} s, other {other:.1f} s"
    )


def _knob_values(rec: Recommendation | None) -> dict[str, str]:
    if rec is None:
        return {"recommendation": "none"}
    return {"model": rec.model, **dict(_flag_values(rec))}


def render_comparison(report: RunReport, previous: RunReport | None) -> str:
    """`--compare`: this run's recommendation beside the last run on the same machine with
    the same inputs (target context and candidate list)."""
    if previous is None:
        return "COMPARED WITH: no earlier run on this machine with the same inputs"
    when = previous.run.start.started_at.strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"COMPARED WITH run {previous.run.start.run_id} ({when})"]
    now, was = _knob_values(report.recommendation), _knob_values(previous.recommendation)
    for label in dict.fromkeys([*now, *was]):
        value, old = now.get(label, "-"), was.get(label, "-")
        lines.append(
            f"  {label + ':':<17}{value} ({'unchanged' if value == old else f'was {old}'})"
        )
    new_rec, old_rec = report.recommendation, previous.recommendation
    if new_rec is not None and old_rec is not None:
        delta = (new_rec.tps_median / old_rec.tps_median - 1) * 100 if old_rec.tps_median else 0.0
        lines.append(
            f"  {'throughput:':<17}{new_rec.tps_median:.1f} tok/s "
            f"(was {old_rec.tps_median:.1f}: {delta:+.1f}%)"
        )
    return "\n".join(lines)
