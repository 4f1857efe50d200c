"""The README stays true: every setting documented, the Quick start has exactly two commands."""

from __future__ import annotations

import re

from app.settings import Settings
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_configuration_table() -> None:
    for name in Settings.model_fields:
        assert f"`LONGDOC_{name.upper()}`" in README, name


def test_quick_start_block_holds_exactly_two_commands() -> None:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert [c.split("#")[0].strip() for c in commands] == ["make serve", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_model_store_stays_small() -> None:
    size = sum(p.stat().st_size for p in (REPO / "model_store").rglob("*") if p.is_file())
    assert size < 100 * 1024 * 1024, f"model_store/ is {size / 2**20:.0f} MB"


def test_relative_links_in_the_docs_resolve() -> None:
    """A moved or renamed page must not leave the README or another page pointing at nothing."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if path and "://" not in path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken
