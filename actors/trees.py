"""The supervised trees of `autotune` and `run`: which actors, in what order, and what each
does with the run's outcome just before it stops.

The Supervisor starts the children in list order and stops them in reverse, running each
one's finalizer just before its stop. The command line, the test rig and the interrupt
harness all build their trees here, so the shutdown order the tests exercise is the one
that runs; what differs between them (the serve command, the providers' environment, the
paths, the probe and prewarm doubles, the work child) comes in as parameters.

autotune: Drain, Store, Provider, Prewarm, Probe, Tuner. On Ctrl-C the tuner winds down
first (its in-flight trial recorded, its provider stopped) while everything it needs is
still there; the Store then closes a run the tuner could not close (a crash), and the
DB closes; the Drain, first started, restores a drained service last, once nothing of ours
holds the port.

run: Provider, Keeper. The keeper stops first, so nothing restarts the provider while the
Supervisor stops it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pykka

from macprovider.actors.autotune_inputs import DEFAULT_RETAIN_RUNS, TuneSettings
from macprovider.actors.drain import DrainProxy, start_drain_actor
from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.keeper import KeeperProxy, Target, start_keeper
from macprovider.actors.machine import SPEC_VERSION, describe_machine
from macprovider.actors.messages import RestoreReport, RunOutcome
from macprovider.actors.prewarm import PrewarmProxy, start_prewarm_actor
from macprovider.actors.probe import ProbeProxy, start_probe_actor
from macprovider.actors.provider import ProcessGroups, ProviderProxy, start_provider_actor
from macprovider.actors.runtime import supervise
from macprovider.actors.store_actor import StoreProxy, start_store_actor
from macprovider.actors.store_records import RunStart
from macprovider.actors.supervisor import ChildSpec, SupervisorProxy
from macprovider.actors.tune_events import TuneListener, TuneSummary
from macprovider.actors.tuner import Peers, Tuner
from macprovider.actors.tuner_actor import start_tuner
from macprovider.server.places import MODELS_DIR_ENV

ENV_PREFIX = "MACPROVIDER_"
STORE_CALL_TIMEOUT_S = 30.0
RESTORE_TIMEOUT_S = 120.0

StartPrewarm = Callable[[ProviderProxy, threading.Event], PrewarmProxy]
StartProbe = Callable[[SupervisorProxy, ProviderProxy, threading.Event], ProbeProxy]
# The last child, the one that does the run's work over its peers (the Tuner by default).
StartWork = Callable[[SupervisorProxy, Peers], pykka.ActorRef[Any]]
BeforeRestore = Callable[[str], None]


# --- autotune ---------------------------------------------------------------------------------


def new_run_id(now: datetime) -> str:
    """Sortable and readable, unique enough for one machine's DB."""
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def run_start(settings: TuneSettings, now: datetime) -> RunStart:
    """The run row an autotune of `settings` on this machine writes first."""
    machine = describe_machine()
    return RunStart(
        run_id=new_run_id(now),
        started_at=now,
        spec_version=SPEC_VERSION,
        binary_version=machine.binary_version,
        machine_ram_gb=machine.ram_gb,
        machine_chip=machine.chip,
        machine_os_version=machine.os_version,
        target_context=settings.target_context,
        candidate_models=settings.candidates,
        stage1_replicates=settings.stage1_replicates,
        stage2_replicates=settings.stage2_replicates,
        gate_ttft_ms=settings.gate_ttft_ms,
        tps_tie_epsilon=settings.tps_tie_epsilon,
    )


