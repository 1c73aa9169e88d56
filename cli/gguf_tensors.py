"""A GGUF file's Llama tensors as the arrays an mlx-lm Llama folder holds.

Three jobs, each per tensor: rename (`blk.3.attn_q` → `model.layers.3.self_attn.q_proj`),
undo llama.cpp's Q/K row permutation, and re-encode the data:

- `keep`: Q4_0, Q4_1 and Q8_0 blocks become MLX's affine quantized layout at group size 32
  without any loss — the same integers, with `w = scale·q + bias` (Q4_1: scale d, bias m;
  Q4_0: scale d, bias −8d; Q8_0: the int8 shifted to uint8, bias −128d). Every other type is
  dequantized by gguf-py itself.
- `dense`: every tensor dequantized by gguf-py.

Everything that is not packed integers (dense weights, scales, biases) takes the one dtype the
caller names. d and m are float16, so float16 and float32 scales hold them exactly; −8d and
−128d are exact too unless they overflow float16 (|d| > 8188, > 511.75), and bfloat16 drops
three of d's bits. A copy that would not be exact is refused, never rounded.

The Q/K permutation moves whole rows, and quantization groups run along a row (the input
dimension), so permuting the rows of the packed weights, scales and biases alike undoes it
losslessly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import mlx.core as mx
import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, ReaderTensor
from gguf.quants import dequantize

from macprovider.cli.errors import ModelImportError

__all__ = [
    "DEQUANTIZED_TYPES",
    "FLOAT_TYPES",
    "GROUP_SIZE",
    "LOSSLESS_BITS",
    "ConvertedTensor",
    "convert_tensor",
    "mlx_name",
    "unpermute_rows",
]

Q = GGMLQuantizationType
GROUP_SIZE: Final = 32  # a Q4_0/Q4_1/Q8_0 block: 32 weights sharing one scale (and bias)
LOSSLESS_BITS: Final = {Q.Q4_0: 4, Q.Q4_1: 4, Q.Q8_0: 8}
FLOAT_TYPES: Final = frozenset({Q.F32, Q.F16, Q.BF16})  # the types that are not quantized
_FLOAT16_MAX: Final = float(np.finfo(np.float16).max)
# What `keep` dequantizes (and `dense` too, with the lossless ones): the types gguf-py's numpy
# dequantizer reads. The IQ and ternary types are left out: no Llama GGUF we know of mixes them
# with the rest, and each would need its own check against llama.cpp.
DEQUANTIZED_TYPES: Final = frozenset(
    {*FLOAT_TYPES, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}
)

_LAYER_PARTS: Final = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_LEVEL: Final = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAME: Final = re.compile(r"blk\.(?P<layer>\d+)\.(?P<part>\w+)\.weight")

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


def mlx_name(gguf_name: str) -> str | None:
    """The mlx-lm Llama module a GGUF tensor is the weight of, or None when it is not one."""
    if gguf_name.endswith(".weight") and gguf_name[: -len(".weight")] in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name[: -len(".weight")]]
    match = _LAYER_NAME.fullmatch(gguf_name)
    if match is None or match["part"] not in _LAYER_PARTS:
        return None
    return f"model.layers.{match['layer']}.{_LAYER_PARTS[match['part']]}"


def unpermute_rows(rows: npt.NDArray[np.generic], heads: int) -> npt.NDArray[np.generic]:
    """Undoes llama.cpp's `permute` of a Q or K projection: within each head it stored the
    rotary pairs' rows interleaved (0, d/2, 1, d/2+1, …) where HF keeps the two halves apart.
    Works on any array whose first axis is the output rows (dense or packed)."""
    half = rows.shape[0] // heads // 2
    split = rows.reshape(heads, half, 2, *rows.shape[1:])
    return np.ascontiguousarray(split.swapaxes(1, 2).reshape(rows.shape))


@dataclass(frozen=True)
class ConvertedTensor:
    """One module's arrays (`weight`, and `scales`/`biases` when quantized) and its bits
    (None: dense)."""

    arrays: dict[str, mx.array]
    bits: int | None


def convert_tensor(
    tensor: ReaderTensor,
    *,
    keep_quantized: bool,
    dtype: str,
    heads: int | None,
    source: str,
) -> ConvertedTensor:
    """`tensor` in MLX's layout, its non-integer arrays in `dtype` (`float16`, `bfloat16`,
    `float32`); `heads` set for Q/K projections (their rows get un-permuted); `source` names
    the file in an error."""
    kind = tensor.tensor_type
    permute: Callable[[npt.NDArray[np.generic]], npt.NDArray[np.generic]] = (
        (lambda rows: unpermute_rows(rows, heads)) if heads is not None else (lambda rows: rows)
    )
    if keep_quantized and kind in LOSSLESS_BITS:
        packed, scales, biases = _affine_from_blocks(np.asarray(tensor.data, np.uint8), kind)
        arrays = {"weight": mx.array(permute(packed))}
        for part, values in (("scales", scales), ("biases", biases)):
            narrowed = mx.array(permute(values)).astype(getattr(mx, dtype))
            # Widening back to float32 is exact, so any difference is a bit the dtype lost.
            widened = np.array(narrowed.astype(mx.float32))
            if not np.array_equal(widened, permute(values), equal_nan=True):
                raise ModelImportError(
                    f"{source}: tensor {tensor.name}'s {kind.name} {part} do not fit {dtype}"
                    " exactly (float16 ends at 65504); pass --dtype float32"
                )
            arrays[part] = narrowed
        return ConvertedTensor(arrays, LOSSLESS_BITS[kind])
    if kind not in DEQUANTIZED_TYPES and kind not in LOSSLESS_BITS:
        supported = ", ".join(sorted(t.name for t in (*DEQUANTIZED_TYPES, *LOSSLESS_BITS)))
        raise ModelImportError(
            f"{source}: tensor {tensor.name} has type {kind.name}, which cannot be imported"
            f" (supported: {supported})"
        )
    # GGUF lists dimensions innermost first; numpy wants them outermost first.
    shape = tuple(int(n) for n in reversed(tensor.shape))
    values = np.asarray(dequantize(tensor.data, kind), np.float32).reshape(shape)
    if dtype == "float16" and values.size and np.nanmax(np.abs(values)) > _FLOAT16_MAX:
        # Rounding is what a dense dtype means; infinities are not.
        raise ModelImportError(
            f"{source}: tensor {tensor.name} has values beyond float16's range;"
            " pass --dtype bfloat16 or float32"
        )
    weight = mx.array(permute(values)).astype(getattr(mx, dtype))
    return ConvertedTensor({"weight": weight}, None)


def _affine_from_blocks(data: U8, kind: GGMLQuantizationType) -> tuple[U8, F32, F32]:
    """(packed uint32 weights, scales, biases) holding exactly the values of `data`, a
    (rows, bytes per row) array of Q4_0, Q4_1 or Q8_0 blocks. Scales and biases are float32
    here, exact for the blocks' float16 d and m and for −8d, −128d; the caller narrows them."""
    rows = data.shape[0]
    block_bytes = {Q.Q4_0: 18, Q.Q4_1: 20, Q.Q8_0: 34}[kind]
    blocks = data.reshape(rows, -1, block_bytes)
    d = _halves(blocks[..., 0:2])
    if kind == Q.Q8_0:
        # int8 q ↦ uint8 q + 128 is flipping the sign bit; then w = d·(u − 128) = d·u − 128d.
        codes = blocks[..., 2:34] ^ np.uint8(0x80)
        biases = -128.0 * d
    else:
        start = 4 if kind == Q.Q4_1 else 2
        nibbles = blocks[..., start : start + 16]
        # A block stores weight j in the low nibble of byte j and weight j+16 in its high one;
        # MLX packs weight i at bits 4·(i mod 8) of word i/8, i.e. two consecutive weights a byte.
        values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)
        codes = values[..., 0::2] | (values[..., 1::2] << 4)
        biases = _halves(blocks[..., 2:4]) if kind == Q.Q4_1 else -8.0 * d
    packed = np.ascontiguousarray(codes.reshape(rows, -1)).view("<u4")
    return packed, d, biases.astype(np.float32)


def _halves(pairs: U8) -> F32:
    """Each block's little-endian float16 (two bytes) as float32, one per block."""
    result: F32 = np.ascontiguousarray(pairs).view("<f2")[..., 0].astype(np.float32)
    return result
