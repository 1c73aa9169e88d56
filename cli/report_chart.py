"""The HTML report's chart: throughput against p95 TTFT for the Stage 2 cells, as inline SVG.

Drawn here rather than by a plotting library, so the page stays one self-contained file. A
cell's label is built from the knob table (`TUNED_KNOBS`' short prefixes: `kv8 b2 c2048`), and
every text that reaches the SVG (labels, tooltips quoting the notes) is escaped here.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from macprovider.actors.store_records import StoredTrial, TrialRecord
from macprovider.server.knobs import TUNED_KNOBS, KnobSpec

__all__ = [
    "Point",
    "Scale",
    "cell_label",
    "chart_caption",
    "chart_points",
    "chart_svg",
    "domain",
    "knob_text",
    "nice_step",
    "record_knobs",
    "tick_text",
    "ticks",
]

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


def record_knobs(record: TrialRecord) -> list[tuple[KnobSpec[Any], Any]]:
    """A trial's tuned knobs and their values, in `TUNED_KNOBS` order (a TrialRecord's knob
    fields carry the knobs' names)."""
    return [(spec, getattr(record, spec.name)) for spec in TUNED_KNOBS]


def knob_text(spec: KnobSpec[Any], value: object, default: str) -> str:
    """A trial's knob value as the operator reads it. None is `unset` where it is one of the
    knob's values (kv-bits: unquantized), else the provider's default: `default` says so."""
    if value is None and not spec.none_is_value:
        return default
    return spec.text(value)


def _knob_parts(record: TrialRecord) -> list[str]:
    parts = []
    for spec, value in record_knobs(record):
        assert spec.short is not None  # every tuned knob has one
        text = knob_text(spec, value, "?")
        # `kv8`, `b2`, `c?`, but `kv unset`: a word after the prefix needs a space to read.
        parts.append(f"{spec.short}{' ' if text.isalpha() else ''}{text}")
    return parts


def cell_label(record: TrialRecord) -> str:
    """A short name for a Stage 2 cell, e.g. `kv8 b2 c2048`."""
    return " ".join(_knob_parts(record))


def _shared_knobs(records: Sequence[TrialRecord]) -> list[int]:
    """The knobs (indices into `_knob_parts`) every plotted cell has alike: the labels leave
    them out, which keeps them short where cells crowd, and the caption names them once."""
    if len(records) < 2:
        return []
    parts = [_knob_parts(record) for record in records]
    shared = [i for i in range(len(TUNED_KNOBS)) if len({p[i] for p in parts}) == 1]
    return shared if len(shared) < len(TUNED_KNOBS) else []


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
    values = [
        f"{spec.display} {knob_text(spec, value, 'default')}"
        for spec, value in record_knobs(measured[0])
    ]
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
    return svg + (f'<p class="caption">{html.escape(caption)}</p>' if caption else "")


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
    tip = f"<title>{html.escape(title)}</title>" if title else ""
    return f'<circle class="{css}" cx="{cx:.1f}" cy="{cy:.1f}" r="{DOT_R:g}">{tip}</circle>'


def _star(cx: float, cy: float, css: str, title: str = "") -> str:
    """A five-pointed star: a shape, not just a colour, so the winner reads in greyscale too."""
    corners = []
    for i in range(10):
        radius = STAR_OUTER if i % 2 == 0 else STAR_INNER
        angle = math.pi / 2 + i * math.pi / 5
        corners.append(f"{cx + radius * math.cos(angle):.1f},{cy - radius * math.sin(angle):.1f}")
    tip = f"<title>{html.escape(title)}</title>" if title else ""
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
                f'text-anchor="{spot.anchor}">{html.escape(point.label)}</text>'
            )
            break
    return leaders, labels
