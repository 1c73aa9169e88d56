"""`--memory-limit-gb`: what serving a model needs, checked before its weights are loaded.

The need is the weights (the tensor bytes of the safetensors headers) plus a KV cache full to
`max_context` tokens for each of `max_batch` sequences. Every layer is counted with a full
standard cache, so models with sliding-window or recurrent layers are overestimated: the limit
errs on the side of refusing. Activations and MLX's own buffers are not counted.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import mlx.core as mx
from safetensors import SafetensorError

from macprovider.server.batch_cache import GROUP_SIZE
from macprovider.server.config import GB, MEMORY_LIMIT_GB, ServeConfig
from macprovider.server.errors import MemoryBudgetExceeded, ModelLoadError
from macprovider.server.model_facts import read_config
from macprovider.server.models import WEIGHT_GLOB, weight_files
from macprovider.server.safetensors_headers import tensor_headers

__all__ = [
    "MemoryNeed",
    "ModelShape",
    "Weights",
    "check_memory_budget",
    "estimate_need",
    "format_gb",
    "kv_bytes_per_element",
    "limit_bytes",
    "model_shape",
    "out_of_memory_message",
    "read_weights",
]

log = logging.getLogger("macprovider.serve")

# The float dtypes a model computes in, hence its KV cache's element size: by config.json name
# (`torch_dtype`, renamed `dtype` by transformers 4.56) and by safetensors name.
_CONFIG_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
_WEIGHT_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4}


@dataclass(frozen=True)
class ModelShape:
    """What a model's KV cache size depends on."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int  # of the model's activations, so of its unquantized keys and values


@dataclass(frozen=True)
class Weights:
    nbytes: int  # sum of the tensors' sizes over every weight file
    dtype_bytes: int | None  # of the float dtype holding most weight bytes; None if no floats


@dataclass(frozen=True)
class MemoryNeed:
    weights: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


# --- the estimate: pure ---------------------------------------------------------------------------


def kv_bytes_per_element(dtype_bytes: int, kv_bits: int | None) -> Fraction:
    """Bytes per cached key or value element, unquantized or at `kv_bits`."""
    if kv_bits is None:
        return Fraction(dtype_bytes)
    # mlx quantizes in groups of GROUP_SIZE elements, each with a scale and a bias in the
    # model's dtype.
    return Fraction(kv_bits, 8) + Fraction(2 * dtype_bytes, GROUP_SIZE)


def estimate_need(
    weights_bytes: int,
    shape: ModelShape,
    *,
    max_context: int,
    max_batch: int,
    kv_bits: int | None,
) -> MemoryNeed:
    """Weights plus a KV cache holding `max_context` tokens (keys and values, every layer)
    for each of `max_batch` sequences."""
    elements = max_batch * max_context * shape.layers * 2 * shape.kv_heads * shape.head_dim
    kv_cache = math.ceil(elements * kv_bytes_per_element(shape.dtype_bytes, kv_bits))
    return MemoryNeed(weights=weights_bytes, kv_cache=kv_cache)


def model_shape(config: Mapping[str, Any], weights_dtype_bytes: int | None) -> ModelShape:
    """The KV-relevant shape from a parsed config.json; ValueError names what is missing.

    `weights_dtype_bytes` stands in for the dtype when config.json names none it knows.
    """
    # Multimodal checkpoints nest the language model's parameters under `text_config`.
    params = config.get("text_config", config) if "num_hidden_layers" not in config else config
    if not isinstance(params, Mapping):
        raise ValueError("config.json's text_config is not an object")
    heads = _count(params, "num_attention_heads")
    kv_heads = heads  # HF's convention when a config predates grouped-query attention
    if params.get("num_key_value_heads") is not None:
        kv_heads = _count(params, "num_key_value_heads")
    if params.get("head_dim") is not None:
        head_dim = _count(params, "head_dim")
    else:
        head_dim = _count(params, "hidden_size") // heads
    return ModelShape(
        layers=_count(params, "num_hidden_layers"),
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype_bytes=_dtype_bytes(params, config, weights_dtype_bytes),
    )


