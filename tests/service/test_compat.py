"""TEI's POST /predict, the HF Inference API's POST / and the demo page, through the real app in process."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FakeEngine, build_tiny_bert, long_text
from tests.service.conftest import ClientFactory
from tests.service.test_api import metric_value


def assert_tei_error(response: httpx.Response, status: int, error_type: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    for fragment in fragments:
        assert fragment in body["error"], body


def as_pairs(predictions: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(p["label"], p["score"]) for p in predictions]


def same(predictions: list[dict[str, Any]], expected: list[tuple[str, float]]) -> bool:
    """Same labels in the same order, scores equal within float tolerance."""
    got = as_pairs(predictions)
    return [label for label, _ in got] == [label for label, _ in expected] and [s for _, s in got] == pytest.approx(
        [s for _, s in expected]
    )


async def classify_scores(client: httpx.AsyncClient, text: str) -> list[tuple[str, float]]:
    body = (await client.post("/classify", json={"text": text})).json()
    return [(s["label"], s["score"]) for s in body["scores"]]


async def test_predict_single_input_is_chunked_and_matches_classify(client_factory: ClientFactory) -> None:
    text = long_text(600, seed=3)
    async with client_factory() as client:
        chunks = (await client.post("/classify", json={"text": text})).json()["num_chunks"]
        expected = await classify_scores(client, text)
        for body in (
            {"inputs": text},
            {"inputs": [text]},
            {"inputs": text, "truncate": True, "truncation_direction": "Right"},
            {"inputs": text, "truncate": None},
        ):
            response = await client.post("/predict", json=body)
            assert response.status_code == 200, response.text
            predictions = response.json()
            assert same(predictions, expected)
            assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    assert chunks > 5  # far past the 64-token window: chunked, not truncated


async def test_predict_batch_answers_one_list_per_input_in_order(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    texts = ["good good good", "bad news", long_text(200, seed=1)]
    async with client_factory(engine=fake_engine) as client:
        response = await client.post("/predict", json={"inputs": [[t] for t in texts]})
        assert response.status_code == 200, response.text
        answers = response.json()
        assert len(answers) == len(texts)
        for answer, text in zip(answers, texts, strict=True):
            assert same(answer, await classify_scores(client, text))
        one = (await client.post("/predict", json={"inputs": [["good"]]})).json()
        assert isinstance(one, list) and len(one) == 1 and isinstance(one[0], list)


async def test_predict_raw_scores_keep_the_logit_differences(
    client_factory: ClientFactory, fake_engine: FakeEngine, wordpiece_tokenizer: Any
) -> None:
    text = "good good movie"  # one chunk: its logits are FakeEngine.chunk_logits of the framed ids
    ids = wordpiece_tokenizer(text)["input_ids"]
    negative, positive = FakeEngine.chunk_logits(ids, fake_engine.good_id)
    async with client_factory(engine=fake_engine) as client:
        raw = dict(as_pairs((await client.post("/predict", json={"inputs": text, "raw_scores": True})).json()))
        probs = dict(await classify_scores(client, text))
    assert raw["positive"] - raw["negative"] == pytest.approx(positive - negative, abs=1e-4)
    assert math.exp(raw["positive"]) == pytest.approx(probs["positive"], abs=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"inputs": ["a premise", "a hypothesis"]}, 422, "sentence pairs are not supported"),
        ({"inputs": [["one"], ["a premise", "a hypothesis"]]}, 422, "inputs[1]: sentence pairs"),
        ({"inputs": ["a", "b", "c"]}, 422, "batch is"),
        ({"inputs": [["a"], []]}, 422, "inputs[1] must hold exactly one string"),
        ({"inputs": []}, 422, "must not be empty"),
        ({"inputs": "   "}, 422, "inputs is empty or whitespace"),
        ({"inputs": ["   "]}, 422, "inputs[0] is empty"),
        ({"inputs": [["a"], ["\u0000"]]}, 422, "inputs[1][0] has no tokens"),
        ({"inputs": 5}, 422, "inputs"),
        ({"text": "longdoc's own field"}, 422, "inputs"),
        ({"inputs": "x", "raw_scores": "maybe"}, 422, "raw_scores"),
    ],
)
async def test_predict_refuses_bad_input_in_tei_body(
    client_factory: ClientFactory, fake_engine: FakeEngine, body: dict[str, Any], status: int, fragment: str
) -> None:
    async with client_factory(engine=fake_engine) as client:
        assert_tei_error(await client.post("/predict", json=body), status, "Validation", fragment)


async def test_compat_errors_keep_longdoc_statuses(client_factory: ClientFactory, fake_engine: FakeEngine) -> None:
    async with client_factory(engine=fake_engine, api_key="s3cret", max_texts_per_request=2) as client:
        key = {"X-API-Key": "s3cret"}
        for path in ("/predict", "/"):
            assert_tei_error(await client.post(path, json={"inputs": "a"}), 401, "Validation", "API key")
            unauthorized_malformed = await client.post(
                path, content=b'{"inputs": ', headers={"Content-Type": "application/json"}
            )
            assert_tei_error(unauthorized_malformed, 401, "Validation", "API key")
            malformed = await client.post(
                path, content=b'{"inputs": ', headers={**key, "Content-Type": "application/json"}
            )
            assert_tei_error(malformed, 400, "Validation", "not valid JSON")
            plain = await client.post(path, content=b"text", headers={**key, "Content-Type": "text/plain"})
            assert_tei_error(plain, 415, "Validation", "text/plain")
            digits = await client.post(path, content=b'{"inputs": 1' + b"0" * 5000 + b"}", headers=key)
            assert_tei_error(digits, 400, "Validation", "not valid JSON: Exceeds the limit (4300 digits)")
        too_many = await client.post("/predict", json={"inputs": [["a"], ["b"], ["c"]]}, headers=key)
        assert_tei_error(too_many, 413, "Validation", "max_texts_per_request 2")
        assert (await client.post("/predict", json={"inputs": "a"}, headers=key)).status_code == 200
        client.app.state.service.draining = client.app.state.in_flight.draining = True  # type: ignore[attr-defined]
        assert_tei_error(await client.post("/predict", json={"inputs": "a"}, headers=key), 503, "Unhealthy", "draining")
        metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "longdoc_rejected_total", reason="unauthorized") == 4
    assert metric_value(metrics, "longdoc_requests_total", endpoint="/predict", status="200") == 1


async def test_predict_overload_is_429_with_retry_after(
    client_factory: ClientFactory, wordpiece_tokenizer: Any
) -> None:
    engine = FakeEngine(wordpiece_tokenizer, delay_s=0.3)
    async with client_factory(engine=engine, max_queue_chunks=12, max_batch_size=2) as client:
        busy = asyncio.ensure_future(client.post("/classify", json={"texts": [long_text(80, 1), long_text(80, 2)]}))
        await asyncio.sleep(0.1)
        refused = await client.post("/predict", json={"inputs": long_text(80, seed=4)})
        assert (await busy).status_code == 200
    assert_tei_error(refused, 429, "Overloaded", "max_queue_chunks 12")
    assert int(refused.headers["retry-after"]) >= 1


async def test_inference_api_root_honours_parameters(client_factory: ClientFactory, fake_engine: FakeEngine) -> None:
    text = long_text(120, seed=5)
    async with client_factory(engine=fake_engine) as client:
        expected = await classify_scores(client, text)

        async def post(**body: Any) -> Any:
            response = await client.post("/", json={"inputs": text, **body})
            assert response.status_code == 200, response.text
            return response.json()

        for parameters in (None, {}, {"function_to_apply": "softmax"}, {"top_k": 5}):
            answer = await post(**({} if parameters is None else {"parameters": parameters}))
            assert len(answer) == 1 and same(answer[0], expected)
        assert same((await post(parameters={"top_k": 1}))[0], expected[:1])
        raw = dict(as_pairs((await post(parameters={"function_to_apply": "none"}))[0]))
        assert {label: math.exp(value) for label, value in raw.items()} == pytest.approx(dict(expected))
        sigmoid = dict(as_pairs((await post(parameters={"function_to_apply": "sigmoid"}))[0]))
        assert sigmoid == pytest.approx({label: 1 / (1 + math.exp(-value)) for label, value in raw.items()})
        both = await client.post("/", json={"inputs": [text, "good good"]})
        assert len(both.json()) == 2 and same(both.json()[0], expected)
        assert_tei_error(await client.post("/", json={"inputs": text, "parameters": {"top_k": 0}}), 422, "Validation")
        bad_function = {"inputs": text, "parameters": {"function_to_apply": "tanh"}}
        assert_tei_error(await client.post("/", json=bad_function), 422, "Validation", "function_to_apply")
        assert_tei_error(await client.post("/", json={"inputs": []}), 422, "Validation", "must not be empty")
        assert_tei_error(await client.post("/", json={"inputs": ["a", " "]}), 422, "Validation", "inputs[1] is empty")


async def test_inference_api_on_a_multi_label_model(tmp_path: Path, client_factory: ClientFactory) -> None:
    model_dir = build_tiny_bert(tmp_path / "multi", multi_label=True, labels=("a", "b", "c"))
    text = long_text(100)
    async with client_factory(model_dir=model_dir) as client:
        expected = dict(await classify_scores(client, text))
        default = (await client.post("/", json={"inputs": text})).json()[0]
        softmax = (await client.post("/", json={"inputs": text, "parameters": {"function_to_apply": "softmax"}})).json()
        raw = (await client.post("/predict", json={"inputs": text, "raw_scores": True})).json()
    assert dict(as_pairs(default)) == pytest.approx(expected)  # the model's own sigmoid scores
    assert sum(p["score"] for p in softmax[0]) == pytest.approx(1.0, abs=1e-5)
    assert {p["label"]: 1 / (1 + math.exp(-p["score"])) for p in raw} == pytest.approx(expected, abs=1e-5)


async def test_demo_page_and_assets(client_factory: ClientFactory, fake_engine: FakeEngine) -> None:
    async with client_factory(engine=fake_engine) as client:
        page = await client.get("/")
        script = await client.get("/static/demo.js")
        style = await client.get("/static/demo.css")
        missing = await client.get("/static/..%2Fmain.py")
        predict_get = await client.get("/predict")
        schema = (await client.get("/openapi.json")).json()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<script src="/static/demo.js" defer></script>' in page.text and "http" not in page.text.split("<body>")[1]
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert style.status_code == 200 and "--s10" in style.text
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert predict_get.status_code == 405
    assert set(schema["paths"]["/"]) == {"post"} and "/predict" in schema["paths"]


class CertainEngine(FakeEngine):
    """A model so sure that softmax rounds the losing label to exactly 0.0 in float32."""

    def forward(self, chunks: Any) -> Any:
        import torch

        super().forward(chunks)
        return torch.tensor([[0.0, 200.0]] * len(chunks))


@pytest.mark.parametrize("function", ["sigmoid", "none", "softmax"])
async def test_inference_api_functions_survive_a_certain_model(
    client_factory: ClientFactory, wordpiece_tokenizer: Any, function: str
) -> None:
    async with client_factory(engine=CertainEngine(wordpiece_tokenizer)) as client:
        response = await client.post("/", json={"inputs": "sure", "parameters": {"function_to_apply": function}})
    assert response.status_code == 200, response.text
    scores = dict(as_pairs(response.json()[0]))
    assert max(scores, key=lambda label: scores[label]) == "positive"
    if function != "none":
        assert all(0.0 <= value <= 1.0 for value in scores.values())


async def test_openapi_shows_the_tei_error_body_on_compat_routes(
    client_factory: ClientFactory, fake_engine: FakeEngine
) -> None:
    """A client generated from /openapi.json must expect {"error", "error_type"} there, not FastAPI's detail."""
    async with client_factory(engine=fake_engine) as client:
        schema = (await client.get("/openapi.json")).json()
    for path in ("/predict", "/"):
        responses = schema["paths"][path]["post"]["responses"]
        for status in ("400", "401", "413", "422", "429", "503"):
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/TeiError"), (path, status, ref)
    assert set(schema["components"]["schemas"]["TeiError"]["properties"]) == {"error", "error_type"}


async def test_the_demo_page_does_not_count_as_the_hugging_face_route(client_factory: ClientFactory) -> None:
    """Dashboards and alerts count `endpoint="/"` as classification traffic: opening the page must not."""
    async with client_factory() as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/static/demo.js")).status_code == 200
        assert (await client.head("/")).status_code == 200  # what many uptime checks send
        assert (await client.post("/", json={"inputs": "a short text"})).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert metric_value(metrics, "longdoc_requests_total", endpoint="/") == 1
    assert metric_value(metrics, "longdoc_requests_total", endpoint="demo", status="200") == 3
