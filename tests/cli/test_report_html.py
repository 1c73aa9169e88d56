"""`report --html`: the page built from a RunReport (hand-made DB rows, no processes)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.recommendation import Recommendation
from macprovider.actors.store_records import KvBits, RunStart, StoredRun, StoredTrial, TrialRecord
from macprovider.actors.trial_outcome import TrialOutcome
from macprovider.actors.tuning import Cell
from macprovider.cli import report_chart
from macprovider.cli.errors import ReportHtmlError
from macprovider.cli.report_html import render_html, write_html
from macprovider.cli.run_report import CandidateSizes, RunReport, build_report

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
BIG = "mlx-community/Qwen2.5-14B-Instruct-4bit"
MID = "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit"
SMALL = "mlx-community/Llama-3.2-3B-Instruct-4bit"
CANDIDATES = (BIG, MID, SMALL)
SIZES = CandidateSizes({BIG: 14.8, MID: 7.6, SMALL: 3.2}, {})
TARGET = 2000
SVG_NS = "{http://www.w3.org/2000/svg}"

# --- hand-made runs ----------------------------------------------------------------------------


def run_start(candidates: Sequence[str] = CANDIDATES) -> RunStart:
    return RunStart(
        run_id="run-0001",
        started_at=T0,
        spec_version="0.3",
        binary_version="0.1.0",
        machine_ram_gb=24.0,
        machine_chip="Apple M2 Pro",
        machine_os_version="macOS 14.5",
        target_context=TARGET,
        candidate_models=tuple(candidates),
        stage1_replicates=1,
        stage2_replicates=3,
        gate_ttft_ms=60000.0,
        tps_tie_epsilon=0.02,
    )


def _outcome(fits: bool) -> TrialOutcome:
    """These pages' rows fit or are infeasible: none was cut short."""
    return TrialOutcome.FITS if fits else TrialOutcome.MEASURE_FAILED


def stage1(
    model: str, fits: bool, notes: str | None = None, outcome: TrialOutcome | None = None
) -> TrialRecord:
    return TrialRecord(
        run_id="run-0001",
        stage=1,
        ts=T0,
        model=model,
        target_context=TARGET,
        max_tokens=64,
        outcome=outcome or _outcome(fits),
        agg_throughput_tps=31.5 if fits else None,
        ttft_p95_ms=1830.0 if fits else None,
        n_err=0 if fits else 1,
        notes=notes,
        replicates_n=1,
    )


def stage2(
    kv_bits: KvBits | None,
    batch: int,
    tps: float | None,
    ttft: float | None,
    *,
    fits: bool = True,
    notes: str | None = None,
    model: str = MID,
) -> TrialRecord:
    return TrialRecord(
        run_id="run-0001",
        stage=2,
        ts=T0,
        model=model,
        target_context=TARGET,
        max_tokens=64,
        outcome=_outcome(fits),
        agg_throughput_tps=tps,
        ttft_p95_ms=ttft,
        n_err=0 if fits else 1,
        notes=notes,
        kv_bits=kv_bits,
        max_context=TARGET,
        max_batch=batch,
        replicates_n=3,
    )


@dataclass
class RunSpec:
    """A run as the DB would hold it; `kept` is the index (into `records`) of the winner."""

    reason: ExitReason | None
    records: list[TrialRecord] = field(default_factory=list)
    kept: int | None = None
    candidates: Sequence[str] = CANDIDATES

    def report(self) -> RunReport:
        trials = [
            StoredTrial(id=i + 1, kept=i == self.kept, record=record)
            for i, record in enumerate(self.records)
        ]
        recommendation = None
        if self.kept is not None:
            winner = self.records[self.kept]
            assert winner.max_batch is not None and winner.max_context is not None
            assert winner.agg_throughput_tps is not None and winner.ttft_p95_ms is not None
            cell = Cell(winner.kv_bits, winner.max_batch, winner.max_context)
            rec = Recommendation(
                winner.model,
                TARGET,
                cell,
                winner.agg_throughput_tps,
                winner.ttft_p95_ms,
                3,
                partial=False,
            )
            recommendation = json.dumps(rec.as_json())
        ended = None if self.reason is None else T0 + timedelta(minutes=12, seconds=7)
        run = StoredRun(
            run_start(self.candidates),
            ended_at=ended,
            exit_reason=self.reason,
            recommendation_json=recommendation,
            recipe_hash="sha256:" + "ab" * 32 if recommendation else None,
            applied=False,
        )
        return build_report(run, trials, SIZES, Path("/tmp/autotune.sqlite"))


