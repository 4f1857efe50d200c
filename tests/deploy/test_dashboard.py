"""Grafana dashboard and alert queries against the service's real /metrics output (in-process ASGI stack)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from tests.conftest import long_text
from tests.deploy.render import ALERTS_YML, DASHBOARD, GRAFANA, PROMETHEUS_YML, SERVICE_JOB, load_yaml
from tests.service.conftest import running_client

TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time
SELECTOR = re.compile(r"\b(longdoc_[a-zA-Z0-9_]+|up)\s*(?:\{([^}]*)\})?")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
LABEL_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard_queries() -> list[str]:
    board = dashboard()
    queries = [t["expr"] for p in panels(board["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return [q for q in queries if q]


def alert_queries() -> list[str]:
    return [r["expr"] for group in load_yaml(ALERTS_YML)["groups"] for r in group["rules"]]


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, set[str]]:
    """Every sample name the real service exposes (after a classification and a rejection) -> its labels."""
    import asyncio

    async def scrape() -> str:
        settings = Settings(model_dir=tiny_model_dir, num_threads=1, max_body_bytes=40_000)
        async with running_client(settings) as client:
            ok = await client.post("/classify", json={"text": long_text(400)})
            assert ok.status_code == 200 and ok.json()["num_chunks"] > 1, ok.text
            too_large = await client.post("/classify", json={"text": long_text(8000)})
            assert too_large.status_code == 413, too_large.text
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            return metrics.text

    text = asyncio.run(scrape())
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    samples["up"] = set()  # Prometheus's own per-target series
    return samples


def check_queries(queries: list[str], exposed: dict[str, set[str]]) -> list[str]:
    problems = []
    for query in queries:
        used: set[str] = set()
        for name, matchers in SELECTOR.findall(query):
            if name not in exposed:
                problems.append(f"{name} (in {query!r}) is not in /metrics")
                continue
            known = exposed[name] | TARGET_LABELS
            used |= known
            for label in LABEL_MATCHER.findall(matchers or ""):
                if label not in known:
                    problems.append(f"{name} has no label {label!r} (in {query!r})")
            if 'job="' in (matchers or "") and f'job="{SERVICE_JOB}"' not in matchers:
                problems.append(f"job must be {SERVICE_JOB!r} (in {query!r})")
        for group in GROUPING.findall(query):
            for label in (g.strip() for g in group.split(",") if g.strip()):
                if label not in used:
                    problems.append(f"grouping label {label!r} is on none of the query's metrics ({query!r})")
    return problems


def test_dashboard_queries_use_only_real_metrics_and_labels(exposed: dict[str, set[str]]) -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    assert check_queries(queries, exposed) == []


def test_alert_queries_use_only_real_metrics_and_labels(exposed: dict[str, set[str]]) -> None:
    assert check_queries(alert_queries(), exposed) == []


def test_checker_catches_a_wrong_name_or_label(exposed: dict[str, set[str]]) -> None:
    assert check_queries(['rate(longdoc_requests_total{route="/classify"}[5m])'], exposed)
    assert check_queries(["rate(longdoc_request_duration_seconds[5m])"], exposed)  # histograms need _bucket etc.
    assert check_queries(["sum by (reason) (rate(longdoc_requests_total[5m]))"], exposed)
    assert check_queries(['up{job="other"}'], exposed)


def test_dashboard_covers_what_operators_need() -> None:
    text = " ".join(dashboard_queries())
    required = {
        "request rate by status": "sum by (status) (rate(longdoc_requests_total",
        "error rate": 'status=~"[45].."',
        "p50 latency": "histogram_quantile(0.5, sum by (le) (rate(longdoc_request_duration_seconds_bucket",
        "p95 latency": "histogram_quantile(0.95, sum by (le) (rate(longdoc_request_duration_seconds_bucket",
        "p99 latency": "histogram_quantile(0.99, sum by (le) (rate(longdoc_request_duration_seconds_bucket",
        "queue depth": "longdoc_queue_depth",
        "requests in flight": "longdoc_requests_in_flight",
        "batch size": "longdoc_batch_size_bucket",
        "batch tokens": "longdoc_batch_tokens_bucket",
        "padding ratio": "longdoc_batch_padding_ratio_sum",
        "chunks per document": "longdoc_document_chunks_bucket",
        "inference time": "longdoc_inference_duration_seconds_bucket",
        "rejections by reason": "sum by (reason) (rate(longdoc_rejected_total",
        "replicas up": f'up{{job="{SERVICE_JOB}"',
        "model info": "longdoc_model_info",
    }
    missing = [subject for subject, needle in required.items() if needle not in text]
    assert not missing, f"dashboard lacks: {missing}"


def test_dashboard_uses_the_provisioned_datasource_and_scrape_job() -> None:
    datasource = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert target["datasource"]["type"] == datasource["type"] == "prometheus"
    jobs = {j["job_name"] for j in load_yaml(PROMETHEUS_YML)["scrape_configs"]}
    assert SERVICE_JOB in jobs
