"""The dynamic batcher: chunks of all concurrent requests packed into token-budget forward passes.

Concurrency invariants (one event loop, one background task, one forward thread):
- Every chunk has exactly one future. A caller creates its futures through `submit`, awaits them, and
  calls `withdraw` when it stops waiting (deadline, disconnect, error): its queued chunks leave the queue
  at once, so abandoned work never reaches the engine.
- Only the background task takes chunks off the queue and runs the engine; one try/except around each
  batch settles every future of that batch, whatever happens, so no request can hang. If the task
  itself dies, every queued future is failed and `running` turns False (the health check reports it).
- Requests are served shortest-remaining-first with aging (`scheduling_priority`): a short document
  arriving behind long ones rides in the next batch instead of waiting for every queued long document,
  and mean latency is lower than with first-come-first-served or round-robin sharing. The price: a long
  document yields to shorter ones, bounded by aging (its size halves for every aging_s it has waited, so
  an L-chunk request overtakes fresh one-chunk requests after aging_s * log2(L) seconds). Passes
  alternate between that order and the fewest chunks left without aging (`_take`): an aged long document
  then leads every other pass, and short documents arriving meanwhile do not wait for all of its chunks.
- With `across_requests=False` a batch holds chunks of one request only (the benchmark's baseline).
- `pending` (queued + running chunks) is the admission measure: submit refuses beyond
  `max_queue_chunks` instead of letting the queue grow without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import count

import torch

from app.errors import Draining, InferenceFailed, LongdocError, Overloaded, PayloadTooLarge
from app.metrics import Metrics

log = logging.getLogger(__name__)

ForwardFn = Callable[[Sequence[Sequence[int]]], torch.Tensor]
RATE_DECAY = 0.95  # per pass: the chunk rate behind Retry-After remembers about the last twenty passes


@dataclass(eq=False, slots=True)
class _Item:
    ids: list[int]
    future: asyncio.Future[torch.Tensor]
    enqueued: float


@dataclass(slots=True)
class _Pass:
    """The batch being formed: its chunks, the widest of them (all are padded to it) and its real tokens."""

    items: list[_Item] = field(default_factory=list)
    widest: int = 0
    real_tokens: int = 0

    def add(self, item: _Item) -> None:
        self.items.append(item)
        self.widest = max(self.widest, len(item.ids))
        self.real_tokens += len(item.ids)


@dataclass(eq=False)
class Ticket:
    """One request's chunks in the batcher; `results()` waits for all of their logits in order."""

    key: int
    items: list[_Item] = field(default_factory=list)

    async def results(self) -> list[torch.Tensor]:
        return list(await asyncio.gather(*(item.future for item in self.items)))


