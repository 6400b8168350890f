"""The Discord emulator: REST under ``/api/v10``, the gateway on ``/``, the control API under ``/_emulator/``.

Real Discord's refusals are reproduced with its status codes and error bodies (2000-character content,
10 files, 25 MiB uploads, the 3-second first-callback deadline, one initial callback, the interaction
token's lifetime, per-channel rate limits with ``X-RateLimit-*`` headers and 429 bodies with ``Via``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import BodyPartReader, WSCloseCode, WSMsgType, web

from tests.fakes.discord_server.world import (
    ATTACH_FILES,
    PERMISSION_NAMES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    StoredMessage,
    World,
    iso_now,
)

API = "/api/v10"
MAX_CONTENT = 2000
MAX_FILES = 10
MAX_UPLOAD = 25 * 1024 * 1024
MAX_EMBEDS = 10
RATE_LIMIT = 5
RATE_PERIOD = 5.0
NONCE_WINDOW = 300.0
EPHEMERAL = 64
LOADING = 128
GUILD_CHANNEL_TYPES = (0, 11)  # text channels and public threads
HEARTBEAT_ACK_DELAY = 0.03
INTENT_MEMBERS = 1 << 1
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED = {"members": INTENT_MEMBERS, "message_content": INTENT_MESSAGE_CONTENT}
COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")
OPTION_TYPES = {
    1: "subcommand",
    2: "group",
    3: str,
    4: int,
    5: bool,
    6: "user",
    7: "channel",
    8: "role",
    10: float,
}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly application/json: discord.py only parses JSON when the content type has no charset.
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json", headers=headers
    )


def _error(status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors:
        body["errors"] = errors
    return _json(body, status)


def _form_error(field_name: str, code: str, message: str) -> web.Response:
    return _error(
        400, 50035, "Invalid Form Body", {field_name: {"_errors": [{"code": code, "message": message}]}}
    )


class Refusal(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


@dataclass
class Session:
    id: str
    intents: int
    seq: int = 0
    socket: web.WebSocketResponse | None = None
    buffer: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Interaction:
    id: int
    token: str
    channel_id: int
    user_id: int
    name: str
    dispatched_at: float
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    original: StoredMessage | None = None
    followups: list[StoredMessage] = field(default_factory=list)
    ephemeral: bool = False


@dataclass
class Fault:
    spec: dict[str, Any]
    remaining: int

    def matches(self, method: str, path: str, has_files: bool) -> bool:
        wanted = self.spec.get("method")
        if wanted and wanted.upper() != method:
            return False
        if not fnmatch.fnmatchcase(path, self.spec.get("path", "*")):
            return False
        return not self.spec.get("attachments") or has_files


class DiscordEmulator:
    """See the package docstring. Use ``async with DiscordEmulator() as emu``."""

    def __init__(
        self,
        *,
        interaction_token_ttl: float = 900.0,
        callback_deadline: float = 3.0,
        valid_tokens: set[str] | None = None,
        privileged_intents: set[str] | None = None,
    ) -> None:
        self.world = World()
        self.interaction_token_ttl = interaction_token_ttl
        self.callback_deadline = callback_deadline
        self.valid_tokens = valid_tokens
        self.privileged_intents = (
            {"message_content", "members"} if privileged_intents is None else privileged_intents
        )
        self.sessions: dict[str, Session] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.interactions: dict[int, Interaction] = {}
        self.tokens: dict[str, Interaction] = {}
        self.request_log: list[dict[str, Any]] = []
        self._faults: list[Fault] = []
        self._buckets: dict[tuple[str, int], tuple[float, int]] = {}
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        return self.url + API

    @property
    def gateway_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=8 * MAX_UPLOAD, middlewares=[self._middleware])
        app.router.add_get("/", self._gateway)
        app.router.add_get("/_emulator/state", self._control_state)
        app.router.add_post("/_emulator/messages", self._control_message)
        app.router.add_post("/_emulator/interactions", self._control_interaction)
        app.router.add_get("/_emulator/channels/{channel_id}/messages", self._control_channel_messages)
        app.router.add_delete("/_emulator/channels/{channel_id}", self._control_delete_channel)
        app.router.add_post("/_emulator/channels/{channel_id}/permissions", self._control_permissions)
        app.router.add_get("/_emulator/interactions/{interaction_id}", self._control_interaction_record)
        app.router.add_get("/_emulator/requests", self._control_requests)
        app.router.add_post("/_emulator/faults", self._control_faults)
        app.router.add_route("*", API + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        for socket in list(self._sockets):
            with contextlib.suppress(Exception):
                await socket.close(code=WSCloseCode.GOING_AWAY)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except Refusal as refusal:
            response = refusal.response
        return response

    # -- gateway ---------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await socket.prepare(request)
        self._sockets.add(socket)
        session: Session | None = None
        try:
            await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
            async for frame in socket:
                if frame.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(frame.data)
                op, data = payload.get("op"), payload.get("d")
                if op == 1:
                    # Discord's ACK takes tens of milliseconds; an instant one races discord.py's keep-alive
                    # thread, which then measures the ACK against the previous heartbeat ("can't keep up").
                    await asyncio.sleep(HEARTBEAT_ACK_DELAY)
                    await socket.send_str(json.dumps({"op": 11}))
                elif op == 2:
                    session = await self._identify(socket, data)
                    if session is None:
                        break
                elif op == 6:
                    session = await self._resume(socket, data)
                elif op == 8:
                    await self._member_chunk(socket, session, data)
        finally:
            self._sockets.discard(socket)
            if session is not None and session.socket is socket:
                session.socket = None
        return socket

    async def _identify(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> Session | None:
        if self.valid_tokens is not None and data.get("token") not in self.valid_tokens:
            await socket.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents", 0))
        for name, bit in PRIVILEGED.items():
            if intents & bit and name not in self.privileged_intents:
                await socket.close(code=4014, message=b"Disallowed intent(s).")
                return None
        session = Session(id=secrets.token_hex(16), intents=intents, socket=socket)
        self.sessions[session.id] = session
        world = self.world
        await self._send(
            session,
            "READY",
            {
                "v": 10,
                "user": {**world.bot_user, "verified": True, "mfa_enabled": False, "flags": 0},
                "guilds": [{"id": str(world.guild_id), "unavailable": True}],
                "session_id": session.id,
                "resume_gateway_url": self.gateway_url,
                "application": {"id": str(world.application_id), "flags": self._application_flags()},
                "private_channels": [],
                "relationships": [],
                "user_settings": {},
                "session_type": "normal",
                "shard": [0, 1],
            },
        )
        await self._send(session, "GUILD_CREATE", world.guild())
        return session

    async def _resume(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> Session | None:
        session = self.sessions.get(str(data.get("session_id")))
        if session is None:
            await socket.send_str(json.dumps({"op": 9, "d": False}))
            return None
        session.socket = socket
        seen = int(data.get("seq") or 0)
        for event in session.buffer:
            if event["s"] > seen:
                await socket.send_str(json.dumps(event))
        await self._send(session, "RESUMED", {})
        return session

    async def _member_chunk(self, socket: web.WebSocketResponse, session: Session | None, data: Any) -> None:
        if session is None:
            return
        members = [self.world.member(user_id) for user_id in self.world.member_roles]
        await self._send(
            session,
            "GUILD_MEMBERS_CHUNK",
            {
                "guild_id": str(self.world.guild_id),
                "members": members,
                "chunk_index": 0,
                "chunk_count": 1,
                "nonce": (data or {}).get("nonce"),
                "not_found": [],
            },
        )

    async def _send(self, session: Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        frame = {"op": 0, "s": session.seq, "t": event, "d": data}
        session.buffer.append(frame)
        del session.buffer[:-2000]
        if session.socket is not None and not session.socket.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await session.socket.send_str(json.dumps(frame))

    async def dispatch(
        self, event: str, data: dict[str, Any], *, message: StoredMessage | None = None
    ) -> None:
        """Send an event to every session (sessions whose socket is down buffer it for RESUME)."""
        for session in list(self.sessions.values()):
            payload = data
            if message is not None and not self._can_read_content(session, message):
                payload = {**data, "content": "", "embeds": [], "attachments": []}
            await self._send(session, event, payload)

    def _can_read_content(self, session: Session, message: StoredMessage) -> bool:
        # Without the Message Content intent, Discord blanks content except in DMs, mentions of the bot,
        # and the bot's own messages.
        if session.intents & INTENT_MESSAGE_CONTENT or message.author_id == self.world.bot_id:
            return True
        if "guild_id" not in message.data:
            return True
        return any(int(user["id"]) == self.world.bot_id for user in message.data["mentions"])

    def _application_flags(self) -> int:
        flags = 0
        if "message_content" in self.privileged_intents:
            flags |= 1 << 19  # GATEWAY_MESSAGE_CONTENT_LIMITED
        if "members" in self.privileged_intents:
            flags |= 1 << 15  # GATEWAY_GUILD_MEMBERS_LIMITED
        return flags

    async def _gateway_fault(self, spec: dict[str, Any]) -> None:
        for session in list(self.sessions.values()):
            socket = session.socket
            if socket is None or socket.closed:
                continue
            kind = spec["kind"]
            if kind == "gateway_reconnect":
                await socket.send_str(json.dumps({"op": 7, "d": None}))
            elif kind == "gateway_invalid_session":
                resumable = bool(spec.get("resumable", False))
                if not resumable:
                    self.sessions.pop(session.id, None)
                await socket.send_str(json.dumps({"op": 9, "d": resumable}))
            elif kind == "gateway_close":
                code = int(spec.get("code", 1006))
                session.socket = None
                if code == 1006:
                    # An abnormal closure: drop the TCP connection without a close frame.
                    transport = socket._req.transport if socket._req is not None else None
                    if transport is not None:
                        transport.abort()
                else:
                    await socket.close(code=code)

    # -- REST ------------------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        method = request.method
        has_files = request.content_type.startswith("multipart/")
        bucket = self._bucket_name(method, path)
        now = time.monotonic()
        # "time" is the issue's name for it; "at" matches the other records' time fields.
        entry = {"method": method, "path": path, "status": 0, "time": now, "at": now, "bucket": bucket}
        self.request_log.append(entry)
        fault = self._take_fault(method, path, has_files)
        delay = 0.0
        if fault is not None:
            kind = fault.spec["kind"]
            if kind == "http_error":
                status = int(fault.spec.get("status", 500))
                entry["status"] = status
                return _json({"message": f"{status}: Fault injected", "code": 0}, status)
            if kind == "rate_limit":
                entry["status"] = 429
                return self._too_many(float(fault.spec.get("retry_after", 1.0)), bucket or "fault")
            if kind == "delay":
                delay = float(fault.spec.get("seconds", 1.0))
        try:
            if not path.startswith(("/interactions/", "/webhooks/")):
                self._authenticate(request)
            response = await self._route(request, method, path, bucket)
        except Refusal as refusal:
            response = refusal.response
        entry["status"] = response.status
        if delay:
            await asyncio.sleep(delay)
        return response

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bot ")
        if not header.startswith("Bot ") or (
            self.valid_tokens is not None and token not in self.valid_tokens
        ):
            raise Refusal(_error(401, 0, "401: Unauthorized"))

    async def _route(self, request: web.Request, method: str, path: str, bucket: str | None) -> web.Response:
        world = self.world
        parts = path.strip("/").split("/")
        if path == "/users/@me" and method == "GET":
            return _json(world.bot_user)
        if path == "/oauth2/applications/@me" and method == "GET":
            return _json(
                {
                    "id": str(world.application_id),
                    "name": "LLMBot",
                    "description": "",
                    "icon": None,
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "owner": world.users[world.names["mod"]],
                    "verify_key": world.verify_key,
                    "flags": self._application_flags(),
                    "bot": world.bot_user,
                }
            )
        if path in ("/gateway", "/gateway/bot") and method == "GET":
            return _json(
                {
                    "url": self.gateway_url,
                    "shards": 1,
                    "session_start_limit": {
                        "total": 1000,
                        "remaining": 999,
                        "reset_after": 0,
                        "max_concurrency": 1,
                    },
                }
            )
        if parts[0] == "applications" and len(parts) >= 3:
            return await self._commands_route(request, method, parts)
        if parts[0] == "users" and len(parts) == 2 and method == "GET":
            user = world.users.get(int(parts[1])) if parts[1].isdigit() else None
            return _json(user) if user else _error(404, 10013, "Unknown User")
        if path == "/users/@me/channels" and method == "POST":
            body = await request.json()
            channel_id = world.dm_channels.get(int(body.get("recipient_id", 0)))
            return _json(world.channels[channel_id]) if channel_id else _error(404, 10013, "Unknown User")
        if parts[0] == "guilds" and len(parts) >= 2 and parts[1] == str(world.guild_id):
            if len(parts) == 2:
                return _json(world.guild())
            if len(parts) == 4 and parts[2] == "members" and int(parts[3]) in world.member_roles:
                return _json(world.member(int(parts[3])))
            if len(parts) == 3 and parts[2] == "channels":
                return _json(world.guild()["channels"])
            return _error(404, 10007, "Unknown Member")
        if parts[0] == "channels" and len(parts) >= 2:
            return await self._channel_route(request, method, parts, bucket)
        if parts[0] == "interactions" and len(parts) == 4 and parts[3] == "callback" and method == "POST":
            return await self._callback(request, int(parts[1]), parts[2])
        if parts[0] == "webhooks" and len(parts) >= 3:
            return await self._webhook_route(request, method, parts)
        return _error(404, 0, "404: Not Found")

    # -- channels and messages -------------------------------------------------------------------------

    def _channel(self, channel_id: int) -> dict[str, Any]:
        channel = self.world.channels.get(channel_id)
        if channel is None or channel_id in self.world.deleted_channels:
            raise Refusal(_error(404, 10003, "Unknown Channel"))
        return channel

    def _require(self, channel_id: int, permission: int) -> None:
        if not self.world.channel_permissions(self.world.bot_id, channel_id) & permission:
            raise Refusal(_error(403, 50013, "Missing Permissions"))

    async def _channel_route(
        self, request: web.Request, method: str, parts: list[str], bucket: str | None
    ) -> web.Response:
        if not parts[1].isdigit():
            return _error(404, 10003, "Unknown Channel")
        channel_id = int(parts[1])
        channel = self._channel(channel_id)
        self._require(channel_id, VIEW_CHANNEL)
        if len(parts) == 2 and method == "GET":
            return _json(channel)
        if len(parts) == 3 and parts[2] == "typing" and method == "POST":
            return web.Response(status=204)
        if len(parts) == 3 and parts[2] == "messages":
            if method == "GET":
                self._require(channel_id, READ_MESSAGE_HISTORY)
                return _json(self._history(channel_id, request.query))
            if method == "POST":
                limited = self._rate_limit(("create", channel_id))
                if limited is not None:
                    return limited
                self._require(channel_id, SEND_MESSAGES)
                payload, files = await self._read_message(request)
                status, message = await self._create_message(channel_id, self.world.bot_id, payload, files)
                return _json(message.data, status, self._bucket_headers(("create", channel_id)))
        if len(parts) == 5 and parts[2] == "messages" and parts[4] == "threads" and method == "POST":
            found = self.world.find_message(int(parts[3])) if parts[3].isdigit() else None
            if found is None or found[0] != channel_id:
                return _error(404, 10008, "Unknown Message")
            self._require(channel_id, 1 << 35)  # CREATE_PUBLIC_THREADS
            body = await request.json()
            thread = self.world.create_thread(
                channel_id, int(parts[3]), str(body.get("name") or "thread")[:100]
            )
            await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
            return _json(thread, 201)
        if len(parts) == 4 and parts[2] == "messages" and parts[3] == "bulk-delete" and method == "POST":
            body = await request.json()
            for message_id in body.get("messages", []):
                await self._delete_message(channel_id, int(message_id))
            return web.Response(status=204)
        if len(parts) >= 4 and parts[2] == "messages" and parts[3].isdigit():
            found = self.world.find_message(int(parts[3]))
            if found is None or found[0] != channel_id:
                return _error(404, 10008, "Unknown Message")
            stored = found[1]
            if len(parts) > 4:  # reactions and the like: accepted, not modelled
                return web.Response(status=204)
            if method == "GET":
                self._require(channel_id, READ_MESSAGE_HISTORY)
                return _json(stored.data)
            if method == "PATCH":
                limited = self._rate_limit(("edit", channel_id))
                if limited is not None:
                    return limited
                if stored.author_id != self.world.bot_id:
                    return _error(403, 50005, "Cannot edit a message authored by another user")
                payload, files = await self._read_message(request)
                await self._edit_message(stored, payload, files)
                return _json(stored.data, 200, self._bucket_headers(("edit", channel_id)))
            if method == "DELETE":
                if stored.author_id != self.world.bot_id:
                    self._require(channel_id, 1 << 13)
                await self._delete_message(channel_id, stored.data["id"])
                return web.Response(status=204)
        return _error(405, 0, "405: Method Not Allowed")

    def _history(self, channel_id: int, query: Any) -> list[dict[str, Any]]:
        limit = max(1, min(100, int(query.get("limit", 50))))
        messages = [m for m in self.world.messages[channel_id] if not m.deleted and not m.ephemeral]
        if "before" in query:
            messages = [m for m in messages if int(m.data["id"]) < int(query["before"])]
        if "after" in query:
            messages = [m for m in messages if int(m.data["id"]) > int(query["after"])][:limit]
        if "around" in query:
            around = int(query["around"])
            older = [m for m in messages if int(m.data["id"]) <= around][-(limit // 2 + 1) :]
            newer = [m for m in messages if int(m.data["id"]) > around][: limit - len(older)]
            messages = older + newer
        return [m.data for m in reversed(messages[-limit:])]  # newest first, like Discord

    async def _read_message(self, request: web.Request) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
        files: list[tuple[str, bytes]] = []
        if request.content_type.startswith("multipart/"):
            payload: dict[str, Any] = {}
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader)
                if part.name == "payload_json":
                    payload = json.loads(await part.read())
                elif part.name and part.name.startswith("files["):
                    content = bytes(await part.read())
                    if len(content) > MAX_UPLOAD:
                        raise Refusal(_error(413, 40005, "Request entity too large"))
                    files.append((part.filename or "file", content))
            return payload, files
        if not await request.read():
            return {}, files
        body = await request.json()
        if not isinstance(body, dict):
            raise Refusal(
                _form_error("_root", "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            )
        return body, files

    def _validate(
        self, payload: dict[str, Any], files: list[tuple[str, bytes]], *, require_body: bool
    ) -> None:
        content = payload.get("content")
        if content is not None and not isinstance(content, str):
            raise Refusal(_form_error("content", "BASE_TYPE_STRING", "Must be a string."))
        if content is not None and len(content) > MAX_CONTENT:
            raise Refusal(_form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."))
        embeds = payload.get("embeds") or []
        if len(embeds) > MAX_EMBEDS:
            raise Refusal(_form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."))
        total = 0
        for embed in embeds:
            description = embed.get("description") or ""
            if len(description) > 4096:
                raise Refusal(
                    _form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 4096 or fewer in length.")
                )
            total += len(description) + len(embed.get("title") or "")
        if total > 6000:
            raise Refusal(_error(400, 50035, "Invalid Form Body: embed size exceeds maximum size of 6000"))
        if len(files) > MAX_FILES:
            raise Refusal(_form_error("files", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length."))
        if (
            require_body
            and not (content or "").strip()
            and not embeds
            and not files
            and not payload.get("sticker_ids")
        ):
            raise Refusal(_error(400, 50006, "Cannot send an empty message"))

    async def _create_message(
        self,
        channel_id: int,
        author_id: int,
        payload: dict[str, Any],
        files: list[tuple[str, bytes]],
        *,
        extra: dict[str, Any] | None = None,
        ephemeral: bool = False,
        loading: bool = False,
    ) -> tuple[int, StoredMessage]:
        """Create (or, for a repeated enforced nonce, return) a message; dispatch MESSAGE_CREATE.

        ``loading`` is the empty "thinking…" message a deferred interaction shows.
        """
        world = self.world
        self._validate(payload, files, require_body=not loading)
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            for existing in reversed(world.messages[channel_id]):
                if time.monotonic() - existing.created_at > NONCE_WINDOW:
                    break
                if existing.nonce == str(nonce) and existing.author_id == author_id and not existing.deleted:
                    return 200, existing
        if files:
            self._require(channel_id, ATTACH_FILES)
        channel = world.channels[channel_id]
        reference = payload.get("message_reference")
        replied: StoredMessage | None = None
        if reference and reference.get("message_id"):
            found = world.find_message(int(reference["message_id"]))
            if found is None or found[0] != channel_id:
                if reference.get("fail_if_not_exists", True):
                    raise Refusal(
                        _form_error("message_reference", "REPLIES_UNKNOWN_MESSAGE", "Unknown message")
                    )
            else:
                replied = found[1]
        content = payload.get("content") or ""
        users, roles, everyone = world.mentions(
            content, author_id, payload.get("allowed_mentions"), replied, channel_id
        )
        message_id = world.ids.next()
        attachments = []
        stored_files: dict[str, bytes] = {}
        for filename, blob in files:
            attachment_id = str(world.ids.next())
            stored_files[attachment_id] = blob
            url = f"{self.url}/attachments/{channel_id}/{attachment_id}/{filename}"
            attachments.append(
                {
                    "id": attachment_id,
                    "filename": filename,
                    "size": len(blob),
                    "url": url,
                    "proxy_url": url,
                    "content_type": "text/markdown; charset=utf-8"
                    if filename.endswith(".md")
                    else "application/octet-stream",
                }
            )
        data: dict[str, Any] = {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "type": 19 if replied is not None else 0,
            "content": content,
            "author": world.users[author_id],
            "timestamp": iso_now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": everyone,
            "mentions": [world.users[u] for u in users],
            "mention_roles": [str(r) for r in roles],
            "attachments": attachments,
            "embeds": payload.get("embeds") or [],
            "pinned": False,
            "flags": (payload.get("flags") or 0) | (EPHEMERAL if ephemeral else 0),
            "components": [],
        }
        if nonce is not None:
            data["nonce"] = nonce
        if channel["type"] in GUILD_CHANNEL_TYPES:
            data["guild_id"] = str(world.guild_id)
        if replied is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": replied.data["id"],
                "channel_id": str(channel_id),
            }
            if channel["type"] in GUILD_CHANNEL_TYPES:
                data["message_reference"]["guild_id"] = str(world.guild_id)
            data["referenced_message"] = replied.data
        if extra:
            data.update(extra)
        stored = StoredMessage(
            data=data,
            history=[{"content": content, "at": time.monotonic()}],
            allowed_mentions=payload.get("allowed_mentions"),
            pinged=[str(u) for u in users] + (["everyone"] if everyone else []) + [str(r) for r in roles],
            nonce=None if nonce is None else str(nonce),
            author_id=author_id,
            created_at=time.monotonic(),
            files=stored_files,
            ephemeral=ephemeral,
        )
        world.messages[channel_id].append(stored)
        world.message_index[message_id] = (channel_id, stored)
        channel["last_message_id"] = str(message_id)
        if not ephemeral:
            event = dict(data)
            if channel["type"] in GUILD_CHANNEL_TYPES:
                event["member"] = {k: v for k, v in world.member(author_id).items() if k != "user"}
            await self.dispatch("MESSAGE_CREATE", event, message=stored)
        return 200, stored

    async def _edit_message(
        self, stored: StoredMessage, payload: dict[str, Any], files: list[tuple[str, bytes]]
    ) -> None:
        self._validate(payload, files, require_body=False)
        data = stored.data
        if "content" in payload:
            data["content"] = payload["content"] or ""
            users, roles, everyone = self.world.mentions(
                data["content"],
                stored.author_id,
                payload.get("allowed_mentions", stored.allowed_mentions),
                None,
                int(data["channel_id"]),
            )
            data["mentions"] = [self.world.users[u] for u in users]
            data["mention_roles"] = [str(r) for r in roles]
            data["mention_everyone"] = everyone
        if "embeds" in payload:
            data["embeds"] = payload["embeds"] or []
        if "attachments" in payload:
            keep = {str(a.get("id")) for a in payload["attachments"] or []}
            data["attachments"] = [a for a in data["attachments"] if a["id"] in keep]
        for filename, content in files:
            attachment_id = str(self.world.ids.next())
            stored.files[attachment_id] = content
            url = f"{self.url}/attachments/{data['channel_id']}/{attachment_id}/{filename}"
            data["attachments"].append(
                {
                    "id": attachment_id,
                    "filename": filename,
                    "size": len(content),
                    "url": url,
                    "proxy_url": url,
                }
            )
        if "flags" in payload and payload["flags"] is not None:
            data["flags"] = (int(payload["flags"]) & ~LOADING) | (data["flags"] & EPHEMERAL)
        else:
            data["flags"] &= ~LOADING
        if "allowed_mentions" in payload:
            stored.allowed_mentions = payload["allowed_mentions"]
        data["edited_timestamp"] = iso_now()
        stored.history.append({"content": data["content"], "at": time.monotonic()})
        if not stored.ephemeral:
            await self.dispatch("MESSAGE_UPDATE", dict(data), message=stored)

    async def _delete_message(self, channel_id: int, message_id: Any) -> None:
        found = self.world.find_message(int(message_id))
        if found is None:
            return
        found[1].deleted = True
        event = {"id": str(message_id), "channel_id": str(channel_id)}
        if self.world.channels[channel_id]["type"] in GUILD_CHANNEL_TYPES:
            event["guild_id"] = str(self.world.guild_id)
        await self.dispatch("MESSAGE_DELETE", event)

    # -- rate limits -----------------------------------------------------------------------------------

    @staticmethod
    def _bucket_name(method: str, path: str) -> str | None:
        if re.fullmatch(r"/channels/\d+/messages", path) and method == "POST":
            return "message-create"
        if re.fullmatch(r"/channels/\d+/messages/\d+", path) and method == "PATCH":
            return "message-edit"
        return None

    def _rate_limit(self, key: tuple[str, int]) -> web.Response | None:
        now = time.monotonic()
        started, used = self._buckets.get(key, (now, 0))
        if now - started >= RATE_PERIOD:
            started, used = now, 0
        if used >= RATE_LIMIT:
            return self._too_many(started + RATE_PERIOD - now, f"{key[0]}-{key[1]}")
        self._buckets[key] = (started, used + 1)
        return None

    def _bucket_headers(self, key: tuple[str, int]) -> dict[str, str]:
        now = time.monotonic()
        started, used = self._buckets.get(key, (now, 0))
        reset_after = max(0.0, started + RATE_PERIOD - now)
        return {
            "X-RateLimit-Limit": str(RATE_LIMIT),
            "X-RateLimit-Remaining": str(max(0, RATE_LIMIT - used)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": f"{key[0]}-{key[1]:x}",
        }

    @staticmethod
    def _too_many(retry_after: float, bucket: str) -> web.Response:
        return _json(
            {"message": "You are being rate limited.", "retry_after": round(retry_after, 3), "global": False},
            429,
            {
                "Via": "1.1 google",
                "Retry-After": str(max(1, round(retry_after))),
                "X-RateLimit-Limit": str(RATE_LIMIT),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Bucket": bucket,
                "X-RateLimit-Scope": "user",
            },
        )

    # -- application commands --------------------------------------------------------------------------

    async def _commands_route(self, request: web.Request, method: str, parts: list[str]) -> web.Response:
        if parts[1] != str(self.world.application_id):
            return _error(404, 10002, "Unknown Application")
        guild_id: int | None = None
        if len(parts) >= 5 and parts[2] == "guilds" and parts[4] == "commands":
            guild_id = int(parts[3])
        elif parts[2] != "commands":
            return _error(404, 0, "404: Not Found")
        if method == "GET":
            return _json(self.commands.get(guild_id, []))
        if method != "PUT":
            return _error(405, 0, "405: Method Not Allowed")
        body = await request.json()
        if not isinstance(body, list):
            return _form_error("_root", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        synced = []
        for index, command in enumerate(body):
            problem = _command_problem(command)
            if problem is not None:
                return _error(
                    400,
                    50035,
                    "Invalid Form Body",
                    {str(index): {problem[0]: {"_errors": [{"code": "INVALID", "message": problem[1]}]}}},
                )
            previous = next(
                (c for c in self.commands.get(guild_id, []) if c["name"] == command["name"]), None
            )
            stored = {
                **command,
                "id": previous["id"] if previous else str(self.world.ids.next()),
                "application_id": str(self.world.application_id),
                "version": str(self.world.ids.next()),
                "type": command.get("type", 1),
                # Discord answers permission bitfields as strings, whatever the client sent.
                "default_member_permissions": (
                    None
                    if command.get("default_member_permissions") is None
                    else str(command["default_member_permissions"])
                ),
            }
            if guild_id is not None:
                stored["guild_id"] = str(guild_id)
            synced.append(stored)
        self.commands[guild_id] = synced
        return _json(synced)

    def _find_command(self, name: str) -> dict[str, Any] | None:
        for scope in (self.world.guild_id, None):
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == 1:
                    return command
        return None

    # -- interactions ----------------------------------------------------------------------------------

    def _interaction_for(self, token: str) -> Interaction:
        interaction = self.tokens.get(token)
        if interaction is None or time.monotonic() - interaction.dispatched_at > self.interaction_token_ttl:
            raise Refusal(_error(401, 50027, "Invalid Webhook Token"))
        return interaction

    async def _callback(self, request: web.Request, interaction_id: int, token: str) -> web.Response:
        interaction = self.interactions.get(interaction_id)
        if interaction is None or interaction.token != token:
            return _error(404, 10062, "Unknown interaction")
        if (
            not interaction.callbacks
            and time.monotonic() - interaction.dispatched_at > self.callback_deadline
        ):
            return _error(404, 10062, "Unknown interaction")
        if interaction.callbacks:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        payload, files = await self._read_message(request)
        kind = int(payload.get("type", 0))
        data = payload.get("data") or {}
        record = {"type": kind, "at": time.monotonic(), "data": data}
        interaction.callbacks.append(record)
        result: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": 2,
                "activity_instance_id": None,
                "response_message_id": None,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": False,
            },
            "resource": {"type": kind},
        }
        if kind in (4, 5):
            ephemeral = bool(int(data.get("flags") or 0) & EPHEMERAL)
            interaction.ephemeral = ephemeral
            message_payload = dict(data) if kind == 4 else {"content": "", "flags": LOADING}
            try:
                _, stored = await self._interaction_message(
                    interaction, message_payload, files, ephemeral, loading=kind == 5
                )
            except Refusal:
                interaction.callbacks.pop()
                raise
            interaction.original = stored
            result["interaction"].update(
                response_message_id=stored.data["id"], response_message_ephemeral=ephemeral
            )
            if kind == 4:
                result["resource"]["message"] = stored.data
        return _json(result)

    async def _interaction_message(
        self,
        interaction: Interaction,
        payload: dict[str, Any],
        files: list[tuple[str, bytes]],
        ephemeral: bool,
        *,
        loading: bool = False,
    ) -> tuple[int, StoredMessage]:
        world = self.world
        extra = {
            "webhook_id": str(world.application_id),
            "application_id": str(world.application_id),
            "interaction_metadata": {
                "id": str(interaction.id),
                "type": 2,
                "user": world.users[interaction.user_id],
                "authorizing_integration_owners": {"0": str(world.guild_id)},
                "name": interaction.name,
                "command_type": 1,
            },
            "interaction": {
                "id": str(interaction.id),
                "type": 2,
                "name": interaction.name,
                "user": world.users[interaction.user_id],
            },
        }
        return await self._create_message(
            interaction.channel_id,
            world.bot_id,
            payload,
            files,
            extra=extra,
            ephemeral=ephemeral,
            loading=loading,
        )

    async def _webhook_route(self, request: web.Request, method: str, parts: list[str]) -> web.Response:
        if parts[1] != str(self.world.application_id):
            return _error(404, 10015, "Unknown Webhook")
        interaction = self._interaction_for(parts[2])
        if len(parts) == 3 and method == "POST":
            payload, files = await self._read_message(request)
            ephemeral = bool(int(payload.get("flags") or 0) & EPHEMERAL)
            original = interaction.original
            if original is not None and original.data["flags"] & LOADING and not interaction.followups:
                # Discord: the first followup after a deferral replaces the "thinking…" message.
                await self._edit_message(original, payload, files)
                interaction.followups.append(original)
                return _json(original.data)
            _, stored = await self._interaction_message(interaction, payload, files, ephemeral)
            interaction.followups.append(stored)
            return _json(stored.data)
        if len(parts) == 5 and parts[3] == "messages":
            target: StoredMessage | None
            if parts[4] == "@original":
                target = interaction.original
            else:
                target = next((m for m in interaction.followups if m.data["id"] == parts[4]), None)
            if target is None or target.deleted:
                return _error(404, 10008, "Unknown Message")
            if method == "GET":
                return _json(target.data)
            if method == "PATCH":
                payload, files = await self._read_message(request)
                await self._edit_message(target, payload, files)
                return _json(target.data)
            if method == "DELETE":
                await self._delete_message(int(target.data["channel_id"]), target.data["id"])
                return web.Response(status=204)
        return _error(405, 0, "405: Method Not Allowed")

    # -- control API -----------------------------------------------------------------------------------

    async def _control_state(self, request: web.Request) -> web.Response:
        world = self.world
        return _json(
            {
                "application_id": str(world.application_id),
                "bot_user_id": str(world.bot_id),
                "guild_id": str(world.guild_id),
                "channels": {name: str(channel_id) for name, channel_id in world.channel_names.items()},
                "users": {name: str(user_id) for name, user_id in world.names.items()},
                "dm_channels": {
                    name: str(world.dm_channels[user_id]) for name, user_id in world.names.items()
                },
                "roles": {"moderator": str(world.moderator_role), "bot": str(world.bot_role)},
                "threads": [str(c["id"]) for c in world.channels.values() if c["type"] == 11],
                "sessions": [
                    {"session_id": s.id, "intents": s.intents, "seq": s.seq, "connected": True}
                    for s in self.sessions.values()
                    if s.socket is not None and not s.socket.closed
                ],
                "commands": [command for scope in self.commands.values() for command in scope],
            }
        )

    async def _control_message(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            channel_id, author_id = int(body["channel_id"]), int(body["author_id"])
        except (KeyError, TypeError, ValueError):
            return _json({"error": "channel_id and author_id are required"}, 400)
        if channel_id not in self.world.channels or author_id not in self.world.users:
            return _json({"error": "unknown channel or author"}, 400)
        self._channel(channel_id)
        payload: dict[str, Any] = {"content": body.get("content", "")}
        if body.get("reply_to"):
            payload["message_reference"] = {"message_id": str(body["reply_to"])}
        _, stored = await self._create_message(channel_id, author_id, payload, [])
        return _json(stored.data)

    async def _control_channel_messages(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel_id"])
        messages = self.world.messages.get(channel_id)
        if messages is None:
            return _json({"error": "unknown channel"}, 404)
        return _json([m.control_view() for m in messages if not m.deleted and not m.ephemeral])

    async def _control_delete_channel(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel_id"])
        channel = self.world.channels.get(channel_id)
        if channel is None:
            return _json({"error": "unknown channel"}, 404)
        self.world.deleted_channels.add(channel_id)
        await self.dispatch("CHANNEL_DELETE", channel)
        return _json({"deleted": str(channel_id)})

    async def _control_permissions(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel_id"])
        channel = self.world.channels.get(channel_id)
        body = await request.json()
        denied = body.get("bot_denied", [])
        if channel is None or any(name not in PERMISSION_NAMES for name in denied):
            return _json({"error": f"unknown channel or permission; known: {sorted(PERMISSION_NAMES)}"}, 400)
        deny = 0
        for name in denied:
            deny |= PERMISSION_NAMES[name]
        overwrites = [o for o in channel["permission_overwrites"] if o["id"] != str(self.world.bot_id)]
        if deny:
            overwrites.append({"id": str(self.world.bot_id), "type": 1, "allow": "0", "deny": str(deny)})
        channel["permission_overwrites"] = overwrites
        await self.dispatch("CHANNEL_UPDATE", channel)
        return _json(channel)

    async def _control_interaction(self, request: web.Request) -> web.Response:
        body = await request.json()
        world = self.world
        try:
            channel_id, user_id = int(body["channel_id"]), int(body["user_id"])
            path = str(body["command"]).split()
        except (KeyError, TypeError, ValueError):
            return _json({"error": "channel_id, user_id and command are required"}, 400)
        if channel_id not in world.channels or user_id not in world.member_roles or not path:
            return _json({"error": "unknown channel or user"}, 400)
        command = self._find_command(path[0])
        if command is None:
            return _json({"error": f"no command named {path[0]!r} was synced"}, 400)
        required = command.get("default_member_permissions")
        lacking = required is not None and int(required) & ~world.channel_permissions(user_id, channel_id)
        if lacking and not body.get("bypass_permissions"):
            return _json({"error": "the user lacks the command's default_member_permissions"}, 403)
        autocomplete = bool(body.get("autocomplete"))
        try:
            options, resolved = self._build_options(
                command, path[1:], body.get("options") or {}, body.get("focused") if autocomplete else None
            )
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)
        interaction_id = world.ids.next()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        interaction = Interaction(
            interaction_id, token, channel_id, user_id, " ".join(path), time.monotonic()
        )
        self.interactions[interaction_id] = interaction
        self.tokens[token] = interaction
        channel = world.channels[channel_id]
        data: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": 1, "options": options}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if resolved:
            data["resolved"] = resolved
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(world.application_id),
            "type": 4 if autocomplete else 2,
            "token": token,
            "version": 1,
            "guild_id": str(world.guild_id),
            "channel_id": str(channel_id),
            "channel": channel,
            "member": {
                **world.member(user_id),
                "permissions": str(world.channel_permissions(user_id, channel_id)),
            },
            "data": data,
            "app_permissions": str(world.channel_permissions(world.bot_id, channel_id)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(world.guild_id)},
            "context": 0,
            "attachment_size_limit": MAX_UPLOAD,
        }
        await self.dispatch("INTERACTION_CREATE", payload)
        return _json({"interaction_id": str(interaction_id), "token": token})

    def _build_options(
        self, command: dict[str, Any], path: list[str], values: dict[str, Any], focused: str | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        definitions = command.get("options") or []
        wrappers: list[dict[str, Any]] = []
        for name in path:
            sub = next((o for o in definitions if o["name"] == name and o["type"] in (1, 2)), None)
            if sub is None:
                raise ValueError(f"no subcommand {name!r} in /{command['name']}")
            wrappers.append({"name": name, "type": sub["type"], "options": []})
            definitions = sub.get("options") or []
        if any(o["type"] in (1, 2) for o in definitions):
            raise ValueError(f"/{command['name']} needs a subcommand")
        resolved: dict[str, Any] = {}
        built = []
        known = {o["name"]: o for o in definitions}
        for name in values:
            if name not in known:
                raise ValueError(f"unknown option {name!r}")
        for definition in definitions:
            name = definition["name"]
            if name not in values:
                if definition.get("required") and name != focused:
                    raise ValueError(f"missing required option {name!r}")
                continue
            value = values[name]
            option: dict[str, Any] = {"name": name, "type": definition["type"], "value": value}
            if name == focused:
                option["focused"] = True
            else:
                self._check_option(definition, value, resolved)
            built.append(option)
        if not wrappers:
            return built, resolved
        wrappers[-1]["options"] = built
        for outer, inner in zip(wrappers[-2::-1], wrappers[:0:-1], strict=False):
            outer["options"] = [inner]
        return [wrappers[0]], resolved

    def _check_option(self, definition: dict[str, Any], value: Any, resolved: dict[str, Any]) -> None:
        name, kind = definition["name"], definition["type"]
        world = self.world
        expected = OPTION_TYPES.get(kind)
        if kind == 3 and not isinstance(value, str):
            raise ValueError(f"option {name!r} must be a string")
        if kind == 4 and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"option {name!r} must be an integer")
        if kind == 5 and not isinstance(value, bool):
            raise ValueError(f"option {name!r} must be a boolean")
        if kind == 10 and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"option {name!r} must be a number")
        if kind == 7:
            channel = world.channels.get(int(value)) if str(value).isdigit() else None
            if channel is None:
                raise ValueError(f"option {name!r} must be a channel id")
            resolved.setdefault("channels", {})[str(value)] = {
                **channel,
                "permissions": str(world.channel_permissions(world.bot_id, int(value))),
            }
        if kind == 6:
            user = world.users.get(int(value)) if str(value).isdigit() else None
            if user is None:
                raise ValueError(f"option {name!r} must be a user id")
            resolved.setdefault("users", {})[str(value)] = user
            if int(value) in world.member_roles:
                member = {k: v for k, v in world.member(int(value)).items() if k != "user"}
                resolved.setdefault("members", {})[str(value)] = member
        choices = definition.get("choices")
        if choices and value not in [choice["value"] for choice in choices]:
            raise ValueError(f"option {name!r} must be one of the choices")
        low_length, high_length = definition.get("min_length", 0), definition.get("max_length", 6000)
        if kind == 3 and not low_length <= len(value) <= high_length:
            raise ValueError(f"option {name!r} has the wrong length")
        if kind in (4, 10) and isinstance(value, int | float):
            low, high = definition.get("min_value"), definition.get("max_value")
            if (low is not None and value < low) or (high is not None and value > high):
                raise ValueError(f"option {name!r} is out of range")
        del expected

    async def _control_interaction_record(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(int(request.match_info["interaction_id"]))
        if interaction is None:
            return _json({"error": "unknown interaction"}, 404)
        return _json(
            {
                "dispatched_at": interaction.dispatched_at,
                "callbacks": interaction.callbacks,
                "original": None if interaction.original is None else interaction.original.control_view(),
                "followups": [m.control_view() for m in interaction.followups],
            }
        )

    async def _control_requests(self, request: web.Request) -> web.Response:
        return _json(self.request_log)

    async def _control_faults(self, request: web.Request) -> web.Response:
        spec = await request.json()
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind in ("gateway_reconnect", "gateway_invalid_session", "gateway_close"):
            await self._gateway_fault(spec)
            return _json({"applied": kind})
        if kind not in ("http_error", "rate_limit", "delay"):
            return _json({"error": f"unknown fault kind {kind!r}"}, 400)
        self._faults.append(Fault(spec, int(spec.get("count", 1))))
        return _json({"queued": kind})

    def _take_fault(self, method: str, path: str, has_files: bool) -> Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.matches(method, path, has_files):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None


def _command_problem(command: Any) -> tuple[str, str] | None:
    """Why Discord would refuse this command definition, as (field, message), or None."""
    if not isinstance(command, dict):
        return "_root", "must be an object"
    name = command.get("name")
    if (
        not isinstance(name, str)
        or not COMMAND_NAME.match(name)
        or (command.get("type", 1) == 1 and name != name.lower())
    ):
        return "name", "Command name is invalid"
    if command.get("type", 1) == 1:
        description = command.get("description")
        if not isinstance(description, str) or not 1 <= len(description) <= 100:
            return "description", "Must be between 1 and 100 in length."
    return _options_problem(command.get("options") or [])


def _options_problem(options: list[dict[str, Any]]) -> tuple[str, str] | None:
    if len(options) > 25:
        return "options", "Must be 25 or fewer in length."
    seen_optional = False
    for option in options:
        name = option.get("name", "")
        if not COMMAND_NAME.match(name) or name != name.lower():
            return "options", f"Option name {name!r} is invalid"
        if not 1 <= len(option.get("description", "")) <= 100:
            return "options", f"Description of {name!r} must be between 1 and 100 in length."
        if option.get("type") in (1, 2):
            problem = _options_problem(option.get("options") or [])
            if problem is not None:
                return problem
            continue
        if option.get("required"):
            if seen_optional:
                return "options", "Required options must be placed before non-required options"
        else:
            seen_optional = True
        if len(option.get("choices") or []) > 25:
            return "options", "Must be 25 or fewer choices."
    return None
