"""DrainActor: find a provider that is already live, stop it for the run, start it again
afterwards.

Four kinds of finding, looked for in this order:

- launchd (macOS): the label's line in `launchctl list`, confirmed by `launchctl print`;
- systemd: `systemctl --user is-active <unit>` says the unit is (or is becoming) active;
- foreground: a `macprovider-supervise` (or legacy `macprovider-cli`) process whose
  subcommand is `serve`, or `run` (which keeps a `serve` alive), never the calling
  process (`self_pid`) or its ancestors;
- port: anything else listening on 127.0.0.1:<port>.

Each thing is reported once, as what it really is: a process inside a service's tree is
that service; a `serve` under a `run` is that `run` (SIGTERMing the child alone would make
`run` start another a second later); a listener on the port inside a finding's process
tree is that finding. So `port-<p>-in-use` always means "held by something that is not a
provider": draining refuses it before stopping anything.

Command lines are shown (findings, refusals, restore commands) only through `redact_argv`:
a foreground `serve --api-key K` must not put K in our log. The finding keeps the real argv,
which its restart needs.

Never SIGKILL: every process stopped here belongs to the operator. Restore runs once,
whatever happened; `on_stop` (and `on_failure`) are the backstop. The decisions (parsing
`launchctl` output, matching a command line, the manual commands, the conflict message)
are plain functions; the actor runs the tools, signals and waits.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, cast

import psutil
import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from macprovider.actors.autotune_inputs import DEFAULT_DRAIN_GRACE_S
from macprovider.actors.errors import ActorError
from macprovider.actors.messages import Drained, DrainFailed, Finding, RestoreReport
from macprovider.actors.provider import port_is_free
from macprovider.server.parent_guard import PARENT_FD_ENV
from macprovider.server.redaction import redact_argv

log = logging.getLogger("macprovider.actors.drain")

COMMAND_TIMEOUT_S: Final = 10.0  # one launchctl / systemctl call
POLL_S: Final = 0.05  # while waiting for drained processes and the port
DETAIL_MAX_CHARS: Final = 240

PROGRAM_NAMES: Final = frozenset({"macprovider-supervise", "macprovider-cli"})
CLI_MODULE: Final = "macprovider.cli"
# `run` counts: it is a provider too, one that starts `serve` again when it dies.
PROVIDER_SUBCOMMANDS: Final = frozenset({"serve", "run"})
# `activating` covers a unit in its restart back-off: it would take the port mid-run.
LIVE_SYSTEMD_STATES: Final = frozenset({"active", "activating", "reloading"})

_PYTHON: Final = re.compile(r"python[0-9.]*", re.IGNORECASE)  # macOS framework: `Python`
_PYTHON_OPTIONS_WITH_VALUE: Final = frozenset({"-W", "-X", "--check-hash-based-pycs"})
_PLIST_PATH: Final = re.compile(r"^\s*path = (.+\.plist)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class ServiceNames:
    """The names a provider service is installed under (`service install` uses the same)."""

    launchd_label: str = "live.streamvc.macprovider"
    systemd_unit: str = "macprovider.service"

    def launchd_plist(self, home: Path) -> Path:
        return home / "Library" / "LaunchAgents" / f"{self.launchd_label}.plist"


DEFAULT_NAMES: Final = ServiceNames()


class DrainRefused(ActorError):
    """`drain` was called again, or after `restore`: one drain, one restore per actor."""

    def __init__(self) -> None:
        super().__init__("this DrainActor already drained or restored; start a new one")


# --- decisions: plain functions ------------------------------------------------------------


@dataclass(frozen=True)
class LaunchdEntry:
    """The label's line in `launchctl list`."""

    pid: int | None  # None: loaded but not running (`-`)
    status: str  # the last exit status launchd saw


def parse_launchctl_list(text: str, label: str) -> LaunchdEntry | None:
    """The line whose LABEL column equals `label` exactly (`PID\\tStatus\\tLabel` lines)."""
    for line in text.splitlines():
        # Tab-separated in launchctl's output; whitespace as a fallback for hand-made text.
        fields = line.split("\t") if "\t" in line else line.split(None, 2)
        if len(fields) != 3 or fields[2].strip() != label:
            continue
        pid = fields[0].strip()
        return LaunchdEntry(int(pid) if pid.isdigit() else None, fields[1].strip())
    return None


def plist_path_from_print(text: str) -> Path | None:
    """The plist a loaded job came from (`path = …` in `launchctl print`), if it says."""
    match = _PLIST_PATH.search(text)
    return Path(match.group(1)) if match else None


