"""A stop signal during start-up, before the Supervisor exists: exit 130, one line, nothing
written. (Before the handlers were installed from the first line, such a SIGTERM killed the
process by its default action and a SIGINT printed a KeyboardInterrupt traceback; one that
came just after the Supervisor started was lost and the run went on to rewrite the config.)"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.autotune_runs import ONE_CELL, QUICK, Autotune, Models
from tests.conftest import catches, clean_env, wait_until

ORIGINAL = b"# mine\nport: 18080\nmodel: something-else\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_exits_130_and_writes_nothing(
    autotune: Autotune, models: Models, tmp_path: Path, signum: signal.Signals
) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(ORIGINAL)
    argv = autotune.argv(
        "--candidate-models", models("tiny"), *QUICK, *ONE_CELL, "--apply", "--config", str(config)
    )
    proc = subprocess.Popen(
        argv, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # The launcher's first lines have run; the heavy imports are still ahead of it.
        wait_until(lambda: catches(proc.pid, signal.SIGTERM), 30, "the launcher's handlers")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert out == ""
    assert err.splitlines() == [
        f"macprovider-supervise: {signum.name}: stopped before anything started; "
        "nothing was changed"
    ]
    assert not autotune.db_path.exists()
    assert config.read_bytes() == ORIGINAL
    assert [p.name for p in config.parent.iterdir()] == ["config.yaml"]  # no state, no backup


def test_a_ctrl_c_before_our_handler_took_over_is_the_same_early_stop() -> None:
    """In the launcher's first lines Python's own SIGINT handler is still in place and raises
    KeyboardInterrupt (chaos saw one in the parent guard's import): one line and 130, not a
    traceback and a death by SIGINT. The interrupt is raised where it would land."""
    script = (
        "import macprovider.server.parent_guard as guard\n"
        "def interrupted(env):\n"
        "    raise KeyboardInterrupt\n"
        "guard.arm_for_supervisor = interrupted\n"
        "from macprovider.cli.launch import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130
    assert done.stderr.splitlines() == [
        "macprovider-supervise: SIGINT: stopped before anything started; nothing was changed"
    ]
