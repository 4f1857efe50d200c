"""`longdoc serve` refuses a bad setting with one line per problem, its name and value, and exit status 2."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from app.cli import main


def test_a_bad_setting_is_one_error_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LONGDOC_MAX_BATCH_SIZE", "0")
    handler = signal.getsignal(signal.SIGTERM)
    assert main(["serve", "--model-dir", str(tmp_path)]) == 2
    assert signal.getsignal(signal.SIGTERM) is handler, "serve's start-up SIGTERM handler outlived it"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"error: LONGDOC_MODEL_DIR: model_dir {str(tmp_path)!r} is not a checkpoint directory (no config.json) "
        f"(got {str(tmp_path)!r})",
        "error: LONGDOC_MAX_BATCH_SIZE: Input should be greater than or equal to 1 (got '0')",
    ]
