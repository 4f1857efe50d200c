"""`longdoc bench --quick` end to end: real model, real `longdoc serve` processes, report and plot written.

A benchmark is not a test: nothing here asserts on speed, only that every part of the side-by-side run
happens and lands in the JSON and the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.model import cpu_has_native_bf16
from tests.integration.procs import REPO, service_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"
    report.write_text("old table\n<!-- bench:end -->\nnotes kept across runs\n", encoding="utf-8")
    command = [sys.executable, "-m", "app.cli", "bench", "--quick", "--concurrency", "1", "4"]
    command += ["--results-dir", str(tmp_path / "results"), "--report", str(report)]
    done = subprocess.run(command, cwd=REPO, env=service_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    (result_file,) = (tmp_path / "results").glob("bench-*.json")
    result = json.loads(result_file.read_text(encoding="utf-8"))
    assert [run["concurrency"] for run in result["service"]] == [1, 4]
    for run in [*result["service"], result["batching_off"], result["padding_cap_off"]]:
        assert run["tokens_per_s"] > 0 and run["p50_s"] <= run["p99_s"]
        assert run["ratio_to_ceiling"] == run["tokens_per_s"] / run["local_ceiling_tokens_per_s"]
    assert (result["service_budget"], result["service_padding_cap"]) == (1024, 0.1)  # the CPU defaults
    assert (result["device"], result["dtype"]) == ("cpu", "float32")
    assert result["ceiling_int8"]["tokens"] == result["ceiling"]["tokens"]  # same chunks on both sides
    assert set(result["profile"]) == {"fp32, 1 window per pass", "fp32, 2 windows per pass", "int8, 1 window per pass"}
    assert any(
        "linear" in op["op"] or "addmm" in op["op"] for op in result["profile"]["fp32, 1 window per pass"]["top_ops"]
    )
    assert list((tmp_path / "results").glob("profile-*-fp32.json"))  # the Chrome trace
    if cpu_has_native_bf16():  # the opt-in bfloat16: its ceiling, the service running it, and its score cost
        assert result["ceiling_bf16"]["tokens"] == result["ceiling"]["tokens"]
        assert result["bfloat16"]["tokens_per_s"] > 0 and result["bf16_agreement"]["windows"] == 8
        assert 0 <= result["bf16_agreement"]["max_score_difference"] < 0.1
    else:
        assert "ceiling_bf16" not in result and "bfloat16" not in result

    text = report.read_text(encoding="utf-8")
    assert "old table" not in text and text.endswith("notes kept across runs\n")
    assert "| service, concurrency 4 |" in text and "ms per window" in text
    assert "| padding cap off (max_padding_ratio 1), concurrency 4 |" in text
    bf16_row = "| bfloat16 (LONGDOC_DTYPE=bfloat16; ratio to the float32 ceiling), concurrency 4 |"
    assert (bf16_row in text) == cpu_has_native_bf16()
    assert report.with_suffix(".png").stat().st_size > 0


def test_random_bert_serves_like_a_checkpoint(tmp_path: Path) -> None:
    """The BERT-base stand-in for GPU speed runs: a local checkpoint `load_model` reads like a trained one."""
    from app.model import load_model
    from benchmarks.random_model import LABELS, write_random_bert

    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    model_dir = write_random_bert(tmp_path / "random-bert", **small)
    loaded = load_model(model_dir, device="cpu")
    assert loaded.labels == list(LABELS) and loaded.metadata["max_length"] == 512
    ids = loaded.tokenizer("a random model still reads text")["input_ids"]
    assert loaded.forward([ids, ids[:3]]).shape == (2, len(LABELS))
    assert (
        write_random_bert(tmp_path / "again", **small).joinpath("model.safetensors").read_bytes()
        == (model_dir / "model.safetensors").read_bytes()
    )  # seeded: the same weights every time


def test_default_report_keeps_gpu_and_bert_base_runs_apart() -> None:
    from argparse import Namespace

    from app.cli import _default_report

    assert _default_report(Namespace(device="cpu", random_bert_base=False)) == Path("docs/benchmarks.md")
    assert _default_report(Namespace(device="cuda", random_bert_base=False)) == Path("docs/benchmarks-gpu.md")
    assert _default_report(Namespace(device="cuda", random_bert_base=True)) == Path("docs/benchmarks-gpu-bert-base.md")
