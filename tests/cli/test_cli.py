"""The command line itself: help text and exit-code mapping, through real subprocesses."""

from __future__ import annotations

import subprocess

import pytest

from macprovider.cli.exits import EXIT_CODES, exit_code_for
from macprovider.server.config import SERVE_OPTIONS
from macprovider.server.errors import ConfigError, ModelNotFoundError, PortUnavailable
from tests.conftest import clean_env, supervise_argv


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        supervise_argv(*args), env=clean_env(), capture_output=True, text=True, timeout=60
    )


def test_serve_help_lists_every_knob_with_its_environment_variable() -> None:
    done = run("serve", "--help")
    assert done.returncode == 0
    flat = " ".join(done.stdout.split())
    for option in SERVE_OPTIONS:
        assert option.flag in flat
        assert option.env in flat
    assert "--no-join" in flat


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("x"), 64),
        (ModelNotFoundError("x"), 66),
        (PortUnavailable("x"), 69),
    ],
)
def test_typed_errors_map_to_documented_exit_codes(error: Exception, code: int) -> None:
    assert exit_code_for(error) == code
    assert all(60 <= c <= 79 for c in EXIT_CODES.values())


def test_unknown_subcommand_is_a_usage_error() -> None:
    done = run("no-such-command")
    assert done.returncode == 64
    assert "no-such-command" in done.stderr
