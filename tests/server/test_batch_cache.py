"""The batched quantized KV cache decodes exactly as a lone quantized cache does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.generate import BatchGenerator, generate_step
from mlx_lm.utils import load

from macprovider.server.batch_cache import BatchQuantizedKVCache, MergeableQuantizedKVCache

PROMPTS = [list(range(40, 80)), list(range(100, 107)), [(13 * i) % 400 + 30 for i in range(150)]]
NEW_TOKENS = 24


def fresh_caches(model: Any, bits: int) -> list[MergeableQuantizedKVCache]:
    return [MergeableQuantizedKVCache(group_size=64, bits=bits) for _ in model.layers]


def alone(model: Any, prompt: list[int], bits: int) -> list[int]:
    steps = generate_step(
        mx.array(prompt), model, max_tokens=NEW_TOKENS, prompt_cache=fresh_caches(model, bits)
    )
    return [int(token) for token, _ in steps]


@pytest.mark.parametrize("bits", [4, 8])
def test_batched_quantized_decode_matches_single_sequences(tiny_model: Path, bits: int) -> None:
    model, _ = load(str(tiny_model))
    expected = [alone(model, p, bits) for p in PROMPTS]
    generator = BatchGenerator(model, max_tokens=NEW_TOKENS, stop_tokens=[[10**9]])
    generator.insert(PROMPTS[:2], caches=[fresh_caches(model, bits) for _ in PROMPTS[:2]])
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}
    steps = 0
    seen_types = set()
    while sum(map(len, got.values())) < NEW_TOKENS * len(PROMPTS):
        for response in generator.next_generated():
            got[response.uid].append(response.token)
        steps += 1
        if steps == 5:  # joins a batch already decoding: exercises extend and padding
            generator.insert([PROMPTS[2]], caches=[fresh_caches(model, bits)])
        seen_types |= {type(c) for c in generator._generation_batch.prompt_cache}
    assert [got[i] for i in range(3)] == expected
    assert seen_types == {BatchQuantizedKVCache}


def test_extract_and_filter_keep_the_right_rows(tiny_model: Path) -> None:
    model, _ = load(str(tiny_model))
    singles = []
    for prompt in PROMPTS[:2]:
        caches = fresh_caches(model, 8)
        model(mx.array([prompt]), cache=caches)
        singles.append(caches)
    merged = BatchQuantizedKVCache.merge([s[0] for s in singles])
    assert merged.size() == len(PROMPTS[0])
    back = merged.extract(1)
    assert back.offset == len(PROMPTS[1])
    for got, want in zip(back.keys, singles[1][0].keys, strict=True):
        assert mx.array_equal(got, want[..., : len(PROMPTS[1]), :])
    merged.filter([1])
    assert merged.size() == len(PROMPTS[1])  # the shared left padding is dropped
    assert merged.nbytes > 0 and MergeableQuantizedKVCache(bits=8).nbytes == 0
