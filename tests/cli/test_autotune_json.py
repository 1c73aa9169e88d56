"""`autotune --json`: documents built through `build_report` from hand-made stored
runs (no processes, no database), each validated against the JSON Schema the package ships.

Validation runs without format checking: `format` is an annotation in draft 2020-12, and
jsonschema checks `date-time` only when an optional extra is installed, so a check that silently
depends on the environment is left off. The schema's `pattern` fixes the timestamp shape
everywhere, and the tests parse each timestamp back to prove it is a real moment.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Final, cast

import pytest
from jsonschema import Draft202012Validator

from macprovider.actors.exit_reasons import ExitReason
from macprovider.actors.recommendation import Recommendation, recipe_hash
from macprovider.actors.store_records import KvBits, RunStart, StoredRun, StoredTrial, TrialRecord
from macprovider.actors.trial_outcome import TrialOutcome
from macprovider.actors.tuning import Cell
from macprovider.cli.autotune_json import (
    SCHEMA_PACKAGE,
    SCHEMA_RESOURCE,
    dumps_document,
    load_schema,
    run_document,
    utc_timestamp,
)
from macprovider.cli.run_report import CandidateSizes, RunReport, build_report

STARTED = datetime(2026, 11, 25, 9, 0, 0, 123456, tzinfo=UTC)
ENDED = STARTED + timedelta(minutes=42)
LARGE, MEDIUM, SMALL = "org/large-32B", "org/medium-14B", "org/small-7B"
CANDIDATES = (LARGE, MEDIUM, SMALL)  # largest first, as given
SIZES = CandidateSizes({LARGE: 32.0, MEDIUM: 14.0, SMALL: 7.0}, {})
DB_PATH = Path("/home/op/.config/macprovider/autotune.sqlite")
TARGET = 2000
OOM = "provider exited during load: [METAL] out of memory"
TOO_SLOW = "TTFT p95 61234 ms over the 60000 ms gate"
TRANSIENT = "pre-warm transient failure: org/small-7B: HTTP 503"
DAMAGED = "pre-warm integrity failure: org/medium-14B: model.safetensors: sha256 mismatch"
UNSET_CELL = Cell(kv_bits=None, max_batch=2, max_context=2064)
KV4_CELL = Cell(kv_bits=4, max_batch=1, max_context=2064)

# The contract's frozen order (the schema's `required`), then `partial`.
KEYS: Final = [
    "spec_version",
    "run_id",
    "started_at",
    "ended_at",
    "machine",
    "inputs",
    "recommendation",
    "alternates",
    "infeasible",
    "recipe_hash",
    "db_path",
    "exit_reason",
    "partial",
]


# --- hand-made stored runs ------------------------------------------------------------------


def run_start(run_id: str, candidates: tuple[str, ...] = CANDIDATES) -> RunStart:
    return RunStart(
        run_id=run_id,
        started_at=STARTED,
        spec_version="0.3",
        binary_version="0.1.0",
        machine_ram_gb=24.0,
        machine_chip="Apple M2 Pro",
        machine_os_version="macOS-15.1-arm64-arm-64bit",
        target_context=TARGET,
        candidate_models=candidates,
        stage1_replicates=1,
        stage2_replicates=3,
        gate_ttft_ms=60000.0,
        tps_tie_epsilon=0.02,
    )


def winner(model: str, cell: Cell) -> Recommendation:
    # `partial` is what build_report derives from the exit reason; the stored JSON lacks it.
    return Recommendation(model, TARGET, cell, 41.5, 812.0, 3, partial=False)


def stored_run(
    start: RunStart,
    reason: ExitReason | None,
    recommendation: Recommendation | None = None,
    *,
    store_hash: bool = True,
) -> StoredRun:
    """As the tuner closes a run: the recommendation's JSON and its hash, or neither."""
    document, recipe = None, None
    if recommendation is not None:
        document = json.dumps(recommendation.as_json())
        if store_hash:
            recipe = recipe_hash(
                recommendation,
                binary_version=start.binary_version,
                candidate_models=start.candidate_models,
                chip=start.machine_chip,
                ram_gb=start.machine_ram_gb,
            )
    ended = None if reason is None else ENDED
    return StoredRun(start, ended, reason, document, recipe, applied=False)


