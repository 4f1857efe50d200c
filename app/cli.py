"""`longdoc serve | train | eval | bench | classify`: one entry point for every user of the project."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.training.train import TrainConfig


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The recipe from the command line; ValueError names a bad combination."""
    from app.aggregate import Aggregation
    from app.training.train import TrainConfig

    if args.patience != 1 and not args.val_fraction:
        raise ValueError(f"--patience {args.patience} applies to --val-fraction: give both")

    return TrainConfig(
        max_length=args.max_length,
        stride=args.stride,
        aggregation=Aggregation(args.aggregation),
        pooling=args.pooling,
        loss=args.loss,
        epochs=args.epochs,
        learning_rate=args.lr,
        head_learning_rate=args.head_lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        docs_per_step=args.docs_per_step,
        grad_accumulation=args.grad_accumulation,
        max_chunks_per_doc=args.max_chunks_per_doc,
        class_weighting=args.class_weighting,
        freeze_layers=args.freeze_layers,
        encoder_layers=args.encoder_layers,
        head_init=args.head_init,
        probe_c=args.probe_c,
        val_fraction=args.val_fraction,
        early_stopping_patience=args.patience,
        seed=args.seed,
        num_threads=args.num_threads,
    )


def _train(args: argparse.Namespace) -> int:
    from app.training.card import duration
    from app.training.pipeline import PipelineOptions, run_pipeline, saved_base
    from app.training.train import default_base_model

    started = time.time()
    if args.no_progress:  # transformers' own bars (loading, saving weights) too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:  # bad data, or a recipe the options or the base model cannot take
        # --skip-final cross-validates the saved model: its own base, unless one is given (then checked)
        base = args.base or (saved_base(args.output) if args.skip_final else None) or default_base_model()
        options = PipelineOptions(
            data=args.data,
            base_model=base,
            output=args.output,
            config=_train_config(args),
            k_fold=args.k_fold,
            eval_strides=args.eval_strides,
            seed_spread=args.seed_spread,
            progress=not args.no_progress,
            data_name=str(args.data),
            skip_final=args.skip_final,
            eval_int8=args.eval_int8,
            resume=args.resume,
        )
        summary = run_pipeline(options)
    except (ValueError, OSError) as exc:  # DataError (bad data or files) is one; OSError: a base without weights
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_interrupted_hint(args, started)}", file=sys.stderr)
        return 130
    serving = summary["serving"]
    done = (
        f"cross-validated {args.output}"
        if args.skip_final
        else f"saved {args.output} (final fit: {duration(summary['final_seconds'])})"
    )
    print(
        f"{done}; serving defaults max_length={serving['max_length']} stride={serving['stride']} "
        f"aggregation={serving['aggregation']}"
    )
    return 0


def _interrupted_hint(args: argparse.Namespace, started: float) -> str:
    """What a stopped `longdoc train` kept, and the command that goes on from there."""
    from app.training.pipeline import SUMMARY_FILE

    summary = args.output / SUMMARY_FILE
    final_done = args.skip_final or (summary.is_file() and summary.stat().st_mtime >= started)
    if not final_done:
        return f"the final fit did not finish, so {args.output} is as it was before this run; run it again"
    if args.k_fold > 1:
        return (
            f"the final model is saved in {args.output}, with every finished cross-validation fold; to finish "
            "the cross-validation, run the same command with --skip-final --resume"
        )
    return f"the final model is saved in {args.output}"


