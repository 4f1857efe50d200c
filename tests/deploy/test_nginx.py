"""docker/nginx/nginx.conf: `nginx -t` on its loopback rendering, and the limits it must respect."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from app.settings import Settings
from tests.deploy.render import NGINX_CONF, nginx_command, nginx_upstream_servers, render_nginx

SOURCE = NGINX_CONF.read_text(encoding="utf-8")


def directive(name: str, text: str = SOURCE) -> list[str]:
    """Arguments of every `name ...;` directive (comments stripped)."""
    code = re.sub(r"#[^\n]*", "", text)
    return [m.group(1).strip() for m in re.finditer(rf"^\s*{name}\s+([^;]*);", code, flags=re.M)]


def size_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def duration_s(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[unit]


def upstream_block() -> str:
    match = re.search(r"upstream\s+longdoc\s*\{(.*?)\n\s*\}", SOURCE, flags=re.S)
    assert match, "no upstream longdoc block"
    return match.group(1)


def test_rendered_loopback_copy_passes_nginx_t(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    upstreams = ["127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"]
    conf.write_text(render_nginx(SOURCE, upstreams=upstreams, listen="127.0.0.1:18080", workdir=tmp_path))
    assert nginx_upstream_servers(conf.read_text()) == upstreams
    command = [part for part in nginx_command(conf, tmp_path) if part not in ("-g", "daemon off;")]
    result = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_renderer_refuses_a_config_it_does_not_understand(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="upstream"):
        render_nginx(SOURCE.replace("upstream longdoc", "upstream other"), upstreams=[], listen="x", workdir=tmp_path)
    with pytest.raises(ValueError, match="listen"):
        render_nginx(SOURCE + "\nlisten 81;\n", upstreams=["a:1", "b:2"], listen="x", workdir=tmp_path)


def test_load_balancing_least_conn_keepalive_shared_zone() -> None:
    block = upstream_block()
    assert re.search(r"^\s*least_conn;", block, re.M), "least connections: long documents hold a replica"
    assert directive("zone", block), "shared state across workers (failures, connection counts)"
    assert int(directive("keepalive", block)[0]) >= 8
    assert len(nginx_upstream_servers(SOURCE)) >= 2
    # Keep-alive to upstreams needs HTTP/1.1 and no `Connection: close` from the client.
    assert directive("proxy_http_version") == ["1.1"]
    assert 'Connection ""' in directive("proxy_set_header")


def test_body_limit_and_timeouts_cover_the_service_limits() -> None:
    fields = Settings.model_fields
    assert size_bytes(directive("client_max_body_size")[0]) >= fields["max_body_bytes"].default
    assert duration_s(directive("proxy_read_timeout")[0]) >= fields["request_timeout_s"].default
    assert duration_s(directive("proxy_send_timeout")[0]) >= fields["request_timeout_s"].default


def test_retries_request_id_and_buffering() -> None:
    assert directive("proxy_next_upstream") == ["error timeout http_502 http_503 non_idempotent"]
    assert directive("proxy_request_buffering") in ([], ["on"]), "a retried body must have been buffered"
    headers = directive("proxy_set_header")
    assert "X-Request-ID $longdoc_request_id" in headers
    assert re.search(r"map\s+\$http_x_request_id\s+\$longdoc_request_id", SOURCE), "client's id kept, else made"
    log_format = " ".join(directive("log_format"))
    assert "$upstream_addr" in log_format and "$upstream_status" in log_format and "$longdoc_request_id" in log_format
