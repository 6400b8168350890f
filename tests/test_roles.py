"""``python -m bot gateway`` and ``python -m bot worker``: several processes sharing PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.bot import IDENTIFY_LOCK_BASE
from bot.engine import open_database
from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import TOKEN, BotProcess, EmulatorControl, config_toml, wait_until
from tests.test_main import run_bot

ARTICLE = "# Owls\n\n" + "Owls hunt at night and sleep by day. " * 60


@pytest.mark.parametrize("role", ["gateway", "worker"])
def test_multi_process_roles_refuse_sqlite_in_one_line(tmp_path: Path, role: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\npath = "{tmp_path / "bot.sqlite3"}"\n')
    result = run_bot(role, "--config", str(config), env={"DISCORD_TOKEN": TOKEN})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "needs PostgreSQL" in line and "python -m bot run" in line


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["gateway", "--shards", "0-3"], "go together"),
        (["gateway", "--shards", "2-4", "--shard-count", "4"], "must lie in 0..3"),
        (["worker", "--shards", "0", "--shard-count", "2"], "are for python -m bot gateway"),
        (["gateway", "--shards", "two"], "is not a shard range"),
    ],
)
def test_shard_options_are_checked(tmp_path: Path, args: list[str], complaint: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[database]\nurl = "postgresql://bot@127.0.0.1:1/bot"\n')
    result = run_bot(*args, "--config", str(config), env={"DISCORD_TOKEN": TOKEN})
    assert result.returncode == 2
    assert complaint in result.stderr and "Traceback" not in result.stderr


@contextlib.asynccontextmanager
async def processes(config: Path, *commands: list[str]) -> AsyncIterator[list[BotProcess]]:
    """``python -m bot <command>`` for each command; stopped with SIGTERM at the end, which each must
    survive cleanly (exit 0, no traceback)."""
    started = [
        BotProcess(command, config, config.with_name(f"{n}-{command[0]}.log"))
        for n, command in enumerate(commands)
    ]
    for process in started:
        await process.start()
    try:
        yield started
    finally:
        returncodes = await asyncio.gather(*(process.terminate() for process in started))
        for process, returncode in zip(started, returncodes, strict=True):
            assert "Traceback" not in process.output(), process.output()[-3000:]
            assert returncode == 0, process.output()[-3000:]


async def test_gateway_and_worker_processes_share_the_work(
    tmp_path: Path, postgres_url: str, http: Any
) -> None:
    async with (
        DiscordEmulator(guilds=4) as emulator,
        FakeOllamaServer(models=["llama2", "mistral:latest"]) as ollama,
    ):
        api = EmulatorControl(emulator.url, http)
        await api.refresh()
        ollama.script("mistral:latest", [ARTICLE])
        config = tmp_path / "config.toml"
        config.write_text(
            config_toml(
                emulator.url,
                ollama.url,
                postgres_url,
                chat={"cooldown_seconds": 0.0},
                blog={"progress_interval": 0.5, "lease_seconds": 5.0},
            )
        )
        async with processes(
            config,
            ["gateway", "--shards", "0", "--shard-count", "2"],
            ["gateway", "--shards", "1", "--shard-count", "2"],
            ["worker"],
        ):

            async def both_shards() -> bool:
                sessions = (await api.refresh())["sessions"]
                return {tuple(s.get("shard") or ()) for s in sessions} >= {(0, 2), (1, 2)}

            await wait_until(both_shards, within=30)
            # Chat in every guild, each answered by the gateway process of its shard.
            questions = {}
            for index in range(4):
                ollama.script("llama2", [f"answer in guild {index}"])
                question = await api.mention(f"{index}/general", "alice", f"hello from {index}")
                questions[index] = question["id"]

                async def answered(index: int = index) -> bool:
                    messages = await api.messages(f"{index}/general")
                    return any(m["content"] == f"answer in guild {index}" for m in messages)

                await wait_until(answered, within=15)
            # A blog job queued through a gateway is written and posted by the worker process.
            invocation = await api.invoke("3/general", "bob", "blog new", topic="owls")
            await api.answered(invocation["interaction_id"])

            async def posted() -> list[dict[str, Any]] | None:
                found = [m for m in await api.messages("3/general") if m.get("attachments")]
                return found or None

            [post] = await wait_until(posted, within=30)
            state = await api.refresh()
    assert post["attachments"][0]["filename"].startswith("owls")
    assert state.get("identify_refusals", []) == [], "the gateways spaced their IDENTIFYs"


async def test_a_gateway_stopped_while_waiting_to_identify_exits_cleanly(
    tmp_path: Path, postgres_url: str, http: Any
) -> None:
    """SIGTERM while a shard waits for its IDENTIFY turn (another process holds it): the launch stops,
    instead of discord.py retrying it on the closed session with a traceback every 5 s."""
    async with (
        DiscordEmulator(guilds=2) as emulator,
        FakeOllamaServer(models=["llama2", "mistral:latest"]) as ollama,
        open_database(postgres_url) as database,
    ):
        api = EmulatorControl(emulator.url, http)
        config = tmp_path / "config.toml"
        config.write_text(config_toml(emulator.url, ollama.url, postgres_url))
        # Another gateway process has just identified in bucket 0: this one must wait 30 s for its turn.
        await database.take_turn(IDENTIFY_LOCK_BASE, 30.0)
        gateway = BotProcess(["gateway", "--shards", "0", "--shard-count", "1"], config, tmp_path / "gw.log")
        await gateway.start()
        try:
            await wait_until(lambda: _true("synced" in gateway.output()), within=20)
            assert not (await api.refresh())["sessions"]
        finally:
            returncode = await gateway.terminate(within=15)
    assert returncode == 0, gateway.output()[-3000:]
    assert "Traceback" not in gateway.output(), gateway.output()[-3000:]


async def _true(value: bool) -> bool:
    return value
