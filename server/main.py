"""Run one provider: bind, serve until SIGINT/SIGTERM, drain, exit."""

from __future__ import annotations

import errno
import logging
import signal
import socket
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from macprovider.server.app import create_app
from macprovider.server.config import ServeConfig
from macprovider.server.errors import PortUnavailable
from macprovider.server.metrics import Metrics
from macprovider.server.provider import Provider

log = logging.getLogger("macprovider.serve")

# In-flight requests get this long to finish after SIGTERM; then they are cancelled.
DRAIN_SECONDS = 4.0
ENGINE_STOP_SECONDS = 1.0
EXIT_SECOND_SIGNAL = 130


def bind_address(host: str, port: int) -> str:
    return f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise PortUnavailable(
                f"cannot listen on {bind_address(host, port)}: {reason}"
            ) from None


def run(config: ServeConfig, model_path: Path) -> int:
    """Serves until a signal (exit code 0, or 130 after a second one) or a failure (raised)."""
    check_port_free(config.host, config.port)
    provider = trio.run(_serve, config, model_path)
    if provider.failure is not None:
        raise provider.failure
    return EXIT_SECOND_SIGNAL if provider.forced_exit else 0


async def _serve(config: ServeConfig, model_path: Path) -> Provider:
    provider = Provider(config, model_path, Metrics())
    hypercorn = HypercornConfig()
    hypercorn.bind = [bind_address(config.host, config.port)]
    hypercorn.graceful_timeout = DRAIN_SECONDS
    hypercorn.accesslog = None
    hypercorn.errorlog = log  # one handler for everything the provider says
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, provider, nursery.cancel_scope)
        await hypercorn_serve(
            create_app(provider), hypercorn, shutdown_trigger=provider.shutdown.wait
        )
        nursery.cancel_scope.cancel()
    if provider.engine is not None:
        provider.engine.stop(ENGINE_STOP_SECONDS)
    return provider


async def _watch_signals(provider: Provider, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if not provider.shutdown.is_set():
                log.info(
                    "%s: finishing in-flight requests, then exiting", signal.Signals(signum).name
                )
                provider.shutdown.set()
            else:
                log.info("second signal: exiting now")
                provider.forced_exit = True
                scope.cancel()
