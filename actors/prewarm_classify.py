"""Sorts a pre-warm failure into transient (the candidate is skipped, the run goes on),
integrity (the whole run aborts) or unknown, from an exception or from a log text.

The two mistakes are not alike: integrity taken for transient silently advances past corrupt
weights; transient taken for integrity aborts a run that could go on. So integrity markers are
checked first, and every marker is a phrase a real library prints, never a lone word like
"hash", "error" or "corrupt".
"""

from __future__ import annotations

import errno
import http.client
import re
import socket
import urllib.error
from collections.abc import Iterator
from typing import Literal

import httpx
import httpx2
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled
from safetensors import SafetensorError

from macprovider.actors.prewarm_errors import (
    INTEGRITY_PREFIX,
    TRANSIENT_PREFIX,
    PrewarmIntegrityError,
    PrewarmTransientError,
)

FailureClass = Literal["transient", "integrity", "unknown"]

# (pattern, where the text comes from)
INTEGRITY_MARKERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(re.escape(INTEGRITY_PREFIX)),
        "macprovider: PrewarmIntegrityError (actors/prewarm_errors.py)",
    ),
    (
        re.compile(r"Checksum verification failed for the following file"),
        "huggingface_hub 2.4: `hf cache verify` (cli/cache.py) reporting verify_maps mismatches",
    ),
    (
        re.compile(r"expected [0-9a-f]{40,64} \((?:sha256|git-sha1)\), got [0-9a-f]{40,64}"),
        "huggingface_hub 2.4: one mismatch line of `hf cache verify` (cli/cache.py)",
    ),
    (
        re.compile(r"Error while deserializing header"),
        "safetensors 0.8: SafetensorError, e.g. 'Error while deserializing header: invalid JSON"
        " in header: …', '… header too large', '… incomplete metadata, file not fully covered'",
    ),
    (
        re.compile(
            r"\b(?:HeaderTooLarge|HeaderTooSmall|InvalidHeaderLength|InvalidHeaderDeserialization"
            r"|InvalidHeaderStart|InvalidHeader|MetadataIncompleteBuffer|InvalidOffset)\b"
        ),
        "safetensors before 0.4.2: SafetensorError printed the Rust SafeTensorError variant"
        " ('Error while deserializing header: HeaderTooLarge')",
    ),
    (
        re.compile(r"\[load_safetensors\]"),
        "mlx 0.32: RuntimeError of mx.load, e.g. \"[load_safetensors] Tensor '…' invalid data"
        " offsets (…) exceeding the size of the file\", '… The JSON header is N bytes long but the"
        " file is only M bytes'",
    ),
    (
        re.compile(r"\[json\.exception\.parse_error\.\d+\]"),
        "mlx 0.32: RuntimeError of mx.load on a garbage safetensors header (nlohmann::json)",
    ),
    (
        re.compile(r"No safetensors found in "),
        "mlx-lm 0.32: FileNotFoundError of mlx_lm.utils.load_model",
    ),
    (
        re.compile(r"No such file or directory: '(?:[^']*/)?(?:config|tokenizer)\.json'"),
        "Python open() FileNotFoundError, as raised by mlx_lm.utils.load_config for config.json",
    ),
    (
        re.compile(r"Failed to parse tokenizer\.json"),
        "mlx-lm 0.32: JSONDecodeError of mlx_lm.tokenizer_utils.load",
    ),
)

