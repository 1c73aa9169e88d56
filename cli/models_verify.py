"""`models verify ID`: pre-warm's integrity check on a model found the way `serve` finds it
(`server.models.resolve_model_path`, which also words the "not found" line)."""

from __future__ import annotations

from pathlib import Path

from macprovider.actors.prewarm_errors import PrewarmIntegrityError, one_line
from macprovider.actors.prewarm_integrity import REQUIRED_FILES, check_integrity
from macprovider.cli.errors import ModelIntegrityError
from macprovider.server.model_facts import parameter_count


def verify_folder(folder: Path, model: str) -> str:
    """Checks `folder` (every header, every hash the HF cache recorded); returns the summary
    line, or raises ModelIntegrityError (65) naming the file."""
    try:
        return check_folder(folder, model)
    except (PrewarmIntegrityError, ValueError) as e:
        raise ModelIntegrityError(damage_line(model, e)) from None


def check_folder(folder: Path, model: str) -> str:
    """`verify_folder`'s summary line, or its error unmapped: PrewarmIntegrityError naming the
    file, or ValueError (a layout the parameter count refuses, no one file to blame)."""
    report = check_integrity(folder, model)
    # check_integrity counts stored elements, which a quantized checkpoint packs; the model's
    # own count is model_facts'. A header it accepted can still fail here (a packed layout
    # config.json does not describe), which is damage all the same.
    parameters = parameter_count(folder)
    checked = set(REQUIRED_FILES) | set(report.weight_files) | set(report.hashed_files)
    where = str(report.folder) if model == str(folder) else f"{model} at {report.folder}"
    return (
        f"ok: {where}: {len(checked)} files checked, "
        f"{len(report.hashed_files)} hashes verified, {parameters:,} parameters, "
        f"{report.total_bytes:,} bytes"
    )


def damage_line(model: str, error: PrewarmIntegrityError | ValueError) -> str:
    if isinstance(error, PrewarmIntegrityError):
        return f"damaged model {model}: {error.file}: {error.cause}"
    return f"damaged model {model}: {one_line(str(error))}"
