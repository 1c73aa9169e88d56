"""How a model's size reads to the operator, in every listing and report: parameters with a
decimal suffix (`134.5M`) and bytes in decimal units (`270.6 MB`), the units `models list`,
the autotune plan and the recommendation share."""

from __future__ import annotations

_COUNT_SCALES = ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K"))
_BYTE_SCALES = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "kB"))


def parameters_text(parameters: int | None) -> str:
    if parameters is None:
        return "?"
    for scale, suffix in _COUNT_SCALES:
        if parameters >= scale:
            return f"{parameters / scale:.1f}{suffix}"
    return str(parameters)


def bytes_text(size: int | None) -> str:
    if size is None:
        return "?"
    for scale, suffix in _BYTE_SCALES:
        if size >= scale:
            return f"{size / scale:.1f} {suffix}"
    return f"{size} B"


def model_size_text(parameters: int | None, weight_bytes: int | None) -> str:
    """`134.5M parameters, 270.6 MB on disk`; what is unknown is left out."""
    parts = []
    if parameters is not None:
        parts.append(f"{parameters_text(parameters)} parameters")
    if weight_bytes is not None:
        parts.append(f"{bytes_text(weight_bytes)} on disk")
    return ", ".join(parts) or "size unknown"
