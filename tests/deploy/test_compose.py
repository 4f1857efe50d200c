"""docker-compose.yml and the GPU override: `docker compose config` resolves them; the stack is wired as documented."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from tests.deploy.render import (
    COMPOSE,
    COMPOSE_GPU,
    DOCKER,
    GRAFANA,
    NGINX_CONF,
    PROMETHEUS_YML,
    REPO,
    compose_command,
    load_yaml,
    nginx_upstream_servers,
    prometheus_targets,
)

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def compose_config(workdir: Path, *files: Path, **env: str) -> dict[str, Any]:
    command, environment = compose_command(workdir)
    environment.update(env)
    arguments = [part for file in files for part in ("-f", str(file))]
    result = subprocess.run(
        [*command, *arguments, "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environment,
        timeout=60,
    )
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"), COMPOSE)


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose-gpu"), COMPOSE, COMPOSE_GPU)


def replicas(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from this repository's Dockerfile."""
    return {
        name: service
        for name, service in config["services"].items()
        if Path(service.get("build", {}).get("context", "/nonexistent")).resolve() == REPO
    }


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total = sum(float(v) * units[u] for v, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))
    assert total > 0, duration
    return total


def test_at_least_two_named_replicas_behind_nginx(base: dict[str, Any]) -> None:
    named = replicas(base)
    assert len(named) >= 2, sorted(base["services"])
    nginx = base["services"]["nginx"]
    for name, service in named.items():
        assert not service.get("ports"), f"{name} publishes ports: clients must go through nginx"
        assert nginx["depends_on"][name]["condition"] == "service_healthy"
        health = " ".join(service["healthcheck"]["test"])
        assert "/health" in health and "/health/live" not in health, health
        assert service["image"] == named[next(iter(named))]["image"], "one image for every replica"
        assert service["build"]["args"]["TORCH_INDEX_URL"] == CPU_INDEX


def test_replicas_match_nginx_upstream_and_prometheus_targets(base: dict[str, Any]) -> None:
    addresses = sorted(f"{name}:{Settings.model_fields['port'].default}" for name in replicas(base))
    assert sorted(nginx_upstream_servers(NGINX_CONF.read_text(encoding="utf-8"))) == addresses
    assert sorted(prometheus_targets(load_yaml(PROMETHEUS_YML))) == addresses


def test_configs_are_mounted_from_this_repository(base: dict[str, Any]) -> None:
    def mounts(service: str) -> dict[str, Path]:
        return {v["target"]: Path(v["source"]) for v in base["services"][service]["volumes"] if v["type"] == "bind"}

    assert mounts("nginx")["/etc/nginx/nginx.conf"] == NGINX_CONF
    assert mounts("prometheus")["/etc/prometheus"] == DOCKER / "prometheus"
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "longdoc.yml")["providers"][0]
    assert grafana[provider["options"]["path"]] == GRAFANA / "dashboards"
    home = base["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(provider["options"]["path"])
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()
    datasource = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in base["services"]


def test_published_ports_defaults_and_overrides(tmp_path: Path, base: dict[str, Any]) -> None:
    def published(config: dict[str, Any]) -> dict[str, str]:
        return {
            name: f"{p.get('host_ip', '')}:{p['published']}->{p['target']}"
            for name, service in config["services"].items()
            for p in service.get("ports", [])
        }

    assert published(base) == {
        "nginx": "0.0.0.0:8080->80",
        "prometheus": "127.0.0.1:9090->9090",
        "grafana": "127.0.0.1:3000->3000",
    }
    overrides = {"LONGDOC_HTTP_PORT": "18080", "PROMETHEUS_PORT": "19090", "GRAFANA_PORT": "13000"}
    custom = compose_config(tmp_path, COMPOSE, **overrides, LONGDOC_REQUEST_TIMEOUT_S="900")
    assert published(custom)["nginx"].endswith(":18080->80")
    assert published(custom)["prometheus"].endswith(":19090->9090")
    assert published(custom)["grafana"].endswith(":13000->3000")
    assert all(s["environment"]["LONGDOC_REQUEST_TIMEOUT_S"] == "900" for s in replicas(custom).values())


def test_replica_settings_are_valid_and_drain_fits_the_stop_grace(base: dict[str, Any], tiny_model_dir: Path) -> None:
    for name, service in replicas(base).items():
        env = service["environment"]
        assert all(key.startswith("LONGDOC_") for key in env), env
        unknown = {key for key in env if key.removeprefix("LONGDOC_").lower() not in Settings.model_fields}
        assert not unknown, f"{name}: unknown settings {unknown}"
        # The image sets LONGDOC_MODEL_DIR; here any checkpoint will do to validate the rest.
        settings = Settings(model_dir=tiny_model_dir, **{k.removeprefix("LONGDOC_").lower(): v for k, v in env.items()})
        assert seconds(service["stop_grace_period"]) > settings.drain_timeout_s >= settings.request_timeout_s
        assert service["deploy"]["resources"]["limits"]["cpus"], "a CPU limit sizes the torch threads"


def test_gpu_override_reserves_gpus_and_builds_cuda_torch(gpu: dict[str, Any], base: dict[str, Any]) -> None:
    assert set(replicas(gpu)) == set(replicas(base))
    for name, service in replicas(gpu).items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices and all("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices), name
        assert service["environment"]["LONGDOC_DEVICE"] == "cuda"
        assert service["environment"]["LONGDOC_QUANTIZE"] == "none", "int8 quantization is CPU-only"
        assert service["build"]["args"]["TORCH_INDEX_URL"] != CPU_INDEX
        assert service["image"] != replicas(base)[name]["image"], "the CUDA image must not overwrite the CPU tag"
    assert gpu["services"]["nginx"] == base["services"]["nginx"]
