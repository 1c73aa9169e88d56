"""`macprovider-supervise`: the command-line front."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import psutil

from macprovider.cli.exits import EX_USAGE, exit_code_for, run_exit_code
from macprovider.server.config import SERVE_OPTIONS, resolve_serve_config
from macprovider.server.errors import ServeError
from macprovider.server.models import resolve_model_path
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
    Exit codes: 64 bad knob, 65 model unloadable, 66 model not found, 69 port taken.
    """
    config = resolve_serve_config(knobs, os.environ, ram_bytes=psutil.virtual_memory().total)
    assert config.model is not None  # require_model=True guarantees it
    parent = parent_fd(os.environ)
    model_path = resolve_model_path(config.model)
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

    The provider is resolved like `serve` and started with --no-join. A crash
    restarts it after 1 s, doubling to 60 s (reset after 10 min healthy); 5 crashes
    within 5 minutes is a crash loop: exit 75. It is health-checked every 10 s.
    SIGTERM/SIGINT stop it gracefully and exit 0 (a second one: at once, 130);
    SIGHUP re-reads the config and restarts it if its model, port or knobs changed.
    """
    from macprovider.cli.run import default_state_dir, run_provider

    outcome = run_provider(knobs, state_dir or default_state_dir(os.environ))
    if outcome.failure:
        click.echo(f"{PROG}: error: {outcome.failure}", err=True)
    return run_exit_code(outcome.reason)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {PROG}: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
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
        return 130
    except click.ClickException as error:
        error.show()
        return EX_USAGE
    except ServeError as error:
        click.echo(f"{PROG}: error: {error}", err=True)
        return exit_code_for(error)
    return result if isinstance(result, int) else 0
