"""`macprovider-supervise autotune`'s inputs: the flags checked into TuneSettings, the
database's default place, and the job of one run, from this process's environment and
clock. The actors it runs, and in what order they stop, are `actors/trees.py`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from macprovider.actors.autotune_inputs import (
    TuneSettings,
    parse_candidate_models,
    parse_kv_bits_axis,
    parse_max_batch_axis,
    parse_max_context_axis,
    resolve_candidates,
)
from macprovider.actors.trees import AutotuneJob, provider_env, run_start
from macprovider.server.config import config_dir


def autotune_job(
    settings: TuneSettings,
    db_path: Path,
    retain_runs: int,
    state_dir: Path,
    restart_foreground: bool,
) -> AutotuneJob:
    """The job of a run starting now, its providers isolated from this environment."""
    return AutotuneJob(
        settings,
        run_start(settings, datetime.now(UTC)),
        db_path,
        state_dir,
        provider_env(os.environ, state_dir),
        retain_runs=retain_runs,
        restart_foreground=restart_foreground,
    )


def default_db_path(env: Mapping[str, str]) -> Path:
    """`autotune.sqlite` in the config folder, found by the same rule `serve` finds its
    config with, so both commands agree on one place without being told."""
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
