"""`report --html FILE`: one autotune run as a single self-contained HTML page (DESIGN §8).

Everything is inline (style and an SVG chart drawn here), so the file can be mailed, archived or
opened offline. Every text taken from the database goes through `_e`: model names and notes are
operator and tool data, and a note may well quote a stderr line holding markup.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.recommendation import Recommendation
from macprovider.actors.store import StoredTrial, TrialRecord
from macprovider.cli.atomic_file import replace_file
from macprovider.cli.autotune_render import kv_bits_text
from macprovider.cli.errors import ReportHtmlError
from macprovider.cli.run_report import RunReport

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


def _opt(value: int | None, absent: str = "default") -> str:
    return absent if value is None else str(value)


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
        ("--kv-bits", kv_bits_text(rec.cell.kv_bits)),
        ("--max-batch", str(rec.cell.max_batch)),
        ("--max-context", str(rec.cell.max_context)),
        ("throughput", f"{rec.tps_median:.1f} tok/s (median of {rec.replicates} replicates)"),
        ("TTFT p95", f"{rec.ttft_p95_ms:.0f} ms"),
        ("alternates", ", ".join(report.alternates) or "(none smaller)"),
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
    headers = ["kv-bits", "max-batch", "max-context", "tok/s median", "TTFT p95 (ms)"]
    headers += ["replicates", "n_err", "fit", "kept", "notes"]
    rows = [_Row(_stage2_cells(trial), _stage2_css(trial)) for trial in trials]
    table = _table("stage2", headers, {1, 2, 3, 4, 5, 6}, rows)
    return f"<section>{heading}{chart_svg(trials)}{table}</section>"


def _stage2_cells(trial: StoredTrial) -> list[str]:
    record = trial.record
    return [
        kv_bits_text(record.kv_bits),
        _opt(record.max_batch),
        _opt(record.max_context_cap),
        _num(record.agg_throughput_tps),
        _num(record.ttft_p95_ms, 0),
        _opt(record.replicates_n, MISSING),
        str(record.n_err),
        "yes" if record.fits else "no",
        "winner" if trial.kept else "",
        record.notes or "",
    ]


def _stage2_css(trial: StoredTrial) -> str:
    if trial.kept:
        return "winner"
    return "fit" if trial.record.fits else "nofit"


# --- the chart -----------------------------------------------------------------------------

WIDTH: Final = 760
HEIGHT: Final = 430
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 44, 58  # margins: tick labels, legend, axis titles
FONT_PX: Final = 11
CHAR_PX: Final = 6.4  # the width of one label character at FONT_PX, estimated (no font metrics)
DOT_R: Final = 5.0
STAR_OUTER, STAR_INNER = 9.0, 4.0


@dataclass(frozen=True)
class Point:
    ttft_ms: float
    tps: float
    label: str
    feasible: bool
    winner: bool
    detail: str  # the tooltip: the label plus the notes


def _knob_parts(record: TrialRecord) -> tuple[str, str, str]:
    kv = f"kv{record.kv_bits}" if record.kv_bits is not None else "kv unset"
    return kv, f"b{_opt(record.max_batch, '?')}", f"c{_opt(record.max_context_cap, '?')}"


def cell_label(record: TrialRecord) -> str:
    """A short name for a Stage 2 cell, e.g. `kv8 b2 c2048`."""
    return " ".join(_knob_parts(record))


def _shared_knobs(records: Sequence[TrialRecord]) -> list[int]:
    """The knobs (indices into `_knob_parts`) every plotted cell has alike: the labels leave
    them out, which keeps them short where cells crowd, and the caption names them once."""
    if len(records) < 2:
        return []
    parts = [_knob_parts(record) for record in records]
    shared = [i for i in range(3) if len({p[i] for p in parts}) == 1]
    return shared if len(shared) < 3 else []


def _measured(trials: Sequence[StoredTrial]) -> list[StoredTrial]:
    """The cells with both figures; a cell without them has nothing to place (and a
    non-finite figure, which no measurement should give, would break the scales)."""
    return [
        trial
        for trial in trials
        if all(
            value is not None and math.isfinite(value)
            for value in (trial.record.ttft_p95_ms, trial.record.agg_throughput_tps)
        )
    ]


def chart_points(trials: Sequence[StoredTrial]) -> list[Point]:
    measured = _measured(trials)
    shared = _shared_knobs([trial.record for trial in measured])
    points = []
    for trial in measured:
        record = trial.record
        assert record.ttft_p95_ms is not None and record.agg_throughput_tps is not None
        parts = _knob_parts(record)
        label = " ".join(part for i, part in enumerate(parts) if i not in shared)
        detail = f"{cell_label(record)}: {record.agg_throughput_tps:.1f} tok/s, "
        detail += f"{record.ttft_p95_ms:.0f} ms" + (f" ({record.notes})" if record.notes else "")
        tps, ttft = record.agg_throughput_tps, record.ttft_p95_ms
        points.append(Point(ttft, tps, label, record.fits, trial.kept, detail))
    return points


def chart_caption(trials: Sequence[StoredTrial]) -> str:
    """What the labels leave out, e.g. "Every plotted cell has max-context 2000."."""
    measured = [trial.record for trial in _measured(trials)]
    shared = _shared_knobs(measured)
    if not shared:
        return ""
    first = measured[0]
    values = (
        f"kv-bits {kv_bits_text(first.kv_bits)}",
        f"max-batch {_opt(first.max_batch)}",
        f"max-context {_opt(first.max_context_cap)}",
    )
    return f"Every plotted cell has {' and '.join(values[i] for i in shared)}."


def nice_step(span: float, count: int = 5) -> float:
    """The step of 1, 2 or 5 × 10^k nearest to `span / count` (span > 0): about `count`
    intervals, never fewer than three."""
    raw = span / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    fraction = raw / magnitude
    # Thresholds between the nice mantissas, as in Heckbert's "nice numbers" (Graphics Gems).
    mantissa = 1 if fraction < 1.5 else 2 if fraction < 3 else 5 if fraction < 7 else 10
    return mantissa * magnitude


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """The multiples of a nice step that lie within [lo, hi]."""
    step = nice_step(hi - lo, count)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [n * step for n in range(first, last + 1)]


def tick_text(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step)))
    return f"{value:,.{decimals}f}"


def domain(values: Sequence[float]) -> tuple[float, float]:
    """The data range padded so no point sits on an axis; a single value (or several equal
    ones) gets a band around it, so its point lands in the middle and the span is never 0."""
    lo, hi = min(values), max(values)
    if hi == lo:
        half = max(abs(lo) * 0.1, 1.0)
        return lo - half, hi + half
    pad = (hi - lo) * 0.12
    # Figures are never negative: do not pad below 0 into a meaningless region.
    return max(lo - pad, 0.0) if lo >= 0 else lo - pad, hi + pad


@dataclass(frozen=True)
class Scale:
    """A linear map from the data range [lo, hi] onto the pixel range [start, end]."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        return self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start)


