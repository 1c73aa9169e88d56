"""Which route a GGUF's tensors take into an mlx-lm folder, and in which dtype.

`--q-bits` picks the route (copy Q4_0/Q4_1/Q8_0 losslessly, dequantize, or re-quantize with
mlx-lm) and `--dtype` the one dtype of everything that is not packed integers: dense weights,
scales and biases, and so the model's activations and KV cache. The rules on which goes with
which, the default, and the line that tells the operator the route before a long conversion
all live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from gguf import ReaderTensor

__all__ = ["DTYPES", "Q_BITS", "default_dtype", "dtype_problem", "route_line"]

Q_BITS: Final = ("keep", "none", "4", "8")
DTYPES: Final = ("float16", "bfloat16", "float32")
_BYTES: Final = {"float16": 2, "bfloat16": 2, "float32": 4}


def dtype_problem(q_bits: str, dtype: str | None) -> str | None:
    """Why `--dtype` cannot go with `--q-bits`, or None. bfloat16 keeps 8 significant bits to
    float16's 11, so a `keep` copy in bfloat16 would round its scales: not a lossless copy."""
    if q_bits == "keep" and dtype == "bfloat16":
        return (
            "bfloat16 cannot hold the float16 scales --q-bits keep copies;"
            " use float16 or float32, or --q-bits none for a bfloat16 model"
        )
    return None


def default_dtype(mode: str, device_type: str) -> str:
    """The dtype of what is not packed integers when `--dtype` is not given.

    `mode` is the route the tensors take (`keep` only when some tensor is copied: a file with
    nothing to copy imports as `none`); `device_type` is MLX's default device's, `cpu` or
    `gpu`. A copy keeps float16 scales on a GPU (Apple silicon's norm: activations and the KV
    cache at half float32's bytes) and float32 on the CPU, whose quantized matmuls run ~8×
    slower with half-precision scales. Dense and re-quantized models are bfloat16.
    """
    if mode == "keep":
        return "float16" if device_type == "gpu" else "float32"
    return "bfloat16"


def route_line(tensors: Sequence[ReaderTensor], *, keep: bool, q_bits: str, dtype: str) -> str:
    """What happens to the tensors, said before the conversion: `210 tensors copied losslessly
    (Q4_1, Q8_0), 61 dequantized to float32`; a quantized file that becomes a dense model
    says how big it gets and how to keep it small."""
    from macprovider.cli.gguf_tensors import FLOAT_TYPES, LOSSLESS_BITS
    from macprovider.cli.size_text import bytes_text

    copied = [t for t in tensors if keep and t.tensor_type in LOSSLESS_BITS]
    copied_types = ", ".join(sorted({t.tensor_type.name for t in copied}))
    parts = [f"{len(copied)} tensors copied losslessly ({copied_types})"] if copied else []
    if len(tensors) > len(copied):
        noun = "" if copied else "tensors "
        parts.append(f"{len(tensors) - len(copied)} {noun}dequantized to {dtype}")
    line = ", ".join(parts)
    if q_bits in ("4", "8"):
        return f"{line}, then re-quantized to {q_bits} bits by mlx-lm"
    quantized = sorted({t.tensor_type.name for t in tensors if t.tensor_type not in FLOAT_TYPES})
    if q_bits == "keep" and not copied and quantized:
        size = sum(int(t.n_elements) for t in tensors) * _BYTES[dtype]
        line += (
            f"; this {'/'.join(quantized)} file becomes a dense model of about"
            f" {bytes_text(size)} (--q-bits 4 re-quantizes it)"
        )
    return line