def stage1_choosing_mid() -> list[TrialRecord]:
    return [
        stage1(BIG, False, "provider exited during load: [METAL] out of memory"),
        stage1(MID, True),
    ]


def ok_run() -> RunSpec:
    """Six Stage 2 cells: one infeasible, one without figures, the winner kv8 b2."""
    cells = [
        stage2(None, 1, 30.2, 1850.0),
        stage2(None, 2, 51.0, 2600.0),
        stage2(4, 1, 31.0, 1790.0),
        stage2(4, 2, 49.5, 2700.0, fits=False, notes="replicate 2 failed: HTTP 500"),
        stage2(8, 1, 30.9, 1805.0),
        stage2(8, 2, 53.4, 2510.0),
        stage2(8, 2, None, None, fits=False, notes="provider exited during load"),
    ]
    cells[-1] = replace(cells[-1], max_context=4096)
    return RunSpec(ExitReason.OK, stage1_choosing_mid() + cells, kept=7)


def no_feasible_run() -> RunSpec:
    records = [
        stage1(BIG, False, "provider exited during load: out of memory"),
        stage1(MID, False, "TTFT p95 71234 ms over the 60000 ms gate"),
        stage1(SMALL, False, "stop token <|im_end|> leaked into the text"),
    ]
    return RunSpec(ExitReason.NO_FEASIBLE, records)


# --- reading the page back -----------------------------------------------------------------


@dataclass
class TableRow:
    css: str
    cells: list[str]


