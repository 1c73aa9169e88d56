"""`models verify ID`: pre-warm's integrity check on a model found the way `serve` finds it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.cli.test_models_list import run_models
from tests.conftest import model_variant
from tests.model_files import WEIGHTS, hf_cache_repo

REPO = "acme/tiny"


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("macprovider-supervise: error: "), done.stderr
    return lines[0]


def test_a_good_folder_is_ok_with_its_true_parameter_count(
    tmp_path: Path, tiny_model: Path
) -> None:
    done = run_models(tmp_path, "verify", str(tiny_model))

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok: {tiny_model}: 3 files checked, 0 hashes verified, ")
    assert "656,000 parameters" in done.stdout


def test_a_repo_id_in_the_hf_cache_has_its_hashes_verified(
    tmp_path: Path, tiny_model: Path
) -> None:
    snapshot = hf_cache_repo(tmp_path / "hf-cache", REPO, tiny_model)

    done = run_models(tmp_path, "verify", REPO)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok: {REPO} at {snapshot}: 4 files checked, 4 hashes verified")


def test_a_damaged_byte_fails_naming_the_file(tmp_path: Path, tiny_model: Path) -> None:
    snapshot = hf_cache_repo(tmp_path / "hf-cache", REPO, tiny_model)
    blob = (snapshot / WEIGHTS).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01
    blob.write_bytes(bytes(data))

    done = run_models(tmp_path, "verify", REPO)

    assert done.returncode == 65
    assert f"damaged model {REPO}: {WEIGHTS}: sha256 mismatch" in error_line(done)


def test_a_missing_tokenizer_fails_naming_it(tmp_path: Path, tiny_model: Path) -> None:
    folder = model_variant(tiny_model, tmp_path / "models" / "no-tokenizer", {})
    (folder / "tokenizer.json").unlink()

    done = run_models(tmp_path, "verify", "no-tokenizer")  # a name in the models folder

    assert done.returncode == 65
    assert "damaged model no-tokenizer: tokenizer.json: missing" in error_line(done)


def test_an_id_with_nothing_here_is_not_found(tmp_path: Path) -> None:
    done = run_models(tmp_path, "verify", "acme/absent")

    assert done.returncode == 66
    assert "models pull acme/absent" in error_line(done)


def test_a_name_not_found_names_the_models_folder_searched(tmp_path: Path) -> None:
    done = run_models(tmp_path, "verify", "absent")

    assert done.returncode == 66
    line = error_line(done)
    assert (
        f"no such name in the models folder {tmp_path / 'models'} (env MACPROVIDER_MODELS_DIR)"
        in line
    )
    assert f"the Hugging Face cache {tmp_path / 'hf-cache'}" in line
