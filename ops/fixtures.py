"""Build the fixture models that the tests, the demo and the benchmarks run on.

No machine this runs on reaches a model hub, so these stand in for real models: small real
mlx-lm Llama checkpoints (config.json, model.safetensors, a `tokenizers` tokenizer.json and a
tokenizer_config.json with a ChatML template and `<|im_end|>` as the stop token) that load
through the same code path as any model, in four sizes, the largest still quick on a 2-core
CPU. They are byte for byte the same on every build (fixed seed, fixed step counts) and cached
in a folder whose absolute path is the last line of stdout. Beside them, one real pretrained
model in two forms, imported from a PyPI wheel's GGUF (`real_fixtures`: `smollm2-135m`,
`smollm2-135m-q4`).

Usage: ops/fixtures.py [--dir DIR] [--only NAME ...]
"""

from __future__ import annotations

import os

# One BLAS thread, set before numpy loads: results then cannot depend on the core count, and
# OpenBLAS threads spin badly when other jobs share the small hosts this runs on.
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import fcntl
import functools
import hashlib
import json
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast
from unittest import mock

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import real_fixtures
from mlx.nn.layers.linear import Linear
from mlx.nn.utils import value_and_grad
from mlx.utils import tree_flatten, tree_unflatten
from numpy.typing import NDArray
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SEED = 20240607
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
DEFAULT_DIR = Path.home() / ".cache" / "macprovider" / "fixtures"
STAMP = ".recipe"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VOCAB_SIZE = 2048
# The serving side quantizes the KV cache in groups of 64 along head_dim.
HEAD_DIM = 64
# Prompts up to 200k tokens must pass the config's length check.
MAX_POSITIONS = 262144
# float32 decodes fastest on MLX's CPU backend: `small` measured 290 tok/s, against 238 in
# bfloat16 and 103 in float16.
DTYPE = "float32"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Training windows; steps are fixed counts (never wall time) so builds stay byte-identical.
BATCH, WINDOW, WARMUP = 4, 64, 5

# An mlx_lm Llama `Model`: mlx_lm ships no type information and mlx.nn leaves Module unannotated.
LlamaModel = Any


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    kv_heads: int
    intermediate: int
    train_steps: int
    learning_rate: float

    @property
    def heads(self) -> int:
        return self.hidden // HEAD_DIM

    @property
    def parameters(self) -> int:
        attention = 2 * self.hidden * HEAD_DIM * (self.heads + self.kv_heads)
        layer = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return VOCAB_SIZE * self.hidden + self.layers * layer + self.hidden