def is_out_of_memory(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def scheduling_priority(queue: deque[_Item], now: float, aging_s: float) -> float:
    """Smaller runs sooner: remaining chunks, halved for every aging_s seconds the request has waited.

    Shortest-remaining-first minimises mean latency and lets a short document overtake queued long ones.
    The aging must shrink a long request faster than a steady stream of fresh one-chunk requests can
    outrank it: halving per aging_s means an L-chunk request comes first after aging_s * log2(L) seconds
    (35 s for 128 chunks at 5 s), where a hyperbolic decay (remaining / (1 + waited / aging_s)) took
    aging_s * (L - 1) seconds and let a 200-chunk document time out behind short ones.
    """
    waited = max(0.0, now - queue[0].enqueued) if queue else 0.0
    return len(queue) * math.exp2(-waited / aging_s)


class Batcher:
    """Owns the queue and the single background task that forms batches and runs the engine."""

    def __init__(
        self,
        forward: ForwardFn,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_padding_ratio: float = 1.0,
        max_wait_ms: float,
        max_queue_chunks: int,
        metrics: Metrics | None = None,
        across_requests: bool = True,
        aging_s: float = 5.0,
    ) -> None:
        self._forward = forward
        self.across_requests = across_requests
        self.aging_s = aging_s
        self.max_batch_tokens = max_batch_tokens
        self.max_padding_ratio = max_padding_ratio
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue_chunks = max_queue_chunks
        self._metrics = metrics
        self._queues: OrderedDict[int, deque[_Item]] = OrderedDict()
        self._keys = count()
        self._queued = 0
        self._running = 0
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._aged_turn = False  # passes alternate: with aging, then fewest chunks left (`_take`)
        self._chunks_per_s = 0.0  # recent throughput, for Retry-After
        self._recent_chunks = self._recent_seconds = 0.0
        self._pass_started: float | None = None
        self._in_pass: list[_Item] = []
        # When the forward thread entered the engine (None: it is not in it), even after a stop gave up on
        # its pass: a thread cannot be stopped, and the interpreter would wait for it at exit.
        self._engine_since: float | None = None

    # ----- state -------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Chunks queued or running: what admission control counts."""
        return self._queued + self._running

    @property
    def running(self) -> bool:
        """True while the background task is alive (False before start, after stop or a crash)."""
        return self._task is not None and not self._task.done()

    def pass_running_s(self) -> float:
        """How long the forward pass in progress has run (0 when none): a hung engine never settles it."""
        started = self._pass_started
        return 0.0 if started is None else time.perf_counter() - started

    def engine_running_s(self) -> float | None:
        """How long the forward thread has been inside the engine, None when it is not (read by the exit)."""
        since = self._engine_since
        return None if since is None else time.perf_counter() - since

    @property
    def closed(self) -> bool:
        """Stopped or aborted: submit refuses new work."""
        return self._closed

    def retry_after_s(self) -> int:
        """Whole seconds until the queue should have room, from the measured chunk rate."""
        if self._chunks_per_s <= 0:
            return 1
        return max(1, math.ceil(self.pending / self._chunks_per_s))

    # ----- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self.running:
            return
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="longdoc-forward")
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="longdoc-batcher")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, let queued and running chunks finish (up to timeout_s), fail what is left."""
        self._closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wait_idle()
        if self._task is not None:
            self._task.cancel()
            # A task that crashed has logged it and failed every caller (_serve): the shutdown goes on.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._fail_queued(Draining("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def abort(self, error: BaseException) -> None:
        """Fail every queued and running chunk now (a forced stop): their callers answer with `error`
        instead of being cancelled mid-request. A pass still in the forward thread finds its futures
        settled and leaves them alone."""
        self._closed = True
        self._fail_queued(error)
        self._settle_error(self._in_pass, error)

    async def _wait_idle(self) -> None:
        while self.pending:
            self._idle.clear()
            await self._idle.wait()

    # ----- callers -----------------------------------------------------------------------------------
    def submit(self, chunks: Sequence[list[int]]) -> Ticket:
        """Queue one request's chunks; raises at once instead of queueing what cannot be served."""
        if self._closed:
            raise Draining("the service is draining and accepts no new work")
        if not self.running:
            raise InferenceFailed("the batcher is not running")
        if len(chunks) > self.max_queue_chunks:
            raise PayloadTooLarge(
                f"the request needs {len(chunks)} chunks but max_queue_chunks is {self.max_queue_chunks}; "
                "split the input or raise LONGDOC_MAX_QUEUE_CHUNKS",
                reason="too_many_chunks",
            )
        if self.pending + len(chunks) > self.max_queue_chunks:
            raise Overloaded(
                f"queue full: {self.pending} chunks pending + {len(chunks)} requested > max_queue_chunks "
                f"{self.max_queue_chunks}",
                self.retry_after_s(),
                reason="no_room",
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        ticket = Ticket(key=next(self._keys))
        ticket.items = [_Item(list(ids), loop.create_future(), now) for ids in chunks]
        if ticket.items:
            # Longest first: chunks of similar length sit together (a document's full windows, then its short
            # last one; a request's many texts by size), so the padding cap seldom ends a request's run in
            # a pass early. The order does not matter otherwise: each chunk has its own future.
            self._queues[ticket.key] = deque(sorted(ticket.items, key=lambda item: -len(item.ids)))
            self._queued += len(ticket.items)
            self._idle.clear()
            self._publish_depth()
            self._arrived.set()
        return ticket

    def withdraw(self, ticket: Ticket) -> None:
        """The caller stopped waiting: drop its queued chunks and cancel every future it still holds."""
        queue = self._queues.pop(ticket.key, None)
        if queue is not None:
            self._queued -= len(queue)
            self._publish_depth()
            self._maybe_idle()
        for item in ticket.items:
            if not item.future.done():
                item.future.cancel()

    # ----- background task ---------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                if batch:
                    await self._run(batch)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log.exception("batcher task died")
            self._fail_queued(InferenceFailed(f"batcher stopped: {type(exc).__name__}: {exc}"))
            raise

    async def _next_batch(self) -> list[_Item]:
        while not self._queued:
            self._arrived.clear()
            await self._arrived.wait()
        # Wait for a fuller batch, but never past max_wait after the oldest queued chunk arrived.
        while not self._batch_would_fill():
            remaining = self._oldest_enqueued() + self.max_wait_s - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                break
        return self._take()

    def _oldest_enqueued(self) -> float:
        return min((q[0].enqueued for q in self._queues.values() if q), default=time.perf_counter())

    def _batch_would_fill(self) -> bool:
        if self._queued >= self.max_batch_size:
            return True
        tokens = sum(len(item.ids) for q in self._queues.values() for item in q)
        return tokens >= self.max_batch_tokens

    def _take(self) -> list[_Item]:
        """Fill one batch: requests in scheduling order, each contributing chunks until the budget is full.

        Passes alternate between two orders: the fewest chunks left first, aging ignored, then
        `scheduling_priority` (with aging). Without aging both orders agree: plain shortest-remaining-first.
        Once aging has put a long request first, every other pass starts with it (its first chunk always
        goes, so it cannot starve), and short requests that keep arriving ride in the passes between
        instead of waiting for all of its chunks. (Sharing each pass half and half instead starved it: the
        short chunks came first, and its wider window then broke the padding cap or the token budget.)
        With batching off: arrival order and one request per batch (the naive-server baseline).

        A chunk that would pad the pass past `max_padding_ratio` (every chunk is padded to the widest)
        stays queued, and so do the rest of its request's chunks for a later pass (queued longest first,
        so chunks of similar length are adjacent); later requests may still fill this one. The first
        chunk always goes, so the request that comes first in the order is never held back.
        """
        batch = _Pass()
        if self.across_requests:
            self._aged_turn = not self._aged_turn
            if self._aged_turn:
                now = time.perf_counter()
                order = sorted(self._queues, key=lambda k: scheduling_priority(self._queues[k], now, self.aging_s))
            else:
                order = sorted(self._queues, key=lambda k: len(self._queues[k]))
            for key in order:
                if self._fill(batch, key):
                    break
        else:
            for key in list(self._queues):
                self._fill(batch, key)
                if batch.items:
                    break
        self._running = len(batch.items)
        self._publish_depth()
        return batch.items

    def _fill(self, batch: _Pass, key: int) -> bool:
        """Move the request's chunks into the pass while they fit; True when the pass is full."""
        queue = self._queues[key]
        full = False
        while queue:
            item = queue[0]
            if item.future.done():  # cancelled by its caller before it ran
                queue.popleft()
                self._queued -= 1
                continue
            if batch.items:
                width = max(batch.widest, len(item.ids))
                if len(batch.items) >= self.max_batch_size or width * (len(batch.items) + 1) > self.max_batch_tokens:
                    full = True
                    break
                if 1 - (batch.real_tokens + len(item.ids)) / (width * (len(batch.items) + 1)) > self.max_padding_ratio:
                    break
            queue.popleft()
            self._queued -= 1
            batch.add(item)
        if not queue:
            del self._queues[key]
        return full

    async def _run(self, batch: list[_Item]) -> None:
        """Run one batch; every future in it is settled on every path out of this method."""
        started = self._pass_started = time.perf_counter()
        self._in_pass = batch
        batch.sort(key=lambda item: len(item.ids))
        ids = [item.ids for item in batch]
        try:
            loop = asyncio.get_running_loop()
            logits = await loop.run_in_executor(self._executor, self._forward_guarded, ids)
            if logits.shape[0] != len(batch):
                raise RuntimeError(f"engine returned {logits.shape[0]} rows for {len(batch)} chunks")
        except asyncio.CancelledError:
            self._settle_error(batch, Draining("the service stopped before this batch finished"))
            raise
        except Exception as exc:
            log.warning("forward pass of %d chunks failed: %s: %s", len(batch), type(exc).__name__, exc)
            error = (
                exc
                if isinstance(exc, LongdocError)
                else InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}")
            )
            self._settle_error(batch, error)
        else:
            finite = torch.isfinite(logits).all(dim=-1).tolist()
            for row, item in enumerate(batch):
                if item.future.done():
                    continue
                if finite[row]:
                    item.future.set_result(logits[row])
                else:  # a float16 overflow, say: a 500 that says so, never a 200 with a null score
                    item.future.set_exception(
                        InferenceFailed(
                            "the model returned a non-finite logit (NaN or infinity) for a chunk: with "
                            "LONGDOC_DTYPE=float16 an overflow (try bfloat16 or float32), else weights that hold "
                            "NaN (check the model with longdoc eval)"
                        )
                    )
        finally:
            self._pass_started = None
            self._in_pass = []
            elapsed = time.perf_counter() - started
            self._running = 0
            self._record(batch, started, elapsed)
            self._maybe_idle()

    def _forward_guarded(self, ids: list[list[int]]) -> torch.Tensor:
        """Runs in the forward thread. On out-of-memory, split the batch once and run the halves."""
        self._engine_since = time.perf_counter()  # a float store: atomic under the GIL
        try:
            return self._forward(ids)
        except Exception as exc:
            if not is_out_of_memory(exc) or len(ids) < 2:
                raise
            log.warning("out of memory on %d chunks; retrying as two halves", len(ids))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(ids) // 2
            return torch.cat([self._forward(ids[:half]), self._forward(ids[half:])])
        finally:
            self._engine_since = None

    # ----- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _settle_error(batch: list[_Item], error: BaseException) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    def _fail_queued(self, error: BaseException) -> None:
        for queue in self._queues.values():
            for item in queue:
                if not item.future.done():
                    item.future.set_exception(error)
        self._queues.clear()
        self._queued = 0
        self._publish_depth()
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self.pending:
            self._idle.set()

    def _publish_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(self._queued)

    def _record(self, batch: list[_Item], started: float, elapsed: float) -> None:
        if batch and elapsed > 0:
            # Chunks and seconds averaged apart, then divided: a pass counts by its duration, so the few
            # small passes at a queue's tail (slow per chunk) no longer swing the estimate threefold.
            self._recent_chunks = RATE_DECAY * self._recent_chunks + len(batch)
            self._recent_seconds = RATE_DECAY * self._recent_seconds + elapsed
            self._chunks_per_s = self._recent_chunks / self._recent_seconds
        if self._metrics is None or not batch:
            return
        widest = max(len(item.ids) for item in batch)
        padded = widest * len(batch)
        real = sum(len(item.ids) for item in batch)
        self._metrics.batch_size.observe(len(batch))
        self._metrics.batch_tokens.observe(padded)
        self._metrics.batch_padding_ratio.observe(1 - real / padded)
        self._metrics.inference_duration.observe(elapsed)
        for item in batch:
            self._metrics.queue_wait.observe(started - item.enqueued)
