"""Load-time measurement: a provider started through the ProviderActor, ready, and one
disposable request answered (a real `serve` on `tiny`), or a one-line reason why not
(the scripted stand-in)."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from macprovider.actors.messages import Exited, Knobs, Loaded, LoadFailed
from macprovider.actors.provider import ProviderProxy, port_is_free, start_provider_actor
from macprovider.actors.warm_load import died_during_load, load_and_warm
from tests.conftest import clean_env, free_port

STANDIN_COMMAND = (sys.executable, str(Path(__file__).with_name("provider_standin.py")))
CALL_TIMEOUT_S = 30.0

StartProvider = Callable[..., ProviderProxy]


@pytest.fixture
def start_provider(tmp_path: Path) -> Iterator[StartProvider]:
    started: list[ProviderProxy] = []

    def start(serve_command: tuple[str, ...] | None = None, **env: str) -> ProviderProxy:
        proxy = start_provider_actor(tmp_path, serve_command=serve_command, env=clean_env(**env))
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop_provider(5.0).get(timeout=CALL_TIMEOUT_S)
        proxy.actor_ref.stop(timeout=CALL_TIMEOUT_S)


@pytest.mark.parametrize(
    ("exited", "reason", "from_outside"),
    [
        (Exited(65, "error: out of memory: 2 GB"), "(exit 65): error: out of memory: 2 GB", False),
        (Exited(-9, ""), "(killed by SIGKILL): no output", True),
        (Exited(-15, "\n  \n"), "(killed by SIGTERM): no output", True),
        (
            Exited(-6, "libc++abi: terminating"),
            "(killed by SIGABRT): libc++abi: terminating",
            False,
        ),
        (Exited(-200, "x"), "(killed by signal 200): x", False),
        (Exited(None, ""), "(exit status unknown): no output", False),
        (
            Exited(1, "Traceback (most recent\n\nValueError: bad"),
            "(exit 1): Traceback (most recent | ValueError: bad",
            False,
        ),
    ],
)
def test_a_death_during_load_is_one_notes_line(
    exited: Exited, reason: str, from_outside: bool
) -> None:
    failed = died_during_load(exited)
    text = failed.reason
    assert text.startswith("provider exited during load") and text.endswith(reason)
    assert "\n" not in text
    assert failed.exited and failed.killed_from_outside is from_outside
    assert exited.describe("while serving") == text.replace("during load", "while serving")


def test_a_real_provider_loads_and_answers_the_disposable_request(
    start_provider: StartProvider, tiny_model: Path
) -> None:
    provider = start_provider()
    port = free_port()
    result = load_and_warm(
        provider, str(tiny_model), port, Knobs(), ready_timeout=120, cancel=threading.Event()
    )
    assert isinstance(result, Loaded) and result.seconds > 0
    handle = provider.handle().get(timeout=CALL_TIMEOUT_S)
    assert handle is not None and "--no-join" in handle.argv  # left running for the probe


def test_a_provider_dying_during_load_reports_its_telling_line(
    start_provider: StartProvider,
) -> None:
    provider = start_provider(STANDIN_COMMAND, STANDIN_MODE="exit-during-load")
    result = load_and_warm(
        provider, "m", free_port(), Knobs(), ready_timeout=30, cancel=threading.Event()
    )
    assert isinstance(result, LoadFailed) and result.exited
    assert "out of memory" in result.reason and result.reason.startswith("provider exited")


def test_a_provider_never_ready_fails_at_the_ready_timeout(start_provider: StartProvider) -> None:
    provider = start_provider(STANDIN_COMMAND, STANDIN_MODE="never-ready")
    result = load_and_warm(
        provider, "m", free_port(), Knobs(), ready_timeout=1.5, cancel=threading.Event()
    )
    assert result == LoadFailed("provider not ready within 1.5 s", exited=False)


def test_cancel_ends_the_wait_at_once(start_provider: StartProvider) -> None:
    provider = start_provider(STANDIN_COMMAND, STANDIN_MODE="never-ready")
    cancel = threading.Event()
    cancel.set()
    result = load_and_warm(provider, "m", free_port(), Knobs(), ready_timeout=60, cancel=cancel)
    assert result == LoadFailed("interrupted", exited=False)


def test_a_busy_port_is_a_failed_load_not_a_crash(start_provider: StartProvider) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not port_is_free(port)
        provider = start_provider(STANDIN_COMMAND)
        result = load_and_warm(
            provider, "m", port, Knobs(), ready_timeout=5, cancel=threading.Event()
        )
    assert isinstance(result, LoadFailed) and not result.exited
    assert result.reason.startswith("provider did not start:") and str(port) in result.reason
