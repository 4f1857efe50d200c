"""longdoc.client against the real app in process, and its retry policy against scripted answers."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import socket
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi.testclient import TestClient

from app.main import create_app
from app.schemas import InfoResponse
from app.settings import Settings
from longdoc.cli_classify import format_table
from longdoc.client import APIError, AsyncClient, Chunk, Classification, Client, LabelScore, ServiceInfo, retry_after
from tests.conftest import FakeEngine, long_text
from tests.service.test_api import metric_value


def settings(model_dir: Path, **overrides: Any) -> Settings:
    return Settings(model_dir=model_dir, num_threads=2, **overrides)


def test_sync_client_typed_results(tiny_model_dir: Path, fake_engine: FakeEngine) -> None:
    app = create_app(settings(tiny_model_dir, api_key="s3cret"), engine=fake_engine)
    text = long_text(200, seed=2)
    with TestClient(app) as http:
        with Client("http://testserver", api_key="s3cret", http_client=http) as client:
            assert client.ready()
            info = client.info()
            result = client.classify(text, return_chunks=True, top_k_chunks=2, request_id="req-1")
            many = client.classify_many(["good good", text], aggregation="max_logits")
        with pytest.raises(APIError) as refused:
            Client("http://testserver", http_client=http).classify("no key")
    assert info.model == "fake" and info.labels == ["negative", "positive"]
    # every field /info sends reaches the typed result (none silently dropped)
    assert {f.name for f in fields(ServiceInfo)} == set(InfoResponse.model_fields)
    assert info.max_batch_tokens == 1024 and info.window_tokens is not None and info.window_tokens > 0
    assert isinstance(result, Classification) and result.request_id == "req-1"
    assert result.label in info.labels and isinstance(result.scores[0], LabelScore)
    assert result.chunks is not None and len(result.chunks) == result.num_chunks > 1
    assert isinstance(result.chunks[0], Chunk) and text[result.chunks[0].start : result.chunks[0].end]
    assert result.top_chunks is not None and len(result.top_chunks) == 2
    assert [m.aggregation for m in many] == ["max_logits", "max_logits"] and many[1].chunks is None
    assert refused.value.status_code == 401 and refused.value.error_type == "unauthorized"
    assert refused.value.request_id


async def test_async_client_waits_out_a_real_429(tiny_model_dir: Path, wordpiece_tokenizer: Any) -> None:
    """A full queue answers 429 with Retry-After; the client sleeps that long, retries, and succeeds."""
    engine = FakeEngine(wordpiece_tokenizer, delay_s=0.3)
    app = create_app(settings(tiny_model_dir, max_queue_chunks=12, max_batch_size=2), engine=engine)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport) as http:
            client = AsyncClient("http://longdoc.test", http_client=http, max_retry_wait_s=10)
            impatient = AsyncClient("http://longdoc.test", http_client=http, max_retries=0)
            busy = asyncio.ensure_future(client.classify_many([long_text(80, 1), long_text(80, 2)]))
            await asyncio.sleep(0.1)
            with pytest.raises(APIError) as refused:
                await impatient.classify(long_text(80, 3))
            started = time.monotonic()
            result = await client.classify(long_text(80, 3))
            waited = time.monotonic() - started
            await busy
            metrics = (await http.get("http://longdoc.test/metrics")).text
    assert refused.value.status_code == 429 and refused.value.retry_after_s is not None
    assert refused.value.retry_after_s >= 1
    assert result.num_chunks > 1
    assert waited >= 1.0  # at least one Retry-After of >= 1 s was honoured
    assert metric_value(metrics, "longdoc_requests_total", endpoint="/classify", status="429") >= 1


def scripted(*answers: tuple[int, dict[str, str]]) -> tuple[httpx.MockTransport, list[float]]:
    """A transport answering with the given (status, headers) in turn, then 200; records call times."""
    calls: list[float] = []
    body = {
        "label": "positive",
        "score": 0.9,
        "scores": [{"label": "positive", "score": 0.9}],
        "num_chunks": 1,
        "num_tokens": 3,
        "aggregation": "mean_logits",
        "model": "m",
        "future_field": 1,
    }

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) <= len(answers):
            status, headers = answers[len(calls) - 1]
            return httpx.Response(status, headers=headers, json={"error": {"type": "overloaded", "message": "busy"}})
        return httpx.Response(200, json=body)

    return httpx.MockTransport(handle), calls


def gaps(calls: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(calls)]


def test_retry_after_seconds_is_honoured() -> None:
    transport, calls = scripted((503, {"Retry-After": "1"}), (429, {"Retry-After": "0"}))
    with Client("http://x", http_client=httpx.Client(transport=transport)) as client:
        result = client.classify("text")
    assert result.label == "positive" and len(calls) == 3
    assert gaps(calls)[0] >= 1.0 and gaps(calls)[1] < 0.5


def test_retry_waits_are_bounded_and_retries_run_out() -> None:
    transport, calls = scripted(*[(429, {"Retry-After": "3600"})] * 5)
    client = Client("http://x", http_client=httpx.Client(transport=transport), max_retries=2, max_retry_wait_s=0.2)
    started = time.monotonic()
    with pytest.raises(APIError) as refused:
        client.classify("text")
    assert time.monotonic() - started < 2 and len(calls) == 3
    assert all(g >= 0.2 for g in gaps(calls))
    assert refused.value.status_code == 429 and refused.value.retry_after_s == 3600


def test_a_refused_connection_is_retried_then_raised() -> None:
    """Nothing listens (a replica restarting): each attempt really connects, and the last error surfaces."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the client connects: refused
    attempts: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [attempts.append]})
    with (
        pytest.raises(httpx.ConnectError),
        Client(f"http://127.0.0.1:{port}", http_client=http, max_retries=2) as client,
    ):
        client.classify("text")
    assert len(attempts) == 3


