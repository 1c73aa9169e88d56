"""When `run` restarts a crashed provider, and when it gives up (pure; times in seconds).

Backoff starts at 1 s and doubles up to 60 s; a provider that stayed healthy for
10 minutes earns a fresh start at 1 s. Five crashes within five minutes is a
crash loop: restarting again would only hide a broken install or config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
HEALTHY_RESET_S = 600.0
CRASH_LOOP_COUNT = 5
CRASH_LOOP_WINDOW_S = 300.0


@dataclass(frozen=True)
class Restart:
    delay_s: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


def after_crash(
    crash_times: Sequence[float], started_at: float, previous_delay_s: float | None
) -> Restart | GiveUp:
    """What to do after the crash at `crash_times[-1]` of a provider started at `started_at`.

    `crash_times` are every crash so far, oldest first, the latest included;
    `previous_delay_s` is the delay used before the provider that just crashed
    (None for the first start).
    """
    now = crash_times[-1]
    recent = [t for t in crash_times if now - t < CRASH_LOOP_WINDOW_S]
    if len(recent) >= CRASH_LOOP_COUNT:
        return GiveUp(
            f"crash loop: the provider crashed {len(recent)} times within "
            f"{CRASH_LOOP_WINDOW_S / 60:.0f} minutes; not restarting it again"
        )
    healthy_for = now - started_at
    if previous_delay_s is None or healthy_for >= HEALTHY_RESET_S:
        return Restart(FIRST_DELAY_S)
    return Restart(min(previous_delay_s * 2, MAX_DELAY_S))
