"""Every setting of the service in one class (env prefix LONGDOC_), validated at start-up.

Model-dependent values (max_length, stride, aggregation, threshold) may be left unset here: they then
come from the model's `longdoc.json`, then from built-in defaults (precedence: request > environment >
longdoc.json > built-in). `resolve_serving` applies that order once the tokenizer is known.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.aggregate import Aggregation
from app.model import MODEL_METADATA_FILE

T = TypeVar("T")

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "model_store" / "hyperpartisan-minilm"


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2/v1 CPU quota if one is set."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota: float | None = None
    try:
        parts = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if parts and parts[0] != "max":
            quota = int(parts[0]) / int(parts[1])
    except (OSError, ValueError, IndexError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            quota = q / p if q > 0 and p > 0 else None
        except (OSError, ValueError):
            quota = None
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


GPU_BATCH_TOKENS = 16384
CPU_BATCH_TOKENS = 1024
INT8_BATCH_TOKENS = 256
CPU_MAX_PADDING_RATIO = 0.1


def default_batch_tokens(device: str, quantization: str = "none") -> int:
    """The token budget when none is set, by device.

    On a GPU a pass over many windows costs little more than over one, so big batches raise throughput.
    On a CPU the cost grows with the tokens, but a pass of four full windows still runs faster per token
    than four passes of one (the engine's best budget on 2 cores is 1,024 tokens, docs/benchmarks.md), with
    the padding cap (`default_padding_ratio`): without it a document's short last window was padded to
    its full ones and the bigger passes bought nothing. An int8 engine runs its windows one by one
    whatever the pass holds (`Engine.forward`), so a bigger pass would only make short documents wait.
    """
    if device == "cuda":
        return GPU_BATCH_TOKENS
    return INT8_BATCH_TOKENS if quantization == "int8" else CPU_BATCH_TOKENS


def default_padding_ratio(device: str) -> float:
    """The most padding a pass may carry when none is set, by device.

    On a CPU every padding token costs as much as a real one, so a window that would pad the pass past
    10% waits for a pass of its own length (measured: 1.25x the throughput of one window per pass,
    docs/benchmarks.md). On a GPU a wider pass costs little more; no cap, as measured before.
    """
    return 1.0 if device == "cuda" else CPU_MAX_PADDING_RATIO


class Settings(BaseSettings):
    """Service configuration; each field is an environment variable LONGDOC_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="LONGDOC_", extra="ignore", validate_default=True)

    model_dir: Path = Field(BUNDLED_MODEL, description="Local Hugging Face checkpoint directory to serve.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when available.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU."
    )
    quantize: Literal["none", "int8"] = Field("none", description="int8 dynamic quantization (CPU only).")
    num_threads: int = Field(
        default_factory=available_cpus, ge=1, description="Torch/tokenizer threads; default: CPUs allowed."
    )
    max_length: int | None = Field(None, ge=2, description="Window in tokens incl. special tokens.")
    stride: int | None = Field(None, ge=0, description="Tokens shared by consecutive windows.")
    aggregation: Aggregation | None = Field(None, description="Default chunk aggregation strategy.")
    threshold: float | None = Field(None, gt=0, lt=1, description="Multi-label decision threshold.")
    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Token budget of one forward pass (padded); unset: 16384 on a GPU, 1024 on a CPU (256 with int8).",
    )
    max_padding_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Most padding share of a forward pass; a window that would exceed it waits for a pass of "
        "similar length (the first window of a pass always runs). Unset: 0.1 on a CPU, 1 (no cap) on a GPU.",
    )
    max_batch_size: int = Field(64, ge=1, description="Most chunks in one forward pass.")
    max_wait_ms: float = Field(
        5.0, ge=0, allow_inf_nan=False, description="Longest wait for more chunks before a batch runs."
    )
    batch_across_requests: bool = Field(
        True, description="Pack chunks of different requests into one forward pass (off: one request each)."
    )
    scheduler_aging_s: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="A queued request counts half its size for every this many seconds it waited.",
    )
    max_queue_chunks: int = Field(16384, ge=1, description="Chunks queued or running before 429.")
    max_document_chars: int = Field(2_000_000, ge=1, description="Longest text accepted (code points).")
    max_texts_per_request: int = Field(64, ge=1, description="Most texts in one request.")
    max_tokenizing_chars: int = Field(
        2_000_000,
        ge=1,
        description="Characters tokenized at once across all requests (more wait their turn): bounds the "
        "tokenizer's memory, up to ~0.6 GB per million characters of CJK or punctuation.",
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest request body in bytes.")
    body_timeout_s: float = Field(
        60.0, gt=0, allow_inf_nan=False, description="Longest pause while a request body uploads; then 408."
    )
    request_timeout_s: float = Field(600.0, gt=0, allow_inf_nan=False, description="Deadline from arrival; then 504.")
    drain_timeout_s: float = Field(630.0, gt=0, allow_inf_nan=False, description="Longest drain after SIGTERM.")
    startup_timeout_s: float = Field(
        600.0,
        gt=0,
        allow_inf_nan=False,
        description="Longest model load and warm-up; past it the start-up fails (exit status 1).",
    )
    api_key: SecretStr | None = Field(None, description="When set, /classify requires this key.")
    auth_metrics: bool = Field(False, description="Also require the API key for /metrics and /info.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Allowed CORS origins, comma-separated or a JSON list (none: CORS off)."
    )
    docs_enabled: bool = Field(True, description="Serve /docs, /redoc and /openapi.json.")
    host: str = Field("0.0.0.0", description="Bind address for `longdoc serve`.")
    port: int = Field(8000, ge=0, le=65535, description="Bind port for `longdoc serve`.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_json: bool = Field(True, description="JSON log lines (access log included).")
    warmup: bool = Field(True, description="Run one forward pass before reporting healthy.")

    @field_validator("model_dir")
    @classmethod
    def _model_dir_exists(cls, value: Path) -> Path:
        if not (value / "config.json").is_file():
            raise ValueError(f"model_dir {str(value)!r} is not a checkpoint directory (no config.json)")
        return value

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        """Surrounding whitespace (the newline a secret file ends with) never arrives in a header, so it
        is dropped. An empty key (an unset secret in a compose or Kubernetes file, say) could never match:
        every /classify would get 401 while /health says ready. Refused here instead of serving nobody."""
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("api_key is empty: set a key, or unset LONGDOC_API_KEY to serve without one")
        return SecretStr(key)

    @field_validator(
        "max_length", "stride", "aggregation", "threshold", "max_batch_tokens", "max_padding_ratio", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """`LONGDOC_MAX_BATCH_TOKENS=` (compose's `${VAR:-}`) means unset: the model's or device's default."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.drain_timeout_s < self.request_timeout_s:
            raise ValueError(
                f"drain_timeout_s ({self.drain_timeout_s}) must be >= request_timeout_s "
                f"({self.request_timeout_s}) so accepted requests can finish during a drain"
            )
        if self.max_length is not None and self.stride is not None and self.stride >= self.max_length:
            raise ValueError(f"stride ({self.stride}) must be smaller than max_length ({self.max_length})")
        return self


# What Kubernetes service links define for a Service named longdoc (the manifests turn them off), and the
# Python client's own variable: not settings.
_NOT_SETTINGS = re.compile(r"LONGDOC_(URL|SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_\w+)?)")


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """LONGDOC_* variables that name no setting, each with the setting it may have meant: pydantic-settings
    ignores them, so a misspelt LONGDOC_APIKEY would serve without a key and say nothing."""
    known = [f"LONGDOC_{name.upper()}" for name in Settings.model_fields]
    found = []
    for name in sorted(environ):  # pydantic-settings reads the names case-insensitively
        upper = name.upper()
        if upper.startswith("LONGDOC_") and upper not in known and not _NOT_SETTINGS.fullmatch(upper):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
            found.append(f"{name}" + (f" (did you mean {close[0]}?)" if close else ""))
    return found


@dataclass(frozen=True)
class ServingConfig:
    """Effective model-dependent values after applying the precedence order."""

    max_length: int
    stride: int
    aggregation: Aggregation
    threshold: float


class ConfigurationError(ValueError):
    """A setting or longdoc.json value that does not fit the model: a restart cannot fix it (exit status 2)."""


def resolve_serving(settings: Settings, metadata: dict[str, Any], max_positions: int) -> ServingConfig:
    """Environment > longdoc.json > built-in; the window must fit the model's position embeddings."""
    max_length = settings.max_length or _stored(metadata, "max_length", int, min(512, max_positions))
    if max_length > max_positions:
        raise ConfigurationError(f"max_length {max_length} exceeds the model's position limit {max_positions}")
    stride = settings.stride if settings.stride is not None else _stored(metadata, "stride", int, 0)
    aggregation = settings.aggregation or _stored(metadata, "aggregation", Aggregation, Aggregation.MEAN_LOGITS)
    threshold = settings.threshold if settings.threshold is not None else _stored(metadata, "threshold", float, 0.5)
    if not 0 < threshold < 1:  # only longdoc.json can get here: the setting itself is range-checked
        raise ConfigurationError(
            f"threshold in {MODEL_METADATA_FILE} must be between 0 and 1 (exclusive), got {threshold}"
        )
    return ServingConfig(max_length=max_length, stride=stride, aggregation=aggregation, threshold=threshold)


def _stored(metadata: dict[str, Any], key: str, kind: Callable[[Any], T], default: T) -> T:
    """A value from longdoc.json as `kind`; a wrong one names the file, the key and what it may be."""
    value = metadata.get(key, default)
    try:
        if isinstance(value, bool) or (kind is int and not isinstance(value, int)):
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        if kind is Aggregation:
            expected = "one of " + ", ".join(a.value for a in Aggregation)
        else:
            expected = "an integer" if kind is int else "a number"
        raise ConfigurationError(f"{key} in {MODEL_METADATA_FILE} must be {expected}; got {value!r}") from None
