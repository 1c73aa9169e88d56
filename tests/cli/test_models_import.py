"""`models import FILE.gguf`: a folder mlx-lm loads and answers with as the GGUF does, whole or
not at all; refusals as one line and an exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType, GGUFValueType
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.utils import load, quantize_model

from macprovider.cli import gguf_tensors, models_import
from macprovider.cli.errors import ModelImportError
from macprovider.cli.gguf_route import default_dtype
from macprovider.cli.models_import import default_name, import_command, import_gguf
from tests.cli.gguf_build import TinyLlama, write_gguf
from tests.model_files import NEURAL_NETWORK, NEURAL_NETWORK_ANSWER

Q = GGMLQuantizationType
PROMPT = [1, 10, 70, 80, 90, 100, 200, 2]


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct.q4_1"),
        ("My Model 7B.GGUF", "mymodel7b"),
        ("llama+3:8b.gguf", "llama-3-8b"),
        (".hidden.gguf", "hidden"),
    ],
)
def test_default_name_is_the_file_name_made_safe(file_name: str, expected: str) -> None:
    assert default_name(Path(file_name)) == expected


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path / "Tiny.gguf"
    return path, write_gguf(path, TinyLlama())


def _reference_logits(weights: dict[str, np.ndarray], q_bits: str) -> mx.array:
    """What an import must answer: the GGUF's own weights, decoded by gguf-py, in mlx-lm's
    Llama — float32 for `keep` (the default on the CPU the tests run on), bfloat16 for the
    rest, quantized by mlx-lm itself for 4/8."""
    model = TinyLlama()
    config = {
        "model_type": "llama",
        "hidden_size": model.hidden,
        "num_hidden_layers": model.layers,
        "intermediate_size": model.intermediate,
        "num_attention_heads": model.heads,
        "num_key_value_heads": model.kv_heads,
        "head_dim": model.head_dim,
        "rms_norm_eps": 1e-5,
        "vocab_size": len(model.tokens),
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }
    reference = llama.Model(llama.ModelArgs.from_dict(config))
    dtype = mx.float32 if q_bits == "keep" else mx.bfloat16
    reference.load_weights(
        [(name, mx.array(value).astype(dtype)) for name, value in weights.items()]
    )
    if q_bits in ("4", "8"):
        reference, _ = quantize_model(reference, config, 64, int(q_bits))
    logits: mx.array = reference(mx.array([PROMPT]))[0]
    return logits


@pytest.mark.parametrize("q_bits", ["keep", "none", "8", "4"])
def test_a_synthetic_llama_imports_and_answers_exactly_as_its_decoded_weights(
    tmp_path: Path, tiny_gguf: tuple[Path, dict[str, np.ndarray]], q_bits: str
) -> None:
    path, weights = tiny_gguf
    assert mx.default_device().type == mx.DeviceType.cpu  # so the default for keep is float32
    folder = import_gguf(path, tmp_path / "models", "tiny", q_bits)
    model, tokenizer = load(str(folder))
    logits = model(mx.array([PROMPT]))[0]
    assert logits.dtype == (mx.float32 if q_bits == "keep" else mx.bfloat16)
    # keep: the Q4_0/Q4_1/Q8_0 copies multiply as exactly as their float32 decoding does.
    assert mx.array_equal(logits, _reference_logits(weights, q_bits)).item()
    assert tokenizer.encode("<|im_end|>") == [2]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny"]


@pytest.mark.parametrize(
    ("mode", "device", "expected"),
    [
        ("keep", "gpu", "float16"),
        ("keep", "cpu", "float32"),
        ("none", "gpu", "bfloat16"),
        ("none", "cpu", "bfloat16"),
        ("4", "gpu", "bfloat16"),
        ("8", "cpu", "bfloat16"),
    ],
)
def test_the_default_dtype_is_float16_scales_on_a_gpu_float32_on_the_cpu_else_bfloat16(
    mode: str, device: str, expected: str
) -> None:
    assert default_dtype(mode, device) == expected


def test_keep_in_float16_stores_the_exact_values_and_computes_in_float16(
    tmp_path: Path, tiny_gguf: tuple[Path, dict[str, np.ndarray]]
) -> None:
    path, weights = tiny_gguf
    folder = import_gguf(path, tmp_path / "models", "tiny", "keep", "float16")
    model, _ = load(str(folder))
    assert model(mx.array([PROMPT])).dtype == mx.float16
    parameters = dict(tree_flatten(model.parameters()))
    quantized = {key.rsplit(".", 1)[0] for key in parameters if key.endswith(".scales")}
    assert len(quantized) == 9  # embed_tokens and, per layer, q, k, v, down
    for key, expected in weights.items():
        module = key.rsplit(".", 1)[0]
        if module not in quantized:
            assert parameters[key].dtype == mx.float16
            continue
        scales, biases = parameters[f"{module}.scales"], parameters[f"{module}.biases"]
        assert scales.dtype == biases.dtype == mx.float16
        bits = parameters[key].shape[-1] // scales.shape[-1]  # 32-bit words per 32-weight group
        # float16 → float32 is exact: this is what the folder stores, not float16 arithmetic.
        decoded = mx.dequantize(
            parameters[key],
            scales.astype(mx.float32),
            biases.astype(mx.float32),
            group_size=32,
            bits=bits,
        )
        np.testing.assert_array_equal(np.array(decoded), expected, err_msg=key)


def test_keep_writes_the_mixed_bits_into_the_quantization_block(
    tmp_path: Path, tiny_gguf: tuple[Path, dict[str, np.ndarray]]
) -> None:
    folder = import_gguf(tiny_gguf[0], tmp_path / "models", "tiny")
    _, _, config = load(str(folder), return_config=True)
    quantization = config["quantization"]
    assert (quantization["group_size"], quantization["bits"]) == (32, 4)
    assert quantization["model.embed_tokens"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    assert quantization["model.layers.1.self_attn.v_proj"]["bits"] == 8
    assert "model.layers.1.mlp.gate_proj" not in quantization  # Q4_K: dequantized


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "macprovider.cli", "models", "import", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _refused(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("macprovider-supervise: error: ") and message in lines[-1], lines


U32, STR = GGUFValueType.UINT32, GGUFValueType.STRING
# A malformed file's metadata (None: the key left out) and the refusal's message.
BAD_METADATA: dict[str, tuple[dict[str, Any], str]] = {
    "no-tokens": ({"tokenizer.ggml.tokens": None}, "tokenizer.ggml.tokens (the vocabulary)"),
    "eos-out-of-range": (
        {"tokenizer.ggml.eos_token_id": (264, U32)},
        "tokenizer.ggml.eos_token_id is 264, not a token id (vocabulary of 264)",
    ),
    "head-count-kv-string": (
        {"llama.attention.head_count_kv": ("two", STR)},
        "llama.attention.head_count_kv is 'two', not a count",
    ),
    "head-count-kv-3-of-4": (
        {"llama.attention.head_count_kv": (3, U32)},
        "llama.attention.head_count_kv 3 does not divide attention.head_count 4",
    ),
}


def _write(tmp_path: Path, kind: str) -> tuple[Path, str]:
    path = tmp_path / f"{kind}.gguf"
    if kind == "not-gguf":
        path.write_bytes(b"PK\x03\x04 a zip, not a GGUF")
        return path, "not a GGUF file"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "not a GGUF file, or a truncated or damaged one (ValueError: cannot mmap"
    if kind.startswith("truncated-"):  # the first N bytes of a whole file
        whole = tmp_path / "whole.gguf"
        write_gguf(whole, TinyLlama())
        path.write_bytes(whole.read_bytes()[: int(kind.removeprefix("truncated-"))])
        return path, "not a GGUF file, or a truncated or damaged one"
    if kind in BAD_METADATA:
        metadata, message = BAD_METADATA[kind]
        write_gguf(path, TinyLlama(), metadata=metadata)
        return path, message
    if kind == "qwen2-arch":
        write_gguf(path, TinyLlama(), architecture="qwen2")
        return path, "general.architecture is 'qwen2'; only 'llama' imports"
    if kind == "unmapped-tensor":
        bias = np.zeros(256, np.float32)
        write_gguf(path, TinyLlama(), extra={"blk.0.attn_q.bias": (bias, Q.F32)})
        return path, "tensor blk.0.attn_q.bias has no mlx-lm Llama counterpart"
    if kind == "unknown-pre":
        write_gguf(path, TinyLlama(), pre="made-up")
        return path, "tokenizer.ggml.pre 'made-up' is an unknown pre-tokenizer"
    types = TinyLlama().types | {"ffn_up": Q.IQ4_NL}
    write_gguf(path, TinyLlama(types=types))
    return path, "tensor blk.0.ffn_up.weight has type IQ4_NL"


@pytest.mark.parametrize(
    "kind",
    [
        "not-gguf",
        "empty",
        "truncated-2000",
        "truncated-20000",
        "truncated-600000",
        *BAD_METADATA,
        "qwen2-arch",
        "unmapped-tensor",
        "unknown-pre",
        "iq4-nl",
    ],
)
def test_refused_input_exits_65_with_one_line_and_leaves_nothing(tmp_path: Path, kind: str) -> None:
    path, message = _write(tmp_path, kind)
    models = tmp_path / "models"
    _refused(_cli(path, "--models-dir", models), 65, f"{path}: {message}")
    assert list(models.iterdir()) == []


def test_the_real_gguf_cut_short_in_its_header_exits_65(tmp_path: Path, smollm2_gguf: Path) -> None:
    """gguf-py's reader raises IndexError on this one (a string's length read past the end)."""
    if not smollm2_gguf.is_file():
        pytest.skip("the real GGUF is fetched by ops/fixtures.py")
    path = tmp_path / "cut.gguf"
    with smollm2_gguf.open("rb") as whole:
        path.write_bytes(whole.read(2000))
    _refused(
        _cli(path, "--models-dir", tmp_path / "models"),
        65,
        f"{path}: not a GGUF file, or a truncated or damaged one (IndexError",
    )


@pytest.mark.parametrize(
    ("file_name", "args", "message"),
    [
        ("x.gguf", ["--name", ".hidden"], "Invalid value for --name: model name '.hidden' must be"),
        ("x.gguf", ["--name", "a/b"], "Invalid value for --name: model name 'a/b' must be"),
        (".gguf", [], "Invalid value for --name: no model name in the file name; pass --name"),
        ("x.gguf", ["--dtype", "bfloat16"], "Invalid value for --dtype: bfloat16 cannot hold"),
        ("x.gguf", ["--dtype", "float64"], "Invalid value for '--dtype': 'float64' is not one of"),
    ],
)
def test_a_usage_error_exits_64_before_reading_the_file(
    tmp_path: Path, file_name: str, args: list[str], message: str
) -> None:
    path = tmp_path / file_name
    path.write_bytes(b"not read: the options are checked first")
    result = _cli(path, "--models-dir", tmp_path / "models", *args)
    assert result.returncode == 64, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == f"Error: {message}" or message in result.stderr
    assert not (tmp_path / "models").exists()


def test_help_lists_the_dtype_defaults_and_the_exit_codes() -> None:
    result = CliRunner().invoke(import_command, ["--help"], terminal_width=100)
    text = " ".join(result.output.split())
    assert "float16 when MLX's default device is a GPU, float32 on the CPU" in text
    assert "none, 4, 8: bfloat16" in text and "keep refuses bfloat16" in text
    assert "The models folder. [default: $MACPROVIDER_MODELS_DIR" in text
    for code in ("0 imported", "64 a bad option", "65 the file is refused", "73 the", "130"):
        assert code in text, code


def test_an_existing_destination_exits_73_and_is_not_touched(tmp_path: Path) -> None:
    path, _ = _write(tmp_path, "not-gguf")
    existing = tmp_path / "models" / "mine"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("operator's")
    _refused(
        _cli(path, "--models-dir", tmp_path / "models", "--name", "mine"), 73, "already exists"
    )
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["mine"]
    assert (existing / "keep.txt").read_text() == "operator's"


@pytest.mark.parametrize("name", ["../up", ".hidden", "a/b", ""])
def test_an_unsafe_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelImportError, match="model name"):
        import_gguf(tmp_path / "x.gguf", tmp_path / "models", name)
    assert not (tmp_path / "models").exists()


def test_an_interrupt_mid_import_leaves_no_folder_and_no_temp(
    tmp_path: Path, tiny_gguf: tuple[Path, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any) -> None:
        assert list((tmp_path / "models").glob(".import-tiny-*")), "the temp folder exists"
        raise KeyboardInterrupt

    monkeypatch.setattr(models_import, "_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_gguf(tiny_gguf[0], tmp_path / "models", "tiny")
    assert list((tmp_path / "models").iterdir()) == []


def test_stale_temps_of_dead_imports_of_any_name_are_removed(
    tmp_path: Path, tiny_gguf: tuple[Path, dict[str, np.ndarray]]
) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    models = tmp_path / "models"
    for stale in (f".import-tiny-{dead}", f".import-other-{dead}", f".import-a-b-{dead}"):
        (models / stale).mkdir(parents=True)
        (models / stale / "model-00001.safetensors").write_bytes(b"half")
    live = models / f".import-busy-{os.getppid()}"  # an import still running: not touched
    live.mkdir()
    (models / ".cache").mkdir()  # not an import's
    import_gguf(tiny_gguf[0], models, "tiny")
    assert sorted(p.name for p in models.iterdir()) == [".cache", live.name, "tiny"]


def test_shards_are_written_as_they_fill_and_load_as_one_model(
    tmp_path: Path, tiny_gguf: tuple[Path, dict[str, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, weights = tiny_gguf
    monkeypatch.setattr(models_import, "_SHARD_BYTES", 200_000)
    written_while_converting: list[int] = []
    convert = gguf_tensors.convert_tensor

    def counting(*args: Any, **kwargs: Any) -> Any:
        written_while_converting.append(len(list(tmp_path.glob("models/.import-*/model-*"))))
        return convert(*args, **kwargs)

    monkeypatch.setattr(gguf_tensors, "convert_tensor", counting)
    folder = import_gguf(path, tmp_path / "models", "tiny")
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert (
        len(shards) >= 3
        and shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    )
    # The earlier shards were on disk before the last tensors were converted.
    assert written_while_converting[0] == 0 and written_while_converting[-1] >= len(shards) - 1
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    model, _ = load(str(folder))
    assert mx.array_equal(model(mx.array([PROMPT]))[0], _reference_logits(weights, "keep")).item()


@pytest.mark.parametrize(
    ("types", "q_bits", "dtype", "expected"),
    [
        (
            {},
            "keep",
            None,
            "9 tensors copied losslessly (Q4_0, Q4_1, Q8_0), 11 dequantized to float32",
        ),
        ({}, "none", None, "20 tensors dequantized to bfloat16"),
        ({}, "8", "float16", "20 tensors dequantized to float16, then re-quantized to 8 bits"),
        (
            {part: Q.Q4_K for part in TinyLlama().types},
            "keep",
            None,
            "20 tensors dequantized to bfloat16; this Q4_K file becomes a dense model of about"
            " 2.5 MB (--q-bits 4 re-quantizes it)",
        ),
    ],
)
def test_the_route_is_said_before_converting(
    tmp_path: Path, types: dict[str, Any], q_bits: str, dtype: str | None, expected: str
) -> None:
    path = tmp_path / "t.gguf"
    write_gguf(path, TinyLlama(types=TinyLlama().types | types))
    lines: list[str] = []
    import_gguf(path, tmp_path / "models", "t", q_bits, dtype, progress=lines.append)
    assert lines[1].startswith(expected), lines
    assert lines[2].startswith("tensors: ")


def test_the_cli_prints_the_folder_on_stdout(
    tmp_path: Path, tiny_gguf: tuple[Path, dict[str, np.ndarray]]
) -> None:
    env = os.environ | {"MACPROVIDER_MODELS_DIR": str(tmp_path / "env-models")}
    command = [sys.executable, "-m", "macprovider.cli", "models", "import", str(tiny_gguf[0])]
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'env-models' / 'tiny'}\n"
    assert "tensors: " in result.stderr and "PyTorch" not in result.stderr


@pytest.fixture(scope="module")
def smollm2(smollm2_model: Path, smollm2_q4_model: Path) -> dict[str, Path]:
    """The fixtures ops/fixtures.py imported from the real GGUF with this same code."""
    return {"keep": smollm2_q4_model, "none": smollm2_model}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["keep", "none"])
def test_smollm2_answers_the_neural_network_prompt(smollm2: dict[str, Path], mode: str) -> None:
    from mlx_lm import generate

    model, tokenizer = load(str(smollm2[mode]))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": NEURAL_NETWORK}], add_generation_prompt=True
    )
    answer = generate(model, tokenizer, prompt=prompt, max_tokens=40)
    assert answer == NEURAL_NETWORK_ANSWER
    assert tokenizer.encode("<|im_end|>") == [2]
    assert tokenizer.decode([2]) == "<|im_end|>"


@pytest.mark.slow
def test_smollm2_q4_copy_is_close_to_its_bfloat16_form(smollm2: dict[str, Path]) -> None:
    keep, tokenizer = load(str(smollm2["keep"]))
    dense, _ = load(str(smollm2["none"]))
    ids = mx.array([tokenizer.encode(NEURAL_NETWORK)])
    exact = keep(ids)[0].astype(mx.float32)
    rounded = dense(ids)[0].astype(mx.float32)
    # Measured: max 1.70, mean 0.22 on logits up to ~30 — the bfloat16 form's rounding through
    # 30 layers, not the copy's (which is exact); every position's top token agrees.
    difference = np.abs(np.array(exact - rounded))
    assert difference.max() < 2.5 and difference.mean() < 0.4
    assert mx.array_equal(mx.argmax(exact, -1), mx.argmax(rounded, -1)).item()


@pytest.mark.slow
def test_unpermuted_q_k_compute_what_llama_cpp_computes(
    smollm2: dict[str, Path],
    smollm2_gguf: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """llama.cpp keeps the permuted rows and rotates adjacent pairs ("traditional" RoPE); the
    import un-permutes them for mlx-lm's half-split RoPE. Both must give the same logits."""
    from macprovider.cli import gguf_tensors

    monkeypatch.setattr(gguf_tensors, "unpermute_rows", lambda rows, heads: rows)
    as_stored = import_gguf(smollm2_gguf, tmp_path, "stored", "none")
    llama_cpp, tokenizer = load(str(as_stored), model_config={"rope_traditional": True})
    imported, _ = load(str(smollm2["none"]))
    # In float32 so that the two RoPE kernels' bfloat16 rounding does not hide a real mismatch
    # (a wrong permutation moves logits by whole units; measured here: 5e-5).
    llama_cpp.set_dtype(mx.float32)
    imported.set_dtype(mx.float32)
    ids = mx.array([tokenizer.encode(NEURAL_NETWORK)])
    assert np.abs(np.array(llama_cpp(ids) - imported(ids))).max() < 1e-3


@pytest.mark.slow
def test_sigint_during_an_import_leaves_no_folder_and_no_temp(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    models = tmp_path / "models"
    command = [sys.executable, "-m", "macprovider.cli", "models", "import", str(smollm2_gguf)]
    process = subprocess.Popen(
        [*command, "--models-dir", str(models), "--name", "smol"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:  # the first progress line comes once the temp folder exists
        if line.startswith("reading "):
            break
    assert list(models.glob(".import-smol-*"))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert list(models.iterdir()) == []
