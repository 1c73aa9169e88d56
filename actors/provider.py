"""ProviderActor: the only way a provider process starts.

It holds at most one child, a `serve --no-join` in its own process group with a
parent-death pipe, and owns its whole life: start, wait until ready, stop. The
decisions it makes are plain functions: the argv and where to reach the provider here,
the log file's name and which of its lines explain a death in `provider_logs`.

The actor methods are `start_provider` / `stop_provider` rather than `start` / `stop`:
on a pykka actor those two names already mean "start / stop the actor itself".
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, cast

import httpx
import pykka
from pykka.typing import ActorMemberMixin, proxy_method

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
from macprovider.actors.provider_logs import create_log_file, read_log_tail, select_stderr_tail
from macprovider.server.config import API_KEY, serve_flags
from macprovider.server.parent_guard import PARENT_FD_ENV

log = logging.getLogger("macprovider.actors.provider")

SERVE_COMMAND: Final = (sys.executable, "-m", "macprovider.cli", "serve")
LOCALHOST: Final = "127.0.0.1"
LOCALHOST_V6: Final = "::1"

# Readiness polling: quick at first (a small model loads in about a second), then
# backing off so a slow load is not hammered; every request bounded on its own.
POLL_FIRST_S: Final = 0.1
POLL_MAX_S: Final = 0.5
POLL_GROWTH: Final = 1.5
REQUEST_TIMEOUT_S: Final = 2.0

PORT_FREE_TIMEOUT_S: Final = 5.0
PORT_POLL_S: Final = 0.05
KILL_REAP_TIMEOUT_S: Final = 5.0
# serve forces its own exit 4.5 s after SIGTERM; a little more before the SIGKILL.
ON_STOP_GRACE_S: Final = 5.0

# --- decisions: plain functions ------------------------------------------------------------


def serve_argv(
    serve_command: Sequence[str], model: str, port: int, knobs: Knobs
) -> tuple[str, ...]:
    """The provider's command line: always `--no-join`, and only the knobs that are set.

    The flags come from the knob table `serve` itself is built from. The API key is never
    among them: a command line is readable by every user (`ps`), so the key travels in the
    child's environment (see `ProviderActor.start_provider`).
    """
    flags = serve_flags({"model": model, "port": port, **asdict(knobs)})
    return (*serve_command, "--no-join", *flags)


def reach_host(host: str) -> str:
    """Where the supervisor connects to a provider bound to `host` (`serve --host`): a
    wildcard bind (0.0.0.0, ::) is reached on loopback; brackets are dropped."""
    bare = host.strip("[]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return bare  # a name such as localhost: connected to as named
    if address.is_unspecified:
        return LOCALHOST_V6 if address.version == 6 else LOCALHOST
    return bare


def provider_url(handle: ProviderHandle, path: str) -> str:
    """`path` on the provider, as the supervisor reaches it."""
    host = reach_host(handle.host)
    authority = f"[{host}]" if ":" in host else host
    return f"http://{authority}:{handle.port}{path}"


def _auth_headers(api_key: str | None) -> dict[str, str]:
    """What every request to a provider started with `api_key` carries."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True when a server could listen on host:port now (`host` as `serve --host` takes it)."""
    bind_host = host.strip("[]")
    with _tcp_socket(bind_host) as probe:
        # As a server binds: a TIME_WAIT left by the last provider does not count as busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind_host, port))
        except OSError:
            return False
    # macOS lets that bind succeed beside a wildcard listener; a connect still finds it.
    target = reach_host(host)
    with _tcp_socket(target) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((target, port)) != 0


def _tcp_socket(host: str) -> socket.socket:
    # The family as serve chooses it for its own bind: a colon means IPv6.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.socket(family, socket.SOCK_STREAM)


# --- the actor -----------------------------------------------------------------------------


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    handle: ProviderHandle
    guard_fd: int  # write end of the parent-death pipe; the child exits when it closes
    headers: dict[str, str]  # every request to it carries them: its API key, if any


