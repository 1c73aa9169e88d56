"""Synthetic GGUF files for the `models import` tests, written with gguf-py's own writer.

Weights are made in HF (mlx-lm) layout, encoded per GGML type, and the Q/K rows permuted as
llama.cpp's converter does, so an import that round-trips them proves the un-permutation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFValue, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize
from tokenizers.pre_tokenizers import ByteLevel

Q = GGMLQuantizationType
F32 = npt.NDArray[np.float32]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = ("Ġ t", "h e", "Ġt he", "i n", "Ġ a")


def permute_rows(rows: npt.NDArray[Any], heads: int) -> npt.NDArray[Any]:
    """llama.cpp's `permute` of a Q/K projection (convert_hf_to_gguf.py), on any row array."""
    half = rows.shape[0] // heads // 2
    split = rows.reshape(heads, 2, half, *rows.shape[1:])
    return np.ascontiguousarray(split.swapaxes(1, 2).reshape(rows.shape))


def k_quant_blocks(
    kind: GGMLQuantizationType, rows: int, cols: int, seed: int
) -> npt.NDArray[np.uint8]:
    """Valid Q4_K / Q6_K data (gguf-py has no quantizer for them): random codes and sub-scales,
    and small finite float16 super-block scales."""
    rng = np.random.default_rng(seed)
    block_bytes = {Q.Q4_K: 144, Q.Q6_K: 210}[kind]
    blocks = rng.integers(0, 256, size=(rows, cols // 256, block_bytes), dtype=np.uint8)
    scales = rng.uniform(1e-3, 2e-3, size=(rows, cols // 256, 2)).astype("<f2").view(np.uint8)
    if kind == Q.Q4_K:
        blocks[..., 0:4] = scales  # d, dmin
    else:
        blocks[..., 208:210] = scales[..., 0:2]  # d, at the end of a Q6_K block
    return blocks.reshape(rows, -1)


def encode(values: F32, kind: GGMLQuantizationType, seed: int = 0) -> npt.NDArray[Any]:
    """`values` as `kind`'s bytes (K-quants: random valid blocks of the same shape)."""
    if kind == Q.F32:
        return values.astype(np.float32)
    if kind == Q.F16:
        return values.astype(np.float16)
    if kind == Q.IQ4_NL:  # refused before it is read: only its size must be right
        return np.zeros((values.shape[0], values.shape[1] // 32 * 18), np.uint8)
    if kind in (Q.Q4_K, Q.Q6_K):
        return k_quant_blocks(kind, values.shape[0], values.shape[1], seed)
    return quantize(values, kind)


def decode(data: npt.NDArray[Any], kind: GGMLQuantizationType, shape: tuple[int, ...]) -> F32:
    return np.asarray(dequantize(data, kind), np.float32).reshape(shape)


@dataclass
class TinyLlama:
    """A two-layer Llama small enough to run in milliseconds, K-quant-sized (hidden 256)."""

    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    intermediate: int = 512
    layers: int = 2
    types: dict[str, GGMLQuantizationType] = field(
        default_factory=lambda: {
            "token_embd": Q.Q8_0,
            "attn_q": Q.Q4_1,
            "attn_k": Q.Q4_0,
            "attn_v": Q.Q8_0,
            "attn_output": Q.F16,
            "ffn_gate": Q.Q4_K,
            "ffn_up": Q.Q6_K,
            "ffn_down": Q.Q4_1,
        }
    )

    @property
    def tokens(self) -> list[str]:
        byte_tokens = sorted(ByteLevel.alphabet(), key=ord)
        return [*SPECIALS, *byte_tokens, *(merge.replace(" ", "") for merge in MERGES)]


def write_gguf(
    path: Path,
    model: TinyLlama,
    *,
    architecture: str = "llama",
    pre: str = "smollm",
    extra: dict[str, tuple[npt.NDArray[Any], GGMLQuantizationType]] | None = None,
    metadata: Mapping[str, tuple[Any, GGUFValueType] | None] | None = None,
) -> dict[str, F32]:
    """Writes `model` with random weights as a GGUF at `path`; returns the weights the file
    holds, decoded, in mlx-lm names and HF layout (the reference an import must reproduce).
    `metadata` replaces keys (value and type) or, given None, leaves them out."""
    rng = np.random.default_rng(7)
    vocab = len(model.tokens)
    q_rows, kv_rows = model.heads * model.head_dim, model.kv_heads * model.head_dim
    shapes: dict[str, tuple[int, int]] = {
        "attn_q": (q_rows, model.hidden),
        "attn_k": (kv_rows, model.hidden),
        "attn_v": (kv_rows, model.hidden),
        "attn_output": (model.hidden, q_rows),
        "ffn_gate": (model.intermediate, model.hidden),
        "ffn_up": (model.intermediate, model.hidden),
        "ffn_down": (model.hidden, model.intermediate),
    }
    writer = GGUFWriter(str(path), architecture)
    prefix = architecture
    writer.add_uint32(f"{prefix}.block_count", model.layers)
    writer.add_uint32(f"{prefix}.context_length", 512)
    writer.add_uint32(f"{prefix}.embedding_length", model.hidden)
    writer.add_uint32(f"{prefix}.feed_forward_length", model.intermediate)
    writer.add_uint32(f"{prefix}.attention.head_count", model.heads)
    writer.add_uint32(f"{prefix}.attention.head_count_kv", model.kv_heads)
    writer.add_uint32(f"{prefix}.rope.dimension_count", model.head_dim)
    writer.add_float32(f"{prefix}.rope.freq_base", 10000.0)
    writer.add_float32(f"{prefix}.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(model.tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (vocab - len(SPECIALS)))
    writer.add_token_merges(list(MERGES))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_uint32("tokenizer.ggml.eot_token_id", 0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    reference: dict[str, F32] = {}

    def add(
        gguf_name: str,
        mlx_name: str,
        shape: tuple[int, ...],
        kind: GGMLQuantizationType,
        heads: int = 0,
    ) -> None:
        values = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if len(shape) == 1:
            values += 1.0  # an RMSNorm weight
        data = encode(values, kind, seed=len(reference))
        reference[f"{mlx_name}.weight"] = decode(data, kind, shape)
        writer.add_tensor(gguf_name, permute_rows(data, heads) if heads else data, raw_dtype=kind)

    add("token_embd.weight", "model.embed_tokens", (vocab, model.hidden), model.types["token_embd"])
    for layer in range(model.layers):
        blk, hf = f"blk.{layer}", f"model.layers.{layer}"
        add(f"{blk}.attn_norm.weight", f"{hf}.input_layernorm", (model.hidden,), Q.F32)
        add(f"{blk}.ffn_norm.weight", f"{hf}.post_attention_layernorm", (model.hidden,), Q.F32)
        parts = {
            "attn_q": "self_attn.q_proj",
            "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj",
            "ffn_gate": "mlp.gate_proj",
            "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj",
        }
        heads = {"attn_q": model.heads, "attn_k": model.kv_heads}
        for part, hf_part in parts.items():
            add(
                f"{blk}.{part}.weight",
                f"{hf}.{hf_part}",
                shapes[part],
                model.types[part],
                heads.get(part, 0),
            )
    add("output_norm.weight", "model.norm", (model.hidden,), Q.F32)
    for name, (data, kind) in (extra or {}).items():
        writer.add_tensor(name, data, raw_dtype=kind)
    for key, change in (metadata or {}).items():
        writer.kv_data[0].pop(key, None)
        if change is not None:
            writer.kv_data[0][key] = GGUFValue(*change)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


def write_one_tensor(
    path: Path, name: str, data: npt.NDArray[Any], kind: GGMLQuantizationType
) -> None:
    """A GGUF holding one tensor and no metadata beyond the architecture."""
    writer = GGUFWriter(str(path), "llama")
    writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
