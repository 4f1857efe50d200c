"""Pathological text, client disconnects and a dead worker, through the real app in process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.main import create_app
from app.schemas import ClassifyRequest
from app.server import DrainingServer, _engine_running_s, failure_status
from app.service import RequestStats
from app.settings import Settings
from tests.conftest import FakeEngine
from tests.service.conftest import ClientFactory
from tests.service.test_api import metric_value

PATHOLOGICAL = {
    "one_megabyte_word": "x" * 1_000_000,
    "newlines": "\n" * 100_000 + "end",
    "controls_and_nul": "start\x00\x01\x02\x1b[31m\x7f middle \ufeff\u200b\u200d end " * 200,
    "emoji_and_combining": "naïve café 👩‍👩‍👧‍👦 🇺🇸 e\u0301\u0301\u0301 Z\u0351\u0352\u0353 " * 500,
    "right_to_left": "שלום עולם مرحبا بالعالم " * 400 + "mixed english",
    "mojibake": "Ã©tÃ© Ã¼ber â€œquotedâ€\x9d Ã±andÃº " * 600,
    "surrogate_escape_free_cjk": "長文書の分類は難しい。" * 2000,
}


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
async def test_pathological_text_classifies_with_valid_offsets(client_factory: ClientFactory, name: str) -> None:
    text = PATHOLOGICAL[name]
    async with client_factory() as client:
        started = time.perf_counter()
        response = await client.post("/classify", json={"text": text, "return_chunks": True})
        elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["num_chunks"] == len(body["chunks"]) >= 1
    for chunk in body["chunks"]:
        assert 0 <= chunk["start"] < chunk["end"] <= len(text)
        assert text[chunk["start"] : chunk["end"]].strip()  # a span of real content, not padding
    assert elapsed < 120  # bounded: not a timing claim, a hang detector


async def serve_on_loopback(
    app: FastAPI, drain_timeout_s: float, probe: str = "/health"
) -> tuple[DrainingServer, asyncio.Task[None], str]:
    """`longdoc serve`'s server (drain, watchdog) on a free loopback port, returned once `probe` is 200."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    server = DrainingServer(config, app, drain_timeout_s=drain_timeout_s, worker_check_s=0.05)
    serving = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        for _ in range(400):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(probe)).status_code == 200:
                    break
            if serving.done():
                break
            await asyncio.sleep(0.05)
    return server, serving, url


class GatedEngine(FakeEngine):
    """Every forward pass waits for `gate`: the warm-up, and so the whole startup, lasts until the test says."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.gate = threading.Event()

    def forward(self, chunks: Any) -> Any:
        self.gate.wait(60)
        return super().forward(chunks)


@contextlib.asynccontextmanager
async def loading_server(
    model_dir: Any, engine: GatedEngine, **settings: Any
) -> AsyncIterator[tuple[FastAPI, DrainingServer, asyncio.Task[None]]]:
    """`longdoc serve`'s server with its model still warming up (the gate closed) until the block ends."""
    app = create_app(Settings(model_dir=model_dir, num_threads=2, **settings), engine=engine, load_in_background=True)
    server, serving, _ = await serve_on_loopback(app, drain_timeout_s=600, probe="/health/live")
    try:
        yield app, server, serving
    finally:
        engine.gate.set()  # let the forward thread go


