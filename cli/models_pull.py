"""`models pull ID`: a Hugging Face repo into the HF cache, through huggingface_hub.

huggingface_hub does the transfer and reads its own settings (HF_ENDPOINT, HF_HUB_OFFLINE,
HF_TOKEN, HF_HUB_CACHE): nothing here overrides them, so a pull lands where `serve`, autotune
and `models list` look. What is ours is the mapping of its errors onto our exit codes, and what
a stop signal does mid-transfer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click

from macprovider.actors.stop_signals import EXIT_INTERRUPTED, PROG, STOP_SIGNALS
from macprovider.cli.errors import HubUnavailable
from macprovider.server.errors import ModelNotFoundError

_TOKEN_HINT = "set HF_TOKEN to a token that can read it"


def pull(repo_id: str, revision: str | None, progress: bool) -> Path:
    """The snapshot folder of `repo_id` at `revision` (the default branch when None), fetched
    into the HF cache unless already complete there. Raises ModelNotFoundError (66: no such
    repo or revision, or no access) or HubUnavailable (69)."""
    import httpx2
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        FileMetadataError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils.tqdm import disable_progress_bars

    # huggingface_hub's HTTP client (a fork of httpx) logs every request at INFO: noise.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    if not progress:
        disable_progress_bars()
    endpoint = constants.ENDPOINT
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
    except HfHubHTTPError as e:
        status = e.response.status_code
        if status in (401, 403):
            raise ModelNotFoundError(
                f"{endpoint} refused {repo_id} ({status}): the token is invalid or lacks access; "
                f"{_TOKEN_HINT}"
            ) from None
        raise HubUnavailable(
            f"{endpoint} answered {status} for {repo_id}; try again later"
        ) from None
    except LocalEntryNotFoundError as e:
        # huggingface_hub's answer when the Hub could not be asked and the cache lacks the
        # snapshot: offline mode, a refused or timed-out connection, a server error.
        if constants.is_offline_mode():
            raise HubUnavailable(
                f"HF_HUB_OFFLINE is set and {repo_id} is not complete in the HF cache {cache}; "
                f"unset it to fetch from {endpoint}"
            ) from None
        raise HubUnavailable(f"cannot reach the Hub at {endpoint}: {_cause(e)}") from None
    except (httpx2.TransportError, FileMetadataError) as e:
        raise HubUnavailable(f"download from {endpoint} failed: {_cause(e)}") from None


def _cause(error: BaseException) -> str:
    """The innermost reason, in one line: huggingface_hub wraps a refused connection in a
    paragraph about checking one's internet connection."""
    while error.__cause__ is not None:
        error = error.__cause__
    return " ".join(f"{type(error).__name__}: {error}".split())


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
