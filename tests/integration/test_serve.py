"""The real server process on loopback with the bundled model: a long document, then a SIGTERM drain."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.segmenter import expected_chunk_count
from tests.conftest import DEFAULT_MODEL, long_text
from tests.integration.procs import REPO, free_port, longdoc_serve, service_env, stop, wait_until_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_serve_classifies_a_long_document(tmp_path: Path) -> None:
    port = free_port()
    text = long_text(20_000, seed=7)
    with longdoc_serve(port, tmp_path / "serve.log", log_json="true", apikey="misspelt"):
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=600) as client:  # one keep-alive connection throughout
            info = client.get("/info").json()
            assert info["model"] == DEFAULT_MODEL.name
            response = client.post("/classify", json={"text": text}, headers={"X-Request-ID": "long-doc-1"})
            assert response.status_code == 200, response.text
            body = response.json()
            window = info["window_tokens"]
            assert body["num_chunks"] == expected_chunk_count(body["num_tokens"], window, info["stride"])
            assert body["num_tokens"] > 20_000 and body["label"] in info["labels"]
            assert response.headers["x-request-id"] == "long-doc-1"
            # Text the tokenizer cannot take (half a surrogate pair) is a 400 that keeps the connection usable.
            bad = client.post(
                "/classify",
                content=b'{"text": "ab\\ud800cd"}',
                headers={"content-type": "application/json", "X-Request-ID": "surrogate-1"},
            )
            assert bad.status_code == 400 and "U+D800 at character 2" in bad.json()["error"]["message"]
            assert bad.headers["x-request-id"] == "surrogate-1"
            bare = client.post("/classify", content=b'{"text": "a body without a content type"}')
            assert bare.status_code == 200, bare.text  # read as JSON, as docs/operations.md promises
    access = [
        json.loads(line)
        for line in (tmp_path / "serve.log").read_text().splitlines()
        if line.startswith("{") and '"request_id": "long-doc-1"' in line
    ]
    assert access and access[0]["status"] == 200 and access[0]["chunks"] == body["num_chunks"]
    assert text[:40] not in (tmp_path / "serve.log").read_text()  # no document text in logs by default
    # a misspelt setting is named at start-up, not ignored in silence (this one would have meant "no key")
    assert (
        "LONGDOC_APIKEY (did you mean LONGDOC_API_KEY?) is not a longdoc setting"
        in (tmp_path / "serve.log").read_text()
    )


def test_uvicorn_factory_entry_point(tmp_path: Path, tiny_model_dir: Path) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app.main:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with (tmp_path / "uvicorn.log").open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=service_env(model_dir=tiny_model_dir), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_until_healthy(f"http://127.0.0.1:{port}", process)
            response = httpx.post(f"http://127.0.0.1:{port}/classify", json={"text": long_text(300)})
            assert response.status_code == 200 and response.json()["num_chunks"] > 1
        finally:
            stop(process)


def _queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(r"^longdoc_queue_depth (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_sigterm_drains_accepted_requests(tmp_path: Path) -> None:
    """At SIGTERM the queue holds chunks; every accepted request gets 200, a new one gets 503, exit 0."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    texts = [long_text(3000, seed=s) for s in range(6)]
    results: list[int | str] = []

    def send(text: str) -> None:
        try:
            results.append(httpx.post(f"{url}/classify", json={"text": text}, timeout=600).status_code)
        except httpx.HTTPError as exc:  # a reset connection would land here
            results.append(type(exc).__name__)

    with longdoc_serve(port, tmp_path / "drain.log", max_batch_size=8, drain_timeout_s=600) as process:
        threads = [threading.Thread(target=send, args=(t,)) for t in texts]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while _queue_depth(url) <= 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _queue_depth(url) > 0, "no chunks queued when the signal was sent"
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        late = httpx.post(f"{url}/classify", json={"text": "sent after the signal"}, timeout=30)
        assert late.status_code == 503 and late.json()["error"]["type"] == "draining"
        assert httpx.get(f"{url}/health", timeout=5).status_code == 503
        for thread in threads:
            thread.join(600)
        assert process.wait(60) == 0
    assert results == [200] * len(texts)


def test_a_second_sigterm_answers_what_runs_and_exits_143(tmp_path: Path) -> None:
    """The operator's second signal cuts the drain short: the request still running gets its 503, the exit
    status says work was cut short (as a kill would), and the log has no error traceback to page anyone."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "second.log"
    answers: list[httpx.Response] = []
    with longdoc_serve(port, log_path, max_batch_size=1, drain_timeout_s=600, log_json="true") as process:
        sender = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{url}/classify", json={"text": long_text(20_000)}, timeout=600))
        )
        sender.start()
        deadline = time.monotonic() + 60
        while _queue_depth(url) <= 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert process.poll() is None  # the first signal drains
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 128 + signal.SIGTERM
        sender.join(30)
    assert answers[0].status_code == 503 and answers[0].json()["error"]["type"] == "draining"
    assert answers[0].headers["retry-after"] == "1"
    log = log_path.read_text(encoding="utf-8")
    assert "Traceback" not in log and '"level": "error"' not in log, log[-3000:]


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler installed for `sig` (the SigCgt mask of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_sigterm_during_the_imports_exits_at_once(tmp_path: Path) -> None:
    """In a container `longdoc serve` is PID 1, and the kernel drops signals PID 1 does not handle: SIGTERM
    must be handled from the first moment (the imports take seconds before uvicorn installs its handlers),
    or `docker stop` right after a start waits out its whole grace period."""
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=service_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _catches(process.pid, signal.SIGTERM) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 128 + signal.SIGTERM  # not the drain's 0: no server was running yet
    finally:
        stop(process)
