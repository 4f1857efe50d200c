"""Model loading and the head's pooling: what the service computes must be what training optimised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from app.cli import main as cli_main
from app.model import load_model, pad_chunks
from app.training.train import TrainConfig, encode_docs, train_model
from tests.conftest import build_tiny_bert, minilm_dir
from tests.unit.test_training import late_keyword_corpus

MEAN_SERVING = {"max_length": 32, "stride": 0, "aggregation": "mean_logits", "pooling": "mean"}


@pytest.fixture(scope="module")
def mean_pooled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("mean-pooled"), serving=MEAN_SERVING)


def test_mean_pooling_reads_the_average_of_real_tokens_only(mean_pooled_dir: Path) -> None:
    loaded = load_model(mean_pooled_dir, device="cpu")
    short = loaded.tokenizer("a short window")["input_ids"]
    long = loaded.tokenizer("a much longer window that forces padding onto its neighbour " * 2)["input_ids"]
    together = loaded.forward([short, long])
    assert torch.allclose(together[0], loaded.forward([short])[0], atol=1e-5)  # padding never leaks in

    inner = loaded.model.inner
    input_ids, mask = pad_chunks([short], loaded.pad_id)
    with torch.inference_mode():
        hidden = inner.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        expected = inner.classifier(hidden.mean(dim=1))
        cls_head = inner(input_ids=input_ids, attention_mask=mask).logits
    assert torch.allclose(together[0], expected[0], atol=1e-5)
    assert not torch.allclose(together[0], cls_head[0], atol=1e-3)  # not the [CLS] pooler's answer


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_on_a_cpu_serves_float32_logits_and_warns_where_it_is_emulated(
    tiny_model_dir: Path, native: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("app.model.cpu_has_native_bf16", lambda: native)
    loaded = load_model(tiny_model_dir, device="cpu", dtype="bfloat16")
    reference = load_model(tiny_model_dir, device="cpu")
    ids = loaded.tokenizer("bfloat16 keeps about three significant digits")["input_ids"]
    logits = loaded.forward([ids])
    assert loaded.dtype_name == "bfloat16" and logits.dtype == torch.float32
    assert torch.allclose(logits, reference.forward([ids]), atol=0.1, rtol=0.05)
    assert ("emulated: slower than float32" in caplog.text) is not native


def test_checkpoints_without_pooling_keep_the_cls_head(tiny_model_dir: Path) -> None:
    loaded = load_model(tiny_model_dir, device="cpu")
    ids = loaded.tokenizer("the [CLS] pooler decides")["input_ids"]
    input_ids, mask = pad_chunks([ids], loaded.pad_id)
    with torch.inference_mode():
        expected = loaded.model(input_ids=input_ids, attention_mask=mask).logits
    assert type(loaded.model).__name__ == "BertForSequenceClassification"
    assert torch.allclose(loaded.forward([ids]), expected)


def test_unknown_pooling_is_refused_with_the_allowed_values(tmp_path: Path) -> None:
    directory = build_tiny_bert(tmp_path / "bad", serving={**MEAN_SERVING, "pooling": "max"})
    with pytest.raises(ValueError, match=r"pooling must be one of cls, mean, got 'max'"):
        load_model(directory, device="cpu")


def test_mean_pooling_refuses_a_head_it_cannot_read(tmp_path: Path) -> None:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from app.model import with_pooling

    model = RobertaForSequenceClassification(
        RobertaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(ValueError, match="RobertaForSequenceClassification has another, use pooling 'cls'"):
        with_pooling(model, "mean")


def test_train_saves_a_mean_pooled_model_that_serves_what_it_learned(tmp_path: Path) -> None:
    base = build_tiny_bert(tmp_path / "base")
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in late_keyword_corpus(8, seed=4)),
        encoding="utf-8",
    )
    output = tmp_path / "out"
    args = ["train", "--data", str(data), "--base", str(base), "--output", str(output), "--pooling", "mean"]
    args += ["--max-length", "32", "--stride", "0", "--epochs", "1", "--docs-per-step", "4", "--no-progress"]
    assert cli_main(args) == 0
    assert json.loads((output / "longdoc.json").read_text(encoding="utf-8"))["pooling"] == "mean"

    from transformers import AutoTokenizer

    from app.segmenter import Segmenter

    config = TrainConfig(max_length=32, stride=0, epochs=1, docs_per_step=4, pooling="mean", num_threads=1)
    tokenizer = AutoTokenizer.from_pretrained(base)
    docs = encode_docs(Segmenter(tokenizer, 32, 0), late_keyword_corpus(8, seed=4), {"giraffe": 0, "zebra": 1})
    trained = train_model(base, ["giraffe", "zebra"], docs, config, progress=False).model
    served = load_model(output, device="cpu")
    chunk = docs[0].chunks[0]
    input_ids, mask = pad_chunks([chunk], served.pad_id)
    with torch.inference_mode():
        expected = trained(input_ids=input_ids, attention_mask=mask).logits
    assert torch.allclose(served.forward([chunk]), expected, atol=2e-2)  # saved in fp16


def test_head_learning_rate_moves_the_head_while_a_zero_encoder_rate_keeps_the_encoder(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from app.segmenter import Segmenter

    base = build_tiny_bert(tmp_path / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    docs = encode_docs(Segmenter(tokenizer, 32, 0), late_keyword_corpus(8, seed=5), {"giraffe": 0, "zebra": 1})
    config = TrainConfig(
        max_length=32, stride=0, epochs=1, docs_per_step=4, learning_rate=0.0, head_learning_rate=1e-2, pooling="mean"
    )
    model = train_model(base, ["giraffe", "zebra"], docs, config, progress=False).model
    reference = build_tiny_bert(tmp_path / "reference")
    from transformers import BertForSequenceClassification

    untouched = BertForSequenceClassification.from_pretrained(reference).state_dict()
    trained = model.inner.state_dict()
    encoder_weight = "bert.encoder.layer.0.output.dense.weight"
    assert torch.equal(trained[encoder_weight], untouched[encoder_weight])
    assert not torch.equal(trained["classifier.weight"], untouched["classifier.weight"])


def _save_tiny(model: Any, directory: Path) -> Path:
    """A random checkpoint of any family, with the bundled base's WordPiece tokenizer beside it."""
    from transformers import AutoTokenizer

    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(directory)
    return directory


