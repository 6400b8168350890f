"""The database engines (``db`` is each of them in turn): meta, and transactions that survive cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator

import pytest

from bot.db import Database
from bot.engine import Engine, open_database, redact
from bot.errors import StartupError


@contextlib.asynccontextmanager
async def another_process_writing(db: Engine, db_url: str) -> AsyncIterator[None]:
    """Another process holds the lock our next write needs, until the block ends."""
    if isinstance(db, Database):
        other = sqlite3.connect(db.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    import asyncpg

    connection = await asyncpg.connect(db_url)
    try:
        async with connection.transaction():
            await connection.execute("LOCK TABLE meta IN EXCLUSIVE MODE")
            yield
    finally:
        await connection.close()


async def test_a_task_cancelled_while_its_write_waits_leaves_no_transaction_open(
    db: Engine, db_url: str
) -> None:
    await db.set_meta("before", "1")
    # Our write waits for the other process's lock (SQLite: BEGIN IMMEDIATE in aiosqlite's thread;
    # PostgreSQL: the INSERT, on a pooled connection); the task is cancelled meanwhile (a heartbeat at a
    # job's end, a shutdown).
    async with another_process_writing(db, db_url):
        writer = asyncio.create_task(db.set_meta("cancelled", "1"))
        await asyncio.sleep(0.2)
        writer.cancel()
        await asyncio.sleep(0.1)
    await asyncio.gather(writer, return_exceptions=True)
    # Every later write works: no connection was left inside the cancelled transaction.
    for _ in range(3):
        await asyncio.wait_for(db.set_meta("after", "1"), 5)
    assert await db.get_meta("after") == "1"
    assert await db.get_meta("cancelled") is None
    assert await db.get_meta("before") == "1"


async def test_meta_is_kept_and_replaced(db: Engine, db_url: str) -> None:
    assert await db.get_meta("hash") is None
    await db.set_meta("hash", "a")
    await db.set_meta("hash", "b")
    async with open_database(db_url) as reopened:
        assert await reopened.get_meta("hash") == "b"
    row = await db.fetch_one("SELECT 1")
    assert row is not None and row[0] == 1


def test_unknown_url_scheme_is_refused_without_its_password() -> None:
    with pytest.raises(StartupError, match=r"database\.url") as info:
        open_database("mysql://bot:secret@db/bot")
    assert "secret" not in str(info.value)
    assert redact("postgresql://bot:secret@db:5432/bot") == "postgresql://bot:***@db:5432/bot"
    assert redact("postgresql://db/bot") == "postgresql://db/bot"
