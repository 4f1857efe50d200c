"""The dynamic batcher with a deterministic fake forward function."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence

import pytest
import torch

from app.batcher import Batcher
from app.errors import Draining, InferenceFailed, Overloaded, PayloadTooLarge
from app.metrics import Metrics


class Recorder:
    """Forward function: logits [sum(ids), len(ids)]; records calls; can block, fail or run out of memory."""

    def __init__(self, fail_calls: Sequence[int] = (), oom_above: int | None = None, delay_s: float = 0.0) -> None:
        self.calls: list[list[list[int]]] = []
        self.fail_calls = set(fail_calls)
        self.oom_above = oom_above
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        index = len(self.calls)
        self.calls.append([list(c) for c in chunks])
        self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        if index in self.fail_calls:
            raise RuntimeError(f"boom in call {index}")
        if self.oom_above is not None and len(chunks) > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.tensor([[float(sum(c)), float(len(c))] for c in chunks])

    @property
    def seen(self) -> list[list[int]]:
        return [c for call in self.calls for c in call]


def make(forward: Recorder, **overrides: float | bool) -> Batcher:
    options: dict[str, float | bool] = dict(
        max_batch_tokens=1000, max_batch_size=16, max_wait_ms=20, max_queue_chunks=100
    )
    options.update(overrides)
    return Batcher(forward, metrics=Metrics(), **options)  # type: ignore[arg-type]


async def test_concurrent_requests_share_forward_calls() -> None:
    forward = Recorder()
    batcher = make(forward)
    batcher.start()
    tickets = [batcher.submit([[i, 1], [i, 2]]) for i in range(6)]
    results = await asyncio.gather(*(t.results() for t in tickets))
    assert len(forward.calls) == 1  # 12 chunks from 6 requests in one forward pass
    for i, rows in enumerate(results):
        assert [r.tolist() for r in rows] == [[i + 1, 2], [i + 2, 2]]
    await batcher.stop()


async def test_token_budget_and_size_bound_every_batch() -> None:
    forward = Recorder()
    gate_closed = forward.gate
    gate_closed.clear()  # hold the first batch so the rest queue up
    batcher = make(forward, max_batch_tokens=40, max_batch_size=3, max_wait_ms=0)
    batcher.start()
    first = batcher.submit([[1] * 10])
    await asyncio.sleep(0.05)
    rest = [batcher.submit([[2] * 10, [3] * 12]) for _ in range(4)]
    gate_closed.set()
    await asyncio.gather(first.results(), *(t.results() for t in rest))
    for call in forward.calls:
        assert len(call) <= 3
        assert max(len(c) for c in call) * len(call) <= 40
    assert sum(len(call) for call in forward.calls) == 9
    await batcher.stop()


async def test_padding_cap_leaves_a_short_window_for_a_pass_of_its_length() -> None:
    forward = Recorder()
    forward.gate.clear()  # hold the first batch so the rest queue up
    batcher = make(forward, max_wait_ms=0, max_padding_ratio=0.1)
    batcher.start()
    blocker = batcher.submit([[9]])
    await asyncio.sleep(0.05)
    long_doc = batcher.submit([[1] * 10, [1] * 10, [1] * 3])  # a document's short last window
    one_full = batcher.submit([[2] * 10])
    one_short = batcher.submit([[3] * 3])
    forward.gate.set()
    results = await asyncio.gather(*(t.results() for t in (blocker, long_doc, one_full, one_short)))
    # Shortest-remaining-first takes one_full, skips one_short (3 tokens padded to 10: 35%), takes the
    # long document's full windows and stops at its short one, which keeps its order behind them.
    assert [sorted(map(len, call)) for call in forward.calls] == [[1], [10, 10, 10], [3, 3]]
    assert [[r.tolist() for r in rows] for rows in results[1:]] == [
        [[10, 10], [10, 10], [3, 3]],
        [[20, 10]],
        [[9, 3]],
    ]
    await batcher.stop()


async def test_a_request_of_mixed_lengths_is_grouped_by_length_under_the_cap() -> None:
    """Many texts in one request, lengths alternating: two passes of like windows, not one per length change;
    the results still come back in the request's order."""
    forward = Recorder()
    forward.gate.clear()
    batcher = make(forward, max_wait_ms=0, max_padding_ratio=0.1)
    batcher.start()
    blocker = batcher.submit([[9]])
    await asyncio.sleep(0.05)
    mixed = batcher.submit([[i] * (10 if i % 2 else 3) for i in range(1, 9)])
    forward.gate.set()
    await blocker.results()
    rows = await mixed.results()
    assert [sorted(map(len, call)) for call in forward.calls] == [[1], [10, 10, 10, 10], [3, 3, 3, 3]]
    assert [r.tolist() for r in rows] == [[i * (10 if i % 2 else 3), 10 if i % 2 else 3] for i in range(1, 9)]
    await batcher.stop()