async def test_the_port_answers_503_loading_until_the_model_is_ready(
    tiny_model_dir: Any, wordpiece_tokenizer: Any
) -> None:
    """`longdoc serve` listens at once: a probe or a client gets a clear 503 while loading, not a refused
    connection; liveness is 200 (restarting a loading process would never let it finish)."""
    engine = GatedEngine(wordpiece_tokenizer)
    app = create_app(Settings(model_dir=tiny_model_dir, num_threads=2), engine=engine, load_in_background=True)
    server, serving, url = await serve_on_loopback(app, drain_timeout_s=5, probe="/health/live")
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        health = await client.get("/health")
        early = await client.post("/classify", json={"text": "too early"})
        metrics = (await client.get("/metrics")).text
        engine.gate.set()
        for _ in range(200):
            if (await client.get("/health")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        ready = await client.post("/classify", json={"text": "now it is served"})
    server.should_exit = True
    await asyncio.wait_for(serving, 30)
    assert health.status_code == 503 and health.json()["error"]["message"] == "the model is still loading"
    assert early.status_code == 503 and early.json()["error"]["type"] == "not_ready"
    assert early.headers["retry-after"] == "5"  # clients wait for the load instead of spending their retries
    assert metric_value(metrics, "longdoc_ready") == 0
    assert ready.status_code == 200, ready.text
    assert not server.failed


async def test_a_stop_during_the_warm_up_does_not_wait_for_it(tiny_model_dir: Any, wordpiece_tokenizer: Any) -> None:
    """Nothing accepted is waiting while the model warms up: SIGTERM stops now, not after drain_timeout_s."""
    engine = GatedEngine(wordpiece_tokenizer)
    async with loading_server(tiny_model_dir, engine, drain_timeout_s=600) as (app, server, serving):
        server.handle_exit(signal.SIGTERM, None)
        await asyncio.wait_for(serving, 10)
    assert not server.failed and app.state.service is None


async def test_a_warm_up_past_startup_timeout_fails_the_start(tiny_model_dir: Any, wordpiece_tokenizer: Any) -> None:
    """A wedged first pass (or a stalled load) must end in a restart, not an unready process forever."""
    engine = GatedEngine(wordpiece_tokenizer)
    async with loading_server(tiny_model_dir, engine, startup_timeout_s=0.5) as (_, server, serving):
        await asyncio.wait_for(serving, 10)
    assert server.failed


async def test_a_model_ready_after_sigterm_is_published_draining(tiny_model_dir: Any, wordpiece_tokenizer: Any) -> None:
    """The load can finish after the drain began: the new service must not take work or say it is ready."""
    engine = GatedEngine(wordpiece_tokenizer)
    app = create_app(Settings(model_dir=tiny_model_dir, num_threads=2), engine=engine, load_in_background=True)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://longdoc.test") as client:
            app.state.in_flight.draining = True  # what the first SIGTERM does while the model loads
            engine.gate.set()
            for _ in range(200):
                if app.state.service is not None:
                    break
                await asyncio.sleep(0.05)
            health = await client.get("/health")
            refused = await client.post("/classify", json={"text": "after the signal"})
    assert app.state.startup.done() and health.status_code == 503 and refused.status_code == 503


async def test_serve_exits_with_status_1_when_the_model_fails_to_load(tmp_path: Any) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    app = create_app(Settings(model_dir=broken, num_threads=2), load_in_background=True)
    server, serving, _ = await serve_on_loopback(app, drain_timeout_s=5, probe="/health/live")
    await asyncio.wait_for(serving, 30)  # exits on its own, within a watchdog round of the failure
    assert server.failed and failure_status(app) == 1


async def test_serve_exits_with_status_2_when_a_setting_does_not_fit_the_loaded_model(
    tiny_model_dir: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The stride is checked against the model's window once the model is loaded; a restart cannot fix it."""
    app = create_app(Settings(model_dir=tiny_model_dir, num_threads=2, stride=300), load_in_background=True)
    server, serving, _ = await serve_on_loopback(app, drain_timeout_s=5, probe="/health/live")
    await asyncio.wait_for(serving, 30)
    assert server.failed and failure_status(app) == 2
    assert "a setting does not fit the model: stride must satisfy 0 <= stride < 62" in caplog.text
    assert "exiting with status 2" in caplog.text


def classify_scope() -> dict[str, Any]:
    """The ASGI scope of a POST /classify, for tests that drive the app's receive/send by hand."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/classify",
        "raw_path": b"/classify",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "root_path": "",
    }


async def test_disconnected_client_frees_its_chunks(wordpiece_tokenizer: Any, tiny_model_dir: Any) -> None:
    """A client that goes away while queued: its chunks leave the queue and never reach the engine."""
    engine = FakeEngine(wordpiece_tokenizer, delay_s=0.4)
    app = create_app(Settings(model_dir=tiny_model_dir, max_batch_size=1, max_wait_ms=0), engine=engine)
    zebra = wordpiece_tokenizer.convert_tokens_to_ids("zebra")

    async def call(text: str, disconnect_after_s: float | None) -> list[dict[str, Any]]:
        body = json.dumps({"text": text}).encode()
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            if disconnect_after_s is None:
                await asyncio.sleep(3600)
            await asyncio.sleep(disconnect_after_s or 0)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await manager.app(classify_scope(), receive, send)
        return sent

    async with LifespanManager(app) as manager:
        calls_before = len(engine.calls)
        blocker = asyncio.create_task(call("occupies the engine", None))
        await asyncio.sleep(0.1)
        leaver = asyncio.create_task(call("zebra " * 200, 0.1))
        await asyncio.wait_for(leaver, 10)
        assert app.state.service.batcher.pending <= 1  # only the blocker's chunk remains
        sent = await asyncio.wait_for(blocker, 10)
        assert sent[0]["status"] == 200
    assert all(zebra not in chunk for call_ in engine.calls[calls_before:] for chunk in call_)


async def test_a_client_leaving_mid_upload_is_a_499_not_an_error(fake_engine: FakeEngine, tiny_model_dir: Any) -> None:
    """Half a body, then the connection closes: a departed client (499), never a 500 that feeds the error
    alerts, nor a 400 blaming a body nobody finished sending."""
    app = create_app(Settings(model_dir=tiny_model_dir), engine=fake_engine)
    messages = iter([{"type": "http.request", "body": b'{"text": "half a bo', "more_body": True}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with LifespanManager(app) as manager:
        await manager.app(classify_scope(), receive, send)
        metrics = app.state.metrics.registry
        assert metrics.get_sample_value("longdoc_requests_total", {"endpoint": "/classify", "status": "499"}) == 1
        assert metrics.get_sample_value("longdoc_requests_total", {"endpoint": "/classify", "status": "500"}) == 0
    assert sent[0]["status"] == 499


async def test_a_stalled_upload_is_a_408_that_closes_the_connection(
    wordpiece_tokenizer: Any, tiny_model_dir: Any
) -> None:
    """Half a body, then nothing (a client gone behind a NAT): the request is answered 408 after
    body_timeout_s, not held forever (request_timeout_s only starts once the body is in). A request whose
    body is complete may run longer than body_timeout_s: its wait for a disconnect has no deadline."""
    engine = FakeEngine(wordpiece_tokenizer, delay_s=0.5)  # a forward pass outlasts body_timeout_s
    app = create_app(Settings(model_dir=tiny_model_dir, body_timeout_s=0.3, warmup=False), engine=engine)
    sent: list[dict[str, Any]] = []
    calls = 0

    async def stalled() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b'{"text": "half a bo', "more_body": True}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with LifespanManager(app) as manager:
        metrics = app.state.metrics.registry
        stalled_call = asyncio.create_task(manager.app(classify_scope(), stalled, send))
        await asyncio.sleep(0.1)  # uploading, stalled: visible to an operator while it lasts
        assert metrics.get_sample_value("longdoc_requests_in_flight") == 1
        await asyncio.wait_for(stalled_call, 10)
        assert metrics.get_sample_value("longdoc_requests_in_flight") == 0
        assert sent[0]["status"] == 408
        assert (b"connection", b"close") in sent[0]["headers"]
        error = json.loads(sent[1]["body"])["error"]
        assert error["type"] == "request_timeout" and "body_timeout_s 0.3 s (received 19 bytes)" in error["message"]
        # the TEI-compatible route answers in TEI's body, and counts the rejection the same way
        sent.clear()
        calls = 0
        tei_scope = {**classify_scope(), "path": "/predict", "raw_path": b"/predict"}
        await asyncio.wait_for(manager.app(tei_scope, stalled, send), 10)
        assert sent[0]["status"] == 408 and "body_timeout_s" in json.loads(sent[1]["body"])["error"]
        assert metrics.get_sample_value("longdoc_rejected_total", {"reason": "body_timeout"}) == 2
        assert metrics.get_sample_value("longdoc_requests_total", {"endpoint": "/predict", "status": "408"}) == 1

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as client:
            answer = await client.post("/classify", json={"text": "good " * 30})
        assert answer.status_code == 200


async def test_a_cancel_landing_as_tokenization_ends_queues_nothing(
    fake_engine: FakeEngine, tiny_model_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client leaves in the very loop step where its text's tokenization finishes: the request must
    still stop there. (Python 3.11's asyncio.wait_for returned the result instead, CPython gh-86296, and
    every chunk of the departed client then ran on the model.)"""
    app = create_app(Settings(model_dir=tiny_model_dir), engine=fake_engine)
    async with LifespanManager(app):
        service = app.state.service
        text = "zebra " * 300
        tokenized: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        seen_before = fake_engine.chunks_seen
        with monkeypatch.context() as patch:
            patch.setattr(asyncio, "to_thread", lambda *args, **kwargs: tokenized)
            work = service.classify(ClassifyRequest(text=text), time.perf_counter(), RequestStats())
            task = asyncio.create_task(work)
            for _ in range(10):
                await asyncio.sleep(0)  # the request is now waiting for its tokens
            tokenized.set_result(service.segmenter.segment_many([text]))
            task.cancel()  # same step: the client disconnected
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.2)
        assert service.batcher.pending == 0
        assert fake_engine.chunks_seen == seen_before


async def test_health_turns_503_when_the_worker_dies(client_factory: ClientFactory, fake_engine: FakeEngine) -> None:
    async with client_factory(engine=fake_engine) as client:
        assert (await client.get("/health")).status_code == 200
        task = client.app.state.service.batcher._task  # type: ignore[attr-defined]
        task.cancel()
        await asyncio.sleep(0.05)
        response = await client.get("/health")
        assert response.status_code == 503 and response.json()["error"]["type"] == "not_ready"
        classify = await client.post("/classify", json={"text": "anything"})
        assert classify.status_code == 503
        live = await client.get("/health/live")  # only a restart heals this: liveness tells the orchestrator
        assert live.status_code == 503 and "worker died" in live.json()["error"]["message"]
        metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "longdoc_ready") == 0
    # the probes' own 503s are not client rejections; the refused /classify is
    assert metric_value(metrics, "longdoc_rejected_total", reason="not_ready") == 1