class ProcessGroups:
    """The provider process groups alive right now, readable from any thread.

    A second Ctrl-C must kill our children at once, without waiting for an actor that
    may be busy (e.g. inside `wait_ready`); this is what the main thread reads then.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pgids: set[int] = set()

    def add(self, pgid: int) -> None:
        with self._lock:
            self._pgids.add(pgid)

    def discard(self, pgid: int) -> None:
        with self._lock:
            self._pgids.discard(pgid)

    def kill_all(self) -> None:
        with self._lock:
            for pgid in self._pgids:
                _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pgid, signum)


class ProviderActor(pykka.ThreadingActor):
    """Holds at most one provider child; see the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        *,
        serve_command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        groups: ProcessGroups | None = None,
    ) -> None:
        super().__init__()
        self._groups = groups if groups is not None else ProcessGroups()
        self._logs_dir = state_dir / "logs"
        self._serve_command = tuple(serve_command) if serve_command is not None else SERVE_COMMAND
        self._env = dict(env) if env is not None else None
        self._child: _Child | None = None

    # pykka runs every method below on the actor's one thread, one message at a time:
    # that serialisation is what makes the single-provider invariant hold.

    def start_provider(
        self, model: str, port: int, knobs: Knobs, api_key: str | None = None
    ) -> ProviderHandle:
        """Spawns the provider; refuses while one lives, or when the port is taken.

        `api_key` goes in the child's environment, never its argv (see `serve_argv`); this
        actor's own requests to the child carry it.
        """
        self._refuse_if_running()
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is outside 1-65535")
        host = knobs.host or LOCALHOST
        if not port_is_free(port, host):
            raise PortBusy(port)
        argv = serve_argv(self._serve_command, model, port, knobs)
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        log_path, log_fd = create_log_file(self._logs_dir, model, port, unix_ts=int(time.time()))
        try:
            proc, guard_fd = self._spawn(argv, log_fd, api_key)
        finally:
            os.close(log_fd)  # the child writes through its own copy
        handle = ProviderHandle(proc.pid, proc.pid, port, model, argv, log_path, host)
        self._child = _Child(proc, handle, guard_fd, _auth_headers(api_key))
        self._groups.add(handle.pgid)
        where = f"{host} port {port}"
        log.info("provider started: pid %d, %s on %s, log %s", proc.pid, model, where, log_path)
        return handle

    def wait_ready(self, timeout: float) -> Ready | Exited | TimedOut:
        """Polls `/v1/models` until two 200s from a live process, a death, or `timeout`."""
        child = self._require_child("wait for readiness")
        deadline = time.monotonic() + timeout
        url = provider_url(child.handle, "/v1/models")
        with _client(child) as client:
            return self._poll_ready(child, client, url, deadline)

    def is_healthy(self, timeout: float) -> bool:
        """Whether the child answers `/health` with 200 within `timeout`."""
        child = self._require_child("check health")
        with _client(child) as client:
            return _answers_200(client, provider_url(child.handle, "/health"), timeout)

    def stop_provider(self, grace: float) -> Stopped | Killed:
        """SIGTERM to the child's group, SIGKILL after `grace`; returns once the port is free."""
        child = self._child
        if child is None:
            return Stopped()
        result = self._terminate(child, grace)
        self._release(child)
        self._wait_port_free(child.handle.port, child.handle.host)
        log.info("provider pid %d %s", child.handle.pid, result)
        return result

    def handle(self) -> ProviderHandle | None:
        """The child this actor holds (alive or not yet cleaned up), if any."""
        return self._child.handle if self._child is not None else None

    def check(self) -> Exited | None:
        """How the child ended, if it died on its own; None while it lives (or with none)."""
        child = self._child
        if child is None or child.proc.poll() is None:
            return None
        return self._exited(child)

    def on_stop(self) -> None:
        # Stopping the actor must never leave a provider behind.
        if self._child is not None:
            self.stop_provider(ON_STOP_GRACE_S)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # The actor is going away without on_stop: take the child down at once.
        child = self._child
        if child is not None:
            if child.proc.poll() is None:
                _signal_group(child.handle.pgid, signal.SIGKILL)
                child.proc.wait(timeout=KILL_REAP_TIMEOUT_S)
            self._release(child)

    # --- helpers ---

    def _refuse_if_running(self) -> None:
        child = self._child
        if child is None:
            return
        if child.proc.poll() is None:
            raise ProviderAlreadyRunning(child.handle.pid, child.handle.model, child.handle.port)
        self._release(child)  # it died on its own; nobody stopped it yet

    def _require_child(self, what: str) -> _Child:
        if self._child is None:
            raise ProviderNotStarted(what)
        return self._child

    def _spawn(
        self, argv: tuple[str, ...], log_fd: int, api_key: str | None
    ) -> tuple[subprocess.Popen[bytes], int]:
        read_end, write_end = os.pipe()  # both close-on-exec; pass_fds opens read_end to the child
        env = dict(self._env if self._env is not None else os.environ)
        env[PARENT_FD_ENV] = str(read_end)
        # Set or removed: the key the child resolves is the one this actor's requests carry.
        if api_key:
            env[API_KEY.env] = api_key
        else:
            env.pop(API_KEY.env, None)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=(read_end,),
                # Its own group, so stop signals it and anything it forks, never us.
                # (No preexec_fn: unsafe in a threaded program; serve sets PDEATHSIG itself.)
                start_new_session=True,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            # Popen reports a failed exec synchronously; nothing is left to wait for.
            os.close(write_end)
            reason = getattr(error, "strerror", None) or str(error)
            os.write(log_fd, f"process spawn failed: {argv[0]}: {reason}\n".encode())
            raise SpawnFailed(argv, reason) from error
        finally:
            os.close(read_end)  # only the child's copy must keep the pipe open
        return proc, write_end

    def _poll_ready(
        self, child: _Child, client: httpx.Client, url: str, deadline: float
    ) -> Ready | Exited | TimedOut:
        interval = POLL_FIRST_S
        confirming = False  # the previous poll got a 200
        while True:
            if child.proc.poll() is not None:
                return self._exited(child)
            timeout = max(0.05, min(REQUEST_TIMEOUT_S, deadline - time.monotonic()))
            answered = _answers_200(client, url, timeout)
            # One 200 is not enough: a provider can answer once and die.
            if answered and confirming and child.proc.poll() is None:
                return Ready()
            confirming = answered
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return TimedOut() if child.proc.poll() is None else self._exited(child)
            time.sleep(min(interval, remaining))
            interval = min(interval * POLL_GROWTH, POLL_MAX_S)

    def _exited(self, child: _Child) -> Exited:
        tail = select_stderr_tail(read_log_tail(child.handle.log_path))
        return Exited(child.proc.returncode, tail)

    def _terminate(self, child: _Child, grace: float) -> Stopped | Killed:
        if child.proc.poll() is not None:
            return Stopped(child.proc.returncode)
        _signal_group(child.handle.pgid, signal.SIGTERM)
        try:
            return Stopped(child.proc.wait(timeout=grace))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(child.handle.pgid, signal.SIGKILL)
        return Killed(child.proc.wait(timeout=KILL_REAP_TIMEOUT_S))

    def _release(self, child: _Child) -> None:
        """Forgets a reaped child, after clearing anything left in its process group."""
        assert child.proc.returncode is not None, "release only a reaped child"
        # The leader's id cannot be reused as a group id while members remain, so this
        # reaches only processes our child left behind.
        _signal_group(child.handle.pgid, signal.SIGKILL)
        os.close(child.guard_fd)
        self._groups.discard(child.handle.pgid)
        self._child = None

    def _wait_port_free(self, port: int, host: str) -> None:
        deadline = time.monotonic() + PORT_FREE_TIMEOUT_S
        while not port_is_free(port, host):
            if time.monotonic() > deadline:
                # Our child and its group are gone: whoever holds the port is not ours to
                # stop. The stop succeeded; the next start meets the port and says so.
                log.warning(
                    "port %d still in use %.0f s after the provider stopped: held by another "
                    "process",
                    port,
                    PORT_FREE_TIMEOUT_S,
                )
                return
            time.sleep(PORT_POLL_S)


