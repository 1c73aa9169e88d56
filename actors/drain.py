"""DrainActor: find a provider that is already live, stop it for the run, start it again
afterwards.

Four kinds of finding, looked for in this order:

- launchd (macOS): the label's line in `launchctl list`, confirmed by `launchctl print`;
- systemd: `systemctl --user is-active <unit>` says the unit is live (`service_manager`
  says which states are);
- foreground: a `macprovider-supervise` (or legacy `macprovider-cli`) process whose
  subcommand is `serve`, or `run` (which keeps a `serve` alive), never the calling
  process (`self_pid`) or its ancestors (`drain_scan`);
- port: anything else listening on 127.0.0.1:<port>. Draining refuses it before stopping
  anything.

The finding keeps a foreground process's real argv, which its restart needs; it is shown
only redacted (`drain_decisions.shown_argv`).

Never SIGKILL: every process stopped here belongs to the operator. Restore runs once,
whatever happened; `on_stop` (and `on_failure`) are the backstop. The decisions live in
`drain_decisions` and `service_manager`; the actor runs the tools, signals and waits.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, cast

import psutil
import pykka
from pykka.typing import ActorMemberMixin, proxy_method

from macprovider.actors import service_manager as manager
from macprovider.actors.autotune_inputs import DEFAULT_DRAIN_GRACE_S
from macprovider.actors.drain_decisions import (
    manual_restore_command,
    manual_stop_command,
    one_line,
    service_platform,
)
from macprovider.actors.drain_scan import (
    alive,
    cmdline,
    foreground_findings,
    port_finding,
    process,
)
from macprovider.actors.errors import ActorError
from macprovider.actors.messages import Drained, DrainFailed, Finding, RestoreReport
from macprovider.actors.provider import port_is_free
from macprovider.actors.service_calls import run_tool
from macprovider.actors.service_manager import DEFAULT_NAMES, ServiceNames
from macprovider.server.parent_guard import PARENT_FD_ENV

__all__ = ["DrainActor", "DrainProxy", "DrainRefused", "start_drain_actor"]

log = logging.getLogger("macprovider.actors.drain")

_POLL_S: Final = 0.05  # while waiting for drained processes and the port

_Outcome = Literal["restored", "failed", "not_restarted"]


class DrainRefused(ActorError):
    """`drain` was called again, or after `restore`: one drain, one restore per actor."""

    def __init__(self) -> None:
        super().__init__("this DrainActor already drained or restored; start a new one")


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
        foreground = foreground_findings(self._self_pid, {f.pid for f in services if f.pid})
        port = port_finding(self._port, [*services, *foreground])
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
            proc = process(finding.pid)  # before the stop: a reused PID is then told apart
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
        lines: dict[_Outcome, list[str]] = {"restored": [], "failed": [], "not_restarted": []}
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

    def _call(self, argv: list[str]) -> manager.ToolResult:
        return run_tool(argv, self._env)

    def _detect_launchd(self) -> Finding | None:
        label = self._names.launchd_label
        listed = self._call(manager.launchd_list())
        entry = manager.parse_launchctl_list(listed.stdout, label) if listed.ok else None
        if entry is None:
            return None
        printed = self._call(manager.query("macos", label, uid=self._uid))
        if not manager.service_state("macos", printed).live:
            # Listed but not in our GUI domain: nothing we could boot out.
            log.info("launchd job %s listed but `launchctl print` says %s", label, printed.problem)
            return None
        self._plist = manager.plist_path_from_print(printed.stdout)
        state = f"PID {entry.pid}" if entry.pid else "loaded, not running"
        detail = f"launchd job {label} ({state})"
        return Finding("launchd", "launchd-managed", detail, pid=entry.pid, service=label)

    def _detect_systemd(self) -> Finding | None:
        unit = self._names.systemd_unit
        asked = self._call(manager.query("linux", unit, uid=self._uid))
        state = manager.service_state("linux", asked)
        if not state.live:
            return None
        main_pid = manager.main_pid_from_show(self._call(manager.systemd_main_pid(unit)))
        running = f", main PID {main_pid}" if main_pid else ""
        detail = f"systemd user unit {unit} ({state.text}{running})"
        return Finding("systemd", "systemd-managed", detail, pid=main_pid, service=unit)

    # --- drain ---

    def _ask_to_stop(self, finding: Finding, proc: psutil.Process | None) -> str | None:
        """Asks one finding to stop; the reason on failure. Stopped ones are recorded."""
        if finding.kind == "foreground":
            return self._terminate(finding, proc)
        platform = service_platform(finding)
        result = self._call(manager.stop(platform, str(finding.service), uid=self._uid))
        manual = manual_stop_command(finding, uid=self._uid, port=self._port)
        if not result.ok:
            problem = one_line(result.problem)
            return f"{finding.name}: `{manual}` failed ({problem}); stop it yourself"
        log.info("stopped %s: %s", finding.name, manual)
        self._stopped.append(finding)
        return None

    def _terminate(self, finding: Finding, proc: psutil.Process | None) -> str | None:
        if proc is None or not alive(proc) or tuple(cmdline(proc)) != finding.argv:
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
            still = [finding for finding, proc in watched if alive(proc)]
            port_free = port_is_free(self._port)
            if not still and port_free:
                return None
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL_S)
        grace = f"{self._grace:g} s"
        if still:
            # A process still running was not stopped: restoring it would start a second one.
            self._stopped = [f for f in self._stopped if f.kind != "foreground" or f not in still]
            names = ", ".join(finding.name for finding in still)
            return (
                f"{names} still running {grace} after being asked to stop; left running"
                " (a process we did not start is never SIGKILLed): stop it yourself"
            )
        return f"port {self._port} still in use {grace} after draining; stop what holds it"

    def _fail(self, reason: str) -> DrainFailed:
        log.error("drain failed: %s", reason)
        return DrainFailed(reason, self.restore())

    # --- restore ---

    def _plist_path(self) -> Path:
        return self._plist or self._names.launchd_plist(self._home)

    def _restore_one(self, finding: Finding) -> tuple[_Outcome, str]:
        if finding.kind == "foreground":
            return self._restart(finding)
        platform = service_platform(finding)
        argv = manager.start(
            platform, str(finding.service), uid=self._uid, plist=self._plist_path()
        )
        result = self._call(argv)
        if not result.ok:
            return "failed", self._failed_line(finding, one_line(result.problem))
        return "restored", f"{finding.name}: {shlex.join(argv)}"

    def _restart(self, finding: Finding) -> tuple[_Outcome, str]:
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
