"""`macprovider-supervise autotune`: the actors of DESIGN §3 under one Supervisor.

Children start in this order and stop in the reverse one: Store, Provider, Prewarm, Probe,
Tuner. So on Ctrl-C the tuner winds down first (its in-flight trial recorded, its provider
stopped) while everything it needs is still there, and the DB closes last.

The providers autotune starts are configured by their flags alone: the operator's
MACPROVIDER_* environment and config file are hidden from them, so that a cell's `unset`
kv-bits really is an unquantized cache, and a configured host or API key cannot get in the
way of the probe's loopback requests.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pykka

from macprovider.actors.autotune_inputs import (
    TuneSettings,
    parse_candidate_models,
    parse_kv_bits_axis,
    parse_max_batch_axis,
    parse_max_context_axis,
    resolve_candidates,
)
from macprovider.actors.drain import start_drain_actor
from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.machine import SPEC_VERSION, describe_machine
from macprovider.actors.messages import RestoreReport, RunOutcome
from macprovider.actors.prewarm import start_prewarm_actor
from macprovider.actors.probe import start_probe_actor
from macprovider.actors.provider import ProcessGroups, start_provider_actor
from macprovider.actors.runtime import supervise
from macprovider.actors.store import RunStart, StoreProxy, start_store_actor
from macprovider.actors.supervisor import ChildSpec, SupervisorProxy
from macprovider.actors.tuner import Peers, TuneListener, Tuner, TuneSummary, start_tuner
from macprovider.server.config import config_dir

ENV_PREFIX = "MACPROVIDER_"
STORE_CALL_TIMEOUT_S = 30.0
RESTORE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class AutotuneRun:
    """How one `autotune` invocation runs, beside what it tunes."""

    settings: TuneSettings
    db_path: Path
    retain_runs: int
    state_dir: Path
    restart_foreground: bool = False


def new_run_id(now: datetime) -> str:
    """Sortable and readable, unique enough for one machine's DB."""
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def run_start(settings: TuneSettings, now: datetime) -> RunStart:
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
    """The environment of autotune's providers: see the module docstring."""
    isolated = {key: value for key, value in env.items() if not key.startswith(ENV_PREFIX)}
    # A config home that does not exist: the provider reads no config file at all.
    isolated["XDG_CONFIG_HOME"] = str(state_dir / "no-config")
    return isolated


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


BeforeRestore = Callable[[str], None]


def tune(job: AutotuneRun, listener: TuneListener, before_restore: BeforeRestore) -> TuneResult:
    """Runs the whole autotune under a Supervisor. `before_restore(run_id)` runs once the
    tuner, providers and DB are stopped and just before a drained provider is restored, so
    that `--apply` writes the config the restored service then reads."""
    run = run_start(job.settings, datetime.now(UTC))
    cancel = threading.Event()
    groups = ProcessGroups()
    summaries: list[TuneSummary] = []
    restores: list[RestoreReport] = []
    errors: list[Exception] = []
    actors: dict[str, Any] = {}

    def start(name: str, proxy: Any) -> pykka.ActorRef[Any]:
        actors[name] = proxy
        ref: pykka.ActorRef[Any] = proxy.actor_ref
        return ref

    def tuner(supervisor: SupervisorProxy) -> pykka.ActorRef[Any]:
        names = ("store", "prewarm", "provider", "probe", "drain")
        peers = Peers(*(actors[name] for name in names))
        return start_tuner(
            Tuner(job.settings, run, peers, cancel, listener), supervisor, summaries.append
        )

    def restore_drained(_: RunOutcome) -> None:
        try:
            before_restore(run.run_id)
        except Exception as error:  # reported by the caller; the restore must still run
            errors.append(error)
        restores.append(actors["drain"].restore().get(timeout=RESTORE_TIMEOUT_S))

    def drain(_: SupervisorProxy) -> pykka.ActorRef[Any]:
        settings = job.settings
        proxy = start_drain_actor(
            settings.port,
            drain_grace_s=settings.drain_grace_s,
            restart_foreground=job.restart_foreground,
        )
        return start("drain", proxy)

    children = [
        # First started, last stopped: the restore comes after everything else has ended.
        ChildSpec("drain", drain, finalize=restore_drained),
        ChildSpec(
            "store",
            lambda _: start("store", start_store_actor(job.db_path, retain_runs=job.retain_runs)),
            finalize=lambda outcome: _close_open_run(actors["store"], run.run_id, outcome),
        ),
        ChildSpec(
            "provider",
            lambda _: start(
                "provider",
                start_provider_actor(
                    job.state_dir,
                    env=provider_env(os.environ, job.state_dir),
                    groups=groups,
                ),
            ),
        ),
        ChildSpec(
            "prewarm",
            lambda _: start(
                "prewarm", start_prewarm_actor(provider=actors["provider"], cancel=cancel)
            ),
        ),
        ChildSpec("probe", lambda _: start("probe", start_probe_actor(cancel))),
        ChildSpec("tuner", tuner, finalize=lambda _: cancel.set()),
    ]
    outcome = supervise(children, groups, stop_reason=ExitReason.INTERRUPTED.value)
    summary = summaries[0] if summaries else None
    restore = restores[0] if restores else None
    return TuneResult(outcome, summary, run, restore, errors[0] if errors else None)


def _close_open_run(store: StoreProxy, run_id: str, outcome: RunOutcome) -> None:
    """The tuner closes its run; this only catches a run it could not close (a crash)."""
    reason = ExitReason(outcome.reason) if outcome.reason in set(ExitReason) else None
    closing = store.close_if_open(
        run_id, reason or ExitReason.INTERNAL_ERROR, ended_at=datetime.now(UTC)
    )
    closing.get(timeout=STORE_CALL_TIMEOUT_S)


def default_db_path(env: Mapping[str, str]) -> Path:
    """`autotune.sqlite` beside the config (DESIGN §5), by the rule `serve` finds it with."""
    folder, _ = config_dir(env)
    return folder / "autotune.sqlite"


def settings_from_options(options: Mapping[str, Any]) -> tuple[TuneSettings, tuple[str, ...]]:
    """The checked settings from the command line, and warnings to print; raises
    AutotuneInputError (config_error) before anything starts or is written."""
    target = options["target_context"]
    explicit = options["candidate_models"]
    candidates = resolve_candidates(
        None if explicit is None else parse_candidate_models(explicit),
        options["max_model_size"],
        options["min_model_size"],
    )
    settings = TuneSettings(
        candidates=candidates.models,
        target_context=target,
        kv_bits_axis=parse_kv_bits_axis(options["kv_bits_axis"]),
        max_batch_axis=parse_max_batch_axis(options["max_batch_axis"]),
        max_context_axis=parse_max_context_axis(
            options["max_context_axis"], target, options["probe_max_tokens"]
        ),
        stage1_replicates=options["stage1_replicates"],
        stage2_replicates=options["stage2_replicates"],
        gate_ttft_ms=options["gate_ttft_ms"],
        tps_tie_epsilon=options["tps_tie_epsilon"],
        max_duration_s=options["max_duration"],
        port=options["port"],
        probe_max_tokens=options["probe_max_tokens"],
        ready_timeout_s=options["ready_timeout"],
        request_timeout_s=options["request_timeout"],
        provider_memory_limit_gb=options["provider_memory_limit_gb"],
        drain=options["drain"],
        drain_grace_s=options["drain_grace"],
    )
    return settings, candidates.warnings
