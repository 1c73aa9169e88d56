"""`--memory-limit-gb`: the estimate (pure, table-driven) and the guard on real processes."""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import mlx.core as mx
import pytest

from macprovider.cli.exits import exit_code_for
from macprovider.server.config import SERVE_OPTIONS, ServeConfig, resolve_serve_config
from macprovider.server.errors import MemoryBudgetExceeded, ModelLoadError
from macprovider.server.memory_budget import (
    MemoryNeed,
    ModelShape,
    check_memory_budget,
    estimate_need,
    format_gb,
    kv_bytes_per_element,
    limit_bytes,
    model_shape,
    out_of_memory_message,
    read_weights,
)
from tests.conftest import (
    ServerProcess,
    StartServer,
    clean_env,
    free_port,
    model_variant,
    supervise_argv,
    wait_until,
)

# --- the estimate -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype_bytes", "kv_bits", "per_element"),
    [
        (4, None, Fraction(4)),
        (2, None, Fraction(2)),
        # bits/8 for the value, plus a scale and a bias in the model dtype per 64 elements
        (4, 8, Fraction(9, 8)),  # 1 + 8/64
        (4, 4, Fraction(5, 8)),  # 0.5 + 8/64
        (2, 8, Fraction(17, 16)),  # 1 + 4/64
        (2, 4, Fraction(9, 16)),  # 0.5 + 4/64
    ],
)
def test_kv_bytes_per_element(dtype_bytes: int, kv_bits: int | None, per_element: Fraction) -> None:
    assert kv_bytes_per_element(dtype_bytes, kv_bits) == per_element


# The fixture models (float32, head_dim 64) at --max-context 2000: what `serve` estimates.
# A limit of 0.08 GB lets `medium` serve and refuses `large` at every row below.
#   model   layers kv_heads  weights bytes
#   tiny      2      1          2_624_000
#   small     4      2         14_689_280
#   medium    6      2         40_914_432
#   large     8      2         94_406_656
FIXTURE_NEEDS = [
    # (model, max_batch, kv_bits, KV cache bytes, total bytes, total as shown)
    ("tiny", 1, None, 2_048_000, 4_672_000, "0.00468"),
    ("tiny", 2, None, 4_096_000, 6_720_000, "0.00672"),
    ("tiny", 1, 8, 576_000, 3_200_000, "0.00320"),
    ("tiny", 1, 4, 320_000, 2_944_000, "0.00295"),
    ("small", 1, None, 8_192_000, 22_881_280, "0.0229"),
    ("small", 2, None, 16_384_000, 31_073_280, "0.0311"),
    ("small", 1, 8, 2_304_000, 16_993_280, "0.0170"),
    ("small", 1, 4, 1_280_000, 15_969_280, "0.0160"),
    ("medium", 1, None, 12_288_000, 53_202_432, "0.0533"),
    ("medium", 2, None, 24_576_000, 65_490_432, "0.0655"),
    ("medium", 1, 8, 3_456_000, 44_370_432, "0.0444"),
    ("medium", 1, 4, 1_920_000, 42_834_432, "0.0429"),
    ("large", 1, None, 16_384_000, 110_790_656, "0.111"),
    ("large", 2, None, 32_768_000, 127_174_656, "0.128"),
    ("large", 1, 8, 4_608_000, 99_014_656, "0.0991"),
    ("large", 1, 4, 2_560_000, 96_966_656, "0.0970"),
]


def fixture_need(model: Path, *, max_batch: int, kv_bits: int | None) -> MemoryNeed:
    weights = read_weights(model)
    shape = model_shape(json.loads((model / "config.json").read_bytes()), weights.dtype_bytes)
    return estimate_need(
        weights.nbytes, shape, max_context=2000, max_batch=max_batch, kv_bits=kv_bits
    )


