"""Python client for the longdoc service: typed results, one pooled connection, bounded retries on 429/503.

    from longdoc.client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.classify(open("report.txt").read(), return_chunks=True)
        print(result.label, result.score, result.top_chunks[0].excerpt)

`AsyncClient` has the same methods, awaitable. A 429 or 503 is retried after the server's Retry-After
(capped by `max_retry_wait_s`; without the header, an exponential backoff), at most `max_retries` times;
every other error, and the last refusal, raises `APIError`.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})

Aggregation = Literal["mean_logits", "max_logits", "mean_probs", "weighted_mean_logits"]
T = TypeVar("T")


def _build(cls: type[T], data: dict[str, Any]) -> T:
    """A dataclass from a JSON object, ignoring fields a newer server may add."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class Chunk:
    """One window of the document: `text[start:end]` (code points), its scores and its share of the decision."""

    start: int
    end: int
    num_tokens: int
    label: str
    score: float
    scores: list[LabelScore]
    contribution: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chunk:
        return _build(cls, {**data, "scores": [_build(LabelScore, s) for s in data["scores"]]})


@dataclass(frozen=True)
class DecisiveChunk:
    """One of the chunks that weighed most for the document's label, with the start of its text."""

    index: int
    start: int
    end: int
    contribution: float
    score: float
    excerpt: str


@dataclass(frozen=True)
class Classification:
    """The service's answer for one document (see the HTTP contract in the README)."""

    label: str
    score: float
    scores: list[LabelScore]
    num_chunks: int
    num_tokens: int
    aggregation: str
    model: str
    truncated: bool = False
    labels: list[str] | None = None
    chunks: list[Chunk] | None = None
    top_chunks: list[DecisiveChunk] | None = None
    request_id: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any], request_id: str | None = None) -> Classification:
        chunks = data.get("chunks")
        top = data.get("top_chunks")
        return _build(
            cls,
            {
                **data,
                "scores": [_build(LabelScore, s) for s in data["scores"]],
                "chunks": None if chunks is None else [Chunk.from_json(c) for c in chunks],
                "top_chunks": None if top is None else [_build(DecisiveChunk, c) for c in top],
                "request_id": request_id,
            },
        )


@dataclass(frozen=True)
class ServiceInfo:
    """What `GET /info` reports: the model and the effective serving settings."""

    model: str
    revision: str
    labels: list[str]
    multi_label: bool
    max_length: int
    stride: int
    aggregation: str
    device: str
    dtype: str
    quantization: str
    version: str
    max_document_chars: int
    max_texts_per_request: int
    # Optional, so that this client still reads a server that does not report them.
    window_tokens: int | None = None
    threshold: float | None = None
    num_threads: int | None = None
    max_batch_tokens: int | None = None
    max_padding_ratio: float | None = None
    max_batch_size: int | None = None
    max_queue_chunks: int | None = None


def _check_unicode(text: str, where: str) -> None:
    """A str that cannot be sent as UTF-8 (lone surrogates, e.g. from bytes decoded with surrogateescape)
    is refused here with its position, before any request."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{where} is not valid Unicode: lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}"
        ) from None


class APIError(Exception):
    """An error answer of the service: its status, wire type and message (and Retry-After for 429/503)."""

    def __init__(
        self,
        status_code: int,
        error_type: str,
        message: str,
        *,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {error_type}: {message}")
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    @classmethod
    def from_response(cls, response: httpx.Response) -> APIError:
        error_type, message = "http_error", response.text[:500] or response.reason_phrase
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error_type = str(body["error"].get("type", error_type))
            message = str(body["error"].get("message", message))
        return cls(
            response.status_code,
            error_type,
            message,
            request_id=response.headers.get("x-request-id"),
            retry_after_s=retry_after(response),
        )


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, from delta-seconds or an HTTP date; None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" parses as naive, which .timestamp() would read as local time
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


def service_url(url: str) -> str:
    """The service's base URL without a trailing slash; ValueError unless it is http(s)://host[:port][/path].
    `localhost:8000` would otherwise read as scheme "localhost" and fail later as a baffling connection error."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"the service URL is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.query or parsed.fragment:
        shown = str(parsed.copy_with(password="***")) if parsed.password else url  # error lines end up in logs
        raise ValueError(
            f"the service URL must be http:// or https://, a host, and at most a port and a path; got {shown!r}"
        )
    return url.rstrip("/")


