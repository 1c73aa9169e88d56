"""A quantized KV cache that mlx-lm's `BatchGenerator` can batch.

mlx-lm batches only unquantized caches (`KVCache.merge` → `BatchKVCache`);
`QuantizedKVCache` has no `merge`, which is why `mlx_lm.server` serialises
requests when `--kv-bits` is set. `BatchQuantizedKVCache` follows
`BatchKVCache`'s left-padding scheme, with each of keys and values held as
mlx's (packed, scales, biases) triple, quantized from token 0.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import QuantizedKVCache, dynamic_roll

GROUP_SIZE = 64

Quantized = tuple[mx.array, mx.array, mx.array]


class MergeableQuantizedKVCache(QuantizedKVCache):  # type: ignore[misc]
    """One request's quantized cache, in the form `BatchGenerator` knows how to batch."""

    def size(self) -> int:
        return int(self.offset)

    @property
    def nbytes(self) -> int:
        # The parent's version fails on a cache that holds nothing yet.
        if self.keys is None:
            return 0
        return sum(int(x.nbytes) for x in (*self.keys, *self.values))

    @classmethod
    def merge(cls, caches: list[MergeableQuantizedKVCache]) -> BatchQuantizedKVCache:
        return BatchQuantizedKVCache.merge(caches)


def _map(fn: Any, triple: Quantized) -> Quantized:
    a, b, c = (fn(x) for x in triple)
    return (a, b, c)