SHAPES = (  # name, hidden, layers, kv heads, intermediate, train steps, learning rate
    Shape("tiny", 128, 2, 1, 384, 100, 3e-3),
    Shape("small", 256, 4, 2, 768, 60, 3e-3),
    Shape("medium", 384, 6, 2, 1024, 28, 2e-3),
    Shape("large", 512, 8, 2, 1408, 16, 1e-3),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    root: Path = args.dir.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    wanted = [shape for shape in SHAPES if not args.only or shape.name in args.only]
    real = [
        model for model in real_fixtures.REAL_MODELS if not args.only or model.name in args.only
    ]
    with _locked(root):
        for shape in wanted:
            _ensure(root, shape)
        for model in real:
            _ensure_real(root, model)
        _write_index(root)
    print(root)
    return 0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    default = Path(os.environ.get("MACPROVIDER_FIXTURES_DIR") or DEFAULT_DIR)
    parser.add_argument("--dir", type=Path, default=default, help=f"cache folder ({default})")
    names = [shape.name for shape in SHAPES] + [model.name for model in real_fixtures.REAL_MODELS]
    parser.add_argument("--only", action="append", choices=names, help="build just this model")
    return parser.parse_args(argv)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise builders sharing a folder (parallel test sessions), so none sees half a swap."""
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ensure(root: Path, shape: Shape) -> None:
    recipe = _recipe(shape)
    if _is_current(root / shape.name, recipe):
        _progress(shape, "cached")
        return
    started = time.perf_counter()
    loss = _build(root, shape, recipe)
    _progress(shape, f"built in {time.perf_counter() - started:.1f} s (train loss {loss:.2f})")


def _ensure_real(root: Path, model: real_fixtures.RealModel) -> None:
    if real_fixtures.is_current(root, model):
        status = "cached"
    else:
        started = time.perf_counter()
        real_fixtures.build(root, model)
        status = f"imported in {time.perf_counter() - started:.1f} s"
    print(f"fixtures: {model.name:<15} (from {real_fixtures.WHEEL})  {status}", file=sys.stderr)


def _progress(shape: Shape, status: str) -> None:
    print(
        f"fixtures: {shape.name:<6} {shape.parameters:>11,} parameters  {status}", file=sys.stderr
    )


def _recipe(shape: Shape) -> str:
    """Everything the bytes depend on; a change in any of it makes the model stale."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in _corpus_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(repr(shape).encode())
    for package in ("mlx", "mlx-lm", "numpy", "safetensors", "tokenizers"):
        digest.update(f"{package}=={version(package)}".encode())
    return digest.hexdigest()


def _is_current(folder: Path, recipe: str) -> bool:
    stamp = folder / STAMP
    complete = stamp.is_file() and all((folder / name).is_file() for name in MODEL_FILES)
    return complete and stamp.read_text() == recipe


def _build(root: Path, shape: Shape, recipe: str) -> float:
    """Build in a sibling folder and rename it into place: an interrupted build never leaves
    a folder that looks complete. Leftovers of a killed build are safe to drop under the lock."""
    staging, retired = root / f".{shape.name}.building", root / f".{shape.name}.retired"
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir()
    try:
        loss = _write_model(staging, shape)
        (staging / STAMP).write_text(recipe)
        target = root / shape.name
        if target.exists():
            target.rename(retired)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return loss


def _write_model(folder: Path, shape: Shape) -> float:
    tokenizer = _tokenizer()
    config = _model_config(shape, _token_id(IM_END))
    model = _new_model(config)
    loss = _train(model, shape, _corpus_ids())
    weights = {name: np.asarray(value) for name, value in _parameters(model)}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "mlx"})
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(folder / "config.json", config)
    _write_json(folder / "tokenizer_config.json", _tokenizer_config())
    return loss


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _corpus_files() -> list[Path]:
    return sorted(CORPUS_DIR.glob("*.txt"))


def _corpus_texts() -> list[str]:
    """One line of prose per file: line breaks would be the most frequent token, and a barely
    trained model decoding greedily would then answer with nothing but newlines."""
    return [" ".join(path.read_text().split()) for path in _corpus_files()]


