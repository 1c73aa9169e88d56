"""A GGUF file's metadata as an mlx-lm Llama folder's JSON files: config.json,
tokenizer.json, tokenizer_config.json and generation_config.json.

The tokenizer is built by transformers' own GGUF converter (`convert_gguf_tokenizer`), fed the
same dictionary its `get_gguf_tokenizer` would build — that function imports torch, which we do
not install, so the fields are read here with gguf-py. Its split-regex table lacks llama.cpp's
`smollm` pre-tokenizer, which is supplied here as SmolLM2's own tokenizer.json states it. A
byte-level vocabulary with any other pre-tokenizer neither table knows is refused: its merges
were learned on text split some other way, and a guess would tokenize wrongly without a sign.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gguf import GGUFReader
from tokenizers import Tokenizer, pre_tokenizers, processors
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    GGUF_PRE_TOKENIZER_SPLITS,
    GGUF_TOKENIZER_MAPPING,
    convert_gguf_tokenizer,
)

from macprovider.cli.errors import ModelImportError

__all__ = ["ARCHITECTURE", "ModelFiles", "llama_config", "model_files", "read_metadata"]

ARCHITECTURE: Final = "llama"
# Byte-level pre-tokenizers transformers' GPT2Tokenizer already is (the GPT-2 regex).
_GPT2_PRE: Final = frozenset({"default", "gpt-2"})
# llama.cpp's `smollm`: what SmolLM2's tokenizer.json states, digits split one by one first.
_OWN_PRE: Final = {
    "smollm": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    ),
}
# sentencepiece (`llama`) brings its own normalizer and splitting; `gpt2` is byte-level BPE.
_TOKENIZER_TYPES: Final = ("gpt2", "llama")
# Large arrays read only where needed: tokens, merges and token types (~100k strings).
_TOKENIZER_ARRAYS: Final = frozenset(
    {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"}
)


def read_metadata(reader: GGUFReader, *, with_tokenizer: bool) -> dict[str, Any]:
    """The file's key/value pairs as Python values; the vocabulary arrays only when asked."""
    return {
        key: field.contents()
        for key, field in reader.fields.items()
        if not key.startswith("GGUF.") and (with_tokenizer or key not in _TOKENIZER_ARRAYS)
    }