async def test_a_hung_forward_pass_fails_liveness(client_factory: ClientFactory, wordpiece_tokenizer: Any) -> None:
    """A pass that outlives request_timeout_s (a wedged GPU, say) has already cost its requests their 504s and
    will never free the worker: liveness says so, so the orchestrator restarts the pod."""
    engine = FakeEngine(wordpiece_tokenizer, delay_s=3.0)
    async with client_factory(engine=engine, warmup=False, request_timeout_s=0.5) as client:
        assert (await client.get("/health/live")).status_code == 200
        stuck = await client.post("/classify", json={"text": "wedges the engine"})
        assert stuck.status_code == 504
        await asyncio.sleep(0.1)  # the pass started with the request and now outlives request_timeout_s
        live, ready = await client.get("/health/live"), await client.get("/health")
        metrics = (await client.get("/metrics")).text
    assert live.status_code == 503 and "the engine is hung" in live.json()["error"]["message"]
    assert ready.status_code == 503 and "over request_timeout_s 0.5" in ready.json()["error"]["message"]
    assert metric_value(metrics, "longdoc_ready") == 0


async def test_serve_exits_with_status_1_when_the_worker_dies(tiny_model_dir: Any, fake_engine: FakeEngine) -> None:
    """A supervisor that restarts exited processes (Docker's restart:) can only heal a dead worker if we exit."""
    app = create_app(Settings(model_dir=tiny_model_dir, num_threads=2), engine=fake_engine)
    server, serving, url = await serve_on_loopback(app, drain_timeout_s=5)
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        assert (await client.post("/classify", json={"text": "healthy"})).status_code == 200
        await asyncio.sleep(0.2)  # several watchdog rounds: a healthy worker is left alone
        assert not serving.done()
        app.state.service.batcher._task.cancel()
        await asyncio.wait_for(serving, 30)
    assert server.failed


