"""The provider's ASGI app: hooks, authentication, and the one place errors become HTTP."""

from __future__ import annotations

import hmac
import json
import logging

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from macprovider.server import routes
from macprovider.server.connections import mend_connections
from macprovider.server.errors import ApiError, BadRequest, NotFound, ServerError, Unauthorized
from macprovider.server.provider import Provider

log = logging.getLogger("macprovider.serve")

MAX_BODY_BYTES = 8 * 1024 * 1024
RETRY_AFTER_SECONDS = 1
# Liveness probes must work without the key; everything else, /metrics included, needs it.
PUBLIC_PATHS = frozenset({"/health"})


def error_response(error: ApiError) -> Response:
    response = Response(json.dumps(error.body()), status=error.status)
    response.mimetype = "application/json"
    if error.status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _from_http_exception(error: HTTPException) -> ApiError:
    status = error.code or 500
    if status == 413:
        return BadRequest(
            f"request body is larger than {MAX_BODY_BYTES} bytes", status=413, code="body_too_large"
        )
    if status == 404:
        return NotFound(f"no route {request.method} {request.path}", code="not_found")
    return BadRequest(error.description or error.name, status=status)


def create_app(provider: Provider) -> QuartTrio:
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["RESPONSE_TIMEOUT"] = None  # long generations are legitimate
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.before_request
    async def authenticate() -> None:
        key = provider.config.api_key
        if key is None or request.path in PUBLIC_PATHS:
            return
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise Unauthorized("missing or wrong API key", code="invalid_api_key")

    @app.after_request
    async def count(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        provider.metrics.requests.labels(rule, str(response.status_code)).inc()
        return response

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        response = error_response(_from_http_exception(error))
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            # RFC 9110 requires a 405 to say which methods the resource takes.
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unexpected error serving %s", request.path)
        return error_response(ServerError(f"internal error: {error}"))

    routes.register(app, provider)
    # A body a little over the limit is worth reading to keep the connection for the 413;
    # a client answered early gets as long to finish its body as one that is not. (Wrapping
    # `asgi_app` is Quart's way to add ASGI middleware; mypy sees it as replacing a method.)
    app.asgi_app = mend_connections(  # type: ignore[method-assign,assignment]
        app.asgi_app, drain_bytes=2 * MAX_BODY_BYTES, drain_seconds=app.config["BODY_TIMEOUT"]
    )
    return app
