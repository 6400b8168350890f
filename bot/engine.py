"""What the stores need from a database, whichever engine holds it: SQLite (:mod:`bot.db`, the embedded
default) or PostgreSQL (:mod:`bot.pg`, for several processes on several machines).

The stores (:class:`~bot.blog.store.JobStore`, :class:`~bot.settings.SettingsStore`, the bot's meta) are
typed against :class:`Engine`. Their SQL is written once, with ``?`` or ``:name`` placeholders, in the
subset both engines run; the few fragments that differ sit in one place in the store, keyed by
:attr:`Engine.dialect`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from bot.errors import StartupError

Dialect = Literal["sqlite", "postgresql"]
#: Statement parameters: a sequence for ``?`` placeholders, a mapping for ``:name`` ones.
Parameters = Sequence[Any] | Mapping[str, Any]
#: Called with a notification's payload ("" after the listening connection was lost and restored: anything
#: may have changed meanwhile). May return an awaitable, which the engine runs as a task.
Listener = Callable[[str], object]


class Row(Protocol):
    """A result row: ``row[0]``, ``row["name"]`` and ``row.keys()`` (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Cursor(Protocol):
    """What :meth:`Connection.execute` returns."""

    @property
    def rowcount(self) -> int: ...

    async def fetchone(self) -> Row | None: ...

    async def fetchall(self) -> Iterable[Row]: ...

    async def close(self) -> None: ...


class Connection(Protocol):
    """The connection :meth:`Engine.transaction` yields."""

    def execute(self, sql: str, parameters: Parameters = ..., /) -> Awaitable[Cursor]: ...

    def executemany(self, sql: str, parameters: Iterable[Parameters], /) -> Awaitable[object]: ...


@dataclass(frozen=True, slots=True)
class ServerNow:
    """A statement parameter meaning "now, on the database server's clock" (+ ``offset`` seconds, which
    only tests set). PostgreSQL puts the server's time in its place, so leases and retry times mean the
    same on every machine whatever their clocks say."""

    offset: float = 0.0


class Engine(Protocol):
    """A database the stores can use. Open with ``async with``."""

    @property
    def dialect(self) -> Dialect: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def transaction(self) -> AbstractAsyncContextManager[Connection]: ...

    async def fetch_all(self, sql: str, parameters: Parameters = ()) -> Sequence[Row]: ...

    async def fetch_one(self, sql: str, parameters: Parameters = ()) -> Row | None: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def schema_version(self) -> int: ...

    def now(self) -> float | ServerNow:
        """The current time as a statement parameter (a float, or :class:`ServerNow`)."""
        ...

    async def notify(self, connection: Connection, channel: str, payload: str = "") -> None:
        """Tell every process listening on ``channel``, when the transaction commits."""
        ...

    async def listen(self, channel: str, callback: Listener) -> None:
        """Call ``callback`` with the payload of every notification on ``channel``."""
        ...

    async def unlisten(self, channel: str, callback: Listener) -> None:
        """Stop calling ``callback`` for ``channel``."""
        ...

    async def take_turn(self, key: int, hold: float) -> None:
        """Wait until nobody (in any process sharing the database) took turn ``key`` in the last ``hold``
        seconds, then take it: how gateway processes space their IDENTIFYs."""
        ...


def open_database(url: str) -> Engine:
    """The engine for ``database.url`` (not opened yet): ``sqlite:///path`` or ``postgresql://…``."""
    if url.startswith("sqlite:///"):
        from bot.db import Database

        return Database(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from bot.pg import PostgresDatabase
        except ImportError:
            raise StartupError(
                "database.url: PostgreSQL needs asyncpg: pip install 'ollama-discord-bot[postgres]'"
            ) from None
        return PostgresDatabase(url)
    raise StartupError(f"database.url must start with sqlite:/// or postgresql://, got {redact(url)!r}")


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