class Page(HTMLParser):
    """Every start tag with its attributes, and each table's body rows by table id."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[TableRow]] = {}
        self._table: str | None = None
        self._in_body = False
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self.tables[self._table].append(TableRow(attributes.get("class") or "", []))
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].cells.append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def svg_of(page: str) -> ET.Element:
    """The chart, parsed as XML: it must be well-formed on its own."""
    found = re.search(r"<svg\b.*?</svg>", page, re.DOTALL)
    assert found is not None, "no chart"
    return ET.fromstring(found.group(0))


def markers(svg: ET.Element, css: str) -> list[ET.Element]:
    return [element for element in svg.iter() if element.get("class") == f"pt {css}"]


def assert_self_contained(page: str) -> None:
    parsed = Page(page)
    for tag, attributes in parsed.tags:
        assert tag not in ("link", "script", "img", "iframe", "object", "embed"), tag
        assert "src" not in attributes and "href" not in attributes, (tag, attributes)
    assert "@import" not in page and "url(" not in page


# --- the page --------------------------------------------------------------------------------


def test_ok_run_has_both_tables_with_one_row_per_trial() -> None:
    page = render_html(ok_run().report())
    tables = Page(page).tables

    stage1_rows = tables["stage1"]
    assert [row.cells[:3] for row in stage1_rows] == [["1", BIG, "no"], ["2", MID, "yes"]]
    assert stage1_rows[0].cells[3] == "provider exited during load: [METAL] out of memory"
    assert stage1_rows[1].cells[4:] == ["1,830", "31.5"]

    stage2_rows = tables["stage2"]
    assert [row.cells[:3] for row in stage2_rows] == [
        ["unset", "1", "2000"],
        ["unset", "2", "2000"],
        ["4", "1", "2000"],
        ["4", "2", "2000"],
        ["8", "1", "2000"],
        ["8", "2", "2000"],
        ["8", "2", "4096"],
    ]
    winners = [row for row in stage2_rows if row.css == "winner"]
    assert len(winners) == 1 and winners[0].cells[:5] == ["8", "2", "2000", "53.4", "2,510"]
    assert winners[0].cells[8] == "winner"
    # A cell that failed before any figure shows dashes, not zeros.
    assert stage2_rows[-1].cells[3:5] == ["—", "—"]
    assert stage2_rows[3].cells[6:8] == ["1", "no"]


def test_ok_run_chart_has_one_point_per_feasible_cell_and_one_winner() -> None:
    svg = svg_of(render_html(ok_run().report()))
    # Five feasible cells with figures: four plain points plus the winner's star.
    assert len(markers(svg, "feasible")) == 4
    assert len(markers(svg, "winner")) == 1
    assert markers(svg, "winner")[0].tag == f"{SVG_NS}polygon"
    # The infeasible cell with figures is hollow; the one without figures is not drawn.
    assert len(markers(svg, "infeasible")) == 1
    # Each drawn cell is labelled; the max-context all of them share is named once, below.
    labels = {e.text for e in svg.iter(f"{SVG_NS}text") if "label" in (e.get("class") or "")}
    assert labels == {"kv unset b1", "kv unset b2", "kv4 b1", "kv4 b2", "kv8 b1", "kv8 b2"}
    (winner_label,) = [e for e in svg.iter() if e.get("class") == "label winner"]
    assert winner_label.text == "kv8 b2"
    texts = [element.text or "" for element in svg.iter(f"{SVG_NS}text")]
    assert "TTFT p95 (ms) — lower is better" in texts
    legend = [e for e in svg.iter() if (e.get("class") or "").startswith("legend-mark")]
    assert len(legend) == 3


def test_ok_run_chart_caption_names_the_shared_knob() -> None:
    page = render_html(ok_run().report())
    assert '<p class="caption">Every plotted cell has max-context 2000.</p>' in page


def test_labels_keep_the_knobs_that_differ() -> None:
    cells = [stage2(8, 1, 30.0, 1800.0), replace(stage2(8, 1, 28.0, 2400.0), max_context=4096)]
    page = render_html(RunSpec(ExitReason.OK, [*stage1_choosing_mid(), *cells], kept=2).report())
    labels = {e.text for e in svg_of(page).iter(f"{SVG_NS}text") if e.get("class") == "label"}
    assert labels == {"c4096"}
    assert "Every plotted cell has kv-bits 8 and max-batch 1." in page


def test_crowded_labels_never_overlap_and_stay_inside() -> None:
    """Nine cells within a few pixels of each other: some labels go further out on a leader
    line, the rest are left out, none is printed over another."""
    figures = [30.2, 1850, 30.9, 1860, 31.1, 1870, 30.5, 1845, 31.0, 1855, 29.8, 1880]
    figures += [30.7, 1850, 31.3, 1849, 30.1, 1858]
    kv: list[KvBits | None] = [None, 4, 8]
    cells = [stage2(kv[i // 3], 2 ** (i % 3), figures[2 * i], figures[2 * i + 1]) for i in range(9)]
    cells.append(stage2(8, 8, 46.0, 4100.0))
    spec = RunSpec(ExitReason.OK, [*stage1_choosing_mid(), *cells], kept=11)
    svg = svg_of(render_html(spec.report()))
    boxes = [
        report_chart._label_box(
            float(e.get("x") or 0), float(e.get("y") or 0), e.get("text-anchor") or "", e.text or ""
        )
        for e in svg.iter(f"{SVG_NS}text")
        if "label" in (e.get("class") or "")
    ]
    assert 6 <= len(boxes) <= 10
    for i, a in enumerate(boxes):
        assert a[0] >= report_chart.LEFT and a[2] <= report_chart.WIDTH - report_chart.RIGHT
        assert all(not report_chart._overlaps(a, b) for b in boxes[i + 1 :])
    leaders = [e for e in svg.iter(f"{SVG_NS}line") if e.get("class") == "leader"]
    assert leaders


def test_ok_run_header_inputs_and_recommendation() -> None:
    page = render_html(ok_run().report())
    assert "run-0001" in page
    assert '<span class="badge ok">ok</span>' in page
    assert "PARTIAL" not in page
    assert "2025-03-01 09:00:00 UTC" in page and "2025-03-01 09:12:07 UTC" in page
    assert "12 min 07 s" in page
    assert "Apple M2 Pro" in page and "macOS 14.5" in page and "24 GB" in page
    assert "sha256:" + "ab" * 32 in page and "/tmp/autotune.sqlite" in page
    candidates = re.search(r'<ol class="candidates">(.*?)</ol>', page)
    assert candidates is not None
    assert re.findall(r"<li>(.*?)</li>", candidates.group(1)) == list(CANDIDATES)
    serve = re.search(r"<pre><code>(.*?)</code></pre>", page)
    assert serve is not None
    assert serve.group(1) == (
        f"macprovider-supervise serve --model {MID} --kv-bits 8 --max-batch 2 --max-context 2000"
    )
    assert f"<dd>{SMALL}</dd>" in page  # the alternate, name only
    assert_self_contained(page)


def test_unquantized_winner_reads_unset() -> None:
    spec = RunSpec(ExitReason.OK, [*stage1_choosing_mid(), stage2(None, 1, 30.0, 1800.0)], kept=2)
    page = render_html(spec.report())
    assert "<dt>--kv-bits</dt><dd>unset</dd>" in page
    assert "--kv-bits" not in re.findall(r"<code>(.*?)</code>", page)[-1]


def test_partial_recommendation_is_marked() -> None:
    spec = ok_run()
    spec.reason = ExitReason.BUDGET_EXHAUSTED_WITH_PARTIAL_RECOMMENDATION
    page = render_html(spec.report())
    assert '<span class="badge partial">PARTIAL</span>' in page
    assert "budget_exhausted_with_partial_recommendation" in page


def test_no_feasible_lists_the_infeasible_smallest_first() -> None:
    page = render_html(no_feasible_run().report())
    assert "No recommendation" in page and '<span class="badge bad">no_feasible</span>' in page
    rows = Page(page).tables["infeasible"]
    assert [row.cells[:2] for row in rows] == [[SMALL, "3"], [MID, "2"], [BIG, "1"]]
    assert rows[0].cells[2] == "stop token <|im_end|> leaked into the text"
    assert [row.cells[1] for row in Page(page).tables["stage1"]] == list(CANDIDATES)
    assert "--target-context" in page
    assert "stage2" not in Page(page).tables and "<svg" not in page
    assert "No Stage 2 cell was measured" in page
    assert_self_contained(page)


def test_integrity_failure_shows_the_problem() -> None:
    note = "pre-warm integrity failure: config.json missing"
    page = render_html(
        RunSpec(
            ExitReason.PRE_WARM_INTEGRITY_FAILURE,
            [stage1(BIG, False, note, TrialOutcome.INTEGRITY_FAILURE)],
        ).report()
    )
    assert f'<p class="problem">{note}</p>' in page
    assert "infeasible" not in Page(page).tables  # an aborted run is no "does not fit" verdict


def test_markup_in_db_text_is_escaped() -> None:
    evil_model = 'evil/<img src="http://example.invalid/x.png">'
    evil_note = "<script>alert('x')</script> & more"
    records = [
        stage1(evil_model, True, evil_note),
        stage2(8, 1, 20.0, 900.0, notes=evil_note, model=evil_model),
        stage2(4, 1, 19.0, 950.0, notes=evil_note, model=evil_model),
    ]
    spec = RunSpec(ExitReason.OK, records, kept=1, candidates=(evil_model,))
    page = render_html(spec.report())
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert_self_contained(page)
    parsed = Page(page)
    # Escaped text reads back as the original.
    assert parsed.tables["stage1"][0].cells[1:4] == [evil_model, "yes", evil_note]
    assert parsed.tables["stage2"][0].cells[-1] == evil_note
    svg = svg_of(page)  # the tooltips hold the notes: still well-formed XML
    titles = [element.text for element in svg.iter(f"{SVG_NS}title")]
    assert f"kv4 b1 c2000: 19.0 tok/s, 950 ms ({evil_note})" in titles


def test_one_cell_is_drawn_in_the_middle() -> None:
    spec = RunSpec(ExitReason.OK, [*stage1_choosing_mid(), stage2(8, 1, 30.0, 1800.0)], kept=2)
    page = render_html(spec.report())
    assert len(Page(page).tables["stage2"]) == 1
    svg = svg_of(page)
    (star,) = markers(svg, "winner")
    assert markers(svg, "feasible") == []
    corners = [tuple(map(float, xy.split(","))) for xy in (star.get("points") or "").split()]
    cx = sum(x for x, _ in corners) / len(corners)
    cy = sum(y for _, y in corners) / len(corners)
    left, right = report_chart.LEFT, report_chart.WIDTH - report_chart.RIGHT
    top, bottom = report_chart.TOP, report_chart.HEIGHT - report_chart.BOTTOM
    assert cx == pytest.approx((left + right) / 2, abs=0.5)
    assert cy == pytest.approx((top + bottom) / 2, abs=0.5)
    # Ticks still appear around the single value.
    assert len([t for t in svg.iter(f"{SVG_NS}line") if t.get("class") == "grid"]) >= 4


def test_zero_stage2_cells_and_an_unclosed_run() -> None:
    records = [
        stage1(BIG, False, "out of budget: --max-duration used up", TrialOutcome.OUT_OF_BUDGET)
    ]
    page = render_html(RunSpec(None, records).report())
    assert "unfinished (the run was killed)" in page
    assert "never (the run did not close)" in page
    assert "No Stage 2 cell was measured" in page and "<svg" not in page
    assert len(Page(page).tables["stage1"]) == 1
    assert_self_contained(page)


def test_stage2_cells_without_figures_draw_no_chart() -> None:
    records = [*stage1_choosing_mid(), stage2(None, 1, None, None, fits=False, notes="boom")]
    page = render_html(RunSpec(ExitReason.OK, records).report())
    assert len(Page(page).tables["stage2"]) == 1
    assert "<svg" not in page and "No Stage 2 cell has figures to plot" in page


def test_equal_figures_do_not_divide_by_zero() -> None:
    cells = [stage2(None, 1, 30.0, 1800.0), stage2(4, 1, 30.0, 1800.0)]
    page = render_html(RunSpec(ExitReason.OK, [*stage1_choosing_mid(), *cells], kept=2).report())
    svg = svg_of(page)
    assert len(markers(svg, "feasible")) == 1 and len(markers(svg, "winner")) == 1


# --- the chart's helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0.0, 97.0, [0.0, 20.0, 40.0, 60.0, 80.0]),
        (1700.0, 2800.0, [1800.0, 2000.0, 2200.0, 2400.0, 2600.0, 2800.0]),
        (27.0, 33.0, [27.0, 28.0, 29.0, 30.0, 31.0, 32.0, 33.0]),
    ],
)
def test_ticks_are_nice_numbers_within_the_range(
    lo: float, hi: float, expected: list[float]
) -> None:
    assert report_chart.ticks(lo, hi) == pytest.approx(expected)


def test_tick_text_shows_the_decimals_the_step_needs() -> None:
    assert report_chart.tick_text(2000.0, 200.0) == "2,000"
    assert report_chart.tick_text(0.30000000000000004, 0.1) == "0.3"


# --- writing ---------------------------------------------------------------------------------


def test_write_html_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    write_html(ok_run().report(), target)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [path.name for path in tmp_path.iterdir()] == ["report.html"]


def test_write_html_into_a_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    target = tmp_path / "nowhere" / "report.html"
    with pytest.raises(ReportHtmlError, match=r"directory .*nowhere does not exist") as caught:
        write_html(ok_run().report(), target)
    assert "\n" not in str(caught.value)
    assert not target.parent.exists()


def test_write_html_onto_a_directory_fails_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    with pytest.raises(ReportHtmlError, match="cannot write"):
        write_html(ok_run().report(), target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]
