"""`models import FILE.gguf`: a GGUF file (llama.cpp, Ollama, LM Studio) as an mlx-lm folder.

The folder appears whole or not at all: everything is written into `.import-NAME-PID` inside
the models folder, fsynced (its files, then the folder itself), then renamed to NAME. Any
failure or interrupt removes the temp folder; one left by a second Ctrl-C or a `kill -9` is
removed at the start of the next import (of any name) once its process is gone. Ctrl-C is
honoured between tensors (the whole import is a deferred step for the stop signals).

The tensors are `gguf_tensors`' job, the JSON files `gguf_metadata`'s, the dtype and the route
line `gguf_route`'s; this module runs the steps in order and owns the folder. A file
gguf-py's reader chokes on (truncated, empty, malformed) is a ModelImportError naming the
file, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import click

from macprovider.cli.errors import ModelFolderError, ModelImportError
from macprovider.cli.gguf_route import DTYPES, Q_BITS, default_dtype, dtype_problem, route_line
from macprovider.cli.models_options import models_dir_option

__all__ = ["default_name", "import_command", "import_gguf", "name_problem"]

REQUANTIZE_GROUP_SIZE: Final = 64  # mlx-lm's own default for affine 4/8 bits
# Each shard is written as soon as it fills, so a keep/none import holds about one shard (plus
# the tensor being converted). 4/8 cannot: mlx-lm's quantizer takes the whole dense model.
_SHARD_BYTES: Final = 2 * 1024**3
_SAFE_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]*", re.IGNORECASE)
_TEMP: Final = re.compile(r"\.import-.+-(?P<pid>\d+)")
_QK: Final = re.compile(r"blk\.\d+\.attn_(?P<which>[qk])\.weight")
# What gguf-py's reader and field decoding, and transformers' tokenizer converter, raise on a
# truncated or malformed file (a truncated header: IndexError; an empty file: ValueError).
_READ_ERRORS: Final = (IndexError, KeyError, TypeError, ValueError, struct.error, OSError)


def default_name(gguf: Path) -> str:
    """The model's name from its file name: lower-case, without `.gguf` and spaces, any other
    unsafe character as `-`. `SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct.q4_1`."""
    stem = gguf.name[: -len(".gguf")] if gguf.name.lower().endswith(".gguf") else gguf.name
    return re.sub(r"[^a-z0-9._-]", "-", stem.lower().replace(" ", "")).lstrip(".-")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a model folder's name, or None when it can."""
    if _SAFE_NAME.fullmatch(name):
        return None
    return (
        f"model name {name!r} must be letters, digits, '.', '_' or '-',"
        " not starting with '.' or '-'"
    )


