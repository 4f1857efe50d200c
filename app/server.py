"""`longdoc serve`: uvicorn with a drain on SIGTERM.

Stock uvicorn stops listening at the first SIGTERM, so a load balancer sees refused connections while
accepted requests are still running. Here the first SIGTERM (or SIGINT) only marks the service draining:
/health and new /classify calls answer 503 while the socket stays open, accepted requests finish, and
the server stops once nothing is in flight or drain_timeout_s has passed. A second signal stops at once:
what is still running gets 503, and the exit status is 128 + the signal (143 for SIGTERM), as for a kill.

The model loads in the background: the port opens at once, /health and /classify answer 503 `not_ready`
("the model is still loading") and /health/live 200 until it is ready. If the load fails or passes
startup_timeout_s, or the inference worker dies (a bug) or hangs (one forward pass past
request_timeout_s), the process exits with status 1: no request can be served any more, and a supervisor
that restarts exited processes (Docker's `restart:`, systemd, the kubelet) heals it. A setting that turns
out not to fit the model once it is loaded (a stride or window too long for it) exits with status 2, as a
bad setting does before the load: a restart cannot fix that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.errors import Draining
from app.logs import configure_logging
from app.main import create_app
from app.settings import ConfigurationError, Settings, unknown_settings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float, worker_check_s: float = 1.0
    ) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout_s = drain_timeout_s
        self._worker_check_s = worker_check_s
        self._drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failed = False  # the model failed to load, or the worker died or hung: exit status 1
        self.stopped_by: int | None = None  # the second signal, which cut the drain short: exit 128 + it

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        watchdog = self._loop.create_task(self._watch_worker())
        try:
            await super().serve(sockets)
        finally:
            watchdog.cancel()

    async def _watch_worker(self) -> None:
        """Stop the server when the model failed to load, or the worker died or hung (nothing could be
        served again), during a drain too: a pass that hangs then would otherwise hold the drain and the
        exit forever."""
        while not self.should_exit:
            await asyncio.sleep(self._worker_check_s)
            if self.should_exit:  # the shutdown began meanwhile: a stopped batcher is no dead worker
                return
            if _startup_failed(self._app):  # logged by the start-up itself
                if failure_status(self._app) == 2:
                    log.critical("exiting with status 2: fix the setting, a restart cannot")
                else:
                    log.critical("exiting with status 1 so the process is restarted")
                self.failed = True
                self.should_exit = True
                return
            service = self._app.state.service
            problem = None if service is None else service.worker_problem()
            if problem is not None:
                log.critical("%s; exiting with status 1 so the process is restarted", problem)
                self.failed = True
                service.draining = True  # refuse new work; what is queued or running gets its 503 now
                service.batcher.abort(Draining(f"{problem}; the service restarts, retry"))
                self.should_exit = self.force_exit = True  # a hung pass would hold a graceful shutdown forever

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.stopped_by is not None:  # a third: whatever is left is not waited for
            self.force_exit = True
            return
        if self._drain_task is not None:  # a second signal during the drain: stop now
            log.warning("second signal during the drain: stopping now; requests still running get 503")
            service = self._app.state.service
            if service is not None:  # every accepted request is answered (503) at once, none cancelled
                service.batcher.abort(Draining("the service was stopped before this request finished; retry"))
            self.stopped_by = sig
            # Not force_exit: that skips the lifespan's shutdown, and asyncio then cancels it mid-receive
            # (an ERROR traceback on every forced stop). The answers above leave uvicorn little to wait for.
            self.should_exit = True
            return
        if self._loop is None or sig not in (signal.SIGTERM, signal.SIGINT):
            self.force_exit = self.should_exit
            self.should_exit = True
            return
        service = self._app.state.service
        if service is not None:
            service.draining = True
        self._app.state.in_flight.draining = True
        log.info("signal %s: draining (up to %.0f s)", signal.Signals(sig).name, self._drain_timeout_s)
        self._drain_task = self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        in_flight = self._app.state.in_flight
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._drain_timeout_s):
                await in_flight.idle.wait()
        log.info("drain finished with %d request(s) in flight; stopping", in_flight.count)
        self.should_exit = True


GRACE_AFTER_DRAIN_S = 5


def serve(host: str | None = None, port: int | None = None, model_dir: Path | None = None) -> int:
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if model_dir is not None:
        overrides["model_dir"] = model_dir
    settings = Settings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings.log_level, settings.log_json)
    for unknown in unknown_settings(os.environ):
        log.warning("%s is not a longdoc setting and is ignored", unknown)
    app = create_app(settings, load_in_background=True)  # the port opens at once; 503 until loaded
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        access_log=False,
        log_config=None,
        timeout_keep_alive=75,
        # uvicorn's own wait comes after the drain (which already waited up to drain_timeout_s for every
        # accepted request): what is left then is uncounted (an upload begun during the drain) or past its
        # deadline, and a long wait would only push the exit past Kubernetes' grace period (a SIGKILL).
        timeout_graceful_shutdown=GRACE_AFTER_DRAIN_S,
    )
    server = DrainingServer(config, app, settings.drain_timeout_s)
    server.run()
    server.failed = server.failed or _startup_failed(app)  # it may have failed just before a stop signal
    status = 0 if server.stopped_by is None else 128 + server.stopped_by  # as a shell reports a kill
    stopped_loading = app.state.startup is not None and app.state.startup.cancelled()  # a warm-up pass may run
    running_s = None if server.failed or stopped_loading else _engine_running_s(app, GRACE_AFTER_DRAIN_S)
    if running_s is not None:
        if running_s > settings.request_timeout_s:
            log.critical("a forward pass has run %.0f s, over request_timeout_s: the engine is hung", running_s)
            server.failed = True
        else:
            log.warning(
                "a forward pass nobody waits for (%.1f s so far) is still running: exiting without it", running_s
            )
    if server.failed or stopped_loading or running_s is not None:
        # The interpreter joins worker threads at exit: a hung forward pass would hold it forever, and a
        # model load abandoned by a stop for as long as the load takes.
        logging.shutdown()
        os._exit(failure_status(app) if server.failed else status)
    return status


def _engine_running_s(app: FastAPI, grace_s: float) -> float | None:
    """How long a forward pass still inside the engine `grace_s` after the stop has run (None: none is).
    A pass nobody awaits any more (its requests had their 504s) cannot be stopped, and the interpreter
    joins its thread at exit: a hung one would hold the process forever, past every supervisor's patience
    but its SIGKILL."""
    deadline = time.monotonic() + grace_s
    while True:
        running = [batcher.engine_running_s() for batcher in app.state.batchers]
        longest = max((s for s in running if s is not None), default=None)
        if longest is None or time.monotonic() > deadline:
            return longest
        time.sleep(0.05)


def failure_status(app: FastAPI) -> int:
    """2 when the start-up failed on a setting that does not fit the model, else 1 (restart me)."""
    startup = app.state.startup
    failed_on_settings = _startup_failed(app) and isinstance(startup.exception(), ConfigurationError)
    return 2 if failed_on_settings else 1


def _startup_failed(app: FastAPI) -> bool:
    startup = app.state.startup
    return bool(startup is not None and startup.done() and not startup.cancelled() and startup.exception())