def chart_svg(trials: Sequence[StoredTrial]) -> str:
    """Throughput against p95 TTFT for the Stage 2 cells, as inline SVG plus a caption."""
    points = chart_points(trials)
    if not points:
        return '<p class="empty">No Stage 2 cell has figures to plot.</p>'
    x = Scale(*domain([p.ttft_ms for p in points]), LEFT, WIDTH - RIGHT)
    y = Scale(*domain([p.tps for p in points]), HEIGHT - BOTTOM, TOP)
    # The winner is drawn last, so no other marker covers it.
    ordered = sorted(points, key=lambda p: p.winner)
    leaders, labels = _labels([(x(p.ttft_ms), y(p.tps), p) for p in ordered])
    parts = [*_axes(x, y), *_legend(), *leaders]
    parts += [_marker(p, x(p.ttft_ms), y(p.tps)) for p in ordered]
    parts += labels
    svg = (
        f'<svg id="stage2-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'font-size="{FONT_PX}" aria-label="Stage 2 cells: throughput against p95 TTFT">'
        f"{''.join(parts)}</svg>"
    )
    caption = chart_caption(trials)
    return svg + (f'<p class="caption">{_e(caption)}</p>' if caption else "")


def _axes(x: Scale, y: Scale) -> list[str]:
    """Grid lines with tick labels, both axis lines and the axis titles."""
    parts = []
    x_step = nice_step(x.hi - x.lo)
    for value in ticks(x.lo, x.hi):
        px = x(value)
        parts.append(f'<line class="grid" x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{y.start}"/>')
        label = tick_text(value, x_step)
        parts.append(f'<text x="{px:.1f}" y="{y.start + 17}" text-anchor="middle">{label}</text>')
    y_step = nice_step(y.hi - y.lo)
    for value in ticks(y.lo, y.hi):
        py = y(value)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{py:.1f}" x2="{x.end}" y2="{py:.1f}"/>')
        label = tick_text(value, y_step)
        parts.append(f'<text x="{LEFT - 7}" y="{py + 4:.1f}" text-anchor="end">{label}</text>')
    mid_x, mid_y = (LEFT + x.end) / 2, (TOP + y.start) / 2
    parts += [
        f'<line class="axis" x1="{LEFT}" y1="{y.start}" x2="{x.end}" y2="{y.start}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{y.start}"/>',
        f'<text class="title" x="{mid_x}" y="{HEIGHT - 14}" text-anchor="middle">'
        "TTFT p95 (ms) — lower is better</text>",
        f'<text class="title" x="18" y="{mid_y}" text-anchor="middle" '
        f'transform="rotate(-90 18 {mid_y})">throughput (tok/s, median) — higher is better</text>',
    ]
    return parts