def test_a_name_that_does_not_resolve_is_not_retried() -> None:
    """A configuration error, not a restart: retrying would only delay the message."""
    attempts: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [attempts.append]})
    with pytest.raises(httpx.ConnectError), Client("http://longdoc.invalid", http_client=http) as client:
        client.classify("text")
    assert len(attempts) == 1


async def test_async_client_connects_once_the_port_opens() -> None:
    refusals = 2
    answers, calls = scripted()

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise httpx.ConnectError("connection refused", request=request) from ConnectionRefusedError(111, "refused")
        return answers.handler(request)  # type: ignore[no-any-return]

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        result = await AsyncClient("http://x", http_client=http, max_retry_wait_s=0.05).classify("text")
    assert result.label == "positive" and refusals == 0 and len(calls) == 1


def test_other_errors_are_not_retried() -> None:
    transport, calls = scripted((422, {}))
    with pytest.raises(APIError) as refused:
        Client("http://x", http_client=httpx.Client(transport=transport)).classify("text")
    assert refused.value.status_code == 422 and len(calls) == 1


async def test_async_retry_without_retry_after_backs_off() -> None:
    transport, calls = scripted((503, {}))
    async with httpx.AsyncClient(transport=transport) as http:
        result = await AsyncClient("http://x", http_client=http).classify("text")
    assert result.score == 0.9 and len(calls) == 2 and gaps(calls)[0] >= 0.5


