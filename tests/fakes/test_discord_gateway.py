"""The emulator's gateway refuses what Discord's does: intents, heartbeats, sessions, protocol, wire format.

Plain websocket clients written here (and the minimal discord.py bot of ``test_discord_server``) check each
rule; the docs each rule follows are named in ``tests/fakes/discord_server/gateway.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import sys
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.test_discord_server import ROOT, mini_bot, next_message
from tests.harness import EmulatorControl, wait_until

GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
MESSAGE_CONTENT = 1 << 15
ZLIB_SUFFIX = b"\x00\x00\xff\xff"


class RawGateway:
    """A bare gateway client: sends what it is told, decodes what comes (zlib-stream, JSON or ETF)."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse, compress: bool, etf: bool) -> None:
        self.socket = socket
        self.compress = compress
        self.etf = etf
        self.frames: list[aiohttp.WSMessage] = []
        self._inflator = zlib.decompressobj()
        self._buffer = bytearray()
        self.close_code: int | None = None

    async def recv(self, within: float = 5.0) -> dict[str, Any] | None:
        """The next payload, or None once the server closed (``close_code`` says how)."""
        async with asyncio.timeout(within):
            while True:
                frame = await self.socket.receive()
                self.frames.append(frame)
                if frame.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                ):
                    self.close_code = self.socket.close_code
                    return None
                data: bytes | str = frame.data
                if self.compress:
                    assert frame.type == aiohttp.WSMsgType.BINARY
                    self._buffer += data
                    if not bytes(self._buffer).endswith(ZLIB_SUFFIX):
                        continue
                    data = self._inflator.decompress(bytes(self._buffer))
                    self._buffer.clear()
                if self.etf:
                    return etf_decode(data if isinstance(data, bytes) else data.encode())
                return json.loads(data)

    async def until(self, event: str, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                payload = await self.recv(within)
                assert payload is not None, f"closed with {self.close_code} while waiting for {event}"
                if payload.get("t") == event:
                    return payload

    async def closed(self, within: float = 5.0) -> int | None:
        """Read until the server closes; its close code."""
        async with asyncio.timeout(within):
            while await self.recv(within) is not None:
                pass
        return self.close_code

    async def send(self, payload: dict[str, Any]) -> None:
        await self.socket.send_str(json.dumps(payload))

    async def identify(
        self, intents: int = GUILDS | GUILD_MESSAGES, token: str = "a-token"
    ) -> dict[str, Any]:
        await self.send({"op": 2, "d": {"token": token, "intents": intents, "properties": {}}})
        ready = await self.until("READY")
        return ready["d"]


@contextlib.asynccontextmanager
async def raw_gateway(
    url: str, *, compress: bool = False, etf: bool = False, query: str | None = None
) -> AsyncIterator[RawGateway]:
    params = query or (
        "v=10&encoding=" + ("etf" if etf else "json") + ("&compress=zlib-stream" if compress else "")
    )
    async with aiohttp.ClientSession() as session:
        socket = await session.ws_connect(url.replace("http://", "ws://") + "/?" + params, autoping=True)
        try:
            yield RawGateway(socket, compress, etf)
        finally:
            await socket.close()


def etf_decode(data: bytes) -> Any:
    """A small ETF reader, written from erts' external term format spec, independent of the emulator's."""

    def term(at: int) -> tuple[Any, int]:
        tag = data[at]
        at += 1
        if tag == 97:
            return data[at], at + 1
        if tag == 98:
            return struct.unpack(">i", data[at : at + 4])[0], at + 4
        if tag == 119:
            size = data[at]
            name = data[at + 1 : at + 1 + size].decode()
            return {"nil": None, "true": True, "false": False}.get(name, name), at + 1 + size
        if tag == 109:
            size = struct.unpack(">I", data[at : at + 4])[0]
            return data[at + 4 : at + 4 + size].decode(), at + 4 + size
        if tag == 106:
            return [], at
        if tag == 108:
            size = struct.unpack(">I", data[at : at + 4])[0]
            at += 4
            items = []
            for _ in range(size):
                item, at = term(at)
                items.append(item)
            return items, at + 1
        if tag == 116:
            size = struct.unpack(">I", data[at : at + 4])[0]
            at += 4
            result = {}
            for _ in range(size):
                key, at = term(at)
                result[key], at = term(at)
            return result, at
        raise AssertionError(f"unexpected ETF tag {tag}")

    assert data[0] == 131
    return term(1)[0]


def etf_heartbeat() -> bytes:
    """``{"op": 1, "d": nil}`` in ETF, with binary (string) keys as Discord requires of clients."""
    return (
        bytes([131, 116]) + struct.pack(">I", 2)
        + bytes([109]) + struct.pack(">I", 2) + b"op" + bytes([97, 1])
        + bytes([109]) + struct.pack(">I", 1) + b"d" + bytes([119, 3]) + b"nil"
    )  # fmt: skip


@contextlib.asynccontextmanager
async def standalone(*options: str) -> AsyncIterator[str]:
    """``python -m tests.fakes.discord_server`` with ``options``; yields its URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.discord_server", "--port", "0", *options,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        yield (await asyncio.wait_for(process.stdout.readline(), 20)).decode().split()[-1]
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


# -- wire format -----------------------------------------------------------------------------------------


async def test_hello_and_ack_carry_op_d_s_t(emulator: DiscordEmulator) -> None:
    async with raw_gateway(emulator.url) as gateway:
        hello = await gateway.recv()
        await gateway.send({"op": 1, "d": None})
        ack = await gateway.recv()
    assert hello == {"op": 10, "d": hello["d"], "s": None, "t": None}
    assert hello["d"]["heartbeat_interval"] == 41250
    assert ack == {"op": 11, "d": None, "s": None, "t": None}


async def test_zlib_stream_compresses_every_frame(emulator: DiscordEmulator) -> None:
    async with raw_gateway(emulator.url, compress=True) as gateway:
        hello = await gateway.recv()
        ready = await gateway.identify()
    assert hello is not None and hello["op"] == 10 and ready["session_id"]
    payload_frames = [f for f in gateway.frames if f.type != aiohttp.WSMsgType.CLOSE]
    assert payload_frames and all(f.type == aiohttp.WSMsgType.BINARY for f in payload_frames)
    assert all(f.data.endswith(ZLIB_SUFFIX) for f in payload_frames)


async def test_discord_py_reads_the_compressed_stream(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        await discord_api.say("general", "alice", "through zlib")
        seen = await next_message(bot, "through zlib")
        state = await discord_api.refresh()
    assert seen.author.name == "alice"
    assert state["sessions"][0]["compress"] == "zlib-stream"  # what discord.py asked for, and was given


async def test_binary_json_frames_from_the_client_are_read(emulator: DiscordEmulator) -> None:
    async with raw_gateway(emulator.url) as gateway:
        await gateway.recv()
        identify = {"op": 2, "d": {"token": "t", "intents": GUILDS, "properties": {}}}
        await gateway.socket.send_bytes(json.dumps(identify).encode())
        ready = await gateway.until("READY")
    assert ready["d"]["session_id"]


async def test_etf_encoding_is_spoken_both_ways(emulator: DiscordEmulator) -> None:
    async with raw_gateway(emulator.url, etf=True) as gateway:
        hello = await gateway.recv()
        await gateway.socket.send_bytes(etf_heartbeat())
        ack = await gateway.recv()
        atom_keys = bytes([131, 116]) + struct.pack(">I", 1) + bytes([119, 2]) + b"op" + bytes([97, 1])
        await gateway.socket.send_bytes(atom_keys)
        code = await gateway.closed()
    assert gateway.frames[0].type == aiohttp.WSMsgType.BINARY
    assert (
        hello == {"op": 10, "d": hello["d"], "s": None, "t": None}
        and hello["d"]["heartbeat_interval"] == 41250
    )
    assert ack == {"op": 11, "d": None, "s": None, "t": None}
    assert code == 4002  # docs: "Using atom keys will result in a 4002 decode error"


async def test_guild_create_has_the_documented_guild_fields(emulator: DiscordEmulator) -> None:
    async with raw_gateway(emulator.url) as gateway:
        await gateway.identify()
        guild = (await gateway.until("GUILD_CREATE"))["d"]
    documented = {
        "id", "name", "icon", "splash", "discovery_splash", "owner_id", "afk_channel_id", "afk_timeout",
        "verification_level", "default_message_notifications", "explicit_content_filter", "roles", "emojis",
        "features", "mfa_level", "application_id", "system_channel_id", "system_channel_flags",
        "rules_channel_id", "vanity_url_code", "description", "banner", "premium_tier", "preferred_locale",
        "public_updates_channel_id", "nsfw_level", "premium_progress_bar_enabled", "safety_alerts_channel_id",
        "joined_at", "large", "unavailable", "member_count", "voice_states", "members", "channels",
        "threads", "presences", "stage_instances", "guild_scheduled_events", "soundboard_sounds",
    }  # fmt: skip
    assert documented <= set(guild)


async def test_get_gateway_needs_no_token(emulator: DiscordEmulator, http: httpx.AsyncClient) -> None:
    response = await http.get(f"{emulator.api_base}/gateway")
    bot_route = await http.get(f"{emulator.api_base}/gateway/bot")
    assert response.status_code == 200 and response.json() == {"url": emulator.gateway_url}
    assert bot_route.status_code == 401  # Get Gateway Bot does need one


# -- intents ---------------------------------------------------------------------------------------------


async def test_events_go_only_to_sessions_with_their_intent(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with raw_gateway(emulator.url) as deaf, raw_gateway(emulator.url) as hearing:
        await deaf.identify(GUILDS)
        await hearing.identify(GUILDS | GUILD_MESSAGES)
        await discord_api.say("general", "alice", "who hears this")
        heard = await hearing.until("MESSAGE_CREATE")
        await deaf.send({"op": 1, "d": None})
        events = []
        while (payload := await deaf.recv()) is not None and payload["op"] != 11:
            events.append(payload.get("t"))
    assert heard["d"]["content"] == ""  # no MESSAGE_CONTENT intent: the text is blanked
    assert "MESSAGE_CREATE" not in events


async def test_message_content_intent_decides_what_a_session_reads(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with raw_gateway(emulator.url) as without, raw_gateway(emulator.url) as with_intent:
        await without.identify(GUILDS | GUILD_MESSAGES)
        await with_intent.identify(GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT)
        await discord_api.say("general", "alice", "secret words")
        await discord_api.mention("general", "bob", "you are mentioned")
        blind = [(await without.until("MESSAGE_CREATE"))["d"]["content"] for _ in range(2)]
        sighted = [(await with_intent.until("MESSAGE_CREATE"))["d"]["content"] for _ in range(2)]
    assert blind == ["", f"<@{discord_api.bot_id}> you are mentioned"]  # mentions of the bot stay readable
    assert sighted == ["secret words", f"<@{discord_api.bot_id}> you are mentioned"]


@pytest.mark.parametrize(("intent", "granted"), [(GUILD_PRESENCES, {"members"}), (GUILD_MEMBERS, set())])
async def test_ungranted_privileged_intents_close_with_4014(intent: int, granted: set[str]) -> None:
    async with DiscordEmulator(privileged_intents=granted) as emulator, raw_gateway(emulator.url) as gateway:
        await gateway.recv()
        await gateway.send({"op": 2, "d": {"token": "t", "intents": GUILDS | intent, "properties": {}}})
        assert await gateway.closed() == 4014


async def test_guild_create_members_need_guild_presences(emulator: DiscordEmulator) -> None:
    async with raw_gateway(emulator.url) as plain, raw_gateway(emulator.url) as present:
        await plain.identify(GUILDS)
        await present.identify(GUILDS | GUILD_PRESENCES)
        few = (await plain.until("GUILD_CREATE"))["d"]
        all_ = (await present.until("GUILD_CREATE"))["d"]
    assert len(few["members"]) == 1 and few["member_count"] == 4 and few["presences"] == []
    assert len(all_["members"]) == 4 and len(all_["presences"]) == 4


async def test_standalone_emulator_takes_a_token_and_privileged_intents() -> None:
    async with standalone("--require-token", "the-token", "--privileged-intents", "none") as url:
        async with httpx.AsyncClient() as http:
            wrong = await http.get(f"{url}/api/v10/users/@me", headers={"Authorization": "Bot other"})
            right = await http.get(f"{url}/api/v10/users/@me", headers={"Authorization": "Bot the-token"})
        codes = []
        for token, intents in [("other", GUILDS), ("the-token", GUILDS | MESSAGE_CONTENT)]:
            async with raw_gateway(url) as gateway:
                await gateway.recv()
                await gateway.send({"op": 2, "d": {"token": token, "intents": intents, "properties": {}}})
                codes.append(await gateway.closed())
        async with raw_gateway(url) as gateway:
            ready = await gateway.identify(GUILDS | GUILD_MESSAGES, token="the-token")
    assert (wrong.status_code, right.status_code) == (401, 200)
    assert codes == [4004, 4014]
    assert ready["application"]["flags"] == 0  # no privileged intent granted


# -- heartbeats and sessions -----------------------------------------------------------------------------


async def test_a_silent_client_is_disconnected_and_may_resume() -> None:
    async with DiscordEmulator(heartbeat_interval=0.2) as emulator:
        async with raw_gateway(emulator.url) as gateway:
            hello = await gateway.recv()
            ready = await gateway.identify()
            started = time.monotonic()
            code = await gateway.closed(within=3)
            waited = time.monotonic() - started
        async with raw_gateway(emulator.url) as again:
            await again.recv()
            await again.send(
                {"op": 6, "d": {"token": "a-token", "session_id": ready["session_id"], "seq": 1}}
            )
            resumed = await again.until("RESUMED")
    assert hello is not None and hello["d"]["heartbeat_interval"] == 200
    assert code == 4000 and waited < 1.0
    assert resumed["d"] == {}


async def test_a_blocked_discord_py_loop_loses_its_connection_and_resumes(
    http: httpx.AsyncClient,
) -> None:
    # The emulator runs in its own process: the bot's stalled loop must not stall Discord too.
    async with standalone("--heartbeat-interval", "0.3") as url:
        api = EmulatorControl(url, http)
        await api.refresh()
        async with mini_bot(url) as bot:
            session = (await api.refresh())["sessions"][0]["session_id"]
            time.sleep(1.0)  # noqa: ASYNC251 - the point: a bot that blocks its event loop stops heartbeating
            await api.say("general", "alice", "after the stall")
            await next_message(bot, "after the stall")
            state = await api.refresh()
    assert [c["by"] for c in state["closed"] if c["code"] == 4000] == ["server"]
    assert [s["session_id"] for s in state["sessions"]] == [session], "discord.py resumed the same session"


async def test_sessions_expire() -> None:
    async with DiscordEmulator(session_timeout=0.2) as emulator:
        async with raw_gateway(emulator.url) as gateway:
            ready = await gateway.identify()
            await gateway.socket.close(code=4000)
        await asyncio.sleep(0.4)
        async with raw_gateway(emulator.url) as again:
            await again.recv()
            await again.send(
                {"op": 6, "d": {"token": "a-token", "session_id": ready["session_id"], "seq": 1}}
            )
            answer = await again.recv()
    assert answer is not None and (answer["op"], answer["d"]) == (9, False)


@pytest.mark.parametrize(("code", "resumable"), [(1000, False), (1001, False), (4000, True)])
async def test_closing_with_1000_or_1001_ends_the_session(
    emulator: DiscordEmulator, code: int, resumable: bool
) -> None:
    async with raw_gateway(emulator.url) as gateway:
        ready = await gateway.identify()
        await gateway.socket.close(code=code)
    await wait_until(lambda: _all_disconnected(emulator))
    async with raw_gateway(emulator.url) as again:
        await again.recv()
        await again.send({"op": 6, "d": {"token": "a-token", "session_id": ready["session_id"], "seq": 1}})
        if resumable:
            assert (await again.until("RESUMED"))["d"] == {}
        else:
            answer = await again.recv()
            assert answer is not None and (answer["op"], answer["d"]) == (9, False)


async def _all_disconnected(emulator: DiscordEmulator) -> bool:
    return not emulator._sockets


@pytest.mark.parametrize(
    ("before_identify", "payloads", "code"),
    [
        (False, ["{not json"], 4002),
        (False, [json.dumps({"op": 1, "d": None, "pad": "x" * 5000})], 4002),
        (False, [json.dumps({"op": 5, "d": {}})], 4001),
        (False, [json.dumps({"op": "2"})], 4001),
        (False, [json.dumps([1, 2])], 4002),
        (True, [json.dumps({"op": 8, "d": {"guild_id": "1", "query": "", "limit": 0}})], 4003),
        (False, [json.dumps({"op": 2, "d": {"token": "t", "intents": 1, "properties": {}}})], 4005),
        (True, [json.dumps({"op": 2, "d": {"token": "t", "intents": 1 << 40, "properties": {}}})], 4013),
        (True, [json.dumps({"op": 2, "d": {"token": "t", "properties": {}}})], 4013),
        (True, [json.dumps({"op": 2, "d": {"token": "t", "intents": 1, "shard": [1, 1]}})], 4010),
        (False, [json.dumps({"op": 3, "d": {"status": "online", "afk": False}})] * 121, 4008),
    ],
)
async def test_protocol_errors_close_with_discord_codes(
    emulator: DiscordEmulator, before_identify: bool, payloads: list[str], code: int
) -> None:
    async with raw_gateway(emulator.url) as gateway:
        await gateway.recv()
        if not before_identify:
            await gateway.identify()
        for payload in payloads:
            await gateway.socket.send_str(payload)
        assert await gateway.closed() == code
    async with raw_gateway(emulator.url) as after:  # the emulator survived it
        assert (await after.identify())["session_id"]


async def test_an_unknown_api_version_closes_with_4012(emulator: DiscordEmulator) -> None:
    async with raw_gateway(emulator.url, query="v=6&encoding=json") as gateway:
        assert await gateway.closed() == 4012


async def test_resume_with_a_sequence_never_sent_closes_with_4007(emulator: DiscordEmulator) -> None:
    async with raw_gateway(emulator.url) as gateway:
        ready = await gateway.identify()
        await gateway.socket.close(code=4000)
    async with raw_gateway(emulator.url) as again:
        await again.recv()
        await again.send({"op": 6, "d": {"token": "a-token", "session_id": ready["session_id"], "seq": 999}})
        assert await again.closed() == 4007
