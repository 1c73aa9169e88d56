"""Pre-warm's pure functions: resolution through a hand-built HF cache, integrity checks on
copies of the `tiny` fixture, and failure classification anchored to real library texts."""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import socket
import struct
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
)
from safetensors import safe_open

from macprovider.actors.prewarm import prewarm, start_prewarm_actor
from macprovider.actors.prewarm_classify import (
    INTEGRITY_MARKERS,
    TRANSIENT_MARKERS,
    classify_failure,
)
from macprovider.actors.prewarm_errors import (
    ModelNotCached,
    PrewarmError,
    PrewarmIntegrityError,
    PrewarmTransientError,
)
from macprovider.actors.prewarm_integrity import check_integrity
from macprovider.actors.prewarm_resolve import local_parameters, resolve_local
from macprovider.server.models import WEIGHT_GLOB
from tests.conftest import free_port, model_variant

WEIGHTS = "model.safetensors"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test may reach a hub: offline mode, and an empty HF cache of the test's own."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def fixture_entry(tiny_model: Path) -> dict[str, Any]:
    index = json.loads((tiny_model.parent / "index.json").read_text())
    entry: dict[str, Any] = next(m for m in index["models"] if m["name"] == "tiny")
    return entry


def weights_of(tiny_model: Path) -> bytes:
    return (tiny_model / WEIGHTS).read_bytes()


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