def test_architectures_without_sdpa_load_and_classify(tmp_path: Path) -> None:
    """DeBERTa-v2 (like MPNet) has no SDPA attention: the loader must not demand it."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    config = DebertaV2Config(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    loaded = load_model(_save_tiny(DebertaV2ForSequenceClassification(config), tmp_path / "deberta"), device="cpu")
    ids = loaded.tokenizer("a window for a model without sdpa")["input_ids"]
    assert loaded.forward([ids]).shape == (1, 2)


def test_position_limit_comes_from_the_embedding_table(tmp_path: Path) -> None:
    """data2vec-text numbers positions from padding_idx + 1 like RoBERTa, without being named RoBERTa:
    66 rows hold 64 positions, and a window of exactly the limit runs."""
    from transformers import Data2VecTextConfig, Data2VecTextForSequenceClassification

    config = Data2VecTextConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
    )
    loaded = load_model(_save_tiny(Data2VecTextForSequenceClassification(config), tmp_path / "d2v"), device="cpu")
    assert loaded.max_positions == 64
    assert loaded.forward([[101] + [2000] * 62 + [102]]).shape == (1, 2)
    with pytest.raises((IndexError, RuntimeError)):  # what the service hit on its first long document
        loaded.forward([[101] + [2000] * 63 + [102]])


def test_a_tokenizer_from_another_checkpoint_is_refused_at_load(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    small = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    directory = _save_tiny(BertForSequenceClassification(small), tmp_path / "small-vocab")
    with pytest.raises(ValueError, match=r"has 30522 tokens but the model's embedding table only 1000 rows"):
        load_model(directory, device="cpu")


def test_a_model_without_tokenizer_files_is_refused_at_load(tmp_path: Path) -> None:
    directory = build_tiny_bert(tmp_path / "no-tokenizer")
    for path in [*directory.glob("tokenizer*"), *directory.glob("vocab*"), *directory.glob("special_tokens*")]:
        path.unlink()
    with pytest.raises(ValueError, match=r"holds no tokenizer"):
        load_model(directory, device="cpu")


def test_eval_refuses_a_multi_label_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = build_tiny_bert(tmp_path / "multi", multi_label=True)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": "some words", "label": "positive"}) + "\n", encoding="utf-8")
    assert cli_main(["eval", "--model", str(directory), "--data", str(data)]) == 2
    assert "is a multi-label model" in capsys.readouterr().err