async def test_serve_exits_when_a_forward_pass_hangs(tiny_model_dir: Any, wordpiece_tokenizer: Any) -> None:
    """A hung engine never finishes its pass, so a graceful shutdown would wait forever: the watchdog
    answers what is waiting and stops the server at once."""
    engine = FakeEngine(wordpiece_tokenizer, delay_s=5.0)
    settings = Settings(model_dir=tiny_model_dir, num_threads=2, warmup=False, request_timeout_s=0.5)
    app = create_app(settings, engine=engine)
    server, serving, url = await serve_on_loopback(app, drain_timeout_s=600)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        stuck = await client.post("/classify", json={"text": "wedges the engine"})
        await asyncio.wait_for(serving, 4)  # the pass still runs for seconds: no waiting on it
    assert stuck.status_code == 504 and server.failed
    await app.state.service.batcher.stop(0)


async def test_second_signal_during_the_drain_stops_at_once(tiny_model_dir: Any, wordpiece_tokenizer: Any) -> None:
    """The first SIGTERM drains (up to drain_timeout_s); an operator's second one must not wait for it."""
    engine = FakeEngine(wordpiece_tokenizer, delay_s=0.5)  # the long request below needs ~20 s of passes
    settings = Settings(model_dir=tiny_model_dir, num_threads=2, max_batch_size=1, max_wait_ms=0, drain_timeout_s=600)
    app = create_app(settings, engine=engine)
    server, serving, url = await serve_on_loopback(app, drain_timeout_s=settings.drain_timeout_s)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        calls = len(engine.calls)
        long_request = asyncio.create_task(client.post("/classify", json={"text": "zebra " * 600}))
        for _ in range(1000):
            if len(engine.calls) > calls:
                break
            await asyncio.sleep(0.01)
        server.handle_exit(signal.SIGTERM, None)
        await asyncio.sleep(0.3)
        assert not serving.done()  # the first signal drains: the accepted request keeps running
        server.handle_exit(signal.SIGTERM, None)
        await asyncio.wait_for(serving, 10)  # before: the drain went on until the request finished (~20 s)
        stopped = await asyncio.wait_for(long_request, 5)  # answered in the last moment, not cut off
        assert stopped.status_code == 503 and "stopped before this request finished" in stopped.text
    assert server.stopped_by == signal.SIGTERM and not server.failed
    assert app.state.service is None  # the lifespan's shutdown ran (a forced exit skipped it)


