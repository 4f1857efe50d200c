"""Every longdoc_* Prometheus metric, on a registry owned by one app (no global state between apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
DOC_TOKEN_BUCKETS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536, 262144, 1048576, 4194304)
CHUNK_BUCKETS = (1, 2, 3, 4, 6, 8, 16, 32, 64, 128, 512, 2048, 8192)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)

# Label sets that exist at 0 from the start. A counter series born at its first event starts at 1, and
# rate()/increase() cannot see that first step: a replica's first 500 or 504 would be invisible to the
# error alerts and panels. (Other label values, e.g. a 404's, still appear on first use.)
CLASSIFY_ENDPOINTS = ("/classify", "/predict", "/")
CLASSIFY_STATUSES = ("200", "400", "401", "408", "413", "415", "422", "429", "500", "503", "504")
REJECTION_REASONS = (
    "unauthorized",
    "payload_too_large",
    "body_too_large",
    "body_timeout",
    "too_many_chunks",
    "queue_full",
    "tokenizer_busy",
    "no_room",
    "not_ready",
    "draining",
    "deadline_exceeded",
)


class Metrics:
    """The service's metrics; names and labels are part of the contract (DESIGN.md, dashboards, alerts)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("longdoc_requests_total", "HTTP requests answered.", ["endpoint", "status"], registry=r)
        self.request_duration = Histogram(
            "longdoc_request_duration_seconds", "Request latency.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.requests_in_flight = Gauge(
            "longdoc_requests_in_flight",
            "HTTP requests being handled (body upload to last byte of the answer), probes and scrapes included.",
            registry=r,
        )
        self.queue_depth = Gauge("longdoc_queue_depth", "Chunks waiting for a forward pass.", registry=r)
        self.batch_size = Histogram(
            "longdoc_batch_size", "Chunks per forward pass.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "longdoc_batch_tokens", "Padded tokens per forward pass.", buckets=TOKEN_BUCKETS, registry=r
        )
        self.batch_padding_ratio = Histogram(
            "longdoc_batch_padding_ratio",
            "Share of padding tokens in a forward pass.",
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "longdoc_queue_wait_seconds",
            "Time a chunk waited before its batch ran.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "longdoc_inference_duration_seconds", "Duration of one forward pass.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.document_chunks = Histogram(
            "longdoc_document_chunks", "Chunks per classified document.", buckets=CHUNK_BUCKETS, registry=r
        )
        self.document_tokens = Histogram(
            "longdoc_document_tokens", "Tokens per classified document.", buckets=DOC_TOKEN_BUCKETS, registry=r
        )
        self.rejected = Counter(
            "longdoc_rejected_total",
            "Requests refused (401, 408, 413, 429, 503) or past their deadline (504), by reason; "
            "health probes not counted.",
            ["reason"],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason=reason)
        for endpoint in CLASSIFY_ENDPOINTS:
            for status in CLASSIFY_STATUSES:
                self.requests.labels(endpoint=endpoint, status=status)
        self.tokenizing_chars = Gauge(
            "longdoc_tokenizing_chars",
            "Characters being tokenized now (at most max_tokenizing_chars, plus an eighth of it for small requests; "
            "held until the tokenizer thread ends).",
            registry=r,
        )
        self.tokenizing_waiting = Gauge(
            "longdoc_tokenizing_waiting",
            "Requests waiting for the tokenization character budget.",
            registry=r,
        )
        self.ready = Gauge(
            "longdoc_ready",
            "1 while the replica takes work: model loaded and warmed up, inference worker running, not draining.",
            registry=r,
        )
        self.model_info = Gauge(
            "longdoc_model_info",
            "The served model (value 1).",
            ["model", "revision", "device", "dtype", "quantization"],
            registry=r,
        )