def provider_env(env: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    """The environment of autotune's providers, which are configured by their flags alone:
    the operator's MACPROVIDER_* environment and config file are hidden from them, so that
    a cell's `unset` kv-bits really is an unquantized cache, and a configured host or API
    key cannot get in the way of the probe's loopback requests. The models folder is a place,
    not a knob: it stays, so a candidate named by its models-folder name loads there too."""
    isolated = {
        key: value
        for key, value in env.items()
        if not key.startswith(ENV_PREFIX) or key == MODELS_DIR_ENV
    }
    # A config home that does not exist: the provider reads no config file at all.
    isolated["XDG_CONFIG_HOME"] = str(state_dir / "no-config")
    return isolated


@dataclass(frozen=True)
class AutotuneJob:
    """One autotune run as its tree runs it: what it tunes, its run row, where it writes,
    and how its providers start (`serve_command` None: this package's own `serve`)."""

    settings: TuneSettings
    run: RunStart
    db_path: Path
    state_dir: Path
    provider_env: Mapping[str, str]
    retain_runs: int = DEFAULT_RETAIN_RUNS
    restart_foreground: bool = False
    serve_command: Sequence[str] | None = None


def _start_prewarm(provider: ProviderProxy, cancel: threading.Event) -> PrewarmProxy:
    return start_prewarm_actor(provider=provider, cancel=cancel)


def _start_probe(_: SupervisorProxy, __: ProviderProxy, cancel: threading.Event) -> ProbeProxy:
    return start_probe_actor(cancel)


@dataclass(frozen=True)
class AutotuneParts:
    """The children a test replaces with doubles; the real ones by default. `work` None is
    the Tuner, on `clock`."""

    prewarm: StartPrewarm = _start_prewarm
    probe: StartProbe = _start_probe
    work: StartWork | None = None
    clock: Callable[[], float] = time.monotonic


@dataclass
class AutotuneTree:
    """The autotune children, and what they leave behind once the Supervisor finished:
    the tuner's summary (None when the tuner itself failed), what the restore of a drained
    provider did, and an error of `before_restore`."""

    children: tuple[ChildSpec, ...]
    groups: ProcessGroups
    cancel: threading.Event
    actors: dict[str, Any]  # the peers' proxies by child name, as each started
    summary: TuneSummary | None = None
    restore: RestoreReport | None = None
    before_restore_error: Exception | None = None


def autotune_tree(
    job: AutotuneJob,
    *,
    listener: TuneListener | None = None,
    before_restore: BeforeRestore | None = None,
    on_summary: Callable[[TuneSummary], None] | None = None,
    parts: AutotuneParts = AutotuneParts(),
) -> AutotuneTree:
    """The autotune tree of `job`. `before_restore(run_id)` runs once the tuner, providers and
    DB are stopped and just before a drained provider is restored, so that `--apply` writes
    the config the restored service then reads; `on_summary` hears the tuner's summary as
    it reports it."""
    groups = ProcessGroups()
    actors: dict[str, Any] = {}
    tree = AutotuneTree((), groups, threading.Event(), actors)

    def start(name: str, proxy: Any) -> pykka.ActorRef[Any]:
        actors[name] = proxy
        ref: pykka.ActorRef[Any] = proxy.actor_ref
        return ref

    def drain(_: SupervisorProxy) -> pykka.ActorRef[Any]:
        proxy = start_drain_actor(
            job.settings.port,
            drain_grace_s=job.settings.drain_grace_s,
            restart_foreground=job.restart_foreground,
        )
        return start("drain", proxy)

    def restore_drained(_: RunOutcome) -> None:
        if before_restore is not None:
            try:
                before_restore(job.run.run_id)
            except Exception as error:  # reported by the caller; the restore must still run
                tree.before_restore_error = error
        proxy: DrainProxy = actors["drain"]
        tree.restore = proxy.restore().get(timeout=RESTORE_TIMEOUT_S)

    def provider(_: SupervisorProxy) -> pykka.ActorRef[Any]:
        env = job.provider_env
        proxy = start_provider_actor(
            job.state_dir, serve_command=job.serve_command, env=env, groups=groups
        )
        return start("provider", proxy)

    def reported(summary: TuneSummary) -> None:
        tree.summary = summary
        if on_summary is not None:
            on_summary(summary)

    def work(supervisor: SupervisorProxy) -> pykka.ActorRef[Any]:
        names = ("store", "prewarm", "provider", "probe", "drain")
        peers = Peers(*(actors[name] for name in names))
        if parts.work is not None:
            return parts.work(supervisor, peers)
        tuner = Tuner(job.settings, job.run, peers, tree.cancel, listener, parts.clock)
        return start_tuner(tuner, supervisor, reported)

    tree.children = (
        ChildSpec("drain", drain, finalize=restore_drained),
        ChildSpec(
            "store",
            lambda _: start("store", start_store_actor(job.db_path, retain_runs=job.retain_runs)),
            finalize=lambda outcome: _close_open_run(actors["store"], job.run.run_id, outcome),
        ),
        ChildSpec("provider", provider),
        ChildSpec(
            "prewarm",
            lambda _: start("prewarm", parts.prewarm(actors["provider"], tree.cancel)),
        ),
        ChildSpec(
            "probe",
            lambda supervisor: start(
                "probe", parts.probe(supervisor, actors["provider"], tree.cancel)
            ),
        ),
        ChildSpec("tuner", work, finalize=lambda _: tree.cancel.set()),
    )
    return tree


def _close_open_run(store: StoreProxy, run_id: str, outcome: RunOutcome) -> None:
    """The tuner closes its run; this only catches a run it could not close (a crash)."""
    reason = ExitReason(outcome.reason) if outcome.reason in set(ExitReason) else None
    closing = store.close_if_open(
        run_id, reason or ExitReason.INTERNAL_ERROR, ended_at=datetime.now(UTC)
    )
    closing.get(timeout=STORE_CALL_TIMEOUT_S)


@dataclass(frozen=True)
class TuneResult:
    """How a run ended: the Supervisor's outcome, the tuner's summary (None when the tuner
    itself failed), the run row's start, what the restore of a drained provider did, and an
    error of the step run just before that restore (`--apply`)."""

    outcome: RunOutcome
    summary: TuneSummary | None
    run: RunStart
    restore: RestoreReport | None
    before_restore_error: Exception | None


def tune(
    job: AutotuneJob,
    *,
    listener: TuneListener | None = None,
    before_restore: BeforeRestore | None = None,
    parts: AutotuneParts = AutotuneParts(),
) -> TuneResult:
    """Runs the autotune tree under a Supervisor on this (the main) thread until it ends; a
    first SIGINT/SIGTERM ends it as `interrupted`."""
    tree = autotune_tree(job, listener=listener, before_restore=before_restore, parts=parts)
    outcome = supervise(tree.children, tree.groups, stop_reason=ExitReason.INTERRUPTED.value)
    return TuneResult(outcome, tree.summary, job.run, tree.restore, tree.before_restore_error)


# --- run --------------------------------------------------------------------------------------


@dataclass
class RunTree:
    """The `run` children, and the SIGHUP reload they answer."""

    children: tuple[ChildSpec, ...]
    groups: ProcessGroups
    actors: dict[str, Any]

    def reload(self) -> None:
        """Asks the keeper to re-read its target; before the keeper started, nothing to do."""
        keeper: KeeperProxy | None = self.actors.get("keeper")
        if keeper is not None:
            keeper.reload()


def run_tree(
    first: Target,
    load_target: Callable[[], Target],
    state_dir: Path,
    env: Mapping[str, str],
    serve_command: Sequence[str] | None = None,
) -> RunTree:
    """Keeps `first` alive, then whatever `load_target()` returns on each reload; every
    provider runs `serve_command` (None: this package's `serve`) with `env`."""
    groups = ProcessGroups()
    actors: dict[str, Any] = {}

    def provider(_: SupervisorProxy) -> pykka.ActorRef[Any]:
        proxy = start_provider_actor(state_dir, serve_command=serve_command, env=env, groups=groups)
        actors["provider"] = proxy
        return proxy.actor_ref

    def keeper(supervisor: SupervisorProxy) -> pykka.ActorRef[Any]:
        targets = iter([first])  # the first target is known good; later ones are reloads
        proxy = start_keeper(
            actors["provider"], supervisor, lambda: next(targets, None) or load_target()
        )
        actors["keeper"] = proxy
        return proxy.actor_ref

    children = (ChildSpec("provider", provider), ChildSpec("keeper", keeper))
    return RunTree(children, groups, actors)


def keep_running(
    first: Target, load_target: Callable[[], Target], state_dir: Path, env: Mapping[str, str]
) -> RunOutcome:
    """Runs the `run` tree under a Supervisor on this (the main) thread until it ends: a
    SIGHUP reloads, a first SIGINT/SIGTERM stops it."""
    tree = run_tree(first, load_target, state_dir, env)
    return supervise(tree.children, tree.groups, on_reload=tree.reload)
