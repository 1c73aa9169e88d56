"""`report --html FILE`: one autotune run as a single self-contained HTML page.

Everything is inline (the style, and the SVG chart `report_chart` draws), so the file can be
mailed, archived or opened offline. Every text taken from the database goes through `_e`: model
names and notes are operator and tool data, and a note may well quote a stderr line holding
markup. The tuned knobs' names and columns come from the knob table (`TUNED_KNOBS`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.recommendation import Recommendation
from macprovider.actors.store_records import StoredTrial
from macprovider.cli.atomic_file import replace_file
from macprovider.cli.autotune_render import NO_ALTERNATES
from macprovider.cli.errors import ReportHtmlError
from macprovider.cli.report_chart import chart_svg, knob_text, record_knobs
from macprovider.cli.run_report import RunReport
from macprovider.server.knobs import TUNED_KNOBS

__all__ = ["MISSING", "render_html", "write_html"]

MISSING: Final = "—"


def render_html(report: RunReport) -> str:
    """The whole page for one run."""
    body = "\n".join(
        [
            _header(report),
            _recommendation(report),
            _inputs(report),
            _stage1(report),
            _stage2(report),
        ]
    )
    title = _e(f"autotune run {report.run.start.run_id}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def write_html(report: RunReport, path: Path) -> None:
    """Writes the page atomically (`atomic_file`): a reader never sees half a page and an old
    page survives a failed write."""
    text = render_html(report)
    parent = path.parent
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a directory"
        raise ReportHtmlError(f"cannot write {path}: directory {parent} {what}")
    try:
        replace_file(path, text.encode(), mode=None)  # None: the umask's say, as `open` has
    except OSError as exc:
        raise ReportHtmlError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --- small text helpers ----------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 1) -> str:
    return MISSING if value is None else f"{value:,.{digits}f}"


def _count(value: int | None) -> str:
    return MISSING if value is None else str(value)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    return f"{minutes} min {secs:02d} s"


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column definition list; both sides are plain text, escaped here."""
    rows = "".join(f"<dt>{_e(name)}</dt><dd>{_e(value)}</dd>" for name, value in pairs)
    return f'<dl class="facts">{rows}</dl>'


@dataclass(frozen=True)
class _Row:
    cells: Sequence[str]  # plain text, escaped when rendered
    css: str = ""


