"""The autotune database for reading only, as `report` and `autotune --report-only` read it.

Opened through SQLite's `mode=ro`, it never creates, migrates or writes anything: reading a
run leaves the file's bytes and its mtime as they were, and cannot race the one writer (the
StoreActor of a run in progress). SQLite may leave beside it the empty `-wal` and `-shm`
companions a reader of a WAL database needs; the next writer removes them when it closes.

A file of an older layout is refused in one line rather than read half-right; the next
writer (any `autotune` run) migrates it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from macprovider.actors import _schema
from macprovider.actors._store_rows import select_runs, select_trials
from macprovider.actors.store import BUSY_TIMEOUT_S
from macprovider.actors.store_errors import StoreOutdated, StoreUnreadable
from macprovider.actors.store_records import StoredRun, StoredTrial

_T = TypeVar("_T")


class ReadOnlyStore:
    """One read-only connection to an existing autotune database of the current layout."""

    def __init__(self, path: Path) -> None:
        self._path = path
        uri = f"{path.resolve().as_uri()}?mode=ro"
        try:
            self._conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as error:
            raise StoreUnreadable(path, str(error)) from error
        self._conn.row_factory = sqlite3.Row
        try:
            lacking = self._read(lambda: _schema.outdated(self._conn))
            if set(lacking) >= {table.name for table in _schema.TABLES}:
                raise StoreUnreadable(path, "it holds no autotune table")
            if lacking:
                raise StoreOutdated(path, lacking)
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> ReadOnlyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _read(self, query: Callable[[], _T]) -> _T:
        try:
            return query()
        except sqlite3.DatabaseError as error:  # not a database, damaged, locked too long
            raise StoreUnreadable(self._path, str(error)) from error

    def runs(self) -> list[StoredRun]:
        """Every run, oldest first."""
        return self._read(lambda: select_runs(self._conn))

    def trials(self, run_id: str) -> list[StoredTrial]:
        """The run's trials in the order they were recorded."""
        return self._read(lambda: select_trials(self._conn, run_id))

    def close(self) -> None:
        self._conn.close()
