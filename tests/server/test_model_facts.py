"""What a model folder says about itself: parameter counts (dense, MLX-quantized, sharded),
trained context and stop token ids, over synthetic headers and real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from macprovider.actors.prewarm_integrity import check_integrity
from macprovider.actors.prewarm_resolve import local_size
from macprovider.server.model_facts import (
    count_parameters,
    eos_ids,
    parameter_count,
    stop_token_ids,
    trained_context,
)
from macprovider.server.safetensors_headers import TensorHeader

TINY_PARAMETERS = 656_000
SMOLLM2_PARAMETERS = 134_500_000  # as published: "135M"


def dense(name: str, *shape: int) -> list[TensorHeader]:
    return [TensorHeader(name, "F16", shape)]


def packed(module: str, rows: int, width: int, bits: int, group: int) -> list[TensorHeader]:
    """An MLX affine-quantized `module` holding `rows` × `width` values."""
    return [
        TensorHeader(f"{module}.weight", "U32", (rows, width * bits // 32)),
        TensorHeader(f"{module}.scales", "F16", (rows, width // group)),
        TensorHeader(f"{module}.biases", "F16", (rows, width // group)),
    ]


def quantization(bits: int, group: int, **overrides: dict[str, int]) -> dict[str, Any]:
    return {"quantization": {"bits": bits, "group_size": group, **overrides}}


EMBED = "model.embed_tokens"
PROJ = "model.layers.0.mlp.up_proj"

COUNTS: list[tuple[str, list[TensorHeader], dict[str, Any], int]] = [
    ("dense", dense(EMBED, 1000, 256) + dense(f"{PROJ}.weight", 64, 256), {}, 272_384),
    (
        "4-bit, groups of 64",
        packed(PROJ, 64, 256, 4, 64) + dense("model.norm.weight", 256),
        quantization(4, 64),
        64 * 256 + 256,
    ),
    (
        "4-bit, groups of 32, 8-bit embedding override",
        packed(EMBED, 1000, 256, 8, 32) + packed(PROJ, 64, 256, 4, 32),
        quantization(4, 32, **{EMBED: {"bits": 8, "group_size": 32}}),
        1000 * 256 + 64 * 256,
    ),
    (
        # mlx-lm rereads a module's layout from its shapes: the default need not fit them all.
        "a module at other bits than the block's default",
        packed(EMBED, 1000, 256, 8, 64) + packed(PROJ, 64, 256, 4, 64),
        quantization(4, 64),
        1000 * 256 + 64 * 256,
    ),
    (
        "a quantized linear's own bias is a parameter",
        packed(PROJ, 64, 256, 4, 64) + dense(f"{PROJ}.bias", 64),
        quantization(4, 64),
        64 * 256 + 64,
    ),
    (
        "stacked experts",
        [
            TensorHeader("switch_mlp.up_proj.weight", "U32", (8, 64, 32)),
            TensorHeader("switch_mlp.up_proj.scales", "F16", (8, 64, 4)),
            TensorHeader("switch_mlp.up_proj.biases", "F16", (8, 64, 4)),
        ],
        quantization(4, 64),
        8 * 64 * 256,
    ),
    (
        "quantization under text_config",
        packed(PROJ, 64, 256, 4, 64),
        {"text_config": quantization(4, 64)},
        64 * 256,
    ),
]


@pytest.mark.parametrize(
    ("tensors", "config", "expected"),
    [case[1:] for case in COUNTS],
    ids=[case[0] for case in COUNTS],
)
def test_parameters_count_the_values_a_packed_weight_holds_not_its_words_or_scales(
    tensors: list[TensorHeader], config: dict[str, Any], expected: int
) -> None:
    assert count_parameters(tensors, config) == expected


@pytest.mark.parametrize(
    ("config", "match"),
    [({}, "no quantization block"), (quantization(3, 128), "do not fit")],
    ids=["no quantization block", "a layout the shapes cannot hold"],
)
def test_packed_weights_the_config_cannot_explain_are_refused(
    config: dict[str, Any], match: str
) -> None:
    tensors = packed(PROJ, 64, 96, 4, 32)  # 12 words, 3 groups: 4-bit × 32 only, or 8 × 16
    with pytest.raises(ValueError, match=match):
        count_parameters(tensors, config)


def test_a_sharded_checkpoint_counts_a_weight_whose_scales_are_in_another_shard(
    tmp_path: Path,
) -> None:
    words = np.zeros((64, 32), dtype=np.uint32)  # 64 × 256 values at 4 bits
    groups = np.zeros((64, 4), dtype=np.float16)  # groups of 64
    save_file({f"{PROJ}.weight": words}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(
        {f"{PROJ}.scales": groups, f"{PROJ}.biases": groups, "norm.weight": np.ones(256, "f2")},
        str(tmp_path / "model-00002-of-00002.safetensors"),
    )
    (tmp_path / "config.json").write_text(json.dumps(quantization(4, 64)))
    assert parameter_count(tmp_path) == 64 * 256 + 256


@pytest.fixture(scope="module")
def quantized_tiny(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlx_lm import convert

    folder = tmp_path_factory.mktemp("quantized") / "tiny-q4"
    convert(str(tiny_model), str(folder), quantize=True, q_bits=4, q_group_size=64)
    return folder


def test_a_4_bit_checkpoint_counts_as_many_parameters_as_its_source(
    tiny_model: Path, quantized_tiny: Path
) -> None:
    assert parameter_count(tiny_model) == TINY_PARAMETERS
    assert parameter_count(quantized_tiny) == TINY_PARAMETERS
    # Pre-warm's report and the size report count by the same rule.
    assert check_integrity(quantized_tiny).parameters == TINY_PARAMETERS
    size = local_size(str(quantized_tiny))
    assert size is not None and size.parameters == TINY_PARAMETERS
    # The on-disk sizes are still the files': a fraction of the source's.
    assert (
        check_integrity(quantized_tiny).weight_bytes < check_integrity(tiny_model).weight_bytes / 4
    )


def test_smollm2_counts_135m_parameters_in_bf16_and_as_q4(
    smollm2_model: Path, smollm2_q4_model: Path
) -> None:
    for folder in (smollm2_model, smollm2_q4_model):
        assert parameter_count(folder) == pytest.approx(SMOLLM2_PARAMETERS, rel=0.01)
        assert check_integrity(folder).parameters == parameter_count(folder)


# --- trained context ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_position_embeddings": 8192}, 8192),
        ({"text_config": {"max_position_embeddings": 32768}}, 32768),
        ({"max_position_embeddings": 4096, "text_config": {"max_position_embeddings": 1}}, 4096),
        ({}, None),
        ({"max_position_embeddings": None}, None),
        ({"max_position_embeddings": True}, None),
        ({"max_position_embeddings": 0}, None),
        ({"text_config": "not an object"}, None),
    ],
)
def test_trained_context_is_max_position_embeddings_at_the_top_or_under_text_config(
    config: dict[str, Any], expected: int | None
) -> None:
    assert trained_context(config) == expected


# --- stop tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2, {2}), ([2, 49152], {2, 49152}), (None, set()), ([], set()), ([True, "2", -1, 7], {7})],
)
def test_an_eos_entry_is_an_int_or_a_list_of_them(value: object, expected: set[int]) -> None:
    assert eos_ids(value) == expected


@pytest.mark.parametrize(
    ("files", "tokenizer", "expected"),
    [
        ({}, [2], {2}),
        ({"config.json": {"eos_token_id": 2}}, [], {2}),
        ({"generation_config.json": {"eos_token_id": [2, 7]}}, [2], {2, 7}),
        (
            {"config.json": {"eos_token_id": 3}, "generation_config.json": {"eos_token_id": 7}},
            [2],
            {2, 3, 7},
        ),
        ({"config.json": {"text_config": {"eos_token_id": [5, 6]}}}, [], {5, 6}),
        ({"generation_config.json": "{not json"}, [2], {2}),
    ],
    ids=["tokenizer only", "config only", "generation list", "union", "nested", "bad json"],
)
def test_stop_ids_are_the_union_of_the_tokenizer_config_and_generation_config(
    tmp_path: Path, files: dict[str, object], tokenizer: list[int], expected: set[int]
) -> None:
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / name).write_text(text)
    assert stop_token_ids(tmp_path, tokenizer) == expected
