"""ProviderActor: the pure decisions (argv, log names, log tail), then the whole lifecycle
against a scriptable stand-in provider, then the critical path on the real `serve`."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, cast

import httpx
import psutil
import pykka
import pytest

from macprovider.actors.errors import (
    PortBusy,
    ProviderAlreadyRunning,
    ProviderNotStarted,
    SpawnFailed,
)
from macprovider.actors.messages import (
    Exited,
    Killed,
    Knobs,
    ProviderHandle,
    Ready,
    Stopped,
    TimedOut,
)
from macprovider.actors.provider import (
    SERVE_COMMAND,
    ProviderProxy,
    port_is_free,
    provider_url,
    serve_argv,
    start_provider_actor,
)
from macprovider.actors.provider_logs import (
    create_log_file,
    log_file_name,
    model_slug,
    read_log_tail,
    select_stderr_tail,
)
from macprovider.server.config import KNOBS, resolve_serve_config, serve_flags
from macprovider.server.parent_guard import PARENT_FD_ENV
from tests.conftest import clean_env, free_port, wait_until

STANDIN = Path(__file__).with_name("provider_standin.py")
STANDIN_COMMAND = (sys.executable, str(STANDIN))
MODEL = "mlx-community/Fake-1B-4bit"
ACTOR_TIMEOUT = 20.0  # every future: a wedged actor fails the test instead of hanging it
READY_TIMEOUT = 10.0
GONE_TIMEOUT = 5.0


# --- argv ----------------------------------------------------------------------------------

PORT_FLAG = ("--port", "8080")


@pytest.mark.parametrize(
    ("knobs", "middle", "tail"),
    [
        (Knobs(), (), ()),
        (Knobs(kv_bits=4), ("--kv-bits", "4"), ()),
        (Knobs(max_context=4096), ("--max-context", "4096"), ()),
        (Knobs(max_batch=2), ("--max-batch", "2"), ()),
        (Knobs(max_queue=0), ("--max-queue", "0"), ()),
        (Knobs(memory_limit_gb=0.08), ("--memory-limit-gb", "0.08"), ()),
        (Knobs(memory_limit_gb=1e-05), ("--memory-limit-gb", "0.00001"), ()),
        (Knobs(host="0.0.0.0"), (), ("--host", "0.0.0.0")),
        (
            Knobs(kv_bits=8, max_context=2048, max_batch=1),
            ("--kv-bits", "8", "--max-context", "2048", "--max-batch", "1"),
            (),
        ),
    ],
)
def test_argv_always_has_no_join_and_only_the_set_knobs(
    knobs: Knobs, middle: tuple[str, ...], tail: tuple[str, ...]
) -> None:
    expected = ("serve", "--no-join", "--model", "m", *middle, *PORT_FLAG, *tail)
    assert serve_argv(["serve"], "m", 8080, knobs) == expected


def test_argv_reads_back_through_serves_resolver_to_every_knob(tmp_path: Path) -> None:
    knobs = Knobs(
        kv_bits=4, max_context=300, max_batch=3, memory_limit_gb=0.125, max_queue=7, host="::1"
    )
    flags = serve_argv([], "m", 8080, knobs)[1:]  # after --no-join: (flag, value) pairs
    names = {spec.flag: spec.name for spec in KNOBS}
    cli = {names[flag]: value for flag, value in zip(flags[::2], flags[1::2], strict=True)}
    env = clean_env(XDG_CONFIG_HOME=str(tmp_path))
    config = resolve_serve_config(cli, env, ram_bytes=1 << 34)
    assert Knobs(**{f.name: getattr(config, f.name) for f in fields(Knobs)}) == knobs
    assert (config.model, config.port) == ("m", 8080)


def test_the_api_key_is_never_a_flag() -> None:
    with pytest.raises(ValueError, match="MACPROVIDER_API_KEY"):
        serve_flags({"api_key": "k"})


def test_default_serve_command_is_this_interpreter_running_serve() -> None:
    assert (sys.executable, "-m", "macprovider.cli", "serve") == SERVE_COMMAND


# --- log names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "slug"),
    [
        ("mlx-community/Qwen2.5-14B-Instruct-4bit", "mlx-community-Qwen2.5-14B-Instruct-4bit"),
        ("/root/.cache/fixtures/tiny", "root-.cache-fixtures-tiny"),
        ("../../etc/passwd", "etc-passwd"),
        ("a b:c*d", "a-b-c-d"),
        (".hidden", "hidden"),
        ("///", "model"),
        ("", "model"),
        ("/" + "x" * 100 + "/model-7b", ("x" * 100 + "-model-7b")[-80:]),
    ],
)
def test_model_slug_is_one_safe_file_name_part(model: str, slug: str) -> None:
    assert model_slug(model) == slug


def test_log_file_name_is_slug_port_time_token() -> None:
    name = log_file_name("mlx-community/M", 18080, 1764057600, "0a1b2c3d")
    assert name == "mlx-community-M-18080-1764057600-0a1b2c3d.log"


def test_a_colliding_log_name_is_never_reused(tmp_path: Path) -> None:
    tokens = iter(["deadbeef", "deadbeef", "cafebabe"])
    first, fd1 = create_log_file(tmp_path, "m", 1, unix_ts=5, new_token=lambda: next(tokens))
    os.write(fd1, b"first provider\n")
    second, fd2 = create_log_file(tmp_path, "m", 1, unix_ts=5, new_token=lambda: next(tokens))
    os.close(fd1)
    os.close(fd2)
    assert (first.name, second.name) == ("m-1-5-deadbeef.log", "m-1-5-cafebabe.log")
    assert first.read_text() == "first provider\n"


def test_random_log_tokens_are_8_hex(tmp_path: Path) -> None:
    path, fd = create_log_file(tmp_path, "m", 1, unix_ts=5)
    os.close(fd)
    token = path.stem.rsplit("-", 1)[1]
    assert len(token) == 8 and int(token, 16) >= 0


# --- stderr tail ---------------------------------------------------------------------------

CONFIG = "config: model=m port=1\nconfig: kv_bits=None\n"
OOM = "out of memory (needed 812 MiB, 96 MiB free)"


@pytest.mark.parametrize(
    ("log", "tail"),
    [
        ("", ""),
        ("\n\n  \n", ""),
        (CONFIG + f"loading: {OOM}\nconfig: bye\n", f"loading: {OOM}"),
        (CONFIG + "[METAL] Insufficient Memory\nbye\n", "[METAL] Insufficient Memory"),
        ("a\nERROR: weights corrupt\nlater error: x\n", "ERROR: weights corrupt"),
        ("a\nKilled\n", "Killed"),
        (
            'start\nTraceback (most recent call last):\n  File "x.py", line 1\n    boom()\n'
            "ValueError: bad shape\nshutting down\n",
            "Traceback (most recent call last):\nValueError: bad shape",
        ),
        ("1\n2\n3\n4\n5\n6\n7\n", "3\n4\n5\n6\n7"),
        ("only line", "only line"),
        ("x" * 3000 + " error", "x" * 2000),
        ("\n".join("y" * 900 for _ in range(5)), ("\n".join("y" * 900 for _ in range(5)))[-2000:]),
    ],
)
def test_stderr_tail_prefers_the_first_telling_line(log: str, tail: str) -> None:
    assert select_stderr_tail(log) == tail


def test_stderr_tail_is_never_longer_than_2000_chars() -> None:
    assert len(select_stderr_tail("\n".join(["z" * 1999] * 10))) <= 2000


def test_read_log_tail_keeps_the_end_and_drops_the_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    path.write_text("old line\n" * 10 + "last: error\n")
    assert read_log_tail(path, max_bytes=16) == "last: error\n"
    assert read_log_tail(path) == path.read_text()
    assert read_log_tail(tmp_path / "missing.log") == ""


# --- port check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen_on", "host"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.2", "127.0.0.2"),
        ("0.0.0.0", "0.0.0.0"),  # a wildcard bind is checked as such, and on loopback
        ("127.0.0.1", "0.0.0.0"),  # a wildcard bind needs loopback free too
    ],
)
def test_port_is_free_sees_a_listener_on_the_host_it_is_asked_about(
    listen_on: str, host: str
) -> None:
    with socket.socket() as listener:
        listener.bind((listen_on, 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_is_free(port, host)
    assert port_is_free(port, host)


def test_port_is_free_on_one_loopback_address_ignores_another() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.2", 0))
        listener.listen()
        assert port_is_free(listener.getsockname()[1], "127.0.0.3")


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080/health"),
        ("127.0.0.2", "http://127.0.0.2:8080/health"),
        ("0.0.0.0", "http://127.0.0.1:8080/health"),
        ("::", "http://[::1]:8080/health"),
        ("[::]", "http://[::1]:8080/health"),
        ("::1", "http://[::1]:8080/health"),
        ("localhost", "http://localhost:8080/health"),
        ("192.168.1.20", "http://192.168.1.20:8080/health"),
    ],
)
def test_the_supervisor_reaches_a_provider_where_it_binds(host: str, url: str) -> None:
    handle = ProviderHandle(1, 1, 8080, "m", (), Path("p.log"), host)
    assert provider_url(handle, "/health") == url


# --- the actor against the stand-in --------------------------------------------------------

MakeActor = Callable[..., ProviderProxy]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def make_actor(state_dir: Path) -> Iterator[MakeActor]:
    """`make_actor(mode, **env)`: a ProviderActor running the stand-in; stopped afterwards."""
    started: list[ProviderProxy] = []

    def make(mode: str = "ok", **env: str) -> ProviderProxy:
        proxy = start_provider_actor(
            state_dir, serve_command=STANDIN_COMMAND, env=clean_env(STANDIN_MODE=mode, **env)
        )
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.actor_ref.stop(timeout=ACTOR_TIMEOUT)
    assert standin_children() == []


def standin_children() -> list[psutil.Process]:
    """Our live stand-in processes (zombies not yet reaped count as gone)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if str(STANDIN) in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def exited(pid: int) -> bool:
    """The process has ended (reaped, or a zombie waiting for its parent)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def open_fds() -> int:
    return psutil.Process().num_fds()


NO_KNOBS = Knobs()


def start(
    proxy: ProviderProxy,
    port: int | None = None,
    knobs: Knobs = NO_KNOBS,
    api_key: str | None = None,
) -> ProviderHandle:
    port = free_port() if port is None else port
    return proxy.start_provider(MODEL, port, knobs, api_key).get(timeout=ACTOR_TIMEOUT)


def test_ready_then_stopped_leaves_no_process_port_or_fd(
    make_actor: MakeActor, state_dir: Path
) -> None:
    proxy = make_actor("ok", STANDIN_LOAD_DELAY="0.3")
    fds_before = open_fds()
    handle = start(proxy, knobs=Knobs(max_batch=2))
    child = psutil.Process(handle.pid)
    assert handle.pgid == handle.pid == os.getpgid(handle.pid) != os.getpgrp()
    assert handle.argv == serve_argv(STANDIN_COMMAND, MODEL, handle.port, Knobs(max_batch=2))
    assert handle.log_path.parent == state_dir / "logs"
    assert PARENT_FD_ENV in child.environ()
    assert proxy.handle().get(timeout=ACTOR_TIMEOUT) == handle

    assert proxy.wait_ready(READY_TIMEOUT).get(timeout=ACTOR_TIMEOUT) == Ready()
    assert proxy.stop_provider(5.0).get(timeout=ACTOR_TIMEOUT) == Stopped(0)

    assert not psutil.pid_exists(handle.pid)
    assert port_is_free(handle.port)
    assert open_fds() == fds_before
    assert proxy.handle().get(timeout=ACTOR_TIMEOUT) is None
    assert "max_batch=2" in handle.log_path.read_text()


@pytest.mark.parametrize("inherited", [{}, {"MACPROVIDER_API_KEY": "k-stale"}])
def test_the_api_key_is_in_the_childs_environment_never_its_argv(
    make_actor: MakeActor, inherited: dict[str, str]
) -> None:
    def started(api_key: str | None) -> psutil.Process:
        proxy = make_actor(**inherited)
        handle = start(proxy, api_key=api_key)
        assert proxy.wait_ready(READY_TIMEOUT).get(timeout=ACTOR_TIMEOUT) == Ready()
        assert "k-secret" not in " ".join(handle.argv)
        return psutil.Process(handle.pid)

    keyed = started("k-secret")
    assert keyed.environ()["MACPROVIDER_API_KEY"] == "k-secret"
    assert "k-secret" not in " ".join(keyed.cmdline())
    keyless = started(None)  # a key the actor was not given is no key
    assert "MACPROVIDER_API_KEY" not in keyless.environ()


def test_exit_during_load_reports_the_oom_line_not_the_config_echo(make_actor: MakeActor) -> None:
    proxy = make_actor("exit-during-load", STANDIN_LOAD_DELAY="0.2")
    start(proxy)
    result = proxy.wait_ready(READY_TIMEOUT).get(timeout=ACTOR_TIMEOUT)
    assert isinstance(result, Exited)
    assert result.returncode == 1
    assert result.stderr_tail == f"standin: loading weights: {OOM}"


def test_a_dead_provider_does_not_block_the_next_start(make_actor: MakeActor) -> None:
    proxy = make_actor("exit-during-load")
    first = start(proxy)

    # The actor's own view, not the process table's: a leader shows as a zombie while its
    # other threads still exit, and until then it cannot be reaped.
    def seen_dead() -> bool:
        return proxy.check().get(timeout=ACTOR_TIMEOUT) is not None

    wait_until(seen_dead, GONE_TIMEOUT, "the actor to see the stand-in exit")
    second = start(proxy)
    assert second.pid != first.pid
    assert second.log_path != first.log_path


def test_never_ready_times_out_and_still_stops(make_actor: MakeActor) -> None:
    proxy = make_actor("never-ready")
    handle = start(proxy)
    began = time.monotonic()
    assert proxy.wait_ready(1.0).get(timeout=ACTOR_TIMEOUT) == TimedOut()
    assert time.monotonic() - began < 3.0
    assert proxy.stop_provider(5.0).get(timeout=ACTOR_TIMEOUT) == Stopped(0)
    assert not psutil.pid_exists(handle.pid)


def test_a_provider_that_dies_after_its_first_200_is_exited_not_ready(
    make_actor: MakeActor,
) -> None:
    proxy = make_actor("die-after-first-200")
    start(proxy)
    result = proxy.wait_ready(READY_TIMEOUT).get(timeout=ACTOR_TIMEOUT)
    assert isinstance(result, Exited)
    assert result.returncode == 3


def test_ignoring_sigterm_gets_killed_and_leaves_nothing(make_actor: MakeActor) -> None:
    proxy = make_actor("ignore-sigterm")
    handle = start(proxy)
    assert proxy.wait_ready(READY_TIMEOUT).get(timeout=ACTOR_TIMEOUT) == Ready()
    result = proxy.stop_provider(0.5).get(timeout=ACTOR_TIMEOUT)
    assert result == Killed(-9)
    assert port_is_free(handle.port)
    assert not psutil.pid_exists(handle.pid)
    assert standin_children() == []


def test_a_crash_after_ready_is_exited_with_the_exception(make_actor: MakeActor) -> None:
    proxy = make_actor("crash-after", STANDIN_CRASH_AFTER="0.8")
    handle = start(proxy)
    assert proxy.wait_ready(READY_TIMEOUT).get(timeout=ACTOR_TIMEOUT) == Ready()
    wait_until(lambda: exited(handle.pid), GONE_TIMEOUT, "the stand-in to crash")
    result = proxy.wait_ready(READY_TIMEOUT).get(timeout=ACTOR_TIMEOUT)
    assert result == Exited(
        70, "Traceback (most recent call last):\nRuntimeError: simulated crash after 0.8 s"
    )
    assert proxy.stop_provider(5.0).get(timeout=ACTOR_TIMEOUT) == Stopped(70)


def test_a_taken_port_is_refused_before_anything_starts(
    make_actor: MakeActor, state_dir: Path
) -> None:
    proxy = make_actor()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(PortBusy, match=str(listener.getsockname()[1])):
            start(proxy, listener.getsockname()[1])
    assert standin_children() == []
    assert not (state_dir / "logs").exists() or list((state_dir / "logs").iterdir()) == []


def test_a_second_start_while_one_lives_is_refused(make_actor: MakeActor) -> None:
    proxy = make_actor()
    first = start(proxy)
    with pytest.raises(ProviderAlreadyRunning, match=f"pid {first.pid}"):
        start(proxy)
    assert [child.pid for child in standin_children()] == [first.pid]


def test_concurrent_starts_from_two_threads_leave_exactly_one_child(
    make_actor: MakeActor,
) -> None:
    proxy = make_actor()
    barrier = threading.Barrier(2)
    outcomes: list[ProviderHandle | BaseException] = []

    def race() -> None:
        barrier.wait(timeout=ACTOR_TIMEOUT)
        try:
            outcomes.append(start(proxy))
        except ProviderAlreadyRunning as refused:
            outcomes.append(refused)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=ACTOR_TIMEOUT)
    handles = [o for o in outcomes if isinstance(o, ProviderHandle)]
    refusals = [o for o in outcomes if isinstance(o, ProviderAlreadyRunning)]
    assert (len(handles), len(refusals)) == (1, 1)
    assert [child.pid for child in standin_children()] == [handles[0].pid]


@pytest.mark.parametrize("kind", ["missing", "not-executable"])
def test_an_unspawnable_binary_fails_fast_without_leaking_fds(
    kind: str, tmp_path: Path, state_dir: Path
) -> None:
    binary = tmp_path / "macprovider-supervise"
    if kind == "not-executable":
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o644)
    proxy = start_provider_actor(state_dir, serve_command=[str(binary), "serve"], env=clean_env())
    try:
        fds_before = open_fds()
        began = time.monotonic()
        with pytest.raises(SpawnFailed, match=str(binary)):
            start(proxy)
        assert time.monotonic() - began < 1.0
        assert open_fds() == fds_before
        assert proxy.handle().get(timeout=ACTOR_TIMEOUT) is None
        (log_path,) = (state_dir / "logs").iterdir()
        assert "process spawn failed" in log_path.read_text()
    finally:
        proxy.actor_ref.stop(timeout=ACTOR_TIMEOUT)


def test_every_start_gets_its_own_log_file(make_actor: MakeActor, state_dir: Path) -> None:
    proxy = make_actor()
    port = free_port()
    logs = []
    for _ in range(3):  # same model, same port, same second
        logs.append(start(proxy, port).log_path)
        proxy.stop_provider(5.0).get(timeout=ACTOR_TIMEOUT)
    assert len(set(logs)) == 3
    assert sorted(state_dir.joinpath("logs").iterdir()) == sorted(logs)


def test_without_a_provider_stop_is_stopped_and_wait_is_refused(make_actor: MakeActor) -> None:
    proxy = make_actor()
    assert proxy.stop_provider(1.0).get(timeout=ACTOR_TIMEOUT) == Stopped()
    with pytest.raises(ProviderNotStarted):
        proxy.wait_ready(1.0).get(timeout=ACTOR_TIMEOUT)


def test_stopping_the_actor_stops_its_live_child(make_actor: MakeActor) -> None:
    proxy = make_actor()
    handle = start(proxy)
    assert proxy.actor_ref.stop(timeout=ACTOR_TIMEOUT)
    assert not psutil.pid_exists(handle.pid)
    assert port_is_free(handle.port)


def test_an_actor_crash_kills_its_child_group(make_actor: MakeActor) -> None:
    proxy = make_actor("ignore-sigterm")
    handle = start(proxy)
    # A fire-and-forget call that raises is a crash: pykka calls on_failure and stops the actor.
    cast(Any, proxy).start_provider.defer(MODEL, handle.port, Knobs())
    wait_until(lambda: not proxy.actor_ref.is_alive(), GONE_TIMEOUT, "the actor to stop")
    wait_until(lambda: not psutil.pid_exists(handle.pid), GONE_TIMEOUT, "the child to be reaped")
    with pytest.raises(pykka.ActorDeadError):
        proxy.handle().get(timeout=ACTOR_TIMEOUT)


# --- the critical path on the real serve ---------------------------------------------------


def test_real_serve_starts_answers_and_stops_cleanly(tiny_model: Path, state_dir: Path) -> None:
    proxy = start_provider_actor(state_dir, env=clean_env())
    try:
        knobs = Knobs(kv_bits=8, max_context=256, max_batch=2)
        handle = proxy.start_provider(str(tiny_model), free_port(), knobs).get(
            timeout=ACTOR_TIMEOUT
        )
        assert proxy.wait_ready(120.0).get(timeout=130.0) == Ready()

        completion = httpx.post(
            f"http://127.0.0.1:{handle.port}/v1/completions",
            json={"model": str(tiny_model), "prompt": "hello", "max_tokens": 4},
            timeout=30,
        )
        assert completion.status_code == 200
        assert completion.json()["usage"]["completion_tokens"] > 0

        assert proxy.stop_provider(10.0).get(timeout=ACTOR_TIMEOUT) == Stopped(0)
        assert port_is_free(handle.port)
        assert not psutil.pid_exists(handle.pid)
    finally:
        proxy.actor_ref.stop(timeout=ACTOR_TIMEOUT)


def test_real_serve_with_a_key_on_another_host_is_polled_with_the_key_there(
    tiny_model: Path, state_dir: Path
) -> None:
    proxy = start_provider_actor(state_dir, env=clean_env())
    try:
        knobs = Knobs(host="127.0.0.2")
        handle = proxy.start_provider(str(tiny_model), free_port(), knobs, "k-real").get(
            timeout=ACTOR_TIMEOUT
        )
        assert proxy.wait_ready(120.0).get(timeout=130.0) == Ready()
        assert proxy.is_healthy(5.0).get(timeout=ACTOR_TIMEOUT)
        models = f"http://127.0.0.2:{handle.port}/v1/models"
        assert httpx.get(models, timeout=10).status_code == 401
        assert not port_is_free(handle.port, "127.0.0.2")
        assert proxy.stop_provider(10.0).get(timeout=ACTOR_TIMEOUT) == Stopped(0)
        assert port_is_free(handle.port, "127.0.0.2")
    finally:
        proxy.actor_ref.stop(timeout=ACTOR_TIMEOUT)
