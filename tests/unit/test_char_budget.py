"""The shared budget of characters being tokenized, with real worker threads held on events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from app.char_budget import CharacterBudget


async def settle() -> None:
    """Long enough for granted waiters to start their threads."""
    await asyncio.sleep(0.05)


def held_until(gate: threading.Event, result: str, ran: list[str]) -> Callable[[], str]:
    def work() -> str:
        assert gate.wait(10), "the test never opened the gate"
        ran.append(result)
        return result

    return work


async def test_a_large_reservation_is_not_overtaken_by_smaller_later_ones() -> None:
    budget = CharacterBudget(10)
    ran: list[str] = []
    first_gate, open_gate = threading.Event(), threading.Event()
    open_gate.set()
    first = asyncio.create_task(budget.run_in_thread(6, held_until(first_gate, "first", ran)))
    await settle()
    large = asyncio.create_task(budget.run_in_thread(10, held_until(open_gate, "large", ran)))
    await settle()
    small = asyncio.create_task(budget.run_in_thread(2, held_until(open_gate, "small", ran)))
    await settle()
    # 6 + 2 would fit, but the small one arrived after the large one, which must not starve
    assert ran == [] and budget.held == 6
    first_gate.set()
    assert list(await asyncio.gather(first, large, small)) == ["first", "large", "small"]
    assert ran == ["first", "large", "small"] and budget.held == 0


async def test_a_reservation_over_the_whole_budget_runs_alone() -> None:
    budget = CharacterBudget(10)
    assert await budget.run_in_thread(50, lambda: budget.held) == 10
    assert budget.held == 0


async def test_a_caller_that_stops_waiting_keeps_its_characters_until_the_thread_ends() -> None:
    """A thread cannot be stopped: its memory is in use until it returns, so the budget must say so."""
    budget = CharacterBudget(10)
    gate = threading.Event()
    ran: list[str] = []
    leaving = asyncio.create_task(budget.run_in_thread(8, held_until(gate, "abandoned", ran)))
    await settle()
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert budget.held == 8
    following = asyncio.create_task(budget.run_in_thread(5, lambda: "next"))
    await settle()
    assert not following.done()
    gate.set()
    assert await following == "next"
    assert ran == ["abandoned"] and budget.held == 0


async def test_a_cancelled_waiter_lets_the_ones_behind_it_through() -> None:
    budget = CharacterBudget(10)
    gate = threading.Event()
    holder = asyncio.create_task(budget.run_in_thread(6, held_until(gate, "holder", [])))
    await settle()
    large = asyncio.create_task(budget.run_in_thread(10, lambda: "large"))
    await settle()
    small = asyncio.create_task(budget.run_in_thread(2, lambda: "small"))
    await settle()
    assert not small.done()
    large.cancel()
    assert await asyncio.wait_for(small, 5) == "small"  # while the holder still runs
    assert not holder.done() and budget.held == 6
    gate.set()
    await holder
    assert budget.held == 0


async def test_a_failing_tokenization_raises_and_gives_its_characters_back() -> None:
    budget = CharacterBudget(10)

    def fail() -> None:
        raise ValueError("tokenizer broke")

    with pytest.raises(ValueError, match="tokenizer broke"):
        await budget.run_in_thread(10, fail)
    assert budget.held == 0
    assert await budget.run_in_thread(10, lambda: "after") == "after"


async def test_an_admission_check_that_refuses_gives_the_characters_back_and_runs_nothing() -> None:
    budget = CharacterBudget(10)
    ran: list[str] = []

    def refuse() -> None:
        raise RuntimeError("queue full")

    with pytest.raises(RuntimeError, match="queue full"):
        await budget.run_in_thread(5, lambda: ran.append("work"), admit=refuse)
    assert ran == [] and budget.held == 0


async def test_retry_estimates_scale_with_the_measured_tokenization_rate() -> None:
    budget = CharacterBudget(100_000)
    assert budget.seconds_for(50_000) == 1.0  # nothing measured yet
    await budget.run_in_thread(20_000, lambda: sum(range(200_000)))
    one = budget.seconds_for(10_000)
    assert one > 0 and budget.seconds_for(40_000) == pytest.approx(4 * one)
