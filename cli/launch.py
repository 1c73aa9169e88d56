"""The first lines of every `macprovider-supervise` process, before anything heavy is imported.

A supervised provider arms its parent-death guard here, and every command takes over
SIGINT/SIGTERM here (`actors.stop_signals`): importing MLX, pykka and the rest takes about a
second, and a signal in that second must neither print a traceback nor be lost.
"""

from __future__ import annotations

import os


def main() -> None:
    try:
        from macprovider.server.parent_guard import arm_for_supervisor

        arm_for_supervisor(os.environ)
        from macprovider.actors.stop_signals import STOP

        STOP.install()
    except KeyboardInterrupt:
        # A Ctrl-C before our handler took over, raised by Python's own: the same early stop.
        from macprovider.actors.stop_signals import stopped_before_anything

        stopped_before_anything("SIGINT")
    from macprovider.cli.main import main as run_command_line

    run_command_line()
