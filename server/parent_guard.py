"""Die with the supervisor: a provider started by one must not outlive it.

The supervisor passes the read end of a pipe (`MACPROVIDER_PARENT_FD`) and keeps the
write end; when the supervisor exits, even by `kill -9`, the kernel closes the write
end and the read end turns readable at EOF. That works on macOS and Linux alike: the
provider then finishes its in-flight requests and exits.

On Linux `PR_SET_PDEATHSIG` adds a SIGKILL from the kernel itself the moment the
supervisor dies, armed on the child's first line (`arm_for_supervisor`, before any heavy
import): a provider without its supervisor holds the port its restarted supervisor needs,
and nobody reads its answers any more, so it goes at once rather than after a drain.
This module imports trio only where it waits on the pipe, so arming costs nothing.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
from collections.abc import Mapping

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


def arm_for_supervisor(env: Mapping[str, str]) -> None:
    """The first thing a supervised provider does: from here on it cannot outlive its
    supervisor, even one that died before this line ran. A no-op without a supervisor (or
    with a malformed variable, which `serve` reports properly later)."""
    try:
        fd = parent_fd(env)
    except ConfigError:
        return
    if fd is None:
        return
    _arm_death_signal()
    if _pipe_closed(fd):  # the supervisor died before the death signal was armed
        os._exit(0)


def _arm_death_signal() -> None:
    """Linux: have the kernel SIGKILL this process when its parent goes (a no-op elsewhere)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _pipe_closed(fd: int) -> bool:
    readable, _, _ = select.select([fd], [], [], 0)
    # The supervisor never writes: readable means end of file.
    return bool(readable) and not os.read(fd, 1)


async def wait_for_parent_exit(fd: int) -> None:
    """Returns once the supervisor's end of the pipe is closed."""
    import trio

    while True:
        await trio.lowlevel.wait_readable(fd)
        if not os.read(fd, 4096):
            return
