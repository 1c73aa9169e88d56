"""What one chaos iteration does, drawn from the suite's seed: which scenario, which signal,
when, and the scenario's variations. Pure: the same seed and iteration give the same plan on
every machine, so a failure is replayed with `--seed S` alone.

The moment is drawn against the scenario's natural duration (measured once per run of the
suite, without signals): a quarter of the draws fall in the first 1.5 s, where the
interpreter is still importing and the supervisor does not exist yet; the others anywhere
from the start to a little past the natural end, so that every stage (pre-warm, Stage 1,
Stage 2, the restore of a drained service, a `run` in steady state) is reached, and so is a
signal that lands after the command has finished its work. `--apply` lasts milliseconds, too
short for a drawn moment to hit: some of its plans signal when the backup, or the new file
under its temporary name, appears instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final, Literal

EARLY_WINDOW_S: Final = 1.5
EARLY_SHARE: Final = 0.25
PAST_THE_END: Final = 1.1  # the latest moment, as a fraction of the natural duration
SECOND_SIGNAL_SHARE: Final = 0.3
SECOND_GAP_S: Final = (0.02, 1.0)
DRAIN_WITH_APPLY_SHARE: Final = 0.5
# `--apply` lasts milliseconds: a share of its plans wait for it (the backup appearing) instead.
AT_APPLY_SHARE: Final = 0.25

Target = Literal["pid", "group"]
Service = Literal["systemd", "launchd"]
# What `--apply` creates beside the config, in this order: the backup, then (for an instant
# before the rename) the new file under a temporary name.
ApplyMark = Literal["backup", "temp"]


class Scenario(StrEnum):
    AUTOTUNE = "autotune"
    APPLY = "autotune-apply"
    DRAIN = "autotune-drain"
    RUN = "run"

    @property
    def is_autotune(self) -> bool:
        return self is not Scenario.RUN


class Sig(StrEnum):
    """The signals sent, by the name `signal.Signals` gives them."""

    INT = "SIGINT"
    TERM = "SIGTERM"
    KILL = "SIGKILL"


SCENARIOS: Final = tuple(Scenario)
SIGNAL_WEIGHTS: Final = {Sig.INT: 0.4, Sig.TERM: 0.35, Sig.KILL: 0.25}
STOP_SIGNALS: Final = (Sig.INT, Sig.TERM)

# Configs `--apply` rewrites: comments, blank lines, quoting, a nested block, owned keys in
# place or absent, CRLF line endings. Every line that is not an owned key must survive.
CONFIG_TEMPLATES: Final = (
    "# macprovider: edited by hand\nport: 18080\nmax_queue: 32   # short queue\n\n"
    "api_key: 'not-a-real-key'\n",
    "model: /old/model   # the previous pick\nkv_bits: 4\nmax_queue: 16\n"
    'extra:\n  note: "kept as is"\n  level: 2\nmax_context_override: 4096\n# the end\n',
    "# CRLF, as an editor on another machine left it\r\nport: 18080\r\n"
    "max_concurrency_override: 3\r\nhost: 127.0.0.1\r\n",
)


@dataclass(frozen=True)
class Plan:
    """One iteration. The moment of the first signal is when `--apply` creates its
    `apply_mark` when set, else `early_s` when set, else `fraction` of the scenario's natural
    duration; `second` follows it after `gap_s`."""

    index: int
    scenario: Scenario
    signal: Sig
    target: Target  # the command's PID (like `kill`) or its process group (like Ctrl-C)
    early_s: float | None
    fraction: float
    second: Sig | None
    gap_s: float
    service: Service  # what `--drain` finds (autotune-drain only)
    apply: bool  # `--apply` (always for autotune-apply, sometimes for autotune-drain)
    config: int  # index into CONFIG_TEMPLATES
    config_flag: bool  # `--config PATH` rather than the default path under XDG_CONFIG_HOME
    apply_mark: ApplyMark | None = None


def iteration_seed(seed: int, index: int) -> str:
    # A string seed is hashed (SHA-512) by `random`: stable across runs and platforms.
    return f"chaos:{seed}:{index}"


def pick_plan(seed: int, index: int) -> Plan:
    rng = random.Random(iteration_seed(seed, index))
    scenario = rng.choice(SCENARIOS)
    signals, weights = zip(*SIGNAL_WEIGHTS.items(), strict=True)
    first: Sig = rng.choices(signals, weights)[0]
    early = rng.random() < EARLY_SHARE
    early_s = rng.uniform(0.0, EARLY_WINDOW_S)
    fraction = rng.uniform(0.0, PAST_THE_END)
    second = rng.choice(STOP_SIGNALS) if rng.random() < SECOND_SIGNAL_SHARE else None
    gap_s = rng.uniform(*SECOND_GAP_S)
    target: Target = rng.choice(("pid", "group"))
    service: Service = rng.choice(("systemd", "launchd"))
    drain_apply = rng.random() < DRAIN_WITH_APPLY_SHARE
    config = rng.randrange(len(CONFIG_TEMPLATES))
    config_flag = rng.random() < 0.5
    at_apply = rng.random() < AT_APPLY_SHARE
    mark: ApplyMark = rng.choice(("backup", "temp"))
    plan = Plan(
        index=index,
        scenario=scenario,
        signal=first,
        target=target,
        early_s=early_s if early else None,
        fraction=fraction,
        second=second if first in STOP_SIGNALS else None,
        gap_s=gap_s,
        service=service,
        apply=scenario is Scenario.APPLY or (scenario is Scenario.DRAIN and drain_apply),
        config=config,
        config_flag=config_flag,
    )
    return replace(plan, apply_mark=mark if at_apply and plan.apply else None)


def delay_s(plan: Plan, natural_s: float) -> float:
    """Seconds from the start to the first signal."""
    return plan.early_s if plan.early_s is not None else plan.fraction * natural_s


def describe(plan: Plan) -> str:
    """The seed-derived choices, for the iteration's line."""
    extras: list[str] = []
    if plan.scenario is Scenario.DRAIN:
        extras.append(plan.service)
    if plan.apply:
        extras.append(f"apply:cfg{plan.config}" + (":flag" if plan.config_flag else ""))
    variant = f"({','.join(extras)})" if extras else ""
    second = f"+{plan.second.value}@{plan.gap_s:.2f}s" if plan.second else ""
    moment = f"@{plan.apply_mark}" if plan.apply_mark else ""
    return f"{plan.scenario.value}{variant} {plan.signal.value}{moment}->{plan.target}{second}"


def calibration_plan(scenario: Scenario) -> Plan:
    """The scenario left alone, in its first variation (a systemd unit, the first config)."""
    return Plan(
        index=-1,
        scenario=scenario,
        signal=Sig.TERM,
        target="pid",
        early_s=None,
        fraction=0.0,
        second=None,
        gap_s=0.0,
        service="systemd",
        apply=scenario is Scenario.APPLY,
        config=0,
        config_flag=False,
    )
