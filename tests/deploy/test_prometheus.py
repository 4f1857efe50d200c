"""Prometheus config and alert rules: promtool check config/rules, the rules' unit tests, the alerts required."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.render import (
    ALERTS_TEST_YML,
    ALERTS_YML,
    PROMETHEUS_YML,
    SERVICE_JOB,
    load_yaml,
    prometheus_targets,
    render_prometheus,
    tool,
)


def promtool(*args: str) -> str:
    result = subprocess.run(
        [tool("promtool", "Debian package prometheus"), *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def test_promtool_check_config() -> None:
    assert "SUCCESS" in promtool("check", "config", str(PROMETHEUS_YML))


def test_promtool_check_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(ALERTS_YML))


def test_alert_rules_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(ALERTS_TEST_YML))


def test_rendered_loopback_config_is_valid(tmp_path: Path) -> None:
    config = render_prometheus(targets=["127.0.0.1:18001", "127.0.0.1:18002"])
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    promtool("check", "config", str(path))
    assert prometheus_targets(config) == ["127.0.0.1:18001", "127.0.0.1:18002"]


def test_every_replica_is_scraped_directly() -> None:
    targets = prometheus_targets(load_yaml(PROMETHEUS_YML))
    assert len(targets) >= 2
    assert all(t.endswith(":8000") and not t.startswith("nginx") for t in targets), targets


def test_required_alerts_exist() -> None:
    rules = {r["alert"]: r for group in load_yaml(ALERTS_YML)["groups"] for r in group["rules"] if "alert" in r}
    required = {
        "LongdocReplicaDown": "up",
        "LongdocNoReplicaReady": "longdoc_ready",
        "LongdocHighErrorRate": "longdoc_requests_total",
        "LongdocOverloaded": 'status="429"',
        "LongdocQueueSaturated": "longdoc_queue_depth",
        "LongdocHighLatencyP99": "histogram_quantile(0.99",
    }
    for name, needle in required.items():
        assert name in rules, f"missing alert {name}"
        assert needle in rules[name]["expr"], f"{name}: {rules[name]['expr']}"
        assert rules[name]["labels"]["severity"] in {"warning", "critical"}
        assert f'job="{SERVICE_JOB}"' in rules[name]["expr"]
    tested = {t["alertname"] for case in load_yaml(ALERTS_TEST_YML)["tests"] for t in case["alert_rule_test"]}
    assert set(rules) <= tested, f"alerts without a unit test: {set(rules) - tested}"
