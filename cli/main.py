"""`macprovider-supervise`: the command-line front."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import psutil

from macprovider.actors.autotune_inputs import (
    DEFAULT_DRAIN_GRACE_S,
    DEFAULT_GATE_TTFT_MS,
    DEFAULT_KV_BITS_AXIS,
    DEFAULT_MAX_BATCH_AXIS,
    DEFAULT_MAX_DURATION_S,
    DEFAULT_PORT,
    DEFAULT_PROBE_MAX_TOKENS,
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_RETAIN_RUNS,
    DEFAULT_STAGE1_REPLICATES,
    DEFAULT_STAGE2_REPLICATES,
    DEFAULT_TARGET_CONTEXT,
    DEFAULT_TPS_TIE_EPSILON,
)
from macprovider.actors.stop_signals import EXIT_INTERRUPTED, Interrupted
from macprovider.cli.exits import EX_USAGE, USER_ERRORS, exit_code_for, run_exit_code
from macprovider.cli.models import models
from macprovider.cli.service import service
from macprovider.server.config import SERVE_OPTIONS, resolve_model, resolve_serve_config
from macprovider.server.parent_guard import parent_fd

PROG = "macprovider-supervise"
log = logging.getLogger("macprovider")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="macprovider", prog_name=PROG)
def cli() -> None:
    """Serve, autotune and supervise an MLX model for an LLM-inference pool."""


def knob_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One option per knob of the shared resolver, values kept as text so every source
    (flag, environment, YAML) is validated by the same code with the same messages."""
    for option in reversed(SERVE_OPTIONS):
        help_text = f"{option.help} [env {option.env}; default: {option.default_help}]"
        metavar = option.name.upper()
        fn = click.option(
            option.flag, option.name, type=str, default=None, metavar=metavar, help=help_text
        )(fn)
    return fn


@cli.command()
@knob_options
@click.option(
    "--no-join",
    is_flag=True,
    help="Open no outbound connection at all (no coordinator pool); serve locally only.",
)
def serve(no_join: bool, **knobs: str | None) -> int:
    """Serve one MLX model through an OpenAI-compatible API.

    Each knob resolves flag > environment > YAML config > default. Endpoints:
    /v1/models (200 once loaded), /v1/chat/completions, /v1/completions,
    /health, /metrics. SIGINT/SIGTERM drain in-flight requests and exit 0.
    Exit codes: 64 bad knob, 65 model unloadable or over the memory limit, 66 model not
    found, 69 port taken.
    """
    ram_bytes = psutil.virtual_memory().total
    config = resolve_serve_config(knobs, os.environ, ram_bytes=ram_bytes)
    parent = parent_fd(os.environ)
    config, model_path = resolve_model(config, ram_bytes=ram_bytes)
    if config.coordinator_endpoint and not no_join:
        log.warning(
            "joining the pool at %s is not implemented yet; serving locally only",
            config.coordinator_endpoint,
        )
    from macprovider.server.main import run  # MLX loads only once the knobs are known good

    return run(config, model_path, parent=parent)