class BatchQuantizedKVCache:
    """Quantized keys/values for a batch of left-padded sequences."""

    step = 256

    def __init__(self, left_padding: list[int], group_size: int = GROUP_SIZE, bits: int = 8):
        self.keys: Quantized | None = None
        self.values: Quantized | None = None
        self.left_padding = mx.array(left_padding)
        self.offset = mx.array([-pad for pad in left_padding])
        self.group_size = group_size
        self.bits = bits
        self._idx = 0
        self._right_padding: mx.array | None = None

    def _grow(self, batch: int, heads: int, steps: int, k_dim: int, v_dim: int, dtype: Any) -> None:
        per_word = 32 // self.bits
        new_len = (self.step + steps - 1) // self.step * self.step

        def zeros(dim: int) -> Quantized:
            shape = (batch, heads, new_len)
            return (
                mx.zeros((*shape, dim // per_word), dtype=mx.uint32),
                mx.zeros((*shape, dim // self.group_size), dtype=dtype),
                mx.zeros((*shape, dim // self.group_size), dtype=dtype),
            )

        fresh_k, fresh_v = zeros(k_dim), zeros(v_dim)
        if self.keys is None or self.values is None:
            self.keys, self.values = fresh_k, fresh_v
            return
        used = self._idx
        self.keys = _concat(_map(lambda x: x[..., :used, :], self.keys), fresh_k)
        self.values = _concat(_map(lambda x: x[..., :used, :], self.values), fresh_v)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[Quantized, Quantized]:
        batch, heads, steps, k_dim = keys.shape
        prev = self._idx
        if self.keys is None or prev + steps > self.keys[0].shape[2]:
            self._grow(batch, heads, steps, k_dim, values.shape[-1], keys.dtype)
        assert self.keys is not None and self.values is not None
        self.offset = self.offset + steps
        self._idx += steps
        q_keys = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        q_values = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        for stored, new in zip(
            self.keys + self.values, tuple(q_keys) + tuple(q_values), strict=True
        ):
            stored[..., prev : self._idx, :] = new
        return self._used(self.keys), self._used(self.values)

    def _used(self, triple: Quantized) -> Quantized:
        return _map(lambda x: x[..., : self._idx, :], triple)

    def make_mask(self, n: int, return_array: bool = False, **kwargs: Any) -> mx.array:
        mask: mx.array = create_causal_mask(
            n, offset=self._idx, left_padding=self.left_padding, **kwargs
        )
        return mask

    def prepare(
        self,
        *,
        left_padding: list[int] | None = None,
        lengths: list[int] | None = None,
        right_padding: list[int] | None = None,
    ) -> None:
        if left_padding is not None:
            if self.keys is not None:
                raise ValueError("left padding can only be added to an empty cache")
            pad = mx.array(left_padding)
            self.left_padding += pad
            self.offset = self.offset - pad
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(right_padding)

    def finalize(self) -> None:
        # Right-padded prompts are rolled so the padding sits on the left, as decode expects.
        if self._right_padding is None or self.keys is None or self.values is None:
            return
        shifts = self._right_padding[:, None]
        self.keys = _map(lambda x: dynamic_roll(x, shifts, axis=2), self.keys)
        self.values = _map(lambda x: dynamic_roll(x, shifts, axis=2), self.values)
        self.offset = self.offset - self._right_padding
        self.left_padding += self._right_padding
        self._right_padding = None

    @property
    def state(self) -> tuple[Any, ...]:
        return self.keys, self.values, self.offset, self.left_padding, self._idx

    def filter(self, batch_indices: list[int] | mx.array) -> None:
        index = mx.array(batch_indices) if isinstance(batch_indices, list) else batch_indices
        if self.keys is not None and self.values is not None:
            self.keys = _map(lambda x: x[index], self.keys)
            self.values = _map(lambda x: x[index], self.values)
        self.offset = self.offset[index]
        self.left_padding = self.left_padding[index]
        # Drop the columns every remaining row pads, so a long finished request frees its length.
        shared_pad = _as_int(mx.min(self.left_padding))
        if shared_pad > 0:
            if self.keys is not None and self.values is not None:
                self.keys = _map(lambda x: x[..., shared_pad:, :], self.keys)
                self.values = _map(lambda x: x[..., shared_pad:, :], self.values)
            self._idx -= shared_pad
            self.left_padding -= shared_pad

    def extend(self, other: BatchQuantizedKVCache) -> None:
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        idx = max(self._idx, other._idx)
        template = self.keys if self.keys is not None else other.keys
        value_template = self.values if self.values is not None else other.values
        assert template is not None and value_template is not None
        length = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)
        mine, theirs = (c._aligned(idx, length, template, value_template) for c in (self, other))
        self.keys = _concat(mine[0], theirs[0], axis=0)
        self.values = _concat(mine[1], theirs[1], axis=0)
        self.offset = mx.concatenate([self.offset, other.offset])
        self.left_padding = mx.concatenate([mine[2], theirs[2]])
        self._idx = idx

    def _aligned(
        self, idx: int, length: int, k_like: Quantized, v_like: Quantized
    ) -> tuple[Quantized, Quantized, mx.array]:
        """This cache's rows padded so that position `idx` lines up and all have `length`."""
        rows = self.offset.shape[0]
        keys = self.keys or _map(
            lambda x: mx.zeros((rows, x.shape[1], 0, x.shape[3]), x.dtype), k_like
        )
        values = self.values or _map(
            lambda x: mx.zeros((rows, x.shape[1], 0, x.shape[3]), x.dtype), v_like
        )
        left = idx - self._idx
        right = length - keys[0].shape[2] - left
        if right < 0:
            keys, values = (_map(lambda x: x[..., :right, :], t) for t in (keys, values))
            right = 0
        if left or right:
            widths = [(0, 0), (0, 0), (left, right), (0, 0)]
            keys, values = (_map(lambda x: mx.pad(x, widths), t) for t in (keys, values))
        return keys, values, self.left_padding + left

    def extract(self, idx: int) -> MergeableQuantizedKVCache:
        cache = MergeableQuantizedKVCache(group_size=self.group_size, bits=self.bits)
        if self.keys is None or self.values is None:
            return cache
        pad = _as_int(self.left_padding[idx])
        cache.keys = _map(lambda x: mx.contiguous(x[idx : idx + 1, :, pad : self._idx]), self.keys)
        cache.values = _map(
            lambda x: mx.contiguous(x[idx : idx + 1, :, pad : self._idx]), self.values
        )
        cache.offset = self._idx - pad
        return cache

    @classmethod
    def merge(cls, caches: list[MergeableQuantizedKVCache]) -> BatchQuantizedKVCache:
        first = caches[0]
        lengths = [c.size() for c in caches]
        longest = max(lengths)
        merged = cls([longest - n for n in lengths], group_size=first.group_size, bits=first.bits)
        if longest == 0:
            return merged
        filled = [c for c in caches if c.keys is not None]

        def blank(x: mx.array) -> mx.array:
            return mx.zeros((len(caches), x.shape[1], longest, x.shape[3]), x.dtype)

        keys, values = _map(blank, filled[0].keys), _map(blank, filled[0].values)
        for row, (cache, n) in enumerate(zip(caches, lengths, strict=True)):
            if cache.keys is None:
                continue
            start = longest - n
            for dst, src in zip(keys + values, cache.keys + cache.values, strict=True):
                dst[row : row + 1, :, start:longest] = src[..., :n, :]
        merged.keys, merged.values = keys, values
        merged.offset += longest
        merged._idx = longest
        return merged

    def size(self) -> int:
        return self._idx

    def empty(self) -> bool:
        return self.keys is None

    def is_trimmable(self) -> bool:
        return False

    @property
    def nbytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        return sum(int(x.nbytes) for x in self.keys + self.values)


def _concat(a: Quantized, b: Quantized, axis: int = 2) -> Quantized:
    return (
        mx.concatenate([a[0], b[0]], axis=axis),
        mx.concatenate([a[1], b[1]], axis=axis),
        mx.concatenate([a[2], b[2]], axis=axis),
    )


def _as_int(scalar: mx.array) -> int:
    value = scalar.item()
    assert isinstance(value, int)
    return value