def stage1(
    trial_id: int, model: str, *, outcome: TrialOutcome, notes: str | None = None
) -> StoredTrial:
    record = TrialRecord(
        run_id="any",
        stage=1,
        ts=STARTED + timedelta(minutes=trial_id),
        model=model,
        target_context=TARGET,
        max_tokens=64,
        outcome=outcome,
        notes=notes,
    )
    return StoredTrial(trial_id, kept=False, record=record)


def stage2(
    trial_id: int,
    model: str,
    cell: Cell,
    *,
    kept: bool = False,
    notes: str | None = None,
    outcome: TrialOutcome = TrialOutcome.FITS,
) -> StoredTrial:
    record = TrialRecord(
        run_id="any",
        stage=2,
        ts=STARTED + timedelta(minutes=trial_id),
        model=model,
        target_context=TARGET,
        max_tokens=64,
        outcome=outcome,
        agg_throughput_tps=None if notes else 41.5,
        ttft_p95_ms=None if notes else 812.0,
        notes=notes,
        kv_bits=cast(KvBits | None, cell.kv_bits),
        max_context=cell.max_context,
        max_batch=cell.max_batch,
        replicates_n=3,
    )
    return StoredTrial(trial_id, kept=kept, record=record)


def report(run: StoredRun, *trials: StoredTrial) -> RunReport:
    return build_report(run, trials, SIZES, DB_PATH)


CUT_OUTCOMES = {
    "out of budget": TrialOutcome.OUT_OF_BUDGET,
    "interrupted": TrialOutcome.INTERRUPTED,
}


def medium_chosen(cut: str | None, winning: Cell) -> tuple[StoredTrial, ...]:
    """Large does not fit, medium does; Stage 2 keeps `winning`, a later cell may be cut."""
    trials = [
        stage1(1, LARGE, outcome=TrialOutcome.LOAD_FAILED, notes=OOM),
        stage1(2, MEDIUM, outcome=TrialOutcome.FITS),
        stage2(3, MEDIUM, winning, kept=True),
    ]
    if cut is not None:
        outcome = CUT_OUTCOMES[cut]
        trials.append(stage2(4, MEDIUM, Cell(8, 2, 2064), notes=cut, outcome=outcome))
    return tuple(trials)


def ok_run() -> RunReport:
    run = stored_run(run_start("ok"), ExitReason.OK, winner(MEDIUM, UNSET_CELL))
    return report(run, *medium_chosen(None, UNSET_CELL))


def budget_partial_run() -> RunReport:
    reason = ExitReason.BUDGET_EXHAUSTED_WITH_PARTIAL_RECOMMENDATION
    run = stored_run(run_start("budget"), reason, winner(MEDIUM, KV4_CELL))
    return report(run, *medium_chosen("out of budget", KV4_CELL))


def interrupted_partial_run() -> RunReport:
    run = stored_run(run_start("ctrl-c"), ExitReason.INTERRUPTED, winner(MEDIUM, UNSET_CELL))
    return report(run, *medium_chosen("interrupted", UNSET_CELL))


def interrupted_in_stage1_run() -> RunReport:
    run = stored_run(run_start("ctrl-c-stage1"), ExitReason.INTERRUPTED)
    trials = (
        stage1(1, LARGE, outcome=TrialOutcome.LOAD_FAILED, notes=OOM),
        stage1(2, MEDIUM, outcome=TrialOutcome.INTERRUPTED, notes="interrupted"),
    )
    return report(run, *trials)


