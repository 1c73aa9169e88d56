"""Running one `launchctl` / `systemctl` command (`service_manager` builds it and reads the
answer): found on the given PATH, no shell, bounded by COMMAND_TIMEOUT_S, never raises.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from macprovider.actors.service_manager import COMMAND_TIMEOUT_S, NOT_ON_PATH, ToolResult

__all__ = ["run_tool"]


def run_tool(argv: Sequence[str], env: Mapping[str, str]) -> ToolResult:
    """Runs `argv` (its tool named bare) with `env`, looking the tool up on env's PATH."""
    asked = tuple(argv)
    found = shutil.which(asked[0], path=env.get("PATH", os.defpath))
    if found is None:
        return ToolResult(asked, unavailable=NOT_ON_PATH)
    try:
        done = subprocess.run(
            [found, *asked[1:]],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
            # Its own session: a Ctrl-C at the terminal signals our whole process group,
            # and must not kill the `systemctl start` / `launchctl bootstrap` of a restore.
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return ToolResult(asked, unavailable=f"gave no answer within {COMMAND_TIMEOUT_S:g} s")
    except OSError as error:
        return ToolResult(asked, unavailable=f"could not run: {error.strerror or error}")
    return ToolResult(asked, done.returncode, done.stdout, done.stderr)
