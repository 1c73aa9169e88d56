"""The provider layer's exception family.

Start-up errors (`ServeError` subclasses) become process exit codes in
`macprovider.cli.exits`; request errors (`ApiError` subclasses) carry their
HTTP status here and become OpenAI-style error bodies in
`macprovider.server.app`. Nowhere else maps them.
"""

from __future__ import annotations


class ServeError(Exception):
    """Something stops the provider from starting; the message is one line for the operator."""


class ConfigError(ServeError):
    """A knob's value is invalid; the message names the value and where it came from."""


class ModelNotFoundError(ServeError):
    """The model id or path does not resolve to local weights."""


class ModelLoadError(ServeError):
    """The weights are present but the loader refused them."""


class MemoryBudgetExceeded(ServeError):
    """Serving the model at these knobs would need more memory than `--memory-limit-gb`."""


class EngineDied(ServeError):
    """The engine thread ended while the server was meant to be serving."""


class PortUnavailable(ServeError):
    """The address to listen on is taken or cannot be bound."""


class ApiError(Exception):
    """A request the server refuses; carries the OpenAI error fields."""

    status = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401
    error_type = "authentication_error"


class NotFound(ApiError):
    status = 404


class ContextLengthExceeded(ApiError):
    status = 413


class ServerError(ApiError):
    status = 500
    error_type = "server_error"


class Overloaded(ApiError):
    status = 503
    error_type = "server_error"


class NotReady(ApiError):
    status = 503
    error_type = "server_error"


class ShuttingDown(ApiError):
    status = 503
    error_type = "server_error"