@pytest.mark.parametrize(("name", "max_batch", "kv_bits", "kv", "total", "shown"), FIXTURE_NEEDS)
def test_fixture_estimates(
    fixtures_dir: Path,
    name: str,
    max_batch: int,
    kv_bits: int | None,
    kv: int,
    total: int,
    shown: str,
) -> None:
    need = fixture_need(fixtures_dir / name, max_batch=max_batch, kv_bits=kv_bits)
    assert (need.kv_cache, need.total, format_gb(need.total)) == (kv, total, shown)


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "large"])
def test_kv_part_scales_with_batch_and_shrinks_with_kv_bits(fixtures_dir: Path, name: str) -> None:
    def kv(max_batch: int, kv_bits: int | None) -> int:
        return fixture_need(fixtures_dir / name, max_batch=max_batch, kv_bits=kv_bits).kv_cache

    assert kv(2, None) == 2 * kv(1, None)
    assert kv(4, 8) == 4 * kv(1, 8)
    assert kv(1, 8) / kv(1, None) == pytest.approx(1.125 / 4)
    assert kv(1, 4) / kv(1, None) == pytest.approx(0.625 / 4)


def test_estimate_multiplies_every_dimension() -> None:
    shape = ModelShape(layers=3, kv_heads=5, head_dim=128, dtype_bytes=2)
    need = estimate_need(1000, shape, max_context=7, max_batch=11, kv_bits=None)
    assert need == MemoryNeed(weights=1000, kv_cache=11 * 7 * 3 * 2 * 5 * 128 * 2)
    assert need.total == 1000 + need.kv_cache


LLAMA = {"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512}


@pytest.mark.parametrize(
    ("config", "weights_dtype_bytes", "shape"),
    [
        # head_dim from hidden_size / heads; no num_key_value_heads: one per attention head
        ({**LLAMA, "torch_dtype": "float16"}, 4, ModelShape(4, 8, 64, 2)),
        (
            {**LLAMA, "torch_dtype": "bfloat16", "num_key_value_heads": 2},
            None,
            ModelShape(4, 2, 64, 2),
        ),
        ({**LLAMA, "torch_dtype": "float32", "head_dim": 128}, None, ModelShape(4, 8, 128, 4)),
        ({**LLAMA, "head_dim": None, "torch_dtype": "float32"}, None, ModelShape(4, 8, 64, 4)),
        # transformers ≥ 4.56 writes `dtype`; an unknown name falls back to the weights' dtype
        ({**LLAMA, "dtype": "bfloat16"}, 4, ModelShape(4, 8, 64, 2)),
        ({**LLAMA, "torch_dtype": "auto"}, 4, ModelShape(4, 8, 64, 4)),
        ({**LLAMA}, 2, ModelShape(4, 8, 64, 2)),
        # multimodal checkpoints nest the language model
        ({"text_config": {**LLAMA, "torch_dtype": "float16"}}, None, ModelShape(4, 8, 64, 2)),
        ({"torch_dtype": "float32", "text_config": LLAMA}, None, ModelShape(4, 8, 64, 4)),
    ],
)
def test_model_shape(
    config: dict[str, Any], weights_dtype_bytes: int | None, shape: ModelShape
) -> None:
    assert model_shape(config, weights_dtype_bytes) == shape


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"num_attention_heads": 8, "hidden_size": 512}, "num_hidden_layers"),
        ({**LLAMA, "num_hidden_layers": 0}, "num_hidden_layers (found 0)"),
        ({**LLAMA, "num_attention_heads": "8"}, "num_attention_heads (found '8')"),
        ({**LLAMA, "num_key_value_heads": True}, "num_key_value_heads (found True)"),
        ({"num_hidden_layers": 4, "num_attention_heads": 8}, "hidden_size"),
        ({"text_config": [1]}, "text_config is not an object"),
        (LLAMA, "name a float16/bfloat16/float32"),
    ],
)
def test_model_shape_names_what_is_missing(config: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=r"config\.json") as caught:
        model_shape(config, None)
    assert fragment in str(caught.value)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> None:
    """A safetensors file of zeros: name → (dtype, shape, bytes)."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def test_read_weights_sums_tensor_bytes_over_shards(tmp_path: Path) -> None:
    # A 4-bit checkpoint: packed uint32 weights with bfloat16 scales, and a float32 norm.
    write_safetensors(
        tmp_path / "model-00001-of-00002.safetensors",
        {"w": ("U32", [64, 8], 2048), "scales": ("BF16", [64, 1], 128)},
    )
    write_safetensors(
        tmp_path / "model-00002-of-00002.safetensors",
        {"e": ("BF16", [16, 64], 2048), "norm": ("F32", [64], 256)},
    )
    write_safetensors(tmp_path / "adapters.safetensors", {"a": ("F32", [1024], 4096)})
    weights = read_weights(tmp_path)
    assert weights.nbytes == 2048 + 128 + 2048 + 256  # mlx-lm loads only model*.safetensors
    assert weights.dtype_bytes == 2  # bfloat16 holds most float bytes


def test_read_weights_without_float_tensors_has_no_dtype(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", {"w": ("U8", [10], 10)})
    assert read_weights(tmp_path).dtype_bytes is None


@pytest.mark.parametrize(
    ("nbytes", "shown"),
    [
        (100_000_000, "0.100"),
        (100_000_001, "0.101"),  # rounded up: never shown at a limit it exceeds
        (16_000_000_000, "16.000"),
        (123_456_789_012, "123.457"),
        (94_406_656, "0.0945"),
        (2_048_000, "0.00205"),
        (1_000, "0.00000100"),
        (1, "0.000000001"),
    ],
)
def test_format_gb(nbytes: int, shown: str) -> None:
    assert format_gb(nbytes) == shown


@pytest.mark.parametrize(
    ("gb", "nbytes"),
    [
        (0.1, 100_000_000),
        (0.05, 50_000_000),
        (0.00013, 130_000),  # 129999.99999999999 as a float product
        (16.0, 16 * 10**9),
        (2.5, 25 * 10**8),
    ],
)
def test_limit_is_in_decimal_gb(gb: float, nbytes: int) -> None:
    assert limit_bytes(gb) == nbytes


# --- the guard, in-process ----------------------------------------------------------------------


def serve_config(tmp_path: Path, **cli: str) -> ServeConfig:
    options = {option.name: None for option in SERVE_OPTIONS}
    env = {"XDG_CONFIG_HOME": str(tmp_path / "no-config")}
    return resolve_serve_config({**options, **cli}, env, ram_bytes=16 << 30, require_model=False)


@pytest.fixture
def mlx_memory_limit() -> Iterator[None]:
    """The guard sets MLX's process-wide limit; other in-process MLX tests must not inherit it."""
    previous = mx.get_memory_limit()
    yield
    mx.set_memory_limit(previous)


