"""Autotune progress on stderr: a live rich display on a terminal, plain log lines otherwise
(or with `--json`). `-v` adds each trial's figures as it finishes. stdout is left to the
result, so `autotune > result.txt` or `| tee` keeps only that.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.text import Text

from macprovider.actors.messages import Knobs
from macprovider.actors.tune_events import TrialEvent, TuneListener
from macprovider.cli.autotune_render import knobs_text, render_trial

log = logging.getLogger("macprovider.autotune")

STAGE_TITLES = {1: "biggest model that fits", 2: "knobs for the chosen model"}
STAGE_UNITS = {1: "candidate", 2: "cell"}
REFRESH_PER_S = 2


class PlainProgress(TuneListener):
    """One log line per stage and per trial started; with `verbose`, per trial finished."""

    def __init__(self, verbose: bool) -> None:
        self._verbose = verbose

    def stage_started(self, stage: int, total: int) -> None:
        log.info("stage %d: %s (%d trials at most)", stage, STAGE_TITLES[stage], total)

    def trial_started(self, stage: int, index: int, total: int, model: str, knobs: Knobs) -> None:
        unit = STAGE_UNITS[stage]
        log.info("stage %d %s %d/%d: %s (%s)", stage, unit, index, total, model, knobs_text(knobs))

    def trial_finished(self, event: TrialEvent) -> None:
        if self._verbose:
            log.info("%s", render_trial(event))


@dataclass
class _State:
    stage: int = 0
    index: int = 0
    total: int = 0
    model: str = ""
    knobs: str = ""
    replicate: int = 0
    replicates: int = 0


class LiveProgress(TuneListener):
    """A status line that redraws in place: stage, candidate or cell i/n, model, knobs,
    replicate, elapsed time and the budget left. Use it as a context manager."""

    def __init__(self, console: Console, max_duration_s: float, verbose: bool) -> None:
        self._console = console
        self._max_duration_s = max_duration_s
        self._verbose = verbose
        self._started = time.monotonic()
        self._state = _State()
        self._lock = threading.Lock()  # listener calls come from the tuner's thread
        self._live = Live(
            get_renderable=self._render,
            console=console,
            refresh_per_second=REFRESH_PER_S,
            transient=True,
        )

    def __enter__(self) -> LiveProgress:
        self._started = time.monotonic()
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()

    def stage_started(self, stage: int, total: int) -> None:
        with self._lock:
            self._state = _State(stage=stage, total=total)

    def trial_started(self, stage: int, index: int, total: int, model: str, knobs: Knobs) -> None:
        with self._lock:
            self._state = _State(stage, index, total, model, knobs_text(knobs))

    def replicate_started(self, number: int, total: int) -> None:
        with self._lock:
            self._state.replicate, self._state.replicates = number, total

    def trial_finished(self, event: TrialEvent) -> None:
        if self._verbose:
            self._console.print(render_trial(event), highlight=False, soft_wrap=True)

    def _render(self) -> Text:
        """Two lines: where the run is and its clock first (they must fit a narrow terminal),
        then what is being measured (a model path can be long)."""
        with self._lock:
            state = self._state
            elapsed = time.monotonic() - self._started
        left = max(0.0, self._max_duration_s - elapsed)
        where = ["autotune"]
        if state.stage:
            where.append(f"stage {state.stage}")
            if state.index:
                where.append(f"{STAGE_UNITS[state.stage]} {state.index}/{state.total}")
            if state.replicate:
                where.append(f"replicate {state.replicate}/{state.replicates}")
        where.append(f"{_clock(elapsed)} elapsed, {_clock(left)} budget left")
        what = STAGE_TITLES.get(state.stage, "starting")
        if state.index:
            what = f"{state.model} ({state.knobs})"
        text = Text(" · ".join(where), overflow="ellipsis", no_wrap=True)
        text.append("\n" + what)
        return text


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