@functools.cache
def _tokenizer() -> Tokenizer:
    """GPT-2 style byte-level BPE: mlx-lm picks its BPEStreamingDetokenizer for the ByteLevel
    decoder, and a vocabulary learnt from English prose decodes to whole words."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[END_OF_TEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_texts(), trainer)
    return tokenizer


@functools.cache
def _corpus_ids() -> list[int]:
    """The corpus as one token stream, one <|endoftext|> after each file."""
    ids: list[int] = []
    for text in _corpus_texts():
        ids += [*_tokenizer().encode(text).ids, _token_id(END_OF_TEXT)]
    return ids


def _token_id(token: str) -> int:
    found = _tokenizer().token_to_id(token)
    if found is None:
        raise LookupError(f"{token} is missing from the fixture tokenizer")
    return int(found)


def _model_config(shape: Shape, eos_token_id: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": VOCAB_SIZE,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": DTYPE,
        "eos_token_id": eos_token_id,
    }


def _tokenizer_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": END_OF_TEXT,
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
    }


def _new_model(config: dict[str, Any]) -> LlamaModel:
    # Imported here: mlx_lm pulls in transformers (~1 s), which a cached run should not pay for.
    from mlx_lm.models import llama

    mx.random.seed(SEED)
    model: LlamaModel = llama.Model(llama.ModelArgs.from_dict(config))
    layers = config["num_hidden_layers"]
    params = [(name, _initial(name, value, layers)) for name, value in _parameters(model)]
    model.update(tree_unflatten(params))
    mx.eval(model.parameters())
    return model


def _parameters(model: LlamaModel) -> list[tuple[str, mx.array]]:
    # Without a destination, tree_flatten returns the list of (dotted name, array) pairs.
    return cast(list[tuple[str, mx.array]], tree_flatten(model.parameters()))


def _initial(name: str, value: mx.array, layers: int) -> mx.array:
    """GPT-2 initialisation: small normal weights, residual outputs shrunk by depth so the
    residual stream (and the tied output head) start calm and short training stays stable."""
    if value.ndim == 1:
        return value  # RMSNorm gains stay at one
    std = (
        0.02 / (2 * layers) ** 0.5 if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
    )
    return mx.random.normal(value.shape) * std


def _train(model: LlamaModel, shape: Shape, ids: list[int]) -> float:
    """Next-token training on the corpus, so generations read like English rather than noise."""
    tokens, rng = mx.array(ids), random.Random(SEED)
    decay = optim.cosine_decay(
        shape.learning_rate, shape.train_steps - WARMUP, shape.learning_rate / 10
    )
    warmup = optim.linear_schedule(0.0, shape.learning_rate, WARMUP)
    optimizer = optim.Adam(learning_rate=optim.join_schedules([warmup, decay], [WARMUP]))
    loss_and_grad = value_and_grad(model, _loss)
    loss = mx.array(0.0)
    with _numpy_kernels():
        for _ in range(shape.train_steps):
            starts = [rng.randrange(len(ids) - WINDOW - 1) for _ in range(BATCH)]
            batch = mx.stack([tokens[start : start + WINDOW + 1] for start in starts])
            loss, grads = loss_and_grad(model, batch[:, :-1], batch[:, 1:])
            optimizer.update(model, grads)
            mx.eval(loss, model.parameters(), optimizer.state)
    return float(_numpy(loss))


def _loss(model: LlamaModel, inputs: mx.array, targets: mx.array) -> mx.array:
    # mlx-lm's Llama applies the tied head as embed_tokens.as_linear; fusing it with the loss
    # keeps the vocabulary-wide exp in numpy (MLX's CPU exp is scalar, ~10x slower).
    body = model["model"]
    return cast(mx.array, _head_loss(body(inputs), body["embed_tokens"]["weight"], targets))


@contextmanager
def _numpy_kernels() -> Iterator[None]:
    """Route training's matmuls and attention through numpy. MLX's Linux CPU build links the
    reference BLAS (3-6 GFLOP/s here) while numpy's OpenBLAS runs ~90 GFLOP/s on one thread; the
    math is the same, so the trained weights load and run under plain MLX afterwards."""
    from mlx_lm.models import llama

    with ExitStack() as patches:
        patches.enter_context(mock.patch.object(Linear, "__call__", _linear))
        patches.enter_context(mock.patch.object(llama, "scaled_dot_product_attention", _attention))
        yield


def _numpy(value: mx.array) -> NDArray[np.float32]:
    array: NDArray[np.float32] = np.asarray(value, dtype=np.float32)  # evaluates the lazy graph
    return array


def _linear(layer: Linear, x: mx.array) -> mx.array:
    return cast(mx.array, _matmul_t(x, layer["weight"]))


@mx.custom_function
def _matmul_t(x: mx.array, weight: mx.array) -> mx.array:
    """x @ weight.T for bias-free layers (every Llama projection)."""
    flat = _numpy(x).reshape(-1, x.shape[-1])
    return mx.array((flat @ _numpy(weight).T).reshape(*x.shape[:-1], weight.shape[0]))


@_matmul_t.vjp
def _matmul_t_vjp(
    primals: tuple[mx.array, mx.array], cotangent: mx.array, _output: mx.array
) -> tuple[mx.array, mx.array]:
    x, weight = primals
    grad = _numpy(cotangent).reshape(-1, weight.shape[0])
    grad_x = (grad @ _numpy(weight)).reshape(x.shape)
    return mx.array(grad_x), mx.array(grad.T @ _numpy(x).reshape(-1, x.shape[-1]))


@mx.custom_function
def _head_loss(hidden: mx.array, embedding: mx.array, targets: mx.array) -> mx.array:
    """Mean cross-entropy of the tied output head."""
    logits = _head_logits(hidden, embedding)
    top = logits.max(-1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(-1)) + top[:, 0]
    picked = logits[np.arange(len(logits)), np.asarray(targets).reshape(-1)]
    return mx.array((log_norm - picked).mean())


@_head_loss.vjp
def _head_loss_vjp(
    primals: tuple[mx.array, mx.array, mx.array], cotangent: mx.array, _output: mx.array
) -> tuple[mx.array, mx.array, mx.array]:
    hidden, embedding, targets = primals
    logits = _head_logits(hidden, embedding)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    probs[np.arange(len(probs)), np.asarray(targets).reshape(-1)] -= 1
    probs *= _numpy(cotangent) / len(probs)
    grad_hidden = (probs @ _numpy(embedding)).reshape(hidden.shape)
    grad_embedding = probs.T @ _numpy(hidden).reshape(len(probs), -1)
    return mx.array(grad_hidden), mx.array(grad_embedding), mx.zeros_like(targets)


def _head_logits(hidden: mx.array, embedding: mx.array) -> NDArray[np.float32]:
    return _numpy(hidden).reshape(-1, hidden.shape[-1]) @ _numpy(embedding).T


def _attention(
    queries: mx.array, keys: mx.array, values: mx.array, *, cache: Any, scale: float, mask: Any
) -> mx.array:
    """Stand-in for mlx-lm's scaled_dot_product_attention during training (no cache)."""
    if cache is not None or mask != "causal" or scale != HEAD_DIM**-0.5:
        raise ValueError("numpy attention only serves cache-free causal training")
    return cast(mx.array, _causal_attention(queries, keys, values))


