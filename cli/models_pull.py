"""`models pull ID`: a Hugging Face repo into the HF cache, through huggingface_hub, then checked.

huggingface_hub does the transfer and reads its own settings (HF_ENDPOINT, HF_HUB_OFFLINE,
HF_TOKEN, HF_HUB_CACHE): nothing here overrides them, so a pull lands where `serve`, autotune
and `models list` look. What is ours is the mapping of its errors onto our exit codes, what a
stop signal does mid-transfer, and taking a file the check finds damaged back out of the cache.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import click

from macprovider.actors.prewarm_errors import PrewarmIntegrityError
from macprovider.actors.stop_signals import EXIT_INTERRUPTED, PROG, STOP_SIGNALS
from macprovider.cli.errors import HubUnavailable, ModelIntegrityError
from macprovider.cli.models_verify import check_folder, damage_line
from macprovider.server.errors import ModelNotFoundError

if TYPE_CHECKING:
    from huggingface_hub.errors import HfHubHTTPError

_TOKEN_HINT = "set HF_TOKEN to a token that can read it"
# `user:password@` in a URL: HF_ENDPOINT may carry a proxy's credentials, never to be printed.
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def pull(repo_id: str, revision: str | None, progress: bool) -> Path:
    """The snapshot folder of `repo_id` at `revision` (the default branch when None), fetched
    into the HF cache unless already complete there. Raises ModelNotFoundError (66: no such
    repo, revision or file, or no access) or HubUnavailable (69)."""
    import httpx2
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        FileMetadataError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils.tqdm import disable_progress_bars

    if not progress:
        disable_progress_bars()
    endpoint = _without_credentials(constants.ENDPOINT)
    cache = Path(constants.HF_HUB_CACHE)
    try:
        with _stop_exits_at_once(cache):
            return Path(snapshot_download(repo_id, revision=revision))
    except HFValidationError as e:
        raise click.BadParameter(" ".join(str(e).split()), param_hint="ID") from None
    except GatedRepoError:  # before RepositoryNotFoundError, its base class
        raise ModelNotFoundError(
            f"{repo_id} is gated on {endpoint}: accept its conditions there, and {_TOKEN_HINT}"
        ) from None
    except RepositoryNotFoundError as e:
        if e.response.status_code == 401:
            raise ModelNotFoundError(
                f"{endpoint} refused {repo_id} (401): it is private, gated or missing; "
                f"{_TOKEN_HINT}"
            ) from None
        raise ModelNotFoundError(f"no repo {repo_id} on {endpoint}") from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{repo_id} has no revision {revision!r} on {endpoint}") from None
    except RemoteEntryNotFoundError as e:
        # The repo's file listing names a file its server then answers 404 for: asking again
        # will not bring it, so this is "not found" (66), not "try again later" (69).
        raise ModelNotFoundError(
            f"{endpoint} has no file {_file_of(e)} of {repo_id} (404), though the repo lists it"
        ) from None
    except HfHubHTTPError as e:
        raise _http_error(e.response.status_code, repo_id, endpoint) from None
    except LocalEntryNotFoundError as e:
        # huggingface_hub's answer when the Hub could not be asked and the cache lacks the
        # snapshot: offline mode, a refused or timed-out connection, a server error.
        if constants.is_offline_mode():
            raise HubUnavailable(
                f"HF_HUB_OFFLINE is set and {repo_id} is not complete in the HF cache {cache}; "
                f"unset it to fetch from {endpoint}"
            ) from None
        # A server error is huggingface_hub's HfHubHTTPError over httpx's HTTPStatusError.
        if isinstance(cause := _innermost(e), (HfHubHTTPError, httpx2.HTTPStatusError)):
            raise _http_error(cause.response.status_code, repo_id, endpoint) from None
        raise HubUnavailable(f"cannot reach the Hub at {endpoint}: {_cause(e)}") from None
    except (httpx2.TransportError, FileMetadataError) as e:
        raise HubUnavailable(f"download from {endpoint} failed: {_cause(e)}") from None


def verify_pulled(folder: Path, repo_id: str) -> str:
    """`models verify`'s summary line for the snapshot just pulled; ModelIntegrityError (65)
    naming the damaged file, which is first taken out of the cache.

    huggingface_hub trusts a blob that is there, so a file damaged in transit would otherwise
    stay in the cache for good: every later pull would fetch nothing and fail the same way,
    and `serve` would load it. Without it the snapshot is incomplete (the cache keeps the
    repo's file listing), so `serve` reports the model not cached and the next pull fetches
    that one file again. A file the repo itself publishes broken comes back broken: the next
    pull says so again, which is the truth about that repo."""
    try:
        return check_folder(folder, repo_id)
    except PrewarmIntegrityError as e:
        line = damage_line(repo_id, e)
        if _remove_from_cache(folder, e.file):
            line += f"; {e.file} removed from the cache; pull again"
        raise ModelIntegrityError(line) from None
    except ValueError as e:
        raise ModelIntegrityError(damage_line(repo_id, e)) from None


def _remove_from_cache(snapshot: Path, name: str) -> bool:
    """Unlinks the snapshot's link `name` and the blob it points to; False, touching nothing,
    unless `name` is such a link into this repo's `blobs` folder (the HF cache layout)."""
    link = snapshot / name
    if not link.is_symlink():
        return False
    blob = link.resolve()
    if blob.parent != (snapshot.parent.parent / "blobs").resolve():
        return False
    link.unlink()
    blob.unlink(missing_ok=True)
    return True


def _without_credentials(url: str) -> str:
    """`url` with any `user:password@` taken out, fit to print."""
    return _USERINFO.sub("", url)


def _http_error(status: int, repo_id: str, endpoint: str) -> Exception:
    if status in (401, 403):
        return ModelNotFoundError(
            f"{endpoint} refused {repo_id} ({status}): the token is invalid or lacks access; "
            f"{_TOKEN_HINT}"
        )
    return HubUnavailable(f"{endpoint} answered {status} for {repo_id}; try again later")


def _file_of(error: HfHubHTTPError) -> str:
    """The repo file a `…/resolve/<revision>/<file>` request asked for, else its URL's path."""
    path = urlsplit(str(error.response.request.url)).path
    _, found, file = path.partition("/resolve/")
    return unquote(file.split("/", 1)[-1]) if found else unquote(path)


def _innermost(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def _cause(error: BaseException) -> str:
    """The innermost reason, in one line: huggingface_hub wraps a refused connection in a
    paragraph about checking one's internet connection."""
    error = _innermost(error)
    return _without_credentials(" ".join(f"{type(error).__name__}: {error}".split()))


@contextlib.contextmanager
def _stop_exits_at_once(cache: Path) -> Iterator[None]:
    """A stop signal during the transfer ends the process at once, exit 130.

    The transfer runs in huggingface_hub's worker threads, blocked in socket reads that no
    exception can interrupt (a stalled server would hold an orderly stop for minutes of
    retries). Leaving at once is safe: each file is written to a temporary `.incomplete` blob
    and renamed into the snapshot only when whole, so the cache is left as huggingface_hub
    leaves any interrupted transfer, and a snapshot is never half-written.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        line = f"{PROG}: {name}: pull interrupted; files not yet complete stay out of {cache}\n"
        with contextlib.suppress(OSError):
            os.write(2, line.encode())
        os._exit(EXIT_INTERRUPTED)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
