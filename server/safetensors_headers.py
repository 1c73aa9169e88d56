"""What safetensors headers say: each tensor's dtype, shape and size, read by the format's
reference implementation (`safetensors.safe_open`) without reading any tensor data.

Used by the memory budget (weight bytes) and by the size report (parameter counts).
Pre-warm's integrity check parses headers itself (actors/prewarm_integrity.py says why).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

# Bits per element of every dtype the safetensors format (0.8) defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U16": 16,
    "I16": 16,
    "F16": 16,
    "BF16": 16,
    "U32": 32,
    "I32": 32,
    "F32": 32,
    "C64": 64,
    "U64": 64,
    "I64": 64,
    "F64": 64,
}


@dataclass(frozen=True)
class TensorHeader:
    name: str
    dtype: str  # a DTYPE_BITS key
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return math.ceil(self.elements * DTYPE_BITS[self.dtype] / 8)


def tensor_headers(files: Iterable[Path]) -> Iterator[TensorHeader]:
    """Every tensor of every file, in file order. A file the reference implementation refuses
    (a garbage or truncated header, tensors not covering the data) raises SafetensorError."""
    for file in files:
        with safe_open(str(file), framework="numpy") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                tensor = tensors.get_slice(name)
                yield TensorHeader(name, tensor.get_dtype(), tuple(tensor.get_shape()))
