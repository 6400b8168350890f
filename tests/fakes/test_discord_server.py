"""The Discord emulator against a minimal, unmodified discord.py client written here (not the product bot)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import httpx
import pytest
import yarl
from discord import app_commands

from tests.fakes.discord_server import DiscordEmulator
from tests.harness import EmulatorControl, wait_until

ROOT = Path(__file__).resolve().parent.parent.parent


class MiniBot(discord.Client):
    """The smallest useful discord.py bot: records what it sees, answers one slash command."""

    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(intents=intents, guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.ready = asyncio.Event()
        self.seen: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.answer_after = 0.0

        @self.tree.command(name="echo", description="Echo some text back as a file")
        @app_commands.describe(text="What to echo", times="How many times")
        async def echo(
            interaction: discord.Interaction, text: str, times: app_commands.Range[int, 1, 5] = 1
        ) -> None:
            await asyncio.sleep(self.answer_after)
            await interaction.response.defer(thinking=True)
            file = discord.File(io.BytesIO((text * times).encode()), filename="echo.txt")
            await interaction.followup.send("here it is", file=file)

    async def on_ready(self) -> None:
        self.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        self.seen.put_nowait(message)


@contextlib.asynccontextmanager
async def mini_bot(emulator_url: str) -> AsyncIterator[MiniBot]:
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = emulator_url + "/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
        emulator_url.replace("http://", "ws://") + "/"
    )
    bot = MiniBot()
    started = time.monotonic()
    task = asyncio.create_task(bot.start("any-token-works"))
    try:
        await asyncio.wait_for(bot.ready.wait(), 5)
        bot.startup_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        yield bot
    finally:
        await bot.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


async def next_message(bot: MiniBot, content: str, within: float = 15) -> discord.Message:
    async with asyncio.timeout(within):
        while True:
            message = await bot.seen.get()
            if message.content == content:
                return message


def channel(bot: MiniBot, api: EmulatorControl, name: str) -> discord.TextChannel:
    found = bot.get_channel(int(api.channel(name)))
    assert isinstance(found, discord.TextChannel)
    return found


async def test_connects_and_is_ready_in_under_a_second(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        assert bot.startup_seconds < 1.0  # type: ignore[attr-defined]
        assert bot.user is not None and str(bot.user.id) == discord_api.bot_id
        guild = bot.get_guild(int(discord_api.state["guild_id"]))
        assert guild is not None and {c.name for c in guild.text_channels} == {"general", "blog"}
        assert guild.member_count == 4  # alice, bob, mod and the bot
        mod = await guild.fetch_member(int(discord_api.user("mod")))
        assert mod.guild_permissions.manage_guild and mod.guild_permissions.manage_messages
        alice = await guild.fetch_member(int(discord_api.user("alice")))
        assert not alice.guild_permissions.manage_guild
        state = await discord_api.refresh()
        assert len(state["sessions"]) == 1


async def test_send_edit_reply_upload_and_receive(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        general = channel(bot, discord_api, "general")
        sent = await general.send("first")
        edited = await sent.edit(content="first, edited")
        replied = await sent.reply("a reply", mention_author=False)
        uploaded = await general.send(
            "a file", file=discord.File(io.BytesIO(b"hello file"), filename="a.txt")
        )
        incoming = await discord_api.say("general", "alice", "hi bot")
        seen = await next_message(bot, "hi bot")
        assert seen.author.name == "alice" and str(seen.id) == incoming["id"]
        fetched = await general.fetch_message(sent.id)
        history = [m.content async for m in general.history(limit=10)]
    assert edited.content == fetched.content == "first, edited"
    assert replied.reference is not None and replied.reference.message_id == sent.id
    assert uploaded.attachments[0].filename == "a.txt" and uploaded.attachments[0].size == 10
    assert history[0] == "hi bot" and history[-1] == "first, edited"  # newest first, like Discord
    messages = {m["id"]: m for m in await discord_api.messages("general")}
    assert [h["content"] for h in messages[str(sent.id)]["history"]] == ["first", "first, edited"]
    assert messages[str(uploaded.id)]["attachments"][0]["text"] == "hello file"


async def test_slash_command_defer_and_followup_with_a_file(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        synced = await bot.tree.sync()
        assert [c.name for c in synced] == ["echo"]
        invocation = await discord_api.invoke("general", "alice", "echo", text="ab", times=3)
        record = await wait_until(lambda: _with_followup(discord_api, invocation["interaction_id"]))
    assert [c["type"] for c in record["callbacks"]] == [5]
    followup = record["followups"][0]
    assert followup["content"] == "here it is" and followup["attachments"][0]["text"] == "ababab"
    assert followup["interaction_metadata"]["name"] == "echo"


async def test_interaction_options_are_checked_against_the_synced_definition(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    async with mini_bot(emulator.url) as bot:
        await bot.tree.sync()
        base = {"channel_id": discord_api.channel("general"), "user_id": discord_api.user("alice")}
        for command, options in [
            ("nope", {}),
            ("echo", {}),  # missing required option
            ("echo", {"text": "x", "times": 9}),  # out of range
            ("echo", {"text": 5}),  # wrong type
            ("echo", {"text": "x", "color": "red"}),  # unknown option
        ]:
            response = await http.post(
                f"{emulator.url}/_emulator/interactions",
                json={**base, "command": command, "options": options},
            )
            assert response.status_code == 400, (command, options)


async def test_answering_after_three_seconds_gets_unknown_interaction(discord_api: EmulatorControl) -> None:
    async with DiscordEmulator(callback_deadline=0.3) as slow_emulator, httpx.AsyncClient() as http:
        api = EmulatorControl(slow_emulator.url, http)
        await api.refresh()
        async with mini_bot(slow_emulator.url) as bot:
            await bot.tree.sync()
            bot.answer_after = 0.5
            errors: asyncio.Queue[Exception] = asyncio.Queue()
            bot.tree.on_error = lambda interaction, error: errors.put_nowait(error)  # type: ignore[assignment,method-assign,misc]
            await api.invoke("general", "alice", "echo", text="late")
            error = await asyncio.wait_for(errors.get(), 5)
    original = error.__cause__ if isinstance(error, app_commands.CommandInvokeError) else error
    assert isinstance(original, discord.NotFound) and original.code == 10062


async def test_repeated_nonce_returns_the_original_message(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        general = channel(bot, discord_api, "general")
        first = await general.send("once", nonce="job-42")
        second = await general.send("once again?", nonce="job-42")
    assert first.id == second.id and second.content == "once"
    assert [m["content"] for m in await discord_api.messages("general")] == ["once"]


async def test_allowed_mentions_none_pings_nobody(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        general = channel(bot, discord_api, "general")
        bob = discord_api.user("bob")
        await general.send(f"@everyone <@{bob}>", allowed_mentions=discord.AllowedMentions.none())
        await general.send(f"@everyone <@{bob}>", allowed_mentions=discord.AllowedMentions.all())
    quiet, loud = await discord_api.messages("general")
    assert quiet["pinged"] == [] and quiet["mention_everyone"] is False
    assert set(loud["pinged"]) == {bob, "everyone"}


async def test_discord_limits_are_refused_with_discord_errors(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        general = channel(bot, discord_api, "general")
        with pytest.raises(discord.HTTPException) as too_long:
            await general.send("x" * 2001)
        files = [discord.File(io.BytesIO(b"x"), filename=f"{i}.txt") for i in range(11)]
        with pytest.raises(discord.HTTPException) as too_many_files:
            await general.send("files", files=files)
    assert too_long.value.status == 400 and too_long.value.code == 50035
    assert too_many_files.value.status == 400


async def test_retries_through_a_429_and_a_502(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        general = channel(bot, discord_api, "general")
        await discord_api.fault(
            kind="rate_limit", method="POST", path="/channels/*/messages", count=1, retry_after=0.2
        )
        await general.send("after a 429")
        await discord_api.fault(
            kind="http_error", status=502, method="POST", path="/channels/*/messages", count=1
        )
        await general.send("after a 502")
    statuses = [
        r["status"]
        for r in await discord_api.requests()
        if r["method"] == "POST" and r["path"] == f"/channels/{discord_api.channel('general')}/messages"
    ]
    assert statuses == [429, 200, 502, 200]
    assert [m["content"] for m in await discord_api.messages("general")] == ["after a 429", "after a 502"]


async def test_rate_limit_headers_keep_discord_py_inside_the_bucket(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        general = channel(bot, discord_api, "general")
        for number in range(7):
            await general.send(f"message {number}")
    creates = [
        r for r in await discord_api.requests() if r["route"] == "POST /channels/{channel_id}/messages"
    ]
    statuses = [r["status"] for r in creates]
    assert statuses == [200] * 7  # discord.py waited on X-RateLimit-Remaining: 0 instead of earning a 429


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "gateway_reconnect"},
        {"kind": "gateway_invalid_session", "resumable": True},
        {"kind": "gateway_close", "code": 1006},
    ],
)
async def test_survives_reconnects_and_replays_missed_events(
    emulator: DiscordEmulator, discord_api: EmulatorControl, fault: dict[str, Any]
) -> None:
    async with mini_bot(emulator.url) as bot:
        session = (await discord_api.refresh())["sessions"][0]["session_id"]
        await discord_api.fault(**fault)
        # Sent while the bot may be away: it must arrive, replayed on RESUME if need be.
        await discord_api.say("general", "alice", "while you were away")
        await next_message(bot, "while you were away")
        await discord_api.say("general", "alice", "and after")
        await next_message(bot, "and after")
        sessions = (await discord_api.refresh())["sessions"]
    assert [s["session_id"] for s in sessions] == [session], "the session was resumed, not replaced"


async def test_runs_on_its_own(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.discord_server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        async with httpx.AsyncClient() as http:
            api = EmulatorControl(url, http)
            await api.refresh()
            async with mini_bot(url) as bot:
                await discord_api_round_trip(api, bot)
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def discord_api_round_trip(api: EmulatorControl, bot: MiniBot) -> None:
    await api.say("general", "bob", "ping")
    seen = await next_message(bot, "ping")
    await seen.channel.send("pong")
    assert [m["content"] for m in await api.messages("general")] == ["ping", "pong"]


async def _with_followup(api: EmulatorControl, interaction_id: str) -> dict[str, Any] | None:
    record = await api.interaction(interaction_id)
    return record if record["followups"] else None


async def test_the_control_api_takes_channel_and_user_names(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    """Ids change with every start, so a person trying the bot by hand can use names (README)."""
    said = await http.post(
        f"{emulator.url}/_emulator/messages",
        json={"channel_id": "general", "author_id": "alice", "content": "hello"},
    )
    assert said.status_code == 200
    assert said.json()["channel_id"] == discord_api.channel("general")
    assert said.json()["author"]["id"] == discord_api.user("alice")
    read = await http.get(f"{emulator.url}/_emulator/channels/general/messages")
    assert [m["content"] for m in read.json()] == ["hello"]
    unknown = await http.post(
        f"{emulator.url}/_emulator/messages",
        json={"channel_id": "nowhere", "author_id": "alice", "content": "hello"},
    )
    assert unknown.status_code == 400
    command = await http.post(
        f"{emulator.url}/_emulator/interactions",
        json={"channel_id": "general", "user_id": "carol", "command": "blog new"},
    )
    assert command.status_code == 400 and "unknown channel or user" in command.text
