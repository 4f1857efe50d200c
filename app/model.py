"""Load a local Hugging Face sequence-classification checkpoint and run its forward pass on chunks.

Local directories only (`local_files_only=True`): a service must never reach for a model hub at start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

log = logging.getLogger(__name__)

MODEL_METADATA_FILE = "longdoc.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
Pooling = Literal["cls", "mean"]
POOLINGS: tuple[Pooling, ...] = ("cls", "mean")


class MeanPooledClassifier(torch.nn.Module):
    """A BERT-style sequence classifier whose head reads the masked mean of the last hidden states.

    Sentence encoders such as all-MiniLM-L6-v2 were trained for mean pooling, not for the [CLS] pooler, so
    their token mean is the better input for a new head. The weights stay a standard
    `*ForSequenceClassification` checkpoint (its pooler is simply unused); `longdoc.json` records
    `"pooling": "mean"` so serving, evaluation and training all build the same network.
    """

    def __init__(self, classifier: Any) -> None:
        super().__init__()
        head, dropout = getattr(classifier, "classifier", None), getattr(classifier, "dropout", None)
        if not isinstance(head, torch.nn.Linear) or not isinstance(dropout, torch.nn.Module):
            raise ValueError(
                f"pooling 'mean' needs a BERT-style head (dropout then one Linear classifier); "
                f"{type(classifier).__name__} has another, use pooling 'cls'"
            )
        self.inner = classifier

    @property
    def base_model(self) -> Any:
        return self.inner.base_model

    @property
    def config(self) -> Any:
        return self.inner.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.inner.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.inner.classifier(self.inner.dropout(pooled)))

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        self.inner.save_pretrained(*args, **kwargs)


def with_pooling(classifier: Any, pooling: str) -> Any:
    """The classifier as trained: its own [CLS] head for 'cls', wrapped for 'mean'."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    return MeanPooledClassifier(classifier) if pooling == "mean" else classifier


