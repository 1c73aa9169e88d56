"""Autotune's operator inputs: the axis CSV flags and the candidate list (pure).

Every CSV flag is split on commas and each cell is stripped of surrounding whitespace. Empty
cells (`1,,2`, a trailing comma, an empty string), duplicates (compared by parsed value, so
`4,04` is a duplicate) and malformed cells raise `AutotuneInputError` naming the flag and the
1-based cell, e.g. `--max-batch-axis: cell 2 'x' is not an integer`; the caller maps it to the
`config_error` exit reason before any DB write or process start.

Order: `--candidate-models`, `--kv-bits-axis` and `--max-batch-axis` keep the operator's order
(the candidate order is the Stage 1 contract, the other two feed the Stage 2 cell order of
`tuning.stage2_cells`); `--max-context-axis` is sorted ascending: its cells are absolute caps,
so the Stage 2 cell order does not depend on how the operator happened to list them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from macprovider.server.knob_values import UNSET_TOKEN

KV_BITS_AXIS_FLAG = "--kv-bits-axis"
MAX_BATCH_AXIS_FLAG = "--max-batch-axis"
MAX_CONTEXT_AXIS_FLAG = "--max-context-axis"
CANDIDATE_MODELS_FLAG = "--candidate-models"
TARGET_CONTEXT_FLAG = "--target-context"
MAX_MODEL_SIZE_FLAG = "--max-model-size"
MIN_MODEL_SIZE_FLAG = "--min-model-size"

DEFAULT_KV_BITS_AXIS = "unset,4,8"
DEFAULT_MAX_BATCH_AXIS = "1,2"

KV_BITS_VALUES = (4, 8)

_INTEGER = re.compile(r"[+-]?[0-9]+")

_T = TypeVar("_T", bound=Hashable)


class AutotuneInputError(ValueError):
    """An autotune flag value is invalid (exit reason `config_error`); the message is one line."""


@dataclass(frozen=True)
class CandidateModel:
    """A default candidate with its size metadata, used for trimming and size order.

    `params_b` is the parameter count in billions; `weights_gb` the approximate size of the
    4-bit weights on disk, in GB.
    """

    model_id: str
    params_b: float
    weights_gb: float


DEFAULT_CANDIDATES: tuple[CandidateModel, ...] = (
    CandidateModel("mlx-community/Qwen2.5-32B-Instruct-4bit", 32.8, 18.4),
    CandidateModel("mlx-community/Qwen2.5-14B-Instruct-4bit", 14.8, 8.3),
    CandidateModel("mlx-community/Qwen2.5-Coder-7B-Instruct-4bit", 7.6, 4.3),
    CandidateModel("mlx-community/Llama-3.2-3B-Instruct-4bit", 3.2, 1.8),
    CandidateModel("mlx-community/Llama-3.2-1B-Instruct-4bit", 1.24, 0.7),
)
"""The default candidate list, largest first (the Stage 1 order when no list is given)."""


def default_sizes_b() -> dict[str, float]:
    """Parameter counts in billions of the default candidates, keyed by model id."""
    return {candidate.model_id: candidate.params_b for candidate in DEFAULT_CANDIDATES}


@dataclass(frozen=True)
class Candidates:
    """The Stage 1 candidate list, in the order to probe, and warnings to print before running."""

    models: tuple[str, ...]
    warnings: tuple[str, ...]


def _cell_error(flag: str, index: int, raw: str, problem: str) -> AutotuneInputError:
    return AutotuneInputError(f"{flag}: cell {index} {raw!r} {problem}")


def _parse_csv(flag: str, text: str, parse_cell: Callable[[int, str], _T]) -> tuple[_T, ...]:
    """Split `text` on commas, parse each stripped cell, reject empty cells and duplicates."""
    values: list[_T] = []
    first_index: dict[_T, int] = {}
    for index, raw in enumerate(text.split(","), start=1):
        cell = raw.strip()
        if not cell:
            raise _cell_error(flag, index, raw, "is empty")
        value = parse_cell(index, cell)
        if value in first_index:
            raise _cell_error(flag, index, cell, f"duplicates cell {first_index[value]}")
        first_index[value] = index
        values.append(value)
    return tuple(values)


def _parse_int(flag: str, index: int, cell: str, minimum: int) -> int:
    if not _INTEGER.fullmatch(cell):
        raise _cell_error(flag, index, cell, "is not an integer")
    value = int(cell)
    if value < minimum:
        raise _cell_error(flag, index, cell, f"must be at least {minimum}")
    return value


def parse_kv_bits_axis(text: str = DEFAULT_KV_BITS_AXIS) -> tuple[int | None, ...]:
    """`--kv-bits-axis`: cells `unset` (case-insensitive; None), `4` or `8`, in operator order."""

    def cell_value(index: int, cell: str) -> int | None:
        if cell.lower() == UNSET_TOKEN:
            return None
        if not _INTEGER.fullmatch(cell):
            raise _cell_error(KV_BITS_AXIS_FLAG, index, cell, "is not an integer")
        value = int(cell)
        if value not in KV_BITS_VALUES:
            raise _cell_error(KV_BITS_AXIS_FLAG, index, cell, f"must be 4, 8 or {UNSET_TOKEN}")
        return value

    return _parse_csv(KV_BITS_AXIS_FLAG, text, cell_value)


def parse_max_batch_axis(text: str = DEFAULT_MAX_BATCH_AXIS) -> tuple[int, ...]:
    """`--max-batch-axis`: integers ≥ 1, in operator order."""
    return _parse_csv(
        MAX_BATCH_AXIS_FLAG,
        text,
        lambda index, cell: _parse_int(MAX_BATCH_AXIS_FLAG, index, cell, minimum=1),
    )


def parse_max_context_axis(
    text: str | None, target_context: int, answer_tokens: int = 0
) -> tuple[int, ...]:
    """`--max-context-axis`: absolute caps, each ≥ `target_context`, sorted ascending.

    Absent (None) means one cap that holds the target prompt and its answer:
    `target_context + answer_tokens`. (A provider's context holds the prompt and every
    generated token, so a cap of exactly the target leaves room for a one-token answer.)
    """
    if text is None:
        return (target_context + answer_tokens,)

    def cell_value(index: int, cell: str) -> int:
        value = _parse_int(MAX_CONTEXT_AXIS_FLAG, index, cell, minimum=1)
        if value < target_context:
            raise _cell_error(
                MAX_CONTEXT_AXIS_FLAG,
                index,
                cell,
                f"is below {TARGET_CONTEXT_FLAG} {target_context}",
            )
        return value

    return tuple(sorted(_parse_csv(MAX_CONTEXT_AXIS_FLAG, text, cell_value)))


def parse_candidate_models(text: str) -> tuple[str, ...]:
    """`--candidate-models`: model ids (HF repo ids or local directories), in operator order."""
    return _parse_csv(CANDIDATE_MODELS_FLAG, text, lambda _index, cell: cell)


def _bounds_text(max_size_b: float | None, min_size_b: float | None) -> str:
    parts = []
    if max_size_b is not None:
        parts.append(f"{MAX_MODEL_SIZE_FLAG} {max_size_b:g}")
    if min_size_b is not None:
        parts.append(f"{MIN_MODEL_SIZE_FLAG} {min_size_b:g}")
    return " and ".join(parts)


def resolve_candidates(
    explicit: tuple[str, ...] | None, max_size_b: float | None, min_size_b: float | None
) -> Candidates:
    """The Stage 1 candidates: an explicit list as given, else the default list trimmed by size.

    Sizes are in billions of parameters; both bounds are inclusive. An explicit list is never
    re-ranked nor trimmed: size bounds given with it are ignored with a warning. An empty
    result raises `AutotuneInputError`.
    """
    bounds = _bounds_text(max_size_b, min_size_b)
    if explicit is not None:
        if not explicit:
            raise AutotuneInputError(f"{CANDIDATE_MODELS_FLAG}: the list is empty")
        warnings: tuple[str, ...] = ()
        if bounds:
            warnings = (
                f"{bounds} ignored: the explicit {CANDIDATE_MODELS_FLAG} list is used as given",
            )
        return Candidates(explicit, warnings)
    models = tuple(
        candidate.model_id
        for candidate in DEFAULT_CANDIDATES
        if (max_size_b is None or candidate.params_b <= max_size_b)
        and (min_size_b is None or candidate.params_b >= min_size_b)
    )
    if not models:
        sizes = ", ".join(f"{candidate.params_b:g}B" for candidate in DEFAULT_CANDIDATES)
        raise AutotuneInputError(
            f"{bounds}: no default candidate is within the bounds (default sizes: {sizes})"
        )
    return Candidates(models, ())


DEFAULT_TARGET_CONTEXT = 2000
DEFAULT_STAGE1_REPLICATES = 1
DEFAULT_STAGE2_REPLICATES = 3
DEFAULT_GATE_TTFT_MS = 60000.0
DEFAULT_TPS_TIE_EPSILON = 0.02
DEFAULT_MAX_DURATION_S = 7200.0
DEFAULT_PORT = 18080
# The Python prototype's value: we measure serving at the target context, not long generation.
DEFAULT_PROBE_MAX_TOKENS = 48
DEFAULT_READY_TIMEOUT_S = 150.0
DEFAULT_REQUEST_TIMEOUT_S = 300.0
DEFAULT_DRAIN_GRACE_S = 30.0
# Here rather than in `store`, so the command line shows it without importing SQLite and
# pykka into every process, `serve` included.
DEFAULT_RETAIN_RUNS = 50


@dataclass(frozen=True)
class TuneSettings:
    """Everything a run needs, parsed and checked: the tuner takes no other input."""

    candidates: tuple[str, ...]
    target_context: int = DEFAULT_TARGET_CONTEXT
    kv_bits_axis: tuple[int | None, ...] = (None, 4, 8)
    max_batch_axis: tuple[int, ...] = (1, 2)
    max_context_axis: tuple[int, ...] = (DEFAULT_TARGET_CONTEXT + DEFAULT_PROBE_MAX_TOKENS,)
    stage1_replicates: int = DEFAULT_STAGE1_REPLICATES
    stage2_replicates: int = DEFAULT_STAGE2_REPLICATES
    gate_ttft_ms: float = DEFAULT_GATE_TTFT_MS
    tps_tie_epsilon: float = DEFAULT_TPS_TIE_EPSILON
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    port: int = DEFAULT_PORT
    probe_max_tokens: int = DEFAULT_PROBE_MAX_TOKENS
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    provider_memory_limit_gb: float | None = None
    drain: bool = False  # stop a live provider before tuning (and restore it after)
    drain_grace_s: float = DEFAULT_DRAIN_GRACE_S

    def stage1_context(self) -> int:
        """Stage 1's context cap: the target prompt and its answer, so a memory budget is
        judged at the context the operator asked for."""
        return self.target_context + self.probe_max_tokens
