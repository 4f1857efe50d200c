"""Thin HTTP routes; the work lives in ClassifierService, error mapping in app.errors."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from app.errors import BadRequest, ClientClosedRequest, Draining, NotReady, Unauthorized, UnsupportedMediaType
from app.schemas import (
    ClassifyBatchResult,
    ClassifyRequest,
    ClassifyResult,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
)
from app.service import ClassifierService, RequestStats
from app.settings import Settings


def package_version() -> str:
    try:
        return version("longdoc")
    except PackageNotFoundError:
        return "0+unknown"


def error_responses(*codes: int, model: type[BaseModel] = ErrorResponse) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route answers, with the body model it really sends."""
    descriptions = {
        400: "Malformed JSON or undecodable body",
        401: "Missing or wrong API key",
        408: "The request body stopped arriving for body_timeout_s",
        413: "Body, text or chunk count over its limit",
        415: "Content type is not JSON",
        422: "Invalid input (empty text, wrong types, both or neither of text/texts)",
        429: "Overloaded; retry after the Retry-After seconds",
        503: "Not ready or draining",
        504: "request_timeout_s passed",
        500: "Inference failed",
    }
    return {code: {"model": model, "description": descriptions[code]} for code in codes}


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_service(request: Request) -> ClassifierService:
    """The app's service, refusing with 503 while it is not ready to accept work."""
    service: ClassifierService | None = request.app.state.service
    if service is None:
        raise NotReady("the model is still loading")
    # A request that arrived before the drain began is answered (the drain waits for it), however long its
    # body took to upload; only one that arrived after it is sent on to another replica.
    if service.draining and not getattr(request.state, "accepted_before_drain", False):
        raise Draining("the service is draining for shutdown; retry on another replica")
    if not service.batcher.running:
        raise NotReady("the inference worker is not running")
    return service