def _legend() -> list[str]:
    """One row above the plot, where no point can be."""
    y = TOP - 22
    return [
        _dot(LEFT + 6, y, "legend-mark feasible"),
        f'<text x="{LEFT + 16}" y="{y + 4}">feasible cell</text>',
        _star(LEFT + 126, y, "legend-mark winner"),
        f'<text x="{LEFT + 138}" y="{y + 4}">winner (kept)</text>',
        _dot(LEFT + 256, y, "legend-mark infeasible"),
        f'<text x="{LEFT + 266}" y="{y + 4}">infeasible cell</text>',
    ]


def _dot(cx: float, cy: float, css: str, title: str = "") -> str:
    tip = f"<title>{_e(title)}</title>" if title else ""
    return f'<circle class="{css}" cx="{cx:.1f}" cy="{cy:.1f}" r="{DOT_R:g}">{tip}</circle>'


def _star(cx: float, cy: float, css: str, title: str = "") -> str:
    """A five-pointed star: a shape, not just a colour, so the winner reads in greyscale too."""
    corners = []
    for i in range(10):
        radius = STAR_OUTER if i % 2 == 0 else STAR_INNER
        angle = math.pi / 2 + i * math.pi / 5
        corners.append(f"{cx + radius * math.cos(angle):.1f},{cy - radius * math.sin(angle):.1f}")
    tip = f"<title>{_e(title)}</title>" if title else ""
    return f'<polygon class="{css}" points="{" ".join(corners)}">{tip}</polygon>'


def _marker(point: Point, px: float, py: float) -> str:
    if point.winner:
        return _star(px, py, "pt winner", point.detail)
    return _dot(px, py, "pt feasible" if point.feasible else "pt infeasible", point.detail)


@dataclass(frozen=True)
class _Spot:
    """Where a label may go relative to its point; `dy` is to the text baseline."""

    dx: float
    dy: float
    anchor: str  # SVG text-anchor
    leader: bool  # far from its point: a thin line ties them


