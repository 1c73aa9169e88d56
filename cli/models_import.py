"""`models import FILE.gguf`: a GGUF file (llama.cpp, Ollama, LM Studio) as an mlx-lm folder.

The folder appears whole or not at all: everything is written into `.import-NAME-PID` inside
the models folder, fsynced, then renamed to NAME. Any failure or interrupt removes the temp
folder; one left by a `kill -9` is removed by the next import of the same NAME. Ctrl-C is
honoured between tensors (the whole import is a deferred step for the stop signals).

The tensors are `gguf_tensors`' job, the JSON files `gguf_metadata`'s; this module decides the
dtypes, runs the steps in order and owns the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import click

from macprovider.cli.errors import ModelFolderError, ModelImportError

__all__ = ["Q_BITS", "default_name", "import_command", "import_gguf"]

Q_BITS: Final = ("keep", "none", "4", "8")
REQUANTIZE_GROUP_SIZE: Final = 64  # mlx-lm's own default for affine 4/8 bits
_SHARD_BYTES: Final = 2 * 1024**3  # bounds the memory a `keep`/`none` import holds at once
_SAFE_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]*", re.IGNORECASE)
_QK: Final = re.compile(r"blk\.\d+\.attn_(?P<which>[qk])\.weight")


def default_name(gguf: Path) -> str:
    """The model's name from its file name: lower-case, without `.gguf` and spaces, any other
    unsafe character as `-`. `SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct.q4_1`."""
    stem = gguf.name[: -len(".gguf")] if gguf.name.lower().endswith(".gguf") else gguf.name
    return re.sub(r"[^a-z0-9._-]", "-", stem.lower().replace(" ", "")).lstrip(".-")


def import_gguf(
    gguf: Path,
    models_root: Path,
    name: str,
    q_bits: str = "keep",
    *,
    progress: Callable[[str], None] = lambda line: None,
) -> Path:
    """Converts `gguf` into `models_root/name` and returns that folder.

    `q_bits`: `keep` (Q4_0/Q4_1/Q8_0 copied losslessly, the rest dequantized), `none` (all
    bfloat16), `4` or `8` (bfloat16 re-quantized by mlx-lm, group size 64). Raises
    ModelImportError (the input is refused) or ModelFolderError (the destination exists or
    cannot be written); either way nothing is left behind.
    """
    if q_bits not in Q_BITS:
        raise ModelImportError(f"{gguf}: --q-bits {q_bits!r} is not one of {', '.join(Q_BITS)}")
    if not _SAFE_NAME.fullmatch(name):
        raise ModelImportError(
            f"{gguf}: model name {name!r} must be letters, digits, '.', '_' or '-',"
            " not starting with '.' or '-'"
        )
    target = models_root / name
    if target.exists():
        raise ModelFolderError(f"{target}: already exists; remove it or pick another --name")
    try:
        models_root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ModelFolderError(f"{models_root}: cannot create the models folder: {error}") from None
    _remove_stale_temps(models_root, name)
    from macprovider.actors.stop_signals import STOP

    with STOP.deferred(), _temp_folder(models_root, name) as temp:
        _convert(gguf, temp, q_bits, progress, STOP.raise_if_requested)
        STOP.raise_if_requested()  # the commit point: past it the folder is complete
        try:
            os.rename(temp, target)
        except OSError as error:
            raise ModelFolderError(f"{target}: cannot create: {error.strerror}") from None
    from macprovider.cli.atomic_file import fsync_folder

    fsync_folder(models_root)
    return target


def _convert(
    gguf: Path,
    folder: Path,
    q_bits: str,
    progress: Callable[[str], None],
    check_stop: Callable[[], None],
) -> None:
    """Writes the model's files into `folder` (which is then complete)."""
    import mlx.core as mx
    from gguf import GGUFReader

    from macprovider.cli.gguf_metadata import ARCHITECTURE, llama_config, model_files, read_metadata
    from macprovider.cli.gguf_tensors import LOSSLESS_BITS, convert_tensor, mlx_name

    source = str(gguf)
    try:
        reader = GGUFReader(gguf)
    except (ValueError, OSError) as error:
        raise ModelImportError(f"{source}: not a GGUF file ({error})") from None
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
    config = llama_config(meta, vocab_size, "output.weight" not in by_name, source)
    progress(
        f"reading {gguf.name}: {ARCHITECTURE}, {config['num_hidden_layers']} layers,"
        f" {len(by_name)} tensors, vocabulary {vocab_size}"
    )
    files = model_files(read_metadata(reader, with_tokenizer=True), source)

    keep = q_bits == "keep" and any(t.tensor_type in LOSSLESS_BITS for t in reader.tensors)
    # Next to float32 scales the activations are float32: dense weights in bfloat16 would only
    # be promoted again, and the F32 norms stay exact.
    dense_dtype = mx.float32 if keep else mx.bfloat16
    heads = {"q": config["num_attention_heads"], "k": config["num_key_value_heads"]}
    weights: dict[str, mx.array] = {}
    per_module: dict[str, int] = {}
    for count, tensor in enumerate(reader.tensors, start=1):
        check_stop()
        qk = _QK.fullmatch(tensor.name)
        converted = convert_tensor(
            tensor,
            keep_quantized=keep,
            dense_dtype=dense_dtype,
            heads=heads[qk["which"]] if qk else None,
            source=source,
        )
        module = mlx_name(tensor.name)
        for part, array in converted.arrays.items():
            weights[f"{module}.{part}"] = array
        if converted.bits is not None and module is not None:
            per_module[module] = converted.bits
        if count % 50 == 0 or count == len(reader.tensors):
            progress(f"tensors: {count}/{len(reader.tensors)}")
    if per_module:
        config["quantization"] = _quantization_block(per_module)
    elif q_bits in ("4", "8"):
        weights, config = _requantize(weights, config, int(q_bits), progress)
    _write_weights(folder, weights, check_stop)
    _write_json(folder / "config.json", config)
    (folder / "tokenizer.json").write_text(files.tokenizer_json, encoding="utf-8")
    _fsync(folder / "tokenizer.json")
    _write_json(folder / "tokenizer_config.json", files.tokenizer_config)
    _write_json(folder / "generation_config.json", files.generation_config)


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


