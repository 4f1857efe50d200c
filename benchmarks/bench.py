"""`longdoc bench`: engine-only ceiling vs the real service over HTTP, in one run on the same corpus.

Every throughput counts one unit on both sides: non-padding chunk tokens per second (special tokens and
overlaps included, padding excluded), so the service/ceiling ratio says how well the service keeps the
engine fed. The service runs as a real `longdoc serve` process on loopback, driven by httpx.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import torch

from app.model import LoadedModel, cpu_has_native_bf16, load_model, read_model_metadata
from app.segmenter import Segmenter
from app.settings import BUNDLED_MODEL, GPU_BATCH_TOKENS, available_cpus
from benchmarks.profile import profile_engines, report_lines

REPO = Path(__file__).resolve().parent.parent
TRAIN_DATA = REPO / "data" / "hyperpartisan" / "train.jsonl"


CPU_BUDGETS = (256, 512, 1024, 2048, 4096, 8192, 16384)
GPU_BUDGETS = (2048, 4096, 8192, GPU_BATCH_TOKENS, 32768, 65536)
GPU_SCALE = 16


@dataclass
class BenchOptions:
    model_dir: Path = BUNDLED_MODEL
    concurrencies: Sequence[int] = (1, 4, 16, 64)
    short: int = 16
    medium: int = 6
    long: int = 3
    real: int = 24
    budgets: Sequence[int] | None = None  # None: CPU_BUDGETS or GPU_BUDGETS by device
    scale: int = 0  # corpus size multiplier; 0: 1 on a CPU, GPU_SCALE on a GPU (else a run lasts a blink)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fairness_long: int = 8
    fairness_short: int = 24
    int8: bool = True
    profile_windows: int = 16
    agreement_windows: int = 256
    seed: int = 0
    results_dir: Path = REPO / "benchmarks" / "results"
    report: Path | None = REPO / "docs" / "benchmarks.md"
    log: Any = field(default=print)


@dataclass
class Doc:
    text: str
    kind: str
    chunks: list[list[int]]  # the token ids of its windows, as the service will cut them

    @property
    def chunk_tokens(self) -> int:
        """Non-padding tokens of all its windows: what the engine really computes."""
        return sum(len(ids) for ids in self.chunks)


def _doc(segmenter: Segmenter, text: str, kind: str) -> Doc:
    return Doc(text, kind, [chunk.input_ids for chunk in segmenter.segment(text).chunks])


def _text_with_tokens(segmenter: Segmenter, vocabulary: list[str], tokens: int, rng: random.Random) -> str:
    words = " ".join(rng.choice(vocabulary) for _ in range(int(tokens * 0.9) + 50))
    encoding = segmenter._backend.encode(words, add_special_tokens=False)
    while len(encoding.ids) < tokens:
        words += " " + " ".join(rng.choice(vocabulary) for _ in range(tokens))
        encoding = segmenter._backend.encode(words, add_special_tokens=False)
    return words[: encoding.offsets[tokens - 1][1]]


def build_corpus(segmenter: Segmenter, options: BenchOptions, scale: int = 1) -> list[Doc]:
    """A seeded mix: synthetic 300 / 2,000 / 8,000-token documents plus real training articles, `scale` times."""
    rng = random.Random(options.seed)
    articles = [json.loads(line)["text"] for line in TRAIN_DATA.read_text(encoding="utf-8").splitlines()]
    vocabulary = " ".join(articles[:200]).split()
    texts: list[tuple[str, str]] = []
    for kind, count, tokens in (
        ("short", options.short, 300),
        ("medium", options.medium, 2000),
        ("long", options.long, 8000),
    ):
        texts += [(kind, _text_with_tokens(segmenter, vocabulary, tokens, rng)) for _ in range(count * scale)]
    texts += [("real", text) for text in rng.sample(articles, min(options.real * scale, len(articles)))]
    rng.shuffle(texts)
    return [_doc(segmenter, text, kind) for kind, text in texts]


def _batches(chunks: list[list[int]], budget: int) -> list[list[list[int]]]:
    ordered = sorted(chunks, key=len)
    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    for ids in ordered:
        if current and len(ids) * (len(current) + 1) > budget:
            batches.append(current)
            current = []
        current.append(ids)
    if current:
        batches.append(current)
    return batches


def _engine_pass(model: LoadedModel, chunks: list[list[int]], budget: int) -> float:
    """Tokens per second of one pass of the model over `chunks` in full length-sorted batches."""
    started = time.perf_counter()
    for batch in _batches(chunks, budget):
        model.forward(batch)
    return sum(len(c) for c in chunks) / (time.perf_counter() - started)


def score_agreement(reference: LoadedModel, other: LoadedModel, chunks: list[list[int]]) -> dict[str, Any]:
    """How far `other`'s window scores stray from `reference`'s: each window alone, then in passes of four
    beside other windows (a variant whose scores depend on the pass shows it in the second figure)."""

    def scores(model: LoadedModel, per_pass: int) -> torch.Tensor:
        return torch.cat([model.forward(chunks[i : i + per_pass]) for i in range(0, len(chunks), per_pass)]).softmax(-1)

    alone_ref, alone = scores(reference, 1), scores(other, 1)
    return {
        "windows": len(chunks),
        "top_label_agreement": float((alone_ref.argmax(-1) == alone.argmax(-1)).float().mean()),
        "max_score_difference": float((alone_ref - alone).abs().max()),
        "max_score_difference_alone_vs_batched": float((alone - scores(other, 4)).abs().max()),
        "reference_alone_vs_batched": float((alone_ref - scores(reference, 4)).abs().max()),
    }


def engine_ceiling(model: LoadedModel, chunks: list[list[int]], budgets: Sequence[int], log: Any) -> dict[str, Any]:
    """The model alone over exactly the service's chunks, full length-sorted batches, best budget wins."""
    sweep = {}
    for budget in budgets:
        model.forward(_batches(chunks, budget)[-1])  # warm-up at this shape (kernel choice on a GPU)
        sweep[str(budget)] = _engine_pass(model, chunks, budget)
        log(f"  ceiling budget {budget:>6}: {sweep[str(budget)]:,.0f} tokens/s")
    best = max(sweep, key=lambda k: sweep[k])
    return {
        "tokens": sum(len(c) for c in chunks),
        "chunks": len(chunks),
        "sweep_tokens_per_s": sweep,
        "best_budget": int(best),
        "tokens_per_s": sweep[best],
    }