TRANSIENT_MARKERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(re.escape(TRANSIENT_PREFIX)),
        "macprovider: PrewarmTransientError (actors/prewarm_errors.py)",
    ),
    (
        re.compile(
            r"\b(?:ConnectionError|ConnectionRefusedError|ConnectionResetError"
            r"|ConnectionAbortedError|TimeoutError|ConnectError|ConnectTimeout|ReadTimeout"
            r"|WriteTimeout|PoolTimeout|RemoteProtocolError)\b"
        ),
        "Python builtins and httpx/httpx2 transport exceptions by class name, as huggingface_hub"
        " quotes them ('Got: ConnectError: [Errno 111] Connection refused')",
    ),
    (
        re.compile(r"Temporary failure in name resolution"),
        "glibc gai_strerror(EAI_AGAIN) via socket.gaierror '[Errno -3] …'",
    ),
    (
        re.compile(r"Connection refused|Connection reset by peer|Network is unreachable"),
        "strerror(ECONNREFUSED / ECONNRESET / ENETUNREACH) in OSError texts",
    ),
    (
        re.compile(r"\btimed out\b"),
        "socket.timeout 'timed out', ssl 'The read operation timed out', ETIMEDOUT"
        " 'Connection timed out'",
    ),
    (
        re.compile(r"Server error '5\d\d |\b5\d\d Server Error\b"),
        "httpx/httpx2 Response.raise_for_status \"Server error '503 Service Unavailable' for url"
        " …\" and the requests-style '500 Server Error: …' huggingface_hub used to print",
    ),
    (
        re.compile(r"\b429 Too Many Requests\b"),
        "huggingface_hub 2.4: hf_raise_for_status 429 branch; httpx \"Client error '429 Too Many"
        " Requests'\"",
    ),
    (
        re.compile(r"No space left on device"),
        "strerror(ENOSPC): OSError '[Errno 28] No space left on device'",
    ),
    (
        re.compile(r"\bIncompleteRead\b"),
        "Python http.client.IncompleteRead",
    ),
    (
        re.compile(r"\bContentTooShortError\b|retrieval incomplete: got only"),
        "Python urllib.error.ContentTooShortError ('retrieval incomplete: got only N out of M"
        " bytes')",
    ),
    (
        re.compile(r"Consistency check failed: file should be of size"),
        "huggingface_hub 2.4: file_download.http_get after an interrupted download",
    ),
    (
        re.compile(r"\bGatedRepoError\b|Cannot access gated repo for url"),
        "huggingface_hub 2.4: GatedRepoError from hf_raise_for_status",
    ),
    (
        re.compile(r"Access to model \S+ is restricted"),
        "the Hub's server message quoted by huggingface_hub's GatedRepoError",
    ),
    (
        re.compile(r"An error happened while trying to locate the files on the Hub"),
        "huggingface_hub 2.4: LocalEntryNotFoundError of snapshot_download when the Hub is"
        " unreachable or down and nothing is cached",
    ),
    (
        re.compile(r"The Hub could not be reached \("),
        "huggingface_hub 2.4: IncompleteSnapshotError of snapshot_download (interrupted download,"
        " Hub unreachable)",
    ),
)

_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
    }
)


def classify_failure(failure: str | BaseException) -> FailureClass:
    """Sorts a pre-warm failure (an exception, or a log text) into its class.

    For an exception, its whole chain (`__cause__` / `__context__`) counts: integrity anywhere
    wins, then transient anywhere, else "unknown".
    """
    if isinstance(failure, str):
        return _classify_text(failure)
    verdicts = [_classify_exception(e) for e in _chain(failure)]
    if "integrity" in verdicts:
        return "integrity"
    if "transient" in verdicts:
        return "transient"
    return "unknown"


def _classify_text(text: str) -> FailureClass:
    if any(pattern.search(text) for pattern, _ in INTEGRITY_MARKERS):
        return "integrity"
    if any(pattern.search(text) for pattern, _ in TRANSIENT_MARKERS):
        return "transient"
    return "unknown"


def _classify_exception(e: BaseException) -> FailureClass:
    if isinstance(e, PrewarmIntegrityError | SafetensorError):
        return "integrity"
    if isinstance(e, PrewarmTransientError | GatedRepoError):
        return "transient"
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code
        if status >= 500 or status == 429:
            return "transient"
    elif isinstance(e, OfflineModeIsEnabled):
        return "unknown"  # HF_HUB_OFFLINE=1 is a setting, not something that passes
    elif isinstance(
        e,
        ConnectionError
        | TimeoutError
        | http.client.IncompleteRead
        | urllib.error.ContentTooShortError,
    ):
        return "transient"
    elif isinstance(e, httpx2.TransportError | httpx.TransportError):
        if not isinstance(e, httpx2.UnsupportedProtocol | httpx.UnsupportedProtocol):
            return "transient"
    elif isinstance(e, socket.gaierror):
        if e.errno == socket.EAI_AGAIN:
            return "transient"
    elif isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
        return "transient"
    return _classify_text(f"{type(e).__name__}: {e}")


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
