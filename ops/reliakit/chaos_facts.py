"""What an iteration left on disk and in the fake service managers, read after it ended: the
DB (read-only, never repaired by the reading), the config folder, the recorded calls."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from reliakit.chaos_checks import ConfigFacts, RunRow, ServiceFacts
from reliakit.chaos_plan import Service
from tests.actors.fake_services import FakeServices

BACKUP: Final = re.compile(r"\.bak-\d+-\d+$")
RUNS_QUERY: Final = (
    "SELECT run_id, exit_reason, ended_at_utc, recommendation_json FROM tune_runs"
    " ORDER BY started_at_utc"
)
# (stop verb, start verb) of each fake tool, as `calls.jsonl` records them.
VERBS: Final = {
    "systemd": ("systemctl", "stop", "start"),
    "launchd": ("launchctl", "bootout", "bootstrap"),
}


def db_facts(db: Path) -> tuple[str | None, tuple[RunRow, ...]]:
    """`PRAGMA integrity_check` and the run rows; (None, ()) when there is no DB."""
    if not db.exists():
        return None, ()
    try:
        uri = f"{db.as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
            try:
                rows = conn.execute(RUNS_QUERY).fetchall()
            except sqlite3.OperationalError as error:
                if "no such table" not in str(error):
                    raise
                rows = []  # created, not yet given its schema
    except sqlite3.Error as error:
        return f"unreadable ({error})", ()
    return integrity, tuple(_row(*row) for row in rows)


def _row(run_id: str, reason: str | None, ended: str | None, document: str | None) -> RunRow:
    moment = None if ended is None else datetime.fromisoformat(ended)
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return RunRow(run_id, reason, moment, None if document is None else json.loads(document))


def config_facts(path: Path, original: bytes | None) -> ConfigFacts:
    now = path.read_bytes() if path.exists() else None
    mtime = datetime.fromtimestamp(path.stat().st_mtime_ns / 1e9, UTC) if now is not None else None
    names = sorted(item.name for item in path.parent.iterdir()) if path.parent.exists() else []
    backups = [name for name in names if name.startswith(path.name) and BACKUP.search(name)]
    strays = tuple(name for name in names if name != path.name and name not in backups)
    contents = tuple((path.parent / name).read_bytes() for name in backups)
    return ConfigFacts(original, now, mtime, strays, contents)


def service_facts(fakes: FakeServices, service: Service) -> ServiceFacts:
    tool, stop, start = VERBS[service]
    verbs = []
    for call in fakes.calls():
        words = [word for word in call[1:] if not word.startswith("--")]
        if call[0] == tool and words:
            verbs.append(words[0])
    return ServiceFacts(verbs.count(stop), verbs.count(start))
