"""The knob table: one row per knob naming it in every layer, and values that survive the trip
through their own text."""

from __future__ import annotations

import json
from dataclasses import fields
from importlib import resources
from typing import Any

import pytest

from macprovider.actors._schema import TRIALS
from macprovider.actors.messages import Knobs
from macprovider.actors.store_records import TrialRecord
from macprovider.actors.tuning import Cell
from macprovider.server.config import ServeConfig
from macprovider.server.knobs import KNOBS, KV_BITS, TUNED_KNOBS, KnobSpec, serve_flags

SPECS = {spec.name: spec for spec in KNOBS}


@pytest.mark.parametrize(
    "attribute", ["name", "flag", "env", "yaml_key", "display"], ids=lambda a: str(a)
)
def test_every_name_belongs_to_one_knob(attribute: str) -> None:
    names = [getattr(spec, attribute) for spec in KNOBS]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("spec", KNOBS, ids=lambda spec: spec.name)
def test_the_display_name_is_the_flags_words(spec: KnobSpec[Any]) -> None:
    assert f"--{spec.display}" == spec.flag


@pytest.mark.parametrize("spec", KNOBS, ids=lambda spec: spec.name)
def test_only_the_tuned_knobs_have_a_chart_prefix_json_field_and_column(
    spec: KnobSpec[Any],
) -> None:
    tuned = spec in TUNED_KNOBS
    assert [spec.short is not None, spec.json_key is not None, spec.db_column is not None] == [
        tuned
    ] * 3


def test_the_tuned_knobs_json_fields_are_their_config_keys_as_the_schema_requires() -> None:
    schema = json.loads(
        resources.files("macprovider.cli").joinpath("autotune.schema.json").read_text()
    )
    knobs = schema["$defs"]["knobs"]
    assert [spec.json_key for spec in TUNED_KNOBS] == [spec.yaml_key for spec in TUNED_KNOBS]
    assert set(knobs["required"]) == {spec.json_key for spec in TUNED_KNOBS}


def test_the_tuned_knobs_columns_are_tune_trials_columns() -> None:
    columns = {name for name, _definition in TRIALS.columns}
    assert {spec.db_column for spec in TUNED_KNOBS} <= columns


def test_a_knobs_value_is_held_in_a_field_named_after_it() -> None:
    knob_names = {spec.name for spec in KNOBS}
    assert knob_names <= {field.name for field in fields(ServeConfig)}
    # Knobs carries every knob but the model, the port and the API key, which travel beside
    # it; serve_flags turns exactly its fields into flags.
    assert {field.name for field in fields(Knobs)} == knob_names - {"model", "port", "api_key"}
    assert [field.name for field in fields(Cell)] == [spec.name for spec in TUNED_KNOBS]
    assert {spec.name for spec in TUNED_KNOBS} <= {field.name for field in fields(TrialRecord)}


# (knob, value): every value a flag may carry reads back the same through its knob's parser.
ROUND_TRIPS: list[tuple[str, object]] = [
    ("kv_bits", None),
    ("kv_bits", 4),
    ("kv_bits", 8),
    ("max_context", 32768),
    ("max_batch", 2),
    ("max_queue", 0),
    ("memory_limit_gb", None),
    ("memory_limit_gb", 16.0),
    ("memory_limit_gb", 0.00001),  # never `1e-05`, which the GB parser refuses
    ("port", 65535),
    ("host", "0.0.0.0"),
    ("model", "mlx-community/Qwen2.5-7B-Instruct-4bit"),
]


@pytest.mark.parametrize(("name", "value"), ROUND_TRIPS, ids=lambda v: repr(v))
def test_text_reads_back_to_the_same_value(name: str, value: object) -> None:
    spec = SPECS[name]
    assert spec.from_text(spec.text(value)) == value


def test_an_unquantized_cache_is_written_unset_and_serve_flags_leave_it_out() -> None:
    assert KV_BITS.text(None) == "unset"
    assert serve_flags({"kv_bits": None, "max_batch": 2}) == ["--max-batch", "2"]
