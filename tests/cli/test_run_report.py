"""The run report every output renders, built from stored rows (no processes)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.recommendation import Infeasible, Recommendation
from macprovider.actors.store import Store
from macprovider.actors.store_records import RunStart, StoredRun, StoredTrial, TrialRecord
from macprovider.actors.trial_outcome import TrialOutcome
from macprovider.actors.tuning import Cell
from macprovider.cli.apply import config_path
from macprovider.cli.autotune import default_db_path
from macprovider.cli.autotune_render import render_comparison, render_report
from macprovider.cli.errors import ReportError
from macprovider.cli.exits import EX_NOINPUT
from macprovider.cli.run_report import (
    CandidateSizes,
    build_report,
    load_report,
    previous_comparable,
)
from tests.conftest import clean_env, supervise_argv

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
BIG, MID, SMALL, TINY = "org/big", "org/mid", "org/small", "org/tiny"
SIZES = CandidateSizes({BIG: 30.0, MID: 7.0, SMALL: 3.0, TINY: 1.0}, {})
REC = Recommendation(MID, 2000, Cell(None, 2, 2048), 21.5, 850.0, 3, partial=False)


def start(run_id: str = "r1", *, minutes: int = 0, target: int = 2000) -> RunStart:
    return RunStart(
        run_id=run_id,
        started_at=T0 + timedelta(minutes=minutes),
        spec_version="0.3",
        binary_version="0.1.0",
        machine_ram_gb=24.0,
        machine_chip="test chip",
        machine_os_version="test os",
        target_context=target,
        candidate_models=(BIG, MID, SMALL, TINY),
        stage1_replicates=1,
        stage2_replicates=3,
        gate_ttft_ms=60000.0,
        tps_tie_epsilon=0.02,
    )


def stored(
    reason: ExitReason | None, recommendation: Recommendation | None = None, **kw: object
) -> StoredRun:
    document = None if recommendation is None else json.dumps(recommendation.as_json())
    ended = None if reason is None else T0 + timedelta(minutes=5)
    return StoredRun(start(**kw), ended, reason, document, None, False)  # type: ignore[arg-type]


def stage1(trial_id: int, model: str, outcome: TrialOutcome, notes: str | None) -> StoredTrial:
    record = TrialRecord("r1", 1, T0, model, 2000, 48, outcome, notes=notes)
    return StoredTrial(trial_id, False, record)


FITS, LOAD_FAILED = TrialOutcome.FITS, TrialOutcome.LOAD_FAILED


def test_an_ok_run_recommends_with_the_smaller_unprobed_alternates() -> None:
    trials = [stage1(1, BIG, LOAD_FAILED, "provider exited during load: out of memory"),
              stage1(2, MID, FITS, "load 1.20 s")]  # fmt: skip
    report = build_report(stored(ExitReason.OK, REC), trials, SIZES, Path("db"))
    assert report.recommendation == REC
    assert report.alternates == (SMALL, TINY)
    assert report.infeasible == (Infeasible(BIG, 1, "provider exited during load: out of memory"),)
    block = render_report(report)
    assert block.startswith("RECOMMENDATION\n")
    assert "--kv-bits:       unset" in block and "--kv-bits" not in REC.serve_command()


def test_a_recommendation_of_a_run_that_did_not_end_ok_is_partial() -> None:
    reason = ExitReason.BUDGET_EXHAUSTED_WITH_PARTIAL_RECOMMENDATION
    report = build_report(stored(reason, REC), [], SIZES, Path("db"))
    assert report.recommendation is not None and report.recommendation.partial
    assert render_report(report).startswith(f"RECOMMENDATION (PARTIAL: {reason.value};")


def test_infeasible_verdicts_only_smallest_first() -> None:
    trials = [
        stage1(1, BIG, TrialOutcome.OVER_TTFT_GATE, "TTFT p95 90000 ms exceeds the gate 60000 ms"),
        stage1(2, MID, TrialOutcome.INTERRUPTED, "interrupted"),  # cut short: no verdict
        stage1(3, SMALL, TrialOutcome.OUT_OF_BUDGET, "out of budget"),
        stage1(4, TINY, TrialOutcome.MEASURE_FAILED, "HTTP 500: boom"),
        stage1(5, "org/unknown-size", TrialOutcome.MEASURE_FAILED, "HTTP 500: boom"),
        # Killed from outside: nothing is known about whether it fits.
        stage1(
            6,
            "org/killed",
            TrialOutcome.PROVIDER_KILLED,
            "provider exited during load (killed by SIGKILL): no output",
        ),
        stage1(7, "org/crashed", TrialOutcome.INTERNAL_ERROR, "Traceback (most recent call"),
    ]
    run = replace(stored(ExitReason.NO_FEASIBLE), start=replace(start(), candidate_models=(
        BIG, MID, SMALL, TINY, "org/unknown-size", "org/killed", "org/crashed")))  # fmt: skip
    report = build_report(run, trials, SIZES, Path("db"))
    assert [(row.model, row.rank) for row in report.infeasible] == [
        (TINY, 4),
        (BIG, 1),
        ("org/unknown-size", 5),
    ]
    block = render_report(report)
    assert block.splitlines()[0] == "NO RECOMMENDATION (no_feasible)"
    assert "try a smaller --target-context" in block


def test_an_integrity_abort_shows_its_problem_and_lists_no_verdict() -> None:
    notes = "pre-warm integrity failure: org/big: tokenizer.json: missing"
    run = stored(ExitReason.PRE_WARM_INTEGRITY_FAILURE)
    trials = [stage1(1, BIG, TrialOutcome.INTEGRITY_FAILURE, notes)]
    report = build_report(run, trials, SIZES, Path("db"))
    assert report.infeasible == ()
    assert report.problem() == notes and notes in render_report(report)


def test_a_run_that_never_closed_says_so() -> None:
    report = build_report(stored(None), [], SIZES, Path("db"))
    assert report.exit_reason is None
    assert "unfinished" in render_report(report).splitlines()[0]


def _store_runs(path: Path, runs: list[tuple[RunStart, Recommendation | None]]) -> None:
    store = Store(path)
    try:
        for run, recommendation in runs:
            store.begin_run(run)
            document = None if recommendation is None else json.dumps(recommendation.as_json())
            store.finish_run(
                run.run_id, ExitReason.OK, ended_at=run.started_at, recommendation_json=document
            )
    finally:
        store.close()


def test_load_report_reads_the_latest_or_the_named_run(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    with pytest.raises(ReportError, match="no autotune database"):
        load_report(db)
    _store_runs(db, [(start("old"), REC), (start("new", minutes=1), None)])
    assert load_report(db).run.start.run_id == "new"
    assert load_report(db, "old").recommendation == REC
    with pytest.raises(ReportError, match="has no run 'nope'"):
        load_report(db, "nope")


def test_compare_finds_the_last_like_run_and_says_what_changed(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    older = replace(REC, cell=Cell(8, 1, 2048), tps_median=20.0)
    other_target = replace(REC, tps_median=99.0)
    _store_runs(db, [
        (start("a", minutes=0), older),
        (start("b", minutes=1, target=4000), other_target),  # other inputs: not comparable
        (start("c", minutes=2), REC),
    ])  # fmt: skip
    current = load_report(db, "c")
    previous = previous_comparable(db, current)
    assert previous is not None and previous.run.start.run_id == "a"
    text = render_comparison(current, previous)
    assert "COMPARED WITH run a" in text
    assert "--kv-bits:       unset (was 8)" in text
    assert "--max-batch:     2 (was 1)" in text
    assert "--max-context:   2048 (unchanged)" in text
    assert "21.5 tok/s (was 20.0: +7.5%)" in text
    assert previous_comparable(db, load_report(db, "a")) is None
    assert "no earlier run" in render_comparison(current, None)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_CONFIG_HOME": "/xdg", "HOME": "/home/op"}, "/xdg/macprovider/autotune.sqlite"),
        (
            {"XDG_CONFIG_HOME": "rel", "HOME": "/home/op"},
            "/home/op/.config/macprovider/autotune.sqlite",
        ),
        ({"HOME": "/home/op"}, "/home/op/.config/macprovider/autotune.sqlite"),
    ],
)
def test_the_database_sits_beside_the_config_serve_reads(
    env: dict[str, str], expected: str
) -> None:
    assert default_db_path(env) == Path(expected)
    assert config_path(None, env).parent == Path(expected).parent


def report_command(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = supervise_argv("report", "--db-path", str(db), *args)
    return subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=60)


def test_report_leaves_the_database_bytes_and_mtime_as_they_were(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    _store_runs(db, [(start("old"), REC), (start("new", minutes=1), REC)])
    before = db.read_bytes(), os.stat(db).st_mtime_ns
    for args in [(), ("--json",), ("--compare",), ("--run", "old")]:
        shown = report_command(db, *args)
        assert shown.returncode == 0, shown.stderr
    assert (db.read_bytes(), os.stat(db).st_mtime_ns) == before


def test_report_on_an_older_layout_says_so_in_one_line_and_exits_66(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    _store_runs(db, [(start("old"), REC)])
    with closing(sqlite3.connect(db)) as conn:  # as a database from before the outcome column
        conn.execute("ALTER TABLE tune_trials DROP COLUMN outcome")
    before = db.read_bytes(), os.stat(db).st_mtime_ns
    shown = report_command(db)
    assert shown.returncode == EX_NOINPUT == 66
    assert shown.stdout == "" and len(shown.stderr.strip().splitlines()) == 1
    assert "older macprovider" in shown.stderr and "tune_trials.outcome" in shown.stderr
    assert (db.read_bytes(), os.stat(db).st_mtime_ns) == before