def test_out_of_memory_message(tmp_path: Path) -> None:
    config = serve_config(
        tmp_path, memory_limit_gb="0.1", max_context="2000", max_batch="2", kv_bits="8"
    )
    need = MemoryNeed(weights=94_406_656, kv_cache=9_216_000)
    assert out_of_memory_message("large", need, config) == (
        "out of memory: large needs 0.104 GB (weights 0.0945 GB + KV cache 0.00922 GB at max "
        "context 2000 × batch 2, 8-bit) but the limit is 0.1 GB from --memory-limit-gb"
    )


@pytest.mark.usefixtures("mlx_memory_limit")
def test_guard_sets_mlx_limit_when_the_model_fits(tmp_path: Path, fixtures_dir: Path) -> None:
    config = serve_config(tmp_path, memory_limit_gb="0.08", max_context="2000")
    check_memory_budget(config, fixtures_dir / "medium")
    assert mx.get_memory_limit() == 80_000_000
    with pytest.raises(MemoryBudgetExceeded, match=r"^out of memory: large needs 0\.111 GB"):
        check_memory_budget(config, fixtures_dir / "large")


def test_guard_is_off_without_a_limit(tmp_path: Path) -> None:
    # Not even read: a folder without weights passes.
    check_memory_budget(serve_config(tmp_path), tmp_path)


def test_guard_cannot_estimate_unreadable_weights(tmp_path: Path, fixtures_dir: Path) -> None:
    broken = model_variant(
        fixtures_dir / "tiny", tmp_path / "broken", {"model.safetensors": b"junk"}
    )
    config = serve_config(tmp_path, memory_limit_gb="1")
    with pytest.raises(ModelLoadError, match=r"^cannot estimate the memory broken needs: "):
        check_memory_budget(config, broken)


