"""Real clients against a real `longdoc serve`: huggingface_hub's InferenceClient and `longdoc classify`."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEFAULT_MODEL, long_text
from tests.integration.procs import REPO, free_port, longdoc_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "client-key"


@pytest.fixture(scope="module")
def service_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module: the bundled model once it exists, else the tiny random one."""
    model_dir = DEFAULT_MODEL if (DEFAULT_MODEL / "config.json").is_file() else tiny_model_dir
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with longdoc_serve(port, log, model_dir=model_dir, api_key=API_KEY, num_threads=1):
        yield f"http://127.0.0.1:{port}"


def classify(url: str, text: str) -> dict[str, object]:
    response = httpx.post(f"{url}/classify", json={"text": text}, headers={"X-API-Key": API_KEY}, timeout=600)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/conftest.py sets HF_HUB_OFFLINE=1, which makes huggingface_hub refuse every URL, loopback too."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.usefixtures("online")
def test_inference_client_text_classification(service_url: str) -> None:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    text = long_text(3_000, seed=21)
    expected = classify(service_url, text)
    assert isinstance(expected["num_chunks"], int) and expected["num_chunks"] > 10  # chunked, not truncated
    client = InferenceClient(model=service_url, token=API_KEY, timeout=600)

    result = client.text_classification(text)
    assert [r.label for r in result] == [s["label"] for s in expected["scores"]]  # type: ignore[attr-defined]
    assert [r.score for r in result] == pytest.approx([s["score"] for s in expected["scores"]])  # type: ignore[attr-defined]

    top = client.text_classification(text, top_k=1)
    assert len(top) == 1 and top[0].label == expected["label"]
    raw = client.text_classification(text, function_to_apply="none")
    assert {r.label: math.exp(r.score) for r in raw} == pytest.approx({r.label: r.score for r in result})

    with pytest.raises(HfHubHTTPError) as refused:
        client.text_classification("   ")
    assert refused.value.response.status_code == 422 and "empty" in str(refused.value)
    with pytest.raises(HfHubHTTPError) as unauthorized:
        InferenceClient(model=service_url, token="wrong").text_classification("a text")
    assert unauthorized.value.response.status_code == 401


def test_tei_predict_over_http(service_url: str) -> None:
    texts = [long_text(400, seed=1), long_text(50, seed=2)]
    response = httpx.post(
        f"{service_url}/predict",
        json={"inputs": [[t] for t in texts], "truncate": True},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=600,
    )
    assert response.status_code == 200, response.text
    for answer, text in zip(response.json(), texts, strict=True):
        assert [p["label"] for p in answer] == [s["label"] for s in classify(service_url, text)["scores"]]  # type: ignore[attr-defined]


def test_longdoc_classify_command(service_url: str, tmp_path: Path) -> None:
    files = []
    for i, words in enumerate((2_000, 300)):
        path = tmp_path / f"article-{i}.txt"
        path.write_text(long_text(words, seed=30 + i), encoding="utf-8")
        files.append(path)
    (tmp_path / "blank.txt").write_text("   \n", encoding="utf-8")
    names = [str(p) for p in files] + [str(tmp_path / "blank.txt"), str(tmp_path / "missing.txt")]
    env = {**os.environ, "LONGDOC_API_KEY": API_KEY}
    base = [sys.executable, "-m", "app.cli", "classify", "--url", service_url]
    command = [*base, *names]

    table = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    lines = table.stdout.splitlines()
    assert table.returncode == 1, table.stderr  # two of the four files fail, the others are still classified
    assert lines[0].split() == ["FILE", "LABEL", "SCORE", "CHUNKS", "TOKENS"]
    first = classify(service_url, files[0].read_text(encoding="utf-8"))
    assert lines[1].split() == [
        names[0],
        first["label"],
        f"{first['score']:.3f}",
        str(first["num_chunks"]),
        str(first["num_tokens"]),
    ]
    assert "invalid_input" in lines[3] and "read_error" in lines[4]

    jsonl = subprocess.run(
        [*base, "--json", "--chunks", *names[:2]], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert jsonl.returncode == 0, jsonl.stderr
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["file"] for r in records] == names[:2]
    assert records[0]["label"] == first["label"] and len(records[0]["chunks"]) == first["num_chunks"]
    assert records[0]["top_chunks"][0]["excerpt"]

    # `longdoc classify ... | head`: the reader is gone before the first line; no traceback, SIGPIPE's status
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = subprocess.run(
            [*base, "--json", *names[:2]], cwd=REPO, env=env, stdout=write_end, stderr=subprocess.PIPE, timeout=300
        )
    finally:
        os.close(write_end)
    assert closed.returncode == 128 + signal.SIGPIPE and b"Traceback" not in closed.stderr, closed.stderr.decode()
