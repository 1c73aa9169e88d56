"""Faults from outside, against real `autotune`, `serve` and `run` processes on real SQLite and
the fixture models: a database that cannot be written, damaged weights, a provider that hangs
while it loads (and one that also ignores SIGTERM), a config folder `--apply` cannot write, a
port taken between the conflict check and the provider's bind.

Each ends with one clear line (never a traceback) and its documented exit code, and loses
nothing: the database, the config and its backups are as they were, no temp file and no
provider is left behind. The tests run as root here, where permission bits stop nothing, so
"cannot write" is made with what stops root too: a path under a regular file, the immutable
attribute (`chattr +i`), a full tmpfs (or, where nothing can be mounted, RLIMIT_FSIZE).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.store import BUSY_TIMEOUT_S, Store
from macprovider.actors.store_records import StoredRun, StoredTrial
from tests.cli.autotune_runs import ONE_CELL, QUICK, RUN_TIMEOUT, Autotune, Finished, Models
from tests.conftest import clean_env, free_port, model_variant, supervise_argv, wait_until

pytestmark = pytest.mark.slow  # real `run` and `autotune` processes under injected faults

PROG = "macprovider-supervise"
SERVE_FAULTS = Path(__file__).with_name("serve_faults")
PAUSE_TIMEOUT_S = 60.0
ERROR_PREFIX = f"{PROG}: error: "

Preexec = Callable[[], None]


# --- the means of the faults -----------------------------------------------------------------


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`path` with the immutable attribute: not even root may change, create or remove in it."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is refused here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@dataclass
class FullDisk:
    """A folder on a full disk: a tmpfs filled up, or (where nothing can be mounted) any
    folder, with `preexec` to give the process under test RLIMIT_FSIZE 0."""

    folder: Path
    filler: Path | None
    preexec: Preexec | None

    def fill(self) -> None:
        if self.filler is None:
            return
        with contextlib.suppress(OSError), self.filler.open("wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 4096)

    def free(self) -> None:
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)


def _no_file_growth() -> None:
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead of a kill.
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[FullDisk]:
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        yield FullDisk(folder, None, _no_file_growth)
        return
    try:
        yield FullDisk(folder, folder / "filler", None)
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@dataclass
class ServeFault:
    """Pauses real `serve` processes at a `bind` of their port (serve_faults/sitecustomize.py)."""

    paused: Path
    gate: Path

    def env(
        self, pause_at_bind: int, *, model: str | None = None, ignore_sigterm: bool = False
    ) -> dict[str, str]:
        extra = {
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(SERVE_FAULTS), os.environ.get("PYTHONPATH")])
            ),
            "SERVE_FAULT_PAUSE_AT_BIND": str(pause_at_bind),
            "SERVE_FAULT_PAUSED": str(self.paused),
            "SERVE_FAULT_GATE": str(self.gate),
        }
        if model is not None:
            extra["SERVE_FAULT_MODEL"] = model
        if ignore_sigterm:
            extra["SERVE_FAULT_IGNORE_SIGTERM"] = "1"
        return clean_env(**extra)

    def wait_paused(self, proc: subprocess.Popen[str]) -> int:
        def paused() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode} before the pause")
            return self.paused.exists() and self.paused.read_text() != ""

        wait_until(paused, PAUSE_TIMEOUT_S, "a serve to pause at its bind")
        return int(self.paused.read_text())

    def paused_pid(self) -> int:
        return int(self.paused.read_text())

    def release(self) -> None:
        self.gate.touch()


@pytest.fixture
def serve_fault(tmp_path: Path) -> ServeFault:
    return ServeFault(tmp_path / "serve-paused", tmp_path / "serve-gate")


@contextlib.contextmanager
def squatting(port: int) -> Iterator[None]:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        yield


def run_autotune(
    autotune: Autotune,
    *args: str,
    env: dict[str, str] | None = None,
    preexec: Preexec | None = None,
) -> Finished:
    done = subprocess.run(
        autotune.argv(*args),
        capture_output=True,
        text=True,
        env=env or clean_env(),
        preexec_fn=preexec,
        timeout=RUN_TIMEOUT,
    )
    return Finished(done.returncode, done.stdout, done.stderr, autotune.db_path)


# --- reading back what was left ----------------------------------------------------------------


def stored(db: Path) -> tuple[list[StoredRun], list[StoredTrial]]:
    store = Store(db)
    try:
        assert store.integrity_ok()
        runs = store.runs()
        return runs, [trial for run in runs for trial in store.trials(run.start.run_id)]
    finally:
        store.close()


def error_line(stderr: str) -> str:
    """The one error line a failed command prints (log lines carry a timestamp first)."""
    assert "Traceback" not in stderr, stderr
    [line] = [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]
    return line


def no_provider_started(autotune: Autotune) -> bool:
    logs = autotune.state_dir / "logs"
    return not logs.exists() or not any(logs.iterdir())


def files_in(folder: Path) -> dict[str, bytes]:
    """The plain files directly in `folder`, by name."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def tune_tiny(
    autotune: Autotune, models: Models, *extra: str, preexec: Preexec | None = None
) -> Finished:
    args = ("--candidate-models", models("tiny"), *QUICK, *ONE_CELL, *extra)
    return run_autotune(autotune, *args, preexec=preexec)


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Path:
    """A database holding one finished run with a recommendation (copied, never changed)."""
    autotune = Autotune(tmp_path_factory.mktemp("tuned"))
    done = run_autotune(
        autotune, "--candidate-models", str(fixtures_dir / "tiny"), *QUICK, *ONE_CELL
    )
    assert done.code == 0, done.stderr
    return autotune.db_path