def require_api_key(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    """When LONGDOC_API_KEY is set: `Authorization: Bearer <key>` or `X-API-Key: <key>` (constant time)."""
    if settings.api_key is None:
        return
    key = settings.api_key.get_secret_value()
    # A non-ASCII key arrives as UTF-8 from curl, as Latin-1 from requests, browsers and Node: take either.
    expected = {key.encode(), key.encode("latin-1")} if _latin1(key) else {key.encode()}
    authorization = request.headers.get("authorization", "")
    # strip(" \t"), not strip(): the Latin-1 text of a UTF-8 key may end in 0x85 or 0xA0, which str.strip eats
    bearer = authorization[7:].strip(" \t") if authorization.lower().startswith("bearer ") else ""
    # Either header may carry it: huggingface_hub's InferenceClient sends the user's HF token as Bearer,
    # so a right X-API-Key must not lose to an unrelated Authorization header.
    candidates = [request.headers.get("x-api-key", ""), bearer]
    # Starlette decodes header bytes as Latin-1: encoding back gives the bytes the client sent.
    sent = [given.encode("latin-1") for given in candidates if given]
    if not any(hmac.compare_digest(given, form) for given in sent for form in expected):
        raise Unauthorized(
            "missing or wrong API key (Authorization: Bearer <key> or X-API-Key)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def require_api_key_for_metrics(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    if settings.auth_metrics:
        require_api_key(request, settings)


def require_json(request: Request) -> None:
    """415 for a declared content type that is not JSON (a missing one is read as JSON), or for a charset
    other than UTF-8, the only encoding JSON has (RFC 8259) and the one the body is decoded with."""
    content_type = request.headers.get("content-type")
    if content_type is None or not content_type.strip():  # an empty header declares nothing either
        return
    media, _, parameters = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"content type {media!r} is not supported; send application/json")
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in {"utf-8", "utf8"}:
            raise UnsupportedMediaType(f"charset {charset!r} is not supported; send the JSON as UTF-8")


def require_plain_body(request: Request) -> None:
    """415 for a compressed body (Content-Encoding): the body limit counts the bytes received, and a
    decompressed body could be any size; without this a gzip body got a 400 about its first byte."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if any(coding.strip() not in {"", "identity"} for coding in encoding.split(",")):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")


async def require_utf8(request: Request) -> None:
    """400 naming the first bad byte; else FastAPI answers 'There was an error parsing the body', or reads
    the UTF-8 form of a surrogate (ED A0 80) as the character. The body is read once: FastAPI reuses it."""
    try:
        body = await request.body()
    except ClientDisconnect:  # FastAPI would make this a 400; it is a departed client, not an error
        raise ClientClosedRequest("the client disconnected while sending the body") from None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"request body is not valid UTF-8: byte 0x{body[exc.start]:02X} at offset {exc.start} ({exc.reason})"
        ) from None


ServiceDep = Annotated[ClassifierService, Depends(get_service)]


class GuardedRoute(APIRoute):
    """Checks the API key, then the content type and encoding, then that the body is UTF-8, before FastAPI
    parses it.

    As dependencies these ran after the body was parsed, so a caller without the key got a 400 for a
    malformed body, which told it something about a route it may not use, after we had parsed its bytes.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            require_api_key(request, get_settings(request))
            require_json(request)
            require_plain_body(request)
            await require_utf8(request)
            return await handler(request)

        return route


router = APIRouter()
classify_router = APIRouter(route_class=GuardedRoute)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@classify_router.post(
    "/classify",
    response_model=ClassifyResult | ClassifyBatchResult,
    responses=error_responses(400, 401, 408, 413, 415, 422, 429, 500, 503, 504),
    summary="Classify one document (`text`) or several (`texts`) of any length",
)
async def classify(
    body: ClassifyRequest, request: Request, service: ServiceDep
) -> ClassifyResult | ClassifyBatchResult:
    return await classify_until_disconnect(body, request, service)


async def classify_until_disconnect(
    body: ClassifyRequest, request: Request, service: ClassifierService, names: list[str] | None = None
) -> ClassifyResult | ClassifyBatchResult:
    """The classification, abandoned (its chunks withdrawn) when the client disconnects; `names` are how
    errors call the texts (the compatible routes' `inputs`)."""
    stats = RequestStats()
    request.state.stats = stats
    work = asyncio.ensure_future(service.classify(body, request.state.received_at, stats, names))
    disconnect = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({work, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
    if work.done():
        return work.result()
    work.cancel()  # the service withdraws the request's queued chunks on its way out
    await asyncio.gather(work, return_exceptions=True)
    raise ClientClosedRequest("the client disconnected before the answer was ready")


# HEAD, as load balancers and uptime checks often probe with it (a wrong method's 405 lists both in `Allow`).
@router.head("/health", include_in_schema=False)
@router.get(
    "/health",
    response_model=HealthResponse,
    responses=error_responses(503),
    summary="Ready: model loaded, warmed up, batcher running, not draining",
)
async def health(request: Request) -> HealthResponse:
    service: ClassifierService | None = request.app.state.service
    if service is None:
        raise NotReady("the model is still loading")
    state = HealthResponse(
        status="ok" if service.ready else "unavailable",
        model_loaded=True,
        warmed_up=service.warmed_up,
        batcher_running=service.batcher.running,
        draining=service.draining,
    )
    if service.draining:
        raise Draining("the service is draining for shutdown")
    if not service.ready:
        problem = service.worker_problem()
        raise NotReady(problem or f"not ready: warmed_up={state.warmed_up} batcher_running={state.batcher_running}")
    return state


@router.head("/health/live", include_in_schema=False)
@router.get(
    "/health/live",
    responses=error_responses(503),
    summary="Live: the process answers HTTP and its inference worker has not died (else restart it)",
)
async def live(request: Request) -> dict[str, str]:
    """200 while loading and draining too; 503 only for a dead or hung worker, which only a restart heals."""
    service: ClassifierService | None = request.app.state.service
    if service is not None and not service.draining:
        problem = service.worker_problem()
        if problem is not None:
            raise NotReady(f"{problem}; restart the process")
    return {"status": "alive"}


@router.get(
    "/info",
    response_model=InfoResponse,
    responses=error_responses(401, 503),
    dependencies=[Depends(require_api_key_for_metrics)],
)
async def info(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> InfoResponse:
    service: ClassifierService | None = request.app.state.service
    if service is None:
        raise NotReady("the model is still loading")
    engine, serving = service.engine, service.serving
    return InfoResponse(
        model=engine.name,
        revision=engine.revision,
        labels=engine.labels,
        multi_label=engine.multi_label,
        max_length=serving.max_length,
        stride=serving.stride,
        window_tokens=service.segmenter.window,
        aggregation=serving.aggregation,
        threshold=serving.threshold,
        device=engine.device_name,
        dtype=engine.dtype_name,
        quantization=engine.quantization,
        num_threads=settings.num_threads,
        max_batch_tokens=service.batcher.max_batch_tokens,
        max_padding_ratio=service.batcher.max_padding_ratio,
        max_batch_size=settings.max_batch_size,
        max_queue_chunks=settings.max_queue_chunks,
        max_document_chars=settings.max_document_chars,
        max_texts_per_request=settings.max_texts_per_request,
        version=package_version(),
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses=error_responses(401),
    dependencies=[Depends(require_api_key_for_metrics)],
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