def _text_list(texts: list[str]) -> list[str]:
    """classify_many("one text") would send one request text per character."""
    if isinstance(texts, str):
        raise TypeError("classify_many takes a list of texts; for one text use classify")
    return list(texts)


class _Base:
    """What both clients share: configuration, request bodies, retry delays and response parsing."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout,
        max_retries: int,
        max_retry_wait_s: float,
    ) -> None:
        if max_retries < 0 or max_retry_wait_s < 0:
            raise ValueError("max_retries and max_retry_wait_s must be >= 0")
        self.base_url = service_url(base_url or os.environ.get("LONGDOC_URL") or DEFAULT_URL)
        # as the service does: a secret file's final newline is no part of the key (and no header may hold it)
        self.api_key = api_key.strip() if api_key else None
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=10.0)
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s

    def _headers(self, request_id: str | None) -> dict[bytes, bytes]:
        """As UTF-8 bytes: httpx refuses a non-ASCII str header value; the service reads UTF-8 keys."""
        headers = {b"Accept": b"application/json"}
        if self.api_key:
            headers[b"Authorization"] = f"Bearer {self.api_key}".encode()
        if request_id:
            headers[b"X-Request-ID"] = request_id.encode()
        return headers

    def _delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None when this answer is final."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        server = retry_after(response)
        # Jitter either way: clients refused together must not all come back at the same instant.
        if server is None:
            return self._backoff(attempt)
        return min(server * (1 + random.random() / 4), self.max_retry_wait_s)

    def _connect_delay(self, error: httpx.ConnectError, attempt: int) -> float | None:
        """A refused connection (a replica restarting, the port not open yet) never reached the service,
        so it is retried like a 503; None when the retries are spent, or for a name that does not resolve
        or a TLS failure (a configuration error: retrying only delays the message)."""
        if attempt >= self.max_retries or not _refused(error):
            return None
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        return min(0.5 * 2.0**attempt * (1 + random.random() / 2), self.max_retry_wait_s)

    @staticmethod
    def _body(
        texts: str | list[str],
        return_chunks: bool,
        aggregation: Aggregation | None,
        max_chunks: int | None,
        top_k_chunks: int | None,
    ) -> dict[str, Any]:
        for index, text in enumerate([texts] if isinstance(texts, str) else texts):
            name = "text" if isinstance(texts, str) else f"texts[{index}]"
            if not isinstance(text, str):
                raise TypeError(f"{name} must be a str, got {type(text).__name__}")
            _check_unicode(text, name)
        body: dict[str, Any] = {"text": texts} if isinstance(texts, str) else {"texts": texts}
        if return_chunks:
            body["return_chunks"] = True
        if aggregation is not None:
            body["aggregation"] = aggregation
        if max_chunks is not None:
            body["max_chunks"] = max_chunks
        if top_k_chunks is not None:
            body["top_k_chunks"] = top_k_chunks
        return body

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise APIError.from_response(response)
        try:
            return response.json()
        except ValueError:  # e.g. a proxy's login page answering 200 in place of the service
            kind = response.headers.get("content-type", "no content type")
            raise APIError(
                response.status_code,
                "invalid_response",
                f"expected JSON from the service, got {kind}: {response.text[:200]!r}",
                request_id=response.headers.get("x-request-id"),
            ) from None

    @classmethod
    def _classification(cls, response: httpx.Response) -> Classification:
        return cls._parsed(response, lambda data, rid: Classification.from_json(data, rid))

    @classmethod
    def _classifications(cls, response: httpx.Response) -> list[Classification]:
        return cls._parsed(response, lambda data, rid: [Classification.from_json(r, rid) for r in data["results"]])

    @classmethod
    def _info(cls, response: httpx.Response) -> ServiceInfo:
        return cls._parsed(response, lambda data, rid: _build(ServiceInfo, data))

    @classmethod
    def _parsed(cls, response: httpx.Response, build: Callable[[Any, str | None], T]) -> T:
        """JSON of the wrong shape (`--url` pointing at another service, say) is an APIError too, not a
        KeyError from deep inside the dataclasses."""
        data = cls._json(response)
        request_id = response.headers.get("x-request-id")
        try:
            return build(data, request_id)
        except (KeyError, TypeError, AttributeError) as exc:
            raise APIError(
                response.status_code,
                "invalid_response",
                f"the answer is not what longdoc sends ({type(exc).__name__}: {exc}): {response.text[:200]!r}",
                request_id=request_id,
            ) from None


class Client(_Base):
    """Blocking client; one httpx connection pool for its lifetime (use it as a context manager, or close())."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 600.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        """`base_url` defaults to $LONGDOC_URL, then http://127.0.0.1:8000.

        `timeout` configures the client's own connection pool; a given `http_client` keeps its own timeouts.
        """
        super().__init__(base_url, api_key, timeout, max_retries, max_retry_wait_s)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=self.timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _request(self, method: str, path: str, json: Any = None, request_id: str | None = None) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method, self.base_url + path, json=json, headers=self._headers(request_id)
                )
            except httpx.ConnectError as error:
                wait = self._connect_delay(error, attempt)
                if wait is None:
                    raise
                time.sleep(wait)
                attempt += 1
                continue
            delay = self._delay(response, attempt)
            if delay is None:
                return response
            response.close()
            time.sleep(delay)
            attempt += 1

    def classify(
        self,
        text: str,
        *,
        return_chunks: bool = False,
        aggregation: Aggregation | None = None,
        max_chunks: int | None = None,
        top_k_chunks: int | None = None,
        request_id: str | None = None,
    ) -> Classification:
        """Classify one document of any length; `return_chunks` adds the per-chunk explanation."""
        body = self._body(text, return_chunks, aggregation, max_chunks, top_k_chunks)
        response = self._request("POST", "/classify", body, request_id)
        return self._classification(response)

    def classify_many(
        self,
        texts: list[str],
        *,
        return_chunks: bool = False,
        aggregation: Aggregation | None = None,
        max_chunks: int | None = None,
        top_k_chunks: int | None = None,
        request_id: str | None = None,
    ) -> list[Classification]:
        """Several documents in one request (at most the service's max_texts_per_request), in input order."""
        body = self._body(_text_list(texts), return_chunks, aggregation, max_chunks, top_k_chunks)
        response = self._request("POST", "/classify", body, request_id)
        return self._classifications(response)

    def info(self) -> ServiceInfo:
        return self._info(self._request("GET", "/info"))

    def ready(self) -> bool:
        """True when `GET /health` says the model is loaded, warmed up and not draining; False if unreachable."""
        try:
            response = self._http.get(self.base_url + "/health", headers=self._headers(None))
        except httpx.TransportError:
            return False
        return response.status_code == 200


class AsyncClient(_Base):
    """The asyncio twin of `Client`; share one instance across tasks so they share its connections."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 600.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 30.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, max_retry_wait_s)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=self.timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _request(self, method: str, path: str, json: Any = None, request_id: str | None = None) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method, self.base_url + path, json=json, headers=self._headers(request_id)
                )
            except httpx.ConnectError as error:
                wait = self._connect_delay(error, attempt)
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                attempt += 1
                continue
            delay = self._delay(response, attempt)
            if delay is None:
                return response
            await response.aclose()
            await asyncio.sleep(delay)
            attempt += 1

    async def classify(
        self,
        text: str,
        *,
        return_chunks: bool = False,
        aggregation: Aggregation | None = None,
        max_chunks: int | None = None,
        top_k_chunks: int | None = None,
        request_id: str | None = None,
    ) -> Classification:
        body = self._body(text, return_chunks, aggregation, max_chunks, top_k_chunks)
        response = await self._request("POST", "/classify", body, request_id)
        return self._classification(response)

    async def classify_many(
        self,
        texts: list[str],
        *,
        return_chunks: bool = False,
        aggregation: Aggregation | None = None,
        max_chunks: int | None = None,
        top_k_chunks: int | None = None,
        request_id: str | None = None,
    ) -> list[Classification]:
        body = self._body(_text_list(texts), return_chunks, aggregation, max_chunks, top_k_chunks)
        response = await self._request("POST", "/classify", body, request_id)
        return self._classifications(response)

    async def info(self) -> ServiceInfo:
        return self._info(await self._request("GET", "/info"))

    async def ready(self) -> bool:
        try:
            response = await self._http.get(self.base_url + "/health", headers=self._headers(None))
        except httpx.TransportError:
            return False
        return response.status_code == 200


def _refused(error: BaseException) -> bool:
    """Whether a ConnectError comes from a refused connection (httpx wraps httpcore wraps the OSError)."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
