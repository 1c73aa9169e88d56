"""ops/chaos: the plan drawn from a seed, the invariants checked on hand-made facts (each rule
against the broken outcome it must catch), the rendering; then one short end-to-end run of the
real suite against the real commands."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reliakit.chaos_checks import (
    ConfigFacts,
    Facts,
    RunRow,
    Sent,
    ServiceFacts,
    failures,
    new_config_problem,
)
from reliakit.chaos_main import parse
from reliakit.chaos_plan import (
    CONFIG_TEMPLATES,
    EARLY_WINDOW_S,
    Plan,
    Scenario,
    Sig,
    calibration_plan,
    delay_s,
    describe,
    pick_plan,
)
from reliakit.chaos_render import Result, docs_body, iteration_lines, records_json, summary_line
from tests.conftest import ROOT, clean_env

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
TINY = "/fixtures/tiny"
RECOMMENDATION = {
    "model": TINY,
    "knobs": {"kv_bits": None, "max_concurrency_override": 1, "max_context_override": 72},
}

# --- the plan -------------------------------------------------------------------------------


def test_a_seed_replays_the_same_plans_and_iterations_differ() -> None:
    assert [pick_plan(7, i) for i in range(20)] == [pick_plan(7, i) for i in range(20)]
    assert len({dataclasses.astuple(pick_plan(7, i))[1:] for i in range(20)}) == 20
    assert pick_plan(7, 3) != pick_plan(8, 3)


def test_plans_reach_every_scenario_signal_moment_and_variation() -> None:
    plans = [pick_plan(1234, i) for i in range(400)]
    assert {p.scenario for p in plans} == set(Scenario)
    assert {p.signal for p in plans} == set(Sig)
    assert {p.target for p in plans} == {"pid", "group"}
    assert any(p.early_s is not None for p in plans)
    assert any(p.early_s is None and p.fraction > 1.0 for p in plans)  # after the natural end
    drains = [p for p in plans if p.scenario is Scenario.DRAIN]
    assert {p.service for p in drains} == {"systemd", "launchd"}
    assert {p.apply for p in drains} == {True, False}
    assert {p.config for p in plans} == set(range(len(CONFIG_TEMPLATES)))
    assert {p.signal for p in plans if p.apply_mark} == set(Sig)  # at --apply, any signal
    assert {p.apply_mark for p in plans} == {None, "backup", "temp"}


@pytest.mark.parametrize("index", range(60))
def test_each_plan_is_consistent(index: int) -> None:
    plan = pick_plan(99, index)
    assert plan.index == index
    if plan.scenario is Scenario.APPLY:
        assert plan.apply
    elif plan.scenario is not Scenario.DRAIN:
        assert not plan.apply
    if plan.apply_mark is not None:
        assert plan.apply  # waits for --apply's files: only a command that writes them
    if plan.signal is Sig.KILL:
        assert plan.second is None  # nothing follows a SIGKILL
    if plan.early_s is not None:
        assert 0 <= plan.early_s <= EARLY_WINDOW_S


@pytest.mark.parametrize(
    ("early_s", "fraction", "natural_s", "delay"),
    [(0.4, 0.9, 10.0, 0.4), (None, 0.5, 10.0, 5.0), (None, 1.05, 8.0, 8.4), (0.0, 0.0, 5.0, 0.0)],
)
def test_the_delay_is_the_early_moment_or_a_share_of_the_natural_duration(
    early_s: float | None, fraction: float, natural_s: float, delay: float
) -> None:
    plan = replace(pick_plan(1, 0), early_s=early_s, fraction=fraction)
    assert delay_s(plan, natural_s) == pytest.approx(delay)


def test_a_calibration_sends_nothing_after_and_writes_only_with_apply() -> None:
    assert calibration_plan(Scenario.APPLY).apply
    assert not calibration_plan(Scenario.DRAIN).apply
    assert calibration_plan(Scenario.RUN).second is None


# --- the invariants -------------------------------------------------------------------------


def sent(signal: Sig = Sig.INT, at_s: float = 3.0, *, caught: bool = True) -> Sent:
    return Sent(signal, at_s, T0 + timedelta(seconds=at_s), caught)


def row(reason: str | None, ended_s: float | None, recommendation: Any = None) -> RunRow:
    ended = None if ended_s is None else T0 + timedelta(seconds=ended_s)
    return RunRow("run-1", reason, ended, recommendation)


ORIGINAL = CONFIG_TEMPLATES[0].encode()
NEW = ORIGINAL + f"model: {TINY}\nmax_context_override: 72\nmax_concurrency_override: 1\n".encode()


def config(now: bytes | None = ORIGINAL, *, at_s: float = 9.0, **more: Any) -> ConfigFacts:
    backups = (ORIGINAL,) if now != ORIGINAL else ()
    fields: dict[str, Any] = {"strays": (), "backups": backups, **more}
    return ConfigFacts(ORIGINAL, now, T0 + timedelta(seconds=at_s), **fields)


def interrupted(**changes: Any) -> Facts:
    """An autotune stopped by a SIGINT at 3 s, in order: the facts of a correct run."""
    facts = Facts(
        natural_code=0,
        exit_code=130,
        exit_s=0.4,
        exit_bound_s=60.0,
        sent=(sent(),),
        provider_seen=True,
        leftovers=(),
        death_s=0.0,
        provider_death_s=None,
        port_free=True,
        integrity="ok",
        runs=(row("interrupted", 3.3),),
        config=config(),
        service=None,
        stderr="2026-12-02 macprovider-supervise: SIGINT: stopping in order\n",
    )
    return replace(facts, **changes)


def finished(**changes: Any) -> Facts:
    """An autotune that ended by itself, `ok`, and applied its recommendation."""
    base = interrupted(
        exit_code=0, sent=(), runs=(row("ok", 8.0, RECOMMENDATION),), config=config(NEW)
    )
    return replace(base, **changes)


Case = tuple[str, Scenario, Callable[[], Facts], bool, str | None]
CASES: list[Case] = [
    ("in order", Scenario.AUTOTUNE, interrupted, False, None),
    ("applied, no signal", Scenario.APPLY, finished, True, None),
    (
        "lost signal",
        Scenario.AUTOTUNE,
        lambda: interrupted(exit_code=0, runs=(row("ok", 8.0),)),
        False,
        "LOST SIGNAL: SIGINT at 3.00 s, yet exit 0",
    ),
    (
        "a signal after the run closed may keep exit 0",
        Scenario.AUTOTUNE,
        lambda: interrupted(exit_code=0, sent=(sent(at_s=8.5),), runs=(row("ok", 8.0),)),
        False,
        None,
    ),
    (
        "the row closed as something else",
        Scenario.AUTOTUNE,
        lambda: interrupted(runs=(row("ok", 8.0),)),
        False,
        "exit 130 but the run row says ok, expected interrupted",
    ),
    (
        "the row left open after one signal",
        Scenario.AUTOTUNE,
        lambda: interrupted(runs=(row(None, None),)),
        False,
        "left open",
    ),
    (
        "a second signal may leave the row open",
        Scenario.AUTOTUNE,
        lambda: interrupted(sent=(sent(), sent(Sig.TERM, 3.2)), runs=(row(None, None),)),
        False,
        None,
    ),
    (
        "before the supervisor: one line, nothing written",
        Scenario.AUTOTUNE,
        lambda: interrupted(runs=(), integrity=None, stderr="stopped before anything started\n"),
        False,
        None,
    ),
    (
        "before the supervisor, but chatty",
        Scenario.AUTOTUNE,
        lambda: interrupted(runs=(), integrity=None, stderr="a\nb\n"),
        False,
        "2 lines on stderr, expected 1",
    ),
    (
        "an unexpected exit code",
        Scenario.AUTOTUNE,
        lambda: interrupted(exit_code=70),
        False,
        "exit 70 after SIGINT at 3.00 s, expected 0 or 130",
    ),
    (
        "killed by a handled signal",
        Scenario.AUTOTUNE,
        lambda: interrupted(exit_code=-2),
        False,
        "killed by SIGINT: the first, at 3.00 s, had a handler",
    ),
    (
        "killed by a second signal whose handler was gone",
        Scenario.RUN,
        lambda: interrupted(exit_code=-2, sent=(sent(), sent(at_s=3.5, caught=False))),
        False,
        "the second, at 3.50 s, found no handler",
    ),
    (
        "killed while the interpreter started: the kernel's default",
        Scenario.AUTOTUNE,
        lambda: interrupted(exit_code=-15, sent=(sent(Sig.TERM, 0.01, caught=False),), runs=()),
        False,
        None,
    ),
    (
        "traceback",
        Scenario.AUTOTUNE,
        lambda: interrupted(stderr="Traceback (most recent call last):\n  x\nKeyError: 1\n"),
        False,
        "traceback on stderr: KeyError: 1",
    ),
    (
        "a process left",
        Scenario.AUTOTUNE,
        lambda: interrupted(leftovers=("PID 9 python -m macprovider.cli serve",)),
        False,
        "left running after the exit: PID 9",
    ),
    ("port held", Scenario.AUTOTUNE, lambda: interrupted(port_free=False), False, "port"),
    (
        "DB corrupt",
        Scenario.AUTOTUNE,
        lambda: interrupted(integrity="*** in database main ***"),
        False,
        "integrity_check",
    ),
    (
        "no exit",
        Scenario.AUTOTUNE,
        lambda: interrupted(exit_code=None),
        False,
        "still running 60 s after SIGINT",
    ),
    (
        "SIGKILL: the row stays open, a slow provider death fails",
        Scenario.APPLY,
        lambda: interrupted(
            exit_code=-9, sent=(sent(Sig.KILL),), runs=(row(None, None),), provider_death_s=0.8
        ),
        True,
        "provider outlived its SIGKILLed supervisor by 0.80 s",
    ),
    (
        "SIGKILL with a quick provider death",
        Scenario.APPLY,
        lambda: interrupted(
            exit_code=-9, sent=(sent(Sig.KILL),), runs=(row(None, None),), provider_death_s=0.1
        ),
        True,
        None,
    ),
    (
        "SIGKILL mid-apply leaves a temp file",
        Scenario.APPLY,
        lambda: interrupted(
            exit_code=-9, sent=(sent(Sig.KILL),), config=config(strays=(".config.yaml.x.tmp",))
        ),
        True,
        "stray files beside the config: .config.yaml.x.tmp",
    ),
    (
        "--apply wrote after the stop",
        Scenario.APPLY,
        lambda: interrupted(
            exit_code=0,
            sent=(sent(at_s=8.5),),
            runs=(row("ok", 8.0, RECOMMENDATION),),
            config=config(NEW, at_s=9.0),
        ),
        True,
        "--apply wrote the config 0.50 s after SIGINT",
    ),
    (
        "--apply stopped before its commit point: no backup left",
        Scenario.APPLY,
        lambda: interrupted(config=config(backups=(ORIGINAL,))),
        True,
        "a backup was left beside the unchanged config",
    ),
    (
        "SIGKILL between the backup and the rename: the backup may stay",
        Scenario.APPLY,
        lambda: interrupted(
            exit_code=-9, sent=(sent(Sig.KILL),), config=config(backups=(ORIGINAL,))
        ),
        True,
        None,
    ),
    (
        "a config written by a command that must not write it",
        Scenario.AUTOTUNE,
        lambda: finished(),
        False,
        "must not write it",
    ),
    (
        "a rewrite without a backup",
        Scenario.APPLY,
        lambda: finished(config=config(NEW, backups=())),
        True,
        "without a backup",
    ),
    (
        "a partial config",
        Scenario.APPLY,
        lambda: finished(config=config(ORIGINAL[:20] + b"\n  - [")),
        True,
        "not valid YAML",
    ),
    (
        "`run` stops with 0 once supervised",
        Scenario.RUN,
        lambda: interrupted(exit_code=0, runs=(), integrity=None),
        False,
        None,
    ),
    (
        "`run` with 130 once its provider ran",
        Scenario.RUN,
        lambda: interrupted(runs=(), integrity=None),
        False,
        "exit 130 after SIGINT at 3.00 s, expected 0 (its provider was already running)",
    ),
    (
        "`run` with 130 before",
        Scenario.RUN,
        lambda: interrupted(runs=(), integrity=None, provider_seen=False),
        False,
        None,
    ),
    (
        "`run` ending by itself",
        Scenario.RUN,
        lambda: interrupted(exit_code=75, sent=(), runs=(), integrity=None),
        False,
        "`run` exited on its own with 75",
    ),
]


@pytest.mark.parametrize(
    ("scenario", "make", "may_write", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_each_invariant_catches_what_breaks_it(
    scenario: Scenario, make: Callable[[], Facts], may_write: bool, expected: str | None
) -> None:
    found = failures(scenario, make(), may_write=may_write)
    if expected is None:
        assert found == []
    else:
        assert any(expected in line for line in found), found


@pytest.mark.parametrize(
    ("stops", "restores", "sent_signals", "expected"),
    [
        (1, 1, (Sig.INT,), None),
        (0, 0, (Sig.INT,), None),  # stopped before the drain
        (1, 0, (Sig.INT,), "drained, then restored 0 times, expected once"),
        (1, 2, (Sig.INT,), "restored 2 times"),
        (0, 1, (Sig.INT,), "restored without having been drained"),
        (2, 1, (Sig.INT,), "drained 2 times"),
        (1, 0, (Sig.INT, Sig.TERM), None),  # a second signal skips the restore
        (1, 0, (Sig.KILL,), None),
        (1, 2, (Sig.KILL,), "restored 2 times"),
    ],
)
def test_a_drained_service_is_restored_exactly_once(
    stops: int, restores: int, sent_signals: tuple[Sig, ...], expected: str | None
) -> None:
    shots = tuple(sent(s, 3.0 + i) for i, s in enumerate(sent_signals))
    code = -9 if Sig.KILL in sent_signals else 130
    facts = interrupted(service=ServiceFacts(stops, restores), sent=shots, exit_code=code)
    found = failures(Scenario.DRAIN, facts, may_write=False)
    assert (found == []) if expected is None else any(expected in f for f in found), found


VALUES = {"model": TINY, "kv_bits": None, "max_context_override": 72}
OWNED = b"model: /fixtures/tiny\nmax_context_override: 72\n"


@pytest.mark.parametrize(
    ("original", "now", "values", "expected"),
    [
        (b"# c\nport: 1\n", b"# c\nport: 1\n" + OWNED, VALUES, None),
        (b"model: x\nkv_bits: 4\nport: 1\n", b"port: 1\n" + OWNED, VALUES, None),
        (None, OWNED, VALUES, None),
        (b"port: 1\r\n", b"port: 1\r\n" + OWNED.replace(b"\n", b"\r\n"), VALUES, None),
        (b"port: 1\n", b"port: 1\n" + OWNED + b"kv_bits: 8\n", VALUES, "recommendation removes"),
        (b"port: 1\n", OWNED.replace(b"tiny", b"small"), VALUES, "recommended '/fixtures/tiny'"),
        (b"# c\nport: 1\n", b"port: 1\n" + OWNED, VALUES, "lost or reordered lines: b'# c\\n'"),
        (b"a: 1\nb: 2\n", b"b: 2\na: 1\n" + OWNED, VALUES, "lost or reordered"),
        (b"port: 1\n", b"port: 1\nmodel: [", VALUES, "not valid YAML"),
        (b"port: 1\n", b"- a\n", VALUES, "not a mapping"),
        (b"port: 1\n", b"port: 2\n", None, "no complete recommendation"),
    ],
)
def test_a_rewritten_config_is_the_complete_new_file(
    original: bytes | None, now: bytes, values: dict[str, Any] | None, expected: str | None
) -> None:
    problem = new_config_problem(original, now, values)
    assert problem is None if expected is None else expected in str(problem), problem


def test_every_template_is_valid_yaml_with_its_owned_keys_replaceable() -> None:
    import yaml

    for template in CONFIG_TEMPLATES:
        assert isinstance(yaml.safe_load(template), dict)


# --- rendering ------------------------------------------------------------------------------


def result(plan: Plan | None, facts: Facts, found: tuple[str, ...] = ()) -> Result:
    scenario = plan.scenario if plan else Scenario.AUTOTUNE
    return Result(plan, scenario, 10.0, 2.5, 3.0, facts, found, "/tmp/x" if found else None)


def test_lines_name_the_plan_and_each_failure_and_the_summary_counts_failures() -> None:
    plan = replace(pick_plan(5, 0), scenario=Scenario.APPLY, signal=Sig.INT, second=None)
    ok, bad = result(plan, interrupted()), result(plan, interrupted(), ("LOST SIGNAL: x",))
    assert iteration_lines(ok)[0].endswith("ok")
    assert describe(plan) in iteration_lines(ok)[0] and "exit 130" in iteration_lines(ok)[0]
    assert iteration_lines(bad)[1:] == ["       - LOST SIGNAL: x", "       files: /tmp/x"]
    calibration = result(None, finished(), ("exit 2 without a signal, expected 0",))
    assert summary_line([ok, bad, calibration], 42) == "chaos: 2 failures in 2 iterations (seed 42)"
    assert summary_line([ok], 1) == "chaos: 0 failures in 1 iterations (seed 1)"
    assert json.loads(records_json([ok, bad], 42))["failures"] == 1


def test_the_docs_table_counts_by_scenario_and_signal_and_names_the_slowest_kill() -> None:
    base = pick_plan(5, 0)
    kill = replace(base, index=1, scenario=Scenario.RUN, signal=Sig.KILL, second=None)
    term = replace(base, index=2, scenario=Scenario.RUN, signal=Sig.TERM, second=Sig.INT)
    results = [
        result(kill, interrupted(sent=(sent(Sig.KILL),), provider_death_s=0.31)),
        result(term, interrupted(), ("exit 70",)),
    ]
    body = docs_body(results, 9, "Command: `ops/chaos`")
    assert "| run | – | 1 (1 failed) | 1 | 1 (1 failed) | 2 (1 failed) |" in body
    assert "0.31 s (iteration 1, run)" in body
    assert "- 2 `" in body and "exit 70" in body


@pytest.mark.parametrize("argv", [["--iterations", "0"], ["--iterations", "x"], ["--nope"]])
def test_a_bad_flag_exits_64(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse(argv)
    assert stopped.value.code == 64
    assert capsys.readouterr().err.startswith("chaos: error: ")


# --- END TO END: the real suite, two iterations against the real commands (about a minute) ---


@pytest.mark.slow
def test_end_to_end_two_iterations_of_the_real_suite(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [str(ROOT / "ops" / "chaos"), "--iterations", "2", "--seed", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        env=clean_env(),
    )
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "chaos: seed 1", done.stdout + done.stderr
    assert re.fullmatch(r"chaos: \d+ failures? in 2 iterations \(seed 1\)", lines[-1]), lines
    document = json.loads(out.read_text())
    iterations = [r for r in document["results"] if r["plan"] is not None]
    assert [r["plan"]["index"] for r in iterations] == [0, 1]
    assert done.returncode == (1 if document["failures"] else 0)
    assert done.returncode == 0, done.stdout
