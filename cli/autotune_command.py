"""The `autotune` and `report` commands' flow: parse, run (or read the DB), then print.

stdout carries the result only (the RECOMMENDATION block, or just the JSON document with
`--json`); progress, warnings and the time split go to stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from macprovider.actors.messages import RestoreReport
from macprovider.actors.stop_signals import Interrupted
from macprovider.actors.store import Store
from macprovider.actors.store_records import PendingApply
from macprovider.actors.trees import AutotuneJob, TuneResult, tune
from macprovider.actors.tune_events import TuneListener
from macprovider.cli.apply import (
    Applied,
    applied_line,
    apply_to_config,
    config_path,
    owned_values,
    restart_hint,
)
from macprovider.cli.autotune import autotune_job, default_db_path, settings_from_options
from macprovider.cli.autotune_render import (
    render_comparison,
    render_plan,
    render_report,
    render_timings,
)
from macprovider.cli.exits import AUTOTUNE_EXIT_CODES, EX_RESTORE_FAILED, autotune_outcome_code
from macprovider.cli.progress import LiveProgress, PlainProgress
from macprovider.cli.run import default_state_dir
from macprovider.cli.run_report import (
    RunReport,
    candidate_sizes,
    load_report,
    previous_comparable,
)
from macprovider.server.places import models_dir

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
    restart_foreground: bool,
) -> int:
    settings, warnings = settings_from_options(options)
    for warning in warnings:
        click.echo(f"{PROG}: warning: {warning}", err=True)
    # Candidates may be models-folder names: a bad folder setting is a config error (64)
    # before anything starts, not a failure inside pre-warm.
    models_dir(os.environ)
    db = db_path or default_db_path(os.environ)
    if dry_run:
        click.echo(render_plan(settings, candidate_sizes(settings.candidates)))
        return 0
    if report_only:
        _report_only(db, output, apply_to)
        return 0
    state = state_dir or default_state_dir(os.environ)
    job = autotune_job(settings, db, retain_runs, state, restart_foreground)
    return _tune_and_print(job, output, apply_to)


def _report_only(db: Path, output: Output, apply_to: ApplyTo | None) -> None:
    report = load_report(db)
    emit(report, output)
    if apply_to is not None:  # apply what an earlier run found, without tuning again
        applied = apply_recommendation(report, apply_to)
        if applied is not None:
            _print_applied(applied, output, restarted=False)


def _tune_and_print(job: AutotuneJob, output: Output, apply_to: ApplyTo | None) -> int:
    applied: list[Applied | None] = []

    def before_restore(run_id: str) -> None:
        if apply_to is not None:
            applied.append(apply_recommendation(load_report(job.db_path, run_id), apply_to))

    started = time.monotonic()
    with _progress(job.settings.max_duration_s, output) as listener:
        result = tune(job, listener=listener, before_restore=before_restore)
    wall_s = time.monotonic() - started
    code = _finish(result, job.db_path, output, wall_s, applied[0] if applied else None)
    error = result.before_restore_error
    if isinstance(error, Interrupted):
        # The run itself ended as recorded; only the write was given up, before it began.
        click.echo(
            f"{PROG}: not applied: {error} (`autotune --report-only --apply` applies it)",
            err=True,
        )
    elif error is not None:
        raise error  # e.g. ApplyError: one line and its exit code
    return code


def _finish(
    result: TuneResult, db: Path, output: Output, wall_s: float, applied: Applied | None
) -> int:
    """Prints how the run ended (result on stdout, the rest on stderr); the exit code."""
    summary = result.summary
    if summary is None:
        outcome = result.outcome
        click.echo(f"{PROG}: error: {outcome.failure or outcome.reason}", err=True)
        code = autotune_outcome_code(outcome.reason)
    else:
        if summary.detail and summary.exit_reason is not ExitReason.OK:
            click.echo(f"{PROG}: {summary.exit_reason.value}: {summary.detail}", err=True)
        report = load_report(db, result.run.run_id)
        emit(report, output)
        click.echo(render_timings(summary.timings, wall_s), err=True)
        code = AUTOTUNE_EXIT_CODES[summary.exit_reason]
    if applied is not None:
        restarted = result.restore is not None and bool(result.restore.restored)
        _print_applied(applied, output, restarted)
    return _restore_outcome(result.restore, code)


def _restore_outcome(restore: RestoreReport | None, code: int) -> int:
    """A drained provider that could not be restored overrides the exit code: the operator
    must act (the manual command is printed)."""
    if restore is None:
        return code
    for line in restore.restored:
        click.echo(f"{PROG}: restored: {line}", err=True)
    for line in restore.not_restarted:
        click.echo(f"{PROG}: not restarted: {line}", err=True)
    for line in restore.failed:
        click.echo(f"{PROG}: error: restore failed: {line}", err=True)
    return EX_RESTORE_FAILED if restore.failed else code


def apply_recommendation(report: RunReport, apply_to: ApplyTo) -> Applied | None:
    """Writes a complete recommendation to the config; a partial one is refused (it is the best
    of an unfinished search, not what autotune would recommend), and so is none."""
    recommendation = report.recommendation
    if recommendation is None or recommendation.partial:
        what = "no recommendation" if recommendation is None else "a PARTIAL recommendation"
        click.echo(f"{PROG}: not applied: the run ended with {what}", err=True)
        return None
    values = owned_values(recommendation.model, recommendation.knobs())
    path = config_path(apply_to.config, os.environ)
    run_id = report.run.start.run_id
    # `--apply` is a writer (it records its intent and that it landed), the only one outside a
    # run's StoreActor: so it opens the writable Store, which migrates like any writer. Reading
    # the report that got us here went through the read-only store.
    store = Store(report.db_path)
    try:

        def record_intent(new: bytes) -> None:
            # Before the write, so a process killed right after it is still read as applied.
            digest = hashlib.sha256(new).hexdigest()
            store.begin_apply(run_id, PendingApply(os.path.realpath(path), digest))

        applied = apply_to_config(path, values, before_write=record_intent)
        if applied.changed:
            store.mark_applied(run_id)
    finally:
        store.close()
    return applied


def _print_applied(applied: Applied, output: Output, restarted: bool) -> None:
    # With --json, stdout holds the document alone.
    click.echo(applied_line(applied), err=output.json)
    if applied.changed and not restarted:  # a restored service already reads the new config
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
