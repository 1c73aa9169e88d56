"""Pre-warm's integrity check on copies of the `tiny` fixture, in a plain folder and in a
hand-built HF cache whose recorded hashes it compares."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from macprovider.actors.prewarm_classify import classify_failure
from macprovider.actors.prewarm_errors import PrewarmIntegrityError
from macprovider.actors.prewarm_integrity import check_integrity
from macprovider.actors.prewarm_resolve import resolve_local
from macprovider.server.models import WEIGHT_GLOB
from tests.conftest import model_variant
from tests.model_files import (
    WEIGHTS,
    fixture_entry,
    hf_cache_repo,
    listed_files,
    offline_hf_cache,
    weights_of,
    write_tree_listing,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test may reach a hub: offline mode, and an empty HF cache of the test's own."""
    return offline_hf_cache(monkeypatch, tmp_path)


def header_of(data: bytes) -> tuple[int, dict[str, Any]]:
    (length,) = struct.unpack("<Q", data[:8])
    header: dict[str, Any] = json.loads(data[8 : 8 + length])
    return length, header


def with_header(data: bytes, header: dict[str, Any]) -> bytes:
    """`data`'s tensor bytes behind a new header (same length, padded with spaces)."""
    length, _ = header_of(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) <= length
    return struct.pack("<Q", length) + raw.ljust(length) + data[8 + length :]


def shift_first_tensor(data: bytes, delta: int) -> bytes:
    """Moves the tensor at offset 0 by `delta`: a gap (> 0) or, elsewhere, an overlap."""
    _, header = header_of(data)
    first = next(v for k, v in header.items() if k != "__metadata__" and v["data_offsets"][0] == 0)
    first["data_offsets"] = [o + delta for o in first["data_offsets"]]
    return with_header(data, header)


def overlap_second_tensor(data: bytes) -> bytes:
    _, header = header_of(data)
    tensors = sorted(
        (v for k, v in header.items() if k != "__metadata__"), key=lambda v: v["data_offsets"][0]
    )
    tensors[1]["data_offsets"] = [o - 4 for o in tensors[1]["data_offsets"]]
    return with_header(data, header)


def bad_dtype(data: bytes) -> bytes:
    _, header = header_of(data)
    next(v for k, v in header.items() if k != "__metadata__")["dtype"] = "Q7"
    return with_header(data, header)


# --- integrity of a plain folder -------------------------------------------------------------


def test_tiny_fixture_passes_with_its_real_size(tiny_model: Path) -> None:
    entry = fixture_entry(tiny_model)
    report = check_integrity(tiny_model)
    assert report.parameters == entry["parameters"] == 656_000
    assert report.weight_bytes == entry["bytes"]
    assert report.weight_files == (WEIGHTS,)
    assert report.total_bytes > report.weight_bytes
    assert report.model == str(tiny_model)
    assert report.hashed_files == ()  # not in an HF cache: nothing recorded to compare with


def test_a_symlinked_copy_passes(tiny_model: Path, tmp_path: Path) -> None:
    copy = model_variant(tiny_model, tmp_path / "copy", {})
    assert check_integrity(copy, model="tiny").parameters == 656_000


@pytest.mark.parametrize("missing", ["tokenizer.json", "config.json", WEIGHTS])
def test_a_missing_file_is_an_integrity_failure(
    tiny_model: Path, tmp_path: Path, missing: str
) -> None:
    variant = model_variant(tiny_model, tmp_path / "variant", {})
    (variant / missing).unlink()
    with pytest.raises(PrewarmIntegrityError) as failure:
        check_integrity(variant, model="tiny")
    expected = WEIGHT_GLOB if missing == WEIGHTS else missing
    assert failure.value.file == expected
    assert str(failure.value).startswith(f"pre-warm integrity failure: tiny: {expected}: ")


def test_a_dangling_weights_symlink_is_an_integrity_failure(
    tiny_model: Path, tmp_path: Path
) -> None:
    variant = model_variant(tiny_model, tmp_path / "variant", {})
    (variant / "model-gone.safetensors").symlink_to(tmp_path / "nowhere")
    with pytest.raises(PrewarmIntegrityError, match=r"model-gone\.safetensors: missing"):
        check_integrity(variant, model="tiny")


