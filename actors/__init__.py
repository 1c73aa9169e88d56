"""The supervisor process: pykka actors and the pure decisions they call.

The modules the other layers (`macprovider.cli`, and the tools in `ops/`) may import, and what
each is for. The others are this package's own, `_`-prefixed ones private to their neighbours.
Names only, nothing imported here: every command imports `stop_signals` on its first line, and
pulling pykka, SQLite and httpx in with it would slow `serve`'s start.

Running a supervised command:
- `trees`: the `autotune` and `run` trees and how to run them (`tune`, `keep_running`), a run's
  first row (`run_start`) and its providers' environment (`provider_env`).
- `stop_signals`: the one SIGINT/SIGTERM handler (`STOP`), `Interrupted`, `EXIT_INTERRUPTED`.
- `keeper`: `Target`, what `run` keeps alive.
- `messages`: the frozen values actors exchange (`Knobs`, `RunOutcome`, `RestoreReport`, ...).
- `tune_events`: what a tuning run tells its listeners (`TuneListener`, `TrialEvent`, `Timings`)
  and its caller (`TuneSummary`).

Autotune's inputs and decisions (pure):
- `autotune_inputs`: the flags' parsers and defaults, `TuneSettings`, the default candidates.
- `tuning`: `Cell`, `Replicate`, aggregation, percentiles, the Stage 2 cell order.
- `recommendation`: `Recommendation`, `Infeasible`, alternates, the recipe hash.
- `exit_reasons`: `ExitReason`, the closed set a run ends with.

The autotune database:
- `store_records`: what it holds, as values (`RunStart`, `TrialRecord`, `StoredRun`, ...).
- `store_reader`: `ReadOnlyStore`, how reports read it.
- `store`: the writer, `Store` (`--apply` records itself through it once a run's actors stopped).
- `store_errors`: its typed errors.

Services, models, measuring:
- `service_manager`, `service_calls`: the launchd agent and systemd unit, and running their tools.
- `prewarm_resolve`: a model's folder and size on this machine (the reports' size order).
- `probe`, `probe_prompt`: one measured replicate and its prompt of exactly N tokens (the
  benchmark's client too).

docs/ARCHITECTURE.md maps every module of the package.
"""
