"""Processes, signals and the port, as the chaos suite sees them from outside.

"Ours" is every process whose command line names the iteration's folder or `--port`, and
every descendant of the suite (orphans are reparented to it when it runs as the init of its
own PID namespace). A zombie counts as gone: it holds no port and runs no code.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import select
import shlex
import signal
import socket
import struct
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psutil

POLL_S: Final = 0.005


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _mentions(cmdline: list[str], folder: str, port: int) -> bool:
    if any(folder in arg for arg in cmdline):
        return True
    pairs = itertools.pairwise(cmdline)
    return f"--port={port}" in cmdline or ("--port", str(port)) in pairs


def ours(folder: Path, port: int, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """The live processes of this iteration (see the module docstring), the suite excepted."""
    me = psutil.Process()
    skip = {me.pid, *exclude}
    descendants: set[int] = set()
    with contextlib.suppress(psutil.Error):
        descendants = {child.pid for child in me.children(recursive=True)}
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid in skip:
            continue
        cmdline = proc.info["cmdline"] or []
        if (proc.pid in descendants or _mentions(cmdline, str(folder), port)) and alive(proc):
            found.append(proc)
    return found


def is_provider(proc: psutil.Process) -> bool:
    try:
        return "serve" in proc.cmdline()
    except psutil.Error:
        return False


def describe(proc: psutil.Process) -> str:
    try:
        return f"PID {proc.pid} {shlex.join(proc.cmdline())[:160]}"
    except psutil.Error:
        return f"PID {proc.pid}"


@dataclass(frozen=True)
class Deaths:
    """How long the watched processes outlived the reference moment."""

    last_s: float  # until the last was gone
    provider_s: float | None  # the same for the providers among them (None: none watched)
    leftovers: tuple[psutil.Process, ...]  # alive `bound_s` after the moment


def watch_deaths(
    procs: Iterable[psutil.Process],
    providers: Collection[int],
    since: float,
    bound_s: float,
    watch_s: float,
) -> Deaths:
    """Polls `procs` from the monotonic moment `since`: each one's death time, up to
    `watch_s` (longer than `bound_s`, so that a slow death is measured, not just seen).
    `providers`: the PIDs among them that were providers (told while they were alive)."""
    watched = {proc.pid: proc for proc in procs}
    providers = [pid for pid in providers if pid in watched]
    died: dict[int, float] = {}
    leftovers: tuple[psutil.Process, ...] = ()
    bound_passed = False
    while True:
        now = time.monotonic() - since
        for pid, proc in watched.items():
            if pid not in died and not alive(proc):
                died[pid] = max(now, 0.0)
        remaining = [proc for pid, proc in watched.items() if pid not in died]
        if not bound_passed and now >= bound_s:
            leftovers, bound_passed = tuple(remaining), True
        if not remaining or now >= watch_s:
            break
        time.sleep(POLL_S)
    # Still alive at the end of the watch: `watch_s`, a lower bound (and a leftover).
    last = max((died.get(pid, watch_s) for pid in watched), default=0.0)
    provider = max((died.get(pid, watch_s) for pid in providers), default=None)
    return Deaths(last, provider, leftovers)


def kill_all(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL to processes of ours that outlived their bound (the next iteration needs a
    clean machine)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def reap_orphans(keep: Iterable[int] = ()) -> None:
    """Waits for zombie children that are not ours to wait for (orphans reparented to us);
    never `waitpid(-1)`, which would steal a Popen's status."""
    skip = set(keep)
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            if child.pid in skip:
                continue
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)


def handles(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` now (Linux: SigCgt in /proc). Where that
    cannot be read, it is assumed to: the stricter reading."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return True


def send(pid: int, signum: int, *, group: bool) -> bool:
    """The signal to the process or its group; False when it was already gone."""
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_freed_within(port: int, bound_s: float) -> bool:
    """Whether the port can be bound within `bound_s`: the kernel finishes closing a killed
    process's sockets a moment after the process is reported gone, as it finishes its exit."""
    deadline = time.monotonic() + bound_s
    while not port_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


SIGNALS: Final = {name: getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGKILL")}


class Creations:
    """The names created in a folder, as they come: inotify on Linux (a few microseconds
    after the fact), else a fast poll of the listing. `--apply`'s temporary name lives for an
    instant: only an event can catch it."""

    _IN_CREATE: Final = 0x100
    _IN_MOVED_TO: Final = 0x80
    _EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, len; then the name

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._seen = {entry.name for entry in os.scandir(folder)}
        self._fd = -1
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            mask = self._IN_CREATE | self._IN_MOVED_TO
            if fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(folder), mask) >= 0:
                self._fd = fd
            elif fd >= 0:
                os.close(fd)

    def wait(self, timeout_s: float) -> list[str]:
        """The names created since the last call, waiting up to `timeout_s` for one."""
        if self._fd < 0:
            time.sleep(min(timeout_s, 0.0005))
            names = {entry.name for entry in os.scandir(self._folder)}
            new, self._seen = names - self._seen, names
            return sorted(new)
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        if not ready:
            return []
        data, offset = os.read(self._fd, 65536), 0
        created: list[str] = []
        while offset < len(data):
            _, _, _, length = self._EVENT.unpack_from(data, offset)
            start = offset + self._EVENT.size
            created.append(os.fsdecode(data[start : start + length].rstrip(b"\0")))
            offset = start + length
        return created

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
