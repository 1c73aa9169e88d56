"""What a finished autotune run tells the operator: the recommendation, the name-only
alternates, and the all-infeasible report. Pure functions over what the tuner measured.

The knobs' flags and JSON fields come from the knob table (`TUNED_KNOBS`), and a `Cell`'s
fields carry the knobs' own names, so nothing here spells a knob by hand.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import rfc8785

from macprovider.actors.tuning import Cell, CellResult, size_order
from macprovider.server.knobs import MODEL, TUNED_KNOBS

SERVE_PROGRAM = "macprovider-supervise serve"


@dataclass(frozen=True)
class Recommendation:
    """The winning Stage 2 cell for the chosen model; `partial` when the run ended early."""

    model: str
    target_context: int
    cell: Cell
    tps_median: float
    ttft_p95_ms: float
    replicates: int
    partial: bool

    def knobs(self) -> dict[str, int | None]:
        """The knobs under their JSON names, which are their config.yaml keys: what `--apply`
        writes."""
        return {_json_key(spec.json_key): getattr(self.cell, spec.name) for spec in TUNED_KNOBS}

    def serve_command(self) -> str:
        return serve_command(self.model, self.cell)

    @classmethod
    def from_json(cls, document: Mapping[str, Any], *, partial: bool) -> Recommendation:
        """Back from `as_json` (the DB's `recommendation_json`)."""
        knobs = document["knobs"]
        cell = Cell(**{spec.name: knobs[_json_key(spec.json_key)] for spec in TUNED_KNOBS})
        return cls(
            document["model"],
            document["target_context"],
            cell,
            document["tps_median"],
            document["ttft_p95_ms"],
            document["replicates"],
            partial,
        )

    def as_json(self) -> dict[str, Any]:
        """The `recommendation` object of autotune's JSON (`cli/autotune.schema.json`, frozen:
        scripts read it)."""
        return {
            "model": self.model,
            "target_context": self.target_context,
            "knobs": self.knobs(),
            "tps_median": self.tps_median,
            "ttft_p95_ms": self.ttft_p95_ms,
            "replicates": self.replicates,
            "serve_command": self.serve_command(),
        }


@dataclass(frozen=True)
class Infeasible:
    """A Stage 1 candidate that did not fit: `rank` is its 1-based place in the input list."""

    model: str
    rank: int
    reason: str


def _json_key(key: str | None) -> str:
    # Every tuned knob has one; a None here is a knob table that lost it.
    assert key is not None
    return key


def serve_command(model: str, cell: Cell) -> str:
    """The copy-pasteable serve command, its knobs in `TUNED_KNOBS` order; a None knob
    (`--kv-bits` for an unquantized cache) is omitted, which is serve's default."""
    args = [MODEL.flag, model]
    for spec in TUNED_KNOBS:
        if (value := getattr(cell, spec.name)) is not None:
            args += [spec.flag, spec.text(value)]
    return f"{SERVE_PROGRAM} {shlex.join(args)}"


def recommend(
    model: str, target_context: int, best: tuple[Cell, CellResult] | None, *, partial: bool
) -> Recommendation | None:
    """The recommendation for the kept cell, if there is one with figures."""
    if best is None:
        return None
    cell, result = best
    if result.tps_median is None or result.ttft_p95_ms is None:
        return None
    return Recommendation(
        model,
        target_context,
        cell,
        result.tps_median,
        result.ttft_p95_ms,
        result.replicates,
        partial,
    )


def alternates(
    candidates: Sequence[str], chosen: str, sizes: Mapping[str, float]
) -> tuple[str, ...]:
    """Candidates no larger than `chosen` that were never probed, by name only, in input order.

    Stage 1 stops at `chosen`, so these come after it in the list. With both sizes known a
    candidate must be no larger: one of the same size is another form of the same model (its
    bf16 or 4-bit copy: parameters are counted the same whatever the dtype), a real choice for
    the operator. With either size unknown, the list order (largest first by convention) is
    trusted. Empty when `chosen` is the smallest.
    """
    after = candidates[candidates.index(chosen) + 1 :]
    chosen_size = sizes.get(chosen)

    def no_larger(model: str) -> bool:
        size = sizes.get(model)
        return size is None or chosen_size is None or size <= chosen_size

    return tuple(model for model in after if no_larger(model))


def infeasible_report(
    rows: Sequence[Infeasible], sizes: Mapping[str, float]
) -> tuple[Infeasible, ...]:
    """The all-infeasible report's order: the smallest candidate first, then larger ones."""
    by_model = {row.model: row for row in rows}
    return tuple(by_model[model] for model in size_order([row.model for row in rows], sizes))


def recipe_hash(
    recommendation: Recommendation,
    *,
    binary_version: str,
    candidate_models: Sequence[str],
    chip: str,
    ram_gb: float,
) -> str:
    """`sha256:` + hex of the RFC 8785 (JCS) canonical JSON of exactly the seven recipe fields:
    what was recommended, for which inputs, on which machine and version (`ram_gb` in GB of
    10^9 bytes, as `describe_machine` rounds it). Observations (tok/s, TTFT), ids and
    timestamps are left out, so a re-run that lands on the same recipe has the same hash."""
    recipe: dict[str, Any] = {
        "binary_version": binary_version,
        "candidate_models": list(candidate_models),
        "chip": chip,
        "knobs": recommendation.knobs(),
        "model": recommendation.model,
        "ram_gb": ram_gb,
        "target_context": recommendation.target_context,
    }
    return "sha256:" + hashlib.sha256(rfc8785.dumps(recipe)).hexdigest()
