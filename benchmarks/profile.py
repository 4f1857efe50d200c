"""Where the forward pass spends its time: torch.profiler over the same windows, batched and one by one.

The benchmark shows *that* batching buys little throughput on a CPU; this shows *why*: the time goes to the
matrix multiplies of the Linear layers, whose cost per token is the same whether a pass holds one
256-token window or sixteen, because one window already gives each multiply hundreds of rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.profiler import ProfilerActivity, profile

from app.model import LoadedModel

TOP_OPS = 6


def _run(model: LoadedModel, windows: Sequence[Sequence[int]], per_pass: int) -> None:
    for start in range(0, len(windows), per_pass):
        model.forward(windows[start : start + per_pass])


def profile_forward(
    model: LoadedModel, windows: Sequence[Sequence[int]], per_pass: int, trace: Path | None = None
) -> dict[str, Any]:
    """Wall time per window and the operators' share of CPU time for `windows` run `per_pass` at a time."""
    _run(model, windows[:per_pass], per_pass)  # warm-up outside the profile
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _run(model, windows, per_pass)
    elapsed = time.perf_counter() - started
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    tokens = sum(len(w) for w in windows)
    return {
        "windows_per_pass": per_pass,
        "windows": len(windows),
        "tokens": tokens,
        "ms_per_window": 1000 * elapsed / len(windows),
        "tokens_per_s": tokens / elapsed,
        "top_ops": [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:TOP_OPS]],
    }


def profile_engines(
    fp32: LoadedModel, int8: LoadedModel | None, windows: Sequence[Sequence[int]], trace_dir: Path, stamp: str
) -> dict[str, Any]:
    """fp32 one window per pass, fp32 all windows in one pass, int8 as the service runs it (one per pass)."""
    runs = {
        "fp32, 1 window per pass": profile_forward(fp32, windows, 1),
        f"fp32, {len(windows)} windows per pass": profile_forward(
            fp32, windows, len(windows), trace_dir / f"profile-{stamp}-fp32.json"
        ),
    }
    if int8 is not None:
        runs["int8, 1 window per pass"] = profile_forward(int8, windows, 1)
    return runs


def report_lines(runs: dict[str, Any]) -> list[str]:
    """A markdown table: time per window and the top operators' share of CPU time, per configuration."""
    lines = [
        "| configuration | ms per window | tokens/s | top operators (share of CPU time) |",
        "| --- | --- | --- | --- |",
    ]
    for name, run in runs.items():
        ops = ", ".join(f"`{o['op']}` {100 * o['share']:.0f}%" for o in run["top_ops"][:4])
        lines.append(f"| {name} | {run['ms_per_window']:.1f} | {run['tokens_per_s']:,.0f} | {ops} |")
    return lines