async def test_without_a_padding_cap_every_window_shares_the_pass() -> None:
    forward = Recorder()
    forward.gate.clear()
    batcher = make(forward, max_wait_ms=0)
    batcher.start()
    blocker = batcher.submit([[9]])
    await asyncio.sleep(0.05)
    rest = [batcher.submit([[1] * 10, [1] * 10, [1] * 3]), batcher.submit([[2] * 10]), batcher.submit([[3] * 3])]
    forward.gate.set()
    await asyncio.gather(blocker.results(), *(t.results() for t in rest))
    assert [sorted(map(len, call)) for call in forward.calls] == [[1], [3, 3, 10, 10, 10]]
    await batcher.stop()


async def test_one_failing_batch_fails_only_its_requests_and_the_next_succeeds() -> None:
    forward = Recorder(fail_calls=[0])
    batcher = make(forward, max_wait_ms=0)
    batcher.start()
    failing = batcher.submit([[1, 2]])
    with pytest.raises(InferenceFailed, match="RuntimeError: boom in call 0"):
        await failing.results()
    later = batcher.submit([[5, 5]])
    assert [r.tolist() for r in await later.results()] == [[10, 2]]
    assert batcher.running
    await batcher.stop()


async def test_withdrawn_request_never_reaches_the_engine() -> None:
    forward = Recorder()
    forward.gate.clear()
    batcher = make(forward, max_wait_ms=0)
    batcher.start()
    blocker = batcher.submit([[1]])
    await asyncio.sleep(0.05)  # the blocker's batch is now running and holds the engine
    abandoned = batcher.submit([[424242]] * 5)
    kept = batcher.submit([[7]])
    assert batcher.pending == 7
    batcher.withdraw(abandoned)  # a deadline or a disconnect
    assert batcher.pending == 2
    forward.gate.set()
    await blocker.results()
    await kept.results()
    assert all(424242 not in chunk for chunk in forward.seen)
    assert all(item.future.cancelled() for item in abandoned.items)
    await batcher.stop()


async def test_timed_out_wait_then_withdraw_drops_the_chunks() -> None:
    forward = Recorder()
    forward.gate.clear()
    batcher = make(forward, max_wait_ms=0)
    batcher.start()
    blocker = batcher.submit([[1]])
    await asyncio.sleep(0.05)
    slow = batcher.submit([[99999]] * 3)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slow.results(), 0.05)
    batcher.withdraw(slow)
    forward.gate.set()
    await blocker.results()
    await asyncio.sleep(0.05)
    assert all(99999 not in chunk for chunk in forward.seen)
    await batcher.stop()


async def test_queue_full_is_rejected_at_once_with_retry_after() -> None:
    forward = Recorder()
    forward.gate.clear()
    batcher = make(forward, max_queue_chunks=10, max_wait_ms=0)
    batcher.start()
    first = batcher.submit([[1]] * 8)
    started = time.perf_counter()
    with pytest.raises(Overloaded) as refused:
        batcher.submit([[2]] * 3)
    assert time.perf_counter() - started < 1.0
    assert int(refused.value.headers["Retry-After"]) >= 1
    with pytest.raises(PayloadTooLarge, match="needs 11 chunks but max_queue_chunks is 10"):
        batcher.submit([[2]] * 11)
    forward.gate.set()
    await first.results()
    assert len(await batcher.submit([[3]] * 3).results()) == 3  # room again once the queue drained
    await batcher.stop()


async def test_stop_settles_everything() -> None:
    forward = Recorder(delay_s=0.05)
    batcher = make(forward, max_batch_size=1, max_wait_ms=0)
    batcher.start()
    tickets = [batcher.submit([[i]]) for i in range(20)]
    await batcher.stop(timeout_s=0.1)  # not enough time for all 20 single-chunk batches
    outcomes = await asyncio.gather(*(t.results() for t in tickets), return_exceptions=True)
    assert all(isinstance(o, list | Draining) for o in outcomes)
    assert any(isinstance(o, Draining) for o in outcomes)
    assert any(isinstance(o, list) for o in outcomes)
    with pytest.raises(Draining):
        batcher.submit([[1]])
    assert not batcher.running


async def test_out_of_memory_splits_the_batch_once() -> None:
    forward = Recorder(oom_above=4)
    batcher = make(forward)
    batcher.start()
    tickets = [batcher.submit([[i]]) for i in range(8)]
    results = await asyncio.gather(*(t.results() for t in tickets))
    assert [r[0].tolist() for r in results] == [[i, 1] for i in range(8)]
    assert [len(c) for c in forward.calls] == [8, 4, 4]
    await batcher.stop()


