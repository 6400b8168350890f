"""The gateway (``/``): HELLO, IDENTIFY, RESUME, heartbeats, intents, compression, dispatches, faults.

Rules (docs: events/gateway.md, events/gateway-events.md, topics/opcodes-and-status-codes.md):
* HELLO ``{"op":10,"d":{"heartbeat_interval"},"s":null,"t":null}``; every op 1 gets an op 11 ACK (with
  ``s``/``t``/``d`` null). A connection that sends no heartbeat within 1.5 intervals is closed ("If your
  app fails to send a heartbeat event in time, your connection will be closed and you will be forced to
  Resume"): the session stays resumable. No close code is documented for it; clients resume on 4000.
* Close codes: 4001 unknown opcode, 4002 undecodable payload (invalid JSON/ETF, over 4096 bytes),
  4003 a payload before IDENTIFY (heartbeats excepted), 4004 a bad token, 4005 a second IDENTIFY,
  4007 a RESUME with a sequence never sent, 4008 more than 120 payloads per 60 s (heartbeats excepted,
  as discord.py's own gateway limiter leaves room for them), 4010 a bad shard, 4011 a session that would
  hold more than 2,500 guilds, 4012 an unknown API version, 4013 invalid intents, 4014 a privileged
  intent the application was not granted.
* Sharding ("Sharding"): IDENTIFY's ``shard: [shard_id, num_shards]`` must have
  ``0 <= shard_id < num_shards`` (else 4010); "Each shard can only support a maximum of 2500 guilds"
  (more: 4011, also without ``shard``). READY lists, and GUILD_CREATEs follow for, only the shard's guilds
  (``(guild_id >> 22) % num_shards == shard_id``), and READY echoes ``shard``. Every event with a
  ``guild_id`` goes only to the sessions of its shard; events without one (DMs) "will only be sent to the
  first shard". A session without ``shard`` gets everything.
* IDENTIFY concurrency ("Identifying", "Rate Limiting", "Max Concurrency"): per 5 s at most one IDENTIFY
  per bucket ``shard_id % max_concurrency``, counted across all connections; "If your app exceeds this
  limit, Discord will respond with a Invalid Session (opcode 9)" (``d: false``; the connection stays
  open, unidentified, and no session start is spent). Each refusal is recorded
  (``identify_refusals``). Accepted IDENTIFYs count against the daily ``session_start_limit``; at 0
  Discord resets the token ("Upon hitting this limit ... the bot token will be reset"): further
  IDENTIFYs close with 4004.
* Sessions: a client that closes with 1000/1001 ends its session ("your session will be invalidated");
  any other disconnect leaves it resumable for ``session_timeout`` seconds ("timeout after a few
  minutes"); RESUME of an unknown or expired session gets op 9 ``false``.
* Intents: each event goes only to sessions that asked for its intent ("List of Intents"); without
  MESSAGE_CONTENT, message content, embeds, attachments, components and polls are blanked except in DMs,
  the bot's own messages and messages that mention it ("Message Content Intent"). GUILD_CREATE carries
  only the bot's own member unless the session has GUILD_PRESENCES (events/gateway-events.md, Guild Create).
* Transport: ``compress=zlib-stream`` (one zlib context per connection, each payload flushed with
  Z_SYNC_FLUSH and sent as a binary frame); ``encoding=etf`` (see :mod:`.etf`). Client payloads may
  come in text or binary frames. ``zstd-stream`` is served uncompressed (text frames) when the
  ``zstandard`` package is missing, which every client here accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from tests.fakes.discord_server import etf
from tests.fakes.discord_server.world import StoredMessage

try:  # pragma: no cover - optional
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None

HEARTBEAT_ACK_DELAY = 0.03
HEARTBEAT_GRACE = 1.5
MAX_PAYLOAD = 4096
GATEWAY_LIMIT = 120
GATEWAY_PERIOD = 60.0
CLIENT_OPCODES = {1, 2, 3, 4, 6, 8, 31, 43}
API_VERSIONS = {"9", "10"}
MAX_GUILDS_PER_SHARD = 2500
SESSION_START_PERIOD = 86400.0

# Intents (docs: events/gateway.md, "List of Intents").
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_REACTIONS = 1 << 10
GUILD_MESSAGE_TYPING = 1 << 11
DIRECT_MESSAGES = 1 << 12
DIRECT_MESSAGE_REACTIONS = 1 << 13
DIRECT_MESSAGE_TYPING = 1 << 14
MESSAGE_CONTENT = 1 << 15
KNOWN_INTENTS = sum(1 << bit for bit in (*range(17), 20, 21, 24, 25))
PRIVILEGED = {"members": GUILD_MEMBERS, "presences": GUILD_PRESENCES, "message_content": MESSAGE_CONTENT}
# Application flags for granted privileged intents (docs: resources/application.md, "Application Flags").
PRIVILEGED_FLAGS = {"presences": 1 << 13, "members": 1 << 15, "message_content": 1 << 19}
#: event -> (intent in a guild, intent in DMs); events not listed go to every session.
EVENT_INTENTS = {
    **dict.fromkeys(
        (
            "GUILD_CREATE",
            "GUILD_UPDATE",
            "GUILD_DELETE",
            "GUILD_ROLE_CREATE",
            "GUILD_ROLE_UPDATE",
            "GUILD_ROLE_DELETE",
            "CHANNEL_CREATE",
            "CHANNEL_UPDATE",
            "CHANNEL_DELETE",
            "THREAD_CREATE",
            "THREAD_UPDATE",
            "THREAD_DELETE",
            "THREAD_LIST_SYNC",
            "THREAD_MEMBER_UPDATE",
        ),
        (GUILDS, GUILDS),
    ),
    "CHANNEL_PINS_UPDATE": (GUILDS, DIRECT_MESSAGES),
    **dict.fromkeys(("GUILD_MEMBER_ADD", "GUILD_MEMBER_UPDATE", "GUILD_MEMBER_REMOVE"), (GUILD_MEMBERS,) * 2),
    "PRESENCE_UPDATE": (GUILD_PRESENCES, GUILD_PRESENCES),
    **dict.fromkeys(
        ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "MESSAGE_DELETE_BULK"),
        (GUILD_MESSAGES, DIRECT_MESSAGES),
    ),
    **dict.fromkeys(
        (
            "MESSAGE_REACTION_ADD",
            "MESSAGE_REACTION_REMOVE",
            "MESSAGE_REACTION_REMOVE_ALL",
            "MESSAGE_REACTION_REMOVE_EMOJI",
        ),
        (GUILD_MESSAGE_REACTIONS, DIRECT_MESSAGE_REACTIONS),
    ),
    "TYPING_START": (GUILD_MESSAGE_TYPING, DIRECT_MESSAGE_TYPING),
}


class Connection:
    """One websocket: its encoding, its compression context, its heartbeats."""

    def __init__(self, socket: web.WebSocketResponse, encoding: str, compress: str | None) -> None:
        self.socket = socket
        self.encoding = encoding
        self.compress = compress
        self._zlib = zlib.compressobj() if compress == "zlib-stream" else None
        self._zstd = (
            zstandard.ZstdCompressor().compressobj() if compress == "zstd-stream" and zstandard else None
        )
        self._lock = asyncio.Lock()
        self.session: Session | None = None
        self.identified = False
        self.last_heartbeat = time.monotonic()
        self.received: deque[float] = deque()
        self.closed_by_server = False
        self.sent_code: int | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def send(self, payload: dict[str, Any]) -> None:
        """Encode, compress and send one payload (in order: a zlib stream must arrive as compressed)."""
        async with self._lock:
            if self.socket.closed:
                return
            data: str | bytes = etf.encode(payload) if self.encoding == "etf" else json.dumps(payload)
            with contextlib.suppress(ConnectionError, RuntimeError):
                if self._zlib is not None:
                    raw = data.encode() if isinstance(data, str) else data
                    await self.socket.send_bytes(
                        self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    )
                elif self._zstd is not None:
                    raw = data.encode() if isinstance(data, str) else data
                    await self.socket.send_bytes(self._zstd.compress(raw) + self._zstd.flush(1))
                elif isinstance(data, bytes):
                    await self.socket.send_bytes(data)
                else:
                    await self.socket.send_str(data)

    async def close(self, code: int, reason: str) -> None:
        self.closed_by_server = True
        self.sent_code = code
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.socket.close(code=code, message=reason.encode())


@dataclass
class Session:
    id: str
    intents: int
    token: str = ""
    shard: tuple[int, int] | None = None
    seq: int = 0
    connection: Connection | None = None
    buffer: list[dict[str, Any]] = field(default_factory=list)
    disconnected_at: float | None = None

    @property
    def socket(self) -> web.WebSocketResponse | None:
        return self.connection.socket if self.connection is not None else None

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.socket.closed


class Close(Exception):
    """Close the connection with this gateway close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class GatewayMixin:
    """The gateway half of :class:`~tests.fakes.discord_server.server.DiscordEmulator`."""

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await socket.prepare(request)
        self._sockets.add(socket)
        encoding = request.query.get("encoding", "json")
        compress = request.query.get("compress")
        connection = Connection(socket, encoding if encoding in ("json", "etf") else "json", compress or None)
        watchdog = asyncio.create_task(self._watch_heartbeats(connection))
        try:
            if request.query.get("v", "10") not in API_VERSIONS:
                raise Close(4012, "Invalid API version")
            if encoding not in ("json", "etf"):
                raise Close(4002, "Error while decoding payload.")
            await connection.send(
                {
                    "op": 10,
                    "d": {"heartbeat_interval": int(self.heartbeat_interval * 1000), "_trace": ["emulator"]},
                    "s": None,
                    "t": None,
                }
            )
            async for frame in socket:
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                await self._gateway_payload(connection, self._decode(connection, frame))
        except Close as close:
            await connection.close(close.code, close.reason)
        finally:
            watchdog.cancel()
            self._sockets.discard(socket)
            session = connection.session
            self.closed_connections.append(
                {
                    "session_id": session.id if session is not None else None,
                    "code": connection.sent_code if connection.closed_by_server else socket.close_code,
                    "by": "server" if connection.closed_by_server else "client",
                }
            )
            if session is not None and session.connection is connection:
                session.connection = None
                session.disconnected_at = time.monotonic()
                if not connection.closed_by_server and socket.close_code in (1000, 1001):
                    # docs: "When you close the connection with close code 1000 or 1001, your session
                    # will be invalidated".
                    self.sessions.pop(session.id, None)
        return socket

    @staticmethod
    def _decode(connection: Connection, frame: Any) -> dict[str, Any]:
        raw = frame.data.encode() if frame.type == WSMsgType.TEXT else frame.data
        if len(raw) > MAX_PAYLOAD:
            raise Close(4002, "Error while decoding payload.")
        try:
            payload = etf.decode(raw) if connection.encoding == "etf" else json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Close(4002, "Error while decoding payload.") from exc
        if not isinstance(payload, dict):
            raise Close(4002, "Error while decoding payload.")
        return payload

    async def _gateway_payload(self, connection: Connection, payload: dict[str, Any]) -> None:
        op, data = payload.get("op"), payload.get("d")
        if op not in CLIENT_OPCODES or isinstance(op, bool):
            raise Close(4001, "Unknown opcode.")
        now = time.monotonic()
        if op != 1:
            received = connection.received
            received.append(now)
            while received and now - received[0] > GATEWAY_PERIOD:
                received.popleft()
            if len(received) > GATEWAY_LIMIT:
                raise Close(4008, "Rate limited.")
        if op == 1:
            connection.last_heartbeat = now
            # Discord's ACK takes tens of milliseconds; an instant one races discord.py's keep-alive
            # thread, which then measures the ACK against the previous heartbeat ("can't keep up").
            # The wait holds only the ACK, not the payloads after it (an IDENTIFY right after a
            # heartbeat is seen when it arrives, which the 5-second IDENTIFY rule depends on).
            task = asyncio.create_task(self._acknowledge_heartbeat(connection))
            connection.tasks.add(task)
            task.add_done_callback(connection.tasks.discard)
        elif op == 2:
            if connection.identified:
                raise Close(4005, "Already authenticated.")
            await self._identify(connection, data if isinstance(data, dict) else {})
        elif op == 6:
            if connection.identified:
                raise Close(4005, "Already authenticated.")
            await self._resume(connection, data if isinstance(data, dict) else {})
        elif not connection.identified:
            raise Close(4003, "Not authenticated.")
        elif op == 8:
            await self._member_chunk(connection, data if isinstance(data, dict) else {})
        # op 3 (presence), 4 (voice state), 31, 43: accepted, nothing to model.

    @staticmethod
    async def _acknowledge_heartbeat(connection: Connection) -> None:
        await asyncio.sleep(HEARTBEAT_ACK_DELAY)
        await connection.send({"op": 11, "d": None, "s": None, "t": None})

    async def _watch_heartbeats(self, connection: Connection) -> None:
        while not connection.socket.closed:
            deadline = connection.last_heartbeat + self.heartbeat_interval * HEARTBEAT_GRACE
            delay = deadline - time.monotonic()
            if delay <= 0:
                await connection.close(4000, "Heartbeat timed out.")
                return
            await asyncio.sleep(delay)

    async def _identify(self, connection: Connection, data: dict[str, Any]) -> None:
        token = str(data.get("token") or "")
        if not token or (self.valid_tokens is not None and token not in self.valid_tokens):
            raise Close(4004, "Authentication failed.")
        shard = _shard(data.get("shard"))
        world = self.world
        guild_ids = [
            guild_id
            for guild_id in world.guilds
            if shard is None or world.shard_of(guild_id, shard[1]) == shard[0]
        ]
        if len(guild_ids) > MAX_GUILDS_PER_SHARD:
            raise Close(4011, "Sharding required.")
        intents = data.get("intents")
        if isinstance(intents, str) and intents.isdigit():
            intents = int(intents)
        if not isinstance(intents, int) or isinstance(intents, bool) or intents & ~KNOWN_INTENTS:
            raise Close(4013, "Invalid intent(s).")
        for name, bit in PRIVILEGED.items():
            if intents & bit and name not in self.privileged_intents:
                raise Close(4014, "Disallowed intent(s).")
        if not self._identify_allowed(shard):
            await connection.send({"op": 9, "d": False, "s": None, "t": None})
            return
        session = Session(
            id=secrets.token_hex(16), intents=intents, token=token, connection=connection, shard=shard
        )
        self.sessions[session.id] = session
        connection.session = session
        connection.identified = True
        await self._send(
            session,
            "READY",
            {
                "v": 10,
                "user": {**world.bot_user, "verified": True, "mfa_enabled": False, "flags": 0},
                "guilds": [{"id": str(guild_id), "unavailable": True} for guild_id in guild_ids],
                "session_id": session.id,
                "resume_gateway_url": self.gateway_url,
                "application": {"id": str(world.application_id), "flags": self._application_flags()},
                "private_channels": [],
                "relationships": [],
                "user_settings": {},
                "session_type": "normal",
                "shard": list(shard or (0, 1)),
                "_trace": ["emulator"],
            },
        )
        if intents & GUILDS:
            for guild_id in guild_ids:
                await self._send(session, "GUILD_CREATE", self._guild_create(intents, guild_id))

    def _identify_allowed(self, shard: tuple[int, int] | None) -> bool:
        """Apply the IDENTIFY concurrency rule and the daily session start limit (module docstring)."""
        now = time.monotonic()
        if now - self.session_start_reset >= SESSION_START_PERIOD:
            self.session_start_reset = now
            self.session_starts_remaining = self.session_start_total
        if self.session_starts_remaining <= 0:
            raise Close(4004, "Authentication failed.")
        bucket = (shard[0] if shard else 0) % self.max_concurrency
        last = self.identified_at.get(bucket)
        if last is not None and now - last < self.identify_interval:
            self.identify_refusals.append(
                {
                    "shard": list(shard) if shard else None,
                    "bucket": bucket,
                    "at": now,
                    "since_last": now - last,
                }
            )
            return False
        self.identified_at[bucket] = now
        self.session_starts_remaining -= 1
        self.identifies.append({"shard": list(shard) if shard else None, "bucket": bucket, "at": now})
        return True

    def _guild_create(self, intents: int, guild_id: int | None = None) -> dict[str, Any]:
        guild = self.world.guild(guild_id)
        if not intents & GUILD_PRESENCES:
            # Guild Create: without GUILD_PRESENCES, "members and presences ... will only contain your bot
            # and users in voice channels".
            guild["members"] = [m for m in guild["members"] if int(m["user"]["id"]) == self.world.bot_id]
        else:
            guild["presences"] = [
                {"user": {"id": m["user"]["id"]}, "status": "online", "activities": [], "client_status": {}}
                for m in guild["members"]
            ]
        return guild

    def _session_alive(self, session: Session, now: float) -> bool:
        if session.connected or session.disconnected_at is None:
            return True
        return now - session.disconnected_at <= self.session_timeout

    async def _resume(self, connection: Connection, data: dict[str, Any]) -> None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is not None and not self._session_alive(session, time.monotonic()):
            self.sessions.pop(session.id, None)
            session = None
        if session is None or str(data.get("token") or "") != session.token:
            await connection.send({"op": 9, "d": False, "s": None, "t": None})
            return
        seen = int(data.get("seq") or 0)
        if seen > session.seq:
            raise Close(4007, "Invalid seq.")
        previous = session.connection
        session.connection = connection
        session.disconnected_at = None
        connection.session = session
        connection.identified = True
        if previous is not None and previous is not connection:
            await previous.close(4000, "Session resumed elsewhere.")
        for event in session.buffer:
            if event["s"] > seen:
                await connection.send(event)
        await self._send(session, "RESUMED", {})

    async def _member_chunk(self, connection: Connection, data: dict[str, Any]) -> None:
        session = connection.session
        if session is None:
            return
        asked = str(data.get("guild_id"))
        guild_id = int(asked) if asked.isdigit() and int(asked) in self.world.guilds else self.world.guild_id
        record = self.world.guild_record(guild_id)
        members = [self.world.member(user_id, guild_id) for user_id in record.member_roles]
        await self._send(
            session,
            "GUILD_MEMBERS_CHUNK",
            {
                "guild_id": str(guild_id),
                "members": members,
                "chunk_index": 0,
                "chunk_count": 1,
                "nonce": data.get("nonce"),
                "not_found": [],
            },
        )

    async def _send(self, session: Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        frame = {"op": 0, "s": session.seq, "t": event, "d": data}
        session.buffer.append(frame)
        del session.buffer[:-2000]
        if session.connection is not None:
            await session.connection.send(frame)

    async def dispatch(
        self, event: str, data: dict[str, Any], *, message: StoredMessage | None = None
    ) -> None:
        """Send an event to every session that asked for it (a session whose socket is down buffers it
        for RESUME until it expires)."""
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if not self._session_alive(session, now):
                self.sessions.pop(session.id, None)
                continue
            if not self._routed_to(session, data):
                continue
            wanted = EVENT_INTENTS.get(event)
            if wanted is not None and not session.intents & wanted[0 if "guild_id" in data else 1]:
                continue
            payload = data
            if message is not None and not self._can_read_content(session.intents, message):
                payload = blank_content(data)
            await self._send(session, event, payload)

    def _routed_to(self, session: Session, data: dict[str, Any]) -> bool:
        """Whether the event reaches this session's shard (docs: events/gateway.md, "Sharding")."""
        if session.shard is None:
            return True
        shard_id, shard_count = session.shard
        guild_id = data.get("guild_id")
        if guild_id is None:
            return shard_id == 0
        return self.world.shard_of(int(guild_id), shard_count) == shard_id

    def _can_read_content(self, intents: int, message: StoredMessage) -> bool:
        # docs: events/gateway.md, "Message Content Intent": without it, content is empty except in DMs,
        # mentions of the bot, and the bot's own messages.
        if intents & MESSAGE_CONTENT or message.author_id == self.world.bot_id:
            return True
        if "guild_id" not in message.data:
            return True
        return any(int(user["id"]) == self.world.bot_id for user in message.data["mentions"])

    def _application_flags(self) -> int:
        flags = 0
        for name in self.privileged_intents:
            flags |= PRIVILEGED_FLAGS[name]
        return flags

    async def _gateway_fault(self, spec: dict[str, Any]) -> None:
        for session in list(self.sessions.values()):
            connection = session.connection
            if connection is None or connection.socket.closed:
                continue
            kind = spec["kind"]
            if kind == "gateway_reconnect":
                await connection.send({"op": 7, "d": None, "s": None, "t": None})
            elif kind == "gateway_invalid_session":
                resumable = bool(spec.get("resumable", False))
                if not resumable:
                    self.sessions.pop(session.id, None)
                await connection.send({"op": 9, "d": resumable, "s": None, "t": None})
            elif kind == "gateway_close":
                code = int(spec.get("code", 1006))
                session.connection = None
                session.disconnected_at = time.monotonic()
                connection.closed_by_server = True
                connection.sent_code = code
                if code == 1006:
                    # An abnormal closure: drop the TCP connection without a close frame.
                    transport = (
                        connection.socket._req.transport if connection.socket._req is not None else None
                    )
                    if transport is not None:
                        transport.abort()
                else:
                    await connection.close(code, "Closed by a fault.")

    async def _close_sockets(self) -> None:
        for socket in list(self._sockets):
            with contextlib.suppress(Exception):
                await socket.close(code=WSCloseCode.GOING_AWAY)


def _shard(value: Any) -> tuple[int, int] | None:
    """IDENTIFY's ``shard``, or close 4010 "Invalid shard" (docs: topics/opcodes-and-status-codes.md)."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in value)
        or not 0 <= value[0] < value[1]
    ):
        raise Close(4010, "Invalid shard.")
    return value[0], value[1]


def blank_content(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as a reader without the Message Content intent sees it (docs: events/gateway.md)."""
    blanked = {**data, "content": "", "embeds": [], "attachments": [], "components": []}
    blanked.pop("poll", None)
    return blanked
