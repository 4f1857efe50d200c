"""Domain exceptions and the one place that maps every error to an HTTP status and JSON body."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)


class LongdocError(Exception):
    """Base of every error a client may see; subclasses fix the status and the wire type."""

    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.reason = reason or self.error_type


class BadRequest(LongdocError):
    status_code, error_type = 400, "bad_request"


class Unauthorized(LongdocError):
    status_code, error_type = 401, "unauthorized"


class PayloadTooLarge(LongdocError):
    status_code, error_type = 413, "payload_too_large"


class UnsupportedMediaType(LongdocError):
    status_code, error_type = 415, "unsupported_media_type"


class InvalidInput(LongdocError):
    status_code, error_type = 422, "invalid_input"


class Overloaded(LongdocError):
    status_code, error_type = 429, "overloaded"

    def __init__(self, message: str, retry_after_s: int, reason: str = "queue_full") -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))}, reason=reason)
        self.retry_after_s = max(1, retry_after_s)


class Unavailable(LongdocError):
    """A 503 says when to come back, as a 429 does: clients that honour Retry-After (ours, most SDKs) then
    wait for a loading replica instead of spending their retries in a few seconds of backoff."""

    status_code = 503
    retry_after_s = 1

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": str(self.retry_after_s)})


class NotReady(Unavailable):
    error_type = "not_ready"
    retry_after_s = 5  # loading takes seconds to a minute


class Draining(Unavailable):
    error_type = "draining"
    retry_after_s = 1  # behind a load balancer, another replica; alone, the restarted one


class DeadlineExceeded(LongdocError):
    status_code, error_type = 504, "deadline_exceeded"


class ClientClosedRequest(LongdocError):
    """The client went away before the answer; only logs and metrics ever see this status."""

    status_code, error_type = 499, "client_closed_request"


class InferenceFailed(LongdocError):
    status_code, error_type = 500, "inference_failed"


REJECTION_STATUSES = frozenset({401, 408, 413, 429, 503, 504})
# the rejection reasons of the body checks that run while a body streams in (app/middleware.py)
BODY_REJECTIONS = {413: "body_too_large", 408: "body_timeout"}

HTTP_ERROR_TYPES = {
    404: "not_found",
    405: "method_not_allowed",
    400: "bad_request",
    401: "unauthorized",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message}}


def unhandled_error(exc: Exception) -> tuple[int, dict[str, Any]]:
    """A bug: 500 with the exception named. Sent by RequestContextMiddleware, inside the request-id wrapper,
    because Starlette's own last-resort handler runs outside every user middleware (no X-Request-ID) and
    re-raises, which makes the server drop the keep-alive connection."""
    log.exception("unhandled error")
    return 500, error_body("internal_error", f"{type(exc).__name__}: {exc}")


def validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    """Malformed JSON (and undecodable bytes) is a 400; a well-formed body of the wrong shape is a 422."""
    errors = exc.errors()
    for error in errors:
        if error.get("type") in {"json_invalid", "json_type"} or "JSON decode" in str(error.get("msg", "")):
            return 400, "bad_request", f"request body is not valid JSON: {error.get('msg', 'parse error')}"
        if error.get("type") == "missing" and tuple(error.get("loc", ())) == ("body",):
            return 400, "bad_request", "request body is empty: send a JSON object"
    parts = []
    for error in errors[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return 422, "invalid_input", "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; the only code that turns exceptions into HTTP responses."""

    @app.exception_handler(LongdocError)
    async def _domain(request: Request, exc: LongdocError) -> JSONResponse:
        if exc.status_code in REJECTION_STATUSES and not request.url.path.startswith("/health"):
            request.app.state.metrics.rejected.labels(reason=exc.reason).inc()
        return JSONResponse(error_body(exc.error_type, exc.message), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, error_type, message = validation_message(exc)
        return JSONResponse(error_body(error_type, message), status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
        reason = BODY_REJECTIONS.get(exc.status_code)
        if reason is not None:
            request.app.state.metrics.rejected.labels(reason=reason).inc()
        headers = getattr(exc, "headers", None)
        message = http_error_message(exc, request)
        if exc.status_code == 405:
            allowed = ", ".join(allowed_methods(request))
            headers = {**(headers or {}), "Allow": allowed}
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        return JSONResponse(error_body(error_type, message), exc.status_code, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's 405 names only the first route that matched
    the path: `DELETE /` said `Allow: GET`, though `POST /` (the TEI-style route) is served too."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]


def http_error_message(exc: StarletteHTTPException, request: Request) -> str:
    """Starlette's and FastAPI's generic details, made to say what went wrong."""
    path = request.url.path
    if exc.status_code == 404 and exc.detail == "Not Found":
        bare = path.rstrip("/")
        scope = {**request.scope, "path": bare}
        exists = bare != path and any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes)
        hint = f"; did you mean {bare}?" if exists else ""
        return f"no route {request.method} {path}{hint}"
    if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI's "There was an error parsing the body"
        return f"request body is not valid JSON: {str(exc.__cause__)[:200]}"
    return str(exc.detail)
