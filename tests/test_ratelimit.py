"""The client-side channel budgets: never looser than Discord's window, final writes first."""

from __future__ import annotations

import asyncio

from bot.ratelimit import ChannelBudgets, RateBudget

PERIOD = 0.5


async def granted_now(budget: RateBudget, *, urgent: bool = False) -> bool:
    """Whether an acquisition is granted without waiting (the loop gets one turn)."""
    task = asyncio.create_task(budget.acquire(urgent=urgent))
    await asyncio.sleep(0)
    if task.done():
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


async def test_the_window_holds_at_most_limit_writes() -> None:
    budget = RateBudget(limit=5, period=PERIOD)
    assert [await granted_now(budget) for _ in range(5)] == [True] * 5
    assert not await granted_now(budget, urgent=True)


async def test_streaming_replies_keep_writes_back_for_their_final_edits() -> None:
    budget = RateBudget(limit=5, period=PERIOD)
    with budget.streaming(), budget.streaming():
        assert budget.reserved == 2
        # Intermediate edits get 5 - 2 writes of the window ...
        assert [await granted_now(budget) for _ in range(4)] == [True, True, True, False]
        # ... and both replies' final edits go out at once.
        assert await granted_now(budget, urgent=True)
        assert await granted_now(budget, urgent=True)
        assert not await granted_now(budget, urgent=True)


async def test_intermediate_edits_always_keep_two_writes_of_the_window() -> None:
    budget = RateBudget(limit=5, period=PERIOD)
    with budget.streaming(), budget.streaming(), budget.streaming(), budget.streaming(), budget.streaming():
        assert budget.reserved == 3
        assert [await granted_now(budget) for _ in range(3)] == [True, True, False]


async def test_a_held_back_write_goes_once_the_window_moves_on() -> None:
    budget = RateBudget(limit=5, period=PERIOD)
    loop = asyncio.get_running_loop()
    with budget.streaming():
        for _ in range(4):
            await budget.acquire()
        started = loop.time()
        async with asyncio.timeout(5):
            await budget.acquire()
        assert loop.time() - started >= PERIOD * 0.9


async def test_budgets_of_streaming_channels_are_not_pruned() -> None:
    budgets = ChannelBudgets(limit=5, period=0.0)
    budget = budgets.get(1, "edit")
    with budget.streaming():
        budgets._prune()
        assert budgets.get(1, "edit") is budget
    budgets._prune()
    assert budgets.get(1, "edit") is not budget
