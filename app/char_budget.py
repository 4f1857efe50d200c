"""A budget of characters being tokenized at once, across all requests.

Tokenizing a text holds memory in proportion to its characters until it ends: about 0.6 GB per million
characters for text whose every character is a token (Chinese, Japanese, punctuation runs). Admission
counts chunks, which exist only after tokenization, so without this bound a few large but legal
requests tokenizing side by side take a replica past its memory limit before any limit is checked. A
thread cannot be stopped once started, so a reservation is held until the thread itself returns, not
until its caller stops waiting.

glibc keeps what a large tokenization freed (about 0.9 GB after 2 million CJK characters) in the arena of
the thread that ran it, and each executor thread has its own arena: measured on a server, four such
texts one after another left 3.7 GB resident. So after a large reservation the worker thread hands freed
memory back to the system (`malloc_trim`, where the C library has it: measured 1 ms after 100,000 characters
of English, 9 ms after a million, 40 ms after 2 million CJK characters, on the worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
TRIM_AFTER_CHARS = 100_000  # smaller texts free too little to be worth a walk over the heap
RATE_AFTER_CHARS = 10_000


class CharacterBudget:
    """First come, first served: a reservation waits while earlier ones wait or the budget is short, so
    a stream of small texts cannot starve a large one. A reservation over the whole budget is clamped to
    it: that text is tokenized alone. All state is touched from the event loop only."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._trim = _malloc_trim()
        self._chars_per_s = 0.0  # moving average over finished tokenizations, for Retry-After

    @property
    def waiting(self) -> int:
        """Reservations waiting for characters (a cancelled one leaves at its next loop step)."""
        return sum(1 for _, granted in self._waiters if not granted.done())

    def seconds_for(self, chars: int) -> float:
        """How long `chars` characters take to tokenize at the recently measured rate (1 s before any)."""
        return chars / self._chars_per_s if self._chars_per_s else 1.0

    async def run_in_thread(self, chars: int, work: Callable[[], T], admit: Callable[[], None] | None = None) -> T:
        """`work()` in a worker thread once `chars` characters are free; they stay reserved until it returns.
        `admit()` runs once they are granted, before the thread starts: raising there gives them back."""
        amount = await self._acquire(min(chars, self.capacity))
        if admit is not None:
            try:
                admit()
            except BaseException:
                self._release(amount)
                raise
        started = time.perf_counter()

        def work_then_trim() -> T:
            try:
                return work()
            finally:
                if amount >= TRIM_AFTER_CHARS and self._trim is not None:
                    self._trim(0)
                elapsed = time.perf_counter() - started
                if chars >= RATE_AFTER_CHARS and elapsed > 0:  # small texts time the thread hop, not the tokenizer
                    rate = chars / elapsed  # a float store: atomic under the GIL
                    self._chars_per_s = rate if not self._chars_per_s else 0.7 * self._chars_per_s + 0.3 * rate

        thread = asyncio.ensure_future(asyncio.to_thread(work_then_trim))
        thread.add_done_callback(lambda finished: self._settle(finished, amount))
        # shield: a caller that stops waiting (deadline, disconnect) leaves the thread, and its reservation,
        # to run out; only the thread's end gives the characters back.
        return await asyncio.shield(thread)

    async def _acquire(self, amount: int) -> int:
        if not self._waiters and self.held + amount <= self.capacity:
            self.held += amount
            return amount
        granted = asyncio.get_running_loop().create_future()
        entry = (amount, granted)
        self._waiters.append(entry)
        try:
            await granted
        except BaseException:
            if granted.done() and not granted.cancelled():  # granted in the step the caller was cancelled
                self._release(amount)
            else:
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove(entry)
                self._wake()  # it may have been the head that blocked smaller ones behind it
            raise
        return amount

    def _settle(self, thread: asyncio.Future[T], amount: int) -> None:
        if not thread.cancelled():
            thread.exception()  # retrieved here: a caller that left never awaits it
        self._release(amount)

    def _release(self, amount: int) -> None:
        self.held -= amount
        self._wake()

    def _wake(self) -> None:
        """Grant waiters in arrival order while the head fits; the reservation is taken on their behalf."""
        while self._waiters and self.held + self._waiters[0][0] <= self.capacity:
            amount, granted = self._waiters.popleft()
            if granted.done():  # cancelled, its handler not yet run: it takes nothing
                continue
            self.held += amount
            granted.set_result(None)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on a C library without it (musl, macOS, Windows)."""
    try:
        trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # Windows: no handle for the process itself
        return None
    return trim