async def test_a_pass_that_hangs_during_the_drain_does_not_hold_the_exit(
    tiny_model_dir: Any, wordpiece_tokenizer: Any
) -> None:
    """The drain ends once the hung pass's request has its 504; the shutdown then waits for no one (not a
    second drain_timeout_s), and `longdoc serve` sees the forward thread still inside the engine (exit 1)."""
    engine = FakeEngine(wordpiece_tokenizer, delay_s=8.0)
    settings = Settings(model_dir=tiny_model_dir, num_threads=2, warmup=False, request_timeout_s=2)
    app = create_app(settings, engine=engine)
    server, serving, url = await serve_on_loopback(app, drain_timeout_s=600)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        stuck = asyncio.create_task(client.post("/classify", json={"text": "wedges the engine"}))
        for _ in range(200):
            if engine.calls:
                break
            await asyncio.sleep(0.01)
        server.handle_exit(signal.SIGTERM, None)
        assert (await stuck).status_code == 504
        await asyncio.wait_for(serving, 3)  # before: the lifespan waited for the pass (drain_timeout_s)
    assert _engine_running_s(app, 0.1) is not None
    assert _engine_running_s(app, 10) is None  # once the pass ends the thread is free


async def test_requests_arriving_during_the_drain_do_not_hold_it_open(
    tiny_model_dir: Any, fake_engine: FakeEngine
) -> None:
    """A client trickling a body (or a stream of probes) after SIGTERM must not keep the drain waiting until
    drain_timeout_s: only work accepted before the drain counts."""
    app = create_app(Settings(model_dir=tiny_model_dir, num_threads=2), engine=fake_engine)
    server = DrainingServer(uvicorn.Config(app), app, drain_timeout_s=600)
    body_started = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not body_started.is_set():
            body_started.set()
            return {"type": "http.request", "body": b'{"text": "slo', "more_body": True}
        await asyncio.sleep(3600)  # the rest never comes
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    async with LifespanManager(app) as manager:
        server._loop = asyncio.get_running_loop()
        server.handle_exit(signal.SIGTERM, None)
        trickler = asyncio.create_task(manager.app(classify_scope(), receive, send))
        await body_started.wait()
        assert server._drain_task is not None
        await asyncio.wait_for(server._drain_task, 10)  # before: it waited for the trickler, up to 600 s
        assert server.should_exit and not trickler.done()
        trickler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trickler


@pytest.mark.parametrize("across", [True, False])
async def test_batch_across_requests_setting_reaches_the_batcher(
    client_factory: ClientFactory, wordpiece_tokenizer: Any, across: bool
) -> None:
    """LONGDOC_BATCH_ACROSS_REQUESTS=false keeps each forward pass to one request's chunks (the benchmark's
    naive baseline); true packs requests queued together into one pass."""
    words = ["apple", "river", "house", "green", "table"]
    ids = {w: set(wordpiece_tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words}
    assert all(not ids[a] & ids[b] for a in words for b in words if a != b)
    engine = FakeEngine(wordpiece_tokenizer, delay_s=0.3)
    async with client_factory(
        engine=engine, batch_across_requests=across, max_batch_tokens=100_000, max_wait_ms=0, warmup=False
    ) as client:
        blocker = asyncio.create_task(client.post("/classify", json={"text": "apple " * 60}))
        for _ in range(1000):
            if engine.calls:  # the blocker's pass is running: everything below queues behind it
                break
            await asyncio.sleep(0.01)
        queued = [client.post("/classify", json={"text": f"{w} " * 60}) for w in words[1:]]
        responses = await asyncio.gather(blocker, *queued)
    assert all(r.status_code == 200 and r.json()["num_chunks"] >= 2 for r in responses)
    owners = [{w for w in words if ids[w] & {i for chunk in call for i in chunk}} for call in engine.calls]
    assert all(owners)
    assert any(len(o) > 1 for o in owners) is across
