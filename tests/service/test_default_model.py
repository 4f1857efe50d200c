"""The bundled model through the in-process HTTP stack: long documents, batch equivalence, int8, its card."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from app.segmenter import expected_chunk_count
from app.training.evaluate import evaluate_records, read_records
from tests.conftest import DEFAULT_MODEL, TRAIN_DATA, long_text
from tests.service.conftest import ClientFactory

pytestmark = pytest.mark.slow


@pytest.fixture
def default_factory(client_factory: ClientFactory) -> ClientFactory:
    def factory(**overrides: Any) -> Any:
        return client_factory(model_dir=DEFAULT_MODEL, **overrides)

    return factory  # type: ignore[return-value]


async def test_20000_word_document_returns_one_label(default_factory: ClientFactory) -> None:
    text = long_text(20_000, seed=42)
    async with default_factory() as client:
        info = (await client.get("/info")).json()
        body = (await client.post("/classify", json={"text": text})).json()
    assert info["model"] == "hyperpartisan-minilm" and set(info["labels"]) == {"hyperpartisan", "not_hyperpartisan"}
    assert body["label"] in info["labels"]
    assert body["num_tokens"] >= 20_000
    assert body["num_chunks"] == expected_chunk_count(body["num_tokens"], info["window_tokens"], info["stride"])


def _articles(n: int) -> list[str]:
    lines = TRAIN_DATA.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:n]]


async def _alone_and_together(client: Any, texts: list[str]) -> tuple[list[Any], list[Any]]:
    alone = [(await client.post("/classify", json={"text": t})).json() for t in texts]
    together = [r.json() for r in await asyncio.gather(*(client.post("/classify", json={"text": t}) for t in texts))]
    return alone, together


@pytest.mark.parametrize(("quantize", "tolerance"), [("none", 1e-4), ("int8", 0.01)])
async def test_concurrent_equals_one_at_a_time(default_factory: ClientFactory, quantize: str, tolerance: float) -> None:
    texts = _articles(10)
    # A GPU-sized budget, so windows of different articles really share passes (the CPU default is one).
    async with default_factory(quantize=quantize, max_wait_ms=50, max_batch_tokens=4096) as client:
        assert (await client.get("/info")).json()["quantization"] == quantize
        alone, together = await _alone_and_together(client, texts)
    for a, t in zip(alone, together, strict=True):
        assert a["label"] == t["label"]
        assert a["score"] == pytest.approx(t["score"], abs=tolerance)


def _score(body: dict[str, Any], label: str) -> float:
    return float(next(s["score"] for s in body["scores"] if s["label"] == label))


async def test_int8_agrees_with_fp32(default_factory: ClientFactory) -> None:
    """int8 keeps most labels and moves scores a little (out of fold it changes 69 of 641 labels, accuracy -2.3)."""
    texts = _articles(24)
    async with default_factory() as client:
        fp32 = [(await client.post("/classify", json={"text": t})).json() for t in texts]
    async with default_factory(quantize="int8") as client:
        int8 = [(await client.post("/classify", json={"text": t})).json() for t in texts]
    pairs = list(zip(fp32, int8, strict=True))
    assert sum(a["label"] == b["label"] for a, b in pairs) >= 0.8 * len(texts)
    shifts = [abs(_score(a, a["label"]) - _score(b, a["label"])) for a, b in pairs]
    assert sum(shifts) / len(shifts) < 0.1


def test_card_numbers_are_reproduced_from_the_shipped_predictions() -> None:
    """`longdoc eval --predictions` on the shipped out-of-fold file gives the card's cross-validation numbers."""
    recomputed = evaluate_records(read_records(DEFAULT_MODEL / "cv_predictions.jsonl"))
    shipped = json.loads((DEFAULT_MODEL / "cv_report.json").read_text(encoding="utf-8"))
    card = (DEFAULT_MODEL / "README.md").read_text(encoding="utf-8")
    serving = json.loads((DEFAULT_MODEL / "longdoc.json").read_text(encoding="utf-8"))
    stride = str(serving["stride"])
    for strategy, block in recomputed["strides"][stride]["strategies"].items():
        expected = shipped["strides"][stride]["strategies"][strategy]
        assert block["all"]["accuracy"] == pytest.approx(expected["all"]["accuracy"])
        assert block["all"]["macro_f1"] == pytest.approx(expected["all"]["macro_f1"])
        assert block["all"]["balanced_accuracy"] == pytest.approx(expected["all"]["balanced_accuracy"])
        assert f"{block['all']['accuracy']:.3f}" in card
    assert recomputed["strides"][stride]["n"] == 641  # every training article scored exactly once, out of fold
    assert serving["aggregation"] in recomputed["strides"][stride]["strategies"]