def _count(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.json has no positive integer {key} (found {value!r})")
    return value


def _dtype_bytes(
    params: Mapping[str, Any], config: Mapping[str, Any], weights_dtype_bytes: int | None
) -> int:
    for mapping in (params, config):
        for key in ("torch_dtype", "dtype"):
            if mapping.get(key) in _CONFIG_DTYPE_BYTES:
                return _CONFIG_DTYPE_BYTES[mapping[key]]
    if weights_dtype_bytes is None:
        raise ValueError(
            "neither config.json nor the weights name a float16/bfloat16/float32 dtype"
        )
    return weights_dtype_bytes


def limit_bytes(limit_gb: float) -> int:
    # round, not int: as floats, 0.00013 × 10^9 is 129999.99999999999.
    return round(limit_gb * GB)


def format_gb(nbytes: int) -> str:
    """`nbytes` in GB with at least 3 decimals and 3 significant digits, rounded up so that a
    need never shows as equal to a limit it exceeds."""
    decimals = 3
    while decimals < 9 and nbytes * 10**decimals < 100 * GB:
        decimals += 1
    scale = 10**decimals
    units = -(-nbytes // (GB // scale))  # ceiling division
    return f"{units // scale}.{units % scale:0{decimals}d}"


def out_of_memory_message(model: str, need: MemoryNeed, config: ServeConfig) -> str:
    assert config.memory_limit_gb is not None
    quantized = f", {config.kv_bits}-bit" if config.kv_bits is not None else ""
    return (
        f"out of memory: {model} needs {format_gb(need.total)} GB (weights "
        f"{format_gb(need.weights)} GB + KV cache {format_gb(need.kv_cache)} GB at max context "
        f"{config.max_context} × batch {config.max_batch}{quantized}) but the limit is "
        f"{config.memory_limit_gb:.15g} GB from {config.sources[MEMORY_LIMIT_GB.name]}"
    )


# --- reading the model, and the guard ---------------------------------------------------------


def read_weights(model_path: Path) -> Weights:
    """Tensor sizes from the safetensors headers (read and checked by the reference
    implementation; no tensor data is read). Raises ValueError or SafetensorError."""
    files = weight_files(model_path)
    if not files:
        raise ValueError(f"no {WEIGHT_GLOB} file in {model_path}")
    total = 0
    float_bytes: Counter[str] = Counter()
    for tensor in tensor_headers(files):
        total += tensor.nbytes
        if tensor.dtype in _WEIGHT_DTYPE_BYTES:
            float_bytes[tensor.dtype] += tensor.nbytes
    dominant = float_bytes.most_common(1)
    return Weights(total, _WEIGHT_DTYPE_BYTES[dominant[0][0]] if dominant else None)


def check_memory_budget(config: ServeConfig, model_path: Path) -> None:
    """With a memory limit set: raises MemoryBudgetExceeded if the model does not fit, else
    hands the limit to MLX. Runs before the weights are loaded."""
    if config.memory_limit_gb is None:
        return
    model = config.model or model_path.name
    need = _estimate(config, model_path, model)
    limit = limit_bytes(config.memory_limit_gb)
    if need.total > limit:
        raise MemoryBudgetExceeded(out_of_memory_message(model, need, config))
    log.info(
        "memory: %s needs %s GB (%d bytes: weights %d + KV cache %d), within the limit of %s GB "
        "from %s",
        model,
        format_gb(need.total),
        need.total,
        need.weights,
        need.kv_cache,
        f"{config.memory_limit_gb:.15g}",
        config.sources[MEMORY_LIMIT_GB.name],
    )
    _set_mlx_memory_limit(limit)


def _estimate(config: ServeConfig, model_path: Path, model: str) -> MemoryNeed:
    try:
        weights = read_weights(model_path)
        shape = model_shape(read_config(model_path), weights.dtype_bytes)
    except (OSError, ValueError, SafetensorError) as exc:  # JSONDecodeError is a ValueError
        raise ModelLoadError(f"cannot estimate the memory {model} needs: {exc}") from None
    return estimate_need(
        weights.nbytes,
        shape,
        max_context=config.max_context,
        max_batch=config.max_batch,
        kv_bits=config.kv_bits,
    )


def _set_mlx_memory_limit(limit: int) -> None:
    # A guideline for MLX's allocator, not a hard cap (the CPU backend accepts it and allocates
    # past it), so the check above stays the real guard.
    try:
        mx.set_memory_limit(limit)
    # nanobind raises TypeError for a value beyond size_t; a backend may refuse with others.
    except (RuntimeError, TypeError, ValueError) as exc:
        log.warning("MLX refused a memory limit of %d bytes (%s); not applied", limit, exc)
