"""Request and response models of the HTTP contract (DESIGN.md); OpenAPI is generated from them."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from app.aggregate import Aggregation


class ClassifyRequest(BaseModel):
    """One `text` or a list of `texts`, never both."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "A long article ..."}]})

    text: StrictStr | None = Field(None, description="One document of any length.")
    texts: list[StrictStr] | None = Field(None, description="Several documents; results keep this order.")
    return_chunks: StrictBool = Field(False, description="Add per-chunk spans, scores and contributions.")
    aggregation: Aggregation | None = Field(None, description="Override the configured aggregation.")
    max_chunks: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="Classify from at most this many leading chunks per text (`truncated` says so)."
    )
    top_k_chunks: Annotated[StrictInt, Field(ge=0, le=100)] = Field(
        3, description="With return_chunks: how many most decisive chunks to list with excerpts."
    )

    @field_validator("return_chunks", "top_k_chunks", mode="before")
    @classmethod
    def _null_is_default(cls, value: object, info: ValidationInfo) -> object:
        """`null` means "not given", as it does for the other optional fields."""
        return cls.model_fields[str(info.field_name)].default if value is None else value

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        if self.texts is not None and not self.texts:
            raise ValueError("'texts' must hold at least one text")
        return self


class LabelScore(BaseModel):
    label: str
    score: float


class ChunkResult(BaseModel):
    start: int = Field(description="Character offset (code points) of the chunk's first token.")
    end: int = Field(description="Character offset just past the chunk's last token (exclusive).")
    num_tokens: int
    label: str
    score: float
    scores: list[LabelScore]
    contribution: float = Field(description="Share of the document decision under the active aggregation.")


class DecisiveChunk(BaseModel):
    index: int
    start: int
    end: int
    contribution: float
    score: float = Field(description="The chunk's own score for the document's label.")
    excerpt: str


class ClassifyResult(BaseModel):
    label: str
    score: float
    scores: list[LabelScore]
    labels: list[str] | None = Field(None, description="Multi-label models: every label over the threshold.")
    num_chunks: int
    num_tokens: int
    truncated: bool = False
    aggregation: Aggregation
    model: str
    chunks: list[ChunkResult] | None = None
    top_chunks: list[DecisiveChunk] | None = None


class ClassifyBatchResult(BaseModel):
    results: list[ClassifyResult]
    model: str


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str
    model_loaded: bool
    warmed_up: bool
    batcher_running: bool
    draining: bool


class InfoResponse(BaseModel):
    model: str
    revision: str
    labels: list[str]
    multi_label: bool
    max_length: int
    stride: int
    window_tokens: int
    aggregation: Aggregation
    threshold: float
    device: str
    dtype: str
    quantization: str
    num_threads: int
    max_batch_tokens: int
    max_padding_ratio: float
    max_batch_size: int
    max_queue_chunks: int
    max_document_chars: int
    max_texts_per_request: int
    version: str
