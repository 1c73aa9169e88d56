"""Failure classification, anchored to the texts and exceptions real libraries produce."""

from __future__ import annotations

import errno
import http.client
import socket
import struct
import urllib.error
from pathlib import Path

import httpx2
import pytest
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
)
from safetensors import safe_open

from macprovider.actors.prewarm_classify import (
    INTEGRITY_MARKERS,
    TRANSIENT_MARKERS,
    classify_failure,
)
from macprovider.actors.prewarm_errors import (
    ModelNotCached,
    PrewarmIntegrityError,
    PrewarmTransientError,
)

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
