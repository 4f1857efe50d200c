"""docker/k8s: every manifest validates (kubernetes-validate, strict), and the pieces fit together."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings
from tests.conftest import require
from tests.deploy.render import K8S

MANIFESTS = sorted(K8S.glob("*.yaml"))


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text("utf-8")) if doc]


def resource(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def kubernetes_versions() -> list[str]:
    require(importlib.util.find_spec("kubernetes_validate") is not None, "kubernetes-validate is not installed")
    from kubernetes_validate import utils

    versions = sorted(set(utils.all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))
    return [versions[0], versions[-1]]


def test_manifests_present() -> None:
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


def test_the_autoscaler_alone_owns_the_replica_count() -> None:
    """A Deployment's replicas would be re-applied over the HPA's count by every `kubectl apply`."""
    assert "replicas" not in resource("Deployment")["spec"]
    hpa = resource("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == resource("Deployment")["metadata"]["name"]
    assert hpa["minReplicas"] >= 2


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    versions = kubernetes_versions()
    import kubernetes_validate

    for document in yaml.safe_load_all(path.read_text("utf-8")):
        for version in versions:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name} against Kubernetes {version}: {exc.message} at {list(exc.path)}")


def container() -> dict[str, Any]:
    containers = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_probes_readiness_health_liveness_live() -> None:
    main = container()
    port = next(p for p in main["ports"] if p["name"] == "http")
    assert port["containerPort"] == Settings.model_fields["port"].default
    assert main["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    startup = main["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}, "live is 200 while loading: it bounds nothing"
    startup_window_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert startup_window_s >= 120, "room to load and warm up the model"
    env = {e["name"]: e["value"] for e in main.get("env", [])}
    timeout = float(env.get("LONGDOC_STARTUP_TIMEOUT_S", Settings.model_fields["startup_timeout_s"].default))
    assert timeout < startup_window_s, "the service gives up (and logs why) before the kubelet kills it"
    assert main["resources"]["requests"] and main["resources"]["limits"]


def test_grace_period_covers_pre_stop_and_drain() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in container().get("env", [])}
    fields = Settings.model_fields
    drain = float(env.get("LONGDOC_DRAIN_TIMEOUT_S", fields["drain_timeout_s"].default))
    request = float(env.get("LONGDOC_REQUEST_TIMEOUT_S", fields["request_timeout_s"].default))
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop > 0 and drain >= request
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain


def test_selectors_and_targets_fit_together() -> None:
    deployment = resource("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = resource("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container()["ports"]}
    pdb = resource("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1  # one at a time, not "all but one" (minAvailable: 1)
    hpa = resource("HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2 > pdb["spec"]["maxUnavailable"]
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
