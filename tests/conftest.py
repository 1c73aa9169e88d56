"""Shared fixtures: the fixture models, and real `serve` processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 120.0
POLL_INTERVAL = 0.1
# A whole generation on this CPU, real model included.
SLOW_REPLY_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls `predicate` until true, failing with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_INTERVAL)


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` now (Linux: /proc's SigCgt mask).

    Python itself catches only SIGINT at start-up; a caught SIGTERM means our own handlers
    are in place, which is how a test knows a signal will meet them and not the default."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def model_variant(model: Path, dest: Path, replaced: dict[str, bytes]) -> Path:
    """A copy of a fixture model at `dest`: its files symlinked, except `replaced` ones."""
    dest.mkdir(parents=True)
    for item in model.iterdir():
        if item.name not in replaced:
            (dest / item.name).symlink_to(item)
    for name, content in replaced.items():
        (dest / name).write_bytes(content)
    return dest


def supervise_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "macprovider.cli", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the developer's MACPROVIDER_* variables or config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MACPROVIDER_")}
    env["XDG_CONFIG_HOME"] = str(ROOT / "build" / "no-such-config-home")
    env.update(extra)
    return env


class ServerProcess:
    """A real `macprovider-supervise serve` child on a free loopback port."""

    def __init__(self, model: Path, log_path: Path, *flags: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        argv = supervise_argv("serve", "--no-join", "--model", str(model))
        argv += ["--port", str(self.port), *flags]
        key = flags[flags.index("--api-key") + 1] if "--api-key" in flags else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env or clean_env()
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> ServerProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()}")
            try:
                models = httpx.get(f"{self.url}/v1/models", headers=self.headers, timeout=2)
                return models.status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, READY_TIMEOUT, f"{self.url}/v1/models to answer 200")
        return self

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=10).text
        for line in text.splitlines():
            if line.startswith(f"{name}{labels} ") or line.startswith(f"{name}{{{labels}}} "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"metric {name}{labels} not found in:\n{text}")

    def post_ok(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A request that must answer 200; its JSON body."""
        response = httpx.post(f"{self.url}{path}", json=body, timeout=SLOW_REPLY_S)
        assert response.status_code == 200, response.text
        reply: dict[str, Any] = response.json()
        return reply

    def stream_ok(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """A streamed request that must answer 200 and end with `[DONE]`; its data chunks."""
        with httpx.stream("POST", f"{self.url}{path}", json=body, timeout=SLOW_REPLY_S) as reply:
            assert reply.status_code == 200
            lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    # benchkit.places.fixtures_dir does the same, but this module is also imported by child
    # processes (the interrupt harness, the store's writer) that do not have ops/ on sys.path.
    done = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "fixtures.py")],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def small_model(fixtures_dir: Path) -> Path:
    return fixtures_dir / "small"


@pytest.fixture(scope="session")
def tiny_model(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny"


@pytest.fixture(scope="session")
def smollm2_model(fixtures_dir: Path) -> Path:
    """The real pretrained model, SmolLM2-135M-Instruct, dequantized to bfloat16."""
    return fixtures_dir / "smollm2-135m"


@pytest.fixture(scope="session")
def smollm2_q4_model(fixtures_dir: Path) -> Path:
    """The same model as its GGUF's Q4_1/Q8_0 blocks, copied into MLX's layout without loss."""
    return fixtures_dir / "smollm2-135m-q4"


@pytest.fixture(scope="session")
def smollm2_gguf(fixtures_dir: Path) -> Path:
    """The GGUF both are imported from (checked against its published sha256)."""
    return fixtures_dir / ".downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Starts servers on demand (`start_server(model, *flags)`), stops them all afterwards."""
    started: list[ServerProcess] = []

    def start(model: Path, *flags: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(model, tmp_path / f"serve-{len(started)}.log", *flags, env=env)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop()


def long_lived_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, model: Path, *flags: str
) -> Iterator[ServerProcess]:
    """The body of a module- or session-scoped server fixture: one server for many tests."""
    log = tmp_path_factory.mktemp(name) / "serve.log"
    server = ServerProcess(model, log, *flags).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, small_model: Path
) -> Iterator[ServerProcess]:
    """One `small` server at --max-batch 4 for the tests that only need a working API."""
    yield from long_lived_server(tmp_path_factory, "shared", small_model, "--max-batch", "4")