def llama_config(
    meta: Mapping[str, Any], vocab_size: int, tied: bool, source: str
) -> dict[str, Any]:
    """config.json for mlx-lm's `llama` model (without `quantization`, added by the caller)."""

    def need(key: str, default: int | None = None) -> int:
        # A count that is missing, not an integer (a per-layer array, a string) or not positive
        # would fail later as a TypeError or a reshape deep in the conversion.
        value = meta.get(f"{ARCHITECTURE}.{key}", default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ModelImportError(f"{source}: {ARCHITECTURE}.{key} is {value!r}, not a count")
        return value

    hidden, heads = need("embedding_length"), need("attention.head_count")
    kv_heads = need("attention.head_count_kv", heads)
    if heads % kv_heads:
        raise ModelImportError(
            f"{source}: {ARCHITECTURE}.attention.head_count_kv {kv_heads} does not divide"
            f" attention.head_count {heads}"
        )
    head_dim = need("attention.key_length", hidden // heads)
    rope_dim = need("rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        # mlx-lm's Llama rotates whole heads; a partial rotary dimension is another model.
        raise ModelImportError(
            f"{source}: {ARCHITECTURE}.rope.dimension_count is {rope_dim}, not head_dim {head_dim}"
        )
    scaling = meta.get(f"{ARCHITECTURE}.rope.scaling.type", "none")
    if scaling != "none":
        raise ModelImportError(
            f"{source}: {ARCHITECTURE}.rope.scaling.type {scaling!r} is not supported"
        )
    ids = special_ids(meta, vocab_size, source)
    return {
        "model_type": ARCHITECTURE,
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length"),
        "num_hidden_layers": need("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float(meta.get(f"{ARCHITECTURE}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(meta.get(f"{ARCHITECTURE}.rope.freq_base", 10000.0)),
        "max_position_embeddings": need("context_length"),
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
    }


@dataclass(frozen=True)
class SpecialIds:
    bos: int | None
    eos: list[int]  # the file's eos first, then its end-of-turn / end-of-message ids


def special_ids(meta: Mapping[str, Any], vocab_size: int, source: str) -> SpecialIds:
    """The file's special ids, each checked to be a token of the `vocab_size` there are."""

    def token_id(key: str) -> int | None:
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < vocab_size:
            raise ModelImportError(
                f"{source}: tokenizer.ggml.{key}_token_id is {value!r},"
                f" not a token id (vocabulary of {vocab_size})"
            )
        return value

    eos: list[int] = []
    for key in ("eos", "eot", "eom"):
        token = token_id(key)
        if token is not None and token not in eos:
            eos.append(token)
    return SpecialIds(token_id("bos"), eos)


@dataclass(frozen=True)
class ModelFiles:
    """The tokenizer's and generation's JSON files, ready to write."""

    tokenizer_json: str
    tokenizer_config: dict[str, Any]
    generation_config: dict[str, Any]


def model_files(meta: Mapping[str, Any], source: str) -> ModelFiles:
    """tokenizer.json, tokenizer_config.json and generation_config.json from the metadata
    (read `with_tokenizer=True`)."""
    tokenizer_type = meta.get("tokenizer.ggml.model")
    if tokenizer_type not in _TOKENIZER_TYPES:
        raise ModelImportError(
            f"{source}: tokenizer.ggml.model {tokenizer_type!r} is not supported"
            f" (supported: {', '.join(_TOKENIZER_TYPES)})"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if tokenizer_type == "gpt2" and not (
        pre in _GPT2_PRE or pre in _OWN_PRE or pre in GGUF_PRE_TOKENIZER_SPLITS
    ):
        raise ModelImportError(f"{source}: tokenizer.ggml.pre {pre!r} is an unknown pre-tokenizer")
    tokenizer_dict = {
        name: meta[f"tokenizer.{key}"]
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in meta
    }
    tokens = tokenizer_dict.get("tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ModelImportError(f"{source}: tokenizer.ggml.tokens (the vocabulary) is missing")
    ids = special_ids(meta, len(tokens), source)
    tokenizer, _ = convert_gguf_tokenizer(ARCHITECTURE, tokenizer_dict)
    if tokenizer_type == "gpt2" and pre in _OWN_PRE:
        tokenizer.pre_tokenizer = _OWN_PRE[pre]()
    # llama.cpp's default for a sentencepiece vocabulary that does not say is to add BOS.
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", tokenizer_type == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    _set_post_processor(tokenizer, tokens, ids, add_bos=add_bos, add_eos=add_eos)

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    tokenizer_config: dict[str, Any] = {
        # The fast-tokenizer class loads tokenizer.json as written, with nothing rebuilt.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.get(f"{ARCHITECTURE}.context_length"),
    }
    if "tokenizer.chat_template" in meta:
        tokenizer_config["chat_template"] = meta["tokenizer.chat_template"]
    generation_config: dict[str, Any] = {"bos_token_id": ids.bos, "eos_token_id": ids.eos}
    return ModelFiles(tokenizer.to_str(), tokenizer_config, generation_config)


def _set_post_processor(
    tokenizer: Tokenizer, tokens: list[str], ids: SpecialIds, *, add_bos: bool, add_eos: bool
) -> None:
    """BOS/EOS added around an encoded text exactly as the file's flags say."""
    pieces: list[tuple[str, int]] = []
    if add_bos and ids.bos is not None:
        pieces.append((tokens[ids.bos], ids.bos))
    if add_eos and ids.eos:
        pieces.append((tokens[ids.eos[0]], ids.eos[0]))
    bos = f"{tokens[ids.bos]} " if add_bos and ids.bos is not None else ""
    eos = f" {tokens[ids.eos[0]]}" if add_eos and ids.eos else ""
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos}$A:0{eos}",
        pair=f"{bos}$A:0{eos} {bos}$B:1{eos}",
        special_tokens=pieces,
    )
