"""The emulator shards as Discord does: many guilds, ``GET /gateway/bot``, IDENTIFY's ``shard``, routing by
``(guild_id >> 22) % num_shards``, and the 5-second IDENTIFY concurrency rule (op 9 for an early IDENTIFY).

The rules and the docs they follow are in ``tests/fakes/discord_server/gateway.py``'s docstring.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import discord
import httpx
import pytest
import yarl
from discord.ext import commands

from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.test_discord_gateway import GUILD_MESSAGES, GUILDS, MESSAGE_CONTENT, RawGateway, raw_gateway
from tests.fakes.test_discord_gateway import standalone as standalone_emulator
from tests.harness import EmulatorControl

DIRECT_MESSAGES = 1 << 12
INTENTS = GUILDS | GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT
AUTH = {"Authorization": "Bot a-token"}


def shard_of(guild_id: str | int, shard_count: int) -> int:
    return (int(guild_id) >> 22) % shard_count


async def identify(gateway: RawGateway, shard: Any = None) -> dict[str, Any] | None:
    """Send IDENTIFY (with ``shard`` unless None); READY's ``d``, or None for an op 9 refusal."""
    data: dict[str, Any] = {"token": "a-token", "intents": INTENTS, "properties": {}}
    if shard is not None:
        data["shard"] = shard
    await gateway.send({"op": 2, "d": data})
    while True:
        payload = await gateway.recv()
        assert payload is not None, f"closed with {gateway.close_code}"
        if payload["op"] == 9:
            assert payload["d"] is False
            return None
        if payload.get("t") == "READY":
            result: dict[str, Any] = payload["d"]
            return result


async def guild_creates(gateway: RawGateway, count: int) -> list[str]:
    return [(await gateway.until("GUILD_CREATE"))["d"]["id"] for _ in range(count)]


async def contents_until(gateway: RawGateway, last: str) -> list[str]:
    """The contents of the MESSAGE_CREATEs this gateway receives, up to and including ``last``."""
    seen: list[str] = []
    while not seen or seen[-1] != last:
        seen.append((await gateway.until("MESSAGE_CREATE"))["d"]["content"])
    return seen


