"""`macprovider-supervise run` on real processes: restart, crash loop, SIGHUP, signals."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import clean_env, free_port, model_variant, supervise_argv, wait_until

READY_S = 60.0


class Run:
    """A `run` process on a free port, with its log and its provider children."""

    def __init__(
        self, tmp_path: Path, *args: str, config: Path | None = None, port: int | None = None
    ):
        self.port = port or free_port()
        self.log_path = tmp_path / "run.log"
        env = clean_env(XDG_STATE_HOME=str(tmp_path / "state"))
        if config is not None:
            env["MACPROVIDER_CONFIG"] = str(config)
        self.proc = subprocess.Popen(
            supervise_argv("run", "--port", str(self.port), *args),
            env=env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def providers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []

    def metric(self, name: str) -> float | None:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.TransportError:
            return None
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return None

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/v1/models"
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.TransportError:
            return False


StartRun = Callable[..., Run]


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[StartRun]:
    """Starts `run` processes (`start_run(*args, config=..., port=...)`); kills leftovers."""
    started: list[Run] = []

    def start(*args: str, config: Path | None = None, port: int | None = None) -> Run:
        run = Run(tmp_path, *args, config=config, port=port)
        started.append(run)
        return run

    yield start
    for run in started:
        for child in run.providers():
            child.kill()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def assert_nothing_left(run: Run, children: list[psutil.Process]) -> None:
    wait_until(lambda: not any(c.is_running() for c in children), 10, "providers gone")
    with socket.socket() as probe:
        # As a server binds (SO_REUSEADDR): a killed peer's TIME_WAIT is no owner.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", run.port))


def test_crash_restarts_then_sigterm_stops_everything_and_exits_0(
    tiny_model: Path, start_run: StartRun
) -> None:
    run = start_run("--model", str(tiny_model))
    wait_until(run.ready, READY_S, "the first provider")
    (first,) = run.providers()
    first.kill()
    wait_until(lambda: "restarting in 1 s" in run.log(), 20, "the crash to be seen")
    wait_until(run.ready, READY_S, "the restarted provider")
    (second,) = run.providers()
    assert second.pid != first.pid
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=30) == 0
    assert_nothing_left(run, [second])
    assert f"provider pid {second.pid} Stopped(returncode=0)" in run.log()


def test_crash_loop_gives_up_with_exit_75(
    tmp_path: Path, tiny_model: Path, start_run: StartRun
) -> None:
    broken = model_variant(tiny_model, tmp_path / "broken", {"model.safetensors": b"junk"})
    run = start_run("--model", str(broken))
    # Five crashes with 1 + 2 + 4 + 8 s between them.
    assert run.proc.wait(timeout=90) == 75
    log = run.log()
    assert "crash loop" in log and "cannot load the model" in log
    assert [line for line in log.splitlines() if "restarting in" in line][-1].endswith(
        "restarting in 8 s"
    )


def test_sighup_restarts_the_provider_with_the_new_kv_bits(
    tmp_path: Path, tiny_model: Path, start_run: StartRun
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_model}\nkv_bits: 8\n")
    run = start_run(config=config)
    wait_until(lambda: run.metric("macprovider_kv_cache_bits") == 8, READY_S, "kv_bits 8")
    config.write_text(f"model: {tiny_model}\nkv_bits: 4\n")
    run.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: run.metric("macprovider_kv_cache_bits") == 4, READY_S, "kv_bits 4")
    assert run.proc.poll() is None


def test_a_bad_config_on_sighup_keeps_the_running_provider(
    tmp_path: Path, tiny_model: Path, start_run: StartRun
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_model}\n")
    run = start_run(config=config)
    wait_until(run.ready, READY_S, "the provider")
    (provider,) = run.providers()
    config.write_text("kv_bits: 7\n")
    run.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "config reload refused" in run.log(), 10, "the refusal")
    assert run.ready() and run.providers() == [provider]


def test_second_sigint_kills_the_provider_and_exits_130(
    tiny_model: Path, start_run: StartRun
) -> None:
    run = start_run("--model", str(tiny_model))
    wait_until(run.ready, READY_S, "the provider")
    children = run.providers()
    body = {"prompt": "The", "max_tokens": 4000, "stream": True}
    with httpx.Client(timeout=30) as client:
        # A stream nobody reads keeps the orderly stop busy for seconds.
        url = f"http://127.0.0.1:{run.port}/v1/completions"
        stream = client.send(client.build_request("POST", url, json=body), stream=True)
        lines = stream.iter_lines()
        next(lines)
        run.proc.send_signal(signal.SIGINT)
        wait_until(lambda: "stopping in order" in run.log(), 10, "the orderly stop")
        run.proc.send_signal(signal.SIGINT)
        assert run.proc.wait(timeout=3) == 130
    assert_nothing_left(run, children)


def test_unknown_model_fails_before_supervising(tmp_path: Path, start_run: StartRun) -> None:
    run = start_run("--model", str(tmp_path / "nope"))
    assert run.proc.wait(timeout=30) == 66
    assert "nope" in run.log() and "Traceback" not in run.log()


def test_kill_9_of_run_takes_its_provider_down_within_2_s(
    tiny_model: Path, start_run: StartRun
) -> None:
    run = start_run("--model", str(tiny_model))
    wait_until(run.ready, READY_S, "the provider")
    children = run.providers()
    run.proc.kill()
    run.proc.wait()
    wait_until(lambda: not any(c.is_running() for c in children), 2, "the orphaned provider")


def test_a_provider_that_stops_answering_health_is_replaced(
    tiny_model: Path, start_run: StartRun
) -> None:
    run = start_run("--model", str(tiny_model))
    wait_until(lambda: "provider ready" in run.log(), READY_S, "the keeper to see it ready")
    (frozen,) = run.providers()
    frozen.suspend()  # alive, port open, but silent: only /health can tell
    # 10 s health interval + 5 s health timeout + 10 s stop grace, then a restart.
    wait_until(lambda: "stopped answering /health" in run.log(), 30, "the health check")
    wait_until(run.ready, READY_S, "the replacement")
    (replacement,) = run.providers()
    assert replacement.pid != frozen.pid and not frozen.is_running()


def test_a_busy_port_is_retried_with_backoff_until_it_frees(
    tiny_model: Path, start_run: StartRun
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # taken before `run` starts: no race
        squatter.listen()
        run = start_run("--model", str(tiny_model), port=squatter.getsockname()[1])
        wait_until(lambda: "could not start" in run.log(), 20, "the busy port to be seen")
        assert run.providers() == [] and run.proc.poll() is None
    wait_until(run.ready, READY_S, "the provider once the port is free")