def no_feasible_run() -> RunReport:
    run = stored_run(run_start("none-fit"), ExitReason.NO_FEASIBLE)
    return report(
        run,
        stage1(1, LARGE, outcome=TrialOutcome.LOAD_FAILED, notes=OOM),
        stage1(2, MEDIUM, outcome=TrialOutcome.OVER_TTFT_GATE, notes=TOO_SLOW),
        stage1(3, SMALL, outcome=TrialOutcome.PREWARM_FAILED, notes=TRANSIENT),
    )


def integrity_failure_run() -> RunReport:
    run = stored_run(run_start("damaged"), ExitReason.PRE_WARM_INTEGRITY_FAILURE)
    return report(
        run,
        stage1(1, LARGE, outcome=TrialOutcome.LOAD_FAILED, notes=OOM),
        stage1(2, MEDIUM, outcome=TrialOutcome.INTEGRITY_FAILURE, notes=DAMAGED),
    )


def unclosed_run() -> RunReport:
    """The process was killed mid Stage 2: the run row was never closed."""
    run = stored_run(run_start("killed"), None)
    return report(run, *medium_chosen(None, UNSET_CELL))


def unhashed_run() -> RunReport:
    """Closed by a version that stored the recommendation but not yet its hash."""
    run = stored_run(run_start("old"), ExitReason.OK, winner(MEDIUM, UNSET_CELL), store_hash=False)
    return report(run, *medium_chosen(None, UNSET_CELL))


SCENARIOS: Final[dict[str, Callable[[], RunReport]]] = {
    "ok": ok_run,
    "budget_partial": budget_partial_run,
    "interrupted_partial": interrupted_partial_run,
    "interrupted_in_stage1": interrupted_in_stage1_run,
    "no_feasible": no_feasible_run,
    "pre_warm_integrity_failure": integrity_failure_run,
    "unclosed": unclosed_run,
    "unhashed": unhashed_run,
}


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return Draft202012Validator(load_schema())


def document(name: str) -> dict[str, Any]:
    return run_document(SCENARIOS[name]())


# --- every document ---------------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_document_matches_the_schema(name: str, validator: Draft202012Validator) -> None:
    doc = document(name)
    errors = [error.message for error in validator.iter_errors(doc)]
    assert errors == []
    # What is printed is what was validated.
    assert json.loads(dumps_document(doc)) == doc


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_field_always_present_in_design_order(name: str) -> None:
    assert list(document(name)) == KEYS


@pytest.mark.parametrize("name", SCENARIOS)
def test_partial_exactly_when_a_recommendation_and_not_ok(name: str) -> None:
    doc = document(name)
    expected = doc["recommendation"] is not None and doc["exit_reason"] != "ok"
    assert doc["partial"] is expected


@pytest.mark.parametrize("name", SCENARIOS)
def test_timestamps_are_utc_with_z_and_parse_back(name: str) -> None:
    doc = document(name)
    assert doc["started_at"] == "2026-11-25T09:00:00.123456Z"
    assert datetime.fromisoformat(doc["started_at"]) == STARTED
    if doc["ended_at"] is not None:
        assert datetime.fromisoformat(doc["ended_at"]) == ENDED


# --- per scenario -----------------------------------------------------------------------


