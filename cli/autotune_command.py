"""The `autotune` and `report` commands' flow: parse, run (or read the DB), then print.

stdout carries the result only (the RECOMMENDATION block, or just the JSON document with
`--json`); progress, warnings and the time split go to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.store import Store
from macprovider.actors.tuner import TuneListener
from macprovider.cli.apply import (
    applied_line,
    apply_to_config,
    config_path,
    owned_values,
    restart_hint,
)
from macprovider.cli.autotune import AutotuneRun, default_db_path, settings_from_options, tune
from macprovider.cli.autotune_render import (
    render_comparison,
    render_plan,
    render_report,
    render_timings,
)
from macprovider.cli.exits import AUTOTUNE_EXIT_CODES, EX_SOFTWARE
from macprovider.cli.progress import LiveProgress, PlainProgress
from macprovider.cli.run import default_state_dir
from macprovider.cli.run_report import (
    RunReport,
    candidate_sizes_b,
    load_report,
    previous_comparable,
)

PROG = "macprovider-supervise"


@dataclass(frozen=True)
class Output:
    """How the result is printed."""

    json: bool
    compare: bool
    verbose: bool


@dataclass(frozen=True)
class ApplyTo:
    """`--apply`: write the recommendation into this config (`--config`, else serve's)."""

    config: str | None


def autotune_command(
    options: Mapping[str, Any],
    *,
    db_path: Path | None,
    retain_runs: int,
    state_dir: Path | None,
    dry_run: bool,
    report_only: bool,
    output: Output,
    apply_to: ApplyTo | None,
) -> int:
    settings, warnings = settings_from_options(options)
    for warning in warnings:
        click.echo(f"{PROG}: warning: {warning}", err=True)
    db = db_path or default_db_path(os.environ)
    if dry_run:
        click.echo(render_plan(settings, candidate_sizes_b(settings.candidates)))
        return 0
    if report_only:
        report = load_report(db)
        emit(report, output)
        if apply_to is not None:  # apply what an earlier run found, without tuning again
            apply_recommendation(report, apply_to, output)
        return 0
    job = AutotuneRun(settings, db, retain_runs, state_dir or default_state_dir(os.environ))
    started = time.monotonic()
    with _progress(settings.max_duration_s, output) as listener:
        outcome, summary, run = tune(job, listener)
    wall_s = time.monotonic() - started
    if summary is None:
        click.echo(f"{PROG}: error: {outcome.failure or outcome.reason}", err=True)
        return AUTOTUNE_EXIT_CODES.get(ExitReason(outcome.reason), EX_SOFTWARE)
    if summary.detail and summary.exit_reason is not ExitReason.OK:
        click.echo(f"{PROG}: {summary.exit_reason.value}: {summary.detail}", err=True)
    report = load_report(db, run.run_id)
    emit(report, output)
    click.echo(render_timings(summary.timings, wall_s), err=True)
    if apply_to is not None:
        apply_recommendation(report, apply_to, output)
    return AUTOTUNE_EXIT_CODES[summary.exit_reason]


def apply_recommendation(report: RunReport, apply_to: ApplyTo, output: Output) -> None:
    """Writes a complete recommendation to the config; a partial one is refused (it is the best
    of an unfinished search, not what autotune would recommend), and so is none."""
    recommendation = report.recommendation
    if recommendation is None or recommendation.partial:
        what = "no recommendation" if recommendation is None else "a PARTIAL recommendation"
        click.echo(f"{PROG}: not applied: the run ended with {what}", err=True)
        return
    values = owned_values(recommendation.model, recommendation.knobs())
    applied = apply_to_config(config_path(apply_to.config, os.environ), values)
    if applied.changed:
        store = Store(report.db_path)
        try:
            store.mark_applied(report.run.start.run_id)
        finally:
            store.close()
    # With --json, stdout holds the document alone.
    click.echo(applied_line(applied), err=output.json)
    if applied.changed:
        click.echo(f"{PROG}: hint: {restart_hint()}", err=True)


def emit(report: RunReport, output: Output) -> None:
    """Prints a run's result on stdout, and the comparison with the last like run."""
    if output.json:
        from macprovider.cli.autotune_json import dumps_document, run_document

        click.echo(dumps_document(run_document(report)), nl=False)
        return
    click.echo(render_report(report))
    if output.compare:
        click.echo(render_comparison(report, previous_comparable(report.db_path, report)))


@contextlib.contextmanager
def _progress(max_duration_s: float, output: Output) -> Iterator[TuneListener]:
    if output.json or not sys.stderr.isatty():
        yield PlainProgress(output.verbose)
        return
    # The live line owns the terminal: routine log lines would tear it; warnings still show.
    logging.getLogger("macprovider").setLevel(logging.WARNING)
    with LiveProgress(Console(stderr=True), max_duration_s, output.verbose) as live:
        yield live
