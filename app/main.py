"""App factory: `create_app(settings=None, *, engine=None, load_in_background=False)`; the lifespan owns
model, batcher and drain.

`uvicorn --factory app.main:create_app` works; `longdoc serve` adds the SIGTERM drain (app.server).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import compat, demo
from app.api import classify_router, package_version, router
from app.batcher import Batcher
from app.errors import Draining, install_error_handlers
from app.metrics import Metrics
from app.middleware import InFlight, RequestContextMiddleware
from app.model import Engine, load_model
from app.segmenter import Segmenter, WindowError
from app.service import ClassifierService
from app.settings import (
    ConfigurationError,
    Settings,
    default_batch_tokens,
    default_padding_ratio,
    resolve_serving,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def configure_threads(num_threads: int) -> None:
    """Torch intra-op threads and the Rust tokenizer pool follow the setting, not the host's cores."""
    os.environ.setdefault("RAYON_NUM_THREADS", str(num_threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    torch.set_num_threads(num_threads)


def create_app(
    settings: Settings | None = None, *, engine: Engine | None = None, load_in_background: bool = False
) -> FastAPI:
    """Build the app; nothing heavy happens until the lifespan starts.

    The lifespan loads the model, starts the batcher and warms it up. By default the startup waits for all
    that (uvicorn opens the port afterwards, and a failed load fails the startup). With
    `load_in_background` (what `longdoc serve` does) the port opens at once: /health, /classify and /info
    answer 503 `not_ready` ("the model is still loading") and /health/live 200 until the model is ready,
    as a load balancer and an orchestrator expect; `app.state.startup` is the task a supervisor watches for
    a failed load.
    """
    settings = settings or Settings()
    metrics = Metrics()
    in_flight = InFlight()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_threads(settings.num_threads)
        started: list[Batcher] = []  # the batcher, once running: the shutdown stops it even mid-warm-up
        app.state.batchers = started
        startup = asyncio.create_task(_startup(app, settings, engine, metrics, started))
        app.state.startup = startup
        try:
            if not load_in_background:
                await startup  # a failure still runs the cleanup below, then fails the startup
            yield
        finally:
            startup.cancel()  # a load still running is abandoned (its thread finishes on its own)
            with contextlib.suppress(asyncio.CancelledError, Exception):  # _startup logged a failure
                await startup
            service = app.state.service
            for batcher in started:
                if service is None:  # stopped while warming up: nothing accepted waits, the warm-up need not
                    batcher.abort(Draining("the service stopped while warming up"))
                    await batcher.stop(0)
                else:
                    service.draining = True
                    # After `longdoc serve`'s drain no request waits any more: what is left is a pass
                    # nobody awaits (hung, say), not worth a second drain_timeout_s.
                    await batcher.stop(settings.drain_timeout_s if in_flight.count else 0)
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
        redirect_slashes=False,  # POST /classify/: a JSON 404 naming /classify, not an empty 307 httpx won't follow
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = None
    app.state.batchers = []  # those the lifespan started: `longdoc serve` checks their forward threads at exit
    app.state.startup = None
    app.state.in_flight = in_flight
    metrics.ready.set_function(lambda: float(app.state.service is not None and app.state.service.ready))
    metrics.tokenizing_chars.set_function(lambda: app.state.service.tokenizing_chars if app.state.service else 0)
    metrics.tokenizing_waiting.set_function(lambda: app.state.service.tokenizing_waiting if app.state.service else 0)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(classify_router)
    app.include_router(demo.router)  # before compat: HEAD / (an uptime check) is the page's, not POST /'s
    app.include_router(compat.router)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        in_flight=in_flight,
    )
    if settings.cors_origins:  # outermost (added last): the context middleware's own 413 and 500 carry CORS too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    return app


async def _startup(
    app: FastAPI, settings: Settings, engine: Engine | None, metrics: Metrics, started: list[Batcher]
) -> None:
    """_start under startup_timeout_s (a load from a stalled disk or a wedged warm-up pass must end in a
    restart, not an unready process forever); a failure is logged here, once, whoever notices it later."""
    try:
        async with asyncio.timeout(settings.startup_timeout_s):
            await _start(app, settings, engine, metrics, started)
    except TimeoutError:
        log.critical(
            "the model did not load and warm up within startup_timeout_s %g; start-up failed",
            settings.startup_timeout_s,
        )
        raise
    except ConfigurationError as exc:
        log.critical("a setting does not fit the model: %s", exc)
        raise
    except Exception as exc:
        log.critical("the model failed to load: %s", exc, exc_info=exc)
        raise


async def _start(
    app: FastAPI, settings: Settings, engine: Engine | None, metrics: Metrics, started: list[Batcher]
) -> None:
    """Load (or take) the engine, start the batcher, warm up; only then is the service on `app.state`."""
    loaded: Engine
    if engine is not None:
        loaded = engine
    else:
        log.info("loading the model from %s", settings.model_dir)
        loaded = await _in_daemon_thread(
            lambda: load_model(settings.model_dir, settings.device, settings.dtype, settings.quantize)
        )
    serving = resolve_serving(settings, loaded.metadata, loaded.max_positions)  # ConfigurationError
    try:
        segmenter = Segmenter(loaded.tokenizer, serving.max_length, serving.stride)
    except WindowError as exc:  # a window or stride the model cannot take: known only once it is loaded
        raise ConfigurationError(str(exc)) from exc
    batcher = Batcher(
        loaded.forward,
        max_batch_tokens=settings.max_batch_tokens or default_batch_tokens(loaded.device_name, loaded.quantization),
        max_padding_ratio=(
            settings.max_padding_ratio
            if settings.max_padding_ratio is not None
            else default_padding_ratio(loaded.device_name)
        ),
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue_chunks=settings.max_queue_chunks,
        metrics=metrics,
        across_requests=settings.batch_across_requests,
        aging_s=settings.scheduler_aging_s,
    )
    batcher.start()
    started.append(batcher)
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
    service.draining = app.state.in_flight.draining  # a SIGTERM during the load: published as draining
    # What start-up built (model, tokenizer, app: ~400k objects) lives as long as the process: out of the
    # collector's reach, a full collection no longer walks it (~0.3 s during which the event loop and the
    # forward thread both stop; 15-30 ms after the freeze, measured on the bundled model).
    gc.collect()
    gc.freeze()
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


async def _in_daemon_thread(work: Callable[[], T]) -> T:
    """Run `work` in a daemon thread: a stop during a long model load must not wait for the load, and
    asyncio.to_thread's executor is joined when the event loop closes."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the waiter was cancelled: nobody wants the result any more
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:  # handed to the awaiting task, which reports it
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the process is stopping
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="longdoc-load", daemon=True).start()
    return await future