def pad_chunks(chunks: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (input_ids, attention_mask) tensors of the longest length."""
    width = max(len(c) for c in chunks)
    input_ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(chunks), width), dtype=torch.long)
    for row, ids in enumerate(chunks):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


METADATA_KEYS = ("max_length", "stride", "aggregation", "pooling", "threshold")


def read_model_metadata(model_dir: Path) -> dict[str, Any]:
    """The serving defaults stored beside the weights (`longdoc.json`), or {} when there are none. A key
    it does not know (a typo such as "strid") is an error: ignored, it would serve another setting."""
    path = model_dir / MODEL_METADATA_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(METADATA_KEYS))
    if unknown:
        raise ValueError(f"{path} has unknown key(s) {unknown}; known: {', '.join(METADATA_KEYS)}")
    return data


def model_pooling(config: Any, metadata: dict[str, Any], model_dir: Path) -> str:
    """How the head reads the encoder: longdoc.json's `pooling`, else what training recorded in config.json
    (`longdoc_pooling`), else the [CLS] pooler. The two records must agree: another pooling is another
    network, which would serve confidently and wrongly."""
    recorded = getattr(config, "longdoc_pooling", None)
    stated = metadata.get("pooling")
    if stated is not None and recorded is not None and stated != recorded:
        raise ValueError(
            f"{model_dir / MODEL_METADATA_FILE} says pooling {stated!r}, but config.json records that the model "
            f"was trained with {recorded!r}"
        )
    return str(stated or recorded or "cls")


def weights_revision(model_dir: Path) -> str:
    """A short content hash of the weights, so two models with one name can be told apart."""
    digest = hashlib.sha256()
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]


def resolve_device(requested: Literal["auto", "cpu", "cuda"]) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on CUDA; float32 on a CPU, even one with native bfloat16, where bfloat16 runs about
    twice as fast but a window's scores then move in the third decimal with the windows it is batched
    with (docs/benchmarks.md): results that depend on other clients' traffic are opted into, not a default."""
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return names[requested]


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 matrix products in hardware. Elsewhere oneDNN emulates them, slower
    than float32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, private but stable since 2.3
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


class Engine(Protocol):
    """What the service needs from a model; tests inject deterministic fakes with the same shape."""

    tokenizer: Any
    labels: list[str]
    multi_label: bool
    max_positions: int
    name: str
    revision: str
    quantization: str
    metadata: dict[str, Any]

    @property
    def dtype_name(self) -> str: ...

    @property
    def device_name(self) -> str: ...

    def forward(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor: ...


@dataclass
class LoadedModel:
    """A classifier ready for inference plus what the API reports about it."""

    model: Any
    tokenizer: Any
    labels: list[str]
    multi_label: bool
    max_positions: int
    pad_id: int
    device: torch.device
    dtype: torch.dtype
    quantization: str
    name: str
    revision: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def device_name(self) -> str:
        return self.device.type

    def forward(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits (chunks, labels) as float32 on the CPU; runs under inference_mode.

        Dynamic int8 quantization scales activations by the range of the whole input tensor, so in a
        padded batch a chunk's logits would depend on its neighbours; int8 therefore runs chunk by chunk
        (on a CPU, batching buys little throughput anyway) to keep results batch-independent.
        """
        if self.quantization == "int8" and len(chunks) > 1:
            return torch.cat([self._forward_padded(chunks[i : i + 1]) for i in range(len(chunks))])
        return self._forward_padded(chunks)

    def _forward_padded(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        input_ids, attention_mask = pad_chunks(chunks, self.pad_id)
        non_blocking = self.device.type == "cuda"
        if non_blocking:
            input_ids, attention_mask = input_ids.pin_memory(), attention_mask.pin_memory()
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self.device, non_blocking=non_blocking),
                attention_mask=attention_mask.to(self.device, non_blocking=non_blocking),
            ).logits
        result: torch.Tensor = logits.float().cpu()
        return result


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of every Linear layer (CPU): weights int8, activations scaled per tensor."""
    quantize_dynamic: Any = torch.ao.quantization.quantize_dynamic
    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def load_model(
    model_dir: Path,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    dtype: str = "auto",
    quantize: Literal["none", "int8"] = "none",
) -> LoadedModel:
    """Load tokenizer and classifier from a local directory, on the requested device/dtype/quantization."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    if not (model_dir / "config.json").is_file():
        raise ValueError(f"model_dir {model_dir} holds no config.json: not a Hugging Face checkpoint")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if quantize == "int8" and torch_device.type != "cpu":
        raise ValueError("quantize=int8 (dynamic quantization) runs on the CPU only; use device=cpu")
    if quantize == "int8" and torch_dtype != torch.float32:
        raise ValueError("quantize=int8 needs dtype float32 (the quantized Linear layers compute in fp32)")
    if torch_device.type == "cpu" and torch_dtype == torch.bfloat16 and not cpu_has_native_bf16():
        log.warning("dtype bfloat16 on a CPU without AVX512-BF16 or AMX is emulated: slower than float32")
    if not has_tokenizer_files(model_dir):
        raise ValueError(f"model_dir {model_dir} holds no tokenizer ({', '.join(TOKENIZER_FILES)} or *.model)")
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, use_fast=True)
    metadata = read_model_metadata(model_dir)
    # No attn_implementation: transformers takes SDPA where the architecture has it, eager elsewhere
    # (DeBERTa-v2, MPNet), so every BERT-family checkpoint loads.
    model = with_pooling(
        AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True, dtype=torch_dtype),
        model_pooling(config, metadata, model_dir),
    )
    check_vocabulary(model, tokenizer, model_dir)
    max_positions = position_limit(model)
    model.eval()
    if quantize == "int8":
        model = quantize_int8(model)
    model.to(torch_device)
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        labels=labels,
        multi_label=config.problem_type == "multi_label_classification",
        max_positions=max_positions,
        pad_id=int(pad_id),
        device=torch_device,
        dtype=torch_dtype,
        quantization=quantize,
        name=model_dir.resolve().name,
        revision=weights_revision(model_dir),
        metadata=metadata,
    )


def position_limit(model: Any) -> int:
    """Longest window the model's position embeddings allow.

    Read from the table itself where there is one: RoBERTa-style embeddings (RoBERTa, XLM-R, CamemBERT,
    data2vec-text, ...) number positions from padding_idx + 1, so 514 rows hold 512 positions; a window
    one token longer indexes past the table (an IndexError on the first long document, not at start-up).
    """
    limit = int(getattr(model.config, "max_position_embeddings", 512))
    table = getattr(getattr(model.base_model, "embeddings", None), "position_embeddings", None)
    if isinstance(table, torch.nn.Embedding):
        offset = table.padding_idx + 1 if table.padding_idx is not None else 0
        limit = min(limit, table.num_embeddings - offset)
    return limit


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


def has_tokenizer_files(model_dir: Path) -> bool:
    """Whether the directory carries a tokenizer: without one, transformers builds a near-empty tokenizer
    that reads every word as [UNK], and a model would train or serve on nothing but unknown tokens."""
    return any((model_dir / name).is_file() for name in TOKENIZER_FILES) or any(model_dir.glob("*.model"))


def check_vocabulary(model: Any, tokenizer: Any, model_dir: Path) -> None:
    """A tokenizer that can emit ids past the embedding table (one copied from another checkpoint) fails
    only on the first text that uses such a token: refuse it when it is loaded."""
    try:
        table = model.base_model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # no token embedding table (CANINE reads characters)
        return
    rows = getattr(table, "num_embeddings", None)
    if rows is not None and len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer in {model_dir} has {len(tokenizer)} tokens but the model's embedding table only {rows} "
            "rows: the tokenizer belongs to another checkpoint"
        )