def test_ok_run_document() -> None:
    doc = run_document(ok_run())
    assert doc["recommendation"] == {
        "model": MEDIUM,
        "target_context": TARGET,
        "knobs": {"kv_bits": None, "max_concurrency_override": 2, "max_context_override": 2064},
        "tps_median": 41.5,
        "ttft_p95_ms": 812.0,
        "replicates": 3,
        "serve_command": (
            "macprovider-supervise serve --model org/medium-14B --max-batch 2 --max-context 2064"
        ),
    }
    assert doc["alternates"] == [SMALL]
    assert doc["infeasible"] == [{"model": LARGE, "rank": 1, "reason": OOM}]
    assert doc["exit_reason"] == "ok"
    assert doc["partial"] is False
    assert doc["ended_at"] == "2026-11-25T09:42:00.123456Z"
    assert doc["recipe_hash"] == ok_run().run.recipe_hash
    assert doc["db_path"] == str(DB_PATH)
    assert doc["machine"] == {
        "ram_gb": 24.0,
        "chip": "Apple M2 Pro",
        "os_version": "macOS-15.1-arm64-arm-64bit",
        "binary_version": "0.1.0",
    }
    assert doc["inputs"] == {
        "target_context": TARGET,
        "candidate_models": list(CANDIDATES),
        "stage1_replicates": 1,
        "stage2_replicates": 3,
        "gate_ttft_ms": 60000.0,
        "tps_tie_epsilon": 0.02,
    }


def test_kv_bits_unset_is_json_null_and_no_flag() -> None:
    text = dumps_document(run_document(ok_run()))
    assert '"kv_bits": null' in text
    assert "--kv-bits" not in json.loads(text)["recommendation"]["serve_command"]


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        (budget_partial_run, "budget_exhausted_with_partial_recommendation"),
        (interrupted_partial_run, "interrupted"),
    ],
)
def test_partial_run_keeps_its_best_cell(run: Callable[[], RunReport], reason: str) -> None:
    doc = run_document(run())
    assert doc["exit_reason"] == reason
    assert doc["partial"] is True
    assert doc["recommendation"] is not None
    assert doc["recipe_hash"] is not None
    # The cut cell is neither the recommendation nor an infeasible candidate.
    assert doc["infeasible"] == [{"model": LARGE, "rank": 1, "reason": OOM}]


def test_quantized_recommendation_names_its_kv_bits() -> None:
    recommendation = run_document(budget_partial_run())["recommendation"]
    assert recommendation["knobs"]["kv_bits"] == 4
    assert " --kv-bits 4 " in recommendation["serve_command"]


@pytest.mark.parametrize(
    "name", ["no_feasible", "pre_warm_integrity_failure", "interrupted_in_stage1", "unclosed"]
)
def test_no_recommendation_is_null_not_empty(name: str) -> None:
    doc = document(name)
    assert doc["recommendation"] is None
    assert doc["recipe_hash"] is None
    assert doc["alternates"] == []
    assert doc["partial"] is False
    assert '"recommendation": null' in dumps_document(doc)


def test_no_feasible_lists_the_smallest_first() -> None:
    doc = run_document(no_feasible_run())
    assert doc["exit_reason"] == "no_feasible"
    assert doc["infeasible"] == [
        {"model": SMALL, "rank": 3, "reason": TRANSIENT},
        {"model": MEDIUM, "rank": 2, "reason": TOO_SLOW},
        {"model": LARGE, "rank": 1, "reason": OOM},
    ]


def test_integrity_failure_is_not_an_infeasible_verdict() -> None:
    doc = run_document(integrity_failure_run())
    assert doc["exit_reason"] == "pre_warm_integrity_failure"
    assert doc["infeasible"] == [{"model": LARGE, "rank": 1, "reason": OOM}]


def test_unclosed_run_has_null_end_and_reason() -> None:
    doc = run_document(unclosed_run())
    assert doc["ended_at"] is None
    assert doc["exit_reason"] is None
    assert doc["started_at"] is not None


def test_unhashed_run_gets_the_hash_the_tuner_would_have_stored() -> None:
    assert run_document(unhashed_run())["recipe_hash"] == ok_run().run.recipe_hash


# --- rendering --------------------------------------------------------------------------


def test_dumps_is_stable_indented_with_one_trailing_newline() -> None:
    doc = run_document(ok_run())
    text = dumps_document(doc)
    assert text == dumps_document(run_document(ok_run()))
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.splitlines()[1] == '  "spec_version": "0.3",'