def _client(child: _Child) -> httpx.Client:
    # trust_env=False: an HTTP(S)_PROXY from the environment must not see loopback traffic.
    return httpx.Client(headers=child.headers, trust_env=False)


def _answers_200(client: httpx.Client, url: str, timeout: float) -> bool:
    try:
        return client.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


class ProviderProxy(ActorMemberMixin, pykka.ActorProxy[ProviderActor]):
    """The ProviderActor's methods as mypy sees them through a proxy: each returns a Future."""

    start_provider = proxy_method(ProviderActor.start_provider)
    wait_ready = proxy_method(ProviderActor.wait_ready)
    is_healthy = proxy_method(ProviderActor.is_healthy)
    stop_provider = proxy_method(ProviderActor.stop_provider)
    handle = proxy_method(ProviderActor.handle)
    check = proxy_method(ProviderActor.check)


def start_provider_actor(
    state_dir: Path,
    *,
    serve_command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    groups: ProcessGroups | None = None,
) -> ProviderProxy:
    """Starts a ProviderActor writing logs under `state_dir/logs` and returns its typed proxy.

    `serve_command` replaces `python -m macprovider.cli serve` (tests use a stand-in);
    `env` replaces the inherited environment of every child; `groups` is where the
    live process groups are published for an emergency kill.
    """
    ref = ProviderActor.start(state_dir, serve_command=serve_command, env=env, groups=groups)
    return cast(ProviderProxy, ref.proxy())