@pytest.fixture
def earlier_db(autotune: Autotune, tuned_db: Path) -> tuple[list[StoredRun], list[StoredTrial]]:
    """This test's database holds an earlier run already; what it held."""
    autotune.db_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tuned_db, autotune.db_path)
    return stored(autotune.db_path)


# --- 1. the database cannot be written ---------------------------------------------------------


def assert_refused_for_the_database(
    done: Finished, autotune: Autotune, db: Path, reason: str
) -> None:
    line = error_line(done.stderr)
    assert str(db) in line and reason in line, line
    assert done.code != 0 and done.stdout == ""
    assert no_provider_started(autotune)


def test_a_database_under_a_regular_file_is_refused_in_one_line(
    autotune: Autotune, models: Models, tmp_path: Path
) -> None:
    (tmp_path / "not-a-folder").write_text("a file\n")
    autotune.db_path = tmp_path / "not-a-folder" / "autotune.sqlite"
    done = tune_tiny(autotune, models)
    assert_refused_for_the_database(done, autotune, autotune.db_path, "not-a-folder")
    assert (tmp_path / "not-a-folder").read_text() == "a file\n"


def test_a_read_only_database_folder_is_refused_in_one_line(
    autotune: Autotune, models: Models, tmp_path: Path
) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    autotune.db_path = folder / "autotune.sqlite"
    with immutable(folder):
        done = tune_tiny(autotune, models)
    assert_refused_for_the_database(done, autotune, autotune.db_path, "unable to open")
    assert list(folder.iterdir()) == []


def test_a_read_only_database_keeps_its_runs_and_nothing_starts(
    autotune: Autotune, models: Models, earlier_db: tuple[list[StoredRun], list[StoredTrial]]
) -> None:
    with immutable(autotune.db_path):
        done = tune_tiny(autotune, models)
    assert_refused_for_the_database(done, autotune, autotune.db_path, "readonly")
    assert stored(autotune.db_path) == earlier_db