def test_safetensors_files_mlx_lm_does_not_load_are_not_weights(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Only model*.safetensors count: a copy the loader skips is not counted twice, and a
    damaged file it never reads does not stop the run."""
    weights = weights_of(tiny_model)
    extra = {"consolidated.safetensors": weights, "adapters.safetensors": weights[:-100]}
    report = check_integrity(model_variant(tiny_model, tmp_path / "variant", extra), model="t")
    assert (report.weight_files, report.parameters) == ((WEIGHTS,), 656_000)
    assert report.weight_bytes == len(weights)


@pytest.mark.parametrize(
    ("index", "file", "cause"),
    [
        ({"weight_map": {"a": WEIGHTS}}, None, None),
        (
            {"weight_map": {"a": WEIGHTS, "b": "model-2.safetensors"}},
            "model-2.safetensors",
            "missing",
        ),
        ({"metadata": {}}, "model.safetensors.index.json", "unreadable"),
    ],
)
def test_a_shard_index_must_name_present_files(
    tiny_model: Path, tmp_path: Path, index: dict[str, Any], file: str | None, cause: str | None
) -> None:
    content = {"model.safetensors.index.json": json.dumps(index).encode()}
    variant = model_variant(tiny_model, tmp_path / "variant", content)
    if file is None:
        assert check_integrity(variant, model="tiny").weight_files == (WEIGHTS,)
        return
    with pytest.raises(PrewarmIntegrityError, match=f"tiny: {file}: {cause}"):
        check_integrity(variant, model="tiny")


@pytest.mark.parametrize(
    ("config", "cause"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "not a JSON object"), (b"", "not valid JSON")],
)
def test_a_config_that_is_no_json_object_fails(
    tiny_model: Path, tmp_path: Path, config: bytes, cause: str
) -> None:
    variant = model_variant(tiny_model, tmp_path / "variant", {"config.json": config})
    with pytest.raises(PrewarmIntegrityError, match=f"tiny: config.json: {cause}"):
        check_integrity(variant, model="tiny")


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated": (lambda d: d[:-100], r"truncated: tensors need \d+ data bytes, the file has \d+"),
    "header past the end": (
        lambda d: struct.pack("<Q", len(d) * 2) + d[8:],
        r"header length \d+ points past the end of the file \(\d+ bytes\)",
    ),
    "header beyond the format's limit": (
        lambda d: struct.pack("<Q", 2**40) + d[8:],
        r"header length 1099511627776 exceeds the format's limit",
    ),
    "garbage header": (
        lambda d: d[:8] + b"{garbage" + d[16:],
        r"unreadable header \(",
    ),
    "header not an object": (
        lambda d: struct.pack("<Q", 2) + b"[]",
        r"header is not a JSON object",
    ),
    "shorter than a header": (lambda d: d[:5], r"5 bytes is too short for a safetensors header"),
    "trailing bytes": (lambda d: d + b"\0" * 7, r"7 trailing bytes after the last tensor"),
    "gap": (
        lambda d: shift_first_tensor(d, 4),
        r"tensor '[^']+' at offset 4 leaves a gap before it \(expected 0\)",
    ),
    "overlap": (overlap_second_tensor, r"tensor '[^']+' at offset \d+ overlaps the previous one"),
    "unknown dtype": (bad_dtype, r"tensor '[^']+': unknown dtype 'Q7'"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_corrupt_safetensors_file_is_an_integrity_failure_naming_it(
    tiny_model: Path, tmp_path: Path, case: str
) -> None:
    corrupt, cause = CORRUPTIONS[case]
    variant = model_variant(
        tiny_model, tmp_path / "variant", {WEIGHTS: corrupt(weights_of(tiny_model))}
    )
    with pytest.raises(
        PrewarmIntegrityError, match=rf"^pre-warm integrity failure: tiny: {WEIGHTS}: {cause}"
    ) as failure:
        check_integrity(variant, model="tiny")
    assert failure.value.file == WEIGHTS
    assert "\n" not in str(failure.value)
    assert classify_failure(failure.value) == "integrity"


@pytest.mark.parametrize(
    "case", ["truncated", "header past the end", "garbage header", "trailing bytes"]
)
def test_the_safetensors_library_rejects_the_same_files(
    tiny_model: Path, tmp_path: Path, case: str
) -> None:
    """Our checks are no stricter than the format: its reference reader refuses these too, with
    a text that classify_failure calls integrity."""
    path = tmp_path / WEIGHTS
    path.write_bytes(CORRUPTIONS[case][0](weights_of(tiny_model)))
    with pytest.raises(Exception) as failure, safe_open(str(path), "np"):
        pass
    assert classify_failure(failure.value) == "integrity"


# --- in an HF cache, checked against the hashes it recorded ------------------------------


def test_a_cached_repo_resolves_to_its_snapshot_and_passes_with_hashes(
    tiny_model: Path, offline: Path
) -> None:
    snapshot = hf_cache_repo(offline, "fixture-org/tiny", tiny_model)
    assert resolve_local("fixture-org/tiny", cache_dir=offline) == snapshot
    assert resolve_local("fixture-org/tiny") == snapshot  # HF_HUB_CACHE is the default
    report = check_integrity(snapshot)
    assert report.model == "fixture-org/tiny"
    assert report.parameters == fixture_entry(tiny_model)["parameters"]
    assert set(report.hashed_files) == {
        WEIGHTS,
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }


@pytest.mark.parametrize(
    ("file", "algorithm"), [(WEIGHTS, "sha256"), ("tokenizer.json", "git-sha1")]
)
def test_a_blob_no_longer_matching_its_hash_is_an_integrity_failure(
    tiny_model: Path, offline: Path, file: str, algorithm: str
) -> None:
    snapshot = hf_cache_repo(offline, "fixture-org/tiny", tiny_model)
    blob = (snapshot / file).resolve()
    data = bytearray(blob.read_bytes())
    data[-2] ^= 0x01  # same size, headers still parse: only the hash can tell
    blob.write_bytes(bytes(data))
    with pytest.raises(PrewarmIntegrityError) as failure:
        check_integrity(snapshot)
    assert failure.value.file == file
    assert str(failure.value).startswith(
        f"pre-warm integrity failure: fixture-org/tiny: {file}: {algorithm} mismatch: "
        f"cache recorded {blob.name}, file has "
    )


def test_without_a_tree_listing_missing_weights_are_caught_by_the_check(
    tiny_model: Path, offline: Path
) -> None:
    snapshot = hf_cache_repo(offline, "fixture-org/tiny", tiny_model)
    (snapshot / WEIGHTS).unlink()
    assert resolve_local("fixture-org/tiny", cache_dir=offline) == snapshot
    with pytest.raises(PrewarmIntegrityError, match=r"\*\.safetensors: no weight files"):
        check_integrity(snapshot)


def test_a_file_not_matching_the_cached_tree_listing_is_an_integrity_failure(
    tiny_model: Path, offline: Path
) -> None:
    """Hashes recorded in the tree listing count too, also for a file that is not a blob link."""
    snapshot = hf_cache_repo(offline, "fixture-org/tiny", tiny_model)
    write_tree_listing(offline, "fixture-org/tiny", listed_files(tiny_model))
    assert WEIGHTS in check_integrity(snapshot).hashed_files
    weights = bytearray(weights_of(tiny_model))
    weights[-2] ^= 0x01
    (snapshot / WEIGHTS).unlink()
    (snapshot / WEIGHTS).write_bytes(bytes(weights))  # a plain file now, no blob name
    expected = hashlib.sha256(weights_of(tiny_model)).hexdigest()
    with pytest.raises(PrewarmIntegrityError, match=f"sha256 mismatch: cache recorded {expected}"):
        check_integrity(snapshot)