# --- an HF cache laid out by hand ------------------------------------------------------------


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def hf_cache_repo(cache: Path, repo_id: str, model: Path) -> Path:
    """`model`'s files as huggingface_hub lays them out: blobs named by their etag (sha256 for
    LFS weights, git blob sha1 for small files), a snapshot of relative symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / REVISION
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for item in sorted(model.iterdir()):
        if item.name.startswith("."):
            continue
        data = item.read_bytes()
        is_lfs = item.suffix == ".safetensors"
        etag = hashlib.sha256(data).hexdigest() if is_lfs else git_blob_sha1(data)
        (blobs / etag).write_bytes(data)
        (snapshot / item.name).symlink_to(Path("..", "..", "blobs", etag))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


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


def test_a_local_directory_resolves_to_itself(tiny_model: Path) -> None:
    assert resolve_local(str(tiny_model)) == tiny_model


@pytest.mark.parametrize("repo_id", ["fixture-org/absent", "absent"])
def test_an_uncached_repo_says_a_fetch_is_needed(repo_id: str, offline: Path) -> None:
    with pytest.raises(ModelNotCached, match=f"^{repo_id} is not in the local Hugging Face cache"):
        resolve_local(repo_id, cache_dir=offline)


def write_tree_listing(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """The tree listing huggingface_hub 2.4 caches per commit (`<repo>/trees/<commit>.json`,
    format_version 1, documented in huggingface_hub/_tree_cache.py)."""
    entries: dict[str, dict[str, Any]] = {}
    for name, data in files.items():
        entry: dict[str, Any] = {"size": len(data), "blob_id": git_blob_sha1(data)}
        if name.endswith(".safetensors"):
            entry |= {"lfs_sha256": hashlib.sha256(data).hexdigest(), "lfs_size": len(data)}
        entries[name] = entry
    trees = cache / ("models--" + repo_id.replace("/", "--")) / "trees"
    trees.mkdir()
    listing = {"format_version": 1, "files": entries}
    (trees / f"{REVISION}.json").write_text(json.dumps(listing))


def listed_files(model: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in model.iterdir() if not p.name.startswith(".")}


def test_an_incomplete_snapshot_says_a_fetch_is_needed(tiny_model: Path, offline: Path) -> None:
    """An interrupted download: the cached tree listing names weights that never arrived."""
    snapshot = hf_cache_repo(offline, "fixture-org/tiny", tiny_model)
    write_tree_listing(offline, "fixture-org/tiny", listed_files(tiny_model))
    (snapshot / WEIGHTS).unlink()
    with pytest.raises(
        ModelNotCached, match=rf"is incomplete: 1 file\(s\) are missing \({WEIGHTS}\)"
    ):
        resolve_local("fixture-org/tiny", cache_dir=offline)


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


@pytest.mark.parametrize("model_id", ["/no/such/dir", "a/b/c"])
def test_neither_a_directory_nor_a_repo_id_is_a_plain_prewarm_error(model_id: str) -> None:
    with pytest.raises(PrewarmError) as failure:
        resolve_local(model_id)
    assert not isinstance(failure.value, ModelNotCached)
    assert model_id in str(failure.value)


def test_local_parameters_reads_headers_of_local_models_only(
    tiny_model: Path, tmp_path: Path, offline: Path
) -> None:
    assert local_parameters(str(tiny_model)) == 656_000
    hf_cache_repo(offline, "fixture-org/tiny", tiny_model)
    assert local_parameters("fixture-org/tiny", cache_dir=offline) == 656_000
    assert local_parameters("fixture-org/absent", cache_dir=offline) is None
    assert local_parameters("a/b/c") is None
    garbage = {WEIGHTS: CORRUPTIONS["garbage header"][0](weights_of(tiny_model))}
    assert local_parameters(str(model_variant(tiny_model, tmp_path / "bad", garbage))) is None


# --- classification --------------------------------------------------------------------------

SHA_A, SHA_B = "a" * 64, "b" * 64

INTEGRITY_TEXTS = [
    "pre-warm integrity failure: tiny: tokenizer.json: missing",
    "❌ Checksum verification failed for the following file(s):\n"
    f"  - model.safetensors: expected {SHA_A} (sha256), got {SHA_B}",
    f"  - config.json: expected {'c' * 40} (git-sha1), got {'d' * 40}",
    "safetensors_rust.SafetensorError: Error while deserializing header: invalid JSON in header:"
    " key must be a string at line 1 column 2",
    "Error while deserializing header: incomplete metadata, file not fully covered",
    "Error while deserializing header: HeaderTooLarge",
    "SafetensorError: InvalidHeaderDeserialization",
    "RuntimeError: [load_safetensors] Tensor 'model.norm.weight' invalid data offsets (2623488,"
    " 2624000) exceeding the size of the file. Perhaps an incomplete download or corrupt file?",
    "[load_safetensors] The JSON header is 5252272 bytes long but the file is only 2626136 bytes."
    " Perhaps an incomplete download or corrupt file?",
    "[json.exception.parse_error.101] parse error at line 1, column 2: syntax error while parsing"
    " object key - invalid literal; last read: '{g'; expected string literal",
    "FileNotFoundError: No safetensors found in /models/tiny",
    "FileNotFoundError: [Errno 2] No such file or directory: '/models/tiny/config.json'",
    "[Errno 2] No such file or directory: 'tokenizer.json'",
    "json.decoder.JSONDecodeError: Failed to parse tokenizer.json: line 1 column 1 (char 0)",
]

TRANSIENT_TEXTS = [
    "pre-warm transient failure: org/m: download interrupted",
    "LocalEntryNotFoundError: Got: ConnectError: [Errno 111] Connection refused\nAn error happened"
    " while trying to locate the files on the Hub, and we cannot find the appropriate snapshot"
    " folder for the specified revision on the local disk.",
    "An error happened while trying to locate the files on the Hub, and we cannot find the"
    " appropriate snapshot folder",
    "socket.gaierror: [Errno -3] Temporary failure in name resolution",
    "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='huggingface.co', port=443)",
    "[Errno 111] Connection refused",
    "[Errno 104] Connection reset by peer",
    "The read operation timed out",
    "httpx2.ReadTimeout: timed out",
    "httpx2.HTTPStatusError: Server error '503 Service Unavailable' for url"
    " 'https://huggingface.co/api/models/org/m'",
    "500 Server Error: Internal Server Error for url: https://huggingface.co/api/models/org/m",
    "429 Too Many Requests for url: https://huggingface.co/api/models/org/m.",
    "Client error '429 Too Many Requests' for url 'https://huggingface.co/api/models/org/m'",
    "OSError: [Errno 28] No space left on device",
    "http.client.IncompleteRead: IncompleteRead(1024 bytes read, 4096 more expected)",
    "urllib.error.ContentTooShortError: <urlopen error retrieval incomplete: got only 10 out of 20"
    " bytes>",
    "OSError: Consistency check failed: file should be of size 2626136 but has size 1000"
    " (model.safetensors).\nThis is usually due to network issues while downloading the file."
    " Please retry with `force_download=True`.",
    "huggingface_hub.errors.GatedRepoError: 403 Client Error.\n\nCannot access gated repo for url"
    " https://huggingface.co/api/models/meta-llama/x.\nAccess to model meta-llama/x is restricted"
    " and you are not in the authorized list.",
    "Access to model meta-llama/Llama-3.2-1B is restricted. You must have access to it and be"
    " authenticated to access it. Please log in.",
    "The cached snapshot for 'org/m' (revision 'main', commit abc) is incomplete: 1 file(s) are"
    " missing (model.safetensors). The Hub could not be reached (OSError: boom). Re-run the"
    " download with network access to complete the snapshot.",
    # Vague markers ("incomplete metadata", "invalid or corrupted") would turn these network
    # hiccups into integrity aborts: none is a marker, so they stay transient.
    "Got: ReadTimeout: incomplete metadata returned for org/m",
    "ConnectionResetError: cache entry invalid or corrupted, rebuilding",
]

UNKNOWN_TEXTS = [
    "INFO prompt cache hit, hash 3f2a9c reused",
    "error: hash of the recipe changed, recomputing",
    "0 errors, 2 warnings",
    "Fetching 4 files: 100%|██████████| 4/4",
    "the safetensors header was read in 3 ms",
    "loaded 1 corrupt-free shard; signature of the request: none",
    "timeout=30 configured for the probe",
    "[Errno 2] No such file or directory: '/models/tiny/tokenizer_config.json'",
    "[Errno 2] No such file or directory: '/models/tiny/generation_config.json'",
    "404 Client Error. Repository Not Found for url: https://huggingface.co/api/models/org/nope.",
    "Client error '404 Not Found' for url 'https://huggingface.co/api/models/org/nope'",
    "Cannot find an appropriate cached snapshot folder for the specified revision on the local"
    " disk and outgoing traffic has been disabled.",
    "HTTP/1.1 200 OK",
    "Server error count: 0",
    "",
]


@pytest.mark.parametrize("text", INTEGRITY_TEXTS)
def test_integrity_texts(text: str) -> None:
    assert classify_failure(text) == "integrity"


@pytest.mark.parametrize("text", TRANSIENT_TEXTS)
def test_transient_texts(text: str) -> None:
    assert classify_failure(text) == "transient"


@pytest.mark.parametrize("text", UNKNOWN_TEXTS)
def test_texts_of_neither_class(text: str) -> None:
    assert classify_failure(text) == "unknown"


def test_every_marker_is_exercised_and_has_a_source() -> None:
    for markers, texts in (
        (INTEGRITY_MARKERS, INTEGRITY_TEXTS),
        (TRANSIENT_MARKERS, TRANSIENT_TEXTS),
    ):
        for pattern, source in markers:
            assert source
            assert any(pattern.search(t) for t in texts), pattern.pattern


def http_error(cls: type[HfHubHTTPError], status: int, message: str) -> HfHubHTTPError:
    request = httpx2.Request("GET", "https://huggingface.co/api/models/org/m")
    return cls(message, response=httpx2.Response(status, request=request))


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def safetensor_error(tmp_path: Path) -> BaseException:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(struct.pack("<Q", 8) + b"{garbage")
    try:
        with safe_open(str(path), "np"):
            pass
    except Exception as e:
        return e
    raise AssertionError("safe_open accepted a garbage header")


def exception_cases(tmp_path: Path) -> list[tuple[BaseException, str]]:
    return [
        (PrewarmIntegrityError("tiny", "tokenizer.json", "missing"), "integrity"),
        (safetensor_error(tmp_path), "integrity"),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/m/config.json"),
            "integrity",
        ),
        (PrewarmTransientError("org/m", "disk full"), "transient"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "transient"),
        (OSError(errno.ENOSPC, "No space left on device"), "transient"),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), "transient"),
        (TimeoutError("timed out"), "transient"),
        (httpx2.ConnectError("[Errno 111] Connection refused"), "transient"),
        (httpx2.ReadTimeout("The read operation timed out"), "transient"),
        (http.client.IncompleteRead(b"x" * 10, 90), "transient"),
        (urllib.error.ContentTooShortError("retrieval incomplete", None), "transient"),  # type: ignore[arg-type]
        (http_error(HfHubHTTPError, 503, "503 Server Error"), "transient"),
        (http_error(HfHubHTTPError, 429, "\n\n429 Too Many Requests for url"), "transient"),
        (
            http_error(GatedRepoError, 403, "403 Client Error. Cannot access gated repo"),
            "transient",
        ),
        (
            chained(
                LocalEntryNotFoundError("An error happened while trying to locate the files"),
                httpx2.ConnectError("[Errno 111] Connection refused"),
            ),
            "transient",
        ),
        (
            chained(
                RuntimeError("load failed"),
                chained(ConnectionResetError("reset"), PrewarmIntegrityError("m", "x", "bad")),
            ),
            "integrity",  # integrity anywhere in the chain wins
        ),
        (http_error(HfHubHTTPError, 404, "404 Client Error. Repository Not Found"), "unknown"),
        (
            OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled."),
            "unknown",
        ),
        (
            httpx2.UnsupportedProtocol(
                "Request URL is missing an 'http://' or 'https://' protocol."
            ),
            "unknown",
        ),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "unknown"),
        (
            FileNotFoundError(
                errno.ENOENT, "No such file or directory", "/m/tokenizer_config.json"
            ),
            "unknown",
        ),
        (ValueError("hash of the prompt changed"), "unknown"),
        (ModelNotCached("org/m", "not cached"), "unknown"),
        (KeyboardInterrupt(), "unknown"),
    ]


def test_exceptions(tmp_path: Path) -> None:
    for exception, expected in exception_cases(tmp_path):
        assert classify_failure(exception) == expected, repr(exception)


# --- prewarm and its actor (fetch replaced: no test reaches a hub) ---------------------------


class FakeHub:
    """Stands in for snapshot_download: lays `model` into the cache, or raises `error`."""

    def __init__(self, model: Path, error: BaseException | None = None) -> None:
        self.model, self.error, self.calls = model, error, 0

    def __call__(self, model_id: str, cache_dir: Path | None) -> object:
        self.calls += 1
        if self.error is not None:
            raise self.error
        assert cache_dir is not None
        return hf_cache_repo(cache_dir, model_id, self.model)


def test_prewarm_of_a_local_directory_never_fetches(tiny_model: Path) -> None:
    hub = FakeHub(tiny_model)
    outcome = prewarm(str(tiny_model), fetch=hub)
    assert (outcome.fetched, outcome.fetch_seconds, hub.calls) == (False, 0.0, 0)
    assert outcome.report.parameters == 656_000


def test_prewarm_of_a_cached_repo_never_fetches(tiny_model: Path, offline: Path) -> None:
    hf_cache_repo(offline, "fixture-org/tiny", tiny_model)
    hub = FakeHub(tiny_model)
    outcome = prewarm("fixture-org/tiny", cache_dir=offline, fetch=hub)
    assert (outcome.fetched, hub.calls, outcome.report.model) == (False, 0, "fixture-org/tiny")


def test_prewarm_fetches_an_uncached_repo_once_and_times_it(
    tiny_model: Path, offline: Path
) -> None:
    hub = FakeHub(tiny_model)
    ticks = iter([10.0, 12.5])
    outcome = prewarm("fixture-org/tiny", cache_dir=offline, fetch=hub, clock=lambda: next(ticks))
    assert (outcome.fetched, outcome.fetch_seconds, hub.calls) == (True, 2.5, 1)
    assert outcome.report.hashed_files


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (
            chained(
                LocalEntryNotFoundError("An error happened while trying to locate the files"),
                httpx2.ConnectError("[Errno 111] Connection refused"),
            ),
            PrewarmTransientError,
        ),
        (OSError(errno.ENOSPC, "No space left on device"), PrewarmTransientError),
        (OSError("Checksum verification failed for the following file(s):"), PrewarmIntegrityError),
        (ValueError("something else"), PrewarmError),
    ],
)
def test_a_failed_fetch_is_raised_as_its_class(
    tiny_model: Path, offline: Path, error: BaseException, raised: type[PrewarmError]
) -> None:
    with pytest.raises(PrewarmError) as failure:
        prewarm("fixture-org/tiny", cache_dir=offline, fetch=FakeHub(tiny_model, error))
    assert type(failure.value) is raised
    assert failure.value.__cause__ is error
    assert "fixture-org/tiny" in str(failure.value)
    assert "\n" not in str(failure.value)


def test_the_actor_prewarms_and_reports_integrity_failures(
    tiny_model: Path, tmp_path: Path
) -> None:
    broken = model_variant(tiny_model, tmp_path / "broken", {WEIGHTS: weights_of(tiny_model)[:-9]})
    actor = start_prewarm_actor(fetch=FakeHub(tiny_model))
    try:
        assert actor.prewarm(str(tiny_model)).get(timeout=30).report.parameters == 656_000
        with pytest.raises(PrewarmIntegrityError, match=f"{broken}: {WEIGHTS}: truncated"):
            actor.prewarm(str(broken)).get(timeout=30)
    finally:
        actor.actor_ref.stop(timeout=30)


def test_an_unreachable_hub_is_transient(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real fetch against a closed loopback port (HF_ENDPOINT), never a real hub."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    with pytest.raises(PrewarmTransientError, match=r"fixture-org/absent: .*Connection refused"):
        prewarm("fixture-org/absent", cache_dir=offline)
