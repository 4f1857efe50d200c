"""In-process HTTP stack: the real app factory and lifespan behind httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.main import create_app
from app.model import Engine
from app.settings import Settings

ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@asynccontextmanager
async def running_client(settings: Settings, engine: Engine | None = None) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(settings, engine=engine)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://longdoc.test", timeout=120) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
def client_factory(tiny_model_dir: Path) -> ClientFactory:
    """Build a running client; settings default to the tiny random BERT, overridable per test."""

    def factory(engine: Engine | None = None, **overrides: Any) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        options: dict[str, Any] = {"model_dir": tiny_model_dir, "num_threads": 2}
        options.update(overrides)
        return running_client(Settings(**options), engine)

    return factory
