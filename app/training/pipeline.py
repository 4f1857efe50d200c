"""`longdoc train`: optional k-fold cross-validation, a seed spread, then the final model with its card.

Cross-validation trains k fold models with exactly the final recipe and scores each only on its own
held-out fold; the out-of-fold chunk logits are written next to the model, so the card's numbers can be
recomputed (`longdoc eval --predictions`) and the serving aggregation and stride are chosen on them,
never on a test set.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import resource
import shlex
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.model import TOKENIZER_FILES, has_tokenizer_files, position_limit, quantize_int8
from app.segmenter import Segmenter
from app.training.card import write_model_card
from app.training.data import DataError, Example, load_examples, write_json
from app.training.evaluate import (
    best_setting,
    evaluate_records,
    format_report,
    predict_examples,
    read_records,
    write_records,
)
from app.training.train import (
    EncodedDoc,
    TrainConfig,
    encode_docs,
    freeze_encoder_layers,
    held_out_count,
    load_base_model,
    train_model,
)

log = logging.getLogger(__name__)

CV_PREDICTIONS_FILE = "cv_predictions.jsonl"
CV_INT8_PREDICTIONS_FILE = "cv_predictions_int8.jsonl"
CV_REPORT_FILE = "cv_report.json"
SUMMARY_FILE = "training_summary.json"
UNKNOWN_TOKEN_WARNING = 0.2  # share of [UNK] among the training tokens above which the run warns


@dataclass
class PipelineOptions:
    data: Path
    base_model: Path
    output: Path
    config: TrainConfig
    k_fold: int = 0
    eval_strides: Sequence[int] = ()
    seed_spread: int = 1
    progress: bool = True
    data_name: str = ""
    skip_final: bool = False
    eval_int8: bool = False
    resume: bool = False


def stratified_folds(labels: Sequence[str], k: int, seed: int, groups: Sequence[int] | None = None) -> list[int]:
    """Fold index per example: each label's examples shuffled with `seed` and dealt round-robin. With
    `groups` (`duplicate_groups`), every example then joins its group's first member's fold: a fold model
    is never scored on a text it was trained on."""
    rng = random.Random(seed)
    folds = [0] * len(labels)
    offset = 0
    for label in sorted(set(labels)):
        members = [i for i, value in enumerate(labels) if value == label]
        rng.shuffle(members)
        for position, index in enumerate(members):
            folds[index] = (position + offset) % k
        offset += len(members)
    return folds if groups is None else [folds[group] for group in groups]


def example_folds(examples: Sequence[Example], k: int, seed: int) -> list[int]:
    """The folds cross-validation deals `examples` into: stratified by label, copies of a text together."""
    return stratified_folds([e.label for e in examples], k, seed, duplicate_groups(examples))


def duplicate_groups(examples: Sequence[Example]) -> list[int]:
    """Per example, the index of the first example with the same text (whitespace runs read as one space)."""
    first: dict[str, int] = {}
    return [first.setdefault(" ".join(e.text.split()), index) for index, e in enumerate(examples)]


def _warn_duplicates(examples: Sequence[Example], groups: Sequence[int]) -> None:
    """Exports (scraped news, tickets) repeat documents. Cross-validation keeps the copies in one fold; the
    user still hears of them, and of copies labelled differently (the model cannot fit both)."""
    repeats = [(group, index) for index, group in enumerate(groups) if group != index]
    if not repeats:
        return
    shown = ", ".join(f"{examples[copy].source} repeats {examples[first].source}" for first, copy in repeats[:3])
    log.warning(
        "%d document(s) repeat an earlier one's text (%s%s); cross-validation keeps each text's copies in one fold",
        len(repeats),
        shown,
        ", ..." if len(repeats) > 3 else "",
    )
    conflicts = [
        f"{examples[first].source} ({examples[first].label!r}) and {examples[copy].source} ({examples[copy].label!r})"
        for first, copy in repeats
        if examples[copy].label != examples[first].label
    ]
    if conflicts:
        log.warning(
            "%d copy(ies) of a text carry another label than its first: %s%s",
            len(conflicts),
            "; ".join(conflicts[:3]),
            "; ..." if len(conflicts) > 3 else "",
        )


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_pipeline(options: PipelineOptions) -> dict[str, Any]:
    """Train the final model on everything (unless `skip_final`), then cross-validate (if `k_fold` > 1).

    The final fit comes first so a usable model exists early; cross-validation then chooses the serving
    stride and aggregation (rewriting `longdoc.json`) and the card is rendered from both runs' records.
    """
    config = options.config
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    examples = load_examples(options.data)  # fails on a bad line before any training
    labels = label_order({e.label for e in examples})
    folded = Counter(label.casefold() for label in labels)
    if any(count > 1 for count in folded.values()):
        log.warning("labels that differ only in case are separate classes: %s", labels)
    label2id = {label: i for i, label in enumerate(labels)}
    _check_run(options, examples, labels)
    _warn_duplicates(examples, duplicate_groups(examples))
    # The whole network as the recipe builds it: a bad layer count or head fails here, before any training.
    tokenizer, network = load_base_model(options.base_model, labels, config.pooling, config.encoder_layers)
    limit = position_limit(network)
    if config.max_length > limit:
        raise DataError(
            f"max_length {config.max_length} is over the {limit} positions of the base {options.base_model}"
        )
    freeze_encoder_layers(network, config.freeze_layers)  # a count the encoder has not: refused now
    del network
    try:
        segmenter = Segmenter(tokenizer, config.max_length, config.stride)
    except ValueError as exc:  # e.g. a short --max-length with the default --stride
        raise DataError(f"--max-length {config.max_length} --stride {config.stride}: {exc}") from None
    for stride in options.eval_strides:  # a bad one would otherwise fail after the training
        try:
            Segmenter(tokenizer, config.max_length, stride)
        except ValueError as exc:
            raise DataError(f"--eval-strides {stride}: {exc}") from None
    docs = encode_docs(segmenter, examples, label2id)
    _warn_unknown_tokens(docs, tokenizer)
    _prepare_output(options)
    summary_path = options.output / SUMMARY_FILE
    command = shlex.join(["longdoc", *sys.argv[1:]])
    data_sha256 = hashlib.sha256(options.data.read_bytes()).hexdigest()
    if options.resume and not options.skip_final and summary_path.is_file():
        # the folds kept must come from this recipe and data: check before the final fit replaces the summary
        _check_same_run(json.loads(summary_path.read_text(encoding="utf-8")), options, data_sha256)

    if not options.skip_final:
        result = train_model(
            options.base_model,
            labels,
            docs,
            config,
            progress=options.progress,
            description="final",
        )
        summary: dict[str, Any] = {
            "config": config.as_dict(),
            "labels": labels,
            "examples": len(examples),
            "base_model": str(options.base_model.resolve()),  # found again from any working directory
            "base_sha256": base_fingerprint(options.base_model),
            "command": command,
            "data_sha256": data_sha256,
            "final_seconds": result.seconds,
            "final_best_epoch": result.best_epoch,
            "final_history": result.history,
            "peak_rss_mb": _peak_rss_mb(),
            "serving": {
                "max_length": config.max_length,
                "stride": config.stride,
                "aggregation": str(config.aggregation),
                "pooling": config.pooling,
                "threshold": 0.5,
            },
        }
        _save(result.model, tokenizer, options.output, summary, keep_cv=options.resume)
        del result
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if options.skip_final:
        _check_same_run(summary, options, data_sha256)

    if options.k_fold > 1:
        report = _cross_validate(options, examples, docs, labels, tokenizer)
        summary["serving"].update(report["chosen"])
        summary["cv_command"] = command
        write_json(options.output / "longdoc.json", summary["serving"])
        write_json(summary_path, summary)
    cv_path = options.output / CV_REPORT_FILE
    if cv_path.is_file():
        summary["cv"] = json.loads(cv_path.read_text(encoding="utf-8"))
    write_model_card(options.output, summary, options.data_name or str(options.data))
    return summary


def _check_run(options: PipelineOptions, examples: Sequence[Example], labels: list[str]) -> None:
    """Refuse, before any training, what would otherwise fail late or quietly produce a useless model."""
    if not (options.base_model / "config.json").is_file():
        raise DataError(f"base {options.base_model} is not a model checkpoint directory (no config.json)")
    if not has_tokenizer_files(options.base_model):
        raise DataError(
            f"base {options.base_model} holds no tokenizer ({', '.join(TOKENIZER_FILES)} or *.model): copy the "
            "tokenizer files of the checkpoint it came from next to its weights"
        )
    if options.base_model.resolve() == options.output.resolve():
        raise DataError(
            f"--base and --output are the same directory ({options.output}): the final fit would replace the "
            "base that every cross-validation fold then starts from; write the new model to another directory"
        )
    if len(labels) < 2:
        raise DataError(f"{options.data}: a classifier needs at least two labels, found only {labels}")
    k = options.k_fold
    if k < 0 or k == 1:
        raise DataError(f"--k-fold must be 0 (no cross-validation) or at least 2, got {k}")
    if options.seed_spread > 1 and k < 2:
        raise DataError(
            f"--seed-spread {options.seed_spread} retrains cross-validation fold 1: it needs --k-fold 2 or more"
        )
    cross_validation_only = {
        "--eval-strides": bool(options.eval_strides),
        "--eval-int8": options.eval_int8,
        "--resume": options.resume,
    }
    for flag, given in cross_validation_only.items():
        if given and k < 2:
            raise DataError(f"{flag} applies to cross-validation: it needs --k-fold 2 or more")
    if options.skip_final:
        if k < 2:
            raise DataError("--skip-final only cross-validates the saved model: give --k-fold 2 or more")
        if not (options.output / SUMMARY_FILE).is_file():
            raise DataError(
                f"--skip-final needs a model trained by longdoc in {options.output} (no {SUMMARY_FILE}): "
                "run the final fit first (without --skip-final)"
            )
    if k > 1:
        label, fewest = min(Counter(e.label for e in examples).items(), key=lambda item: item[1])
        if fewest < k:
            raise DataError(
                f"--k-fold {k} needs at least {k} documents of every label, so that each fold holds some out; "
                f"{label!r} has {fewest}"
            )
    _check_validation_splits(options, examples)


def _check_validation_splits(options: PipelineOptions, examples: Sequence[Example]) -> None:
    """Every fit the run will make (the final one, each fold's) must hold out some documents to validate
    on: found out only when a fold starts, it would stop the run after the final fit."""
    fraction = options.config.val_fraction
    if not fraction:
        return
    labels = [e.label for e in examples]
    fits = {"the final fit": labels}
    if options.k_fold > 1:
        folds = example_folds(examples, options.k_fold, options.config.seed)
        for fold in range(options.k_fold):
            fits[f"fold {fold + 1}"] = [label for label, f in zip(labels, folds, strict=True) if f != fold]
    for name, fit_labels in fits.items():
        if not sum(held_out_count(n, fraction) for n in Counter(fit_labels).values()):
            raise DataError(
                f"--val-fraction {fraction:g} holds out no document of the {len(fit_labels)} that {name} trains "
                "on: raise it"
            )


def saved_base(output: Path) -> Path | None:
    """The base that made the longdoc model in `output` (what --skip-final cross-validates), if recorded
    and still there; else None, and the default base stands in (checked by its fingerprint)."""
    try:
        base = json.loads((output / SUMMARY_FILE).read_text(encoding="utf-8")).get("base_model")
    except (OSError, ValueError):
        return None
    return Path(base) if base and Path(base).is_dir() else None


def base_fingerprint(base: Path) -> str:
    """sha256 of the base's config.json and weight files: the same checkpoint wherever it is installed."""
    digest = hashlib.sha256()
    for path in sorted(base.iterdir()):
        if path.is_file() and (path.name == "config.json" or path.suffix in {".safetensors", ".bin"}):
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _prepare_output(options: PipelineOptions) -> None:
    """A new or empty directory, or an earlier longdoc model that this run replaces (its card and
    cross-validation files go only when the new final model is saved: see _save)."""
    output = options.output
    if output.exists() and not output.is_dir():
        raise DataError(f"output {output} is a file, not a directory")
    # scratch files of an interrupted longdoc run (see write_atomically and _save) are ours to overwrite
    entries = list(output.iterdir()) if output.is_dir() else []
    present = [p for p in entries if not (p.name.startswith(".") and p.name.endswith(".partial"))]
    if present and not (output / SUMMARY_FILE).is_file():
        names = ", ".join(sorted(p.name for p in present)[:5])
        raise DataError(
            f"output {output} holds files that are not a longdoc model ({names}); give a new or empty directory"
        )
    output.mkdir(parents=True, exist_ok=True)


def _check_same_run(summary: dict[str, Any], options: PipelineOptions, data_sha256: str) -> None:
    """Cross-validation must score the base, recipe and data that made the saved model (and the folds it
    keeps), or the card would misreport it."""
    config = options.config
    stored_base, stored_sha256 = summary.get("base_model"), summary.get("base_sha256")
    # By content: the same base installed elsewhere (a container's venv) is the same base. A summary from
    # before the fingerprint was recorded is checked by path, where that path still exists.
    if stored_sha256 is not None:
        differs = stored_sha256 != base_fingerprint(options.base_model)
    elif stored_base is not None and Path(stored_base).is_dir():
        differs = Path(stored_base).resolve() != options.base_model.resolve()
    else:
        differs = False
    if differs:
        raise DataError(
            f"the base differs from the one that made the saved model (saved {stored_base}, given "
            f"{options.base_model}); give the saved model's base, or train without --skip-final/--resume"
        )
    stored_data = summary.get("data_sha256")  # absent in models made before it was recorded
    if stored_data is not None and stored_data != data_sha256:
        raise DataError(
            f"the data differs from the file that made the saved model (sha256 {stored_data[:12]}…, "
            f"given {data_sha256[:12]}…); train without --skip-final/--resume"
        )
    saved = {**TrainConfig().as_dict(), **summary["config"]}  # keys added since the model keep their defaults
    given = config.as_dict()
    differ = [k for k in given if k != "num_threads" and saved.get(k) != given[k]]
    if differ:
        detail = ", ".join(f"{k}: saved {saved.get(k)!r}, given {given[k]!r}" for k in differ)
        raise DataError(f"the recipe differs from the one that made the saved model ({detail})")


def _previous_records(options: PipelineOptions, name: str) -> list[dict[str, Any]]:
    """With `resume`, the records an earlier run left in the output directory (else none). Records without
    a document `index` come from an older longdoc that also scored fp32 weights: their folds are redone."""
    path = options.output / name
    return [r for r in read_records(path) if "index" in r] if options.resume and path.is_file() else []


def _complete_folds(
    records: Sequence[dict[str, Any]], fold_members: dict[int, set[int]], strides: Sequence[int]
) -> set[int]:
    """The folds whose out-of-fold records hold exactly the fold's documents (by index) at every stride
    asked for: a fold dealt differently before (copies of a text now kept together) is trained again.

    A kept fold keeps whatever int8 records it has: its model is gone, so int8 cannot be added later.
    """
    return {
        fold
        for fold, members in fold_members.items()
        if all(
            sorted(r.get("index", -1) for r in records if r["fold"] == fold and r["stride"] == stride)
            == sorted(members)
            for stride in strides
        )
    }


def _fit_and_predict(
    options: PipelineOptions,
    config: TrainConfig,
    train_docs: Sequence[EncodedDoc],
    held_out: Sequence[Example],
    labels: list[str],
    tokenizer: Any,
    strides: Sequence[int],
    description: str,
    fold: int,
    held_out_indices: Sequence[int],
    int8: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Train one model with `config`; its prediction records on `held_out` as the service computes them
    from the saved checkpoint (weights rounded to fp16, computed in fp32) and, with `int8`, as its int8
    mode does (quantized, one chunk per forward); and the training seconds."""
    result = train_model(
        options.base_model, labels, train_docs, config, progress=options.progress, description=description
    )
    as_shipped = copy.deepcopy(result.model).half().float()  # _save writes fp16; the service casts it back
    tags = {"fold": fold, "seed": config.seed}
    records = predict_examples(
        as_shipped, tokenizer, held_out, labels, config.max_length, strides, indices=held_out_indices, **tags
    )
    int8_records = []
    if int8:
        int8_records = predict_examples(
            quantize_int8(as_shipped),
            tokenizer,
            held_out,
            labels,
            config.max_length,
            strides,
            max_batch_tokens=0,
            indices=held_out_indices,
            **tags,
        )
    return records, int8_records, result.seconds


def _accuracies(records: list[dict[str, Any]], stride: int) -> dict[str, float]:
    """Accuracy of every strategy over the records made at `stride`."""
    report = evaluate_records([r for r in records if r["stride"] == stride])
    return {s: b["all"]["accuracy"] for s, b in report["strides"][str(stride)]["strategies"].items()}


def _cross_validate(
    options: PipelineOptions,
    examples: Sequence[Example],
    docs: Sequence[EncodedDoc],
    labels: list[str],
    tokenizer: Any,
) -> dict[str, Any]:
    """k fold models with the same recipe, each scored only on its own held-out fold, at every eval stride.
    `docs` are `examples` encoded with the recipe's window: each fold trains on its share of them."""
    config = options.config
    strides = sorted(set(options.eval_strides) | {config.stride})
    folds = example_folds(examples, options.k_fold, config.seed)
    previous = _previous_records(options, CV_PREDICTIONS_FILE)
    members = {f: {i for i, fold in enumerate(folds) if fold == f} for f in range(options.k_fold)}
    kept = _complete_folds(previous, members, strides)
    previous_int8 = _previous_records(options, CV_INT8_PREDICTIONS_FILE) if options.eval_int8 else []
    records = [r for r in previous if r["fold"] in kept and r["stride"] in strides]
    int8_records = [r for r in previous_int8 if r["fold"] in kept and r["stride"] in strides]
    if kept:
        log.info("resume: folds %s kept from %s", sorted(f + 1 for f in kept), options.output / CV_PREDICTIONS_FILE)
    started = time.perf_counter()
    for fold in range(options.k_fold):
        if fold in kept:
            continue
        held_out_indices = [i for i, f in enumerate(folds) if f == fold]
        held_out = [examples[i] for i in held_out_indices]
        fold_records, fold_int8, seconds = _fit_and_predict(
            options,
            config,
            [d for d, f in zip(docs, folds, strict=True) if f != fold],
            held_out,
            labels,
            tokenizer,
            strides,
            f"fold {fold + 1}/{options.k_fold}",
            fold,
            held_out_indices,
            options.eval_int8,
        )
        records.extend(fold_records)
        int8_records.extend(fold_int8)
        write_records(options.output / CV_PREDICTIONS_FILE, records)  # progress survives an interruption
        if int8_records:
            write_records(options.output / CV_INT8_PREDICTIONS_FILE, int8_records)
        accuracies = {s: round(a, 4) for s, a in _accuracies(fold_records, config.stride).items()}
        log.info("fold %d: %s (%.0f s)", fold + 1, accuracies, seconds)
    report = evaluate_records(records)
    stride, aggregation = best_setting(report, (config.stride, str(config.aggregation)))
    report["chosen"] = {"stride": stride, "aggregation": aggregation}
    if int8_records:  # fp32 over exactly the folds that have int8 records, so the two compare like for like
        int8_folds = {r["fold"] for r in int8_records}
        report["int8"] = {
            "folds": sorted(f + 1 for f in int8_folds),
            "int8": evaluate_records(int8_records),
            "fp32": evaluate_records([r for r in records if r["fold"] in int8_folds]),
        }
    report["cv_seconds"] = time.perf_counter() - started
    previous_report = options.output / CV_REPORT_FILE
    if kept and previous_report.is_file():  # time spent on the kept folds in the earlier run
        report["cv_seconds"] += json.loads(previous_report.read_text(encoding="utf-8")).get("cv_seconds", 0.0)
    if options.seed_spread > 1:
        report["seed_spread"] = _seed_spread(
            options,
            examples,
            docs,
            folds,
            labels,
            tokenizer,
            [r for r in records if r["fold"] == 0],
            [r for r in int8_records if r["fold"] == 0],
        )
    write_json(options.output / CV_REPORT_FILE, report)
    log.info("cross-validation:\n%s", format_report(report))
    return report


def _seed_spread(
    options: PipelineOptions,
    examples: Sequence[Example],
    docs: Sequence[EncodedDoc],
    folds: Sequence[int],
    labels: list[str],
    tokenizer: Any,
    fold_records: list[dict[str, Any]],
    fold_int8_records: list[dict[str, Any]],
) -> dict[str, Any]:
    """Fold 1 retrained with further seeds: how much the recipe's result depends on the seed (and, with
    `eval_int8`, what int8 costs on each of these held-out runs)."""
    config = options.config
    held_out_indices = [i for i, f in enumerate(folds) if f == 0]
    held_out = [examples[i] for i in held_out_indices]
    runs: dict[str, Any] = {str(config.seed): _accuracies(fold_records, config.stride)}
    int8_runs: dict[str, Any] = {}
    if fold_int8_records:
        int8_runs[str(config.seed)] = _accuracies(fold_int8_records, config.stride)
    train_docs = [d for d, f in zip(docs, folds, strict=True) if f != 0]
    for seed in range(config.seed + 1, config.seed + options.seed_spread):
        seeded = TrainConfig(**{**config.as_dict(), "seed": seed, "aggregation": config.aggregation})
        records, int8_records, _ = _fit_and_predict(
            options,
            seeded,
            train_docs,
            held_out,
            labels,
            tokenizer,
            [config.stride],
            f"seed {seed} fold 1",
            0,
            held_out_indices,
            options.eval_int8,
        )
        runs[str(seed)] = _accuracies(records, config.stride)
        if int8_records:
            int8_runs[str(seed)] = _accuracies(int8_records, config.stride)
        log.info("seed %d fold 1: %s int8 %s", seed, runs[str(seed)], int8_runs.get(str(seed)))
    spread = {}
    for strategy in next(iter(runs.values())):
        values = [run[strategy] for run in runs.values()]
        spread[strategy] = {"min": min(values), "max": max(values), "range": max(values) - min(values)}
    result = {"fold": 1, "stride": config.stride, "accuracy_by_seed": runs, "spread": spread}
    if int8_runs:
        result["int8_accuracy_by_seed"] = int8_runs
    return result


def _save(model: Any, tokenizer: Any, output: Path, summary: dict[str, Any], keep_cv: bool) -> None:
    """fp16 safetensors (half the size; the service casts to its dtype), tokenizer without truncation,
    longdoc.json and the training summary.

    Everything is written into a scratch folder first and then renamed into place file by file, so an
    interrupted save never leaves new weights beside the old model's longdoc.json (another network). The
    old model's card and cross-validation files describe it, not the new one: they go just before the
    renames (kept with `keep_cv`, whose folds are checked to be this recipe's), not earlier, so a run that
    fails or is stopped before then leaves the old model whole."""
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    partial = output / ".final.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.half().save_pretrained(partial, safe_serialization=True)
    model.float()
    tokenizer.save_pretrained(partial)
    write_json(partial / "longdoc.json", summary["serving"])
    write_json(partial / SUMMARY_FILE, summary)
    stale = ["README.md"] if keep_cv else [CV_PREDICTIONS_FILE, CV_INT8_PREDICTIONS_FILE, CV_REPORT_FILE, "README.md"]
    for name in stale:
        (output / name).unlink(missing_ok=True)
    for path in partial.iterdir():
        os.replace(path, output / path.name)
    partial.rmdir()


def _warn_unknown_tokens(docs: Sequence[EncodedDoc], tokenizer: Any) -> None:
    """Text the base's vocabulary cannot spell trains on [UNK]s: the run succeeds and learns nothing."""
    unknown_id = tokenizer.unk_token_id
    total = sum(sum(doc.token_counts) for doc in docs)
    if unknown_id is None or not total:
        return
    unknown = sum(ids.count(unknown_id) for doc in docs for ids in doc.chunks)
    if unknown / total > UNKNOWN_TOKEN_WARNING:
        log.warning(
            "%.0f%% of the training tokens are the tokenizer's unknown token %s: the base's vocabulary does not "
            "cover this text (a tokenizer saved without its vocabulary?); the model would learn little",
            100 * unknown / total,
            tokenizer.unk_token,
        )


def label_order(labels: set[str]) -> list[str]:
    """Class ids in numeric order (2 before 10: JSONL integers and CSV digits), other labels sorted."""
    if all(label.lstrip("-").isdecimal() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)
