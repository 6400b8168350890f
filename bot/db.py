"""The SQLite database: one aiosqlite connection, explicit transactions, versioned schema.

Why it is shaped like this (see ``shared/reference/queue.md``):

* ``isolation_level=None`` and explicit ``BEGIN IMMEDIATE``: a deferred transaction that reads and then
  writes fails at once with SQLITE_BUSY, whatever the busy timeout.
* One asyncio lock around every statement and transaction: coroutines sharing one connection would
  otherwise interleave inside each other's transactions.
* WAL and ``synchronous=FULL``: a committed job survives a power cut; blog traffic is far below the
  ~600 commits/s this costs through aiosqlite.
* ``PRAGMA user_version`` holds the schema version; :data:`MIGRATIONS` brings any older file up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite

from bot.engine import Dialect, Listener, Parameters
from bot.errors import StartupError

log = logging.getLogger(__name__)

Row = sqlite3.Row

PRAGMAS = ("journal_mode = WAL", "synchronous = FULL", "foreign_keys = ON", "busy_timeout = 5000")

#: Schema migrations, applied in order; the database's ``user_version`` is how many have run.
MIGRATIONS: tuple[str, ...] = (
    # 1: the blog job queue.
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        guild_id INTEGER,
        channel_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        status_message_id INTEGER,
        topic TEXT NOT NULL,
        style TEXT NOT NULL,
        tone TEXT NOT NULL,
        target_length INTEGER NOT NULL,
        tags TEXT NOT NULL,                      -- JSON array of normalised tags
        model TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'running', 'generated', 'delivered', 'failed', 'cancelled')),
        attempts INTEGER NOT NULL DEFAULT 0,     -- generation attempts started
        run_at REAL NOT NULL,                    -- not before this wall-clock time (retry backoff)
        fair_seq REAL NOT NULL,                  -- claim order: round-robin between users (see store.py)
        lease_token TEXT,                        -- fences every write of the worker holding the job
        lease_until REAL,                        -- the holder must heartbeat before this, or lose the job
        progress_words INTEGER NOT NULL DEFAULT 0,
        started_at REAL,
        title TEXT,
        slug TEXT,
        article TEXT,                            -- the finished Markdown file, front matter included
        word_count INTEGER,
        generated_at TEXT,
        delivered_message_id INTEGER,
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL,
        CHECK ((state IN ('delivered', 'failed', 'cancelled')) = (finished_at IS NOT NULL)),
        CHECK (state != 'delivered' OR delivered_message_id IS NOT NULL),
        CHECK (state NOT IN ('generated', 'delivered') OR article IS NOT NULL)
    );
    CREATE INDEX jobs_claim ON jobs (state, fair_seq, id);
    CREATE INDEX jobs_user ON jobs (user_id, state);
    CREATE INDEX jobs_guild ON jobs (guild_id, state);
    """,
    # 2: small facts the bot keeps between runs (e.g. the hash of the last synced command set).
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 3: per-server settings set by moderators, and the audit trail of their actions.
    """
    CREATE TABLE guild_settings (
        guild_id INTEGER PRIMARY KEY,
        settings TEXT NOT NULL,                  -- JSON object of the keys that differ from the TOML defaults
        updated_at REAL NOT NULL
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        guild_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        action TEXT NOT NULL,
        details TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX audit_log_guild ON audit_log (guild_id, id);
    """,
    # 4: the text generated so far (a checkpoint to continue from), why a posted article is not whole,
    #    who cancelled a job, and how often posting it failed.
    """
    ALTER TABLE jobs ADD COLUMN draft TEXT;
    ALTER TABLE jobs ADD COLUMN incomplete TEXT;
    ALTER TABLE jobs ADD COLUMN cancelled_by INTEGER;
    ALTER TABLE jobs ADD COLUMN post_attempts INTEGER NOT NULL DEFAULT 0;
    """,
)


