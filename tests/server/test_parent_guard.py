"""A supervised provider dies with its supervisor: the pipe (all platforms) and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import catches, clean_env, free_port, supervise_argv, wait_until


def serve_argv(model: Path, port: int) -> list[str]:
    return supervise_argv("serve", "--no-join", "--model", str(model), "--port", str(port))


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_closing_the_pipe_drains_and_exits_0(tiny_model: Path) -> None:
    read_end, write_end = os.pipe()
    port = free_port()
    env = clean_env(MACPROVIDER_PARENT_FD=str(read_end))
    child = subprocess.Popen(serve_argv(tiny_model, port), env=env, pass_fds=(read_end,))
    os.close(read_end)
    try:
        wait_until(lambda: answers(port), 120, "the provider to be ready")
        os.close(write_end)  # what the kernel does when the supervisor dies
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()


SUPERVISOR = textwrap.dedent(
    """
    import os, subprocess, sys, time
    read_end, write_end = os.pipe()
    env = dict(os.environ, MACPROVIDER_PARENT_FD=str(read_end))
    child = subprocess.Popen(sys.argv[1:], env=env, pass_fds=(read_end,))
    os.close(read_end)
    print(child.pid, flush=True)
    time.sleep(600)
    """
)


def start_supervised(model: Path, port: int) -> tuple[subprocess.Popen[str], psutil.Process]:
    """A stand-in supervisor (a pipe, then a sleep) and the serve it started."""
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, *serve_argv(model, port)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert supervisor.stdout is not None
    return supervisor, psutil.Process(int(supervisor.stdout.readline()))


def test_kill_9_of_the_supervisor_takes_the_provider_down(tiny_model: Path) -> None:
    port = free_port()
    supervisor, provider = start_supervised(tiny_model, port)
    try:
        wait_until(lambda: answers(port), 120, "the provider to be ready")
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait()
        wait_until(lambda: gone(provider), 5, "exit")
    finally:
        if provider.is_running():
            provider.kill()


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's death signal is Linux's")
def test_a_provider_dies_within_half_a_second_of_a_kill_9_even_while_starting(
    tiny_model: Path,
) -> None:
    supervisor, provider = start_supervised(tiny_model, free_port())
    try:
        # Its first lines have run (the death signal is armed before the handlers are
        # installed); the heavy imports and the model load are still ahead of it.
        wait_until(lambda: catches(provider.pid, signal.SIGTERM), 30, "the provider's launcher")
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait()
        killed = time.monotonic()
        wait_until(lambda: gone(provider), 5, "the provider to die")
        assert time.monotonic() - killed < 0.5
    finally:
        if provider.is_running():
            provider.kill()


def gone(process: psutil.Process) -> bool:
    return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE


def test_a_bad_parent_fd_is_a_preflight_error(tiny_model: Path) -> None:
    done = subprocess.run(
        serve_argv(tiny_model, free_port()),
        env=clean_env(MACPROVIDER_PARENT_FD="x9"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 64
    assert "MACPROVIDER_PARENT_FD" in done.stderr and "x9" in done.stderr
