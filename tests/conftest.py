"""Shared fixtures: the stand-ins on real sockets, and HTTP clients for their control APIs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl, FakeOllamaControl


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
