"""Pre-warm (DESIGN §5, §7): make a model's weights local, check their integrity, and classify
every failure as transient (the candidate is skipped) or integrity (the whole run aborts).

Pure functions first: `resolve_local` finds the files (it never fetches), `check_integrity`
checks them, `classify_failure` sorts an error. `prewarm` chains them, fetching only when the
cache lacks the model, and PrewarmActor runs it on its own thread. The actor also measures
load time (a provider start and one disposable request, in `warm_load`).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import re
import socket
import struct
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import httpx2
import pykka
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
)
from pykka.typing import ActorMemberMixin, proxy_method
from safetensors import SafetensorError

from macprovider.actors.errors import ProviderNotStarted
from macprovider.actors.messages import Knobs, Loaded, LoadFailed
from macprovider.actors.provider import ProviderProxy
from macprovider.actors.warm_load import load_and_warm
from macprovider.server.safetensors_dtypes import DTYPE_BITS

FailureClass = Literal["transient", "integrity", "unknown"]

# Files every model needs besides its weights (DESIGN §5: missing ones are integrity failures).
REQUIRED_FILES = ("config.json", "tokenizer.json")
# The safetensors reference implementation refuses headers above 100 MB (MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1_NAME = re.compile(r"[0-9a-f]{40}")
_HASH_CHUNK = 1 << 20

INTEGRITY_PREFIX = "pre-warm integrity failure"
TRANSIENT_PREFIX = "pre-warm transient failure"


def _one_line(text: str) -> str:
    return " ".join(text.split())


class PrewarmError(Exception):
    """Base of pre-warm's errors; `model` names the model it was about."""

    def __init__(self, message: str, model: str) -> None:
        super().__init__(_one_line(message))
        self.model = model


class PrewarmIntegrityError(PrewarmError):
    """The model's files are incomplete or corrupt: the autotune run must abort."""

    def __init__(self, model: str, file: str, cause: str) -> None:
        super().__init__(f"{INTEGRITY_PREFIX}: {model}: {file}: {cause}", model)
        self.file = file
        self.cause = cause


class PrewarmTransientError(PrewarmError):
    """Fetching failed for a reason that may pass (network, disk full, gated repo)."""

    def __init__(self, model: str, cause: str) -> None:
        super().__init__(f"{TRANSIENT_PREFIX}: {model}: {cause}", model)
        self.cause = cause


class ModelNotCached(PrewarmError):
    """An HF repo id with no complete snapshot in the local cache: pre-warm must fetch it."""

    def __init__(self, model: str, detail: str) -> None:
        super().__init__(f"{model} is not in the local Hugging Face cache: {detail}", model)


@dataclass(frozen=True)
class IntegrityReport:
    """What `check_integrity` found in a model folder that passed."""

    model: str
    folder: Path
    parameters: int  # sum of element counts over every tensor of every safetensors header
    weight_bytes: int  # size of the *.safetensors files
    total_bytes: int  # size of every file of the folder (symlinks followed)
    weight_files: tuple[str, ...]
    hashed_files: tuple[str, ...]  # files checked against a hash the HF cache recorded


