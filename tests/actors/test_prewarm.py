"""`prewarm` (resolve, fetch only when not cached, check) and its actor; the fetch is
replaced, or aimed at a closed loopback port: no test reaches a hub."""

from __future__ import annotations

import errno
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError

from macprovider.actors.prewarm import prewarm, start_prewarm_actor
from macprovider.actors.prewarm_errors import (
    PrewarmError,
    PrewarmIntegrityError,
    PrewarmTransientError,
)
from tests.actors.test_prewarm_classify import chained
from tests.conftest import free_port, model_variant
from tests.model_files import WEIGHTS, hf_cache_repo, offline_hf_cache, weights_of


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test may reach a hub: offline mode, and an empty HF cache of the test's own."""
    return offline_hf_cache(monkeypatch, tmp_path)


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