def _against_ceiling(run: dict[str, Any], before: float, after: float) -> dict[str, Any]:
    """Rate a service run against the engine measured right before and right after it, the higher of the
    two (on a shared machine the speed drifts; a slow ceiling would flatter the ratio)."""
    run.pop("latency_by_index")
    run["local_ceiling_tokens_per_s"] = max(before, after)
    run["ratio_to_ceiling"] = run["tokens_per_s"] / run["local_ceiling_tokens_per_s"]
    return run


def _metric_sums(text: str) -> dict[str, float]:
    wanted = (
        "longdoc_batch_size_sum",
        "longdoc_batch_size_count",
        "longdoc_batch_padding_ratio_sum",
        "longdoc_batch_padding_ratio_count",
        "longdoc_inference_duration_seconds_sum",
        "longdoc_inference_duration_seconds_count",
    )
    sums = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{[^}]*\})? (\S+)$", line)
        if match and match.group(1) in sums:
            sums[match.group(1)] += float(match.group(2))
    return sums


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    """Poll /health until 200; fail at once if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode} before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout_s} s")


class ServiceProcess:
    """A real `longdoc serve` on a free loopback port; stopped by PID when done."""

    def __init__(self, model_dir: Path, threads: int, **settings: Any) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LONGDOC_")}
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "LONGDOC_MODEL_DIR": str(model_dir),
                "LONGDOC_NUM_THREADS": str(threads),
                "LONGDOC_LOG_LEVEL": "warning",
            }
        )
        env.update({f"LONGDOC_{k.upper()}": str(v) for k, v in settings.items()})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until_healthy(self.url, self.process, timeout_s=300)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def drive(url: str, docs: Sequence[Doc], concurrency: int) -> dict[str, Any]:
    """Send every document once with `concurrency` clients; latency per request, tokens/s overall."""
    queue = list(enumerate(docs))
    latencies: dict[int, float] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        before = _metric_sums((await client.get("/metrics")).text)

        async def worker() -> None:
            while queue:
                index, doc = queue.pop(0)
                started = time.perf_counter()
                response = await client.post("/classify", json={"text": doc.text})
                response.raise_for_status()
                latencies[index] = time.perf_counter() - started

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        after = _metric_sums((await client.get("/metrics")).text)
    delta = {k: after[k] - before[k] for k in after}
    values = list(latencies.values())
    tokens = sum(d.chunk_tokens for d in docs)
    batches = max(delta["longdoc_batch_size_count"], 1)
    return {
        "concurrency": concurrency,
        "documents": len(docs),
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "docs_per_s": len(docs) / elapsed,
        "p50_s": _percentile(values, 50),
        "p95_s": _percentile(values, 95),
        "p99_s": _percentile(values, 99),
        "mean_batch_size": delta["longdoc_batch_size_sum"] / batches,
        "padding_ratio": delta["longdoc_batch_padding_ratio_sum"] / batches,
        "mean_batch_seconds": delta["longdoc_inference_duration_seconds_sum"] / batches,
        "latency_by_index": latencies,
    }


def fairness(url: str, segmenter: Segmenter, options: BenchOptions, concurrency: int = 16) -> dict[str, Any]:
    """Short (300-token) documents arriving among long (8,000-token) ones: the short ones' latency."""
    rng = random.Random(options.seed + 1)
    articles = [json.loads(line)["text"] for line in TRAIN_DATA.read_text(encoding="utf-8").splitlines()]
    vocabulary = " ".join(articles[:200]).split()
    longs = [
        _doc(segmenter, _text_with_tokens(segmenter, vocabulary, 8000, rng), "long")
        for _ in range(options.fairness_long)
    ]
    shorts = [
        _doc(segmenter, _text_with_tokens(segmenter, vocabulary, 300, rng), "short")
        for _ in range(options.fairness_short)
    ]
    # Half the clients start on long documents; the shorts then arrive interleaved with the remaining longs.
    head = min(len(longs), concurrency // 2)
    mixed = longs[:head]
    remaining = longs[head:]
    for index, short in enumerate(shorts):
        mixed.append(short)
        if index < len(remaining):
            mixed.append(remaining[index])
    mixed += remaining[len(shorts) :]
    run = asyncio.run(drive(url, mixed, concurrency))
    short_latency = [run["latency_by_index"][i] for i, d in enumerate(mixed) if d.kind == "short"]
    long_latency = [run["latency_by_index"][i] for i, d in enumerate(mixed) if d.kind == "long"]
    return {
        "concurrency": concurrency,
        "short_docs": len(short_latency),
        "long_docs": len(long_latency),
        "short_p50_s": _percentile(short_latency, 50),
        "short_p99_s": _percentile(short_latency, 99),
        "long_p50_s": _percentile(long_latency, 50),
        "mean_batch_seconds": run["mean_batch_seconds"],
        "short_p99_in_batches": _percentile(short_latency, 99) / max(run["mean_batch_seconds"], 1e-9),
    }


SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpu_description() -> str:
    """CPU model and the SIMD extensions that decide fp32/int8 speed (int8 GEMMs gain most with VNNI/AMX)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return platform.processor() or platform.machine()
    text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    name = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    present = [f for f in SIMD_FLAGS if flags and f in flags.group(1).split()]
    return f"{name.group(1).strip() if name else platform.machine()} ({', '.join(present) or 'no AVX2'})"


def _machine_description(device: torch.device, threads: int) -> str:
    cpu = f"{_cpu_description()}, {threads} CPU threads allowed, {os.cpu_count()} visible; torch {torch.__version__}"
    return f"{torch.cuda.get_device_name(device)} with {cpu}" if device.type == "cuda" else cpu


def run_bench(options: BenchOptions) -> dict[str, Any]:
    log = options.log
    threads = available_cpus()
    torch.set_num_threads(threads)
    meta = read_model_metadata(options.model_dir)
    model = load_model(options.model_dir, device=options.device)  # dtype as served: bf16 on a GPU, fp32 on a CPU
    device = model.device
    segmenter = Segmenter(model.tokenizer, int(meta.get("max_length", 512)), int(meta.get("stride", 0)))
    docs = build_corpus(segmenter, options, options.scale or (GPU_SCALE if device.type == "cuda" else 1))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    log(
        f"corpus: {len(docs)} documents, {sum(d.chunk_tokens for d in docs):,} chunk tokens; "
        f"{device.type}, {model.dtype_name}, threads {threads}"
    )
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine_description(device, threads),
        "device": device.type,
        "dtype": model.dtype_name,
        "model": options.model_dir.name,
        "max_length": segmenter.max_length,
        "stride": segmenter.stride,
        "corpus": {k: sum(1 for d in docs if d.kind == k) for k in ("short", "medium", "long", "real")},
        "corpus_tokens": sum(d.chunk_tokens for d in docs),
    }
    log(f"engine-only ceiling ({model.dtype_name}):")
    chunks = [ids for d in docs for ids in d.chunks]  # what the service will run
    sweep = options.budgets or (GPU_BUDGETS if device.type == "cuda" else CPU_BUDGETS)
    budgets = [b for b in sweep if b >= segmenter.max_length] or [max(sweep)]
    result["ceiling"] = engine_ceiling(model, chunks, budgets, log)
    budget = result["ceiling"]["best_budget"]
    int8 = None
    if options.int8 and device.type == "cpu":  # dynamic int8 quantization runs on a CPU only
        log("engine-only ceiling (int8):")
        int8 = load_model(options.model_dir, device="cpu", quantize="int8")
        result["ceiling_int8"] = engine_ceiling(int8, chunks, [budget], log)
        result["int8_speedup"] = result["ceiling_int8"]["tokens_per_s"] / result["ceiling"]["tokens_per_s"]
    if device.type == "cpu" and cpu_has_native_bf16():  # opt-in LONGDOC_DTYPE=bfloat16: its speed and its cost
        log("engine-only ceiling (bfloat16, native on this CPU):")
        bf16 = load_model(options.model_dir, device="cpu", dtype="bfloat16")
        result["ceiling_bf16"] = engine_ceiling(bf16, chunks, [budget], log)
        result["bf16_speedup"] = result["ceiling_bf16"]["tokens_per_s"] / result["ceiling"]["tokens_per_s"]
        result["bf16_agreement"] = score_agreement(model, bf16, chunks[: options.agreement_windows])
        del bf16
    options.results_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":  # explains the CPU's batch-size trade-off; on a GPU the sweep says it
        log("profile (torch.profiler):")
        windows = ([w for w in chunks if len(w) == segmenter.max_length] or chunks)[: options.profile_windows]
        result["profile"] = profile_engines(model, int8, windows, options.results_dir, stamp)
        for name, run in result["profile"].items():
            log(f"  {name}: {run['ms_per_window']:.1f} ms per window, top op {run['top_ops'][0]['op']}")
    del int8
    # The service at the budget users get by default on this device.
    service = ServiceProcess(options.model_dir, threads, device=device.type, max_wait_ms=5)
    try:
        info = httpx.get(f"{service.url}/info").json()
        result["service_budget"], result["service_padding_cap"] = info["max_batch_tokens"], info["max_padding_ratio"]
        log(
            f"service (default max_batch_tokens {result['service_budget']}, max_padding_ratio "
            f"{result['service_padding_cap']:g}; ceiling re-measured beside each run):"
        )
        result["service"] = []
        before = _engine_pass(model, chunks, budget)
        for concurrency in options.concurrencies:
            run = asyncio.run(drive(service.url, docs, concurrency))
            after = _engine_pass(model, chunks, budget)
            _against_ceiling(run, before, after)
            before = after
            result["service"].append(run)
            log(
                f"  service c={concurrency:<3} {run['tokens_per_s']:,.0f} tokens/s "
                f"({run['ratio_to_ceiling']:.2f}x ceiling {run['local_ceiling_tokens_per_s']:,.0f}) "
                f"p50 {run['p50_s']:.2f}s p99 {run['p99_s']:.2f}s "
                f"batch {run['mean_batch_size']:.1f} padding {run['padding_ratio']:.2f}"
            )
        result["fairness"] = fairness(service.url, segmenter, options)
        log(
            f"  fairness: short p99 {result['fairness']['short_p99_s']:.2f}s = "
            f"{result['fairness']['short_p99_in_batches']:.1f} batch durations"
        )
        result["service_rss_mb"] = service.rss_mb()
    finally:
        service.stop()
    # The same corpus against two variants of that service, one run each at concurrency 16: the naive
    # server (one request per forward pass, no padding cap) and, where the default caps padding, no cap.
    concurrency = 16 if 16 in options.concurrencies else max(options.concurrencies)
    variants: dict[str, dict[str, Any]] = {
        "batching_off": {"max_batch_tokens": budget, "batch_across_requests": "false", "max_padding_ratio": 1}
    }
    if result["service_padding_cap"] < 1:
        variants["padding_cap_off"] = {"max_batch_tokens": result["service_budget"], "max_padding_ratio": 1}
    if "ceiling_bf16" in result:
        variants["bfloat16"] = {"dtype": "bfloat16"}
    for name, settings in variants.items():
        variant = ServiceProcess(options.model_dir, threads, device=device.type, **settings)
        try:
            run = asyncio.run(drive(variant.url, docs, concurrency))
            after = _engine_pass(model, chunks, budget)
            result[name] = run = _against_ceiling(run, before, after)
            before = after
            log(
                f"  {name.replace('_', ' ')} c={concurrency}: {run['tokens_per_s']:,.0f} tokens/s "
                f"p50 {run['p50_s']:.2f}s"
            )
        finally:
            variant.stop()
    del model
    (options.results_dir / f"bench-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if options.report is not None:
        write_report(result, options.report)
    return result


def _bf16_section(result: dict[str, Any]) -> list[str]:
    if "bf16_agreement" not in result:
        return []
    agreement = result["bf16_agreement"]
    return [
        f"bfloat16 against float32 on this CPU's native bfloat16 ({agreement['windows']} windows of the corpus): "
        f"top label the same for {agreement['top_label_agreement']:.1%} of windows, scores differ by at most "
        f"{agreement['max_score_difference']:.4f}; a window's bfloat16 score alone and in a pass of four differs "
        f"by at most {agreement['max_score_difference_alone_vs_batched']:.4f} (float32: "
        f"{agreement['reference_alone_vs_batched']:.1e}). "
        "The service's default on a CPU stays float32.",
        "",
    ]


def write_report(result: dict[str, Any], path: Path) -> None:
    """docs/benchmarks.md: the side-by-side table and a plot of throughput and p99 against concurrency."""
    ceiling = result["ceiling"]["tokens_per_s"]
    lines = [
        "# Benchmarks",
        "",
        f"Latest run: {result['date']} on {result['machine']}. Model `{result['model']}`, max_length "
        f"{result['max_length']}, stride {result['stride']}. Corpus: {result['corpus']} documents, "
        f"{result['corpus_tokens']:,} chunk tokens. Unit everywhere: non-padding chunk tokens per second.",
        "Reproduce with `longdoc bench` (JSON under `benchmarks/results/`).",
        "",
        f"The service runs with its defaults on this device: max_batch_tokens {result.get('service_budget', '-')}, "
        f"max_padding_ratio {result.get('service_padding_cap', '-')} (see docs/operations.md). "
        "Each service run's ratio is to the engine-only "
        "ceiling re-measured (best budget) right before and right after that run, the higher of the two: "
        "this machine's speed drifts by more than the overheads being measured.",
        "",
        "| run | tokens/s | ratio to ceiling | docs/s | p50 s | p95 s | p99 s | mean batch | padding |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| engine-only ceiling ({result.get('dtype', 'float32')}, best budget {result['ceiling']['best_budget']}) "
        f"| {ceiling:,.0f} | 1.00 "
        "| | | | | | |",
    ]
    for name, key in (("int8", "int8"), ("bfloat16", "bf16")):  # the CPU engines measured beside float32
        if f"ceiling_{key}" in result:
            lines.append(
                f"| engine-only ceiling ({name}) | {result[f'ceiling_{key}']['tokens_per_s']:,.0f} | "
                f"{result[f'{key}_speedup']:.2f} | | | | | | |"
            )
    for run in result["service"]:
        lines.append(
            f"| service, concurrency {run['concurrency']} | {run['tokens_per_s']:,.0f} | "
            f"{run['ratio_to_ceiling']:.2f} | {run['docs_per_s']:.2f} | {run['p50_s']:.2f} | {run['p95_s']:.2f} | "
            f"{run['p99_s']:.2f} | {run['mean_batch_size']:.1f} | {run['padding_ratio']:.2f} |"
        )
    titles = {
        "padding_cap_off": "padding cap off (max_padding_ratio 1)",
        "batching_off": "batching off (one request per forward)",
        "bfloat16": "bfloat16 (LONGDOC_DTYPE=bfloat16; ratio to the float32 ceiling)",
    }
    for name, title in titles.items():
        if name in result:
            run = result[name]
            lines.append(
                f"| {title}, concurrency {run['concurrency']} | {run['tokens_per_s']:,.0f} | "
                f"{run['ratio_to_ceiling']:.2f} | {run['docs_per_s']:.2f} | {run['p50_s']:.2f} | {run['p95_s']:.2f} | "
                f"{run['p99_s']:.2f} | {run['mean_batch_size']:.1f} | {run['padding_ratio']:.2f} |"
            )
    fair = result["fairness"]
    lines += [
        "",
        "Budget sweep (engine tokens/s by max_batch_tokens): "
        + ", ".join(f"{k}: {v:,.0f}" for k, v in result["ceiling"]["sweep_tokens_per_s"].items())
        + ".",
        "",
        f"Fair scheduling: {fair['short_docs']} short (300-token) documents among {fair['long_docs']} long "
        f"(8,000-token) ones at concurrency {fair['concurrency']}: short p50 {fair['short_p50_s']:.2f} s, "
        f"p99 {fair['short_p99_s']:.2f} s = {fair['short_p99_in_batches']:.1f} mean batch durations "
        f"({fair['mean_batch_seconds']:.2f} s); long p50 {fair['long_p50_s']:.2f} s.",
        "",
        f"Service resident memory after the runs: {result['service_rss_mb']:.0f} MB.",
        "",
        *_bf16_section(result),
        *_profile_section(result),
        "![throughput and p99 against concurrency](benchmarks.png)",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = "<!-- bench:end -->"
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    notes = previous.split(marker, 1)[1] if marker in previous else ""
    path.write_text("\n".join(lines) + "\n" + marker + notes, encoding="utf-8")
    _plot(result, path.with_suffix(".png"))


def _profile_section(result: dict[str, Any]) -> list[str]:
    if "profile" not in result:
        return []
    return [
        "Profile of the forward pass (torch.profiler, the same full-length windows in each configuration; "
        "Chrome trace of the batched fp32 run in `benchmarks/results/profile-*-fp32.json`):",
        "",
        *report_lines(result["profile"]),
        "",
    ]


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["service"]
    xs = [r["concurrency"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(xs, [r["tokens_per_s"] for r in runs], marker="o", label="service")
    left.axhline(result["ceiling"]["tokens_per_s"], color="gray", linestyle="--", label="engine-only ceiling")
    left.set(xscale="log", xlabel="concurrency", ylabel="chunk tokens / s", title="Throughput")
    left.set_ylim(bottom=0, top=1.2 * max(result["ceiling"]["tokens_per_s"], *(r["tokens_per_s"] for r in runs)))
    left.set_xticks(xs, [str(x) for x in xs])
    left.legend()
    right.plot(xs, [r["p99_s"] for r in runs], marker="o", color="tab:red", label="p99")
    right.plot(xs, [r["p50_s"] for r in runs], marker="o", color="tab:orange", label="p50")
    right.set(xscale="log", xlabel="concurrency", ylabel="seconds", title="Latency")
    right.set_ylim(bottom=0)
    right.set_xticks(xs, [str(x) for x in xs])
    right.legend()
    fig.suptitle(f"longdoc {result['model']} — {result['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
