"""How `avfeat serve` answers a failure: a status and a JSON body of one line,
``{"error": "..."}``, counted in the metrics by endpoint and kind.

A request's mistake is a 4xx; the cache, index or heads behind the service being unable to do
it a 503; an unexpected failure a 500 with one line (the traceback goes to the server log only).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from avfeat.core.errors import AvfeatError, CacheError, CheckpointError, SearchIndexError
from avfeat.index.serve.access import UploadTooLarge
from avfeat.index.serve.metrics import Metrics
from avfeat.index.serve.service import UnknownVideo


def status_of(error: Exception) -> int:
    """The HTTP status of a user-facing error: the request's fault (4xx) or the server's state (503)."""
    if isinstance(error, UploadTooLarge):
        return 413
    if isinstance(error, UnknownVideo):
        return 404
    if isinstance(error, (CacheError, SearchIndexError, CheckpointError)):
        return 503  # the cache, index or heads behind the service cannot do this
    return 400


def validation_message(error) -> str:
    """FastAPI's (or pydantic's) list of validation problems as one line: ``k (query): must be >= 1``."""
    parts = []
    for problem in error.errors()[:3]:
        where = [str(p) for p in problem.get("loc", ()) if p not in ("body",)]
        name = where[-1] if where else "request"
        place = f" ({where[0]})" if len(where) > 1 and where[0] in ("query", "path") else ""
        parts.append(f"{name}{place}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def endpoint_of(app: FastAPI, scope) -> str:
    """The route template that serves ``scope`` (also for requests refused before routing)."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in app.routes if r.matches(scope)[0] is Match.FULL), None)
    return getattr(route, "path", None) or "unmatched"


def error_response(app: FastAPI, metrics: Metrics, scope, status: int, message: str, kind: str) -> JSONResponse:
    """``{"error": message}`` with ``status``, counted as an error of ``kind`` at the request's
    endpoint; the server's folders are named, never shown (``Service.hide_paths``)."""
    metrics.error(endpoint_of(app, scope), kind)
    service = getattr(app.state, "service", None)
    if service is not None:
        message = service.hide_paths(message)
    return JSONResponse({"error": message}, status_code=status)


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every failure as one line: avfeat's errors, bad parameters, HTTP errors (404, 405...) and the unexpected."""

    @app.exception_handler(AvfeatError)
    async def _user_error(request: Request, error: AvfeatError):
        return error_response(app, metrics, request.scope, status_of(error), str(error), type(error).__name__)

    @app.exception_handler(RequestValidationError)
    async def _bad_parameters(request: Request, error: RequestValidationError):
        return error_response(app, metrics, request.scope, 422, validation_message(error), "RequestValidationError")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        return error_response(app, metrics, request.scope, error.status_code, str(error.detail), f"HTTP{error.status_code}")

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, error: ClientDisconnect):
        # The client's doing (a body cut short): a 4xx it will not read, and no traceback in the log.
        return error_response(app, metrics, request.scope, 400, "the client closed the connection before its body arrived", "ClientDisconnect")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        # Starlette raises the error on after this answer, so the server logs its traceback.
        message = f"internal error ({type(error).__name__}); the server log has the details"
        return error_response(app, metrics, request.scope, 500, message, type(error).__name__)
