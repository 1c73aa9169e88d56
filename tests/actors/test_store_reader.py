"""The read-only store `report` reads through: it never creates, migrates or writes, and says
in one line why it cannot read a file (real SQLite files in `tmp_path`)."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.store import Store
from macprovider.actors.store_errors import StoreOutdated, StoreUnreadable
from macprovider.actors.store_reader import ReadOnlyStore
from tests.actors.test_store import T0, TRIAL_COLUMNS, make_run, make_trial


def written(db_path: Path) -> None:
    with closing(Store(db_path)) as store:
        store.begin_run(make_run("r1"))
        store.record_trial(make_trial("r1", stage=1))
        store.finish_run("r1", ExitReason.OK, ended_at=T0)


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


def test_reading_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "autotune.sqlite"
    written(db)
    before = snapshot(db)
    with ReadOnlyStore(db) as store:
        [run] = store.runs()
        [trial] = store.trials("r1")
    assert run.exit_reason is ExitReason.OK and trial.record == make_trial("r1", stage=1)
    assert snapshot(db) == before


def test_it_cannot_write_even_if_asked(tmp_path: Path) -> None:
    db = tmp_path / "autotune.sqlite"
    written(db)
    with ReadOnlyStore(db) as store, pytest.raises(sqlite3.OperationalError, match="readonly"):
        # The guarantee itself, below the API: the connection SQLite opened refuses writes.
        store._conn.execute("DELETE FROM tune_trials")


def test_an_older_layout_is_refused_in_one_line_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "autotune.sqlite"
    columns = ", ".join(c for c in TRIAL_COLUMNS if c != "outcome")
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(f"CREATE TABLE tune_trials ({columns})")
    before = snapshot(db)
    with pytest.raises(StoreOutdated) as refused:
        ReadOnlyStore(db)
    message = str(refused.value)
    assert "\n" not in message and "tune_trials.outcome" in message and "tune_runs" in message
    assert "`autotune`" in message
    assert snapshot(db) == before


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 100])
def test_a_file_that_is_no_autotune_database_is_unreadable(tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "autotune.sqlite"
    db.write_bytes(content)
    with pytest.raises(StoreUnreadable, match=f"cannot read the autotune database {db}"):
        ReadOnlyStore(db)
    assert db.read_bytes() == content


def test_a_missing_file_is_never_created(tmp_path: Path) -> None:
    db = tmp_path / "nope.sqlite"
    with pytest.raises(StoreUnreadable):
        ReadOnlyStore(db)
    assert not db.exists()