class Database:
    """The bot's SQLite database, an :class:`~bot.engine.Engine`. Open with ``async with Database(path)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._connection: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._turns: dict[int, asyncio.Lock] = {}

    @property
    def dialect(self) -> Dialect:
        """Which SQL this engine speaks."""
        return "sqlite"

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect, set the pragmas and run pending migrations."""
        try:
            # Tried with plain sqlite3 first: when aiosqlite fails to connect, its worker thread reports
            # the stop later, to an event loop that `asyncio.run` may have closed, and prints a traceback.
            await asyncio.to_thread(_try_open, self.path)
            self._connection = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StartupError(f"database.path: cannot open {self.path!r} ({exc})") from None
        self._connection.row_factory = sqlite3.Row
        try:
            for pragma in PRAGMAS:
                await self._connection.execute(f"PRAGMA {pragma}")
            await self._migrate()
        except BaseException:
            # aiosqlite runs a thread per connection: one left open keeps the process from exiting.
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error), holding the database lock throughout.

        aiosqlite runs each statement in its own thread, which a cancelled ``await`` does not stop: a task
        cancelled while waiting for ``BEGIN`` (another process holds the write lock) would leave the one
        connection inside a transaction, and every later write would fail. So the start and the end of a
        transaction are shielded and always undone or finished.
        """
        async with self._lock:
            connection = self._require()
            begin = asyncio.ensure_future(connection.execute("BEGIN IMMEDIATE"))
            try:
                await asyncio.shield(begin)
            except BaseException:
                await _settle(begin)
                await _rollback(connection)
                raise
            try:
                yield connection
            except BaseException:
                await _rollback(connection)
                raise
            await asyncio.shield(connection.execute("COMMIT"))

    async def fetch_all(self, sql: str, parameters: Parameters = ()) -> list[Row]:
        """Run a read-only query and return every row."""
        async with self._lock:
            cursor = await self._require().execute(sql, parameters)
            rows = await cursor.fetchall()
            await cursor.close()
            return list(rows)

    async def fetch_one(self, sql: str, parameters: Parameters = ()) -> Row | None:
        """Run a read-only query and return its first row, or None."""
        rows = await self.fetch_all(sql, parameters)
        return rows[0] if rows else None

    async def get_meta(self, key: str) -> str | None:
        """A value stored with :meth:`set_meta`, or None."""
        row = await self.fetch_one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        """Store a small value under ``key``."""
        async with self.transaction() as connection:
            await connection.execute(
                """INSERT INTO meta (key, value) VALUES (?, ?)
                   ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
                (key, value),
            )

    async def schema_version(self) -> int:
        """How many migrations this database has run."""
        row = await self.fetch_one("PRAGMA user_version")
        return int(row[0]) if row is not None else 0

    def now(self) -> float:
        """The current time as a statement parameter: this machine's clock (the only one using the file)."""
        return time.time()

    async def notify(self, connection: Any, channel: str, payload: str = "") -> None:
        """Nothing to do: one process uses the file, and it tells its own services directly."""

    async def listen(self, channel: str, callback: Listener) -> None:
        """Nothing to do (see :meth:`notify`)."""

    async def unlisten(self, channel: str, callback: Listener) -> None:
        """Nothing to do (see :meth:`notify`)."""

    async def take_turn(self, key: int, hold: float) -> None:
        """One process: a lock per key, given back ``hold`` seconds after it was taken."""
        lock = self._turns.setdefault(key, asyncio.Lock())
        await lock.acquire()
        asyncio.get_running_loop().call_later(hold, lock.release)

    def _require(self) -> aiosqlite.Connection:
        if self._connection is None:
            raise RuntimeError("the database is not open")
        return self._connection

    async def _migrate(self) -> None:
        version = await self.schema_version()
        if version > len(MIGRATIONS):
            raise StartupError(
                f"database.path: {self.path!r} has schema version {version}, newer than this bot knows "
                f"({len(MIGRATIONS)}); upgrade the bot"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            async with self.transaction() as connection:
                for statement in _statements(script):
                    await connection.execute(statement)
                await connection.execute(f"PRAGMA user_version = {number}")
            log.info("database migrated to schema version %d", number)


async def _settle(statement: asyncio.Future[Any]) -> None:
    """Wait for a statement already handed to aiosqlite's thread, whatever its outcome (the caller re-raises
    its own exception afterwards, so a cancellation meanwhile is not lost)."""
    while not statement.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(statement)
    if not statement.cancelled():
        statement.exception()  # retrieved: a failed BEGIN needs no undoing


async def _rollback(connection: aiosqlite.Connection) -> None:
    """Leave the transaction, if one is open (shielded: a second cancellation must not skip it)."""
    if connection.in_transaction:
        await asyncio.shield(connection.execute("ROLLBACK"))


def _statements(script: str) -> Iterable[str]:
    """Split a migration into statements (executescript would COMMIT our transaction)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


def _try_open(path: str | Path) -> None:
    """Open and close the database file, raising ``sqlite3.Error`` if it cannot be opened."""
    sqlite3.connect(path).close()
