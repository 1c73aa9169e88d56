"""GGUF tensors → MLX arrays: exact for the lossless copies, gguf-py's own dequantization for
the rest, llama.cpp's Q/K permutation undone, names mapped."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, ReaderTensor

from macprovider.cli.errors import ModelImportError
from macprovider.cli.gguf_tensors import convert_tensor, mlx_name, unpermute_rows
from tests.cli.gguf_build import decode, encode, permute_rows, write_one_tensor

Q = GGMLQuantizationType
ROWS, COLS = 8, 256
ALL_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K]
LOSSLESS = {Q.Q8_0: 8, Q.Q4_0: 4, Q.Q4_1: 4}


def _tensor(tmp_path: Path, kind: GGMLQuantizationType, rows: int = ROWS) -> ReaderTensor:
    values = np.random.default_rng(1).standard_normal((rows, COLS)).astype(np.float32)
    path = tmp_path / "one.gguf"
    write_one_tensor(path, "blk.0.ffn_up.weight", encode(values, kind), kind)
    return GGUFReader(path).tensors[0]


def _dense(converted: dict[str, mx.array], bits: int | None) -> np.ndarray:
    """The values the arrays hold. Scales and biases are widened to float32 first (exact from
    float16), so this checks what is stored, not float16 arithmetic's rounding of w = s·q + b."""
    if bits is None:
        return np.array(converted["weight"].astype(mx.float32))
    weight = converted["weight"]
    scales, biases = (converted[part].astype(mx.float32) for part in ("scales", "biases"))
    return np.array(mx.dequantize(weight, scales, biases, group_size=32, bits=bits))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ALL_TYPES, ids=lambda kind: kind.name)
def test_keep_copies_q4_0_q4_1_q8_0_exactly_and_dequantizes_the_rest(
    tmp_path: Path, kind: GGMLQuantizationType, dtype: str
) -> None:
    tensor = _tensor(tmp_path, kind)
    converted = convert_tensor(tensor, keep_quantized=True, dtype=dtype, heads=None, source="f")
    assert converted.bits == LOSSLESS.get(kind)
    assert all(
        array.dtype == getattr(mx, dtype)
        for part, array in converted.arrays.items()
        if part != "weight" or converted.bits is None
    )
    expected = decode(tensor.data, kind, (ROWS, COLS))
    if converted.bits is None and dtype == "float16":
        expected = expected.astype(np.float16).astype(np.float32)  # a dense dtype rounds once
    np.testing.assert_array_equal(_dense(converted.arrays, converted.bits), expected)


@pytest.mark.parametrize(
    ("kind", "d", "dtype"),
    [(Q.Q8_0, 600.0, "float16"), (Q.Q4_0, 8200.0, "float16"), (Q.Q4_1, 1.001, "bfloat16")],
    ids=["q8_0-bias-overflows-f16", "q4_0-bias-overflows-f16", "bf16-drops-scale-bits"],
)
def test_a_copy_that_the_dtype_cannot_hold_exactly_is_refused(
    tmp_path: Path, kind: GGMLQuantizationType, d: float, dtype: str
) -> None:
    values = np.random.default_rng(1).standard_normal((ROWS, COLS)).astype(np.float32)
    data = encode(values, kind)
    data[0, 0:2] = np.array([d], "<f2").view(np.uint8)  # the first block's d
    path = tmp_path / "big.gguf"
    write_one_tensor(path, "blk.0.ffn_up.weight", data, kind)
    tensor = GGUFReader(path).tensors[0]
    with pytest.raises(ModelImportError, match=rf"f: tensor blk\.0\.ffn_up\.weight's {kind.name}"):
        convert_tensor(tensor, keep_quantized=True, dtype=dtype, heads=None, source="f")
    # float32 holds them all.
    converted = convert_tensor(tensor, keep_quantized=True, dtype="float32", heads=None, source="f")
    np.testing.assert_array_equal(
        _dense(converted.arrays, converted.bits), decode(data, kind, (ROWS, COLS))
    )


