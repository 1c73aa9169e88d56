"""What a Ctrl-C or a `kill -9` during `--apply` can leave: the old config or the complete new
one, no temporary file, and a run row that says which."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from macprovider.actors.stop_signals import STOP, Interrupted
from macprovider.actors.store import Store
from macprovider.actors.store_records import PendingApply
from macprovider.cli import atomic_file
from macprovider.cli.apply import apply_to_config
from macprovider.cli.atomic_file import create_file, replace_file
from tests.actors.test_store import make_run
from tests.cli.test_apply import VALUES

ORIGINAL = b"# mine\nport: 1\n"
unnamed_files = pytest.mark.skipif(
    not hasattr(os, "O_TMPFILE"), reason="unnamed files (O_TMPFILE) are Linux's"
)


@pytest.fixture(autouse=True)
def no_stop_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(STOP, "requested", None)  # and put back whatever it was


def during_fsync(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Runs `action` inside every fsync of a file: the moment a write's bytes are complete."""
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        if stat.S_ISREG(os.fstat(fd).st_mode):  # not the folder's fsync after a rename
            action()

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_stop_during_the_write_leaves_the_old_config_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(ORIGINAL)
    during_fsync(monkeypatch, lambda: setattr(STOP, "requested", "SIGINT"))
    with pytest.raises(Interrupted, match="SIGINT"):
        apply_to_config(config, VALUES)
    assert config.read_bytes() == ORIGINAL
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temp file, no backup


def test_a_stop_asked_before_the_apply_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(ORIGINAL)
    STOP.requested = "SIGTERM"
    with pytest.raises(Interrupted):
        apply_to_config(config, VALUES)
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


@unnamed_files
def test_while_the_bytes_are_written_no_file_of_ours_has_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a `kill -9` at that moment would leave behind: nothing.
    config = tmp_path / "config.yaml"
    config.write_bytes(ORIGINAL)
    seen: list[set[str]] = []
    during_fsync(monkeypatch, lambda: seen.append({p.name for p in tmp_path.iterdir()}))
    applied = apply_to_config(config, VALUES)
    assert applied.backup_path is not None
    backup = applied.backup_path.name
    # The backup's own write, then the config's (once the backup has its name).
    assert seen == [{"config.yaml"}, {"config.yaml", backup}]
    assert applied.backup_path.read_bytes() == ORIGINAL


def test_a_temp_file_left_by_a_dead_writer_goes_with_the_next_write(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    stale = tmp_path / f".config.yaml.{dead.stdout.strip()}.0123abcd.tmp"
    live = tmp_path / f".config.yaml.{os.getpid()}.89abcdef.tmp"  # a writer at work
    other = tmp_path / f".other.yaml.{dead.stdout.strip()}.0123abcd.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"half")
    replace_file(tmp_path / "config.yaml", b"new\n", 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.yaml", live.name, other.name]
    )


def test_create_file_never_replaces_and_never_leaves_half_a_file(tmp_path: Path) -> None:
    path = tmp_path / "backup"
    assert create_file(path, b"first", 0o640)
    assert not create_file(path, b"second", 0o600)
    assert path.read_bytes() == b"first"
    assert path.stat().st_mode & 0o777 == 0o640


def test_the_named_temp_file_fallback_is_removed_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the system has no unnamed files (macOS), the temp file has a name from the start.
    monkeypatch.setattr(atomic_file, "_open_unnamed", lambda folder: None)
    target = tmp_path / "page.html"
    during_fsync(monkeypatch, lambda: setattr(STOP, "requested", "SIGINT"))
    with pytest.raises(Interrupted):
        replace_file(target, b"<html>", None)
    assert list(tmp_path.iterdir()) == []


def test_a_pending_apply_reads_as_applied_exactly_when_the_config_holds_its_bytes(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(ORIGINAL)
    store = Store(tmp_path / "db.sqlite")

    def intent(new: bytes) -> PendingApply:
        return PendingApply(str(config), hashlib.sha256(new).hexdigest())

    try:
        store.begin_run(make_run("killed-before-its-write"))
        store.begin_run(make_run("killed-after-its-write"))
        store.begin_apply("killed-before-its-write", intent(b"model: a\n"))
        store.begin_apply("killed-after-its-write", intent(b"model: b\n"))
        config.write_bytes(b"model: b\n")
        assert [run.applied for run in store.runs()] == [False, True]
        store.settle_pending_applies()
        config.write_bytes(ORIGINAL)  # the operator edits it later: history stays as it was
        assert [run.applied for run in store.runs()] == [False, True]
    finally:
        store.close()
