"""GGUF metadata → config.json and the tokenizer's files, through transformers' converter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader
from tokenizers import Tokenizer

from macprovider.cli.errors import ModelImportError
from macprovider.cli.gguf_metadata import llama_config, model_files, read_metadata
from tests.cli.gguf_build import TinyLlama, write_gguf


def _meta(tmp_path: Path, pre: str = "smollm") -> dict[str, Any]:
    path = tmp_path / f"{pre}.gguf"
    write_gguf(path, TinyLlama(), pre=pre)
    return read_metadata(GGUFReader(path), with_tokenizer=True)


def test_config_states_the_llama_shape_and_special_ids(tmp_path: Path) -> None:
    config = llama_config(_meta(tmp_path), vocab_size=266, tied=True, source="f")
    assert config | {"rope_theta": 0.0} == config | {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "max_position_embeddings": 512,
        "vocab_size": 266,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": [2, 0],  # eos, then the file's eot
        "rope_theta": 0.0,
    }
    assert config["rope_theta"] == 10000.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"llama.block_count": None}, r"f: llama\.block_count is None, not a count"),
        ({"llama.rope.dimension_count": 32}, r"rope\.dimension_count is 32, not head_dim 64"),
        ({"llama.rope.scaling.type": "yarn"}, r"rope\.scaling\.type 'yarn' is not supported"),
        ({"llama.attention.head_count_kv": "2"}, r"head_count_kv is '2', not a count"),
        ({"llama.attention.head_count_kv": [2, 2]}, r"head_count_kv is \[2, 2\], not a count"),
        ({"llama.attention.head_count_kv": 0}, r"head_count_kv is 0, not a count"),
        ({"llama.attention.head_count_kv": 3}, r"head_count_kv 3 does not divide"),
        ({"llama.attention.head_count": True}, r"head_count is True, not a count"),
        ({"tokenizer.ggml.eos_token_id": 266}, r"eos_token_id is 266, not a token id"),
        ({"tokenizer.ggml.bos_token_id": -1}, r"bos_token_id is -1, not a token id"),
        ({"tokenizer.ggml.eot_token_id": "2"}, r"eot_token_id is '2', not a token id"),
    ],
)
def test_config_refuses_what_mlx_lm_llama_cannot_run(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    meta = {key: value for key, value in _meta(tmp_path).items() if key not in change}
    meta.update({key: value for key, value in change.items() if value is not None})
    with pytest.raises(ModelImportError, match=message):
        llama_config(meta, vocab_size=266, tied=True, source="f")


def test_smollm_splits_digits_and_keeps_special_tokens_whole(tmp_path: Path) -> None:
    files = model_files(_meta(tmp_path), "f")
    tokenizer = Tokenizer.from_str(files.tokenizer_json)
    encoding = tokenizer.encode("<|im_start|>the 42<|im_end|>")
    assert encoding.ids[0] == 1 and encoding.ids[-1] == 2
    assert "4" in encoding.tokens and "2" in encoding.tokens  # one digit a token
    assert (
        tokenizer.decode(encoding.ids, skip_special_tokens=False) == "<|im_start|>the 42<|im_end|>"
    )
    assert files.tokenizer_config["chat_template"].startswith("{% for message in messages %}")
    assert files.tokenizer_config["add_bos_token"] is False
    assert files.generation_config == {"bos_token_id": 1, "eos_token_id": [2, 0]}


def test_gpt2_pre_tokenizer_keeps_digit_runs(tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_str(model_files(_meta(tmp_path, "gpt-2"), "f").tokenizer_json)
    assert tokenizer.pre_tokenizer is not None
    assert [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str("a 42")] == ["a", "Ġ42"]


def test_add_bos_token_puts_bos_first(tmp_path: Path) -> None:
    meta = _meta(tmp_path) | {"tokenizer.ggml.add_bos_token": True}
    files = model_files(meta, "f")
    assert Tokenizer.from_str(files.tokenizer_json).encode("the").ids[0] == 1
    assert files.tokenizer_config["add_bos_token"] is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"tokenizer.ggml.pre": "made-up"},
            r"f: tokenizer\.ggml\.pre 'made-up' is an unknown pre-tokenizer",
        ),
        ({"tokenizer.ggml.model": "bert"}, r"f: tokenizer\.ggml\.model 'bert' is not supported"),
    ],
)
def test_unknown_tokenizers_are_refused(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelImportError, match=message):
        model_files(_meta(tmp_path) | change, "f")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"tokenizer.ggml.tokens": None},
            r"f: tokenizer\.ggml\.tokens \(the vocabulary\) is missing",
        ),
        (
            {"tokenizer.ggml.eos_token_id": 300},
            r"f: tokenizer\.ggml\.eos_token_id is 300, not a token",
        ),
        (
            {"tokenizer.ggml.bos_token_id": 266},
            r"bos_token_id is 266, not a token id \(vocabulary of 264\)",
        ),
    ],
)
def test_a_missing_vocabulary_or_special_id_outside_it_is_refused(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    meta = {key: value for key, value in _meta(tmp_path).items() if key not in change}
    meta.update({key: value for key, value in change.items() if value is not None})
    with pytest.raises(ModelImportError, match=message):
        model_files(meta, "f")