async def test_short_request_is_not_stuck_behind_long_ones() -> None:
    """Rounds across requests: a 1-chunk request arriving behind 4 x 40-chunk requests runs in the next batch."""
    forward = Recorder()
    forward.gate.clear()
    batcher = make(forward, max_batch_size=8, max_batch_tokens=10_000, max_wait_ms=0, max_queue_chunks=1000)
    batcher.start()
    blocker = batcher.submit([[0]])
    await asyncio.sleep(0.05)
    longs = [batcher.submit([[1000 + i]] * 40) for i in range(4)]
    short = batcher.submit([[7]])
    forward.gate.set()
    await asyncio.gather(short.results(), *(t.results() for t in longs), blocker.results())
    short_call = next(i for i, call in enumerate(forward.calls) if [7] in call)
    assert short_call == 1  # right after the blocker's batch: the first round-robin batch
    assert len(forward.calls) > 10  # while the long requests needed many more
    await batcher.stop()


async def test_short_requests_and_an_aged_long_one_take_turns() -> None:
    """Once aging puts a long request first, short ones arriving meanwhile ride in the next pass instead of
    waiting for all of its chunks, and it still leads every other pass."""
    forward = Recorder()
    forward.gate.clear()
    batcher = make(forward, max_batch_size=4, max_wait_ms=0, max_queue_chunks=1000, aging_s=0.01)
    batcher.start()
    blocker = batcher.submit([[0]])  # pass 1, in the aged order
    await asyncio.sleep(0.05)
    long = batcher.submit([[1000 + i] for i in range(20)])
    await asyncio.sleep(0.2)  # twenty agings: the long request now outranks any fresh one
    shorts = [batcher.submit([[7 + i]]) for i in range(3)]
    forward.gate.set()
    await asyncio.gather(blocker.results(), long.results(), *(t.results() for t in shorts))
    assert forward.calls[1] == [[7], [8], [9], [1000]]  # fewest chunks left first; the long one fills the rest
    long_per_call = [sum(c[0] >= 1000 for c in call) for call in forward.calls[2:]]
    assert long_per_call == [4] * 4 + [3]  # then it has every pass to itself
    await batcher.stop()


async def test_an_aged_wide_request_is_not_starved_by_narrow_short_ones() -> None:
    """Short requests of narrow windows keep arriving: under the padding cap an aged request's wide window
    cannot join a pass they lead, so it needs passes of its own (sharing each pass half and half never gave
    it one while they kept coming)."""
    forward = Recorder()
    forward.gate.clear()
    batcher = make(
        forward,
        max_batch_size=4,
        max_batch_tokens=40,
        max_padding_ratio=0.1,
        max_wait_ms=0,
        aging_s=0.01,
        max_queue_chunks=1000,
    )
    batcher.start()
    blocker = batcher.submit([[0]])
    await asyncio.sleep(0.05)
    wide = batcher.submit([[5] * 10 for _ in range(8)])
    await asyncio.sleep(0.2)
    narrow = [batcher.submit([[3] * 3]) for _ in range(16)]  # enough to lead four passes
    forward.gate.set()
    await asyncio.gather(blocker.results(), wide.results(), *(t.results() for t in narrow))
    first_wide = next(i for i, call in enumerate(forward.calls) if [5] * 10 in call)
    assert first_wide <= 2  # one narrow pass, then the aged request's turn (before: after all 16 narrow ones)
    await batcher.stop()


async def test_dead_batcher_fails_waiters_and_reports_not_running() -> None:
    forward = Recorder()
    forward.gate.clear()
    batcher = make(forward, max_wait_ms=0)
    batcher.start()
    blocker = batcher.submit([[1]])
    await asyncio.sleep(0.05)
    waiting = batcher.submit([[2]])

    def broken_take() -> list[object]:
        raise AssertionError("bug in batch formation")

    batcher._take = broken_take  # type: ignore[method-assign]
    forward.gate.set()
    await blocker.results()
    with pytest.raises(InferenceFailed, match="batcher stopped"):
        await waiting.results()
    await asyncio.sleep(0)
    assert not batcher.running
    assert isinstance(batcher._task.exception(), AssertionError)  # type: ignore[union-attr]
    await batcher.stop(1)  # the shutdown still completes: the crash was logged and every caller answered
    assert batcher._executor is not None and batcher._executor._shutdown  # type: ignore[attr-defined]