async def test_many_guilds_start_fast_and_spread_evenly_over_shards(http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    async with standalone_emulator("--guilds", "2000", "--max-concurrency", "2") as url:
        startup = time.monotonic() - started
        api = EmulatorControl(url, http)
        state = await api.refresh()
        assert startup < 5, startup  # ~0.5 s here, most of it Python starting
        assert len(state["guilds"]) == 2000
        assert state["guilds"][0]["id"] == state["guild_id"]
        assert len({g["id"] for g in state["guilds"]}) == 2000
        assert all(set(g["channels"]) == {"general"} for g in state["guilds"][1:])
        for shard_count in (2, 3, 4, 16):
            per_shard = collections.Counter(shard_of(g["id"], shard_count) for g in state["guilds"])
            assert max(per_shard.values()) - min(per_shard.values()) <= 1, (shard_count, per_shard)
        gateway = (await http.get(f"{url}/api/v10/gateway/bot", headers=AUTH)).json()
        assert gateway["url"] == url.replace("http://", "ws://") + "/"
        assert gateway["shards"] == 2  # about one per 1,000 guilds
        limit = gateway["session_start_limit"]
        assert (limit["total"], limit["remaining"], limit["max_concurrency"]) == (1000, 1000, 2)
        assert 0 < limit["reset_after"] <= 86_400_000
        async with raw_gateway(url) as gateway_socket:
            ready = await identify(gateway_socket, [1, 4])
            assert ready is not None and len(ready["guilds"]) == 500
            assert ready["shard"] == [1, 4]
        limit = (await http.get(f"{url}/api/v10/gateway/bot", headers=AUTH)).json()["session_start_limit"]
        assert limit["remaining"] == 999  # each IDENTIFY spends one session start
        assert (await http.get(f"{url}/api/v10/gateway/bot")).status_code == 401


async def test_the_default_world_is_one_unsharded_guild(
    emulator: DiscordEmulator, http: httpx.AsyncClient
) -> None:
    state = await EmulatorControl(emulator.url, http).refresh()
    assert [g["id"] for g in state["guilds"]] == [state["guild_id"]]
    assert state["guilds"][0]["channels"] == state["channels"]
    gateway = (await http.get(f"{emulator.url}/api/v10/gateway/bot", headers=AUTH)).json()
    assert gateway["shards"] == 1 and gateway["session_start_limit"]["max_concurrency"] == 1
    async with raw_gateway(emulator.url) as first, raw_gateway(emulator.url) as second:
        # The one-guild world keeps no IDENTIFY interval (its tests restart bots back to back).
        assert (await identify(first)) is not None and (await identify(second)) is not None
    assert (await EmulatorControl(emulator.url, http).refresh())["identify_refusals"] == []


async def test_a_shard_gets_only_its_guilds_and_their_events(http: httpx.AsyncClient) -> None:
    async with DiscordEmulator(guilds=8, max_concurrency=4) as emulator:
        api = EmulatorControl(emulator.url, http)
        state = await api.refresh()
        mine = {shard: api.guild_ids(shard, 4) for shard in range(4)}
        assert all(len(ids) == 2 for ids in mine.values())
        async with (
            raw_gateway(emulator.url) as zero,
            raw_gateway(emulator.url) as one,
            raw_gateway(emulator.url) as two,
            raw_gateway(emulator.url) as unsharded,
        ):
            # Four buckets (max_concurrency 4): shards 0, 1 and 2 may identify at once; a session
            # without ``shard`` is shard 0, whose bucket has just been used.
            for gateway, shard in ((zero, 0), (one, 1), (two, 2)):
                ready = await identify(gateway, [shard, 4])
                assert ready is not None and ready["shard"] == [shard, 4]
                assert sorted(g["id"] for g in ready["guilds"]) == sorted(mine[shard])
                assert all(g["unavailable"] for g in ready["guilds"])
                assert sorted(await guild_creates(gateway, 2)) == sorted(mine[shard])
            assert await identify(unsharded) is None  # bucket 0 again within 5 s: op 9
            one_channel = f"{mine[1][0]}/general"
            two_channel = f"{mine[2][1]}/general"
            # Interleaved posts: a leak would show up between a shard's own two messages.
            for text, channel in (
                ("a", one_channel),
                ("b", two_channel),
                ("c", one_channel),
                ("d", two_channel),
            ):
                posted = await api.say(channel, "alice", text)
                assert posted["guild_id"] in (mine[1][0], mine[2][1])
            assert await contents_until(one, "c") == ["a", "c"]
            assert await contents_until(two, "d") == ["b", "d"]
            # A DM has no guild_id: it goes to shard 0 only.
            await api.say(state["dm_channels"]["bob"], "bob", "psst")
            await api.say(one_channel, "bob", "after the DM")
            await api.say(f"{mine[0][0]}/general", "bob", "in shard 0")
            assert await contents_until(one, "after the DM") == ["after the DM"]
            assert await contents_until(zero, "in shard 0") == ["psst", "in shard 0"]

            # Slash commands and the bot's own REST work in any guild; INTERACTION_CREATE is routed too.
            app = state["application_id"]
            command = {"name": "ping", "description": "Ping", "type": 1}
            synced = await http.put(
                f"{emulator.url}/api/v10/applications/{app}/commands", json=[command], headers=AUTH
            )
            assert synced.status_code == 200
            invoked = await api.invoke(f"{mine[2][0]}/general", "bob", "ping")
            event = await two.until("INTERACTION_CREATE")
            assert event["d"]["id"] == invoked["interaction_id"] and event["d"]["guild_id"] == mine[2][0]
            assert event["d"]["member"]["user"]["username"] == "bob"
            await api.say(one_channel, "alice", "barrier")
            assert await contents_until(one, "barrier") == ["barrier"]  # no INTERACTION_CREATE before it
            channel_id = api.channel(f"{mine[2][0]}/general")
            reply = await http.post(
                f"{emulator.url}/api/v10/channels/{channel_id}/messages",
                json={"content": "pong"},
                headers=AUTH,
            )
            assert reply.status_code == 200 and reply.json()["guild_id"] == mine[2][0]
            guild = (await http.get(f"{emulator.url}/api/v10/guilds/{mine[2][0]}", headers=AUTH)).json()
            assert guild["id"] == mine[2][0] and guild["name"].startswith("Emulated Guild")
            assert [m["content"] for m in await api.messages(f"{mine[2][0]}/general")] == ["pong"]


@pytest.mark.parametrize("shard", [[4, 4], [-1, 2], [0, 0], [0], [0, 1, 2], "0,1", [True, 2], ["0", "2"]])
async def test_an_invalid_shard_closes_4010(shard: Any) -> None:
    async with DiscordEmulator(guilds=4) as emulator, raw_gateway(emulator.url) as gateway:
        await gateway.send(
            {"op": 2, "d": {"token": "t", "intents": GUILDS, "properties": {}, "shard": shard}}
        )
        assert await gateway.closed() == 4010


async def test_a_session_over_2500_guilds_closes_4011_sharding_required() -> None:
    async with DiscordEmulator(guilds=2501, max_concurrency=2) as emulator:
        async with raw_gateway(emulator.url) as gateway:
            await gateway.send({"op": 2, "d": {"token": "t", "intents": GUILDS, "properties": {}}})
            assert await gateway.closed() == 4011
        async with raw_gateway(emulator.url) as gateway:
            await gateway.send(
                {"op": 2, "d": {"token": "t", "intents": GUILDS, "properties": {}, "shard": [1, 1]}}
            )
            assert await gateway.closed() == 4010
        async with raw_gateway(emulator.url) as gateway:
            ready = await identify(gateway, [1, 2])
            assert ready is not None and len(ready["guilds"]) in (1250, 1251)


async def test_two_identifies_for_one_bucket_within_5_s_get_invalid_session(http: httpx.AsyncClient) -> None:
    async with DiscordEmulator(guilds=4, max_concurrency=2) as emulator:
        api = EmulatorControl(emulator.url, http)
        async with (
            raw_gateway(emulator.url) as first,
            raw_gateway(emulator.url) as same_bucket,
            raw_gateway(emulator.url) as other_bucket,
        ):
            assert await identify(first, [0, 4]) is not None
            # docs: "If your app exceeds this limit, Discord will respond with a Invalid Session (opcode 9)".
            assert await identify(same_bucket, [2, 4]) is None  # 2 % 2 == 0 % 2
            assert await identify(other_bucket, [1, 4]) is not None  # bucket 1 is free
            assert await identify(same_bucket, [2, 4]) is None  # still too early; the socket stays open
            state = await api.refresh()
        refusals = state["identify_refusals"]
        assert [(r["shard"], r["bucket"]) for r in refusals] == [([2, 4], 0), ([2, 4], 0)]
        assert all(r["since_last"] < 5 for r in refusals)
        assert [i["shard"] for i in state["identifies"]] == [[0, 4], [1, 4]]
        assert state["gateway_bot"]["session_start_limit"]["remaining"] == 998  # refusals spend none


class ShardedBot(commands.AutoShardedBot):
    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(
            command_prefix="!", intents=intents, shard_ids=[0, 1], shard_count=4, guild_ready_timeout=0.05
        )
        self.seen: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.ready = asyncio.Event()

    async def on_ready(self) -> None:
        self.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        self.seen.put_nowait(message)


@contextlib.asynccontextmanager
async def sharded_bot(url: str) -> AsyncIterator[ShardedBot]:
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = url + "/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url.replace("http://", "ws://") + "/")
    bot = ShardedBot()
    task = asyncio.create_task(bot.start("any-token-works"))
    try:
        await asyncio.wait_for(bot.ready.wait(), 30)
        yield bot
    finally:
        await bot.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


async def test_unmodified_discord_py_auto_sharded_bot_gets_only_its_shards(http: httpx.AsyncClient) -> None:
    async with DiscordEmulator(guilds=8) as emulator:  # Discord's 5 s IDENTIFY interval, max_concurrency 1
        api = EmulatorControl(emulator.url, http)
        await api.refresh()
        async with sharded_bot(emulator.url) as bot:
            ours = set(api.guild_ids(0, 4)) | set(api.guild_ids(1, 4))
            assert {str(g.id) for g in bot.guilds} == ours and len(ours) == 4
            assert {g.shard_id for g in bot.guilds} == {0, 1}
            other = api.guild_ids(3, 4)[0]
            await api.say(f"{other}/general", "alice", "for shard 3")
            target = api.guild_ids(1, 4)[0]
            await api.say(f"{target}/general", "alice", "for shard 1")
            message = await asyncio.wait_for(bot.seen.get(), 10)
            assert (message.content, str(message.guild.id if message.guild else None)) == (
                "for shard 1",
                target,
            )
            assert message.guild is not None and message.guild.shard_id == 1
            await asyncio.sleep(0.2)
            assert bot.seen.empty(), "a message of shard 3's guild reached a bot running shards 0 and 1"
            state = await api.refresh()
        assert state["identify_refusals"] == [], "discord.py spaced its IDENTIFYs"
        identifies = state["identifies"]
        assert [i["shard"] for i in identifies] == [[0, 4], [1, 4]]
        assert identifies[1]["at"] - identifies[0]["at"] >= 5
