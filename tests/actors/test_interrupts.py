"""SIGINT at random moments of a supervised start/stop loop leaves nothing behind."""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, clean_env, free_port, wait_until

pytestmark = pytest.mark.slow  # twenty supervised processes, each interrupted at a random moment

ITERATIONS = 20
SEED = 20261125
MAX_DELAY_S = 1.5
EXIT_BOUND_S = 10.0  # the drain grace for our own children


def kill_if_left(harness: subprocess.Popen[str]) -> None:
    """A failed iteration must not leave its stand-ins to the tests that run after it."""
    if harness.poll() is not None:
        return
    for child in psutil.Process(harness.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    harness.kill()
    harness.wait()


def interrupt_once(tmp_path: Path, delay: float) -> float:
    tmp_path.mkdir(parents=True, exist_ok=True)
    db, port = tmp_path / "autotune.sqlite", free_port()
    argv = [
        sys.executable,
        "-m",
        "tests.actors.interrupt_harness",
        str(db),
        str(tmp_path),
        str(port),
    ]
    harness = subprocess.Popen(argv, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert harness.stdout is not None
        assert harness.stdout.readline().strip() == "run started"
        time.sleep(delay)  # the random moment itself, not a wait for anything
        ours = psutil.Process(harness.pid).children(recursive=True)
        harness.send_signal(signal.SIGINT)
        sent = time.monotonic()
        assert harness.wait(timeout=EXIT_BOUND_S) == 1
        took = time.monotonic() - sent
    finally:
        kill_if_left(harness)
    wait_until(lambda: not any(p.is_running() for p in ours), 5, "no process of ours")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute("SELECT exit_reason, ended_at_utc FROM tune_runs").fetchall()
    assert len(rows) == 1 and rows[0][0] == "interrupted" and rows[0][1] is not None
    return took


def test_sigint_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    took = [
        interrupt_once(tmp_path / str(i), rng.uniform(0, MAX_DELAY_S)) for i in range(ITERATIONS)
    ]
    # For the closing note: `pytest -s` shows the distribution.
    print(f"\nSIGINT to exit: median {statistics.median(took):.3f} s, worst {max(took):.3f} s")
    assert max(took) < EXIT_BOUND_S