def _label_spots(r: float) -> list[_Spot]:
    """Right beside a marker of radius r first, then two rings further out (with a leader
    line), so a label still finds room when cells with close figures crowd together."""
    spots = [
        _Spot(r + 4, 4, "start", False),
        _Spot(-r - 4, 4, "end", False),
        _Spot(0, -r - 5, "middle", False),
        _Spot(0, r + 12, "middle", False),
    ]
    for gap in (22.0, 44.0):
        side = gap * 0.7
        spots += [
            _Spot(r + gap, 4, "start", True),
            _Spot(-r - gap, 4, "end", True),
            _Spot(r + side, -r - side, "start", True),
            _Spot(-r - side, -r - side, "end", True),
            _Spot(r + side, r + side + 8, "start", True),
            _Spot(-r - side, r + side + 8, "end", True),
            _Spot(0, -r - gap, "middle", True),
            _Spot(0, r + gap + 8, "middle", True),
        ]
    return spots


_Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def _radius(point: Point) -> float:
    return STAR_OUTER if point.winner else DOT_R


def _label_box(x: float, y: float, anchor: str, text: str) -> _Box:
    width = len(text) * CHAR_PX
    x0 = {"start": x, "end": x - width, "middle": x - width / 2}[anchor]
    return (x0, y - FONT_PX + 2, x0 + width, y + 3)


def _overlaps(a: _Box, b: _Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(box: _Box, frame: _Box) -> bool:
    return frame[0] <= box[0] and box[2] <= frame[2] and frame[1] <= box[1] and box[3] <= frame[3]


def _leader_ends(px: float, py: float, r: float, box: _Box) -> tuple[float, float, float, float]:
    """From the marker's edge to the nearest point of the label's box."""
    tx, ty = min(max(px, box[0]), box[2]), min(max(py, box[1]), box[3])
    distance = math.hypot(tx - px, ty - py) or 1.0
    return px + (tx - px) * r / distance, py + (ty - py) * r / distance, tx, ty


def _crosses(line: tuple[float, float, float, float], boxes: Sequence[_Box]) -> bool:
    """Whether a leader passes over a box; sampled, which is plenty at these sizes."""
    x0, y0, x1, y1 = line
    samples = [(x0 + (x1 - x0) * t / 12, y0 + (y1 - y0) * t / 12) for t in range(13)]
    return any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for x, y in samples for b in boxes)


def _labels(placed: Sequence[tuple[float, float, Point]]) -> tuple[list[str], list[str]]:
    """Leader lines and labels: each label at the first spot inside the plot and clear of
    other labels and markers (its leader clear too); the winner's first. A label with no
    free spot is left out rather than printed over another: its tooltip and the table row
    still name the cell."""
    markers = [
        (px - _radius(p), py - _radius(p), px + _radius(p), py + _radius(p)) for px, py, p in placed
    ]
    frame: _Box = (LEFT + 2, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM - 2)
    taken: list[_Box] = []
    leaders: list[str] = []
    labels: list[str] = []
    for index in sorted(range(len(placed)), key=lambda i: not placed[i][2].winner):
        px, py, point = placed[index]
        others = taken + markers[:index] + markers[index + 1 :]
        for spot in _label_spots(_radius(point)):
            box = _label_box(px + spot.dx, py + spot.dy, spot.anchor, point.label)
            if not _inside(box, frame) or any(_overlaps(box, other) for other in others):
                continue
            line = _leader_ends(px, py, _radius(point), box)
            if spot.leader and _crosses(line, others):
                continue
            taken.append(box)
            if spot.leader:
                ends = 'x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}"'.format(*line)
                leaders.append(f'<line class="leader" {ends}/>')
            css = "label winner" if point.winner else "label"
            labels.append(
                f'<text class="{css}" x="{px + spot.dx:.1f}" y="{py + spot.dy:.1f}" '
                f'text-anchor="{spot.anchor}">{_e(point.label)}</text>'
            )
            break
    return leaders, labels


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
