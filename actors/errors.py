"""The actor layer's errors: one family, each name saying what happened."""

from __future__ import annotations

from collections.abc import Sequence


class ActorError(Exception):
    """Base of the errors actors raise on purpose."""


class ProviderAlreadyRunning(ActorError):
    """A start was refused: this actor already has a live provider (single-provider invariant)."""

    def __init__(self, pid: int, model: str, port: int) -> None:
        super().__init__(f"a provider is already running: pid {pid}, {model} on port {port}")
        self.pid = pid
        self.model = model
        self.port = port


class ProviderNotStarted(ActorError):
    """A request needs a provider, and none was started (or it was already stopped)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"cannot {what}: no provider was started")


class PortBusy(ActorError):
    """Something else listens on the port, before a start or still after a stop."""

    def __init__(self, port: int, detail: str = "already in use") -> None:
        super().__init__(f"port 127.0.0.1:{port} is busy: {detail}")
        self.port = port


class SpawnFailed(ActorError):
    """The provider's executable could not be started at all."""

    def __init__(self, argv: Sequence[str], reason: str) -> None:
        executable = argv[0] if argv else "<empty command>"
        super().__init__(f"cannot start provider {executable}: {reason}")
        self.argv = tuple(argv)
        self.reason = reason