def _grouped(
    queries: mx.array, keys: mx.array, values: mx.array
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Views for grouped-query attention: query head h reads key/value head h // group."""
    batch, heads, length, dim = queries.shape
    kv_heads = keys.shape[1]
    grouped = _numpy(queries).reshape(batch, kv_heads, heads // kv_heads, length, dim)
    return grouped, _numpy(keys)[:, :, None], _numpy(values)[:, :, None]


def _causal_probs(queries: NDArray[np.float32], keys: NDArray[np.float32]) -> NDArray[np.float32]:
    scores = (queries @ keys.swapaxes(-1, -2)) * np.float32(HEAD_DIM**-0.5)
    length = scores.shape[-1]
    scores += np.triu(np.full((length, length), -np.inf, np.float32), 1)
    probs: NDArray[np.float32] = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return probs


@mx.custom_function
def _causal_attention(queries: mx.array, keys: mx.array, values: mx.array) -> mx.array:
    q, k, v = _grouped(queries, keys, values)
    return mx.array((_causal_probs(q, k) @ v).reshape(queries.shape))


@_causal_attention.vjp
def _causal_attention_vjp(
    primals: tuple[mx.array, mx.array, mx.array], cotangent: mx.array, _output: mx.array
) -> tuple[mx.array, mx.array, mx.array]:
    queries, keys, values = primals
    q, k, v = _grouped(queries, keys, values)
    probs = _causal_probs(q, k)  # recomputed: cheaper than keeping it alive across the pass
    grad_out = _numpy(cotangent).reshape(q.shape)
    grad_probs = grad_out @ v.swapaxes(-1, -2)
    grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdims=True))
    grad_scores *= np.float32(HEAD_DIM**-0.5)
    grad_q = (grad_scores @ k).reshape(queries.shape)
    grad_k = (grad_scores.swapaxes(-1, -2) @ q).sum(2)
    grad_v = (probs.swapaxes(-1, -2) @ grad_out).sum(2)
    return mx.array(grad_q), mx.array(grad_k), mx.array(grad_v)


def _write_index(root: Path) -> None:
    """index.json lists every current model, smallest first, for code that ranks by size."""
    entries = [
        {
            "name": shape.name,
            "path": str(root / shape.name),
            "parameters": shape.parameters,
            "bytes": (root / shape.name / "model.safetensors").stat().st_size,
        }
        for shape in SHAPES
        if _is_current(root / shape.name, _recipe(shape))
    ]
    staging = root / ".index.json.tmp"
    _write_json(staging, {"models": entries})
    staging.replace(root / "index.json")


if __name__ == "__main__":
    sys.exit(main())
