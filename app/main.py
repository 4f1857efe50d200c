"""App factory: `create_app(settings=None, *, engine=None)`; the lifespan owns model, batcher and drain.

`uvicorn --factory app.main:create_app` works; `longdoc serve` adds the SIGTERM drain (app.server).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import compat, demo
from app.api import classify_router, package_version, router
from app.batcher import Batcher
from app.errors import install_error_handlers
from app.metrics import Metrics
from app.middleware import InFlight, RequestContextMiddleware
from app.model import Engine, load_model
from app.segmenter import Segmenter
from app.service import ClassifierService
from app.settings import Settings, default_batch_tokens, resolve_serving

log = logging.getLogger(__name__)


def configure_threads(num_threads: int) -> None:
    """Torch intra-op threads and the Rust tokenizer pool follow the setting, not the host's cores."""
    os.environ.setdefault("RAYON_NUM_THREADS", str(num_threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    torch.set_num_threads(num_threads)


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """Build the app; nothing heavy happens until the lifespan starts."""
    settings = settings or Settings()
    metrics = Metrics()
    in_flight = InFlight()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_threads(settings.num_threads)
        loaded: Engine
        if engine is not None:
            loaded = engine
        else:
            loaded = await asyncio.to_thread(
                load_model, settings.model_dir, settings.device, settings.dtype, settings.quantize
            )
        serving = resolve_serving(settings, loaded.metadata, loaded.max_positions)
        segmenter = Segmenter(loaded.tokenizer, serving.max_length, serving.stride)
        batcher = Batcher(
            loaded.forward,
            max_batch_tokens=settings.max_batch_tokens or default_batch_tokens(loaded.device_name),
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_chunks=settings.max_queue_chunks,
            metrics=metrics,
            across_requests=settings.batch_across_requests,
            aging_s=settings.scheduler_aging_s,
        )
        batcher.start()
        service = ClassifierService(loaded, segmenter, batcher, serving, settings, metrics)
        metrics.model_info.labels(
            model=loaded.name,
            revision=loaded.revision,
            device=loaded.device_name,
            dtype=loaded.dtype_name,
            quantization=loaded.quantization,
        ).set(1)
        if settings.warmup:
            await service.warm_up()
        else:
            service.warmed_up = True
        app.state.service = service
        log.info(
            "serving %s (revision %s) on %s/%s: max_length=%d stride=%d aggregation=%s",
            loaded.name,
            loaded.revision,
            loaded.device_name,
            loaded.dtype_name,
            serving.max_length,
            serving.stride,
            serving.aggregation,
        )
        try:
            yield
        finally:
            service.draining = True
            await batcher.stop(settings.drain_timeout_s)
            app.state.service = None

    docs = settings.docs_enabled
    app = FastAPI(
        title="longdoc",
        version=package_version(),
        lifespan=lifespan,
        description="Classify documents of any length: overlapping windows, dynamic batching, aggregation.",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        strict_content_type=False,  # a body without Content-Type is read as JSON; require_json refuses other types
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    app.state.in_flight = in_flight
    metrics.ready.set_function(lambda: float(app.state.service is not None and app.state.service.ready))
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(classify_router)
    app.include_router(compat.router)
    app.include_router(demo.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes, in_flight=in_flight
    )
    return app