def http_date(offset_s: float) -> str:
    return email.utils.formatdate(time.time() + offset_s, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (lambda: "7", lambda s: s == 7),
        (lambda: http_date(30), lambda s: 25 <= s <= 31),
        (lambda: http_date(-30), lambda s: s == 0),
        (lambda: "soon", lambda s: s is None),
        (lambda: http_date(30).replace("GMT", "-0000"), lambda s: 25 <= s <= 31),
    ],
)
def test_retry_after_parsing(
    value: Callable[[], str], expected: Callable[[float | None], bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a machine five hours behind UTC (POSIX rule, no tz database needed): "-0000" parses to a naive
    # datetime, which was read as local time and gave 5 h + 30 s instead of 30 s
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    try:
        assert expected(retry_after(httpx.Response(429, headers={"Retry-After": value()})))
    finally:
        monkeypatch.undo()
        time.tzset()


def test_cli_table_lists_results_and_errors() -> None:
    ok = Classification(
        label="hyperpartisan",
        score=0.93125,
        scores=[],
        num_chunks=3,
        num_tokens=1401,
        aggregation="mean_logits",
        model="m",
    )
    table = format_table([("long/report.txt", ok), ("b.txt", APIError(413, "payload_too_large", "too big"))])
    lines = table.splitlines()
    assert lines[0].split() == ["FILE", "LABEL", "SCORE", "CHUNKS", "TOKENS"]
    assert lines[1].split() == ["long/report.txt", "hyperpartisan", "0.931", "3", "1401"]
    assert lines[2].startswith("b.txt") and "payload_too_large: too big" in lines[2]


def test_an_answer_that_is_not_json_is_an_api_error() -> None:
    """A proxy's login page answering 200 must not escape as a bare JSONDecodeError."""
    page = httpx.MockTransport(lambda request: httpx.Response(200, html="<html>proxy login</html>"))
    with pytest.raises(APIError) as refused:
        Client("http://x", http_client=httpx.Client(transport=page)).classify("text")
    assert refused.value.status_code == 200 and refused.value.error_type == "invalid_response"
    assert "expected JSON from the service, got text/html" in refused.value.message


@pytest.mark.parametrize("body", [{"detail": "Not Found"}, {"results": [{"label": "x"}]}, [1, 2]])
def test_json_of_the_wrong_shape_is_an_api_error(body: Any) -> None:
    """--url pointing at another service: an APIError per call (the CLI shows it per file), not a KeyError."""
    other = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    client = Client("http://x", http_client=httpx.Client(transport=other))
    for call in (lambda: client.classify("text"), lambda: client.classify_many(["a", "b"]), client.info):
        with pytest.raises(APIError) as refused:
            call()
        assert refused.value.error_type == "invalid_response" and "not what longdoc sends" in refused.value.message


def test_text_that_cannot_be_utf8_is_refused_before_sending() -> None:
    transport, calls = scripted()
    client = Client("http://x", http_client=httpx.Client(transport=transport))
    with pytest.raises(ValueError, match="texts\\[1\\] is not valid Unicode: lone surrogate U\\+DCE9 at character 3"):
        client.classify_many(["fine", "caf\udce9"])
    assert calls == []


def test_retry_after_waits_are_jittered_upwards() -> None:
    client = Client("http://x", max_retry_wait_s=30)
    refused = httpx.Response(429, headers={"Retry-After": "4"})
    waits = [client._delay(refused, 0) for _ in range(50)]
    assert all(4 <= w <= 5 for w in waits) and len(set(waits)) > 1


def test_cli_reads_standard_input_strictly_and_reports_bad_bytes_in_place(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import sys

    from app.cli import main as cli_main

    # Python's own stdin decodes with surrogateescape: bad bytes would become lone surrogates, not errors.
    stdin = io.TextIOWrapper(io.BytesIO("caf\u00e9".encode("latin-1")), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert cli_main(["classify", "--url", "http://127.0.0.1:9", "--no-progress", "-"]) == 1
    out = capsys.readouterr().out
    assert "read_error" in out and "can't decode byte 0xe9" in out


def test_keys_the_service_takes_the_client_sends(tiny_model_dir: Path, fake_engine: FakeEngine) -> None:
    """A non-ASCII key (httpx refuses a non-ASCII str header: sent as UTF-8) and a key read from a secret
    file with its final newline (dropped on both sides); misuse of the text arguments is a TypeError."""
    for server_key, client_key in (("clé-ü", "clé-ü"), ("s3cret", "s3cret\n")):
        app = create_app(settings(tiny_model_dir, api_key=server_key), engine=fake_engine)
        with TestClient(app) as http, Client("http://testserver", api_key=client_key, http_client=http) as client:
            assert client.classify("a text", request_id="req-1").request_id == "req-1"
            with pytest.raises(TypeError, match="classify_many takes a list of texts; for one text use classify"):
                client.classify_many("one text")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got NoneType"):
                client.classify_many(["fine", None])  # type: ignore[list-item]


def test_cli_reads_a_file_as_its_bytes_and_names_any_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CRLF stays CRLF (chunk offsets point into the file, as for '-'); a file name that is not UTF-8 is
    shown with \\x escapes; a server that is not there is named with the URL tried."""
    import io
    import os
    import sys

    from app.cli import main as cli_main
    from longdoc.cli_classify import _read

    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"one\r\ntwo\r\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\r\ntwo\r\n")))
    assert _read(str(crlf)) == _read("-") == "one\r\ntwo\r\n"
    odd = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.txt")
    Path(odd).write_text("text", encoding="utf-8")
    assert cli_main(["classify", "--url", "http://me:pw@127.0.0.1:9", "--no-progress", "--json", odd]) == 1
    line = capsys.readouterr().out
    assert "caf\\\\xe9.txt" in line and "connection_error" in line and "http://127.0.0.1:9/classify" in line
    assert "pw" not in line  # the URL tried, without its credentials
    with pytest.raises(SystemExit):
        cli_main(["classify", "--timeout", "0", odd])
    assert "--timeout: must be a positive number of seconds, got 0" in capsys.readouterr().err


def test_a_url_without_a_scheme_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`localhost:8000` parses as scheme "localhost": it used to fail per file as ':///8000/classify'
    connection_error; now it is refused up front, on the command line and in the client alike."""
    from app.cli import main as cli_main

    text = tmp_path / "a.txt"
    text.write_text("text", encoding="utf-8")
    with pytest.raises(SystemExit) as usage:
        cli_main(["classify", "--url", "localhost:8000", str(text)])
    assert usage.value.code == 2
    assert "must be http:// or https://" in capsys.readouterr().err
    monkeypatch.setenv("LONGDOC_URL", "127.0.0.1:8000")
    assert cli_main(["classify", "--no-progress", str(text)]) == 2
    assert "$LONGDOC_URL: the service URL must be http:// or https://" in capsys.readouterr().err
    with pytest.raises(ValueError, match="got 'localhost:8000'"):
        Client("localhost:8000")
    with pytest.raises(ValueError) as query:
        Client("http://me:secret@longdoc.example/?x=1")
    assert "secret" not in str(query.value) and "***" in str(query.value)
    assert Client("https://longdoc.example/api/").base_url == "https://longdoc.example/api"
