"""Evaluation from stored chunk logits: every aggregation side by side, plus the first-window baseline.

Predictions are kept per chunk, so any aggregation (and the truncation baseline, which is the first
window's logits alone) is recomputed without running the model again; this is how the model card's
cross-validation numbers are reproduced from the shipped out-of-fold predictions file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.aggregate import Aggregation, aggregate
from app.segmenter import Segmenter
from app.training.data import DataError, Example, read_text, write_atomically
from app.training.train import EncodedDoc, encode_docs, predict_chunk_logits

FIRST_WINDOW = "first_window"
STRATEGIES: list[str] = [str(a) for a in Aggregation] + [FIRST_WINDOW]
LENGTH_GROUPS = ("all", "single_window", "multi_window")


def group_accuracy(block: dict[str, Any]) -> str:
    """A length group's accuracy for a table; "-" for a group with no documents (not a score of 0)."""
    return f"{block['accuracy']:.3f}" if block["n"] else "-"


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (rows =
    true label). Balanced accuracy (the mean recall of the labels present) is the expected accuracy on a
    label-balanced set drawn like this one, as many benchmarks' test sets are."""
    k = len(labels)
    matrix = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[t, p] += 1
    per_class = {}
    f1s = []
    recalls = []
    for i, label in enumerate(labels):
        tp = int(matrix[i, i])
        predicted, actual = int(matrix[:, i].sum()), int(matrix[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if predicted or actual:  # a label neither present nor predicted has no F1 (as scikit-learn's macro)
            f1s.append(f1)
        if actual:
            recalls.append(recall)
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    n = int(matrix.sum())
    return {
        "n": n,
        "accuracy": float(np.trace(matrix) / n) if n else 0.0,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "per_class": per_class,
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
    }


def prediction_records(
    docs: Sequence[EncodedDoc],
    logits: Sequence[torch.Tensor],
    labels: Sequence[str],
    indices: Sequence[int] | None = None,
    **tags: Any,
) -> list[dict[str, Any]]:
    """JSON-ready per-document records of chunk logits; `tags` (fold, stride, ...) go into each, and
    `indices` (the documents' 0-based positions in the data file) let a reader join them to the texts."""
    return [
        {
            **tags,
            **({"index": indices[n]} if indices is not None else {}),
            "label": labels[doc.label],
            "labels": list(labels),
            "num_tokens": doc.num_tokens,
            "token_counts": doc.token_counts,
            "chunk_logits": [[round(float(v), 6) for v in row] for row in chunk],
        }
        for n, (doc, chunk) in enumerate(zip(docs, logits, strict=True))
    ]


def predict_strategy(record: dict[str, Any], strategy: str) -> int:
    logits = torch.tensor(record["chunk_logits"], dtype=torch.float32)
    if strategy == FIRST_WINDOW:
        return int(logits[0].argmax())
    counts = torch.tensor(record["token_counts"])
    return int(aggregate(logits, counts, Aggregation(strategy)).argmax())


def evaluate_records(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Metrics per stride x strategy x length group, and per-fold spread where records carry a fold."""
    by_stride: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_stride[int(record.get("stride", -1))].append(record)
    if not by_stride:
        raise ValueError("no prediction records to evaluate")
    report: dict[str, Any] = {"strides": {}}
    for stride, group in sorted(by_stride.items()):
        labels = group[0]["labels"]
        label_index = {label: i for i, label in enumerate(labels)}
        y_true = [label_index[r["label"]] for r in group]
        multi = [len(r["chunk_logits"]) > 1 for r in group]
        strategies: dict[str, Any] = {}
        for strategy in STRATEGIES:
            y_pred = [predict_strategy(r, strategy) for r in group]
            block: dict[str, Any] = {}
            for name in LENGTH_GROUPS:
                keep = [i for i in range(len(group)) if name == "all" or (name == "multi_window") == multi[i]]
                block[name] = classification_metrics([y_true[i] for i in keep], [y_pred[i] for i in keep], labels)
            folds = sorted({r["fold"] for r in group if "fold" in r})
            if len(folds) > 1:
                accuracies = []
                f1s = []
                for fold in folds:
                    keep = [i for i, r in enumerate(group) if r.get("fold") == fold]
                    m = classification_metrics([y_true[i] for i in keep], [y_pred[i] for i in keep], labels)
                    accuracies.append(m["accuracy"])
                    f1s.append(m["macro_f1"])
                block["folds"] = {
                    "accuracy": accuracies,
                    "accuracy_mean": float(np.mean(accuracies)),
                    "accuracy_std": float(np.std(accuracies, ddof=1)),  # sample sd: the folds are a sample
                    "macro_f1": f1s,
                    "macro_f1_mean": float(np.mean(f1s)),
                    "macro_f1_std": float(np.std(f1s, ddof=1)),
                }
            strategies[strategy] = block
        report["strides"][str(stride)] = {
            "strategies": strategies,
            "n": len(group),
            "multi_window_docs": int(sum(multi)),
        }
    return report


def best_setting(report: dict[str, Any], trained: tuple[int, str] | None = None) -> tuple[int, str]:
    """The (stride, aggregation) with the best overall accuracy, macro-F1 breaking ties, then the `trained`
    recipe (a tie is no reason to serve differently from training), then the smaller stride; never the
    baseline."""
    candidates = [
        (
            block["all"]["accuracy"],
            block["all"]["macro_f1"],
            (int(stride), strategy) == trained,
            -int(stride),
            int(stride),
            strategy,
        )
        for stride, entry in report["strides"].items()
        for strategy, block in entry["strategies"].items()
        if strategy != FIRST_WINDOW
    ]
    best = max(candidates)
    return best[4], best[5]


def format_report(report: dict[str, Any]) -> str:
    """A readable table per stride: accuracy, balanced accuracy and macro-F1 for every strategy, accuracy
    per length group, the confusion matrices and the per-class precision / recall / F1."""
    lines = []
    for stride, entry in report["strides"].items():
        lines.append(f"stride {stride}: {entry['n']} documents, {entry['multi_window_docs']} longer than one window")
        lines.append(
            f"  {'strategy':<22}{'acc':>7}{'bal-acc':>9}{'macro-F1':>10}{'acc 1-win':>11}{'acc multi':>11}"
            f"{'fold acc (mean±sd)':>22}"
        )
        for strategy, block in entry["strategies"].items():
            folds = block.get("folds")
            spread = f"{folds['accuracy_mean']:.3f} ± {folds['accuracy_std']:.3f}" if folds else "-"
            lines.append(
                f"  {strategy:<22}{block['all']['accuracy']:>7.3f}{block['all']['balanced_accuracy']:>9.3f}"
                f"{block['all']['macro_f1']:>10.3f}"
                f"{group_accuracy(block['single_window']):>11}{group_accuracy(block['multi_window']):>11}"
                f"{spread:>22}"
            )
        best = entry["strategies"]
        any_block = next(iter(best.values()))["all"]
        lines.append(f"  confusion matrix rows=true cols=pred, labels {any_block['labels']}")
        for strategy, block in best.items():
            lines.append(f"    {strategy:<20} {block['all']['confusion_matrix']}")
        lines.append("  per class precision / recall / F1 (support)")
        for strategy, block in best.items():
            cells = [
                f"{label} {m['precision']:.3f} / {m['recall']:.3f} / {m['f1']:.3f} ({m['support']})"
                for label, m in block["all"]["per_class"].items()
            ]
            lines.append(f"    {strategy:<20} " + "; ".join(cells))
    return "\n".join(lines)


RECORD_KEYS = ("label", "labels", "chunk_logits", "token_counts")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Prediction records (JSONL, as `longdoc train --k-fold` writes them); DataError names a bad line."""
    records = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
        if missing:
            raise DataError(f"{path}:{number}: not a prediction record (lacks {missing}); give a cv_predictions file")
        problem = _record_problem(record)
        if problem:
            raise DataError(f"{path}:{number}: {problem}")
        records.append(record)
    return records


def _record_problem(record: dict[str, Any]) -> str | None:
    """What makes a record with every key unusable, before a metric trips over it."""
    labels, logits, counts = record["labels"], record["chunk_logits"], record["token_counts"]
    if not isinstance(labels, list) or record["label"] not in labels:
        return f"label {record['label']!r} is not one of labels {labels!r}"
    if not isinstance(logits, list) or not logits or any(not _numbers(row, len(labels)) for row in logits):
        return f"chunk_logits must be a non-empty list of rows of {len(labels)} numbers (one per label)"
    if not isinstance(counts, list) or len(counts) != len(logits):
        return f"token_counts must give one count per chunk ({len(logits)} chunks)"
    return None


def _numbers(row: Any, count: int) -> bool:
    return (
        isinstance(row, list)
        and len(row) == count
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
    )


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    write_atomically(path, "".join(json.dumps(record) + "\n" for record in records))


def predict_examples(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    labels: Sequence[str],
    max_length: int,
    strides: Sequence[int],
    *,
    max_batch_tokens: int = 16384,
    indices: Sequence[int] | None = None,
    **tags: Any,
) -> list[dict[str, Any]]:
    """Run a model over labelled examples at each stride and return prediction records.

    `max_batch_tokens=0` runs one chunk per forward pass, as the service runs an int8 model; `indices`
    are the examples' positions in the data file, recorded in each record.
    """
    label2id = {label: i for i, label in enumerate(labels)}
    unknown = sorted({e.label for e in examples} - set(label2id))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's labels {list(labels)}")
    records: list[dict[str, Any]] = []
    pad_id = int(tokenizer.pad_token_id or 0)
    for stride in strides:
        docs = encode_docs(Segmenter(tokenizer, max_length, stride), examples, label2id)
        logits = predict_chunk_logits(model, docs, pad_id, max_batch_tokens)
        broken = next((e for e, rows in zip(examples, logits, strict=True) if not torch.isfinite(rows).all()), None)
        if broken is not None:  # argmax of NaN is class 0: the report would look like a real, bad model
            raise ValueError(
                f"the model returned a non-finite logit (NaN or infinity) for {broken.source or 'a document'}: "
                "its weights are broken (a half-precision training run?) and no metric would mean anything"
            )
        records.extend(prediction_records(docs, logits, labels, indices, stride=stride, max_length=max_length, **tags))
    return records
