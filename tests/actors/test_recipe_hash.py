"""The recipe hash: `sha256:` + hex of the RFC 8785 (JCS) canonical JSON of exactly
`{binary_version, candidate_models, chip, knobs, model, ram_gb, target_context}`, with `ram_gb`
in GB of 10^9 bytes as `describe_machine` reports it.

How the reference vectors were made, without the code under test or the `rfc8785` library:
the canonical bytes of each recipe were written out by hand following RFC 8785: keys sorted by
UTF-16 code units (all keys here are ASCII, so plain byte order; `max_concurrency_override`
sorts before `max_context_override`), no whitespace, arrays in their given order, numbers in
ECMAScript shortest form (`16.0` is `16`, `17.18` stays `17.18`), strings as UTF-8 with only `"`,
`\\` and control characters escaped (`\\t` short form, U+001F as lowercase `\\u001f`;
non-ASCII and `/` written as is). The digests come from `printf '%s' '<bytes>' | sha256sum`
and are re-checked below with hashlib, so a mistyped vector fails on its own. They were
recomputed when RAM went from GiB (rounded to 0.1) to GB (rounded to 0.01): a 24 GiB
machine was `"ram_gb":24` and is now `"ram_gb":25.77`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any

import psutil
import pytest

from macprovider.actors import machine
from macprovider.actors.recommendation import Recommendation, recipe_hash
from macprovider.actors.tuning import Cell

HASH_FORMAT = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Vector:
    name: str
    binary_version: str
    candidate_models: tuple[str, ...]
    chip: str
    ram_gb: float
    model: str
    target_context: int
    cell: Cell
    canonical: str  # the RFC 8785 bytes, as UTF-8 text
    digest: str  # sha256 hex of `canonical`

    def recommendation(self) -> Recommendation:
        return Recommendation(
            self.model, self.target_context, self.cell, 41.5, 812.0, 3, partial=False
        )

    def hash(self, recommendation: Recommendation | None = None) -> str:
        return recipe_hash(
            recommendation or self.recommendation(),
            binary_version=self.binary_version,
            candidate_models=self.candidate_models,
            chip=self.chip,
            ram_gb=self.ram_gb,
        )


QWEN_7B = "mlx-community/Qwen2.5-7B-Instruct-4bit"
LLAMA_JA = "örg/Llama-🦙-日本語-3B"  # 2-, 3- and 4-byte UTF-8, kept raw by JCS

VECTORS = (
    Vector(
        name="kv_bits null, a 24 GiB machine's ram_gb 25.77",
        binary_version="0.1.0",
        candidate_models=("mlx-community/Qwen2.5-14B-Instruct-4bit", QWEN_7B),
        chip="Apple M2 Pro",
        ram_gb=25.77,
        model=QWEN_7B,
        target_context=2000,
        cell=Cell(kv_bits=None, max_batch=2, max_context=2064),
        canonical=(
            '{"binary_version":"0.1.0","candidate_models":'
            '["mlx-community/Qwen2.5-14B-Instruct-4bit","mlx-community/Qwen2.5-7B-Instruct-4bit"],'
            '"chip":"Apple M2 Pro","knobs":{"kv_bits":null,"max_concurrency_override":2,'
            '"max_context_override":2064},"model":"mlx-community/Qwen2.5-7B-Instruct-4bit",'
            '"ram_gb":25.77,"target_context":2000}'
        ),
        digest="26935f1759c56a3a19749914fcd5684fd2761ae5ca27747dab33e6a2084b21bf",
    ),
    Vector(
        name="non-ASCII model name, kv_bits 4, a 16 GiB machine's ram_gb 17.18",
        binary_version="0.2.0rc1",
        candidate_models=(LLAMA_JA, "örg/Modèle-1B"),
        chip="Apple M1",
        ram_gb=17.18,
        model=LLAMA_JA,
        target_context=4096,
        cell=Cell(kv_bits=4, max_batch=1, max_context=8192),
        canonical=(
            '{"binary_version":"0.2.0rc1","candidate_models":'
            '["örg/Llama-🦙-日本語-3B","örg/Modèle-1B"],"chip":"Apple M1",'
            '"knobs":{"kv_bits":4,"max_concurrency_override":1,"max_context_override":8192},'
            '"model":"örg/Llama-🦙-日本語-3B","ram_gb":17.18,"target_context":4096}'
        ),
        digest="bab5155c3399f908e70c25ede684331342fc9ad5f6d8c808224efd06c8542b63",
    ),
    Vector(
        name="escaped quote, backslash and control characters, a local path model, ram_gb 16.0"
        " written as 16",
        binary_version="0+unknown",
        candidate_models=("/models/tiny model",),
        chip='Xeon "Gold"\t6338 \\ x\x1f',
        ram_gb=16.0,
        model="/models/tiny model",
        target_context=32,
        cell=Cell(kv_bits=8, max_batch=2, max_context=40),
        # Raw string: the backslashes are the escape sequences JCS writes.
        canonical=(
            r'{"binary_version":"0+unknown","candidate_models":["/models/tiny model"],'
            r'"chip":"Xeon \"Gold\"\t6338 \\ x\u001f","knobs":{"kv_bits":8,'
            r'"max_concurrency_override":2,"max_context_override":40},'
            r'"model":"/models/tiny model","ram_gb":16,"target_context":32}'
        ),
        digest="307a83127c20c0251bfdd9f3816f758b7c14383b729b1e51f67c8ece331da945",
    ),
)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda vector: vector.name)
def test_vector_digest_is_the_sha256_of_its_canonical_bytes(vector: Vector) -> None:
    assert hashlib.sha256(vector.canonical.encode("utf-8")).hexdigest() == vector.digest


@pytest.mark.parametrize("vector", VECTORS, ids=lambda vector: vector.name)
def test_recipe_hash_matches_the_reference_vector(vector: Vector) -> None:
    assert vector.hash() == f"sha256:{vector.digest}"


@pytest.mark.parametrize("vector", VECTORS, ids=lambda vector: vector.name)
def test_recipe_hash_format(vector: Vector) -> None:
    assert HASH_FORMAT.fullmatch(vector.hash())


@pytest.mark.parametrize(
    "observations",
    [
        {"tps_median": 12.25},
        {"ttft_p95_ms": 60000.0},
        {"replicates": 7},
        {"partial": True},
        {"tps_median": 0.5, "ttft_p95_ms": 1.0, "replicates": 1, "partial": True},
    ],
)
def test_observations_and_partial_do_not_change_the_hash(observations: dict[str, Any]) -> None:
    vector = VECTORS[0]
    measured_again = replace(vector.recommendation(), **observations)
    assert vector.hash(measured_again) == vector.hash()


@pytest.mark.parametrize(
    "changes",
    [
        {"ram_gb": 32.0},
        {"binary_version": "0.1.1"},
        {"chip": "Apple M2 Max"},
        {"candidate_models": (QWEN_7B,)},
        # The list order is the contract (Stage 1 iterates it as given), so it is hashed.
        {"candidate_models": (QWEN_7B, "mlx-community/Qwen2.5-14B-Instruct-4bit")},
        {"model": "mlx-community/Qwen2.5-14B-Instruct-4bit"},
        {"target_context": 2001},
        {"cell": Cell(kv_bits=4, max_batch=2, max_context=2064)},
        {"cell": Cell(kv_bits=None, max_batch=1, max_context=2064)},
        {"cell": Cell(kv_bits=None, max_batch=2, max_context=4096)},
    ],
    ids=repr,
)
def test_each_recipe_field_changes_the_hash(changes: dict[str, Any]) -> None:
    vector = VECTORS[0]
    assert replace(vector, **changes).hash() != vector.hash()


def test_ram_is_hashed_as_the_given_float() -> None:
    # `describe_machine` rounds RAM to 0.01 GB and the run stores that float; an unrounded
    # value would be another recipe, which is why the rounding happens before hashing.
    vector = VECTORS[1]
    assert replace(vector, ram_gb=17.180000000000003).hash() != vector.hash()
    assert replace(vector, ram_gb=round(17.184, 2)).hash() == vector.hash()


@dataclass(frozen=True)
class _Memory:
    total: int


@pytest.mark.parametrize(
    ("total", "ram_gb"),
    [
        (8 * 2**30, 8.59),
        (16 * 2**30, 17.18),
        (24 * 2**30, 25.77),
        (36 * 2**30, 38.65),
        (128 * 2**30, 137.44),
        (16_000_000_000, 16.0),
        (16_004_999_999, 16.0),
    ],
)
def test_machine_ram_is_in_gb_of_ten_to_the_ninth_bytes(
    monkeypatch: pytest.MonkeyPatch, total: int, ram_gb: float
) -> None:
    """The unit of --memory-limit-gb: a 24 GiB machine reports 25.77 GB, not 24."""
    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Memory(total))
    assert machine.describe_machine().ram_gb == ram_gb


def test_a_24_gib_machine_hashes_as_25_77_gb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "virtual_memory", lambda: _Memory(24 * 2**30))
    vector = VECTORS[0]
    measured = replace(vector, ram_gb=machine.describe_machine().ram_gb)
    assert measured.hash() == f"sha256:{vector.digest}"
