"""Faults injected into real `macprovider-supervise serve` processes, for tests/cli/test_faults.py.

A folder put first on PYTHONPATH makes every Python process started with it import this
module at start-up; it acts only in a `python -m macprovider.cli serve` process, so that the
`autotune` or `run` above it (which hand PYTHONPATH on to their providers) run untouched.
What it does comes from the environment:

- `SERVE_FAULT_PAUSE_AT_BIND=N`: at its N-th `bind` of its own `--port` (serve binds it
  once, for the socket it listens on, before the model loads), the process writes its pid to
  `SERVE_FAULT_PAUSED` and waits there until the file `SERVE_FAULT_GATE` exists (forever
  if no test creates it: a provider that hangs while it loads).
- `SERVE_FAULT_IGNORE_SIGTERM=1`: while paused, SIGTERM is ignored.
- `SERVE_FAULT_MODEL=M`: only a serve of `--model M` is paused (else every serve is).

A pause at a syscall boundary is the only way to take a port between a check and a bind
every time: the code paths around it are serve's own. Standard library only.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

POLL_S = 0.05


def _faulty_serve_port(argv: list[str]) -> int | None:
    """The `--port` of a `-m macprovider.cli serve` command line to pause, else None."""
    try:
        command = argv[argv.index("macprovider.cli") + 1]
        port = int(argv[argv.index("--port") + 1])
        model = argv[argv.index("--model") + 1]
    except (ValueError, IndexError):
        return None
    wanted = os.environ.get("SERVE_FAULT_MODEL")
    return port if command == "serve" and wanted in (None, model) else None


def _install(port: int, pause_at: int) -> None:
    paused = Path(os.environ["SERVE_FAULT_PAUSED"])
    gate = Path(os.environ["SERVE_FAULT_GATE"])
    ignore_sigterm = os.environ.get("SERVE_FAULT_IGNORE_SIGTERM") == "1"
    binds = 0

    def hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal binds
        if event != "socket.bind" or not isinstance(args[1], tuple) or args[1][1:2] != (port,):
            return
        binds += 1
        if binds != pause_at:
            return
        if ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        paused.write_text(str(os.getpid()))
        while not gate.exists():
            time.sleep(POLL_S)  # the injected hang itself, not a synchronisation

    sys.addaudithook(hook)


_pause_at = os.environ.get("SERVE_FAULT_PAUSE_AT_BIND")
_port = _faulty_serve_port(sys.orig_argv) if _pause_at is not None else None
if _port is not None and _pause_at is not None:
    _install(_port, int(_pause_at))