def test_a_database_locked_by_another_writer_is_refused_after_the_busy_timeout(
    autotune: Autotune, models: Models, earlier_db: tuple[list[StoredRun], list[StoredTrial]]
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(autotune.db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        done = tune_tiny(autotune, models)
    finally:
        holder.communicate(timeout=30)  # its stdin closes: it rolls back and exits
    assert_refused_for_the_database(done, autotune, autotune.db_path, "locked")
    assert f"{BUSY_TIMEOUT_S:g} s" in error_line(done.stderr)
    assert stored(autotune.db_path) == earlier_db


# Takes the write lock and holds it until its stdin closes.
LOCK_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_database_on_a_full_disk_keeps_its_runs_and_nothing_starts(
    autotune: Autotune, models: Models, tuned_db: Path, full_disk: FullDisk
) -> None:
    autotune.db_path = full_disk.folder / "autotune.sqlite"
    shutil.copyfile(tuned_db, autotune.db_path)
    before = stored(autotune.db_path)
    full_disk.fill()
    try:
        done = tune_tiny(autotune, models, preexec=full_disk.preexec)
    finally:
        full_disk.free()
    reason = "disk I/O error" if full_disk.filler is None else "full"
    assert_refused_for_the_database(done, autotune, autotune.db_path, reason)
    assert stored(autotune.db_path) == before


def test_an_unwritable_database_exits_73(
    autotune: Autotune, models: Models, tmp_path: Path
) -> None:
    (tmp_path / "not-a-folder").write_text("a file\n")
    autotune.db_path = tmp_path / "not-a-folder" / "autotune.sqlite"
    assert tune_tiny(autotune, models).code == 73


# --- 2. damaged weights ------------------------------------------------------------------------


def test_weights_with_a_garbage_header_stop_the_run_before_any_provider(
    autotune: Autotune, models: Models, tiny_model: Path, tmp_path: Path
) -> None:
    header = b'{"not": "a safetensors header'
    garbage = len(header).to_bytes(8, "little") + header + b"\0" * 64
    broken = model_variant(tiny_model, tmp_path / "broken", {"model.safetensors": garbage})
    done = run_autotune(
        autotune, "--candidate-models", f"{broken},{models('tiny')}", *QUICK, *ONE_CELL
    )
    assert done.code == 65, done.stderr
    assert "Traceback" not in done.stderr
    weights = f"{broken}: model.safetensors: unreadable header"
    [line] = [
        line
        for line in done.stderr.splitlines()
        if line.startswith(f"{PROG}: pre_warm_integrity_failure: ")
    ]
    assert weights in line
    assert "NO RECOMMENDATION (pre_warm_integrity_failure)" in done.stdout
    [row] = done.trials()  # the smaller candidate is never tried
    assert row.record.model == str(broken) and not row.record.fits
    assert row.record.notes is not None and weights in row.record.notes
    assert done.runs()[-1].exit_reason is ExitReason.PRE_WARM_INTEGRITY_FAILURE
    assert no_provider_started(autotune)


# --- 3, 4. a provider that hangs while it loads ------------------------------------------------


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["stops", "ignores-sigterm"])
def test_a_provider_hanging_in_its_load_times_out_and_is_stopped(
    autotune: Autotune, models: Models, serve_fault: ServeFault, ignores_sigterm: bool
) -> None:
    env = serve_fault.env(pause_at_bind=1, ignore_sigterm=ignores_sigterm)
    done = run_autotune(
        autotune,
        "--candidate-models",
        models("tiny"),
        "--ready-timeout",
        "2",
        *QUICK,
        *ONE_CELL,
        env=env,
    )
    assert done.code == 2, done.stderr
    pid = serve_fault.paused_pid()
    stop = "Killed(returncode=-9)" if ignores_sigterm else "Stopped("
    assert f"provider pid {pid} {stop}" in done.stderr
    assert not psutil.pid_exists(pid)
    [row] = done.trials()
    assert not row.record.fits and row.record.notes == "provider not ready within 2 s"
    assert "NO RECOMMENDATION (no_feasible)" in done.stdout
    assert "provider not ready within 2 s" in done.stdout
    assert done.runs()[-1].exit_reason is ExitReason.NO_FEASIBLE


# --- 5. a config folder --apply cannot write ---------------------------------------------------


def assert_not_applied(
    done: Finished, config: Path, folder: Path, before: dict[str, bytes]
) -> None:
    assert done.code == 73, done.stderr
    line = error_line(done.stderr)
    assert line.startswith(f"{ERROR_PREFIX}cannot apply to {config}: "), line
    assert files_in(folder) == before  # config and backups as they were, no temp file
    assert not done.runs()[-1].applied


def test_apply_under_a_regular_file_exits_73_and_the_run_keeps_its_own_reason(
    autotune: Autotune, models: Models, tmp_path: Path
) -> None:
    folder = tmp_path / "config-home"
    folder.mkdir()
    (folder / "not-a-folder").write_text("a file\n")
    config = folder / "not-a-folder" / "config.yaml"
    before = files_in(folder)
    done = tune_tiny(autotune, models, "--apply", "--config", str(config))
    assert_not_applied(done, config, folder, before)
    assert "RECOMMENDATION" in done.stdout
    assert done.runs()[-1].exit_reason is ExitReason.OK


CONFIG = b"# mine\nport: 18080\nprovider_token: tok\n"
OLD_BACKUP = b"# an older backup\n"


@pytest.fixture
def config_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "config.yaml").write_bytes(CONFIG)
    (folder / "config.yaml.bak-1-0").write_bytes(OLD_BACKUP)
    return folder


