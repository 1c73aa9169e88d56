"""Finding the other provider processes and what holds the tuning port, through psutil.

Each thing is reported once, as what it really is: a process inside a service's tree is
that service; a `serve` under a `run` is that `run` (SIGTERMing the child alone would make
`run` start another a second later); a listener on the port inside a finding's process
tree is that finding. So `port-<p>-in-use` always means "held by something that is not a
provider". The calling process and its ancestors are never reported.
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil

from macprovider.actors.drain_decisions import (
    PROVIDER_SUBCOMMANDS,
    one_line,
    provider_subcommand,
    shown_argv,
)
from macprovider.actors.messages import Finding
from macprovider.actors.provider import port_is_free

__all__ = ["alive", "cmdline", "foreground_findings", "port_finding", "process"]


def foreground_findings(self_pid: int, service_pids: set[int]) -> list[Finding]:
    """Each outermost provider process not run by a service (`service_pids`) nor an
    ancestor of `self_pid`, with what restarting it needs."""
    procs = _provider_processes(_self_and_ancestors(self_pid))
    return [_foreground_finding(proc, argv) for proc, argv in _outermost(procs, service_pids)]


def port_finding(port: int, findings: Iterable[Finding]) -> Finding | None:
    """The port, if something other than one of `findings` (or its tree) listens on it."""
    if port_is_free(port):
        return None
    if any(f.pid and _tree_listens(f.pid, port) for f in findings):
        return None  # held by a finding already reported
    holder = _port_holder(port)
    if holder is None:
        detail = f"127.0.0.1:{port} is held by a process this user cannot see"
    else:
        detail = one_line(f"127.0.0.1:{port} is held by PID {holder}: {_describe(holder)}")
    return Finding("port", f"port-{port}-in-use", detail, pid=holder)


def process(pid: int | None) -> psutil.Process | None:
    try:
        return psutil.Process(pid) if pid else None
    except psutil.Error:
        return None


def alive(proc: psutil.Process) -> bool:
    """Running, and still the same process (psutil compares the start time); not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _self_and_ancestors(pid: int) -> frozenset[int]:
    try:
        return frozenset({pid, *(parent.pid for parent in psutil.Process(pid).parents())})
    except psutil.Error:
        return frozenset({pid})


def _provider_processes(excluded: frozenset[int]) -> dict[int, psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"]  # None when access is denied; empty for zombies
        if proc.pid in excluded or not argv:
            continue
        if provider_subcommand(argv) in PROVIDER_SUBCOMMANDS:
            found[proc.pid] = proc
    return found


def _outermost(
    procs: dict[int, psutil.Process], owners: set[int]
) -> list[tuple[psutil.Process, list[str]]]:
    """Each tree's outermost provider process, unless a service (an `owners` PID) owns it."""
    top = []
    for proc in procs.values():
        try:
            ancestors = {parent.pid for parent in proc.parents()}
            argv = proc.cmdline()
        except psutil.Error:  # gone since the scan
            continue
        if ancestors & procs.keys() or ({proc.pid} | ancestors) & owners:
            continue
        top.append((proc, argv))
    return top


def _foreground_finding(proc: psutil.Process, argv: list[str]) -> Finding:
    # What a restart needs, read now: after SIGTERM there is nothing left to read.
    try:
        cwd: str | None = proc.cwd()
    except psutil.Error:
        cwd = None
    try:
        env = tuple(sorted(proc.environ().items()))
    except psutil.Error:
        env = ()  # unreadable: a restart then uses the supervisor's own environment
    detail = one_line(shown_argv(argv) + (f" (cwd {cwd})" if cwd else ""))
    return Finding(
        "foreground", f"foreground-PID-{proc.pid}", detail, proc.pid, tuple(argv), cwd, env
    )


def _listens(status: int | str, laddr: tuple[object, ...], port: int) -> bool:
    return status == psutil.CONN_LISTEN and len(laddr) == 2 and laddr[1] == port


def _tree_listens(pid: int, port: int) -> bool:
    """Whether the process or one of its descendants listens on the port."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    for proc in tree:
        try:
            conns = proc.net_connections(kind="tcp")
            if any(_listens(conn.status, conn.laddr, port) for conn in conns):
                return True
        except psutil.Error:
            continue
    return False


def _port_holder(port: int) -> int | None:
    try:  # other users' sockets need privileges (always, on macOS)
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    holders = (c.pid for c in conns if c.pid and _listens(c.status, c.laddr, port))
    return next(holders, None)


def _describe(pid: int) -> str:
    proc = process(pid)
    return (shown_argv(cmdline(proc)) if proc else "") or "?"
