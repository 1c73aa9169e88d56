"""Run one provider: bind, serve until SIGINT/SIGTERM, drain, exit."""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from macprovider.server.app import create_app
from macprovider.server.config import ServeConfig
from macprovider.server.connections import KEEP_ALIVE_SECONDS
from macprovider.server.errors import PortUnavailable
from macprovider.server.memory_budget import check_memory_budget
from macprovider.server.metrics import Metrics
from macprovider.server.parent_guard import wait_for_parent_exit
from macprovider.server.provider import Provider

log = logging.getLogger("macprovider.serve")

# In-flight requests get this long to finish after SIGTERM; then they are cancelled.
DRAIN_SECONDS = 3.0
# Cancelled streams then get this long to send their last chunk, error and [DONE] before
# Hypercorn is told to close; the drain and this stay within FORCED_EXIT_SECONDS.
WRAP_UP_SECONDS = 1.0
ENGINE_STOP_SECONDS = 1.0
# Hypercorn shields every socket write, so a client that stopped reading can hold the
# drain open forever; past this the process leaves anyway (the OS frees the port).
FORCED_EXIT_SECONDS = 4.5
EXIT_SECOND_SIGNAL = 130


def bind_address(host: str, port: int) -> str:
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads and handed to Hypercorn as is: a
    port checked free and bound later could be taken in between."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Hypercorn sets this only on sockets it makes; accepted connections inherit it, so each
    # SSE chunk leaves at once instead of waiting on Nagle's algorithm.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        listener.bind((host.strip("[]"), port))
    except OSError as exc:
        listener.close()
        reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise PortUnavailable(f"cannot listen on {bind_address(host, port)}: {reason}") from None
    return listener


def run(config: ServeConfig, model_path: Path, *, parent: int | None = None) -> int:
    """Serves until a signal or the end of the `parent` pipe (exit code 0; a second
    signal exits 130 at once), or a failure (raised)."""
    check_memory_budget(config, model_path)
    listener = bind_listener(config.host, config.port)
    provider = trio.run(_serve, config, model_path, parent, listener)
    if provider.failure is not None:
        raise provider.failure
    return 0


async def _watch_parent(provider: Provider, fd: int) -> None:
    await wait_for_parent_exit(fd)
    if not provider.shutdown.is_set():
        log.info("the supervisor is gone: finishing in-flight requests, then exiting")
        provider.shutdown.set()
        _exit_after(FORCED_EXIT_SECONDS, 0)


async def _serve(
    config: ServeConfig, model_path: Path, parent: int | None, listener: socket.socket
) -> Provider:
    provider = Provider(config, model_path, Metrics())
    hypercorn = HypercornConfig()
    hypercorn.bind = [f"fd://{listener.fileno()}"]
    hypercorn.graceful_timeout = DRAIN_SECONDS
    hypercorn.keep_alive_timeout = KEEP_ALIVE_SECONDS
    hypercorn.accesslog = None
    hypercorn.errorlog = log  # one handler for everything the provider says
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, provider)
        if parent is not None:
            nursery.start_soon(_watch_parent, provider, parent)
        await provider.start(nursery)
        # Our drain, not Hypercorn's graceful timeout, ends the requests in flight: Hypercorn
        # would stop listening at once (a new request gets no 503) and then cut the
        # connections mid-stream, before the engine's cancelled events could end them.
        drained = functools.partial(provider.drain, DRAIN_SECONDS, WRAP_UP_SECONDS)
        await hypercorn_serve(create_app(provider), hypercorn, shutdown_trigger=drained)
        nursery.cancel_scope.cancel()
    if provider.engine is not None:
        provider.engine.stop(ENGINE_STOP_SECONDS)
    return provider


def _leave(code: int) -> None:
    logging.shutdown()
    os._exit(code)


def _exit_after(seconds: float, code: int) -> None:
    def leave() -> None:
        log.warning("in-flight connections did not close within %.1f s; exiting anyway", seconds)
        _leave(code)

    timer = threading.Timer(seconds, leave)
    timer.daemon = True
    timer.start()


async def _watch_signals(provider: Provider) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not provider.shutdown.is_set():
                log.info(
                    "%s: finishing in-flight requests, then exiting", signal.Signals(signum).name
                )
                provider.shutdown.set()
                _exit_after(FORCED_EXIT_SECONDS, 0)
            else:
                log.info("second signal: exiting now")
                _leave(EXIT_SECOND_SIGNAL)