def test_a_dense_tensor_beyond_float16s_range_is_refused_in_float16(tmp_path: Path) -> None:
    path = tmp_path / "big.gguf"
    write_one_tensor(path, "blk.0.ffn_up.weight", np.full((ROWS, COLS), 1e5, np.float32), Q.F32)
    tensor = GGUFReader(path).tensors[0]
    with pytest.raises(ModelImportError, match="beyond float16's range"):
        convert_tensor(tensor, keep_quantized=True, dtype="float16", heads=None, source="f")


@pytest.mark.parametrize("kind", ALL_TYPES, ids=lambda kind: kind.name)
def test_dense_bfloat16_is_gguf_py_dequantization_rounded_once(
    tmp_path: Path, kind: GGMLQuantizationType
) -> None:
    tensor = _tensor(tmp_path, kind)
    converted = convert_tensor(
        tensor, keep_quantized=False, dtype="bfloat16", heads=None, source="f"
    )
    assert converted.bits is None
    assert converted.arrays["weight"].dtype == mx.bfloat16
    rounded = mx.array(decode(tensor.data, kind, (ROWS, COLS))).astype(mx.bfloat16)
    assert mx.array_equal(converted.arrays["weight"], rounded).item()


def test_an_unsupported_type_is_refused_naming_the_tensor_and_type(tmp_path: Path) -> None:
    path = tmp_path / "iq.gguf"
    write_one_tensor(
        path, "blk.0.ffn_up.weight", np.zeros((ROWS, COLS // 32 * 18), np.uint8), Q.IQ4_NL
    )
    tensor = GGUFReader(path).tensors[0]
    with pytest.raises(ModelImportError, match=r"f: tensor blk\.0\.ffn_up\.weight has type IQ4_NL"):
        convert_tensor(tensor, keep_quantized=True, dtype="float32", heads=None, source="f")


@pytest.mark.parametrize(("heads", "rows"), [(4, 64), (2, 128), (1, 8)])
def test_unpermute_undoes_llama_cpp_permute(heads: int, rows: int) -> None:
    original = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    permuted = permute_rows(original, heads)
    assert not np.array_equal(permuted, original)
    np.testing.assert_array_equal(unpermute_rows(permuted, heads), original)


@pytest.mark.parametrize("kind", [Q.F32, Q.Q4_0, Q.Q4_1, Q.Q8_0], ids=lambda kind: kind.name)
def test_quantized_rows_are_unpermuted_with_their_scales_and_biases(
    tmp_path: Path, kind: GGMLQuantizationType
) -> None:
    heads, rows = 2, 16
    values = np.random.default_rng(2).standard_normal((rows, COLS)).astype(np.float32)
    data = encode(values, kind)
    path = tmp_path / "qk.gguf"
    write_one_tensor(path, "blk.0.attn_q.weight", permute_rows(data, heads), kind)
    tensor = GGUFReader(path).tensors[0]
    converted = convert_tensor(
        tensor, keep_quantized=True, dtype="float32", heads=heads, source="f"
    )
    expected = decode(data, kind, (rows, COLS))
    np.testing.assert_array_equal(_dense(converted.arrays, converted.bits), expected)


@pytest.mark.parametrize(
    ("gguf_name", "expected"),
    [
        ("token_embd.weight", "model.embed_tokens"),
        ("output_norm.weight", "model.norm"),
        ("output.weight", "lm_head"),
        ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm"),
        ("blk.12.ffn_norm.weight", "model.layers.12.post_attention_layernorm"),
        ("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj"),
        ("blk.3.attn_k.weight", "model.layers.3.self_attn.k_proj"),
        ("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj"),
        ("blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj"),
        ("blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj"),
        ("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj"),
        ("blk.3.ffn_down.weight", "model.layers.3.mlp.down_proj"),
        ("rope_freqs.weight", None),
        ("blk.3.ffn_gate_exps.weight", None),
        ("blk.3.attn_q.bias", None),
    ],
)
def test_gguf_names_map_to_mlx_lm_llama_modules(gguf_name: str, expected: str | None) -> None:
    assert mlx_name(gguf_name) == expected