@pytest.mark.parametrize("what", ["folder", "config"])
def test_apply_to_a_read_only_folder_or_config_exits_73_and_changes_nothing(
    autotune: Autotune, earlier_db: object, config_folder: Path, what: str
) -> None:
    config = config_folder / "config.yaml"
    before = files_in(config_folder)
    with immutable(config_folder if what == "folder" else config):
        done = run_autotune(autotune, "--report-only", "--apply", "--config", str(config))
    assert_not_applied(done, config, config_folder, before)


def test_apply_on_a_full_disk_exits_73_and_leaves_nothing(
    autotune: Autotune, earlier_db: object, full_disk: FullDisk
) -> None:
    config = full_disk.folder / "config.yaml"
    config.write_bytes(CONFIG)
    before = files_in(full_disk.folder)
    full_disk.fill()
    try:
        done = run_autotune(
            autotune, "--report-only", "--apply", "--config", str(config), preexec=full_disk.preexec
        )
    finally:
        full_disk.free()
    assert_not_applied(done, config, full_disk.folder, before)


# --- 6. the port taken between the conflict check and the bind ---------------------------------


def take_the_port_while_paused(
    proc: subprocess.Popen[str], serve_fault: ServeFault, port: int, *, timeout: float
) -> tuple[int, str, str]:
    """Takes `port` while the paused serve waits just before its bind, lets it go on, and
    waits for `proc` to end: the paused serve's pid, then `proc`'s stdout and stderr."""
    try:
        pid = serve_fault.wait_paused(proc)
        with squatting(port):
            serve_fault.release()
            stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return pid, stdout or "", stderr or ""


def test_serve_exits_69_naming_the_port_taken_just_before_it_listens(
    tiny_model: Path, serve_fault: ServeFault
) -> None:
    port = free_port()
    argv = supervise_argv("serve", "--no-join", "--model", str(tiny_model), "--port", str(port))
    proc = subprocess.Popen(
        argv, env=serve_fault.env(pause_at_bind=1), stderr=subprocess.PIPE, text=True
    )
    _, _, stderr = take_the_port_while_paused(proc, serve_fault, port, timeout=60)
    assert proc.returncode == 69, stderr
    assert f"127.0.0.1:{port}" in error_line(stderr)


def test_autotune_records_a_port_taken_before_its_provider_binds_and_ends_clearly(
    autotune: Autotune, models: Models, serve_fault: ServeFault
) -> None:
    args = ("--candidate-models", f"{models('small')},{models('tiny')}", *QUICK, *ONE_CELL)
    proc = subprocess.Popen(
        autotune.argv(*args), env=serve_fault.env(pause_at_bind=1, model=models("small")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pid, stdout, stderr = take_the_port_while_paused(
        proc, serve_fault, autotune.port, timeout=RUN_TIMEOUT
    )
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr and not psutil.pid_exists(pid)
    done = Finished(proc.returncode, stdout, stderr, autotune.db_path)
    taken, busy = (row.record for row in done.trials(stage=1))
    where = f"127.0.0.1:{autotune.port}"
    assert taken.notes is not None and "(exit 69)" in taken.notes and where in taken.notes
    assert busy.notes == f"provider did not start: port {where} is busy: already in use"
    assert "NO RECOMMENDATION (no_feasible)" in stdout
    assert done.runs()[-1].exit_reason is ExitReason.NO_FEASIBLE


def test_run_gives_up_on_a_port_taken_before_its_provider_binds(
    tiny_model: Path, tmp_path: Path, serve_fault: ServeFault
) -> None:
    port = free_port()
    env = serve_fault.env(pause_at_bind=1)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    argv = supervise_argv("run", "--model", str(tiny_model), "--port", str(port))
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    # Backing off 1, 2, 4 and 8 s between the 5 failed starts of a crash loop.
    pid, _, stderr = take_the_port_while_paused(proc, serve_fault, port, timeout=90)
    assert proc.returncode == 75, stderr
    assert f"127.0.0.1:{port}" in error_line(stderr)
    assert not psutil.pid_exists(pid)
