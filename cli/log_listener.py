"""The autotune progress as log lines on stderr (one per stage, one per finished trial)."""

from __future__ import annotations

import logging

from macprovider.actors.tuner import TrialEvent, TuneListener
from macprovider.cli.autotune_render import render_trial

log = logging.getLogger("macprovider.autotune")

STAGE_TITLES = {1: "biggest model that fits", 2: "knobs for the chosen model"}


class LogListener(TuneListener):
    def stage_started(self, stage: int, total: int) -> None:
        log.info("stage %d: %s (%d trials at most)", stage, STAGE_TITLES[stage], total)

    def trial_finished(self, event: TrialEvent) -> None:
        log.info("%s", render_trial(event))
