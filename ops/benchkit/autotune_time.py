"""`ops/bench autotune`: where the demo autotune's wall time goes."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from benchkit.contenders import free_port
from benchkit.demo import demo_flags
from benchkit.docs import provenance, write_docs
from benchkit.places import fixtures_dir
from benchkit.render import num, table

AUTOTUNE_METHOD: Final = """\
Method: `ops/bench autotune` runs ops/demo's autotune (same candidates, target context and
memory budget; its own temporary DB and state folder, a free port, `-v`) and reads back:
its stderr log lines (each stamped to the millisecond), each provider's own log (named in
the `provider started` line) and the run's rows in the DB. Per trial:
- provider start = trial start (`stage N candidate|cell i/n`) → the provider logs `model
  loaded` (spawn, imports, weights, ready); a provider that dies in load counts here whole;
- warm-up = ready → trial start + the load seconds the DB row's notes record (the tuner's
  disposable request, never counted in TTFT);
- measurement = end of warm-up → the provider logs `SIGTERM` (the replicates);
- provider stop = `SIGTERM` → the `provider pid … Stopped` line;
- pre-warm = in Stage 1, the gap before each trial (weights check, tokenizer, probe prompt);
- our overhead = the rest of the stage (recording, decisions, actor hand-offs).
Set-up runs from launching the command to the `stage 1:` line (interpreter and imports up
to the DB's `started_at_utc`, then preflight); wind-down from `stopping` to the exit.
"""

LOG_LINE: Final = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) [\w.-]+: (.*)$")
STAGE_START: Final = re.compile(r"stage (\d): ")
TRIAL_START: Final = re.compile(r"stage (\d) (?:candidate|cell) (\d+)/(\d+): (.*)$")
TRIAL_END: Final = re.compile(r"stage (\d) \[(\d+)/(\d+)\] ")
PROVIDER_STARTED: Final = re.compile(r"provider started: pid \d+, .*, log (.+)$")
PROVIDER_STOPPED: Final = re.compile(r"provider pid \d+ ")
LOAD_NOTE: Final = re.compile(r"^load ([\d.]+) s$")
CATEGORIES: Final = ("setup", "prewarm", "start", "warmup", "measure", "stop", "overhead")
CATEGORY_TITLES: Final = {
    "setup": "set-up",
    "prewarm": "pre-warm",
    "start": "provider start",
    "warmup": "warm-up request",
    "measure": "measurement",
    "stop": "provider stop",
    "overhead": "our overhead",
}


def log_time(stamp: str) -> float:
    """A log line's local timestamp as seconds since the epoch."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def log_events(lines: Sequence[str]) -> list[tuple[float, str]]:
    events = []
    for line in lines:
        if match := LOG_LINE.match(line):
            events.append((log_time(match[1]), match[2]))
    return events


def find_event(path: Path | None, needle: str) -> float | None:
    """When a provider's log first says `needle`, or None."""
    if path is None or not path.exists():
        return None
    for at, text in log_events(path.read_text(errors="replace").splitlines()):
        if needle in text:
            return at
    return None


@dataclass
class Trial:
    stage: int
    index: int
    total: int
    what: str
    started: float
    log: Path | None = None
    stopped: float | None = None
    ended: float | None = None
    load_s: float | None = None

    def parts(self) -> dict[str, float]:
        """This trial's time per category (see AUTOTUNE_METHOD)."""
        ended = self.ended if self.ended is not None else self.stopped or self.started
        ready = find_event(self.log, "model loaded")
        sigterm = find_event(self.log, "SIGTERM")
        parts = dict.fromkeys(CATEGORIES, 0.0)
        if ready is None or sigterm is None or self.stopped is None:
            # It never served: all of it was starting a provider that died (or never came).
            parts["start"] = (self.stopped or ended) - self.started
        else:
            warmed = self.started + self.load_s if self.load_s is not None else ready
            warmed = min(max(warmed, ready), sigterm)
            parts["start"] = ready - self.started
            parts["warmup"] = warmed - ready
            parts["measure"] = sigterm - warmed
            parts["stop"] = self.stopped - sigterm
        parts["overhead"] = max(0.0, ended - self.started - sum(parts.values()))
        return parts


def parse_trials(events: Sequence[tuple[float, str]]) -> list[Trial]:
    trials: list[Trial] = []
    for at, text in events:
        if match := TRIAL_START.match(text):
            stage, index, total = (int(match[i]) for i in (1, 2, 3))
            trials.append(Trial(stage, index, total, match[4], at))
        elif trials and (match := PROVIDER_STARTED.match(text)):
            trials[-1].log = Path(match[1])
        elif trials and PROVIDER_STOPPED.match(text):
            trials[-1].stopped = at
        elif trials and TRIAL_END.match(text):
            trials[-1].ended = at
    return trials


def db_run(db: Path) -> tuple[float | None, list[tuple[float, str | None]]]:
    """The latest run's start, and its trials' (recorded at, notes), from the DB."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        run = conn.execute(
            "SELECT run_id, started_at_utc FROM tune_runs ORDER BY started_at_utc DESC LIMIT 1"
        ).fetchone()
        if run is None:
            return None, []
        rows = conn.execute(
            "SELECT ts_utc, notes FROM tune_trials WHERE run_id = ? ORDER BY id", (run[0],)
        ).fetchall()
    started = datetime.fromisoformat(run[1]).timestamp()
    return started, [(datetime.fromisoformat(ts).timestamp(), notes) for ts, notes in rows]


def attach_load_times(trials: Sequence[Trial], rows: Sequence[tuple[float, str | None]]) -> None:
    """Each trial's load seconds, from the DB row recorded when it ended (the nearest one)."""
    for trial in trials:
        if trial.ended is None or not rows:
            continue
        ended = trial.ended
        at, notes = min(rows, key=lambda row: abs(row[0] - ended))
        match = LOAD_NOTE.match(notes or "")
        if abs(at - trial.ended) < 2.0 and match:
            trial.load_s = float(match[1])


@dataclass
class Breakdown:
    rows: dict[str, dict[str, float]]  # part → category → seconds (and `wall`)
    trials: list[dict[str, Any]]
    tuner_line: str | None
    exit_code: int
    recommendation: str


def stage_bounds(
    events: Sequence[tuple[float, str]], exited: float
) -> dict[int, tuple[float, float]]:
    """Each stage's span: its `stage N:` line to the next stage's, or to `stopping`."""
    marks = [(at, int(m[1])) for at, text in events if (m := STAGE_START.match(text))]
    stopping = next((at for at, text in events if text.startswith("stopping")), exited)
    bounds = {}
    for i, (at, stage) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else stopping
        bounds[stage] = (at, end)
    return bounds


def stage_row(stage: int, span: tuple[float, float], trials: Sequence[Trial]) -> dict[str, float]:
    row = dict.fromkeys(CATEGORIES, 0.0)
    previous = span[0]
    for trial in trials:
        for category, seconds in trial.parts().items():
            row[category] += seconds
        gap = trial.started - previous
        # Stage 1 pre-warms each candidate before its trial starts; Stage 2 does not.
        row["prewarm" if stage == 1 else "overhead"] += max(0.0, gap)
        previous = trial.ended or trial.stopped or trial.started
    row["overhead"] += max(0.0, span[1] - previous)
    row["wall"] = span[1] - span[0]
    return row


def analyse(
    launched: float, exited: float, stderr: Sequence[str], db: Path, code: int, out: str
) -> Breakdown:
    events = log_events(stderr)
    trials = parse_trials(events)
    run_started, rows = db_run(db) if db.exists() else (None, [])
    attach_load_times(trials, rows)
    bounds = stage_bounds(events, exited)
    first = min((span[0] for span in bounds.values()), default=exited)
    last = max((span[1] for span in bounds.values()), default=exited)
    table_rows: dict[str, dict[str, float]] = {}
    setup = dict.fromkeys(CATEGORIES, 0.0) | {"setup": first - launched, "wall": first - launched}
    table_rows["set-up"] = setup
    if run_started is not None:
        setup["interpreter_and_imports"] = run_started - launched
    for stage, span in sorted(bounds.items()):
        mine = [t for t in trials if t.stage == stage]
        table_rows[f"stage {stage} ({len(mine)} trials)"] = stage_row(stage, span, mine)
    wind_down = dict.fromkeys(CATEGORIES, 0.0) | {"overhead": exited - last, "wall": exited - last}
    table_rows["wind-down"] = wind_down
    total = {
        key: sum(r.get(key, 0.0) for r in table_rows.values()) for key in (*CATEGORIES, "wall")
    }
    table_rows["total"] = total
    per_trial = [
        {"stage": t.stage, "trial": f"{t.index}/{t.total}", "what": t.what, **t.parts()}
        for t in trials
    ]
    tuner = next((line for line in stderr if line.startswith("time: ")), None)
    return Breakdown(table_rows, per_trial, tuner, code, out)


def short_model(what: str) -> str:
    """`/…/fixtures/medium (kv-bits 4, …)` → `medium (kv-bits 4, …)`: the table stays narrow."""
    model, _, knobs = what.partition(" (")
    return f"{Path(model).name} ({knobs}" if knobs else Path(model).name


def render_breakdown(found: Breakdown, wall_s: float) -> str:
    header = ["part", "wall s", *(CATEGORY_TITLES[c] for c in CATEGORIES)]
    rows = [
        [part, num(row["wall"]), *(num(row[c]) if row[c] else "" for c in CATEGORIES)]
        for part, row in found.rows.items()
    ]
    trial_rows = [
        [f"{t['stage']}", t["trial"], short_model(t["what"]), *(num(t[c]) for c in CATEGORIES[2:])]
        for t in found.trials
    ]
    setup = found.rows["set-up"]
    imports = setup.get("interpreter_and_imports")
    split = (
        ""
        if imports is None
        else (
            f" Set-up: {imports:.1f} s to the run row (interpreter, imports, CLI), "
            f"{setup['setup'] - imports:.1f} s preflight (provider check, machine, DB)."
        )
    )
    trial_header = [
        "stage",
        "trial",
        "model (knobs)",
        *(CATEGORY_TITLES[c] for c in CATEGORIES[2:]),
    ]
    lines = [
        f"Demo autotune (ops/demo's flags): {wall_s:.1f} s wall, exit {found.exit_code}.{split}",
        "",
        *table(header, rows),
        "",
        "Per trial (seconds):",
        "",
        *table(trial_header, trial_rows),
        "",
        f"The tuner's own split (stderr): `{found.tuner_line or 'n/a'}`",
        "",
        AUTOTUNE_METHOD,
    ]
    return "\n".join(lines).rstrip() + "\n"


def demo_argv(fixtures: Path, workdir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "macprovider.cli",
        "autotune",
        *demo_flags(fixtures),
        "--db-path",
        str(workdir / "autotune.sqlite"),
        "--state-dir",
        str(workdir / "state"),
        "--port",
        str(free_port()),
        "-v",
    ]


def run_streaming(argv: list[str]) -> tuple[int, list[str], str]:
    """Runs `argv`, echoing its stderr live to ours; returns the code, stderr lines, stdout."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else ""))
    reader.start()
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        lines.append(line.rstrip("\n"))
    code = proc.wait()
    reader.join()
    return code, lines, "".join(out)


def autotune_main(args: argparse.Namespace, command: Sequence[str]) -> int:
    fixtures = fixtures_dir()
    workdir = Path(tempfile.mkdtemp(prefix="macprovider-bench-autotune-"))
    try:
        launched = time.time()
        code, stderr, out = run_streaming(demo_argv(fixtures, workdir))
        exited = time.time()
        found = analyse(launched, exited, stderr, workdir / "autotune.sqlite", code, out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(out.rstrip() + "\n", file=sys.stderr)
    if not found.trials:
        # e.g. exit 69: another provider is live. Never --drain here: it is not ours to stop.
        print(f"bench: the autotune measured nothing (exit {code}); see its log above")
        return code or 1
    report = render_breakdown(found, exited - launched)
    print(report)
    if args.json is not None:
        args.json.write_text(
            json.dumps({**asdict(found), "wall_s": exited - launched}, indent=2) + "\n"
        )
    if args.write_docs:
        write_docs("autotune", provenance(command) + "\n\n" + report)
    return code
