"""Pure ASGI middleware: request id, body-size limit, request metrics, in-flight count, access log.

Pure ASGI (not BaseHTTPMiddleware) so the handler's `receive` still reports a client disconnect and the
body limit can count streamed bytes as they arrive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_body, unhandled_error
from app.metrics import Metrics

access_log = logging.getLogger("longdoc.access")

REQUEST_ID_HEADER = b"x-request-id"


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes max_body_bytes (FastAPI re-raises HTTPException).

    The connection stays open: uvicorn reads and drops the rest of the body. Closing it with body bytes
    unread makes the kernel reset it, and a proxy still sending the body (nginx buffers up to its own larger
    limit) can then see a failed upstream instead of this 413: a 502, and the replica marked down.
    """

    def __init__(self, limit: int, received: int) -> None:
        super().__init__(413, f"request body passed max_body_bytes {limit} (received {received} bytes so far)")


class BodyTimeout(HTTPException):
    """Raised from `receive` when a body stops arriving: a stalled upload would otherwise hold its request
    (and a drain waiting for it) forever, since request_timeout_s starts only once the body is in."""

    def __init__(self, timeout_s: float, received: int) -> None:
        message = f"no request body bytes arrived for body_timeout_s {timeout_s:g} s (received {received} bytes)"
        super().__init__(408, message, headers={"Connection": "close"})  # the client is not sending: nothing to reset


class InFlight:
    """Requests currently being handled; the drain waits for `idle`.

    Requests that arrive once `draining` is set are not counted: they can only be refused or be probes and
    scrapes, and a steady stream of them (or one client trickling a body) must not hold the drain open
    until drain_timeout_s after the accepted work has finished.
    """

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self.idle = asyncio.Event()
        self.idle.set()

    def enter(self) -> None:
        self.count += 1
        self.idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int, body_timeout_s: float, in_flight: InFlight
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id = client_request_id(headers.get(REQUEST_ID_HEADER, b"")) or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["received_at"] = started
        status = {"code": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, request_id.encode("latin-1"))]
            await send(message)

        received, body_complete = 0, False

        async def limited_receive() -> Message:
            nonlocal received, body_complete
            if body_complete:  # later calls wait for a disconnect while the request runs: no deadline
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout_s, received) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_complete = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes, received)
            return message

        counted = not self.in_flight.draining
        state["accepted_before_drain"] = counted  # its answer is owed, even if its body is still arriving
        if counted:
            self.in_flight.enter()
        self.metrics.requests_in_flight.inc()  # every request, drain or not: a stuck one shows here
        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                self.metrics.rejected.labels(reason="body_too_large").inc()
                await _send_json(
                    send_with_id,
                    413,
                    error_body(
                        "payload_too_large",
                        f"request body of {int(declared)} bytes exceeds max_body_bytes {self.max_body_bytes}",
                    ),
                )
            else:
                await self.app(scope, limited_receive, send_with_id)
        except Exception as exc:
            if status["started"]:  # half a response is out: only closing the connection is left
                raise
            await _send_json(send_with_id, *unhandled_error(exc))
        finally:
            self.metrics.requests_in_flight.dec()
            if counted:
                self.in_flight.leave()
            elapsed = time.perf_counter() - started
            endpoint = _endpoint(scope)
            self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
            self.metrics.request_duration.labels(endpoint=endpoint).observe(elapsed)
            stats = state.get("stats")
            access_log.log(
                access_level(scope.get("path"), status["code"]),
                "request",
                extra={
                    "access": {
                        "request_id": request_id,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status["code"],
                        "latency_ms": round(elapsed * 1000, 2),
                        "chunks": getattr(stats, "chunks", None),
                        "tokens": getattr(stats, "tokens", None),
                    }
                },
            )


PROBE_PATHS = frozenset({"/health", "/health/live", "/metrics"})
TROUBLE_STATUSES = frozenset({429, 503, 504})  # the service could not keep up (or is going away)


def access_level(path: str | None, status: int) -> int:
    """Probes and scrapes that succeed (most lines of an idle replica: one every few seconds) at debug, and
    at info when they fail (a probe's 503 while loading or draining is the probe doing its job); an answer
    the service could not give a client (429, 503, 504, 5xx) at warning, so LONGDOC_LOG_LEVEL=warning still
    shows every overload and failure; the rest, client errors included, at info."""
    if path in PROBE_PATHS:
        return logging.DEBUG if status < 400 else logging.INFO
    if status >= 500 or status in TROUBLE_STATUSES:
        return logging.WARNING
    return logging.INFO


def _endpoint(scope: Scope) -> str:
    """The route template for the metrics label, or the label a route class names (the demo page's).
    A request refused before routing (a 413 on its declared length) or served by a plain Starlette route
    (/docs) is matched against the app's routes here, so no real traffic hides as "unmatched"; the path
    stands for the template, as only the demo page's asset route has a path parameter."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return str(getattr(route, "metrics_endpoint", route.path))
    router = getattr(scope.get("app"), "router", None)
    best = None  # a full match (path and method) wins over a route with this path but another method
    for candidate in getattr(router, "routes", ()):
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            best = candidate
            break
        if match is Match.PARTIAL and best is None:
            best = candidate
    if best is None:
        return "unmatched"
    return str(getattr(best, "metrics_endpoint", scope.get("path", "unmatched")))


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def client_request_id(raw: bytes, limit: int = 200) -> str:
    """The client's id, at most `limit` bytes, echoed byte for byte (header bytes map 1:1 to Latin-1). A
    UTF-8 id is cut between whole characters, so the echo is still UTF-8 and a prefix of what was sent."""
    if len(raw) <= limit:
        return raw.decode("latin-1")
    cut = raw[:limit]
    for back in range(min(4, len(cut))):  # a UTF-8 character is at most 4 bytes
        try:
            cut[: len(cut) - back].decode("utf-8")
        except UnicodeDecodeError:
            continue
        cut = cut[: len(cut) - back]
        break
    return cut.decode("latin-1")