def model_name(folder: Path) -> str:
    """`org/name` for a snapshot folder inside an HF cache, else the folder itself."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.removeprefix("models--").replace("--", "/")
    return str(folder)


# ---------------------------------------------------------------------------------------------
# Resolution


def resolve_local(model_id: str, cache_dir: Path | None = None) -> Path:
    """The local folder of `model_id`: a local directory is itself; an HF repo id is its snapshot
    folder in the HF cache (`cache_dir`, by default huggingface_hub's, i.e. HF_HUB_CACHE).

    Never touches the network. Raises ModelNotCached when the repo has no complete snapshot in
    the cache (the caller fetches it then), PrewarmError when `model_id` is neither.
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    try:
        snapshot = snapshot_download(model_id, cache_dir=cache_dir, local_files_only=True)
    except HFValidationError as e:
        raise PrewarmError(
            f"{model_id} is neither a local directory nor a Hugging Face repo id ({e})", model_id
        ) from e
    except LocalEntryNotFoundError as e:  # IncompleteSnapshotError included
        raise ModelNotCached(model_id, str(e)) from e
    return Path(snapshot)


# ---------------------------------------------------------------------------------------------
# Integrity


def check_integrity(folder: Path, model: str | None = None) -> IntegrityReport:
    """Checks a model folder (DESIGN §5 pre-warm) and measures its real size.

    config.json (a JSON object) and tokenizer.json must be there, with at least one
    *.safetensors file; every safetensors header must parse and its tensors must cover the data
    section exactly, back to back; a file the HF cache recorded a hash for (its blob's name, or
    the cached tree listing) must still have that hash. Raises PrewarmIntegrityError naming the
    model and the file.
    """
    name = model or model_name(folder)
    for required in REQUIRED_FILES:
        if not (folder / required).is_file():
            raise PrewarmIntegrityError(name, required, "missing")
    _check_config(name, folder / "config.json")

    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise PrewarmIntegrityError(name, "*.safetensors", "no weight files in the folder")
    _check_shard_index(name, folder, {w.name for w in weights})
    parameters = 0
    for weight in weights:
        if not weight.is_file():
            raise PrewarmIntegrityError(name, weight.name, "missing (dangling symlink)")
        parameters += _check_safetensors(name, weight)

    recorded = _recorded_hashes(folder)
    hashed: list[str] = []
    total_bytes = 0
    for item in sorted(folder.iterdir()):
        if not item.is_file():
            continue
        total_bytes += item.stat().st_size
        if _check_cache_hash(name, item, recorded.get(item.name)):
            hashed.append(item.name)
    return IntegrityReport(
        model=name,
        folder=folder,
        parameters=parameters,
        weight_bytes=sum(w.stat().st_size for w in weights),
        total_bytes=total_bytes,
        weight_files=tuple(w.name for w in weights),
        hashed_files=tuple(hashed),
    )


def _check_config(model: str, path: Path) -> None:
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrewarmIntegrityError(model, path.name, f"not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise PrewarmIntegrityError(model, path.name, "not a JSON object")


def _check_shard_index(model: str, folder: Path, weights: set[str]) -> None:
    """A sharded checkpoint's `model.safetensors.index.json` must name only files present."""
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        return
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        shards = set(weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise PrewarmIntegrityError(model, index.name, f"unreadable ({e})") from e
    missing = sorted(str(shard) for shard in shards - weights)
    if missing:
        raise PrewarmIntegrityError(model, missing[0], f"missing (listed in {index.name})")


def _check_safetensors(model: str, path: Path) -> int:
    """Validates one safetensors file; returns its parameter count."""

    def fail(cause: str) -> PrewarmIntegrityError:
        return PrewarmIntegrityError(model, path.name, cause)

    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise fail(f"{size} bytes is too short for a safetensors header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:
            raise fail(f"header length {header_len} exceeds the format's limit")
        if 8 + header_len > size:
            raise fail(f"header length {header_len} points past the end of the file ({size} bytes)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(f"unreadable header ({e})") from e
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")

    spans: list[tuple[int, int, str]] = []
    parameters = 0
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        begin, end, elements = _tensor_span(info, fail, tensor)
        parameters += elements
        spans.append((begin, end, tensor))

    data_len = size - 8 - header_len
    position = 0
    for begin, end, tensor in sorted(spans):
        if begin != position:
            what = "overlaps the previous one" if begin < position else "leaves a gap before it"
            raise fail(f"tensor {tensor!r} at offset {begin} {what} (expected {position})")
        position = end
    if position > data_len:
        raise fail(f"truncated: tensors need {position} data bytes, the file has {data_len}")
    if position < data_len:
        raise fail(f"{data_len - position} trailing bytes after the last tensor")
    return parameters


def _tensor_span(
    info: Any, fail: Callable[[str], PrewarmIntegrityError], tensor: str
) -> tuple[int, int, int]:
    """(begin, end, element count) of one header entry, checked against its dtype and shape."""
    if not isinstance(info, dict):
        raise fail(f"tensor {tensor!r}: entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise fail(f"tensor {tensor!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise fail(f"tensor {tensor!r}: bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_natural(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise fail(f"tensor {tensor!r}: bad data_offsets {offsets!r}")
    elements = 1
    for d in shape:
        elements *= d
    bits = elements * DTYPE_BITS[dtype]
    begin, end = offsets
    if bits % 8 or end - begin != bits // 8:
        raise fail(f"tensor {tensor!r}: {end - begin} bytes do not hold {dtype} {shape}")
    return begin, end, elements


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _recorded_hashes(folder: Path) -> dict[str, tuple[str, str]]:
    """File name -> (algorithm, hex digest) from the tree listing huggingface_hub (2.4) caches
    for a snapshot at `<repo>/trees/<commit>.json` (format_version 1: `files` maps each path to
    its `blob_id`, the git blob sha1, and for LFS files its `lfs_sha256`). Empty without one."""
    if folder.parent.name != "snapshots":
        return {}
    listing = folder.parent.parent / "trees" / f"{folder.name}.json"
    try:
        files = json.loads(listing.read_bytes())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    recorded: dict[str, tuple[str, str]] = {}
    if isinstance(files, dict):
        for path, info in files.items():
            if not isinstance(info, dict):
                continue
            if isinstance(info.get("lfs_sha256"), str):
                recorded[path] = ("sha256", info["lfs_sha256"])
            elif isinstance(info.get("blob_id"), str):
                recorded[path] = ("git-sha1", info["blob_id"])
    return recorded


def _check_cache_hash(model: str, item: Path, recorded: tuple[str, str] | None) -> bool:
    """Checks a file against the hashes the HF cache recorded for it; False when it has none.

    huggingface_hub stores each file once under `blobs/<etag>` and symlinks it from the
    snapshot: the etag is the sha256 of an LFS file (weights) and the git blob sha1 of a small
    one. It may also have cached the repo's tree listing (`recorded`). A file outside an HF
    cache has no recorded hash.
    """
    expected: list[tuple[str, str]] = []
    if item.is_symlink():
        blob = item.resolve()
        if blob.parent.name == "blobs":
            if _SHA256_NAME.fullmatch(blob.name):
                expected.append(("sha256", blob.name))
            elif _GIT_SHA1_NAME.fullmatch(blob.name):
                expected.append(("git-sha1", blob.name))
    if recorded is not None:
        expected.append(recorded)
    actual: dict[str, str] = {}
    for algorithm, digest in expected:
        if algorithm not in actual:
            actual[algorithm] = _sha256(item) if algorithm == "sha256" else _git_sha1(item)
        if actual[algorithm] != digest:
            raise PrewarmIntegrityError(
                model,
                item.name,
                f"{algorithm} mismatch: cache recorded {digest}, file has {actual[algorithm]}",
            )
    return bool(expected)


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            yield chunk


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def _git_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Classification
#
# The two mistakes are not alike (seed review of the Swift pre-warmer): integrity taken for
# transient silently advances past corrupt weights; transient taken for integrity aborts a run
# that could go on. So integrity markers are checked first, and every marker is a phrase a real
# library prints, never a lone word like "hash", "error" or "corrupt".

# (pattern, where the text comes from)
INTEGRITY_MARKERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(re.escape(INTEGRITY_PREFIX)),
        "macprovider: PrewarmIntegrityError (this module)",
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
        "macprovider: PrewarmTransientError (this module)",
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
    """Sorts a pre-warm failure (an exception, or a log text) into DESIGN §5's classes.

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


# ---------------------------------------------------------------------------------------------
# Pre-warm: resolve, fetch only when not cached, check


Fetch = Callable[[str, Path | None], object]


def fetch_from_hub(model_id: str, cache_dir: Path | None) -> object:
    """Downloads `model_id` into the HF cache (the only network access of pre-warm)."""
    return snapshot_download(model_id, cache_dir=cache_dir)


@dataclass(frozen=True)
class PrewarmOutcome:
    """A model made local and checked; fetch time is kept apart from any measurement."""

    report: IntegrityReport
    fetched: bool
    fetch_seconds: float


def prewarm(
    model_id: str,
    *,
    cache_dir: Path | None = None,
    fetch: Fetch = fetch_from_hub,
    clock: Callable[[], float] = time.monotonic,
) -> PrewarmOutcome:
    """Makes `model_id` local (fetching with `fetch` only when the cache lacks it) and checks it.

    Raises PrewarmIntegrityError or PrewarmTransientError as classify_failure sorts a fetch
    failure; one it cannot sort is raised as a plain PrewarmError with the original as cause.
    """
    fetched, fetch_seconds = False, 0.0
    try:
        folder = resolve_local(model_id, cache_dir)
    except ModelNotCached:
        started = clock()
        try:
            fetch(model_id, cache_dir)
        except Exception as e:
            cause = _one_line(f"{type(e).__name__}: {e}")
            verdict = classify_failure(e)
            if verdict == "transient":
                raise PrewarmTransientError(model_id, cause) from e
            if verdict == "integrity":
                raise PrewarmIntegrityError(model_id, "download", cause) from e
            raise PrewarmError(f"pre-warm failed: {model_id}: {cause}", model_id) from e
        fetched, fetch_seconds = True, clock() - started
        folder = resolve_local(model_id, cache_dir)
    return PrewarmOutcome(check_integrity(folder, model_id), fetched, fetch_seconds)


def local_parameters(model_id: str, cache_dir: Path | None = None) -> int | None:
    """The parameter count of a model already on this machine, from its safetensors headers;
    None when it is not local (nothing is fetched) or unreadable."""
    try:
        folder = resolve_local(model_id, cache_dir)
        weights = sorted(folder.glob("*.safetensors"))
        # Headers only: hashing gigabytes of weights just to rank them is not worth it.
        return sum(_check_safetensors(model_id, weight) for weight in weights) or None
    except (PrewarmError, OSError):
        return None


class PrewarmActor(pykka.ThreadingActor):
    """Pre-warms one model at a time on its own thread (DESIGN §3 PrewarmActor), and measures
    load time through the ProviderActor (the only one that starts providers)."""

    def __init__(
        self,
        *,
        provider: ProviderProxy | None = None,
        cancel: threading.Event | None = None,
        cache_dir: Path | None = None,
        fetch: Fetch = fetch_from_hub,
    ) -> None:
        super().__init__()
        self._provider = provider
        self._cancel = cancel if cancel is not None else threading.Event()
        self._cache_dir = cache_dir
        self._fetch = fetch

    def prewarm(self, model_id: str) -> PrewarmOutcome:
        return prewarm(model_id, cache_dir=self._cache_dir, fetch=self._fetch)

    def load(
        self, model: str, port: int, knobs: Knobs, ready_timeout: float
    ) -> Loaded | LoadFailed:
        """Starts `model`'s provider and measures its load (see `warm_load`)."""
        if self._provider is None:
            raise ProviderNotStarted("measure load time without a ProviderActor")
        return load_and_warm(
            self._provider, model, port, knobs, ready_timeout=ready_timeout, cancel=self._cancel
        )


class PrewarmProxy(ActorMemberMixin, pykka.ActorProxy[PrewarmActor]):
    """The PrewarmActor's methods as mypy sees them through a proxy: each returns a Future."""

    prewarm = proxy_method(PrewarmActor.prewarm)
    load = proxy_method(PrewarmActor.load)


def start_prewarm_actor(
    *,
    provider: ProviderProxy | None = None,
    cancel: threading.Event | None = None,
    cache_dir: Path | None = None,
    fetch: Fetch = fetch_from_hub,
) -> PrewarmProxy:
    """Starts a PrewarmActor and returns its typed proxy."""
    ref = PrewarmActor.start(provider=provider, cancel=cancel, cache_dir=cache_dir, fetch=fetch)
    return cast(PrewarmProxy, ref.proxy())