def _table(table_id: str, headers: Sequence[str], numeric: set[int], rows: Sequence[_Row]) -> str:
    """A table of plain-text cells; the columns in `numeric` are right-aligned."""

    def cell(tag: str, index: int, text: str) -> str:
        css = ' class="num"' if index in numeric else ""
        return f"<{tag}{css}>{_e(text)}</{tag}>"

    head = "".join(cell("th", i, text) for i, text in enumerate(headers))
    body = []
    for row in rows:
        css = f' class="{row.css}"' if row.css else ""
        cells = "".join(cell("td", i, text) for i, text in enumerate(row.cells))
        body.append(f"<tr{css}>{cells}</tr>")
    return (
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


# --- sections ------------------------------------------------------------------------------


def _reason_text(report: RunReport) -> str:
    reason = report.exit_reason
    return reason.value if reason is not None else "unfinished (the run was killed)"


def _header(report: RunReport) -> str:
    run = report.run
    badge = "ok" if report.exit_reason is ExitReason.OK else "bad"
    badges = f'<span class="badge {badge}">{_e(_reason_text(report))}</span>'
    if report.recommendation is not None and report.recommendation.partial:
        badges += ' <span class="badge partial">PARTIAL</span>'
    ended = run.ended_at
    facts = [
        ("started", _when(run.start.started_at)),
        ("ended", _when(ended) if ended else "never (the run did not close)"),
        ("duration", _duration(ended - run.start.started_at) if ended else MISSING),
    ]
    return (
        f"<header><h1>Autotune run <code>{_e(run.start.run_id)}</code></h1>"
        f'<p class="status">exit reason: {badges}</p>{_facts(facts)}</header>'
    )


def _inputs(report: RunReport) -> str:
    start = report.run.start
    inputs = [
        ("target context", f"{start.target_context} tokens"),
        ("replicates", f"Stage 1: {start.stage1_replicates}, Stage 2: {start.stage2_replicates}"),
        ("TTFT gate", f"{start.gate_ttft_ms:g} ms"),
        ("tie band ε", f"{start.tps_tie_epsilon:g}"),
    ]
    machine = [
        ("RAM", f"{start.machine_ram_gb:g} GB"),
        ("chip", start.machine_chip),
        ("OS", start.machine_os_version),
        ("binary version", start.binary_version),
        ("spec version", start.spec_version),
        ("recipe hash", report.recipe_hash() or "none (no recommendation)"),
        ("applied", "yes" if report.run.applied else "no"),
        ("database", str(report.db_path)),
    ]
    candidates = "".join(f"<li>{_e(model)}</li>" for model in start.candidate_models)
    return (
        '<section class="columns"><div><h2>Inputs</h2>'
        f"{_facts(inputs)}<h3>Candidates, in the order given</h3>"
        f'<ol class="candidates">{candidates}</ol></div>'
        f"<div><h2>Machine and record</h2>{_facts(machine)}</div></section>"
    )


def _recommendation(report: RunReport) -> str:
    rec = report.recommendation
    if rec is None:
        return _no_recommendation(report)
    title = "Recommendation"
    if rec.partial:
        title += f" (PARTIAL: {_reason_text(report)}; the best cell measured so far)"
    return (
        f'<section class="recommendation"><h2>{_e(title)}</h2>{_facts(_rec_facts(rec, report))}'
        f'<p class="label">serve command</p><pre><code>{_e(rec.serve_command())}</code></pre>'
        "</section>"
    )


def _rec_facts(rec: Recommendation, report: RunReport) -> list[tuple[str, str]]:
    return [
        ("model", rec.model),
        ("target context", f"{rec.target_context} tokens"),
        *((spec.flag, spec.text(getattr(rec.cell, spec.name))) for spec in TUNED_KNOBS),
        ("throughput", f"{rec.tps_median:.1f} tok/s (median of {rec.replicates} replicates)"),
        ("TTFT p95", f"{rec.ttft_p95_ms:.0f} ms"),
        ("alternates", ", ".join(report.alternates) or NO_ALTERNATES),
    ]


def _no_recommendation(report: RunReport) -> str:
    parts = [
        '<section class="recommendation none"><h2>No recommendation</h2>',
        f"<p>The run ended with <strong>{_e(_reason_text(report))}</strong>.</p>",
    ]
    if (problem := report.problem()) is not None:
        parts.append(f'<p class="problem">{_e(problem)}</p>')
    if report.infeasible:
        rows = [_Row([row.model, str(row.rank), row.reason]) for row in report.infeasible]
        parts.append("<h3>Infeasible candidates, smallest first</h3>")
        parts.append(_table("infeasible", ["model", "candidate #", "reason"], {1}, rows))
    if report.exit_reason is ExitReason.NO_FEASIBLE:
        parts.append("<p>Try a smaller <code>--target-context</code>, or other candidates.</p>")
    parts.append("</section>")
    return "".join(parts)


def _stage1(report: RunReport) -> str:
    trials = report.stage(1)
    if not trials:
        return (
            "<section><h2>Stage 1: biggest fit</h2><p>No Stage 1 trial was recorded.</p></section>"
        )
    candidates = report.run.start.candidate_models
    rows = []
    for trial in trials:
        record = trial.record
        rank = str(candidates.index(record.model) + 1) if record.model in candidates else "?"
        cells = [
            rank,
            record.model,
            "yes" if record.fits else "no",
            record.notes or "",
            _num(record.ttft_p95_ms, 0),
            _num(record.agg_throughput_tps),
        ]
        rows.append(_Row(cells, "fit" if record.fits else "nofit"))
    headers = ["#", "candidate", "fit", "reason", "TTFT p95 (ms)", "tok/s"]
    return (
        "<section><h2>Stage 1: biggest fit</h2>"
        f"{_table('stage1', headers, {0, 4, 5}, rows)}</section>"
    )


def _stage2(report: RunReport) -> str:
    trials = report.stage(2)
    heading = "<h2>Stage 2: knobs for the chosen model</h2>"
    if not trials:
        return f"<section>{heading}<p>No Stage 2 cell was measured.</p></section>"
    headers = [spec.display for spec in TUNED_KNOBS] + ["tok/s median", "TTFT p95 (ms)"]
    headers += ["replicates", "n_err", "fit", "kept", "notes"]
    rows = [_Row(_stage2_cells(trial), _stage2_css(trial)) for trial in trials]
    table = _table("stage2", headers, {1, 2, 3, 4, 5, 6}, rows)
    return f"<section>{heading}{chart_svg(trials)}{table}</section>"


def _stage2_cells(trial: StoredTrial) -> list[str]:
    record = trial.record
    return [
        *(knob_text(spec, value, "default") for spec, value in record_knobs(record)),
        _num(record.agg_throughput_tps),
        _num(record.ttft_p95_ms, 0),
        _count(record.replicates_n),
        str(record.n_err),
        "yes" if record.fits else "no",
        "winner" if trial.kept else "",
        record.notes or "",
    ]


def _stage2_css(trial: StoredTrial) -> str:
    if trial.kept:
        return "winner"
    return "fit" if trial.record.fits else "nofit"


_STYLE: Final = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d2430;
  font: 14px/1.45 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, Helvetica, Arial,
  sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 14px; margin: 14px 0 6px; color: #4a5568; }
section, header { background: #fff; border: 1px solid #dde1e7; border-radius: 8px;
  padding: 16px 20px; margin: 0 0 16px; }
.columns { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 13px; }
pre { background: #1d2430; color: #e8edf3; padding: 10px 12px; border-radius: 6px;
  overflow-x: auto; white-space: pre-wrap; overflow-wrap: anywhere; margin: 4px 0 0; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0; }
.facts dt { color: #5a6577; }
.facts dd { margin: 0; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600;
  font-size: 12px; }
.badge.ok { background: #dcf5e3; color: #17663a; }
.badge.bad { background: #fde2e1; color: #a02622; }
.badge.partial { background: #fff0c2; color: #7a5200; }
.status { margin: 0 0 10px; }
.recommendation { border-left: 5px solid #2f855a; }
.recommendation.none { border-left-color: #c53030; }
.problem { color: #a02622; font-weight: 600; }
.label { margin: 10px 0 0; color: #5a6577; }
.candidates { margin: 0; padding-left: 22px; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; margin-top: 8px; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e5e8ed;
  vertical-align: top; }
th { background: #eef1f5; font-weight: 600; white-space: nowrap; }
td { overflow-wrap: anywhere; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.nofit td { color: #8a93a3; }
tr.winner td { background: #fff4d6; font-weight: 600; }
tr.winner td:first-child { box-shadow: inset 4px 0 0 #dd8a00; }
.empty { color: #5a6577; font-style: italic; }
svg { display: block; width: 100%; max-width: 960px; height: auto; font-family: inherit; }
.caption { margin: 2px 0 0; color: #5a6577; font-size: 12px; }
svg text { fill: #3b4556; }
svg .title { fill: #1d2430; font-weight: 600; }
svg .grid { stroke: #e8ebf0; }
svg .axis { stroke: #5a6577; stroke-width: 1.2; }
svg .feasible { fill: #2b6cb0; stroke: #fff; stroke-width: 1; }
svg .infeasible { fill: #fff; stroke: #a0a8b5; stroke-width: 1.5; }
svg .winner { fill: #dd8a00; stroke: #7a4b00; stroke-width: 1; }
svg .label { fill: #3b4556; }
svg .leader { stroke: #a0a8b5; stroke-width: 0.8; }
svg .label.winner { fill: #7a4b00; stroke: none; font-weight: 700; }
@media (max-width: 720px) { .columns { grid-template-columns: 1fr; } }
"""
