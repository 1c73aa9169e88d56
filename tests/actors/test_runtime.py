"""The main thread of a supervised command hears a stop signal whichever thread the kernel
hands it to.

A process-directed signal may be delivered to any thread that does not block it; CPython's C
handler then only flags it, and the Python handler runs when the main thread next executes
bytecode. The child below sends SIGINT to one of its actor threads (`pthread_kill`, as the
kernel may choose to) and has no other reason to wake: the run must still stop in order.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT, clean_env

CHILD = textwrap.dedent(
    """
    import signal, threading
    import pykka
    from macprovider.actors.provider import ProcessGroups
    from macprovider.actors.runtime import supervise
    from macprovider.actors.supervisor import ChildSpec

    class SignalsItsOwnThread(pykka.ThreadingActor):
        def on_start(self) -> None:
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)

    worker = ChildSpec("worker", lambda _: SignalsItsOwnThread.start())
    outcome = supervise([worker], ProcessGroups())
    print(outcome.reason, flush=True)
    """
)
# Far above the handler's delay, far below "never": a broken runtime waits forever.
STOPPED_WITHIN_S = 20


def test_a_stop_signal_delivered_to_another_thread_stops_the_run() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=STOPPED_WITHIN_S,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "stopped"), done.stderr
