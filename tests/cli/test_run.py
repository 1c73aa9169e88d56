"""`macprovider-supervise run` on real processes: restart, crash loop, SIGHUP, signals."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import clean_env, free_port, model_variant, supervise_argv, wait_until

pytestmark = pytest.mark.slow  # real `run` processes, timed through restarts and backoff

READY_S = 60.0


class Run:
    """A `run` process on a free port, with its log and its provider children."""

    def __init__(
        self,
        tmp_path: Path,
        *args: str,
        config: Path | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        key: str | None = None,
    ):
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"  # where the provider should answer
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
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
            text = httpx.get(f"{self.url}/metrics", headers=self.headers, timeout=2).text
        except httpx.TransportError:
            return None
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return None

    def ready(self) -> bool:
        return self.models_status(self.headers) == 200

    def models_status(self, headers: dict[str, str]) -> int | None:
        """What `/v1/models` answers with these headers; None while nothing listens."""
        try:
            return httpx.get(f"{self.url}/v1/models", headers=headers, timeout=2).status_code
        except httpx.TransportError:
            return None

    def seen_ready(self) -> bool:
        """The keeper logged the provider ready: its own readiness poll got through."""
        if self.proc.poll() is not None:
            raise AssertionError(f"run exited {self.proc.returncode}:\n{self.log()}")
        return "provider ready" in self.log()


StartRun = Callable[..., Run]


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[StartRun]:
    """Starts `run` processes (`start_run(*args, config=..., port=..., host=..., key=...)`;
    `host` and `key` are what the test's own requests use); kills leftovers."""
    started: list[Run] = []

    def start(*args: str, **options: Any) -> Run:
        run = Run(tmp_path, *args, **options)
        started.append(run)
        return run

    yield start
    for run in started:
        for child in run.providers():
            child.kill()
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


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


def test_host_and_api_key_reach_the_provider_and_its_readiness_poll(
    tiny_model: Path, start_run: StartRun
) -> None:
    host, key = "127.0.0.2", "k-run-secret"
    run = start_run(
        "--host", host, "--api-key", key, "--max-queue", "3", "--model", str(tiny_model),
        host=host, key=key,
    )  # fmt: skip
    wait_until(run.seen_ready, READY_S, "the keeper to see the keyed provider ready")
    assert run.models_status({}) == 401
    assert run.models_status(run.headers) == 200
    (provider,) = run.providers()
    argv = provider.cmdline()
    assert (flag_value(argv, "--host"), flag_value(argv, "--max-queue")) == (host, "3")
    assert key not in " ".join(argv)  # the key travels in the environment: argv is public
    assert provider.environ()["MACPROVIDER_API_KEY"] == key
    assert key not in run.log()
    assert "restarting" not in run.log() and run.providers() == [provider]


def test_a_key_from_the_yaml_config_still_lets_the_provider_become_ready(
    tmp_path: Path, tiny_model: Path, start_run: StartRun
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_model}\napi_key: k-yaml-secret\n")
    run = start_run(config=config, key="k-yaml-secret")
    wait_until(run.seen_ready, READY_S, "the keeper to see the keyed provider ready")
    assert (run.models_status({}), run.models_status(run.headers)) == (401, 200)


def test_kv_bits_unset_on_the_command_line_beats_the_yaml_config(
    tmp_path: Path, tiny_model: Path, start_run: StartRun
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_model}\nkv_bits: 8\n")
    run = start_run("--kv-bits", "unset", config=config)
    wait_until(run.ready, READY_S, "the provider")
    assert run.metric("macprovider_kv_cache_bits") == 0  # 0: unquantized, as run resolved it