def _write_weights(folder: Path, weights: dict[str, Any], check_stop: Callable[[], None]) -> None:
    """model-NNNNN.safetensors shards of at most ~2 GiB (mlx-lm loads every `model*.safetensors`)
    and the index that names each weight's shard."""
    import mlx.core as mx

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key, array in weights.items():
        if size and size + array.nbytes > _SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = array
        size += array.nbytes
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        check_stop()
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(str(folder / file_name), shard, metadata={"format": "mlx"})
        _fsync(folder / file_name)
        weight_map.update(dict.fromkeys(shard, file_name))
    total = sum(array.nbytes for array in weights.values())
    _write_json(
        folder / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
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


def _remove_stale_temps(models_root: Path, name: str) -> None:
    """Removes the temp folders of earlier imports of `name` whose process is gone."""
    for temp in models_root.glob(f".import-{_glob_escape(name)}-*"):
        pid = temp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


@click.command()
@click.argument("gguf_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="The model's folder name (default: from the file name).")
@click.option(
    "--q-bits",
    type=click.Choice(Q_BITS),
    default="keep",
    show_default=True,
    help="keep: Q4_0/Q4_1/Q8_0 copied losslessly, other types bfloat16; none: all bfloat16;"
    " 4/8: bfloat16 re-quantized by mlx-lm (group size 64).",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the model folder goes (default: $MACPROVIDER_MODELS_DIR, else"
    " $XDG_DATA_HOME/macprovider/models, else ~/.local/share/macprovider/models).",
)
def import_command(gguf_file: Path, name: str | None, q_bits: str, models_dir: Path | None) -> int:
    """Convert a Llama-architecture GGUF file into an mlx-lm model folder.

    Prints progress on stderr and the new folder's path on stdout.
    """
    from macprovider.server.places import models_dir as default_models_dir

    # stderr carries our progress, not transformers' advice that PyTorch is absent.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    root = models_dir if models_dir is not None else default_models_dir(os.environ)[0]
    chosen = name if name is not None else default_name(gguf_file)
    if not chosen:
        raise ModelImportError(f"{gguf_file}: no model name in the file name; pass --name")
    target = import_gguf(
        gguf_file, root, chosen, q_bits, progress=lambda line: click.echo(line, err=True)
    )
    size = sum(path.stat().st_size for path in target.iterdir())
    click.echo(f"wrote {size / 1e6:.1f} MB", err=True)
    click.echo(str(target))
    return 0
