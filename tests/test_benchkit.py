"""The benchmark's arithmetic: rates from replicates, ratios and verdicts from samples, and the
autotune time split from log lines. These are what the published figures rest on, so they are
checked on hand-made inputs with known answers (no model, no server)."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchkit import places
from benchkit.autotune_time import analyse, log_time
from benchkit.measure import rotation
from benchkit.plan import ENGINE, OURS, RAW, THEIRS, Memory, Plan, Results, Sample, sample_from
from benchkit.summary import Target, summarize
from macprovider.actors.tuning import Replicate
from tests.conftest import ROOT

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("value", "goal", "at_least", "verdict"),
    [
        (0.95, 0.95, True, "met"),
        (1.20, 1.0, True, "met"),
        (0.90, 1.0, True, "missed by 10 %"),
        (0.97, 2.0, True, "missed by 52 %"),
        (1.05, 1.05, False, "met"),
        (1.18, 1.0, False, "missed by 18 %"),
        (None, 1.0, True, "not measured"),
    ],
)
def test_a_target_says_met_or_by_how_much_it_missed(
    value: float | None, goal: float, at_least: bool, verdict: str
) -> None:
    target = Target("x", value, goal, at_least)
    assert target.verdict() == verdict
    assert target.as_json()["met"] is (None if value is None else verdict == "met")


def test_decode_rate_counts_the_tokens_after_the_first_over_the_time_after_it() -> None:
    # 101 tokens, the first at 0.5 s, the stream ending at 2.5 s: 100 tokens in 2 s.
    replicate = Replicate(True, 101, 2.5, (500.0,), None, False)
    sample = sample_from(replicate, OURS, "stream", None, 1, 128, 101, (0, 0))
    assert sample.ok
    assert sample.decode_tps == pytest.approx(50.0)
    assert sample.aggregate_tps == pytest.approx(101 / 2.5)


@pytest.mark.parametrize(
    ("replicate", "reason"),
    [
        (Replicate(False, 3, 1.0, (10.0,), "HTTP 503", False), "HTTP 503"),
        (Replicate(True, 10, 1.0, (10.0,), None, True), "a stop token leaked"),
        (Replicate(True, 0, 1.0, (), None, False), "nothing generated"),
    ],
)
def test_a_bad_replicate_is_a_failed_sample_with_its_reason(
    replicate: Replicate, reason: str
) -> None:
    sample = sample_from(replicate, THEIRS, "stream", None, 4, 128, 10, (0, 1))
    assert not sample.ok
    assert sample.reason == reason
    assert sample.aggregate_tps is None


def test_concurrency_rates_have_no_single_stream_decode_figure() -> None:
    replicate = Replicate(True, 400, 2.0, (100.0, 110.0, 120.0, 130.0), None, False)
    sample = sample_from(replicate, OURS, "stream", None, 4, 128, 100, (0, 0))
    assert sample.decode_tps is None
    assert sample.aggregate_tps == pytest.approx(200.0)


def test_every_contender_leads_a_repetition_in_turn() -> None:
    names = [RAW, OURS, THEIRS]
    firsts = [rotation(names, repetition)[0] for repetition in range(3)]
    assert firsts == [RAW, OURS, THEIRS]
    assert rotation(names, 3) == names


def _sample(contender: str, c: int, aggregate: float, decode: float | None = None) -> Sample:
    return Sample(
        contender=contender,
        kind="stream",
        kv_bits=None,
        concurrency=c,
        prompt_tokens=128,
        max_tokens=128,
        repetition=0,
        position=0,
        ok=True,
        reason=None,
        tokens=128 * c,
        wall_s=1.0,
        ttft_ms=[100.0] * c,
        aggregate_tps=aggregate,
        decode_tps=decode,
    )


def test_the_summary_holds_the_target_ratios_from_medians() -> None:
    plan = Plan(Path("/m"), 3, (1, 4), (2000,), (None,), 128, False)
    samples = [
        # Medians: raw decode 200, ours decode 190 → 0.95; a failed sample never counts.
        *(_sample(RAW, 1, 1.0, d) for d in (100.0, 200.0, 300.0)),
        *(_sample(OURS, 1, a, d) for a, d in ((100.0, 180.0), (110.0, 190.0), (120.0, 195.0))),
        *(_sample(THEIRS, 1, a) for a in (90.0, 100.0, 105.0)),
        *(_sample(OURS, 4, a) for a in (200.0, 220.0, 240.0)),
        *(_sample(THEIRS, 4, a) for a in (100.0, 110.0, 400.0)),
        *(_sample(ENGINE, 1, a) for a in (120.0, 125.0, 130.0)),
        *(_sample(ENGINE, 4, a) for a in (240.0, 250.0, 260.0)),
    ]
    samples.append(replace(_sample(THEIRS, 4, 0.0), ok=False))
    for contender, ttft in ((OURS, 1000.0), (THEIRS, 800.0)):
        prompt = replace(_sample(contender, 1, 1.0), kind="prompt", prompt_tokens=2000)
        samples.append(replace(prompt, ttft_ms=[ttft]))
    memory = [
        Memory(OURS, None, 1, 1.0, 120 * MIB, 130 * MIB),
        Memory(THEIRS, None, 1, 1.0, 100 * MIB, 110 * MIB),
        Memory(OURS, None, 4, 1.0, 999 * MIB, 999 * MIB),  # not the base configuration
    ]
    summary = summarize(plan, Results(samples=samples, memory=memory))

    assert summary["single_vs_raw"] == pytest.approx(190.0 / 200.0)
    assert summary["vs_mlx_lm_server"] == {
        "1": pytest.approx(110.0 / 100.0),
        "4": pytest.approx(220.0 / 110.0),
    }
    assert summary["ours_c4_vs_c1"] == pytest.approx(220.0 / 110.0)
    assert summary["engine_c4_vs_c1"] == pytest.approx(250.0 / 125.0)
    assert summary["vs_engine"]["4"] == pytest.approx(220.0 / 250.0)
    assert summary["ttft_2000_vs_mlx_lm_server"] == pytest.approx(1000.0 / 800.0)
    assert summary["idle_rss_vs_mlx_lm_server"] == pytest.approx(1.2)
    assert summary["kv8_vs_mlx_lm_server"] == {}

    verdicts = {t["name"]: t["verdict"] for t in summary["targets"]}
    assert verdicts["single-stream decode tok/s, ours / raw engine"] == "met"
    assert verdicts["aggregate tok/s, ours at 4 / ours at 1"] == "met"
    assert verdicts["TTFT at 2000 prompt tokens, ours / mlx_lm.server"] == "missed by 19 %"
    assert verdicts["idle RSS, ours / mlx_lm.server"] == "missed by 20 %"
    assert verdicts["kv-bits 8 aggregate tok/s at 4, ours / mlx_lm.server"] == "not measured"


DAY = "2026-11-25"


def _line(clock: str, text: str) -> str:
    return f"{DAY} {clock} macprovider-supervise: {text}"


def _at(clock: str) -> float:
    return log_time(f"{DAY} {clock}")


def _demo_stderr(provider_log: Path) -> list[str]:
    provider_log.write_text(
        "\n".join(
            [
                _line("12:00:02,000", "Running on http://127.0.0.1:1"),
                _line("12:00:03,500", "model loaded from /f/medium; serving it as '/f/medium'"),
                _line("12:00:10,000", "SIGTERM: finishing in-flight requests, then exiting"),
            ]
        )
        + "\n"
    )
    return [
        "not a log line: ignored",
        _line("12:00:01,000", "stage 1: biggest model that fits (1 trials at most)"),
        _line("12:00:01,500", "stage 1 candidate 1/1: /f/medium (kv-bits unset, max-batch 1)"),
        _line("12:00:01,600", f"provider started: pid 7, /f/medium on port 1, log {provider_log}"),
        _line("12:00:10,200", "provider pid 7 exited 0"),
        _line("12:00:10,300", "stage 1 [1/1] /f/medium fits: 19.5 tok/s"),
        _line("12:00:10,500", "stopping (finished)"),
        "time: measurement 6.5 s",
    ]


def test_the_time_split_adds_up_to_the_wall_time(tmp_path: Path) -> None:
    stderr = _demo_stderr(tmp_path / "provider.log")
    launched, exited = _at("12:00:00,000"), _at("12:00:11,000")
    found = analyse(launched, exited, stderr, tmp_path / "no.sqlite", 0, "RECOMMENDATION")

    (trial,) = found.trials
    assert trial["what"] == "/f/medium (kv-bits unset, max-batch 1)"
    # No DB: the warm-up cannot be told apart from the measurement.
    assert trial["start"] == pytest.approx(2.0)
    assert trial["warmup"] == pytest.approx(0.0)
    assert trial["measure"] == pytest.approx(6.5)
    assert trial["stop"] == pytest.approx(0.2)
    assert trial["overhead"] == pytest.approx(0.1)

    stage = found.rows["stage 1 (1 trials)"]
    assert stage["prewarm"] == pytest.approx(0.5)  # stage line → trial start
    assert stage["overhead"] == pytest.approx(0.1 + 0.2)  # in the trial + after it
    assert found.rows["set-up"]["setup"] == pytest.approx(1.0)
    assert found.rows["wind-down"]["overhead"] == pytest.approx(0.5)
    total = found.rows["total"]
    parts = sum(v for k, v in total.items() if k != "wall")
    assert total["wall"] == pytest.approx(11.0)
    assert parts == pytest.approx(11.0)
    assert found.tuner_line == "time: measurement 6.5 s"


def test_the_db_load_time_separates_the_warm_up_from_the_measurement(tmp_path: Path) -> None:
    stderr = _demo_stderr(tmp_path / "provider.log")
    db = tmp_path / "autotune.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE tune_runs (run_id TEXT, started_at_utc TEXT)")
        conn.execute("CREATE TABLE tune_trials (id INTEGER, run_id TEXT, ts_utc TEXT, notes TEXT)")
        started = datetime.fromtimestamp(_at("12:00:00,400"), UTC).isoformat()
        recorded = datetime.fromtimestamp(_at("12:00:10,250"), UTC).isoformat()
        conn.execute("INSERT INTO tune_runs VALUES ('r1', ?)", (started,))
        conn.execute("INSERT INTO tune_trials VALUES (1, 'r1', ?, 'load 3.0 s')", (recorded,))
    found = analyse(_at("12:00:00,000"), _at("12:00:11,000"), stderr, db, 0, "")

    (trial,) = found.trials
    # Ready at 3.5 s, warm (start 1.5 + load 3.0) at 4.5 s, SIGTERM at 10.0 s.
    assert trial["warmup"] == pytest.approx(1.0)
    assert trial["measure"] == pytest.approx(5.5)
    assert found.rows["set-up"]["interpreter_and_imports"] == pytest.approx(0.4)


def test_the_harness_finds_the_checkout_it_lives_in() -> None:
    assert places.ROOT == ROOT
    assert places.DOCS == ROOT / "docs" / "PERFORMANCE.md"
    assert (places.ROOT / "ops" / "fixtures.py").is_file()