def test_dumps_escapes_non_ascii_and_round_trips() -> None:
    model = "örg/Llama-🦙-日本語-3B"
    run = stored_run(run_start("utf", (model,)), ExitReason.OK, winner(model, UNSET_CELL))
    doc = run_document(report(run, stage1(1, model, outcome=TrialOutcome.FITS)))
    text = dumps_document(doc)
    assert text.isascii()
    assert json.loads(text)["recommendation"]["model"] == model


def test_timestamps_convert_to_utc_and_refuse_naive() -> None:
    two_hours_east = timezone(timedelta(hours=2))
    moment = datetime(2026, 11, 25, 11, 0, tzinfo=two_hours_east)
    assert utc_timestamp(moment) == "2026-11-25T09:00:00.000000Z"
    with pytest.raises(ValueError, match="naive"):
        utc_timestamp(datetime(2026, 11, 25, 9, 0))


# --- the schema itself ------------------------------------------------------------------


def test_schema_ships_with_the_installed_package() -> None:
    assert resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_RESOURCE).is_file()
    assert load_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(load_schema())


def object_schemas(node: Any) -> list[dict[str, Any]]:
    """Every subschema of `node` that declares object properties."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "properties" in node and node.get("type") == "object":
            found.append(node)
        for value in node.values():
            found += object_schemas(value)
    elif isinstance(node, list):
        for value in node:
            found += object_schemas(value)
    return found


def test_schema_is_strict_at_every_level() -> None:
    objects = object_schemas(load_schema())
    assert len(objects) == 6  # the document, machine, inputs, recommendation, knobs, infeasible
    for node in objects:
        assert node["additionalProperties"] is False
        assert sorted(node["required"]) == sorted(node["properties"])


def test_schema_exit_reasons_are_the_closed_enum() -> None:
    enum = load_schema()["properties"]["exit_reason"]["enum"]
    assert enum == [reason.value for reason in ExitReason] + [None]


# --- the schema can fail ----------------------------------------------------------------

DELETE: Final = object()


def mutated(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A deep copy of `doc` with the value at `path` replaced (or removed, for DELETE)."""
    changed = copy.deepcopy(doc)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return changed


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("recommendation",), {}),
        (("unexpected",), 1),
        (("machine", "gpu"), "M2"),
        (("recommendation", "knobs", "max_batch"), 2),
        (("recipe_hash",), DELETE),
        (("machine", "ram_gb"), DELETE),
        (("recipe_hash",), "sha256:" + "A" * 64),
        (("recipe_hash",), "sha256:" + "a" * 63),
        (("recommendation", "knobs", "kv_bits"), 16),
        (("recommendation", "knobs", "kv_bits"), "unset"),
        (("exit_reason",), "finished"),
        (("started_at",), "2026-11-25T09:00:00.123456+00:00"),
        (("ended_at",), None),  # closed (ok) yet no end time
        (("partial",), True),  # an ok run is never partial
        (("recommendation",), None),  # a hash without a recommendation
        (("inputs", "target_context"), "2000"),
        (("inputs", "candidate_models"), []),
        (("infeasible",), [{"model": LARGE, "rank": 0, "reason": OOM}]),
    ],
    ids=repr,
)
def test_schema_rejects(path: tuple[str, ...], value: Any, validator: Draft202012Validator) -> None:
    doc = run_document(ok_run())
    assert validator.is_valid(doc)
    assert not validator.is_valid(mutated(doc, path, value))


def test_schema_rejects_a_partial_run_that_claims_not_to_be(
    validator: Draft202012Validator,
) -> None:
    doc = run_document(budget_partial_run())
    assert not validator.is_valid(mutated(doc, ("partial",), False))


def test_schema_rejects_an_unclosed_run_with_a_reason_but_no_end(
    validator: Draft202012Validator,
) -> None:
    doc = run_document(unclosed_run())
    assert not validator.is_valid(mutated(doc, ("exit_reason",), "ok"))
