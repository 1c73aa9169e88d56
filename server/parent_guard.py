"""Die with the supervisor: a provider started by one must not outlive it (DESIGN §3).

The supervisor passes the read end of a pipe (`MACPROVIDER_PARENT_FD`) and keeps the
write end; when the supervisor exits, even by `kill -9`, the kernel closes the write
end and the read end turns readable at EOF. That works on macOS and Linux alike; on
Linux `PR_SET_PDEATHSIG` adds a SIGTERM from the kernel itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

import trio

from macprovider.server.errors import ConfigError

PARENT_FD_ENV = "MACPROVIDER_PARENT_FD"
_PR_SET_PDEATHSIG = 1


def parent_fd(env: Mapping[str, str]) -> int | None:
    """The inherited pipe to watch, or None when nobody supervises this provider."""
    raw = env.get(PARENT_FD_ENV)
    if raw is None:
        return None
    if not raw.isdigit():
        raise ConfigError(f"invalid {PARENT_FD_ENV} {raw!r} from env: must be a file descriptor")
    fd = int(raw)
    try:
        os.fstat(fd)
    except OSError:
        raise ConfigError(f"invalid {PARENT_FD_ENV} {raw!r} from env: not an open file") from None
    return fd


def arm_death_signal() -> None:
    """Linux: have the kernel send SIGTERM when the parent goes (a no-op elsewhere)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


async def wait_for_parent_exit(fd: int) -> None:
    """Returns once the supervisor's end of the pipe is closed."""
    while True:
        await trio.lowlevel.wait_readable(fd)
        if not os.read(fd, 4096):
            return
