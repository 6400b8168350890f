"""Supervised loops: a failing loop is logged, backs off, runs again, and its health is visible."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest

from bot.supervise import FAILING_AFTER, Supervisor


async def test_a_loop_that_raises_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    healthy = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise sqlite3.OperationalError("database is locked")  # a passing trouble, not a reason to die
        healthy.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(base_delay=0.01, max_delay=0.02)
    with caplog.at_level(logging.ERROR, logger="bot.supervise"):
        supervisor.start("blog-worker-1", loop)
        await asyncio.wait_for(healthy.wait(), 5)
    (health,) = supervisor.health()
    assert health.running and health.restarts == 2 and not health.failing
    assert health.last_error == "OperationalError: database is locked"
    assert supervisor.all_running()
    assert [r.message for r in caplog.records].count("blog-worker-1 failed; restarting it in 0.0s") >= 1
    assert all(r.exc_info for r in caplog.records), "the traceback is logged"
    await supervisor.stop()
    assert not health.running


async def test_a_loop_that_keeps_failing_is_reported_failing_and_still_retried() -> None:
    attempts = 0
    enough = asyncio.Event()

    async def broken() -> None:
        nonlocal attempts
        attempts += 1
        if attempts >= FAILING_AFTER + 2:
            enough.set()
        raise RuntimeError("boom")

    supervisor = Supervisor(base_delay=0.001, max_delay=0.002)
    supervisor.start("blog-status-board", broken)
    await asyncio.wait_for(enough.wait(), 5)
    (health,) = supervisor.health()
    assert health.failing and not supervisor.all_running()
    await supervisor.stop()


async def test_a_loop_that_returns_is_not_restarted() -> None:
    supervisor = Supervisor()

    async def once() -> None:
        return None

    task = supervisor.start("one-off", once)
    await asyncio.wait_for(task, 5)
    assert supervisor.health()[0].restarts == 0 and not supervisor.health()[0].running
