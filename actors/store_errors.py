"""The errors the autotune database's Store and readers raise on purpose."""

from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """Base of the errors the Store and its readers raise on purpose."""


class SchemaMismatch(StoreError):
    """An existing table lacks columns that no known older layout explains."""


class StoreOutdated(StoreError):
    """A reader found a file of an older layout: only a writer migrates it. One line, naming
    the file, what it lacks and what upgrades it."""

    def __init__(self, path: Path, lacking: list[str]) -> None:
        super().__init__(
            f"{path} was written by an older macprovider (it lacks {', '.join(lacking)}); "
            "the next `autotune` run upgrades it in place, and `report` reads it then"
        )


class UnknownRun(StoreError):
    """No run row has this id."""


class RunAlreadyFinished(StoreError):
    """The run row is already closed; its exit reason is final."""


class UnknownTrial(StoreError):
    """The run has no Stage 2 trial with this id."""


class StoreUnavailable(StoreError):
    """The database cannot be opened or written: read-only, locked, on a full disk. The
    message is one line naming the file and the reason; nothing was half-written."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot write the autotune database {path}: {reason}")


class StoreUnreadable(StoreError):
    """A reader cannot read the file as an autotune database: not SQLite, unreadable, or
    locked past the busy timeout. One line naming the file and SQLite's reason."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read the autotune database {path}: {reason}")
