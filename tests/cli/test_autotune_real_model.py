"""`autotune` over a real pretrained model in its two forms: SmolLM2-135M-Instruct as bf16 and
as its GGUF's 4-bit blocks copied without loss, named as `models import` names them (found in
the models folder), with a real BPE tokenizer, chat template and EOS in the probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from macprovider.cli.size_text import bytes_text
from macprovider.server.models import weight_files
from tests.cli.autotune_runs import ONE_CELL, Autotune
from tests.conftest import clean_env

pytestmark = pytest.mark.slow  # whole `autotune` runs over real providers

BOTH_FORMS = "smollm2-135m,smollm2-135m-q4"
# SmolLM2's template adds a default system prompt: 48 tokens leave room for a short question.
REAL_QUICK = ("--target-context", "48", "--probe-max-tokens", "8", "--stage2-replicates", "1")


def on_disk(folder: Path) -> int:
    return sum(path.stat().st_size for path in weight_files(folder))


def size_text(folder: Path) -> str:
    """Both forms: SmolLM2-135M's 134,515,008 parameters, and their own weight files' bytes."""
    return f"(134.5M parameters, {bytes_text(on_disk(folder))} on disk)"


def test_both_forms_are_sized_alike_with_their_bytes_beside(
    autotune: Autotune, fixtures_dir: Path, smollm2_model: Path, smollm2_q4_model: Path
) -> None:
    env = clean_env(MACPROVIDER_MODELS_DIR=str(fixtures_dir))
    done = autotune.run("--candidate-models", BOTH_FORMS, *REAL_QUICK, "--dry-run", env=env)
    assert done.code == 0, done.stderr
    assert f"  1. smollm2-135m  {size_text(smollm2_model)}" in done.stdout
    # The 4-bit copy: the same parameters (a packed count read as parameters once made it
    # 28.8M), in under half the bytes.
    assert f"  2. smollm2-135m-q4  {size_text(smollm2_q4_model)}" in done.stdout
    assert on_disk(smollm2_q4_model) < on_disk(smollm2_model) / 2


def test_autotune_recommends_the_real_model_and_offers_its_other_form(
    autotune: Autotune, fixtures_dir: Path, smollm2_model: Path, smollm2_q4_model: Path
) -> None:
    env = clean_env(MACPROVIDER_MODELS_DIR=str(fixtures_dir))
    done = autotune.run("--candidate-models", BOTH_FORMS, *REAL_QUICK, *ONE_CELL, env=env)
    assert done.code == 0, done.stderr
    [stage1] = done.trials(stage=1)
    assert stage1.record.model == "smollm2-135m" and stage1.record.fits
    # The probe prompt was built to the token with the real BPE tokenizer and template.
    assert stage1.record.measured_prompt_tokens == 48
    assert f"model:           smollm2-135m  {size_text(smollm2_model)}" in done.stdout
    # Same size counts as an option: the 4-bit form was never probed and is offered.
    assert "alternates:      smollm2-135m-q4" in done.stdout
    [kept] = [row for row in done.trials(stage=2) if row.kept]
    assert kept.record.model == "smollm2-135m"
    assert "serve command:   macprovider-supervise serve --model smollm2-135m" in done.stdout
