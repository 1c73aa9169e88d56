"""Running `autotune` in tests: its own DB, state folder and port per test, and reading back
what it recorded. Fixtures `autotune` and `models` are in this folder's conftest."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from macprovider.actors.store import Store
from macprovider.actors.store_records import StoredRun, StoredTrial
from tests.conftest import clean_env, free_port, supervise_argv

RUN_TIMEOUT = 240.0
QUICK = (
    "--target-context",
    "32",
    "--probe-max-tokens",
    "8",
    "--stage2-replicates",
    "1",
)
ONE_CELL = ("--kv-bits-axis", "unset", "--max-batch-axis", "1")
FITS_MEDIUM_NOT_LARGE = ("--provider-memory-limit-gb", "0.08")


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    db_path: Path

    def runs(self) -> list[StoredRun]:
        store = Store(self.db_path)
        try:
            return store.runs()
        finally:
            store.close()

    def trials(self, stage: int | None = None) -> list[StoredTrial]:
        store = Store(self.db_path)
        try:
            rows = store.trials(store.runs()[-1].start.run_id)
        finally:
            store.close()
        return [row for row in rows if stage is None or row.record.stage == stage]


class Autotune:
    """Builds `autotune` command lines for one test: its own DB, state folder and port."""

    def __init__(self, tmp_path: Path) -> None:
        self.db_path = tmp_path / "autotune.sqlite"
        self.state_dir = tmp_path / "state"
        self.port = free_port()

    def argv(self, *args: str) -> list[str]:
        own = ["--db-path", str(self.db_path), "--state-dir", str(self.state_dir)]
        return supervise_argv("autotune", *own, "--port", str(self.port), *args)

    def run(self, *args: str, env: dict[str, str] | None = None) -> Finished:
        done = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=env or clean_env(),
            timeout=RUN_TIMEOUT,
        )
        return Finished(done.returncode, done.stdout, done.stderr, self.db_path)


Models = Callable[..., str]
