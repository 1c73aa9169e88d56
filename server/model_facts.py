"""What a model folder says about itself: its parameter count, its trained context and the token
ids that end its generation, read from its files without loading the model.

Light (no MLX): pre-warm, the size report, `serve`'s context default and `models list` all read
these facts here, so each is computed by one rule.

Parameters are the model's, not the checkpoint's elements: an MLX-quantized linear or embedding
stores its `weight` packed into uint32 words beside per-group `scales` (and, affine, `biases`),
so counting elements would size a 4-bit model at about a fifth of the same model in bf16.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from macprovider.server.models import WEIGHT_GLOB, weight_files

if TYPE_CHECKING:
    from macprovider.server.safetensors_headers import TensorHeader

__all__ = [
    "GENERATION_CONFIG",
    "count_parameters",
    "eos_ids",
    "parameter_count",
    "quantized_parameters",
    "read_config",
    "stop_token_ids",
    "trained_context",
]

GENERATION_CONFIG = "generation_config.json"
# The bit widths MLX packs weights at (`mx.quantize`'s modes, affine and the fp4/fp8 ones).
_PACKED_BITS = frozenset({2, 3, 4, 5, 6, 8})
_WORD_BITS = 32


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's parsed config.json; ValueError when it is not a JSON object."""
    config = json.loads((folder / "config.json").read_bytes())
    if not isinstance(config, dict):
        raise ValueError(f"{folder / 'config.json'} is not a JSON object")
    return config


def _language_params(config: Mapping[str, Any]) -> Mapping[str, Any]:
    # Multimodal checkpoints nest the language model's parameters under `text_config`.
    nested = config.get("text_config")
    return nested if isinstance(nested, Mapping) else {}


def trained_context(config: Mapping[str, Any]) -> int | None:
    """The context length the model was trained for (`max_position_embeddings`, at the top of
    a parsed config.json or under `text_config`); None when the config names none."""
    for params in (config, _language_params(config)):
        value = params.get("max_position_embeddings")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


# --- parameters -----------------------------------------------------------------------------


def parameter_count(folder: Path) -> int:
    """The model's parameter count, from its weight files' safetensors headers (no tensor data
    is read) and, for a quantized checkpoint, config.json's `quantization` block.

    Raises OSError, ValueError (no weight file, a packed layout that does not add up) or
    safetensors' SafetensorError.
    """
    files = weight_files(folder)
    if not files:
        raise ValueError(f"no {WEIGHT_GLOB} file in {folder}")
    # Here, not at the top: `serve` reads the trained context from this module without paying
    # for the safetensors library before its knobs are known good.
    from macprovider.server.safetensors_headers import tensor_headers

    return count_parameters(tensor_headers(files), read_config(folder))


def count_parameters(tensors: Iterable[TensorHeader], config: Mapping[str, Any]) -> int:
    """The parameters of a checkpoint's tensors (every shard's together: a packed weight and
    its scales may sit in different shards). A packed weight counts as the values it packs;
    its scales and biases are quantization data, not parameters."""
    by_name = {tensor.name: tensor for tensor in tensors}
    quantization = config.get("quantization")
    if not isinstance(quantization, Mapping):
        quantization = _language_params(config).get("quantization")
    total = 0
    for name, tensor in by_name.items():
        module, _, kind = name.rpartition(".")
        scales = by_name.get(f"{module}.scales")
        if scales is None or not module:
            total += tensor.elements
        elif kind == "weight" and tensor.dtype == "U32":
            layout = _layout(quantization, module)
            total += quantized_parameters(tensor.shape, scales.shape, layout, name)
        elif kind not in ("scales", "biases"):
            total += tensor.elements  # e.g. a quantized linear's own `bias`
    return total


def _layout(quantization: Any, module: str) -> tuple[int, int]:
    """(bits, group_size) config.json gives `module`: mlx-lm's loader takes a per-module entry
    keyed by the module's path over the block's defaults."""
    if not isinstance(quantization, Mapping):
        raise ValueError(f"{module} is quantized but config.json has no quantization block")
    override = quantization.get(module)
    source = override if isinstance(override, Mapping) else quantization
    bits, group_size = source.get("bits"), source.get("group_size")
    if not isinstance(bits, int) or not isinstance(group_size, int) or bits < 1 or group_size < 1:
        raise ValueError(f"config.json's quantization names no bits and group_size for {module}")
    return bits, group_size


def quantized_parameters(
    weight_shape: tuple[int, ...],
    scales_shape: tuple[int, ...],
    layout: tuple[int, int],
    name: str = "weight",
) -> int:
    """The values a packed weight holds: its rows times its input width, where the input width
    is weight columns × 32 / bits = scales columns × group size.

    The shapes fix bits × group size, not each: 4-bit in groups of 64 and 8-bit in groups of 32
    pack alike. Like mlx-lm's loader (`infer_quant_config`), which rereads a module's layout
    from its shapes because a config's defaults can be wrong for some modules, the config's
    layout is only taken where the shapes agree: else its group size with the bits the shapes
    then imply (mixed-precision recipes vary bits per module), else its bits. ValueError when
    neither fits.
    """
    bits, group_size = layout
    words, groups = weight_shape[-1], scales_shape[-1]
    rows = 1
    for dim in weight_shape[:-1]:
        rows *= dim
    for width in (groups * group_size, words * _WORD_BITS // bits):
        packed = words * _WORD_BITS
        if packed % width == 0 and packed // width in _PACKED_BITS and width % groups == 0:
            return rows * width
    raise ValueError(
        f"{name}: {words} packed words and {groups} scale groups per row do not fit "
        f"config.json's {bits} bits in groups of {group_size}"
    )


# --- stop tokens ----------------------------------------------------------------------------


def eos_ids(value: Any) -> frozenset[int]:
    """The token ids of an `eos_token_id` entry: an int, a list of them, or absent (null)."""
    items = value if isinstance(value, list) else [value]
    return frozenset(i for i in items if isinstance(i, int) and not isinstance(i, bool) and i >= 0)


def stop_token_ids(folder: Path, tokenizer_eos: Iterable[int]) -> frozenset[int]:
    """Every token id that ends generation for the model in `folder`: the tokenizer's own
    end-of-sequence ids, and the `eos_token_id` of config.json and of generation_config.json
    (each an int or a list).

    mlx-lm's loader lets generation_config's list replace config.json's, and its tokenizer-only
    loader reads neither: the engine and the probe's leak check both take the union from here,
    so what stops generation is what the probe looks for. A missing or unreadable JSON file
    adds nothing.
    """
    ids = set(tokenizer_eos)
    for name in ("config.json", GENERATION_CONFIG):
        try:
            parsed = json.loads((folder / name).read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(parsed, dict):
            ids |= eos_ids(parsed.get("eos_token_id"))
            ids |= eos_ids(_language_params(parsed).get("eos_token_id"))
    return frozenset(ids)