def _eval(args: argparse.Namespace) -> int:
    if not (args.predictions or (args.model and args.data)):
        print("error: give --predictions FILE, or --model DIR and --data FILE", file=sys.stderr)
        return 2
    try:  # a missing or bad file, a model or window the data cannot take: all named, before any scoring
        if args.json:  # created now, not found missing after the whole evaluation
            args.json.parent.mkdir(parents=True, exist_ok=True)
        report = _eval_report(args)
    except (ValueError, OSError) as exc:  # DataError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the report is written only at the end: nothing half-written is left
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return 130
    from app.training.evaluate import format_report

    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def _eval_report(args: argparse.Namespace) -> dict[str, object]:
    from app.training.data import load_examples
    from app.training.evaluate import evaluate_records, predict_examples, read_records

    if args.predictions:
        return evaluate_records(read_records(args.predictions))
    from app.model import load_model, read_model_metadata

    examples = load_examples(args.data)
    loaded = load_model(args.model, device="cpu", quantize=args.quantize)
    if loaded.multi_label:  # every metric here is single-label (one argmax per document): it would mislead
        raise ValueError(
            f"{args.model} is a multi-label model (problem_type multi_label_classification); longdoc eval scores "
            "single-label models only"
        )
    meta = read_model_metadata(args.model)
    default_length = int(meta.get("max_length", min(512, loaded.max_positions)))  # as the service
    max_length = default_length if args.max_length is None else args.max_length
    if max_length > loaded.max_positions:
        raise ValueError(f"max_length {max_length} is over the {loaded.max_positions} positions of {args.model}")
    strides = sorted(set(args.strides)) if args.strides else [int(meta.get("stride", 0))]
    records = predict_examples(
        loaded.model,
        loaded.tokenizer,
        examples,
        loaded.labels,
        max_length,
        strides,
        max_batch_tokens=0 if args.quantize == "int8" else 16384,  # int8 serves chunk by chunk
    )
    return evaluate_records(records)


def _bench(args: argparse.Namespace) -> int:
    from benchmarks.bench import BenchOptions, run_bench
    from benchmarks.random_model import write_random_bert

    with tempfile.TemporaryDirectory(prefix="longdoc-bench-") as scratch:
        model_dir = args.model_dir
        if args.random_bert_base:  # speed of a BERT-base-sized model: random weights, the bundled tokenizer
            model_dir = write_random_bert(Path(scratch) / "random-bert-base")
        options = BenchOptions(
            model_dir=model_dir, concurrencies=args.concurrency, int8=not args.no_int8, device=args.device
        )
        if args.quick:  # a few seconds: checks the harness works, measures nothing worth reporting
            options.short, options.medium, options.long, options.real = 3, 1, 0, 2
            options.budgets, options.fairness_long, options.fairness_short = (2048,), 2, 2
            options.profile_windows, options.agreement_windows = 2, 8
        if args.results_dir:
            options.results_dir = args.results_dir
        options.report = args.report or _default_report(args)
        run_bench(options)
    return 0


