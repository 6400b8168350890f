"""The database wrapper: transactions survive cancellation."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from bot.db import Database


async def test_a_task_cancelled_while_starting_a_transaction_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bot.sqlite3"
    async with Database(path) as db:
        await db.set_meta("before", "1")
        # Another process holds the write lock, so our BEGIN IMMEDIATE waits (busy_timeout) in aiosqlite's
        # thread; the task waiting for it is cancelled meanwhile (a heartbeat at a job's end, a shutdown).
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        writer = asyncio.create_task(db.set_meta("cancelled", "1"))
        await asyncio.sleep(0.2)
        writer.cancel()
        await asyncio.sleep(0.1)
        other.execute("ROLLBACK")
        other.close()
        await asyncio.gather(writer, return_exceptions=True)
        # Every later write works: the connection was not left inside the cancelled transaction.
        await asyncio.wait_for(db.set_meta("after", "1"), 5)
        assert await db.get_meta("after") == "1"
        assert await db.get_meta("cancelled") is None