async def test_batching_off_runs_one_request_per_forward() -> None:
    forward = Recorder()
    batcher = make(forward, across_requests=False, max_wait_ms=20)
    batcher.start()
    tickets = [batcher.submit([[i, 1], [i, 2]]) for i in range(4)]
    await asyncio.gather(*(t.results() for t in tickets))
    assert sorted(sorted({c[0] for c in call}) for call in forward.calls) == [[0], [1], [2], [3]]
    await batcher.stop()


def test_priority_prefers_short_requests_and_ages_long_ones() -> None:
    from collections import deque

    from app.batcher import _Item, scheduling_priority

    loop = asyncio.new_event_loop()
    try:

        def queue(chunks: int, enqueued: float) -> deque[_Item]:
            return deque(_Item([1], loop.create_future(), enqueued) for _ in range(chunks))

        now = 100.0
        fresh_short, fresh_long = queue(2, now), queue(36, now)
        assert scheduling_priority(fresh_short, now, 5.0) < scheduling_priority(fresh_long, now, 5.0)
        waited_long = queue(36, now - 20)  # 20 s of waiting (4 halvings) shrinks 36 chunks to 2.25
        assert scheduling_priority(waited_long, now, 5.0) < scheduling_priority(queue(4, now), now, 5.0)
    finally:
        loop.close()


@pytest.mark.parametrize("chunks", [2, 20, 200, 2000])
def test_a_long_request_outranks_fresh_one_chunk_requests_within_log2_agings(chunks: int) -> None:
    """No starvation: however many one-chunk requests keep arriving, an L-chunk request comes first after
    aging_s * log2(L) seconds, far inside the 600 s deadline even for 2,000 chunks (55 s)."""
    from collections import deque

    from app.batcher import _Item, scheduling_priority

    loop = asyncio.new_event_loop()
    try:
        now, aging_s = 1000.0, 5.0
        waited = aging_s * math.log2(chunks) * 1.01
        long = deque(_Item([1], loop.create_future(), now - waited) for _ in range(chunks))
        fresh_short = deque([_Item([1], loop.create_future(), now)])
        assert scheduling_priority(long, now, aging_s) < scheduling_priority(fresh_short, now, aging_s)
    finally:
        loop.close()


async def test_batches_fill_with_the_shortest_requests_first() -> None:
    forward = Recorder()
    forward.gate.clear()
    batcher = make(forward, max_batch_size=4, max_wait_ms=0, max_queue_chunks=1000)
    batcher.start()
    blocker = batcher.submit([[0]])
    await asyncio.sleep(0.05)
    long = batcher.submit([[100]] * 10)
    medium = batcher.submit([[50]] * 3)
    short = batcher.submit([[7]])
    forward.gate.set()
    await asyncio.gather(blocker.results(), long.results(), medium.results(), short.results())
    assert forward.calls[1] == [[7], [50], [50], [50]]  # short first, then medium, then the long one
    await batcher.stop()


async def test_a_non_finite_logit_fails_only_its_own_request() -> None:
    """NaN (a float16 overflow, say) must be a 500 for that request, never a 200 with a null score."""

    def forward(chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        return torch.tensor([[float("nan") if c[0] == 666 else 0.0, 1.0] for c in chunks])

    batcher = Batcher(forward, max_batch_tokens=1000, max_batch_size=16, max_wait_ms=20, max_queue_chunks=100)
    batcher.start()
    bad, good = batcher.submit([[1], [666]]), batcher.submit([[2]])
    outcomes = await asyncio.gather(bad.results(), good.results(), return_exceptions=True)
    assert isinstance(outcomes[0], InferenceFailed) and "non-finite" in str(outcomes[0])
    assert not isinstance(outcomes[1], BaseException) and outcomes[1][0].tolist() == [0.0, 1.0]
    await batcher.stop()


def test_retry_after_weighs_passes_by_duration_not_by_count() -> None:
    """Full passes of 16 chunks in 0.2 s, then the queue's tail in single-chunk passes of 0.05 s: the
    engine still clears about 68 chunks a second overall; an average of per-pass rates fell towards the
    single passes' 20/s and tripled the Retry-After of the same queue."""
    from app.batcher import _Item

    loop = asyncio.new_event_loop()
    try:
        batcher = make(Recorder())

        def passes(size: int, seconds: float, times: int) -> None:
            for _ in range(times):
                items = [_Item([1], loop.create_future(), 0.0) for _ in range(size)]
                batcher._record(items, 0.0, seconds)

        passes(16, 0.2, 20)
        steady = batcher._chunks_per_s
        passes(1, 0.05, 4)
        after_tail = batcher._chunks_per_s
    finally:
        loop.close()
    assert steady == pytest.approx(80)
    assert after_tail > 0.85 * steady  # the old per-pass average: 0.43 x
