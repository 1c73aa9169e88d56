"""The three serving knobs and the start-up preflight, on real `serve` processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import (
    ServerProcess,
    StartServer,
    clean_env,
    free_port,
    model_variant,
    supervise_argv,
    wait_until,
)

PROMPT_300 = [(7 * i) % 250 + 10 for i in range(300)]


def complete(server: ServerProcess, prompt: list[int] | str, max_tokens: int) -> httpx.Response:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)


# -- preflight ---------------------------------------------------------------------------


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        supervise_argv("serve", "--no-join", *args),
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


INVALID_KNOBS = [
    ("--kv-bits", "MACPROVIDER_KV_BITS", "kv_bits", "7"),
    ("--max-context", "MACPROVIDER_MAX_CONTEXT_OVERRIDE", "max_context_override", "0"),
    ("--max-batch", "MACPROVIDER_MAX_CONCURRENCY_OVERRIDE", "max_concurrency_override", "0"),
    ("--max-batch", "MACPROVIDER_MAX_CONCURRENCY_OVERRIDE", "max_concurrency_override", "two"),
    ("--port", "MACPROVIDER_PORT", "port", "70000"),
    ("--memory-limit-gb", "MACPROVIDER_MEMORY_LIMIT_GB", "memory_limit_gb", "0"),
    ("--memory-limit-gb", "MACPROVIDER_MEMORY_LIMIT_GB", "memory_limit_gb", "-1"),
    ("--memory-limit-gb", "MACPROVIDER_MEMORY_LIMIT_GB", "memory_limit_gb", "nan"),
]


@pytest.mark.parametrize("source", ["cli", "env", "yaml"])
@pytest.mark.parametrize(("flag", "env_name", "yaml_key", "value"), INVALID_KNOBS)
def test_invalid_knob_exits_64_naming_value_and_source(
    tmp_path: Path,
    small_model: Path,
    source: str,
    flag: str,
    env_name: str,
    yaml_key: str,
    value: str,
) -> None:
    config = tmp_path / "config.yaml"
    yaml_value = value if value.isdigit() else f'"{value}"'
    config.write_text(f"{yaml_key}: {yaml_value}\n" if source == "yaml" else "")
    env = clean_env(MACPROVIDER_CONFIG=str(config))
    args = ["--model", str(small_model)]
    if source == "cli":
        args += [flag, value]
    if source == "env":
        env[env_name] = value
    done = run_serve(*args, env=env)
    assert done.returncode == 64, done.stderr
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert value in message
    expected_source = {"cli": flag, "env": env_name, "yaml": str(config)}[source]
    assert expected_source in message


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [("kv_bits: [8\n", "config.yaml"), ("max_concurrency_override: true\n", "boolean")],
)
def test_malformed_or_mistyped_yaml_exits_64(
    tmp_path: Path, small_model: Path, yaml_text: str, fragment: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml_text)
    done = run_serve("--model", str(small_model), "--config", str(config))
    assert done.returncode == 64
    assert fragment in done.stderr and "Traceback" not in done.stderr


def test_unknown_model_exits_66(tmp_path: Path) -> None:
    done = run_serve("--model", str(tmp_path / "missing-model"))
    assert done.returncode == 66
    assert "missing-model" in done.stderr and "Traceback" not in done.stderr


def test_non_loopback_host_without_key_is_refused(small_model: Path) -> None:
    done = run_serve("--model", str(small_model), "--host", "0.0.0.0")
    assert done.returncode == 64
    assert "0.0.0.0" in done.stderr and "API key" in done.stderr


def test_busy_port_exits_69(small_model: Path, shared_server: ServerProcess) -> None:
    done = run_serve("--model", str(small_model), "--port", str(shared_server.port))
    assert done.returncode == 69
    assert str(shared_server.port) in done.stderr


def test_knobs_come_from_env_and_yaml(
    tmp_path: Path, start_server: StartServer, tiny_model: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {tiny_model}\nmax_context_override: 40\nkv_bits: 8\n")
    env = clean_env(MACPROVIDER_CONFIG=str(config), MACPROVIDER_MAX_CONTEXT_OVERRIDE="30")
    server = start_server(tiny_model, env=env)
    assert server.metric("macprovider_kv_cache_bits") == 8  # from YAML
    assert complete(server, [5] * 30, 1).status_code == 200  # env's 30 beats YAML's 40
    assert complete(server, [5] * 31, 1).status_code == 413


# -- max-context -------------------------------------------------------------------------


def test_max_context_gate_is_exact(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model, "--max-context", "64")
    at_limit = complete(server, [11] * 64, 5)
    assert at_limit.status_code == 200
    # With the prompt filling the context, one new token fits and no more.
    assert at_limit.json()["usage"]["completion_tokens"] == 1
    assert at_limit.json()["choices"][0]["finish_reason"] == "length"
    over = complete(server, [11] * 65, 5)
    assert over.status_code == 413
    assert over.json() == {
        "error": {
            "message": "This model's maximum context length is 64 tokens. However, your prompt "
            "resulted in 65 tokens. Please reduce the length of the prompt.",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "context_length_exceeded",
        }
    }
    assert server.metric("macprovider_prompt_tokens_total") == 64  # the refused one never ran


def test_max_context_413_through_openai_client(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model, "--max-context", "16")
    api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    long_chat: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 40}]
    with pytest.raises(openai.APIStatusError) as caught:
        api.chat.completions.create(model=str(tiny_model), messages=long_chat, max_tokens=2)
    assert caught.value.status_code == 413
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"


# -- kv-bits -----------------------------------------------------------------------------


def test_kv_bits_really_quantize_the_cache(start_server: StartServer, small_model: Path) -> None:
    peaks = {}
    texts = {}
    for bits in ("unset", "8", "4"):
        server = start_server(small_model, "--kv-bits", bits)
        reply = complete(server, PROMPT_300, 8)
        assert reply.status_code == 200
        texts[bits] = reply.json()["choices"][0]["text"]
        assert server.metric("macprovider_kv_cache_bits") == (0 if bits == "unset" else int(bits))
        peaks[bits] = server.metric("macprovider_kv_cache_peak_bytes")
        server.stop()
    assert all(texts.values())
    # fp32 keys/values: 4 bytes an element; 8-bit: 1 + 8/64 (scale, bias); 4-bit: 0.5 + 8/64.
    assert peaks["8"] / peaks["unset"] == pytest.approx(1.125 / 4, rel=0.01)
    assert peaks["4"] / peaks["unset"] == pytest.approx(0.625 / 4, rel=0.01)


def test_kv_bits_with_batching_runs_requests_together(
    start_server: StartServer, small_model: Path
) -> None:
    server = start_server(small_model, "--kv-bits", "8", "--max-batch", "4")
    single = complete(server, PROMPT_300[:40], 12).json()["choices"][0]["text"]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: complete(server, PROMPT_300[:40], 12), range(4)))
    assert [r.json()["choices"][0]["text"] for r in replies] == [single] * 4
    assert steps_at_least(server, 4) > 0


# -- max-batch ---------------------------------------------------------------------------


def steps_at_least(server: ServerProcess, width: int) -> float:
    """Decode steps that ran `width` or more sequences together, from the occupancy histogram."""
    total = server.metric("macprovider_batch_occupancy_count")
    narrower = server.metric("macprovider_batch_occupancy_bucket", f'le="{width - 1}.0"')
    return total - narrower


def test_four_streams_decode_together_and_beat_sequential(
    start_server: StartServer, tiny_model: Path
) -> None:
    # `tiny`: MLX's CPU matmul gains little from batching, so the clearest win (about
    # 1.35x here, against 1.1x on `small`) is amortising the per-step overhead.
    server = start_server(tiny_model, "--max-batch", "4")
    prompt = "Once upon a time there was a"
    complete(server, prompt, 4)  # warm-up

    def timed(count: int, workers: int) -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            replies = list(pool.map(lambda _: complete(server, prompt, 48), range(count)))
        assert all(r.json()["usage"]["completion_tokens"] == 48 for r in replies)
        return time.perf_counter() - started

    sequential = timed(4, 1)
    assert steps_at_least(server, 2) == 0
    concurrent = timed(4, 4)
    assert steps_at_least(server, 4) >= 24
    assert concurrent < sequential


# -- queue and disconnects ---------------------------------------------------------------


def open_stream(client: httpx.Client, server: ServerProcess) -> httpx.Response:
    body = {"prompt": "The", "max_tokens": 4000, "stream": True, "temperature": 0}
    request = client.build_request("POST", f"{server.url}/v1/completions", json=body)
    response = client.send(request, stream=True)
    assert response.status_code == 200
    return response


def wait_metric(server: ServerProcess, name: str, value: float) -> None:
    wait_until(lambda: server.metric(name) == value, 30, f"{name} == {value}")


def test_full_queue_answers_503_with_retry_after(
    start_server: StartServer, tiny_model: Path
) -> None:
    server = start_server(tiny_model, "--max-batch", "1", "--max-queue", "1")
    with httpx.Client(timeout=60) as first, httpx.Client(timeout=60) as second:
        running = open_stream(first, server)
        running_lines = running.iter_lines()  # kept: a dropped line iterator closes the stream
        next(running_lines)
        queued = open_stream(second, server)
        wait_metric(server, "macprovider_queued_requests", 1)
        refused = complete(server, "The", 2)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["type"] == "server_error"
        running.close()
        queued.close()
    wait_metric(server, "macprovider_running_requests", 0)
    assert complete(server, "The", 2).status_code == 200


def test_disconnect_frees_the_slot(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model, "--max-batch", "1", "--max-queue", "0")
    with httpx.Client(timeout=60) as client:
        stream = open_stream(client, server)
        lines = stream.iter_lines()
        assert all(next(lines) is not None for _ in range(4))  # a few tokens arrived
        assert complete(server, "The", 2).status_code == 503  # the one slot is busy
        stream.close()
    wait_metric(server, "macprovider_running_requests", 0)
    generated = server.metric("macprovider_generated_tokens_total")
    assert generated < 4000  # it stopped generating, not merely stopped sending
    assert complete(server, "The", 2).status_code == 200


# -- process lifecycle -------------------------------------------------------------------


def test_sigterm_exits_0_and_releases_the_port(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model)
    assert server.stop() == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", server.port))


def test_sigterm_exits_within_5_s_even_if_a_client_stopped_reading(
    start_server: StartServer, tiny_model: Path
) -> None:
    server = start_server(tiny_model)
    with httpx.Client(timeout=60) as client:
        stream = open_stream(client, server)
        lines = stream.iter_lines()  # kept: a dropped line iterator closes the stream
        assert all(next(lines) is not None for _ in range(3))
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 5.5


def test_second_signal_exits_130_at_once(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model)
    with httpx.Client(timeout=60) as client:
        stream = open_stream(client, server)
        lines = stream.iter_lines()
        assert all(next(lines) is not None for _ in range(3))
        server.proc.send_signal(signal.SIGINT)
        wait_until(lambda: "finishing in-flight" in server.log(), 10, "the first signal's log line")
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(timeout=10) == 130


def test_api_key_guards_every_route_but_health(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model, "--api-key", "sekrit")
    assert httpx.get(f"{server.url}/health").status_code == 200
    denied = httpx.get(f"{server.url}/v1/models")
    assert denied.status_code == 401
    assert denied.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sekrit", max_retries=0)
    assert good.completions.create(model=str(tiny_model), prompt="The", max_tokens=2).choices
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=str(tiny_model), prompt="The", max_tokens=2)


def test_no_join_opens_no_connection_to_the_coordinator(
    tmp_path: Path, start_server: StartServer, tiny_model: Path
) -> None:
    with socket.socket() as coordinator:
        coordinator.bind(("127.0.0.1", 0))
        coordinator.listen()
        coordinator.setblocking(False)
        port = coordinator.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(f"coordinator_endpoint: http://127.0.0.1:{port}\n")
        server = start_server(tiny_model, env=clean_env(MACPROVIDER_CONFIG=str(config)))
        assert complete(server, "The", 3).status_code == 200
        server.stop()
        with pytest.raises(BlockingIOError):
            coordinator.accept()


def test_unloadable_weights_exit_65_with_the_loader_reason(
    tmp_path: Path, tiny_model: Path
) -> None:
    broken = model_variant(tiny_model, tmp_path / "broken", {"model.safetensors": b"junk"})
    done = run_serve("--model", str(broken), "--port", str(free_port()))
    assert done.returncode == 65
    assert "cannot load the model" in done.stderr and "Traceback" not in done.stderr
