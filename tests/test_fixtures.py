"""ops/fixtures.py builds byte-identical, cached, loadable fixture models."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

ROOT = Path(__file__).resolve().parents[1]
IM_END = "<|im_end|>"


@dataclass(frozen=True)
class Build:
    folder: Path
    stdout: str
    stderr: str


def _build(folder: Path) -> Build:
    done = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "fixtures.py"), "--dir", str(folder), "--only", "tiny"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=240,
    )
    return Build(folder, done.stdout, done.stderr)


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir()}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Build, Build]:
    return _build(tmp_path_factory.mktemp("first")), _build(tmp_path_factory.mktemp("second"))


def test_stdout_is_just_the_folder(builds: tuple[Build, Build]) -> None:
    first, _ = builds
    assert first.stdout.splitlines() == [str(first.folder.resolve())]
    assert "tiny" in first.stderr and "built" in first.stderr


def test_only_builds_the_named_model(builds: tuple[Build, Build]) -> None:
    first, _ = builds
    assert sorted(
        path.name for path in first.folder.iterdir() if not path.name.startswith(".")
    ) == [
        "index.json",
        "tiny",
    ]
    (entry,) = json.loads((first.folder / "index.json").read_text())["models"]
    assert entry["name"] == "tiny" and Path(entry["path"]) == first.folder.resolve() / "tiny"
    assert entry["bytes"] == (first.folder / "tiny" / "model.safetensors").stat().st_size


def test_builds_are_byte_identical(builds: tuple[Build, Build]) -> None:
    first, second = builds
    digests = _digests(first.folder / "tiny")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        digests
    )
    assert digests == _digests(second.folder / "tiny")


def test_second_run_uses_the_cache(builds: tuple[Build, Build]) -> None:
    first, _ = builds
    model = first.folder / "tiny"
    before = {path.name: path.stat().st_mtime_ns for path in model.iterdir()}
    again = _build(first.folder)
    assert "cached" in again.stderr and "built" not in again.stderr
    assert again.stdout.splitlines()[-1] == str(first.folder.resolve())
    assert {path.name: path.stat().st_mtime_ns for path in model.iterdir()} == before


def test_model_loads_and_generates_words(builds: tuple[Build, Build]) -> None:
    import mlx_lm
    from mlx.utils import tree_flatten
    from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer
    from mlx_lm.utils import load

    first, _ = builds
    model, tokenizer = load(str(first.folder / "tiny"))
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    assert tokenizer.eos_token == IM_END and tokenizer.eos_token_ids == {im_end}
    assert isinstance(tokenizer.detokenizer, BPEStreamingDetokenizer)

    messages = [{"role": "user", "content": "Tell me a fable."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nTell me a fable.<|im_end|>\n<|im_start|>assistant\n"

    text = "".join(
        response.text
        for response in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=24)
    )
    assert text.strip() and IM_END not in text
    assert im_end not in tokenizer.encode(text, add_special_tokens=False)

    (entry,) = json.loads((first.folder / "index.json").read_text())["models"]
    parameters = cast(list[tuple[str, Any]], tree_flatten(model.parameters()))
    assert entry["parameters"] == sum(value.size for _, value in parameters)
