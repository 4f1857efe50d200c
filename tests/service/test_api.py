"""The HTTP contract through the real app, in process: tiny random BERT or the deterministic fake engine."""

from __future__ import annotations

import asyncio
import gc
import gzip
import itertools
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.errors import REJECTION_STATUSES, Draining, LongdocError, Overloaded
from app.segmenter import expected_chunk_count
from app.settings import ConfigurationError
from tests.conftest import FakeEngine, build_tiny_bert, long_text
from tests.service.conftest import ClientFactory

ALL_METRICS = [
    "longdoc_requests_total",
    "longdoc_request_duration_seconds",
    "longdoc_queue_depth",
    "longdoc_tokenizing_chars",
    "longdoc_tokenizing_waiting",
    "longdoc_requests_in_flight",
    "longdoc_ready",
    "longdoc_batch_size",
    "longdoc_batch_tokens",
    "longdoc_batch_padding_ratio",
    "longdoc_queue_wait_seconds",
    "longdoc_inference_duration_seconds",
    "longdoc_document_chunks",
    "longdoc_document_tokens",
    "longdoc_rejected_total",
    "longdoc_model_info",
]


def assert_error(response: httpx.Response, status: int, error_type: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == error_type, body
    for fragment in fragments:
        assert fragment in body["error"]["message"], body


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"{name}(\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


async def test_health_info_and_request_id(client_factory: ClientFactory) -> None:
    async with client_factory() as client:
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert (await client.get("/health/live")).status_code == 200
        info = (await client.get("/info")).json()
        # longdoc.json of the tiny model says 64/8/mean_logits; nothing in the environment overrides it
        assert (info["max_length"], info["stride"], info["aggregation"]) == (64, 8, "mean_logits")
        assert info["window_tokens"] == 62 and info["labels"] == ["negative", "positive"]
        assert (info["device"], info["dtype"], info["quantization"]) == ("cpu", "float32", "none")
        assert len(info["revision"]) == 12
        echoed = await client.get("/health", headers={"X-Request-ID": "abc-123"})
        assert echoed.headers["x-request-id"] == "abc-123"
        assert len(health.headers["x-request-id"]) == 32
        # at most 200 bytes: a UTF-8 id is cut between characters, any other bytes are kept as sent
        utf8 = await client.get("/health", headers={"X-Request-ID": ("a" + "é" * 150).encode()})
        assert dict(utf8.headers.raw)[b"x-request-id"] == ("a" + "é" * 99).encode()  # not the first byte of the 100th
        other = await client.get("/health", headers={"X-Request-ID": b"\xa9" * 250})
        assert dict(other.headers.raw)[b"x-request-id"] == b"\xa9" * 200
        short = await client.get("/health", headers={"X-Request-ID": b"id-\xa9"})  # under the limit: as sent
        assert dict(short.headers.raw)[b"x-request-id"] == b"id-\xa9"
        assert metric_value((await client.get("/metrics")).text, "longdoc_ready") == 1


async def test_probes_and_the_page_answer_head(client_factory: ClientFactory) -> None:
    """Load balancers and uptime checks often probe with HEAD: it must get GET's status, not 405."""
    async with client_factory() as client:
        for path in ("/health", "/health/live", "/"):
            response = await client.head(path)
            assert response.status_code == 200, (path, response.text)
        assert (await client.head("/")).headers["content-type"].startswith("text/html")
        assert (await client.head("/classify")).status_code == 405
        allowed = {"/health": "GET, HEAD", "/health/live": "GET, HEAD", "/": "GET, HEAD, POST", "/classify": "POST"}
        for path, methods in allowed.items():  # a wrong method names every one that works there
            refused = await client.delete(path)
            assert refused.headers["allow"] == methods, path
            assert refused.json()["error"]["message"] == f"DELETE is not allowed on {path}; allowed: {methods}"


class GpuFakeEngine(FakeEngine):
    """The fake engine, claiming to run on a GPU (only the batch budget default reads the device)."""

    @property
    def device_name(self) -> str:
        return "cuda"


async def test_batch_budget_defaults_to_the_device(
    client_factory: ClientFactory, fake_engine: FakeEngine, wordpiece_tokenizer: Any
) -> None:
    fake_engine.metadata = {"max_length": 128, "stride": 0, "aggregation": "mean_logits"}
    async with client_factory(engine=fake_engine) as client:
        info = (await client.get("/info")).json()
        assert (info["max_batch_tokens"], info["max_padding_ratio"]) == (1024, 0.1)
        texts = [long_text(2000, seed=s) for s in range(4)]
        responses = await asyncio.gather(*(client.post("/classify", json={"text": t}) for t in texts))
        assert all(r.status_code == 200 for r in responses)
    # On a CPU no pass exceeds 1,024 padded tokens (eight windows of 128), nor pads past 10%: each
    # document's short last window waits for a pass of short windows instead of being padded to 128.
    shapes = [[len(ids) for ids in call] for call in fake_engine.calls]
    assert max(len(call) * max(call) for call in shapes) <= 1024
    assert max(1 - sum(call) / (len(call) * max(call)) for call in shapes) <= 0.1
    assert max(len(call) for call in shapes) > 1  # still batched
    assert sum(min(call) < 128 for call in shapes) >= 1  # the short last windows ran, among themselves
    async with client_factory(engine=GpuFakeEngine(wordpiece_tokenizer)) as client:
        info = (await client.get("/info")).json()
        assert (info["max_batch_tokens"], info["max_padding_ratio"]) == (16384, 1.0)
    fake_engine.quantization = "int8"  # runs its windows one by one: a bigger pass only delays short texts
    async with client_factory(engine=fake_engine) as client:
        assert (await client.get("/info")).json()["max_batch_tokens"] == 256
    async with client_factory(
        engine=GpuFakeEngine(wordpiece_tokenizer), max_batch_tokens=4096, max_padding_ratio=0.25
    ) as client:
        info = (await client.get("/info")).json()
        assert (info["max_batch_tokens"], info["max_padding_ratio"]) == (4096, 0.25)


async def test_environment_overrides_model_metadata(client_factory: ClientFactory) -> None:
    async with client_factory(max_length=32, stride=0, aggregation="max_logits") as client:
        info = (await client.get("/info")).json()
        assert (info["max_length"], info["stride"], info["aggregation"]) == (32, 0, "max_logits")


async def test_a_bad_threshold_in_the_model_metadata_stops_start_up(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    """longdoc.json is validated like the environment: 7.5 would silently give every text labels: []."""
    fake_engine.metadata = {"max_length": 32, "stride": 4, "aggregation": "mean_logits", "threshold": 7.5}
    with pytest.raises(ConfigurationError, match=r"threshold in longdoc.json must be between 0 and 1 .*got 7.5"):
        async with client_factory(engine=fake_engine):
            pass


async def test_classify_long_text_uses_every_token(client_factory: ClientFactory, wordpiece_tokenizer: Any) -> None:
    text = long_text(700, seed=1)
    n = len(wordpiece_tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])
    async with client_factory() as client:
        response = await client.post("/classify", json={"text": text, "return_chunks": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["num_tokens"] == n
    assert body["num_chunks"] == expected_chunk_count(n, 62, 8) == len(body["chunks"])
    assert body["label"] in {"negative", "positive"} and body["label"] == body["scores"][0]["label"]
    assert sum(s["score"] for s in body["scores"]) == pytest.approx(1.0, abs=1e-5)
    assert body["scores"][0]["score"] >= body["scores"][1]["score"]
    chunks = body["chunks"]
    assert chunks[0]["start"] == 0 and chunks[-1]["end"] == len(text)
    assert all(0 <= c["start"] < c["end"] <= len(text) for c in chunks)
    assert all(a["start"] < b["start"] < a["end"] for a, b in itertools.pairwise(chunks))  # overlap
    assert sum(c["contribution"] for c in chunks) == pytest.approx(1.0, abs=1e-5)
    top = body["top_chunks"]
    assert 1 <= len(top) <= 3
    assert all(t["excerpt"] == text[t["start"] : t["end"]][: len(t["excerpt"])] for t in top)


async def test_excerpt_is_cut_between_whole_characters(client_factory: ClientFactory) -> None:
    """An emoji ZWJ sequence straddling the 280-code-point limit is left out whole, never half sent."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    text = "word " * 55 + "ab" + family + " tail"
    async with client_factory() as client:
        response = await client.post("/classify", json={"text": text, "return_chunks": True, "top_k_chunks": 1})
    assert response.status_code == 200, response.text
    (top,) = response.json()["top_chunks"]
    assert top["end"] == len(text)
    assert top["excerpt"] == text[:277]  # the sequence spans code points 277-281


async def test_batch_of_texts_keeps_order_and_matches_single_requests(client_factory: ClientFactory) -> None:
    texts = [long_text(50 + 90 * i, seed=i) for i in range(5)]
    async with client_factory() as client:
        batch = (await client.post("/classify", json={"texts": texts})).json()
        singles = [(await client.post("/classify", json={"text": t})).json() for t in texts]
    assert [r["num_tokens"] for r in batch["results"]] == [s["num_tokens"] for s in singles]
    for together, alone in zip(batch["results"], singles, strict=True):
        assert together["label"] == alone["label"]
        assert together["score"] == pytest.approx(alone["score"], abs=1e-4)


async def test_concurrent_documents_equal_one_at_a_time(client_factory: ClientFactory) -> None:
    """Batch equivalence (fp32): padding and batch neighbours must not change any score."""
    texts = [long_text(30 + 47 * i, seed=10 + i) for i in range(12)]
    async with client_factory(max_wait_ms=50) as client:
        alone = [(await client.post("/classify", json={"text": t})).json() for t in texts]
        together = await asyncio.gather(*(client.post("/classify", json={"text": t}) for t in texts))
        metrics = (await client.get("/metrics")).text
    for a, t in zip(alone, together, strict=True):
        t_body = t.json()
        assert a["label"] == t_body["label"]
        for sa, st in zip(a["scores"], t_body["scores"], strict=True):
            assert sa["label"] == st["label"] and sa["score"] == pytest.approx(st["score"], abs=1e-4)
    assert metric_value(metrics, "longdoc_batch_padding_ratio_count") > 0


async def test_32_concurrent_requests_need_fewer_forward_passes_than_chunks(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    fake_engine.delay_s = 0.02
    texts = [long_text(60 + 7 * i, seed=i) for i in range(32)]
    async with client_factory(engine=fake_engine, max_wait_ms=20) as client:
        responses = await asyncio.gather(*(client.post("/classify", json={"text": t}) for t in texts))
        metrics = (await client.get("/metrics")).text
    assert all(r.status_code == 200 for r in responses)
    chunks = sum(r.json()["num_chunks"] for r in responses)
    batches = metric_value(metrics, "longdoc_batch_size_count")
    assert metric_value(metrics, "longdoc_batch_size_sum") == chunks + 1  # + the warm-up chunk
    assert batches < chunks / 4
    assert len(fake_engine.calls) == batches


LATIN_1 = {"content-type": "application/json; charset=latin-1"}
GZIP = {"content-encoding": "gzip"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "error_type", "fragment"),
    [
        (b'{"text": "unterminated', {}, 400, "bad_request", "not valid JSON"),
        (b"", {}, 400, "bad_request", "body is empty"),
        (b'{"text": "\xff\xfe bad utf-8"}', {}, 400, "bad_request", "not valid UTF-8: byte 0xFF at offset 10"),
        (b'{"text": "ab\xed\xa0\x80"}', {}, 400, "bad_request", "not valid UTF-8: byte 0xED at offset 12"),
        (b'{"text": ""}', {}, 422, "invalid_input", "empty"),
        (b'{"text": " \\n\\t "}', {}, 422, "invalid_input", "whitespace"),
        (b'{"text": "\\u0000\\u0001\\u0002"}', {}, 422, "invalid_input", "no tokens"),
        (b'{"text": 42}', {}, 422, "invalid_input", "text"),
        (b'{"text": "a", "texts": ["b"]}', {}, 422, "invalid_input", "exactly one"),
        (b"{}", {}, 422, "invalid_input", "exactly one"),
        (b'{"texts": []}', {}, 422, "invalid_input", "at least one"),
        (b'{"texts": ["fine", "  "]}', {}, 422, "invalid_input", "texts[1]"),
        (b'{"texts": [""]}', {}, 422, "invalid_input", "texts[0] is empty"),
        (b"[1, 2]", {}, 422, "invalid_input", ""),
        (b'{"text": "a", "aggregation": "median"}', {}, 422, "invalid_input", "aggregation"),
        (b'{"text": "a", "max_chunks": 0}', {}, 422, "invalid_input", "max_chunks"),
        (b'{"text": "a", "surprise": 1}', {}, 422, "invalid_input", "surprise"),
        (b'{"text": "a", "return_chunks": "yes"}', {}, 422, "invalid_input", "return_chunks"),
        (b'{"text": "a", "top_k_chunks": "1"}', {}, 422, "invalid_input", "top_k_chunks"),
        (b'{"text": "ab\\ud800cd"}', {}, 400, "bad_request", "lone surrogate U+D800 at character 2"),
        (b'{"texts": ["ok", "x\\udfff"]}', {}, 400, "bad_request", "texts[1] is not valid Unicode"),
        (b'{"text": "a"}', {"content-type": "text/plain"}, 415, "unsupported_media_type", "text/plain"),
        (b'{"text": "a"}', LATIN_1, 415, "unsupported_media_type", "charset 'latin-1' is not supported"),
        pytest.param(
            gzip.compress(b'{"text": "a"}'), GZIP, 415, "unsupported_media_type", "Content-Encoding 'gzip'", id="gzip"
        ),
        (b'{"text": 1' + b"0" * 5000 + b"}", {}, 400, "bad_request", "not valid JSON: Exceeds the limit (4300 digits)"),
        (
            b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            {},
            400,
            "bad_request",
            "not valid JSON: maximum recursion",
        ),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    client_factory: ClientFactory,
    fake_engine: FakeEngine,
    body: bytes,
    headers: dict[str, str],
    status: int,
    error_type: str,
    fragment: str,
) -> None:
    async with client_factory(engine=fake_engine) as client:
        response = await client.post("/classify", content=body, headers={"content-type": "application/json", **headers})
        assert_error(response, status, error_type, fragment)
        assert (await client.post("/classify", json={"text": "still fine"})).status_code == 200


async def test_limits_say_which_limit_and_value(client_factory: ClientFactory, fake_engine: FakeEngine) -> None:
    async with client_factory(
        engine=fake_engine, max_texts_per_request=3, max_document_chars=100, max_body_bytes=2000
    ) as client:
        assert_error(
            await client.post("/classify", json={"texts": ["a"] * 4}),
            413,
            "payload_too_large",
            "4 texts exceed max_texts_per_request 3",
        )
        assert_error(
            await client.post("/classify", json={"text": "x" * 101}),
            413,
            "payload_too_large",
            "101 characters, over max_document_chars 100",
        )
        declared = await client.post("/classify", json={"text": "y " * 1500})
        assert_error(declared, 413, "payload_too_large", "max_body_bytes 2000")

        async def streamed() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b" " * 500

        refused = await client.post("/classify", content=streamed(), headers={"content-type": "application/json"})
        assert_error(refused, 413, "payload_too_large", "max_body_bytes 2000")
        # the connection stays open (closing with body bytes unread resets it under a proxy still sending)
        assert "connection" not in declared.headers and "connection" not in refused.headers
        metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "longdoc_rejected_total", reason="body_too_large") == 2
    assert metric_value(metrics, "longdoc_rejected_total", reason="payload_too_large") == 2
    # refused before routing or while streaming, both still count under their route
    assert metric_value(metrics, "longdoc_requests_total", endpoint="/classify", status="413") == 4


async def test_body_without_content_type_is_read_as_json(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    async with client_factory(engine=fake_engine) as client:
        response = await client.post("/classify", content=b'{"text": "no content type"}')
        assert "content-type" not in response.request.headers
        assert response.status_code == 200, response.text
        empty = await client.post("/classify", content=b'{"text": "empty"}', headers={"Content-Type": ""})
        assert empty.status_code == 200, empty.text  # an empty header declares nothing either
        identity = {"Content-Encoding": "identity, Identity"}  # no coding at all, however spelled
        assert (await client.post("/classify", json={"text": "a"}, headers=identity)).status_code == 200


async def test_null_optional_fields_mean_their_defaults(client_factory: ClientFactory, fake_engine: FakeEngine) -> None:
    nulls = {"aggregation": None, "max_chunks": None, "return_chunks": None, "top_k_chunks": None}
    async with client_factory(engine=fake_engine) as client:
        response = await client.post("/classify", json={"text": "some text", **nulls})
        plain = await client.post("/classify", json={"text": "some text"})
    assert response.status_code == 200, response.text
    assert response.json() == plain.json()
    assert response.json()["chunks"] is None  # return_chunks: null is false


async def test_a_bug_answers_500_with_the_request_id(client_factory: ClientFactory, fake_engine: FakeEngine) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug")

    async with client_factory(engine=fake_engine) as client:
        client.app.add_api_route("/broken", broken)  # type: ignore[attr-defined]
        response = await client.get("/broken", headers={"X-Request-ID": "bug-1"})
        assert_error(response, 500, "internal_error", "RuntimeError: a bug")
        assert response.headers["x-request-id"] == "bug-1"
        assert (await client.post("/classify", json={"text": "still fine"})).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "longdoc_requests_total", endpoint="/broken", status="500") == 1


async def test_unknown_route_and_method_use_the_error_body(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    async with client_factory(engine=fake_engine) as client:
        assert_error(await client.get("/nope"), 404, "not_found", "no route GET /nope")
        nope = await client.post("/nope/", json={"text": "a"})
        assert_error(nope, 404, "not_found", "no route POST /nope/")
        assert "did you mean" not in nope.text  # only a route that exists is suggested
        assert_error(await client.get("/classify"), 405, "method_not_allowed")
        # a trailing slash: a JSON 404 that names the route, not an empty 307 most clients don't follow
        slash = await client.post("/classify/", json={"text": "a"})
        assert_error(slash, 404, "not_found", "no route POST /classify/; did you mean /classify?")


async def test_metrics_exposes_every_documented_metric(client_factory: ClientFactory) -> None:
    async with client_factory() as client:
        await client.post("/classify", json={"text": long_text(200)})
        await client.post("/classify", json={"text": ""})
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    for name in ALL_METRICS:
        assert re.search(rf"^# TYPE {name} ", response.text, re.M), name
    assert metric_value(response.text, "longdoc_requests_total", endpoint="/classify", status="200") == 1
    assert metric_value(response.text, "longdoc_requests_total", endpoint="/classify", status="422") == 1
    assert re.search(r'longdoc_model_info\{.*quantization="none".*\} 1\.0', response.text)


async def test_aggregation_override_and_max_chunks(client_factory: ClientFactory) -> None:
    text = long_text(400, seed=3)
    async with client_factory() as client:
        default = (await client.post("/classify", json={"text": text})).json()
        by_max = (await client.post("/classify", json={"text": text, "aggregation": "max_logits"})).json()
        capped = (await client.post("/classify", json={"text": text, "max_chunks": 2})).json()
    assert default["aggregation"] == "mean_logits" and by_max["aggregation"] == "max_logits"
    assert default["scores"] != by_max["scores"]
    assert capped["num_chunks"] == 2 and capped["truncated"] is True and default["truncated"] is False
    assert capped["num_tokens"] == default["num_tokens"]


async def test_api_key(client_factory: ClientFactory, fake_engine: FakeEngine) -> None:
    async with client_factory(engine=fake_engine, api_key="s3cret") as client:
        assert_error(await client.post("/classify", json={"text": "a"}), 401, "unauthorized")
        assert_error(
            await client.post("/classify", json={"text": "a"}, headers={"X-API-Key": "wrong"}), 401, "unauthorized"
        )
        ok = await client.post("/classify", json={"text": "a"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert (await client.post("/classify", json={"text": "a"}, headers={"X-API-Key": "s3cret"})).status_code == 200
        hf_token = {"X-API-Key": "s3cret", "Authorization": "Bearer hf_someone_elses_token"}
        assert (await client.post("/classify", json={"text": "a"}, headers=hf_token)).status_code == 200
        empty = {"X-API-Key": "", "Authorization": "Bearer "}
        assert_error(await client.post("/classify", json={"text": "a"}, headers=empty), 401, "unauthorized")
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        # without the key, what the body holds is none of the caller's business: 401 before 400/415/422
        for body, content_type in ((b'{"text": "unterminated', "application/json"), (b"{}", "text/plain")):
            refused = await client.post("/classify", content=body, headers={"content-type": content_type})
            assert_error(refused, 401, "unauthorized")
        malformed = await client.post("/classify", content=b'{"text": "unterminated', headers={"X-API-Key": "s3cret"})
        assert_error(malformed, 400, "bad_request", "not valid JSON")
    async with client_factory(engine=fake_engine, api_key="clé-ü") as client:  # sent as UTF-8 bytes, as curl does
        utf8 = {"X-API-Key": "clé-ü".encode()}
        assert (await client.post("/classify", json={"text": "a"}, headers=utf8)).status_code == 200
        bearer = {"Authorization": b"Bearer " + "clé-ü".encode()}
        assert (await client.post("/classify", json={"text": "a"}, headers=bearer)).status_code == 200
        latin1 = {"X-API-Key": "clé-ü".encode("latin-1")}  # what requests, browsers and Node send
        assert (await client.post("/classify", json={"text": "a"}, headers=latin1)).status_code == 200
        wrong = {"X-API-Key": b"cle-u"}
        assert_error(await client.post("/classify", json={"text": "a"}, headers=wrong), 401, "unauthorized")
    async with client_factory(engine=fake_engine, api_key="secretà") as client:  # UTF-8 ends in 0xA0
        bearer = {"Authorization": b"Bearer " + "secretà".encode()}
        assert (await client.post("/classify", json={"text": "a"}, headers=bearer)).status_code == 200
    async with client_factory(engine=fake_engine, api_key="s3cret\n") as client:  # a secret file's newline
        ok = await client.post("/classify", json={"text": "a"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_failing_batch_fails_only_its_request(client_factory: ClientFactory, wordpiece_tokenizer: Any) -> None:
    engine = FakeEngine(wordpiece_tokenizer, fail_calls={1})  # call 0 is the warm-up
    async with client_factory(engine=engine) as client:
        assert_error(
            await client.post("/classify", json={"text": "first"}), 500, "inference_failed", "injected failure"
        )
        second = await client.post("/classify", json={"text": "second"})
        assert second.status_code == 200
        assert (await client.get("/health")).status_code == 200


class TokenizerSpy:
    """Wraps the service's `segment_many`: counts calls and the most that ran at once (each held 0.2 s)."""

    def __init__(self, service: Any) -> None:
        self.inner = service.segmenter.segment_many
        self.calls = self.running = self.most_at_once = 0
        self.lock = threading.Lock()
        self.gate = threading.Event()  # cleared: every tokenization waits for the test to open it
        self.gate.set()
        service.segmenter.segment_many = self

    def __call__(self, texts: list[str], max_chunks: int | None = None) -> Any:
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            assert self.gate.wait(10), "the test never opened the gate"
            time.sleep(0.2)
            return self.inner(texts, max_chunks)
        finally:
            with self.lock:
                self.running -= 1


async def test_a_request_too_large_for_the_queue_stops_tokenizing_once_it_shows(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    """Texts are tokenized in groups of max_tokenizing_chars; the 413 comes after the group that shows it."""
    async with client_factory(engine=fake_engine, max_queue_chunks=10, max_tokenizing_chars=600) as client:
        spy = TokenizerSpy(client.app.state.service)  # type: ignore[attr-defined]
        response = await client.post("/classify", json={"texts": ["good " * 100] * 5})  # 4 chunks each
    assert_error(
        response, 413, "payload_too_large", "at least 12 chunks (its first 3 of 5 texts)", "max_queue_chunks is 10"
    )
    assert spy.calls == 3


@pytest.mark.parametrize(("budget", "most_at_once"), [(600, 1), (1000, 2)])
async def test_concurrent_tokenization_stays_within_the_character_budget(
    client_factory: ClientFactory, fake_engine: FakeEngine, budget: int, most_at_once: int
) -> None:
    async with client_factory(engine=fake_engine, max_tokenizing_chars=budget) as client:
        spy = TokenizerSpy(client.app.state.service)  # type: ignore[attr-defined]
        first, second = await asyncio.gather(
            client.post("/classify", json={"text": "good " * 100}),
            client.post("/classify", json={"text": "bad " * 125}),
        )
    assert first.status_code == second.status_code == 200
    assert spy.most_at_once == most_at_once


async def test_metrics_show_the_tokenization_budget_in_use_and_who_waits(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    async with client_factory(engine=fake_engine, max_tokenizing_chars=600) as client:
        spy = TokenizerSpy(client.app.state.service)  # type: ignore[attr-defined]
        spy.gate.clear()
        requests = [asyncio.create_task(client.post("/classify", json={"text": "good " * 100})) for _ in range(2)]
        service = client.app.state.service  # type: ignore[attr-defined]
        await until(lambda: spy.running == 1 and service.tokenizing.waiting == 1)
        busy = (await client.get("/metrics")).text
        spy.gate.set()
        assert [r.status_code for r in await asyncio.gather(*requests)] == [200, 200]
        idle = (await client.get("/metrics")).text
    assert metric_value(busy, "longdoc_tokenizing_chars") == 500
    assert metric_value(busy, "longdoc_tokenizing_waiting") == 1
    assert metric_value(idle, "longdoc_tokenizing_chars") == metric_value(idle, "longdoc_tokenizing_waiting") == 0


async def test_a_small_request_does_not_wait_for_a_large_texts_tokenization(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    """A text over the whole budget is tokenized alone; requests of at most 1/32 of the budget have a lane
    of their own (1/8 of it wide) and are answered while it runs."""
    async with client_factory(engine=fake_engine, max_tokenizing_chars=3200) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        spy = TokenizerSpy(service)
        inner, large_may_finish = spy.inner, threading.Event()

        def hold_large(texts: list[str], max_chunks: int | None = None) -> Any:
            if sum(map(len, texts)) > 100:
                assert large_may_finish.wait(10), "the test never let the large text finish"
            return inner(texts, max_chunks)

        spy.inner = hold_large
        large = asyncio.create_task(client.post("/classify", json={"text": "good " * 700}))  # 3,500 characters
        await until(lambda: service.tokenizing.held == 3200)
        small = await client.post("/classify", json={"texts": ["a short text", "b" * 80]})
        still_running, held = spy.running, service.tokenizing_chars
        metrics = (await client.get("/metrics")).text
        large_may_finish.set()
        assert (await large).status_code == 200
    assert small.status_code == 200 and len(small.json()["results"]) == 2
    assert still_running == 1 and held == 3200  # answered while the large text was still being tokenized
    assert metric_value(metrics, "longdoc_tokenizing_chars") == 3200
    assert service.tokenize_backlog == 0


async def test_a_forced_stop_answers_requests_still_tokenizing_or_waiting_to(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    """An operator's second signal aborts the batcher: a request being tokenized gets its 503 when the
    tokenization ends, one waiting for the character budget as soon as it is granted, without tokenizing."""
    async with client_factory(engine=fake_engine, max_tokenizing_chars=600) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        spy = TokenizerSpy(service)
        spy.gate.clear()
        tokenizing = asyncio.create_task(client.post("/classify", json={"text": "good " * 100}))
        await until(lambda: spy.running == 1)
        waiting = asyncio.create_task(client.post("/classify", json={"text": "bad " * 125}))
        await until(lambda: service.tokenizing.waiting == 1)
        service.batcher.abort(Draining("the service was stopped before this request finished; retry"))
        spy.gate.set()
        answers = await asyncio.gather(tokenizing, waiting)
    assert_error(answers[0], 503, "draining", "accepts no new work")
    assert_error(answers[1], 503, "draining", "stopped before this request finished")
    assert answers[0].headers["retry-after"] == answers[1].headers["retry-after"] == "1"
    assert spy.calls == 1  # the waiting one never tokenized


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


@pytest.mark.parametrize(
    ("texts", "admitted", "backlog"),
    [(["good " * 100], 6, 3000), (["a" * 100, "x" * 550], 4, 2600)],  # one group each; two groups each
)
async def test_characters_admitted_but_not_yet_tokenized_are_bounded(
    client_factory: ClientFactory, fake_engine: FakeEngine, texts: list[str], admitted: int, backlog: int
) -> None:
    """Five budgets of characters may be admitted and not yet tokenized (counting every group of a request);
    past that a request gets 429 at once, not a 504 later."""
    async with client_factory(engine=fake_engine, max_tokenizing_chars=600) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        spy = TokenizerSpy(service)
        spy.gate.clear()
        accepted: list[asyncio.Task[httpx.Response]] = []
        for _ in range(admitted):
            accepted.append(asyncio.create_task(client.post("/classify", json={"texts": texts})))
            await until(lambda: service.tokenize_backlog == len(accepted) * sum(map(len, texts)))
        refused = await client.post("/classify", json={"texts": texts})
        spy.gate.set()
        statuses = [r.status_code for r in await asyncio.gather(*accepted)]
        assert service.tokenize_backlog == 0
        metrics = (await client.get("/metrics")).text
    assert_error(refused, 429, "overloaded", f"tokenizer busy: {backlog} characters", "5 x max_tokenizing_chars = 3000")
    assert "retry-after" in refused.headers
    assert statuses == [200] * admitted
    assert metric_value(metrics, "longdoc_rejected_total", reason="tokenizer_busy") == 1


async def test_a_deadline_passing_while_waiting_for_the_budget_is_a_504(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    async with client_factory(engine=fake_engine, max_tokenizing_chars=600, request_timeout_s=0.5) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        spy = TokenizerSpy(service)
        spy.gate.clear()
        first = asyncio.create_task(client.post("/classify", json={"text": "good " * 100}))
        await until(lambda: spy.running == 1)
        waited = await client.post("/classify", json={"text": "bad " * 125})
        assert service.tokenizing.held == 500  # the first thread still runs: its characters stay reserved
        spy.gate.set()
        await first
        await until(lambda: service.tokenizing.held == 0)
    assert_error(waited, 504, "deadline_exceeded", "while tokenizing (or waiting to tokenize) 1 text(s) of 500")
    assert spy.calls == 1  # the one that timed out waiting never reached the tokenizer


async def test_deadline_holds_while_a_huge_text_is_tokenized(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    """Tokenizing megabytes takes seconds: the deadline covers it, and nothing reaches the engine."""
    async with client_factory(engine=fake_engine, request_timeout_s=0.001) as client:
        calls = len(fake_engine.calls)
        response = await client.post("/classify", json={"text": "zebra crossing " * 100_000})
    assert_error(
        response,
        504,
        "deadline_exceeded",
        "request_timeout_s 0.001",
        "while tokenizing (or waiting to tokenize) 1 text(s)",
    )
    assert len(fake_engine.calls) == calls


async def test_deadline_gives_504_and_drops_the_chunks(client_factory: ClientFactory, wordpiece_tokenizer: Any) -> None:
    engine = FakeEngine(wordpiece_tokenizer, delay_s=0.5)
    async with client_factory(
        engine=engine, request_timeout_s=0.3, drain_timeout_s=5, max_batch_size=1, max_wait_ms=0
    ) as client:

        async def later(delay_s: float, text: str) -> httpx.Response:
            await asyncio.sleep(delay_s)  # the first request must hold the engine before the zebras queue
            return await client.post("/classify", json={"text": text})

        first, second = await asyncio.gather(later(0, "occupies the engine"), later(0.1, "zebra " * 100))
        await asyncio.sleep(1.2)
    assert {first.status_code, second.status_code} == {504}
    assert_error(second, 504, "deadline_exceeded", "request_timeout_s 0.3")
    zebra = wordpiece_tokenizer.convert_tokens_to_ids("zebra")
    assert engine.chunks_seen <= 3  # warm-up + at most the first request's chunk: the zebras never ran
    assert all(zebra not in chunk for call in engine.calls for chunk in call)


async def test_overload_gives_429_with_retry_after(client_factory: ClientFactory, wordpiece_tokenizer: Any) -> None:
    engine = FakeEngine(wordpiece_tokenizer, delay_s=0.05)
    async with client_factory(engine=engine, max_queue_chunks=12, max_batch_size=4) as client:
        responses = await asyncio.gather(
            *(client.post("/classify", json={"text": long_text(80, i)}) for i in range(12))
        )
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429}, statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert_error(refused, 429, "overloaded", "max_queue_chunks 12")
        assert_error(
            await client.post("/classify", json={"text": long_text(500)}),
            413,
            "payload_too_large",
            "max_queue_chunks is 12",
        )
        assert (await client.post("/classify", json={"text": "afterwards"})).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "longdoc_rejected_total") >= 2


async def test_draining_answers_503(client_factory: ClientFactory, fake_engine: FakeEngine) -> None:
    async with client_factory(engine=fake_engine) as client:
        app = client.app  # type: ignore[attr-defined]
        app.state.service.draining = app.state.in_flight.draining = True  # what SIGTERM does
        assert_error(await client.get("/health"), 503, "draining")
        draining = await client.post("/classify", json={"text": "a"})
        assert_error(draining, 503, "draining")
        assert draining.headers["retry-after"] == "1"
        assert (await client.get("/health/live")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "longdoc_ready") == 0
    assert metric_value(metrics, "longdoc_rejected_total", reason="draining") == 1  # the /classify, not the probe


async def test_a_request_uploading_when_the_drain_begins_is_answered(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    uploading = asyncio.Event()
    drain_began = asyncio.Event()

    async def slow_body() -> Any:
        yield b'{"text": "arrived before '
        uploading.set()
        await drain_began.wait()
        yield b'the drain"}'

    async with client_factory(engine=fake_engine) as client:
        app = client.app  # type: ignore[attr-defined]
        pending = asyncio.ensure_future(
            client.post("/classify", content=slow_body(), headers={"content-type": "application/json"})
        )
        await uploading.wait()
        app.state.service.draining = app.state.in_flight.draining = True  # what SIGTERM does
        drain_began.set()
        answered = await pending
        assert answered.status_code == 200, answered.text
        assert_error(await client.post("/classify", json={"text": "after"}), 503, "draining")


async def test_multi_label_model_lists_labels_over_threshold(tmp_path: Path, client_factory: ClientFactory) -> None:
    model_dir = build_tiny_bert(tmp_path / "multi", multi_label=True, labels=("a", "b", "c"))
    async with client_factory(model_dir=model_dir, threshold=0.3) as client:
        body = (await client.post("/classify", json={"text": long_text(100)})).json()
    scores = {s["label"]: s["score"] for s in body["scores"]}
    assert sum(scores.values()) != pytest.approx(1.0, abs=1e-3)  # sigmoid, not softmax
    assert set(body["labels"]) == {label for label, score in scores.items() if score >= 0.3}


async def test_openapi_documents_error_statuses(client_factory: ClientFactory, fake_engine: FakeEngine) -> None:
    async with client_factory(engine=fake_engine) as client:
        schema = (await client.get("/openapi.json")).json()
    documented = set(schema["paths"]["/classify"]["post"]["responses"])
    assert {"200", "400", "401", "413", "415", "422", "429", "500", "503", "504"} <= documented
    async with client_factory(engine=FakeEngine(fake_engine.tokenizer), docs_enabled=False) as client:
        assert (await client.get("/openapi.json")).status_code == 404
        assert (await client.get("/docs")).status_code == 404


def test_invalid_settings_name_the_value(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match=r"stride \(64\) must be smaller than max_length \(64\)"):
        Settings(model_dir=tiny_model_dir, max_length=64, stride=64)
    with pytest.raises(ValidationError, match="drain_timeout_s"):
        Settings(model_dir=tiny_model_dir, request_timeout_s=100, drain_timeout_s=10)
    with pytest.raises(ValidationError, match="not a checkpoint directory"):
        Settings(model_dir=tmp_path)
    with pytest.raises(ValidationError, match="max_batch_tokens"):
        Settings(model_dir=tiny_model_dir, max_batch_tokens=0)
    with pytest.raises(ValidationError, match=r"max_padding_ratio\n  Input should be less than or equal to 1"):
        Settings(model_dir=tiny_model_dir, max_padding_ratio=1.5)
    with pytest.raises(ValidationError, match=r"api_key is empty: set a key, or unset LONGDOC_API_KEY"):
        Settings(model_dir=tiny_model_dir, api_key="")
    for name in ("max_wait_ms", "request_timeout_s", "drain_timeout_s", "startup_timeout_s", "scheduler_aging_s"):
        with pytest.raises(ValidationError, match=rf"{name}\n  Input should be a finite number"):
            Settings(model_dir=tiny_model_dir, **{"drain_timeout_s": 630, name: "inf"})  # type: ignore[arg-type]


async def test_window_longer_than_the_model_is_refused_at_start(client_factory: ClientFactory) -> None:
    with pytest.raises(ConfigurationError, match="max_length 200 exceeds the model's position limit 128"):
        async with client_factory(max_length=200):
            pass
    with pytest.raises(ConfigurationError, match=r"stride must satisfy 0 <= stride < 62 .*got 62"):
        async with client_factory(stride=62):
            pass


def test_unknown_settings_are_named_with_the_one_meant() -> None:
    from app.settings import unknown_settings

    environ = {"LONGDOC_APIKEY": "k", "LONGDOC_MAX_BATCH_TOKENS": "1", "LONGDOC_WIBBLE": "1", "PATH": "/bin"}
    environ |= {"LONGDOC_Max_Wait_Ms": "2", "LONGDOC_URL": "http://x"}  # read case-blind; the client's variable
    environ |= {"LONGDOC_SERVICE_HOST": "10.0.0.1", "LONGDOC_PORT_80_TCP_ADDR": "10.0.0.1"}  # Kubernetes' links
    assert unknown_settings(environ) == ["LONGDOC_APIKEY (did you mean LONGDOC_API_KEY?)", "LONGDOC_WIBBLE"]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    from app.settings import Settings

    monkeypatch.setenv("LONGDOC_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("LONGDOC_MAX_BATCH_TOKENS", "4096")
    monkeypatch.setenv("LONGDOC_MAX_PADDING_RATIO", "")  # compose's ${VAR:-}: unset, the device's default
    monkeypatch.setenv("LONGDOC_STRIDE", " ")
    monkeypatch.setenv("LONGDOC_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = Settings()
    assert settings.max_batch_tokens == 4096
    assert settings.max_padding_ratio is None and settings.stride is None
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert json.loads(settings.model_dump_json())["api_key"] is None


async def test_cors_is_off_by_default_and_on_for_listed_origins(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with client_factory(engine=fake_engine) as client:
        response = await client.options("/classify", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    async with client_factory(engine=FakeEngine(fake_engine.tokenizer), cors_origins=["https://app.example"]) as client:
        response = await client.options("/classify", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.options("/classify", headers={**preflight, "Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
    # A browser can read an error only with the CORS header, the body-limit 413 sent before routing included.
    async with client_factory(
        engine=FakeEngine(fake_engine.tokenizer), cors_origins=["https://app.example"], max_body_bytes=1000
    ) as client:
        too_large = await client.post("/classify", json={"text": "x" * 2000}, headers={"Origin": "https://app.example"})
        assert too_large.status_code == 413
        assert too_large.headers["access-control-allow-origin"] == "https://app.example"


def error_classes(base: type[LongdocError]) -> list[type[LongdocError]]:
    """Every subclass, however deep (NotReady and Draining share a base)."""
    return [c for sub in base.__subclasses__() for c in (sub, *error_classes(sub))]


async def test_error_series_exist_at_zero_before_the_first_error(client_factory: ClientFactory) -> None:
    """rate() and increase() see a counter's first event only if its series was already there at 0: a
    replica's first 500 or 504 must reach the error alerts and panels."""
    async with client_factory() as client:
        text = (await client.get("/metrics")).text
    for endpoint in ("/classify", "/predict", "/"):
        for status in ("200", "413", "429", "500", "503", "504"):
            line = f'longdoc_requests_total{{endpoint="{endpoint}",status="{status}"}} 0.0'
            assert line in text.splitlines(), line
    reasons = {line.split('"')[1] for line in text.splitlines() if line.startswith("longdoc_rejected_total{")}
    refusals = [
        c
        for c in error_classes(LongdocError)
        if c.status_code in REJECTION_STATUSES and c is not Overloaded and c.error_type != LongdocError.error_type
    ]
    assert {c.error_type for c in refusals} | {"body_too_large", "too_many_chunks", "no_room", "queue_full"} <= reasons


async def test_what_start_up_built_is_frozen_out_of_the_collector(client_factory: ClientFactory) -> None:
    """A full garbage collection walking the model and app (~400k objects) pauses the loop and the forward
    thread for ~0.3 s; after start-up they sit in the collector's permanent generation instead."""
    gc.unfreeze()
    try:
        async with client_factory() as client:
            service = client.app.state.service  # type: ignore[attr-defined]
            tracked = {id(o) for o in gc.get_objects()}
            assert gc.get_freeze_count() > 0
            assert id(service) not in tracked and id(service.batcher) not in tracked
    finally:
        gc.unfreeze()


async def test_access_log_levels_keep_probes_quiet_and_overloads_visible(
    client_factory: ClientFactory, fake_engine: FakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """An idle replica's log is mostly probes and scrapes: they go to debug; what the service could not
    answer (429, 503, 504, 5xx) goes to warning, so LONGDOC_LOG_LEVEL=warning still shows it."""
    caplog.set_level(logging.DEBUG, logger="longdoc.access")
    async with client_factory(engine=fake_engine, max_texts_per_request=1) as client:
        await client.get("/health")
        await client.get("/metrics")
        await client.post("/classify", json={"text": "fine"})
        await client.post("/classify", json={"texts": ["one", "two"]})  # 413: the client's doing
        app = client.app  # type: ignore[attr-defined]
        app.state.service.draining = app.state.in_flight.draining = True  # what SIGTERM does
        await client.post("/classify", json={"text": "refused"})
        await client.get("/health")  # 503 while draining: the probe doing its job
    levels = {
        (r.access["path"], r.access["status"]): r.levelname  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "longdoc.access"
    }
    assert levels[("/health", 200)] == levels[("/metrics", 200)] == "DEBUG"
    assert levels[("/classify", 200)] == levels[("/classify", 413)] == "INFO"
    assert levels[("/classify", 503)] == "WARNING"
    assert levels[("/health", 503)] == "INFO"
