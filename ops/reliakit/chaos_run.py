"""One chaos iteration for real: a fresh folder (HOME, XDG_CONFIG_HOME, XDG_STATE_HOME, the DB,
the fake service managers), the command started in its own session, the signals sent at the
planned moments, then everything `chaos_checks` needs, collected.

`calibrate` runs a scenario once without a signal (`run`, which never ends by itself: until
its provider answers, then SIGTERM) to measure the natural duration the moments are drawn
against; `Natural.seen` refines it with every iteration that ended before its signal.

The commands run as `<interpreter> -m macprovider.cli` (what the console script runs), the
interpreter being this venv's Python under a name of its own (`private_interpreter`): a
provider of ours is then no `python … macprovider.cli serve` to another session's
`autotune`, which would refuse to tune beside it (exit 69) or, with `--drain`, stop it.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import httpx
import psutil

from benchkit.contenders import free_port
from reliakit import chaos_procs as procs
from reliakit.chaos_checks import LEFTOVER_BOUND_S, SIGNUMS, ConfigFacts, Facts, Sent
from reliakit.chaos_facts import BACKUP, config_facts, db_facts, service_facts
from reliakit.chaos_plan import CONFIG_TEMPLATES, Plan, Scenario, Sig, delay_s
from tests.actors.fake_services import STANDIN_BODY, FakeServices, write_program

LABEL: Final = "live.streamvc.macprovider"
UNIT: Final = "macprovider.service"
EXIT_BOUND_S: Final = {True: 60.0, False: 30.0}  # keyed by "is autotune"
CALIBRATION_BOUND_S: Final = 240.0
READY_BOUND_S: Final = 60.0
RUN_STEADY_S: Final = 2.0  # `run`'s "natural duration": until ready, then this long serving
WATCH_S: Final = 3.0  # how long a slow death is followed past the exit, to measure it
TICK_S: Final = 0.005
TEMP: Final = re.compile(r"\.tmp$")

# Small and fast: `small` cannot fit under the memory limit (exit 65 during load), `tiny`
# can; two Stage 2 cells. About 8 s on a 2-core machine.
MEMORY_LIMIT_GB: Final = "0.008"


def tuning_args(models: Path) -> list[str]:
    return [
        "--candidate-models",
        f"{models / 'small'},{models / 'tiny'}",
        "--target-context",
        "64",
        "--probe-max-tokens",
        "8",
        "--stage2-replicates",
        "1",
        "--kv-bits-axis",
        "unset,8",
        "--max-batch-axis",
        "1",
        "--provider-memory-limit-gb",
        MEMORY_LIMIT_GB,
    ]


def run_config(models: Path) -> str:
    return f"# what `run` serves\nmodel: {models / 'tiny'}\nmax_queue: 8\n"


def private_interpreter(folder: Path) -> str:
    """This venv's Python under another name, in `folder` (see the module docstring); this
    very interpreter where there is no venv to mirror."""
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix) or not (venv / "pyvenv.cfg").exists():
        return sys.executable
    shadow = folder / "interpreter"
    (shadow / "bin").mkdir(parents=True)
    shutil.copy(venv / "pyvenv.cfg", shadow / "pyvenv.cfg")  # makes `shadow` the venv's twin
    for name in ("lib", "lib64"):
        if (venv / name).exists():
            (shadow / name).symlink_to(venv / name)
    python = shadow / "bin" / "chaos-interpreter"
    python.symlink_to(sys.executable)
    return str(python)


@dataclass(frozen=True)
class Setting:
    """What every iteration shares: the fixture models, the folder the iterations' folders
    go in, the interpreter the commands run with."""

    models: Path
    parent: Path
    interpreter: str

    def supervise(self) -> list[str]:
        return [self.interpreter, "-m", "macprovider.cli"]


@dataclass(frozen=True)
class Natural:
    """How a scenario runs when left alone: the median of the durations seen so far."""

    durations: tuple[float, ...]
    code: int

    @property
    def duration_s(self) -> float:
        return statistics.median(self.durations)

    def seen(self, duration_s: float) -> Natural:
        return replace(self, durations=(*self.durations, duration_s))


@dataclass(frozen=True)
class Outcome:
    facts: Facts
    delay_s: float | None  # the first signal's planned moment; None: calibration
    duration_s: float  # start to exit
    ready_s: float | None  # `run`: until its provider answered
    folder: Path


@dataclass(frozen=True)
class Workspace:
    root: Path
    port: int

    @property
    def config(self) -> Path:
        return self.root / "config" / "macprovider" / "config.yaml"

    @property
    def db(self) -> Path:
        return self.root / "db" / "autotune.sqlite"

    def env(self, fakes: FakeServices | None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MACPROVIDER_")}
        base.update(
            HOME=str(self.root / "home"),
            XDG_CONFIG_HOME=str(self.root / "config"),
            XDG_STATE_HOME=str(self.root / "state"),
        )
        return fakes.env(base) if fakes is not None else base


def command(plan: Plan, ws: Workspace, setting: Setting) -> list[str]:
    port = ["--port", str(ws.port)]
    if plan.scenario is Scenario.RUN:
        return [*setting.supervise(), "run", *port]
    db = ["--db-path", str(ws.db)]
    argv = [*setting.supervise(), "autotune", *db, *port, *tuning_args(setting.models)]
    if plan.apply:
        argv += ["--apply", *(["--config", str(ws.config)] if plan.config_flag else [])]
    if plan.scenario is Scenario.DRAIN:
        argv += ["--drain", "--drain-grace", "5"]
    return argv


class Iteration:
    """The command of one plan, its fakes and its folder; `go()` runs it once."""

    def __init__(self, plan: Plan, natural: Natural | None, setting: Setting, label: str) -> None:
        self.plan = plan
        self.natural = natural  # None: this run is the calibration
        self.setting = setting
        root = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=setting.parent))
        self.ws = Workspace(root, free_port())
        autotune = plan.scenario.is_autotune
        self.fakes = FakeServices(root / "services") if autotune else None
        self.env = self.ws.env(self.fakes)
        text = CONFIG_TEMPLATES[plan.config] if autotune else run_config(setting.models)
        self.ws.config.parent.mkdir(parents=True)
        self.original = text.encode()
        self.ws.config.write_bytes(self.original)
        self.argv = command(plan, self.ws, setting)
        self.service: subprocess.Popen[bytes] | None = None

    def go(self) -> Outcome:
        if self.plan.scenario is Scenario.DRAIN:
            self._start_service()
        try:
            return self._run()
        finally:
            self._stop_service()
            procs.reap_orphans()

    def _start_service(self) -> None:
        """A provider already live on the port, under a fake launchd job or systemd unit."""
        assert self.fakes is not None
        program = write_program(self.ws.root / "service", "macprovider-supervise", STANDIN_BODY)
        port = str(self.ws.port)
        argv = [self.setting.interpreter, str(program), "serve", "--port", port, "--model", "svc"]
        log = (self.ws.root / "service.log").open("wb")
        self.service = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + READY_BOUND_S
        while procs.port_free(self.ws.port):
            if self.service.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fake service did not listen; see {log.name}")
            time.sleep(0.02)
        pid = self.service.pid
        if self.plan.service == "systemd":
            self.fakes.add_systemd_unit(UNIT, main_pid=pid)
        else:
            plist = self.ws.root / "home" / "Library" / "LaunchAgents" / f"{LABEL}.plist"
            self.fakes.add_launchd_job(LABEL, plist, pid=pid)

    def _stop_service(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.kill()
        if self.service is not None:
            self.service.wait()

    def _run(self) -> Outcome:
        out = (self.ws.root / "stdout.txt").open("wb")
        err = (self.ws.root / "stderr.txt").open("wb")
        started = time.monotonic()
        proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=out,
            stderr=err,
            cwd=self.ws.root,
            start_new_session=True,
        )
        try:
            return self._drive(proc, started)
        finally:
            if proc.poll() is None:
                procs.send(proc.pid, SIGNUMS[Sig.KILL], group=True)
                proc.wait()
            out.close()
            err.close()

    def _drive(self, proc: subprocess.Popen[bytes], started: float) -> Outcome:
        is_run = self.plan.scenario is Scenario.RUN
        planned = None if self.natural is None else delay_s(self.plan, self.natural.duration_s)
        if self.plan.apply_mark is not None and planned is not None:
            planned = self._wait_for_apply(proc, started)
        ready_s = self._wait(proc, started, planned, probe=is_run, until_ready=planned is None)
        sent: list[Sent] = []
        snapshot: list[psutil.Process] = []
        providers: set[int] = set()
        if planned is not None or is_run:
            snapshot = self._ours()
            providers = {p.pid for p in snapshot if procs.is_provider(p)}
            self._shoot(proc, started, self.plan.signal, sent)
            if self.plan.second is not None and sent:
                self._wait(proc, time.monotonic(), self.plan.gap_s)
                self._shoot(proc, started, self.plan.second, sent)
        first_at = started + sent[0].at_s if sent else started
        killed = any(s.signal is Sig.KILL for s in sent)
        bound = EXIT_BOUND_S[not is_run] if self.natural is not None else CALIBRATION_BOUND_S
        code, exited = self._wait_exit(proc, first_at, bound)
        since = started + next(s.at_s for s in sent if s.signal is Sig.KILL) if killed else exited
        deaths = procs.watch_deaths(
            {p.pid: p for p in [*snapshot, *self._ours()]}.values(),
            providers,
            since,
            LEFTOVER_BOUND_S,
            WATCH_S,
        )
        procs.kill_all(self._ours())  # whatever outlived its bound must not spoil the next
        self._stop_service()  # not drained (or not yet): it still holds the port, rightly
        integrity, runs = db_facts(self.ws.db)
        facts = Facts(
            natural_code=self.natural.code if self.natural else 0,
            exit_code=code,
            exit_s=None if code is None else exited - first_at,
            exit_bound_s=bound,
            sent=tuple(sent),
            provider_seen=bool(providers),
            leftovers=tuple(procs.describe(p) for p in deaths.leftovers),
            death_s=deaths.last_s,
            provider_death_s=deaths.provider_s if killed else None,
            port_free=procs.port_freed_within(self.ws.port, LEFTOVER_BOUND_S),
            integrity=integrity,
            runs=runs,
            config=self._config(),
            service=service_facts(self.fakes, self.plan.service)
            if self.fakes is not None and self.plan.scenario is Scenario.DRAIN
            else None,
            stderr=(self.ws.root / "stderr.txt").read_text(errors="replace"),
        )
        return Outcome(facts, planned, exited - started, ready_s, self.ws.root)

    def _config(self) -> ConfigFacts:
        return config_facts(self.ws.config, self.original)

    def _ours(self) -> list[psutil.Process]:
        service = [self.service.pid] if self.service is not None else []
        return procs.ours(self.ws.root, self.ws.port, exclude=service)

    def _wait(
        self,
        proc: subprocess.Popen[bytes],
        since: float,
        delay: float | None,
        *,
        probe: bool = False,
        until_ready: bool = False,
    ) -> float | None:
        """Until `delay` seconds after `since` (or, `until_ready`, until the port answers), or
        the exit; with `probe`, returns when the provider first answered."""
        ready_s = None
        deadline = since + (delay if delay is not None else READY_BOUND_S)
        next_probe = since
        while proc.poll() is None and time.monotonic() < deadline:
            now = time.monotonic()
            if probe and ready_s is None and now >= next_probe:
                next_probe = now + 0.1
                if _answers(self.ws.port):
                    ready_s = time.monotonic() - since
                    if until_ready:
                        break
            time.sleep(TICK_S)
        return ready_s

    def _wait_for_apply(self, proc: subprocess.Popen[bytes], started: float) -> float:
        """Until `--apply` creates the plan's mark beside the config (its backup, or the new
        file under a temporary name), or the exit; the seconds from the start to then."""
        mark = BACKUP if self.plan.apply_mark == "backup" else TEMP
        watch = procs.Creations(self.ws.config.parent)
        deadline = started + CALIBRATION_BOUND_S
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if any(mark.search(name) for name in watch.wait(0.05)):
                    break
        finally:
            watch.close()
        return time.monotonic() - started

    def _shoot(
        self, proc: subprocess.Popen[bytes], started: float, signal: Sig, sent: list[Sent]
    ) -> None:
        if proc.poll() is not None:
            return
        signum = SIGNUMS[signal]
        caught = procs.handles(proc.pid, signum)
        moment, wall = time.monotonic(), datetime.now(UTC)
        if procs.send(proc.pid, signum, group=self.plan.target == "group"):
            sent.append(Sent(signal, moment - started, wall, caught))

    def _wait_exit(
        self, proc: subprocess.Popen[bytes], since: float, bound: float
    ) -> tuple[int | None, float]:
        """The exit code (None past the bound) and the monotonic moment of the exit."""
        while proc.poll() is None:
            if time.monotonic() - since > bound:
                return None, time.monotonic()
            time.sleep(TICK_S)
        return proc.returncode, time.monotonic()


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=0.2).status_code == 200
    except httpx.HTTPError:
        return False


def run_plan(plan: Plan, natural: Natural, setting: Setting) -> Outcome:
    return Iteration(plan, natural, setting, f"chaos-{plan.index}").go()


def natural_duration(plan: Plan, outcome: Outcome) -> float | None:
    """How long the scenario ran by itself in `outcome`, when it shows: `run` until it
    served (plus its steady share), `autotune` when it ended before any signal."""
    if plan.scenario is Scenario.RUN:
        return None if outcome.ready_s is None else outcome.ready_s + RUN_STEADY_S
    return outcome.duration_s if not outcome.facts.sent else None


def calibrate(plan: Plan, setting: Setting) -> tuple[Natural, Outcome]:
    """The scenario of `plan` left alone (`run`: SIGTERM once it serves); its natural
    duration and exit code."""
    if plan.scenario is Scenario.RUN:
        plan = replace(plan, signal=Sig.TERM, second=None, target="pid")
    outcome = Iteration(plan, None, setting, f"calibrate-{plan.scenario.value}").go()
    code = outcome.facts.exit_code
    if plan.scenario is Scenario.RUN:
        return Natural((natural_duration(plan, outcome) or READY_BOUND_S,), 0), outcome
    return Natural((outcome.duration_s,), 0 if code is None else code), outcome
