"""`models verify ID`: pre-warm's integrity check on a model found the way `serve` finds it."""

from __future__ import annotations

from pathlib import Path

from macprovider.actors.prewarm_errors import PrewarmIntegrityError
from macprovider.actors.prewarm_integrity import REQUIRED_FILES, check_integrity
from macprovider.cli.errors import ModelIntegrityError
from macprovider.server.errors import ModelNotFoundError
from macprovider.server.model_facts import parameter_count
from macprovider.server.models import NotAModelId, NotInHfCache, locate_model


def find_model(model: str) -> Path:
    """The folder `serve --model model` would load; ModelNotFoundError (66) when there is none.

    Not `resolve_model_path`: a folder without config.json is found here and then failed by
    the integrity check (65), since it is a damaged model rather than a missing one."""
    try:
        return locate_model(model)
    except NotAModelId:
        raise ModelNotFoundError(
            f"model {model!r}: no such folder, no such name in the models folder, and not a "
            "Hugging Face repo id"
        ) from None
    except NotInHfCache:
        raise ModelNotFoundError(
            f"model {model!r} is not a local folder, a name in the models folder or in the "
            f"Hugging Face cache; fetch it with `macprovider-supervise models pull {model}`"
        ) from None


def verify_folder(folder: Path, model: str) -> str:
    """Checks `folder` (every header, every hash the HF cache recorded); returns the summary
    line, or raises ModelIntegrityError (65) naming the file."""
    try:
        report = check_integrity(folder, model)
        # check_integrity counts stored elements, which a quantized checkpoint packs; the
        # model's own count is model_facts'. A header it accepted can still fail here (a packed
        # layout config.json does not describe), which is damage all the same.
        parameters = parameter_count(folder)
    except PrewarmIntegrityError as e:
        raise ModelIntegrityError(f"damaged model {model}: {e.file}: {e.cause}") from None
    except ValueError as e:
        raise ModelIntegrityError(f"damaged model {model}: {' '.join(str(e).split())}") from None
    checked = set(REQUIRED_FILES) | set(report.weight_files) | set(report.hashed_files)
    where = str(report.folder) if model == str(folder) else f"{model} at {report.folder}"
    return (
        f"ok: {where}: {len(checked)} files checked, "
        f"{len(report.hashed_files)} hashes verified, {parameters:,} parameters, "
        f"{report.total_bytes:,} bytes"
    )