def provider_subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand of a macprovider command line (`serve`, `run`, …), else None.

    The program is argv[0] itself, or the script or `-m macprovider.cli` that a Python
    interpreter runs (a console script runs as `python /path/macprovider-supervise`). Its
    name must be equal, not similar: `macprovider-supervise-helper` is another program.
    The subcommand is the first argument that is not an option, compared whole.
    """
    if not argv:
        return None
    head = os.path.basename(argv[0])
    if head in PROGRAM_NAMES:
        args: list[str] | None = list(argv[1:])
    elif _PYTHON.fullmatch(head):
        args = _python_program_args(list(argv[1:]))
    else:
        return None
    if args is None:
        return None
    return next((arg for arg in args if not arg.startswith("-")), None)


def _python_program_args(args: list[str]) -> list[str] | None:
    """After an interpreter's own options: the macprovider program's arguments, or None."""
    while args:
        arg, args = args[0], args[1:]
        if arg == "-m":
            return args[1:] if args[:1] == [CLI_MODULE] else None
        if arg in _PYTHON_OPTIONS_WITH_VALUE:
            args = args[1:]
        elif arg.startswith("-m"):  # `-mmacprovider.cli`
            return args if arg[2:] == CLI_MODULE else None
        elif arg == "-" or arg.startswith("-c"):  # a script from stdin or the command line
            return None
        elif not arg.startswith("-"):
            return args if os.path.basename(arg) in PROGRAM_NAMES else None
    return None


def launchd_target(uid: int, label: str) -> str:
    return f"gui/{uid}/{label}"


def manual_stop_command(finding: Finding, *, uid: int, port: int) -> str:
    """What the operator runs to stop a finding themselves."""
    if finding.kind == "launchd":
        return f"launchctl bootout {shlex.quote(launchd_target(uid, str(finding.service)))}"
    if finding.kind == "systemd":
        return f"systemctl --user stop {shlex.quote(str(finding.service))}"
    if finding.kind == "foreground":
        return f"kill -TERM {finding.pid}"
    # Not a provider: first find out what it is.
    return f"lsof -nP -iTCP:{port} -sTCP:LISTEN"


def manual_restore_command(finding: Finding, *, uid: int, plist: Path) -> str | None:
    """What the operator runs to bring a drained finding back; None for a port finding."""
    if finding.kind == "launchd":
        return f"launchctl bootstrap gui/{uid} {shlex.quote(str(plist))}"
    if finding.kind == "systemd":
        return f"systemctl --user start {shlex.quote(str(finding.service))}"
    if finding.kind == "foreground":
        command = _shown(finding.argv)
        return f"cd {shlex.quote(finding.cwd)} && {command}" if finding.cwd else command
    return None


def conflict_message(findings: Sequence[Finding], port: int, *, uid: int | None = None) -> str:
    """The refusal without `--drain`: what is running, and the two ways out."""
    uid = os.getuid() if uid is None else uid
    lines = ["a provider is already running; autotune would measure beside it:"]
    lines += [f"  {finding.name}: {finding.detail}" for finding in findings]
    providers = [finding for finding in findings if finding.kind != "port"]
    if providers:
        lines.append(
            "rerun with --drain: autotune stops it, tunes, then starts it again"
            " (a foreground process only with --restart-foreground)"
        )
    lines.append("or stop it yourself, then rerun:" if providers else "stop it yourself:")
    for finding in findings:
        command = manual_stop_command(finding, uid=uid, port=port)
        if finding.kind == "port":
            lines.append(f"  {command}   # --drain cannot stop it: find it, or use another --port")
        else:
            lines.append(f"  {command}")
    return "\n".join(lines)


def _shown(argv: Sequence[str]) -> str:
    """A command line as we print it: quoted for a shell, its secrets redacted."""
    return shlex.join(redact_argv(argv))


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"


# --- processes (psutil) ----------------------------------------------------------------------


def _self_and_ancestors(pid: int) -> frozenset[int]:
    try:
        return frozenset({pid, *(parent.pid for parent in psutil.Process(pid).parents())})
    except psutil.Error:
        return frozenset({pid})


def _provider_processes(excluded: frozenset[int]) -> dict[int, psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"]  # None when access is denied; empty for zombies
        if proc.pid in excluded or not cmdline:
            continue
        if provider_subcommand(cmdline) in PROVIDER_SUBCOMMANDS:
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
    detail = _one_line(_shown(argv) + (f" (cwd {cwd})" if cwd else ""))
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


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _describe(pid: int) -> str:
    proc = _process(pid)
    return (_shown(_cmdline(proc)) if proc else "") or "?"


def _process(pid: int | None) -> psutil.Process | None:
    try:
        return psutil.Process(pid) if pid else None
    except psutil.Error:
        return None


def _alive(proc: psutil.Process) -> bool:
    """Running, and still the same process (psutil compares the start time); not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- running tools -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    code: int | None  # None: it did not run, or timed out
    stdout: str = ""
    problem: str = ""  # why it failed, one line

    @property
    def ok(self) -> bool:
        return self.code == 0


