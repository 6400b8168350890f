"""End-to-end harness: the real bot (the ``python -m bot`` composition path) against the stand-ins.

The bot runs in the test's event loop through :func:`bot.__main__.open_bot`, exactly as ``python -m bot``
builds it, and talks to the Discord emulator and the fake Ollama server over real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import discord
import httpx

from bot.__main__ import open_bot
from bot.bot import LLMBot
from bot.config import (
    BackendConfig,
    BlogConfig,
    ChatConfig,
    Config,
    DatabaseConfig,
    DiscordConfig,
    MetricsConfig,
)

T = TypeVar("T")

TOKEN = "test-token-not-a-secret-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def make_config(
    tmp_path: Path,
    emulator_url: str,
    backend_urls: Sequence[str],
    *,
    chat: dict[str, Any] | None = None,
    blog: dict[str, Any] | None = None,
    backends: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Config:
    """A config pointing at the stand-ins, with test-friendly defaults and any overrides."""
    return Config(
        discord=DiscordConfig(
            api_base=f"{emulator_url}/api/v10",
            gateway_url=emulator_url.replace("http://", "ws://") + "/",
            guild_ready_timeout=0.05,
        ),
        database=DatabaseConfig(path=str(tmp_path / "bot.sqlite3")),
        backends=tuple(
            BackendConfig(url=url, name=f"backend{index}", **(backends or {}))
            for index, url in enumerate(backend_urls)
        ),
        chat=dataclasses.replace(
            ChatConfig(), **{"cooldown_seconds": 0.0, "edit_interval": 0.3, **(chat or {})}
        ),
        blog=dataclasses.replace(BlogConfig(), **(blog or {})),
        metrics=MetricsConfig(**(metrics or {})),
    )


def config_toml(
    emulator_url: str,
    backend_url: str,
    database: Path | str,
    *,
    backend: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> str:
    """The same kind of config as :func:`make_config`, as TOML text, for a bot run as ``python -m bot``
    (``database``: an SQLite file, or a ``postgresql://`` URL)."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        return json.dumps(item)  # a JSON string or number is valid TOML

    tables = {
        "discord": {
            "api_base": f"{emulator_url}/api/v10",
            "gateway_url": emulator_url.replace("http://", "ws://") + "/",
            "guild_ready_timeout": 0.05,
        },
        "database": ({"url": database} if str(database).startswith("postgres") else {"path": str(database)}),
        **sections,
    }
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {value(item)}" for key, item in table.items())
    lines.append("[[backends]]")
    lines.extend(f"{key} = {value(item)}" for key, item in {"url": backend_url, **(backend or {})}.items())
    return "\n".join(lines) + "\n"


async def wait_until(
    probe: Callable[[], Awaitable[T | None]], *, within: float = 10.0, interval: float = 0.02
) -> T:
    """Poll ``probe`` until it returns something truthy; fail loudly after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            result = await probe()
            if result:
                return result
            await asyncio.sleep(interval)


class EmulatorControl:
    """The emulator's control API (``/_emulator/...``), as tests and benchmarks use it."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self._http = http
        self.state: dict[str, Any] = {}

    async def refresh(self) -> dict[str, Any]:
        response = await self._http.get(f"{self.url}/_emulator/state")
        response.raise_for_status()
        self.state = response.json()
        return self.state

    def channel(self, name: str) -> str:
        """A channel's id: a name in the first guild (``"general"``), ``"<guild>/<name>"`` with the guild
        by index or id (``"17/general"``, see :meth:`guild`), or an id as it is."""
        if name in self.state["channels"]:
            return str(self.state["channels"][name])
        guild, slash, channel = name.partition("/")
        if slash:
            return str(self.state["guilds"][self._guild_index(guild)]["channels"][channel])
        if name.isdigit():
            return name
        raise KeyError(f"no channel {name!r}")

    def _guild_index(self, guild: int | str) -> int:
        text = str(guild)
        for index, record in enumerate(self.state["guilds"]):
            if record["id"] == text:
                return index
        return int(text)

    def guild(self, guild: int | str) -> dict[str, Any]:
        """A guild (by index among the emulator's guilds, or by id): ``{"id", "name", "channels"}``."""
        result: dict[str, Any] = self.state["guilds"][self._guild_index(guild)]
        return result

    def guild_ids(self, shard: int | None = None, shard_count: int = 1) -> list[str]:
        """Every guild's id, in index order; with ``shard``, only that shard's (Discord's formula)."""
        return [
            g["id"]
            for g in self.state["guilds"]
            if shard is None or (int(g["id"]) >> 22) % shard_count == shard
        ]

    def user(self, name: str) -> str:
        return str(self.state["users"][name])

    @property
    def bot_id(self) -> str:
        return str(self.state["bot_user_id"])

    async def say(
        self,
        channel: str,
        author: str,
        content: str,
        reply_to: str | None = None,
        *,
        attachments: Sequence[tuple[str, str | None, bytes]] = (),
    ) -> dict[str, Any]:
        """Post a message as ``author`` (a user name) in ``channel`` (see :meth:`channel`)."""
        body: dict[str, Any] = {
            "channel_id": self.channel(channel),
            "author_id": self.user(author),
            "content": content,
        }
        if reply_to is not None:
            body["reply_to"] = reply_to
        if attachments:  # files as (filename, content type or None to let Discord guess, bytes)
            body["attachments"] = [
                {"filename": name, "content_type": kind, "data_base64": base64.b64encode(data).decode()}
                for name, kind, data in attachments
            ]
        response = await self._http.post(f"{self.url}/_emulator/messages", json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def mention(
        self,
        channel: str,
        author: str,
        text: str,
        reply_to: str | None = None,
        *,
        attachments: Sequence[tuple[str, str | None, bytes]] = (),
    ) -> dict[str, Any]:
        return await self.say(channel, author, f"<@{self.bot_id}> {text}", reply_to, attachments=attachments)

    async def messages(self, channel: str) -> list[dict[str, Any]]:
        response = await self._http.get(f"{self.url}/_emulator/channels/{self.channel(channel)}/messages")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    async def bot_replies(self, channel: str, after: str | None = None) -> list[dict[str, Any]]:
        """The bot's messages in ``channel`` (posted after message id ``after``), oldest first."""
        return [
            m
            for m in await self.messages(channel)
            if str(m["author"]["id"]) == self.bot_id and (after is None or int(m["id"]) > int(after))
        ]

    async def fault(self, **fault: Any) -> None:
        response = await self._http.post(f"{self.url}/_emulator/faults", json=fault)
        response.raise_for_status()

    async def invoke(
        self, channel: str, user: str, command: str, /, bypass_permissions: bool = False, **options: Any
    ) -> dict[str, Any]:
        """Run a slash command as ``user``; returns ``{"interaction_id", "token"}``."""
        body: dict[str, Any] = {
            "channel_id": self.channel(channel),
            "user_id": self.user(user),
            "command": command,
            "options": options,
        }
        if bypass_permissions:
            body["bypass_permissions"] = True
        response = await self._http.post(f"{self.url}/_emulator/interactions", json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def interaction(self, interaction_id: str) -> dict[str, Any]:
        response = await self._http.get(f"{self.url}/_emulator/interactions/{interaction_id}")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def answered(self, interaction_id: str) -> dict[str, Any]:
        """Wait for the interaction's first callback; returns the interaction record."""

        async def probe() -> dict[str, Any] | None:
            record = await self.interaction(interaction_id)
            return record if record["callbacks"] else None

        return await wait_until(probe)

    async def requests(self) -> list[dict[str, Any]]:
        response = await self._http.get(f"{self.url}/_emulator/requests")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    async def permissions(
        self,
        channel: str | None,
        target: str = "bot",
        *,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Set ``target``'s overwrite ("bot", a user name, a role name or id) in ``channel`` (a name or
        id) to ``allow``/``deny`` (Discord's permission names); ``channel=None`` changes a role's own
        permissions instead."""
        body = {"channel_id": channel, "target": target, "allow": list(allow), "deny": list(deny)}
        response = await self._http.post(f"{self.url}/_emulator/permissions", json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def press(self, message_id: str, custom_id: str, user: str) -> dict[str, Any]:
        """Press the button ``custom_id`` on a message as ``user`` (a user name); returns
        ``{"interaction_id", "token"}``."""
        body = {
            "type": "component",
            "message_id": message_id,
            "custom_id": custom_id,
            "user_id": self.user(user),
        }
        response = await self._http.post(f"{self.url}/_emulator/interactions", json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


class FakeOllamaControl:
    """The fake Ollama server's control API (``/_fake/...``)."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self._http = http

    async def script(self, model: str, *replies: str) -> None:
        response = await self._http.post(
            f"{self.url}/_fake/script", json={"model": model, "replies": list(replies)}
        )
        response.raise_for_status()

    async def fault(self, **fault: Any) -> None:
        response = await self._http.post(f"{self.url}/_fake/faults", json=fault)
        response.raise_for_status()

    async def requests(self) -> list[dict[str, Any]]:
        response = await self._http.get(f"{self.url}/_fake/requests")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result


class RunningBot:
    """The product bot running in this event loop; :meth:`restart` keeps the same config and database."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.bot: LLMBot | None = None
        self._task: asyncio.Task[None] | None = None
        self._saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)

    async def start(self) -> LLMBot:
        ready: asyncio.Future[LLMBot] = asyncio.get_running_loop().create_future()

        async def run() -> None:
            async with open_bot(self.config) as bot:
                self.bot = bot
                starting = asyncio.create_task(bot.start(TOKEN))
                try:
                    await bot.wait_until_ready()
                    ready.set_result(bot)
                    await starting
                finally:
                    starting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await starting

        self._task = asyncio.create_task(run(), name="bot-under-test")
        done, _ = await asyncio.wait({self._task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            self._task.result()  # re-raise the start-up failure
        if ready not in done:
            raise TimeoutError("the bot did not become ready within 10 s")
        return ready.result()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self.bot = None
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved

    async def restart(self) -> LLMBot:
        await self.stop()
        return await self.start()


class BotProcess:
    """``python -m bot <command…> --config <config>`` as a real process, its output in the file ``log``."""

    def __init__(self, command: Sequence[str], config: Path, log: Path, *, token: str = TOKEN) -> None:
        self.command = list(command)
        self.config = config
        self.log = log
        self.token = token
        self.process: asyncio.subprocess.Process | None = None
        #: Set by :meth:`kill`: its output may end anywhere.
        self.killed = False

    async def start(self) -> None:
        with self.log.open("wb") as output:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                *self.command,
                "--config",
                str(self.config),
                cwd=ROOT,
                env={**os.environ, "DISCORD_TOKEN": self.token},
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def check_alive(self) -> None:
        """Raise, with the end of its output, if the process has exited."""
        if self.process is not None and self.process.returncode is not None:
            raise RuntimeError(
                f"python -m bot {' '.join(self.command)} exited ({self.process.returncode}):\n"
                f"{self.output()[-3000:]}"
            )

    async def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.process is not None
        self.killed = True
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.process.wait(), 10)

    async def terminate(self, within: float = 30.0) -> int:
        """SIGTERM (SIGKILL if it has not stopped ``within`` seconds later); the exit status."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()


@contextlib.asynccontextmanager
async def running_bot(config: Config) -> AsyncIterator[RunningBot]:
    runner = RunningBot(config)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


__all__ = [
    "ROOT",
    "TOKEN",
    "BotProcess",
    "EmulatorControl",
    "FakeOllamaControl",
    "RunningBot",
    "config_toml",
    "make_config",
    "running_bot",
    "wait_until",
]