@cli.command()
@knob_options
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where provider logs go. [default: $XDG_STATE_HOME/macprovider, "
    "else ~/.local/state/macprovider]",
)
def run(state_dir: Path | None, **knobs: str | None) -> int:
    """Keep the configured provider alive (what launchd/systemd run).

    Every option is resolved like `serve`'s and handed to the provider, started
    with --no-join: as a flag, except the API key, which goes in its environment
    (MACPROVIDER_API_KEY; a command line is visible to every user through ps). A
    crash restarts it after 1 s, doubling to 60 s (reset after 10 min healthy); 5
    crashes within 5 minutes is a crash loop: exit 75. It is health-checked every
    10 s. SIGTERM/SIGINT stop it gracefully and exit 0 (a second one: at once, 130);
    SIGHUP re-reads the config and restarts it if its model, port, knobs or key
    changed.
    """
    from macprovider.cli.run import default_state_dir, run_provider

    outcome = run_provider(knobs, state_dir or default_state_dir(os.environ))
    if outcome.failure:
        click.echo(f"{PROG}: error: {outcome.failure}", err=True)
    return run_exit_code(outcome.reason)


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf (click's lets nan through every bound)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


POSITIVE = FiniteFloatRange(min=0, min_open=True)


@cli.command()
@click.option(
    "--candidate-models",
    metavar="CSV",
    help="Models to try, in this order (HF repo ids or local folders). The order is the "
    "contract: never re-ranked. [default: the built-in list, largest first]",
)
@click.option(
    "--target-context",
    type=click.IntRange(min=1),
    default=DEFAULT_TARGET_CONTEXT,
    show_default=True,
    help="Prompt tokens every probe request carries: the context the machine must serve.",
)
@click.option(
    "--max-model-size",
    type=POSITIVE,
    metavar="BILLIONS",
    help="Drop default candidates above this many billion parameters (not an explicit list).",
)
@click.option(
    "--min-model-size",
    type=POSITIVE,
    metavar="BILLIONS",
    help="Drop default candidates below this many billion parameters (not an explicit list).",
)
@click.option(
    "--kv-bits-axis",
    metavar="CSV",
    default=DEFAULT_KV_BITS_AXIS,
    show_default=True,
    help="Stage 2 KV-cache bits: 4, 8 or unset (unquantized).",
)
@click.option(
    "--max-batch-axis",
    metavar="CSV",
    default=DEFAULT_MAX_BATCH_AXIS,
    show_default=True,
    help="Stage 2 batch sizes; a cell at b fires b concurrent streams.",
)
@click.option(
    "--max-context-axis",
    metavar="CSV",
    help="Stage 2 context caps, each at least --target-context (a cap holds prompt and "
    "answer). [default: --target-context + --probe-max-tokens]",
)
@click.option(
    "--stage1-replicates",
    type=click.IntRange(min=1),
    default=DEFAULT_STAGE1_REPLICATES,
    show_default=True,
    help="Requests per Stage 1 candidate.",
)
@click.option(
    "--stage2-replicates",
    type=click.IntRange(min=1),
    default=DEFAULT_STAGE2_REPLICATES,
    show_default=True,
    help="Replicates per Stage 2 cell (the median counts).",
)
@click.option(
    "--gate-ttft-ms",
    type=POSITIVE,
    default=DEFAULT_GATE_TTFT_MS,
    show_default=True,
    help="Stage 1: a candidate whose TTFT p95 exceeds this does not fit.",
)
@click.option(
    "--tps-tie-epsilon",
    type=FiniteFloatRange(min=0),
    default=DEFAULT_TPS_TIE_EPSILON,
    show_default=True,
    help="Stage 2: throughputs within this fraction tie, and the lower TTFT wins.",
)
@click.option(
    "--max-duration",
    type=POSITIVE,
    default=DEFAULT_MAX_DURATION_S,
    show_default=True,
    metavar="SECONDS",
    help="Budget for the whole run; out of it, the best so far is reported as partial.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Loopback port of the providers autotune starts.",
)
@click.option(
    "--provider-memory-limit-gb",
    type=POSITIVE,
    help="Cap each provider's memory (serve --memory-limit-gb): what fits a smaller machine?",
)
@click.option(
    "--probe-max-tokens",
    type=click.IntRange(min=1),
    default=DEFAULT_PROBE_MAX_TOKENS,
    show_default=True,
    help="Tokens generated per probe request (temperature 0).",
)
@click.option(
    "--ready-timeout",
    type=POSITIVE,
    default=DEFAULT_READY_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="How long a provider may take to load before the trial fails.",
)
@click.option(
    "--request-timeout",
    type=POSITIVE,
    default=DEFAULT_REQUEST_TIMEOUT_S,
    show_default=True,
    metavar="SECONDS",
    help="Bound on one replicate (all its streams).",
)
@click.option(
    "--db-path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The trials database. [default: $XDG_CONFIG_HOME/macprovider/autotune.sqlite, "
    "else ~/.config/macprovider/autotune.sqlite]",
)
@click.option(
    "--retain-runs",
    type=click.IntRange(min=1),
    default=DEFAULT_RETAIN_RUNS,
    show_default=True,
    help="Runs kept in the database (older ones and their trials are deleted).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where provider logs go. [default: $XDG_STATE_HOME/macprovider]",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and exit 0; start and write nothing.")
@click.option(
    "--report-only",
    is_flag=True,
    help="Start nothing: print the latest run of --db-path again (with --json, as JSON).",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Also print the recommendation beside the last run with the same machine and inputs.",
)
@click.option(
    "--json",
    "json_output",
    is_flag=True,
    help="Print only the result as one JSON document on stdout (progress goes to stderr).",
)
@click.option(
    "--apply",
    "apply_recommendation",
    is_flag=True,
    help="Write the recommendation to the config (model, kv_bits, max_context_override, "
    "max_concurrency_override only; every other line kept; a backup beside it).",
)
@click.option(
    "--config",
    metavar="PATH",
    help="The config --apply writes. [default: the one serve reads: $MACPROVIDER_CONFIG, "
    "else $XDG_CONFIG_HOME/macprovider/config.yaml, else ~/.config/macprovider/config.yaml]",
)
@click.option(
    "--drain",
    is_flag=True,
    help="If a provider is already live (launchd, systemd --user, a foreground serve), stop it "
    "gracefully before tuning and restore it afterwards, whatever the ending. "
    "[default: refuse to start]",
)
@click.option(
    "--drain-grace",
    type=POSITIVE,
    default=DEFAULT_DRAIN_GRACE_S,
    show_default=True,
    metavar="SECONDS",
    help="How long a drained provider may take to free the port (never SIGKILLed).",
)
@click.option(
    "--restart-foreground",
    is_flag=True,
    help="With --drain: start a drained foreground serve again afterwards, from its own "
    "command line, folder and environment.",
)
@click.option("-v", "--verbose", is_flag=True, help="Print each trial's figures as it finishes.")
def autotune(
    db_path: Path | None,
    retain_runs: int,
    state_dir: Path | None,
    dry_run: bool,
    report_only: bool,
    compare: bool,
    json_output: bool,
    verbose: bool,
    apply_recommendation: bool,
    config: str | None,
    restart_foreground: bool,
    **options: Any,
) -> int:
    """Find the biggest model that fits this machine, then its best serving knobs.

    Stage 1 tries the candidates in order and stops at the first that serves
    --target-context tokens within the TTFT gate. Stage 2 measures every cell of
    the three axes for it and keeps the fastest (ties: lower TTFT). Every trial
    is recorded in the database as it finishes. Ctrl-C stops cleanly (exit 130).

    Exit codes: 0 recommendation, 2 nothing fits, 3 out of budget in Stage 1,
    4 out of budget in Stage 2 (partial recommendation), 64 bad flag, 65
    pre-warm integrity failure, 66 no such run (--report-only), 69 a provider is
    already live (see --drain), 70 internal error, 71 a drained provider could
    not be restored, 73 --apply could not write the config, 130 interrupted.
    """
    from macprovider.cli.autotune_command import ApplyTo, Output, autotune_command

    return autotune_command(
        options,
        db_path=db_path,
        retain_runs=retain_runs,
        state_dir=state_dir,
        dry_run=dry_run,
        report_only=report_only,
        output=Output(json_output, compare, verbose),
        apply_to=ApplyTo(config) if apply_recommendation else None,
        restart_foreground=restart_foreground,
    )


@cli.command()
@click.option("--run", "run_id", metavar="ID", help="The run to show. [default: the latest]")
@click.option(
    "--db-path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The trials database. [default: as autotune's]",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the run as one self-contained HTML page (tables and a chart).",
)
@click.option("--json", "json_output", is_flag=True, help="Print the run as JSON instead.")
@click.option("--compare", is_flag=True, help="Also compare with the last like run.")
def report(
    run_id: str | None,
    db_path: Path | None,
    html_path: Path | None,
    json_output: bool,
    compare: bool,
) -> int:
    """Print an autotune run from the database again; nothing is started.

    Exit codes: 0 shown, 66 no database, no such run or an older database (the next autotune
    upgrades it: report never writes), 73 the HTML file cannot be written.
    """
    from macprovider.cli.autotune import default_db_path
    from macprovider.cli.autotune_command import Output, emit
    from macprovider.cli.run_report import load_report

    loaded = load_report(db_path or default_db_path(os.environ), run_id)
    if html_path is not None:
        from macprovider.cli.report_html import write_html

        write_html(loaded, html_path)
        click.echo(f"{PROG}: wrote {html_path}", err=True)
    emit(loaded, Output(json_output, compare, verbose=False))
    return 0


cli.add_command(models)
cli.add_command(service)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {PROG}: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # huggingface_hub's httpx fork
    # pykka logs every exception an actor hands back to its caller, with a traceback, at
    # INFO; those are answers (a damaged model, a database that cannot be written) that the
    # caller reports in one line. An actor that crashes is still logged, at ERROR.
    logging.getLogger("pykka").setLevel(logging.WARNING)
    code = _invoke()
    sys.stdout.flush()
    sys.stderr.flush()
    if "mlx.core" in sys.modules:
        # Everything is released by now. Interpreter teardown can race MLX's C++ worker
        # threads and abort (SIGABRT, seen intermittently), so the process leaves without it.
        os._exit(code)
    sys.exit(code)


def _invoke() -> int:
    """Runs the command line; returns the exit code, with typed errors mapped to theirs."""
    try:
        result = cli.main(prog_name=PROG, standalone_mode=False)
    except click.exceptions.Abort:
        return EXIT_INTERRUPTED
    except click.ClickException as error:
        error.show()
        return EX_USAGE
    except USER_ERRORS as error:
        click.echo(f"{PROG}: error: {error}", err=True)
        return exit_code_for(error)
    except Interrupted as stop:  # a write given up at its commit point: nothing changed
        click.echo(f"{PROG}: interrupted: {stop}", err=True)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else 0