def _run(argv: Sequence[str], env: Mapping[str, str]) -> _Result:
    """One tool call: no shell, bounded, never raises."""
    try:
        done = subprocess.run(
            list(argv),
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
        return _Result(None, problem=f"timed out after {COMMAND_TIMEOUT_S:g} s")
    except OSError as error:
        return _Result(None, problem=f"could not run: {error.strerror or error}")
    said = done.stderr.strip().splitlines() or done.stdout.strip().splitlines()
    problem = f"exit {done.returncode}" + (f": {_one_line(said[-1])}" if said else "")
    return _Result(done.returncode, done.stdout, "" if done.returncode == 0 else problem)


# --- the actor -----------------------------------------------------------------------------

Outcome = Literal["restored", "failed", "not_restarted"]


class DrainActor(pykka.ThreadingActor):
    """Detects, drains and restores a live provider; see the module docstring."""

    def __init__(
        self,
        port: int,
        *,
        names: ServiceNames = DEFAULT_NAMES,
        drain_grace_s: float = DEFAULT_DRAIN_GRACE_S,
        restart_foreground: bool = False,
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
        self_pid: int | None = None,
    ) -> None:
        super().__init__()
        self._port = port
        self._names = names
        self._grace = drain_grace_s
        self._restart_foreground = restart_foreground
        # Tools are looked up on, and run with, this environment (tests put fakes first).
        self._env = dict(env) if env is not None else dict(os.environ)
        self._home = home if home is not None else Path(self._env.get("HOME") or Path.home())
        self._self_pid = self_pid if self_pid is not None else os.getpid()
        self._uid = os.getuid()
        self._plist: Path | None = None  # the loaded job's own plist, when `print` names it
        self._drain_started = False
        self._stopped: list[Finding] = []  # in the order stopped; restored in reverse
        self._report: RestoreReport | None = None
        # Held, not waited for: detached on purpose; dropping a live Popen would warn.
        self._restarted: list[subprocess.Popen[bytes]] = []

    # pykka runs every method below on the actor's one thread, one message at a time.

    def detect(self) -> tuple[Finding, ...]:
        """Every live provider, then the port if something else holds it."""
        services = [f for f in (self._detect_launchd(), self._detect_systemd()) if f]
        foreground = self._detect_foreground({f.pid for f in services if f.pid})
        port = self._detect_port([*services, *foreground])
        findings = (*services, *foreground, *([port] if port else []))
        for finding in findings:
            log.info("found %s: %s", finding.name, finding.detail)
        return findings

    def drain(self, findings: tuple[Finding, ...]) -> Drained | DrainFailed:
        """Stops every finding, then waits (within the grace) for them to go and the port
        to be free. On any failure, restores what was stopped and says why."""
        if self._drain_started or self._report is not None:
            raise DrainRefused()
        self._drain_started = True
        deadline = time.monotonic() + self._grace
        for finding in findings:
            if finding.kind == "port":  # refused before anything is stopped
                reason = f"{finding.name}: not a provider we can stop; stop it yourself"
                return self._fail(f"{reason} ({finding.detail})")
        watched: list[tuple[Finding, psutil.Process]] = []
        for finding in findings:
            proc = _process(finding.pid)  # before the stop: a reused PID is then told apart
            failure = self._ask_to_stop(finding, proc)
            if failure is not None:
                return self._fail(failure)
            if proc is not None:
                watched.append((finding, proc))
        failure = self._wait_gone(watched, deadline)
        if failure is not None:
            return self._fail(failure)
        log.info("drained: %s", ", ".join(f.name for f in self._stopped) or "nothing")
        return Drained(tuple(self._stopped))

    def restore(self) -> RestoreReport:
        """Brings back what was drained, newest first. Runs once; later calls return the
        first report and run nothing."""
        if self._report is not None:
            return self._report
        lines: dict[Outcome, list[str]] = {"restored": [], "failed": [], "not_restarted": []}
        for finding in reversed(self._stopped):
            try:
                outcome, line = self._restore_one(finding)
            except Exception as error:  # one bad restore must not skip the others
                log.exception("restoring %s", finding.name)
                outcome, line = "failed", self._failed_line(finding, f"{error}")
            lines[outcome].append(line)
            (log.error if outcome == "failed" else log.info)("restore: %s", line)
        self._report = RestoreReport(
            tuple(lines["restored"]), tuple(lines["failed"]), tuple(lines["not_restarted"])
        )
        return self._report

    def on_stop(self) -> None:
        # The backstop: an interrupted or crashed run still gets its service back.
        if self._stopped and self._report is None:
            self.restore()
        for proc in self._restarted:
            proc.poll()  # reaps one that already ended; the others live on, detached

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.on_stop()

    # --- detection ---

    def _which(self, tool: str) -> str | None:
        return shutil.which(tool, path=self._env.get("PATH", os.defpath))

    def _detect_launchd(self) -> Finding | None:
        launchctl = self._which("launchctl")
        if launchctl is None:
            return None
        label = self._names.launchd_label
        listed = _run([launchctl, "list"], self._env)
        entry = parse_launchctl_list(listed.stdout, label) if listed.ok else None
        if entry is None:
            return None
        printed = _run([launchctl, "print", launchd_target(self._uid, label)], self._env)
        if not printed.ok:  # listed but not in our GUI domain: nothing we could boot out
            log.info("launchd job %s listed but `launchctl print` says %s", label, printed.problem)
            return None
        self._plist = plist_path_from_print(printed.stdout)
        state = f"PID {entry.pid}" if entry.pid else "loaded, not running"
        detail = f"launchd job {label} ({state})"
        return Finding("launchd", "launchd-managed", detail, pid=entry.pid, service=label)

    def _detect_systemd(self) -> Finding | None:
        systemctl = self._which("systemctl")
        if systemctl is None:
            return None
        unit = self._names.systemd_unit
        active = _run([systemctl, "--user", "is-active", unit], self._env)
        state = (active.stdout.strip().splitlines() or [""])[0]
        if state not in LIVE_SYSTEMD_STATES:
            return None
        show = [systemctl, "--user", "show", "--property=MainPID", "--value", unit]
        shown = _run(show, self._env)
        main_pid = int(shown.stdout.strip()) if shown.ok and shown.stdout.strip().isdigit() else 0
        running = f", main PID {main_pid}" if main_pid else ""
        detail = f"systemd user unit {unit} ({state}{running})"
        return Finding("systemd", "systemd-managed", detail, pid=main_pid or None, service=unit)

    def _detect_foreground(self, service_pids: set[int]) -> list[Finding]:
        procs = _provider_processes(_self_and_ancestors(self._self_pid))
        return [_foreground_finding(proc, argv) for proc, argv in _outermost(procs, service_pids)]

    def _detect_port(self, findings: Iterable[Finding]) -> Finding | None:
        port = self._port
        if port_is_free(port):
            return None
        if any(f.pid and _tree_listens(f.pid, port) for f in findings):
            return None  # held by a finding already reported
        holder = _port_holder(port)
        if holder is None:
            detail = f"127.0.0.1:{port} is held by a process this user cannot see"
        else:
            detail = _one_line(f"127.0.0.1:{port} is held by PID {holder}: {_describe(holder)}")
        return Finding("port", f"port-{port}-in-use", detail, pid=holder)

    # --- drain ---

    def _ask_to_stop(self, finding: Finding, proc: psutil.Process | None) -> str | None:
        """Asks one finding to stop; the reason on failure. Stopped ones are recorded."""
        if finding.kind == "foreground":
            return self._terminate(finding, proc)
        tool, argv = self._service_command(finding, "stop")
        manual = manual_stop_command(finding, uid=self._uid, port=self._port)
        if tool is None:
            return f"{finding.name}: {argv[0]} is not on PATH; stop it yourself: {manual}"
        result = _run([tool, *argv[1:]], self._env)
        if not result.ok:
            return f"{finding.name}: `{manual}` failed ({result.problem}); stop it yourself"
        log.info("stopped %s: %s", finding.name, manual)
        self._stopped.append(finding)
        return None

    def _terminate(self, finding: Finding, proc: psutil.Process | None) -> str | None:
        if proc is None or not _alive(proc) or tuple(_cmdline(proc)) != finding.argv:
            log.info("%s is gone already: nothing to stop", finding.name)
            return None
        try:
            proc.send_signal(signal.SIGTERM)  # psutil refuses if the PID was reused meanwhile
        except psutil.NoSuchProcess:
            return None
        except psutil.AccessDenied:
            return f"{finding.name}: not allowed to signal PID {proc.pid}; stop it yourself"
        log.info("sent SIGTERM to %s", finding.name)
        self._stopped.append(finding)
        return None

    def _wait_gone(
        self, watched: list[tuple[Finding, psutil.Process]], deadline: float
    ) -> str | None:
        """Polls until every stopped process is gone and the port is free, or the deadline."""
        while True:
            alive = [finding for finding, proc in watched if _alive(proc)]
            port_free = port_is_free(self._port)
            if not alive and port_free:
                return None
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        grace = f"{self._grace:g} s"
        if alive:
            # A process still running was not stopped: restoring it would start a second one.
            self._stopped = [f for f in self._stopped if f.kind != "foreground" or f not in alive]
            names = ", ".join(finding.name for finding in alive)
            return (
                f"{names} still running {grace} after being asked to stop; left running"
                " (a process we did not start is never SIGKILLed): stop it yourself"
            )
        return f"port {self._port} still in use {grace} after draining; stop what holds it"

    def _fail(self, reason: str) -> DrainFailed:
        log.error("drain failed: %s", reason)
        return DrainFailed(reason, self.restore())

    # --- restore ---

    def _service_command(
        self, finding: Finding, action: Literal["stop", "start"]
    ) -> tuple[str | None, list[str]]:
        """The tool's path on PATH (None if missing) and the argv naming it bare."""
        label_or_unit = str(finding.service)
        if finding.kind == "launchd":
            if action == "stop":
                argv = ["launchctl", "bootout", launchd_target(self._uid, label_or_unit)]
            else:
                argv = ["launchctl", "bootstrap", f"gui/{self._uid}", str(self._plist_path())]
        else:
            argv = ["systemctl", "--user", action, label_or_unit]
        return self._which(argv[0]), argv

    def _plist_path(self) -> Path:
        return self._plist or self._names.launchd_plist(self._home)

    def _restore_one(self, finding: Finding) -> tuple[Outcome, str]:
        if finding.kind == "foreground":
            return self._restart(finding)
        tool, argv = self._service_command(finding, "start")
        if tool is None:
            return "failed", self._failed_line(finding, f"{argv[0]} is not on PATH")
        result = _run([tool, *argv[1:]], self._env)
        if not result.ok:
            return "failed", self._failed_line(finding, result.problem)
        return "restored", f"{finding.name}: {shlex.join(argv)}"

    def _restart(self, finding: Finding) -> tuple[Outcome, str]:
        command = self._manual_restore(finding)
        if not self._restart_foreground:
            return "not_restarted", f"{finding.name}: not restarted; start it again with: {command}"
        # Its old parent's pipe means nothing to the new process (and would not be open).
        env = {key: value for key, value in finding.env if key != PARENT_FD_ENV} or self._env
        try:
            proc = subprocess.Popen(
                finding.argv,
                cwd=finding.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # Detached: our Ctrl-C or exit must not reach it; it outlives this run.
                start_new_session=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            return "failed", self._failed_line(finding, f"could not start: {error}")
        self._restarted.append(proc)
        return "restored", f"{finding.name}: restarted as PID {proc.pid}: {command}"

    def _manual_restore(self, finding: Finding) -> str:
        plist = self._plist_path()
        return manual_restore_command(finding, uid=self._uid, plist=plist) or "?"

    def _failed_line(self, finding: Finding, problem: str) -> str:
        return f"{finding.name}: restore failed ({problem}); run: {self._manual_restore(finding)}"


class DrainProxy(ActorMemberMixin, pykka.ActorProxy[DrainActor]):
    """The DrainActor's methods as mypy sees them through a proxy: each returns a Future."""

    detect = proxy_method(DrainActor.detect)
    drain = proxy_method(DrainActor.drain)
    restore = proxy_method(DrainActor.restore)


def start_drain_actor(
    port: int,
    *,
    names: ServiceNames = DEFAULT_NAMES,
    drain_grace_s: float = DEFAULT_DRAIN_GRACE_S,
    restart_foreground: bool = False,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    self_pid: int | None = None,
) -> DrainProxy:
    """Starts a DrainActor for the tuning `port` and returns its typed proxy.

    `env` is where `launchctl` / `systemctl` are looked up and what they run with (the
    process's own by default); `home` locates the launchd plist; `self_pid` is the
    process (with its ancestors) never to report, this one by default.
    """
    ref = DrainActor.start(
        port,
        names=names,
        drain_grace_s=drain_grace_s,
        restart_foreground=restart_foreground,
        env=env,
        home=home,
        self_pid=self_pid,
    )
    return cast(DrainProxy, ref.proxy())
