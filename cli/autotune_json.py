"""`autotune --json`: the run's frozen JSON document, built from the same `RunReport` every
other output renders, and the JSON Schema (draft 2020-12) that pins it down.

The schema ships beside this module as package data (`autotune.schema.json`) so a consumer of
an installed macprovider can validate against exactly the version that produced the document.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final

from macprovider.actors.recommendation import Infeasible
from macprovider.actors.store_records import RunStart
from macprovider.cli.run_report import RunReport

SCHEMA_PACKAGE: Final = "macprovider.cli"
SCHEMA_RESOURCE: Final = "autotune.schema.json"
# Fixed width and UTC with a `Z`, so timestamps compare as text and parse everywhere
# (`datetime.fromisoformat`, JavaScript `Date`, `date -d`); the schema's pattern says the same.
TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def run_document(report: RunReport) -> dict[str, Any]:
    """The run as the frozen `--json` document (`autotune.schema.json`). Every key is always
    present; "none" is JSON null (`recommendation`, `recipe_hash`, and `ended_at` and
    `exit_reason` of a run that never closed), never an empty object or a missing key."""
    start = report.run.start
    recommendation = report.recommendation
    ended_at = report.run.ended_at
    return {
        "spec_version": start.spec_version,
        "run_id": start.run_id,
        "started_at": utc_timestamp(start.started_at),
        "ended_at": None if ended_at is None else utc_timestamp(ended_at),
        "machine": _machine(start),
        "inputs": _inputs(start),
        "recommendation": None if recommendation is None else recommendation.as_json(),
        "alternates": list(report.alternates),
        "infeasible": [_infeasible(row) for row in report.infeasible],
        "recipe_hash": report.recipe_hash(),
        "db_path": str(report.db_path),
        "exit_reason": None if report.exit_reason is None else report.exit_reason.value,
        # Added after the contract's fields, so those keep their frozen order; true exactly when a
        # recommendation exists and the run did not end `ok` (the best cell so far).
        "partial": recommendation is not None and recommendation.partial,
    }


def dumps_document(document: dict[str, Any]) -> str:
    """The document as `--json` prints it: keys in the document's own (stable) order, indent 2,
    one trailing newline."""
    # ensure_ascii: non-ASCII model names become \u escapes, so the output survives a
    # non-UTF-8 stdout or pipe; any JSON parser restores them. allow_nan=False: NaN or
    # Infinity is not JSON, and failing here beats printing what a consumer cannot parse.
    return json.dumps(document, indent=2, ensure_ascii=True, allow_nan=False) + "\n"


def load_schema() -> dict[str, Any]:
    """The document's JSON Schema, read from the installed package."""
    text = resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def utc_timestamp(moment: datetime) -> str:
    """`moment` as ISO 8601 UTC, `2026-11-25T09:00:00.000000Z`."""
    if moment.tzinfo is None:
        # A naive time's zone is unknown; guessing local time would shift it silently.
        raise ValueError(f"naive datetime {moment.isoformat()}: pass a timezone-aware one")
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def _machine(start: RunStart) -> dict[str, Any]:
    return {
        "ram_gb": start.machine_ram_gb,
        "chip": start.machine_chip,
        "os_version": start.machine_os_version,
        "binary_version": start.binary_version,
    }


def _inputs(start: RunStart) -> dict[str, Any]:
    return {
        "target_context": start.target_context,
        "candidate_models": list(start.candidate_models),
        "stage1_replicates": start.stage1_replicates,
        "stage2_replicates": start.stage2_replicates,
        "gate_ttft_ms": start.gate_ttft_ms,
        "tps_tie_epsilon": start.tps_tie_epsilon,
    }


def _infeasible(row: Infeasible) -> dict[str, Any]:
    return {"model": row.model, "rank": row.rank, "reason": row.reason}
