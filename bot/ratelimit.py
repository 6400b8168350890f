"""Client-side mirrors of Discord's per-channel message rate limits, so streaming never earns a 429.

Discord lets a bot create about 5 messages and make about 5 edits per 5 seconds in one channel.
discord.py only reacts to the limit (it sleeps once a bucket reports 0 remaining, or after a 429), and it
does not know that a *final* edit matters more than an intermediate one. Every message write the bot makes
in a channel goes through the channel's :class:`RateBudget` instead, which keeps a sliding window that is
never looser than Discord's and lets urgent writes (the last edit of a reply) go first.

Urgent writes going first is not enough when several replies stream in one channel: their intermediate
edits would fill the window, and a reply that finishes would wait up to five seconds for its last edit.
So each reply streaming in a channel holds back one write of the window for urgent use (at most
``limit - 2``, so intermediate edits keep flowing): the final text of a reply finds room at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Literal

WriteKind = Literal["create", "edit"]

#: Discord's documented shape for message writes in one channel.
DEFAULT_LIMIT = 5
DEFAULT_PERIOD = 5.0
# The server counts from when a request *arrives*; keep a margin for the time a request spends in flight.
SAFETY_MARGIN = 0.1


class RateBudget:
    """At most ``limit`` acquisitions in any ``period`` seconds; urgent waiters are served first, and
    :meth:`streaming` holds writes back for them."""

    def __init__(self, limit: int = DEFAULT_LIMIT, period: float = DEFAULT_PERIOD + SAFETY_MARGIN) -> None:
        self.limit = limit
        self.period = period
        self._granted: deque[float] = deque(maxlen=limit)
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._streams = 0

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """While inside, one more reply may need an urgent write: keep a write of the window for it."""
        self._streams += 1
        try:
            yield
        finally:
            self._streams -= 1
            with contextlib.suppress(RuntimeError):  # no running loop: nobody is waiting either
                self._grant()

    @property
    def reserved(self) -> int:
        """Writes of the window that only urgent acquisitions may use."""
        return max(0, min(self._streams, self.limit - 2))

    async def acquire(self, *, urgent: bool = False) -> None:
        """Wait until one more write fits in the window, then count it."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (0 if urgent else 1, next(self._order), waiter))
        self._grant()
        try:
            await waiter
        except asyncio.CancelledError:
            # A slot granted just before the cancellation stays counted; either way, serve the next waiter.
            self._grant()
            raise

    def idle_since(self, now: float) -> bool:
        """True when nothing is waiting or streaming and the window is empty at ``now`` (the budget can be
        dropped)."""
        return (
            not self._waiters
            and not self._streams
            and (not self._granted or now - self._granted[-1] >= self.period)
        )

    def _grant(self) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = loop.time()
        while self._waiters:
            priority, _, waiter = self._waiters[0]
            if waiter.done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            # Room for this waiter: fewer than `allowed` grants within the last period.
            allowed = self.limit if priority == 0 else self.limit - self.reserved
            if len(self._granted) >= allowed and now - self._granted[-allowed] < self.period:
                self._timer = loop.call_at(self._granted[-allowed] + self.period, self._grant)
                return
            heapq.heappop(self._waiters)
            self._granted.append(now)
            waiter.set_result(None)


class ChannelBudgets:
    """One :class:`RateBudget` per (channel, kind of write), created on first use."""

    #: Forget idle budgets once this many exist, so a bot in thousands of channels stays small.
    PRUNE_ABOVE = 512

    def __init__(self, limit: int = DEFAULT_LIMIT, period: float = DEFAULT_PERIOD + SAFETY_MARGIN) -> None:
        self._limit = limit
        self._period = period
        self._budgets: dict[tuple[int, WriteKind], RateBudget] = {}

    def get(self, channel_id: int, kind: WriteKind) -> RateBudget:
        """The budget for ``kind`` writes in the channel."""
        key = (channel_id, kind)
        budget = self._budgets.get(key)
        if budget is None:
            if len(self._budgets) >= self.PRUNE_ABOVE:
                self._prune()
            budget = self._budgets[key] = RateBudget(self._limit, self._period)
        return budget

    def _prune(self) -> None:
        now = asyncio.get_running_loop().time()
        for key in [key for key, budget in self._budgets.items() if budget.idle_since(now)]:
            del self._budgets[key]
