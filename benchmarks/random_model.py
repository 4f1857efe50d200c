"""A random-weight BERT-base checkpoint for speed measurements at that size (no hub: built from BertConfig).

Speed does not depend on the weights, so a GPU benchmark of a BERT-base-sized model needs no download: the
bundled model's tokenizer (the same 30,522-token BERT vocabulary) and random weights in a local directory that
`load_model` and `longdoc serve` read like any fine-tuned checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.model import MODEL_METADATA_FILE
from app.settings import BUNDLED_MODEL

LABELS = ("negative", "positive")


def write_random_bert(path: Path, tokenizer_dir: Path = BUNDLED_MODEL, seed: int = 0, **config: Any) -> Path:
    """Save a randomly initialised BertForSequenceClassification (BERT-base unless `config` overrides it)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    bert_config = BertConfig(
        vocab_size=len(tokenizer),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
        **config,
    )
    torch.manual_seed(seed)
    model: Any = BertForSequenceClassification(bert_config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    window = min(512, bert_config.max_position_embeddings)
    metadata = {"max_length": window, "stride": 0, "aggregation": "mean_logits"}
    (path / MODEL_METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return path