def test_a_garbage_header_cannot_be_estimated_and_exits_65(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    # The reference reader (safe_open) refuses it with a SafetensorError.
    garbage = struct.pack("<Q", 8) + b"{garbage"
    broken = model_variant(
        fixtures_dir / "tiny", tmp_path / "broken", {"model.safetensors": garbage}
    )
    config = serve_config(tmp_path, memory_limit_gb="1")
    with pytest.raises(ModelLoadError, match=r"deserializing header") as failure:
        check_memory_budget(config, broken)
    assert exit_code_for(failure.value) == 65


def test_memory_budget_exceeded_exits_65() -> None:
    assert exit_code_for(MemoryBudgetExceeded("out of memory: x")) == 65


# --- the guard on real `serve` processes --------------------------------------------------------


def refused(model: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    """The one stderr line of a `serve` that must exit 65 before serving."""
    argv = supervise_argv("serve", "--no-join", "--model", str(model), "--port", str(free_port()))
    done = subprocess.run(
        [*argv, "--max-context", "2000", *flags],
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 65, done.stderr
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    return message.removeprefix("macprovider-supervise: error: ")


def test_over_the_limit_exits_65_before_answering(tmp_path: Path, small_model: Path) -> None:
    server = ServerProcess(
        small_model, tmp_path / "serve.log", "--max-context", "2000", "--memory-limit-gb", "0.02"
    )
    answered: list[int] = []

    def exited() -> bool:
        with contextlib.suppress(httpx.TransportError):
            answered.append(httpx.get(f"{server.url}/v1/models", timeout=2).status_code)
        return server.proc.poll() is not None

    wait_until(exited, 60, "the over-budget provider to exit")
    assert server.stop() == 65
    assert 200 not in answered
    expected = (
        f"out of memory: {small_model} needs 0.0229 GB (weights 0.0147 GB + KV cache 0.00820 GB "
        "at max context 2000 × batch 1) but the limit is 0.02 GB from --memory-limit-gb"
    )
    assert server.log().strip() == f"macprovider-supervise: error: {expected}"


@pytest.mark.parametrize("source", ["env", "yaml"])
def test_out_of_memory_names_the_limit_source(
    tmp_path: Path, small_model: Path, source: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("memory_limit_gb: 0.02\n" if source == "yaml" else "")
    env = clean_env(MACPROVIDER_CONFIG=str(config))
    if source == "env":
        env["MACPROVIDER_MEMORY_LIMIT_GB"] = "0.02"
    message = refused(small_model, env=env)
    named = {"env": "env MACPROVIDER_MEMORY_LIMIT_GB", "yaml": f"{config} (memory_limit_gb)"}
    assert message.endswith(f"but the limit is 0.02 GB from {named[source]}")


@pytest.mark.parametrize(
    ("flags", "kv_part"),
    [
        ((), "KV cache 0.00205 GB at max context 2000 × batch 1)"),
        (("--max-batch", "2"), "KV cache 0.00410 GB at max context 2000 × batch 2)"),
        (("--kv-bits", "8"), "KV cache 0.000576 GB at max context 2000 × batch 1, 8-bit)"),
        (("--kv-bits", "4"), "KV cache 0.000320 GB at max context 2000 × batch 1, 4-bit)"),
    ],
)
def test_served_kv_part_follows_batch_and_kv_bits(
    tiny_model: Path, flags: tuple[str, ...], kv_part: str
) -> None:
    message = refused(tiny_model, "--memory-limit-gb", "0.000001", *flags)
    assert kv_part in message


def test_within_the_limit_serves(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model, "--max-context", "2000", "--memory-limit-gb", "0.05")
    body = {"prompt": "The", "max_tokens": 3, "temperature": 0}
    assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).status_code == 200
    assert (
        "needs 0.00468 GB (4672000 bytes: weights 2624000 + KV cache 2048000), within the limit "
        "of 0.05 GB from --memory-limit-gb"
    ) in server.log()


def test_large_is_refused_where_medium_serves(
    start_server: StartServer, fixtures_dir: Path
) -> None:
    limit = ("--memory-limit-gb", "0.08")
    start_server(fixtures_dir / "medium", "--max-context", "2000", *limit).stop()
    message = refused(fixtures_dir / "large", *limit)
    assert message.startswith(f"out of memory: {fixtures_dir / 'large'} needs 0.111 GB ")
