"""A stop signal during start-up, before the Supervisor exists: exit 130, one line, nothing
written. (Before the handlers were installed from the first line, such a SIGTERM killed the
process by its default action and a SIGINT printed a KeyboardInterrupt traceback; one that
came just after the Supervisor started was lost and the run went on to rewrite the config.)"""

from __future__ import annotations

import signal
import subprocess
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