def import_gguf(
    gguf: Path,
    models_root: Path,
    name: str,
    q_bits: str = "keep",
    dtype: str | None = None,
    *,
    progress: Callable[[str], None] = lambda line: None,
) -> Path:
    """Converts `gguf` into `models_root/name` and returns that folder.

    `q_bits`: `keep` (Q4_0/Q4_1/Q8_0 copied losslessly, the rest dequantized), `none` (all
    dequantized), `4` or `8` (dequantized, then re-quantized by mlx-lm, group size 64).
    `dtype`: of dense weights, scales and biases; None is `default_dtype`'s choice. Raises
    ModelImportError (the input or an option is refused) or ModelFolderError (the destination
    exists or cannot be written); either way nothing is left behind.
    """
    if q_bits not in Q_BITS:
        raise ModelImportError(f"{gguf}: --q-bits {q_bits!r} is not one of {', '.join(Q_BITS)}")
    if dtype is not None and dtype not in DTYPES:
        raise ModelImportError(f"{gguf}: --dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    for problem in (name_problem(name), dtype_problem(q_bits, dtype)):
        if problem is not None:
            raise ModelImportError(f"{gguf}: {problem}")
    target = models_root / name
    if target.exists():
        raise ModelFolderError(f"{target}: already exists; remove it or pick another --name")
    try:
        models_root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ModelFolderError(f"{models_root}: cannot create the models folder: {error}") from None
    _remove_stale_temps(models_root)
    from macprovider.actors.stop_signals import STOP
    from macprovider.cli.atomic_file import fsync_folder

    with STOP.deferred(), _temp_folder(models_root, name) as temp:
        _convert(gguf, temp, q_bits, dtype, progress, STOP.raise_if_requested)
        fsync_folder(temp)  # the files' names are durable before the folder takes its own
        STOP.raise_if_requested()  # the commit point: past it the folder is complete
        try:
            os.rename(temp, target)
        except OSError as error:
            raise ModelFolderError(f"{target}: cannot create: {error.strerror}") from None
    fsync_folder(models_root)
    return target


def _convert(
    gguf: Path,
    folder: Path,
    q_bits: str,
    dtype: str | None,
    progress: Callable[[str], None],
    check_stop: Callable[[], None],
) -> None:
    """Writes the model's files into `folder` (which is then complete)."""
    import mlx.core as mx
    from gguf import GGUFReader

    from macprovider.cli.gguf_metadata import ARCHITECTURE, llama_config, model_files, read_metadata
    from macprovider.cli.gguf_tensors import LOSSLESS_BITS, convert_tensor, mlx_name

    source = str(gguf)
    with _refused(source, "not a GGUF file, or a truncated or damaged one"):
        reader = GGUFReader(gguf)
        meta = read_metadata(reader, with_tokenizer=False)
    architecture = meta.get("general.architecture")
    if architecture != ARCHITECTURE:
        raise ModelImportError(
            f"{source}: general.architecture is {architecture!r}; only {ARCHITECTURE!r} imports"
        )
    by_name = {tensor.name: tensor for tensor in reader.tensors}
    for tensor in reader.tensors:
        if mlx_name(tensor.name) is None:
            # rope_freqs (Llama 3.1+'s llama3 RoPE scaling) lands here: its factors are not in
            # the metadata, and a guessed rope_scaling would answer subtly worse, so it is refused.
            raise ModelImportError(
                f"{source}: tensor {tensor.name} has no mlx-lm Llama counterpart"
            )
    if "token_embd.weight" not in by_name:
        raise ModelImportError(f"{source}: no token_embd.weight tensor")
    vocab_size = int(by_name["token_embd.weight"].shape[-1])
    with _refused(source, "malformed metadata"):
        config = llama_config(meta, vocab_size, "output.weight" not in by_name, source)
    progress(
        f"reading {gguf.name}: {ARCHITECTURE}, {config['num_hidden_layers']} layers,"
        f" {len(by_name)} tensors, vocabulary {vocab_size}"
    )
    with _refused(source, "malformed tokenizer metadata"):
        files = model_files(read_metadata(reader, with_tokenizer=True), source)

    keep = q_bits == "keep" and any(t.tensor_type in LOSSLESS_BITS for t in reader.tensors)
    if dtype is None:
        dtype = default_dtype(q_bits if keep or q_bits != "keep" else "none", _device_type())
    progress(route_line(reader.tensors, keep=keep, q_bits=q_bits, dtype=dtype))
    heads = {"q": config["num_attention_heads"], "k": config["num_key_value_heads"]}
    shards = _Shards(folder, check_stop)
    dense: dict[str, Any] = {}  # 4/8 only: the whole model, which mlx-lm's quantizer takes
    add = dense.__setitem__ if q_bits in ("4", "8") else shards.add
    per_module: dict[str, int] = {}
    for count, tensor in enumerate(reader.tensors, start=1):
        check_stop()
        qk = _QK.fullmatch(tensor.name)
        with _refused(source, f"tensor {tensor.name} cannot be converted"):
            converted = convert_tensor(
                tensor,
                keep_quantized=keep,
                dtype=dtype,
                heads=heads[qk["which"]] if qk else None,
                source=source,
            )
        # Evaluated now, so the float32 decoding a narrower array is made from is let go at
        # once rather than when its shard (or, for 4/8, the whole model) is done.
        mx.eval(*converted.arrays.values())
        module = mlx_name(tensor.name)
        for part, array in converted.arrays.items():
            add(f"{module}.{part}", array)
        if converted.bits is not None and module is not None:
            per_module[module] = converted.bits
        if count % 50 == 0 or count == len(reader.tensors):
            progress(f"tensors: {count}/{len(reader.tensors)}")
    if per_module:
        config["quantization"] = _quantization_block(per_module)
    elif q_bits in ("4", "8"):
        weights, config = _requantize(dense, config, int(q_bits), progress)
        dense.clear()
        for key, array in weights.items():
            shards.add(key, array)
    shards.close()
    _write_json(folder / "config.json", config)
    _write_text(folder / "tokenizer.json", files.tokenizer_json)
    _write_json(folder / "tokenizer_config.json", files.tokenizer_config)
    _write_json(folder / "generation_config.json", files.generation_config)


@contextlib.contextmanager
def _refused(source: str, what: str) -> Iterator[None]:
    """Turns what a malformed file makes the reader or converters raise into one line."""
    try:
        yield
    except _READ_ERRORS as error:
        detail = " ".join(f"{type(error).__name__}: {error}".split())
        raise ModelImportError(f"{source}: {what} ({detail})") from None


def _device_type() -> str:
    import mlx.core as mx

    return str(mx.default_device().type.name)


def _quantization_block(per_module: dict[str, int]) -> dict[str, Any]:
    """config.json's `quantization`: the commonest bits as the default, and an entry for each
    module whose bits differ (mlx-lm's loader takes a module's own entry first)."""
    from macprovider.cli.gguf_tensors import GROUP_SIZE

    bits = max(set(per_module.values()), key=list(per_module.values()).count)
    block: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
    for module, module_bits in sorted(per_module.items()):
        if module_bits != bits:
            block[module] = {"group_size": GROUP_SIZE, "bits": module_bits, "mode": "affine"}
    return block


def _requantize(
    weights: dict[str, Any], config: dict[str, Any], bits: int, progress: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dense model quantized by mlx-lm itself (its quantizer, its choice of layers)."""
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama
    from mlx_lm.utils import quantize_model

    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.load_weights(list(weights.items()))
    progress(f"quantizing to {bits} bits, group size {REQUANTIZE_GROUP_SIZE} (mlx-lm)")
    # quantize_model prints its bits-per-weight line on stdout, which carries only the path.
    with contextlib.redirect_stdout(sys.stderr):
        model, config = quantize_model(model, config, REQUANTIZE_GROUP_SIZE, bits)
    return dict(tree_flatten(model.parameters())), config


class _Shards:
    """model-NNNNN-of-MMMMM.safetensors (mlx-lm loads every `model*.safetensors`), each written
    once it holds ~_SHARD_BYTES, and the index naming each weight's shard. How many shards
    there are is known only at the end, so each is written as model-NNNNN and renamed then."""

    def __init__(self, folder: Path, check_stop: Callable[[], None]) -> None:
        self._folder = folder
        self._check_stop = check_stop
        self._pending: dict[str, Any] = {}
        self._pending_bytes = 0
        self._written: list[list[str]] = []  # each written shard's keys
        self._total = 0

    def add(self, key: str, array: Any) -> None:
        if self._pending and self._pending_bytes + array.nbytes > _SHARD_BYTES:
            self._write()
        self._pending[key] = array
        self._pending_bytes += array.nbytes
        self._total += array.nbytes

    def close(self) -> None:
        """Writes the last shard, gives every shard its final name, then writes the index."""
        if self._pending or not self._written:
            self._write()
        count = len(self._written)
        weight_map: dict[str, str] = {}
        for number, keys in enumerate(self._written, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            with _writing(self._folder / final):
                os.rename(self._folder / f"model-{number:05d}.safetensors", self._folder / final)
            weight_map.update(dict.fromkeys(keys, final))
        _write_json(
            self._folder / "model.safetensors.index.json",
            {
                "metadata": {"total_size": self._total},
                "weight_map": dict(sorted(weight_map.items())),
            },
        )

    def _write(self) -> None:
        import mlx.core as mx

        self._check_stop()
        path = self._folder / f"model-{len(self._written) + 1:05d}.safetensors"
        with _writing(path):
            mx.save_safetensors(str(path), self._pending, metadata={"format": "mlx"})
            _fsync(path)
        self._written.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    # A full disk or a vanished folder: the destination's problem, not the input's. MLX reports
    # its own write failures as RuntimeError.
    try:
        yield
    except (OSError, RuntimeError) as error:
        raise ModelFolderError(f"{path}: cannot write: {error}") from None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    _write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _write_text(path: Path, text: str) -> None:
    with _writing(path):
        path.write_text(text, encoding="utf-8")
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_folder(models_root: Path, name: str) -> Iterator[Path]:
    """`.import-NAME-PID` in the models folder, removed again unless renamed away."""
    temp = models_root / f".import-{name}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)  # our own pid's leftover: a previous life's
    try:
        temp.mkdir()
    except OSError as error:
        raise ModelFolderError(f"{models_root}: not writable: {error.strerror}") from None
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _remove_stale_temps(models_root: Path) -> None:
    """Removes every import's temp folder whose process is gone (a second Ctrl-C, a kill -9),
    whatever model it was for: nothing else would ever remove it."""
    from macprovider.cli.atomic_file import pid_alive

    with contextlib.suppress(OSError):
        for entry in models_root.iterdir():
            match = _TEMP.fullmatch(entry.name)
            if match and not pid_alive(int(match["pid"])):
                shutil.rmtree(entry, ignore_errors=True)


@click.command()
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="The model's folder name (default: from the file name).")
@click.option(
    "--q-bits",
    type=click.Choice(Q_BITS),
    default="keep",
    show_default=True,
    help="keep: Q4_0/Q4_1/Q8_0 copied losslessly, other types dequantized (a file with none of"
    " those imports as none); none: all dequantized; 4/8: dequantized, then re-quantized by"
    " mlx-lm (group size 64). keep/none hold about one 2 GiB shard in memory at a time; 4/8"
    " hold the whole dense model, which mlx-lm's quantizer needs.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default=None,
    help="The dtype of everything but the packed integers (dense weights, scales, biases), and"
    " so of the activations and KV cache. keep refuses bfloat16, which cannot hold every"
    " float16 scale. [default: keep: float16 when MLX's default device is a GPU, float32 on"
    " the CPU (whose quantized matmuls with half-precision scales run ~8x slower); none, 4,"
    " 8: bfloat16]",
)
@models_dir_option
def import_command(
    gguf_file: Path, name: str | None, q_bits: str, dtype: str | None, models_dir: Path | None
) -> int:
    """Convert a Llama-architecture GGUF file into an mlx-lm model folder.

    Prints progress on stderr and the new folder's path on stdout.

    \b
    Exit codes:
      0    imported
      64   a bad option: --name, or --dtype bfloat16 with --q-bits keep
      65   the file is refused: not a readable GGUF, or an architecture,
           tensor type or metadata it cannot convert (nothing is written)
      73   the destination exists or cannot be written
      130  interrupted (nothing is left behind)
    """
    from macprovider.server.places import models_dir as default_models_dir

    chosen = name if name is not None else default_name(gguf_file)
    if not chosen:
        raise click.BadParameter("no model name in the file name; pass --name", param_hint="--name")
    for problem, flag in (
        (name_problem(chosen), "--name"),
        (dtype_problem(q_bits, dtype), "--dtype"),
    ):
        if problem is not None:
            raise click.BadParameter(problem, param_hint=flag)
    # stderr carries our progress, not transformers' advice that PyTorch is absent.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    root = models_dir if models_dir is not None else default_models_dir(os.environ)[0]
    target = import_gguf(
        gguf_file, root, chosen, q_bits, dtype, progress=lambda line: click.echo(line, err=True)
    )
    size = sum(path.stat().st_size for path in target.iterdir())
    click.echo(f"wrote {size / 1e6:.1f} MB", err=True)
    click.echo(str(target))
    return 0