def _default_report(args: argparse.Namespace) -> Path:
    """docs/benchmarks.md for the CPU run of the bundled model; GPU and BERT-base runs keep their own page."""
    import torch

    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    return Path("docs") / f"benchmarks{'-gpu' if gpu else ''}{'-bert-base' if args.random_bert_base else ''}.md"


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longdoc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the HTTP API (settings from LONGDOC_* env)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--model-dir", type=Path, default=None)

    train = commands.add_parser("train", help="chunk-aware fine-tuning, optional k-fold cross-validation")
    train.add_argument("--data", type=Path, required=True, help="JSONL or CSV with text and label")
    train.add_argument("--base", type=Path, default=None, help="local encoder checkpoint (default: MiniLM)")
    train.add_argument("--output", type=Path, required=True)
    train.add_argument("--k-fold", type=int, default=0, help="cross-validate with k folds first (0: no CV)")
    train.add_argument("--seed-spread", type=int, default=1, help="retrain fold 1 with this many seeds")
    train.add_argument("--eval-strides", type=int, nargs="*", default=[], help="extra strides scored in CV")
    train.add_argument("--max-length", type=int, default=256)
    train.add_argument("--stride", type=int, default=32)
    train.add_argument(
        "--aggregation",
        default="mean_logits",
        choices=["mean_logits", "max_logits", "mean_probs", "weighted_mean_logits"],
    )
    train.add_argument(
        "--pooling", default="cls", choices=["cls", "mean"], help="head input: [CLS] pooler or mean of token states"
    )
    train.add_argument("--loss", default="document", choices=["document", "chunk"])
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--lr", type=float, default=5e-5)
    train.add_argument("--head-lr", type=float, default=None, help="learning rate of the new head (default: --lr)")
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--warmup-ratio", type=float, default=0.1)
    train.add_argument("--docs-per-step", type=int, default=8)
    train.add_argument("--grad-accumulation", type=int, default=1)
    train.add_argument("--max-chunks-per-doc", type=int, default=4)
    train.add_argument("--class-weighting", action="store_true")
    train.add_argument("--freeze-layers", type=int, default=0, help="freeze embeddings and the first N layers")
    train.add_argument(
        "--encoder-layers", type=int, default=None, help="keep only the base's first N layers (default: all)"
    )
    train.add_argument(
        "--head-init",
        default="random",
        choices=["random", "probe"],
        help="probe: start the head as a logistic regression on the frozen encoder (--epochs 0: the probe alone)",
    )
    train.add_argument(
        "--probe-c", type=float, default=0.01, help="inverse L2 strength of the probe, on standardised features"
    )
    train.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="hold out this share of each fit's documents (stratified) to keep the best epoch by macro-F1",
    )
    train.add_argument(
        "--patience", type=int, default=1, help="with --val-fraction: stop after this many epochs without a gain"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--num-threads", type=_positive_int, default=None, help="torch threads (default: all CPUs)")
    train.add_argument("--no-progress", action="store_true")
    train.add_argument("--skip-final", action="store_true", help="only cross-validate an existing --output model")
    train.add_argument(
        "--eval-int8", action="store_true", help="also score each fold model as int8 (cv_predictions_int8.jsonl)"
    )
    train.add_argument(
        "--resume", action="store_true", help="keep the folds already complete in the output's cv_predictions.jsonl"
    )

    from app.settings import BUNDLED_MODEL

    bench = commands.add_parser("bench", help="engine-only ceiling vs the service over HTTP, side by side")
    bench.add_argument("--model-dir", type=Path, default=BUNDLED_MODEL)
    bench.add_argument(
        "--random-bert-base",
        action="store_true",
        help="bench a random-weight BERT-base (12 layers, 768 hidden) instead of --model-dir: GPU speed at that size",
    )
    bench.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when torch sees it"
    )
    bench.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    bench.add_argument("--no-int8", action="store_true", help="skip the int8 ceiling")
    bench.add_argument("--quick", action="store_true", help="tiny corpus: check the harness only")
    bench.add_argument("--results-dir", type=Path, default=None)
    bench.add_argument(
        "--report",
        type=Path,
        default=None,
        help="markdown report (default docs/benchmarks.md; docs/benchmarks-gpu.md on a GPU; -bert-base for that model)",
    )

    from longdoc import cli_classify

    cli_classify.add_parser(commands)

    evaluate = commands.add_parser("eval", help="metrics for every aggregation and the first-window baseline")
    evaluate.add_argument("--model", type=Path, default=None)
    evaluate.add_argument("--data", type=Path, default=None)
    evaluate.add_argument("--predictions", type=Path, default=None, help="stored chunk-logit records (JSONL)")
    evaluate.add_argument("--max-length", type=int, default=None)
    evaluate.add_argument("--strides", type=int, nargs="*", default=None)
    evaluate.add_argument("--quantize", default="none", choices=["none", "int8"], help="score the model as served int8")
    evaluate.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    return parser


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from app.server import serve

    try:
        return serve(host=args.host, port=args.port, model_dir=args.model_dir)
    except ValidationError as exc:  # a bad LONGDOC_* value or flag: one line each, not a traceback
        for error in exc.errors():
            name = "LONGDOC_" + "_".join(str(part) for part in error["loc"]).upper() if error["loc"] else "settings"
            message = error["msg"].removeprefix("Value error, ")
            print(f"error: {name}: {message} (got {str(error.get('input'))!r})", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _exit_on_sigterm_until_serving() -> Iterator[None]:
    """In a container `longdoc serve` is PID 1, and the kernel drops a signal PID 1 has no handler for:
    during the seconds of imports before uvicorn installs its draining handlers, `docker stop` would wait
    its whole grace period. Nothing is accepted yet then, so SIGTERM simply exits (128 + 15), at once:
    os._exit, since interpreter exit would join worker threads (a model load, a hung forward pass)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(128 + signum))
    try:
        yield  # uvicorn installs its own handlers meanwhile and puts this one back when it stops
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "train":
        return _train(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "classify":
        from longdoc.cli_classify import run

        return run(args)
    if args.command == "serve":
        with _exit_on_sigterm_until_serving():
            return _serve(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
