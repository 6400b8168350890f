"""The Discord emulator: REST under ``/api/v10``, the gateway on ``/``, the control API under ``/_emulator/``.

Real Discord's refusals are reproduced with its status codes and error bodies; each rule names the doc
(discord/discord-api-docs, ``developers/``) or the library source it follows. The pieces:
:mod:`.gateway` (sessions, heartbeats, intents, compression), :mod:`.ratelimits` (per-route buckets, the
global limit), :mod:`.interactions` (commands, callbacks, followups, button presses), :mod:`.validation`
(message bodies), :mod:`.world` (the guild, permissions); this module routes REST and the control API.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

from aiohttp import BodyPartReader, web

from tests.fakes.discord_server.common import (
    API,
    EPHEMERAL,
    GUILD_CHANNEL_TYPES,
    LOADING,
    MAX_UPLOAD,
    NONCE_WINDOW,
    Refusal,
    _error,
    _form_error,
    _int_query,
    _json,
    invalid_json,
    not_allowed,
    not_found,
    read_json,
)
from tests.fakes.discord_server.gateway import (
    PRIVILEGED,
    SESSION_START_PERIOD,
    GatewayMixin,
    Session,
    blank_content,
)
from tests.fakes.discord_server.interactions import Interaction, InteractionsMixin
from tests.fakes.discord_server.ratelimits import RateLimiter, too_many
from tests.fakes.discord_server.uploads import attachment_object, parse_member_uploads
from tests.fakes.discord_server.validation import validate_message
from tests.fakes.discord_server.world import (
    ADD_REACTIONS,
    ATTACH_FILES,
    CREATE_PUBLIC_THREADS,
    EMBED_LINKS,
    MANAGE_CHANNELS,
    MANAGE_MESSAGES,
    MANAGE_THREADS,
    PERMISSION_NAMES,
    PIN_MESSAGES,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    THREAD_TYPES,
    VIEW_CHANNEL,
    StoredMessage,
    World,
    iso_now,
)

#: ``POST /_emulator/faults`` ``{"kind", "method", "path" (fnmatch), "count", "attachments"?}`` and per kind:
#: ``http_error`` ``status``; ``rate_limit*`` ``retry_after``; ``delay`` ``seconds`` (the response is held);
#: ``connection_reset`` drops the TCP connection without a response, before the request is processed, or
#: after it (``"after_processing": true``: the message exists, but the client never hears of it).
FAULT_KINDS = (
    "http_error",
    "rate_limit",
    "rate_limit_global",
    "rate_limit_shared",
    "delay",
    "connection_reset",
)


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


class DiscordEmulator(GatewayMixin, InteractionsMixin):
    """See the package docstring. Use ``async with DiscordEmulator() as emu``.

    ``valid_tokens``: the bot tokens accepted (None: any); others get close 4004 on IDENTIFY and 401 on
    REST. ``privileged_intents``: those the application was granted, of "members", "presences" and
    "message_content" (None: all three). ``heartbeat_interval`` and ``session_timeout`` in seconds
    (Discord: 41.25 s, "a few minutes"). ``route_limits`` overrides per-route limits, keyed like
    ``"POST /channels/{channel_id}/messages"``; ``global_limit`` is requests per second per token.

    Sharding (see :mod:`.gateway`): ``guilds`` makes that many guilds (None: the one default guild);
    ``max_concurrency`` is ``GET /gateway/bot``'s, the IDENTIFY buckets; ``identify_interval`` the
    seconds between two IDENTIFYs of one bucket (Discord: 5; None means 5 when ``guilds`` is given and
    0, no limit, for the default one-guild world, whose tests restart bots back to back);
    ``session_start_total`` the daily session starts (Discord: 1000).
    """

    def __init__(
        self,
        *,
        interaction_token_ttl: float = 900.0,
        callback_deadline: float = 3.0,
        valid_tokens: set[str] | None = None,
        privileged_intents: set[str] | None = None,
        heartbeat_interval: float = 41.25,
        session_timeout: float = 180.0,
        route_limits: dict[str, tuple[int, float]] | None = None,
        global_limit: int = 50,
        guilds: int | None = None,
        max_concurrency: int = 1,
        identify_interval: float | None = None,
        session_start_total: int = 1000,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.world = World(guilds)
        self.max_concurrency = max_concurrency
        self.identify_interval = (
            identify_interval if identify_interval is not None else 0.0 if guilds is None else 5.0
        )
        self.session_start_total = session_start_total
        self.session_starts_remaining = session_start_total
        self.session_start_reset = time.monotonic()
        #: bucket -> monotonic time of its last accepted IDENTIFY
        self.identified_at: dict[int, float] = {}
        #: accepted IDENTIFYs ``{"shard", "bucket", "at"}`` and refused ones (``"since_last"`` too)
        self.identifies: list[dict[str, Any]] = []
        self.identify_refusals: list[dict[str, Any]] = []
        self.interaction_token_ttl = interaction_token_ttl
        self.callback_deadline = callback_deadline
        self.valid_tokens = valid_tokens
        self.privileged_intents = set(PRIVILEGED) if privileged_intents is None else set(privileged_intents)
        unknown = self.privileged_intents - set(PRIVILEGED)
        if unknown:
            raise ValueError(f"unknown privileged intents {sorted(unknown)}; known: {sorted(PRIVILEGED)}")
        self.heartbeat_interval = heartbeat_interval
        self.session_timeout = session_timeout
        self.ratelimits = RateLimiter(route_limits, global_limit)
        self.sessions: dict[str, Session] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.interactions: dict[int, Interaction] = {}
        self.tokens: dict[str, Interaction] = {}
        self.request_log: list[dict[str, Any]] = []
        self._faults: list[Fault] = []
        self.closed_connections: list[dict[str, Any]] = []
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
        app.router.add_post("/_emulator/permissions", self._control_overwrite)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._attachment)
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
        await self._close_sockets()
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

    # -- REST ------------------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        method = request.method
        has_files = request.content_type.startswith("multipart/")
        route = self.ratelimits.route(method, path)
        now = time.monotonic()
        # "time" is the issue's name for it; "at" matches the other records' time fields.
        entry = {
            "method": method,
            "path": path,
            "status": 0,
            "time": now,
            "at": now,
            "bucket": route.bucket if route.limited else None,
            "route": route.name,
        }
        self.request_log.append(entry)
        fault = self._take_fault(method, path, has_files)
        delay = 0.0
        if fault is not None:
            kind = fault.spec["kind"]
            if kind == "http_error":
                status = int(fault.spec.get("status", 500))
                entry["status"] = status
                return _json({"message": f"{status}: Fault injected", "code": 0}, status)
            if kind in ("rate_limit", "rate_limit_global", "rate_limit_shared"):
                entry["status"] = 429
                scope = {"rate_limit": "user", "rate_limit_global": "global", "rate_limit_shared": "shared"}
                return too_many(
                    route,
                    float(fault.spec.get("retry_after", 1.0)),
                    scope[kind],
                    remaining=0 if kind == "rate_limit" else None,
                )
            if kind == "connection_reset" and not fault.spec.get("after_processing"):
                # The TCP connection dies without a response (a reset by a proxy, a crashed edge).
                _reset(request, entry)
            if kind == "delay":
                delay = float(fault.spec.get("seconds", 1.0))
        try:
            token = None
            # docs: Get Gateway "does not require authentication"; interaction and webhook-token routes
            # authenticate with the token in the path.
            if not path.startswith(("/interactions/", "/webhooks/")) and path != "/gateway":
                token = self._authenticate(request)
            limited = self.ratelimits.hit(route, token)
            response = limited if limited is not None else await self._route(request, method, path)
        except Refusal as refusal:
            response = refusal.response
        if response.status != 429:
            response.headers.update(self.ratelimits.headers(route))
        entry["status"] = response.status
        if delay:
            await asyncio.sleep(delay)
        if fault is not None and fault.spec["kind"] == "connection_reset":
            # ``after_processing``: Discord did the work (the message exists), but the reply never arrives.
            _reset(request, entry)
        return response

    def _authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bot ")
        if not header.startswith("Bot ") or (
            self.valid_tokens is not None and token not in self.valid_tokens
        ):
            raise Refusal(_error(401, 0, "401: Unauthorized"))
        return token

    def _application(self) -> dict[str, Any]:
        world = self.world
        return {
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
            "team": None,
            "summary": "",
            "approximate_guild_count": len(world.guilds),
            "approximate_user_install_count": 0,
            "approximate_user_authorization_count": 0,
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "tags": [],
            "integration_types_config": {"0": {}},
        }

    def _gateway_bot(self) -> dict[str, Any]:
        """docs: events/gateway.md, "Get Gateway Bot": about one shard per 1,000 guilds recommended."""
        elapsed = time.monotonic() - self.session_start_reset
        if elapsed >= SESSION_START_PERIOD:
            self.session_start_reset += elapsed
            self.session_starts_remaining = self.session_start_total
            elapsed = 0.0
        return {
            "url": self.gateway_url,
            "shards": max(1, math.ceil(len(self.world.guilds) / 1000)),
            "session_start_limit": {
                "total": self.session_start_total,
                "remaining": self.session_starts_remaining,
                "reset_after": int((SESSION_START_PERIOD - elapsed) * 1000),
                "max_concurrency": self.max_concurrency,
            },
        }

    async def _route(self, request: web.Request, method: str, path: str) -> web.Response:
        world = self.world
        parts = path.strip("/").split("/")
        if path == "/users/@me" and method == "GET":
            return _json(world.bot_user)
        if path in ("/oauth2/applications/@me", "/applications/@me") and method == "GET":
            # docs: resources/application.md, "Get Current Application"; discord.py reads the OAuth2 one.
            return _json(self._application())
        if path == "/gateway" and method == "GET":
            return _json({"url": self.gateway_url})
        if path == "/gateway/bot" and method == "GET":
            return _json(self._gateway_bot())
        if parts[0] == "applications" and len(parts) >= 3:
            return await self._commands_route(request, method, parts)
        if parts[0] == "users" and len(parts) == 2 and method == "GET":
            user = world.users.get(int(parts[1])) if parts[1].isdigit() else None
            return _json(user) if user else _error(404, 10013, "Unknown User")
        if path == "/users/@me/channels" and method == "POST":
            body = await read_json(request)
            recipient = str(body.get("recipient_id", "")) if isinstance(body, dict) else ""
            channel_id = world.dm_channels.get(int(recipient)) if recipient.isdigit() else None
            return _json(world.channels[channel_id]) if channel_id else _error(404, 10013, "Unknown User")
        if parts[0] == "guilds" and len(parts) >= 2:
            return self._guild_route(request, method, parts)
        if parts[0] == "channels" and len(parts) >= 2:
            return await self._channel_route(request, method, parts)
        if parts[0] == "interactions" and len(parts) == 4 and parts[3] == "callback" and method == "POST":
            return await self._callback(request, int(parts[1]) if parts[1].isdigit() else 0, parts[2])
        if parts[0] == "webhooks" and len(parts) >= 3:
            return await self._webhook_route(request, method, parts)
        return not_found()

    def _guild_route(self, request: web.Request, method: str, parts: list[str]) -> web.Response:
        """docs: resources/guild.md. Only the emulated guilds exist; the bot is in no other."""
        world = self.world
        guild_id = int(parts[1]) if parts[1].isdigit() else 0
        if guild_id not in world.guilds:
            return _error(404, 10004, "Unknown Guild")
        record = world.guild_record(guild_id)
        tail = parts[2:]
        if method != "GET":
            return not_allowed()
        if not tail:
            guild = world.guild(guild_id)
            for key in ("members", "channels", "threads", "presences", "voice_states"):
                guild.pop(key, None)
            if request.query.get("with_counts") in ("true", "1", "True"):
                guild["approximate_member_count"] = len(record.member_roles)
                guild["approximate_presence_count"] = 0
            return _json(guild)
        if tail == ["channels"]:
            return _json(world.guild(guild_id)["channels"])
        if tail == ["roles"]:
            return _json(list(record.roles.values()))
        if len(tail) == 2 and tail[0] == "roles":
            role = record.roles.get(int(tail[1])) if tail[1].isdigit() else None
            return _json(role) if role else _error(404, 10011, "Unknown Role")
        if tail == ["members"]:
            # docs: events/gateway.md, "HTTP Restrictions": List Guild Members needs GUILD_MEMBERS.
            if "members" not in self.privileged_intents:
                return _error(403, 50001, "Missing Access")
            limit, problem = _int_query(request.query, "limit", 1, 1, 1000)
            if problem is not None:
                return problem
            after = int(request.query.get("after", "0") or 0)
            ids = sorted(u for u in record.member_roles if u > after)[:limit]
            return _json([world.member(user_id, guild_id) for user_id in ids])
        if len(tail) == 2 and tail[0] == "members":
            user_id = world.bot_id if tail[1] == "@me" else int(tail[1]) if tail[1].isdigit() else 0
            if user_id not in record.member_roles:
                return _error(404, 10007, "Unknown Member")
            return _json(world.member(user_id, guild_id))
        return not_found()

    # -- channels and messages -------------------------------------------------------------------------

    def _channel(self, channel_id: int) -> dict[str, Any]:
        channel = self.world.channels.get(channel_id)
        if channel is None or channel_id in self.world.deleted_channels:
            raise Refusal(_error(404, 10003, "Unknown Channel"))
        return channel

    def _permissions(self, channel_id: int) -> int:
        return self.world.channel_permissions(self.world.bot_id, channel_id)

    def _require(self, channel_id: int, permission: int) -> None:
        if not self._permissions(channel_id) & permission:
            raise Refusal(_error(403, 50013, "Missing Permissions"))

    def _readable(self, data: dict[str, Any]) -> dict[str, Any]:
        """A message as a REST read returns it: without the Message Content intent granted to the
        application, others' content is blank (docs: events/gateway.md, "HTTP Restrictions" and "Message
        Content Intent": the restriction follows the application's grant, not a session's intents)."""
        if "message_content" in self.privileged_intents:
            return data
        found = self.world.find_message(int(data["id"]))
        if found is None or self._can_read_content(0, found[1]):
            return data
        return blank_content(data)

    async def _channel_route(self, request: web.Request, method: str, parts: list[str]) -> web.Response:
        """docs: resources/channel.md and resources/message.md; permissions as each endpoint states."""
        world = self.world
        if not parts[1].isdigit():
            return _error(404, 10003, "Unknown Channel")
        channel_id = int(parts[1])
        channel = self._channel(channel_id)
        permissions = self._permissions(channel_id)
        if not permissions & VIEW_CHANNEL:
            # A channel the bot cannot see answers 50001 Missing Access, not 50013.
            return _error(403, 50001, "Missing Access")
        tail = parts[2:]
        if not tail:
            if method == "GET":
                return _json(channel)
            if method == "PATCH":
                return await self._edit_channel(request, channel_id, channel, permissions)
            return not_allowed()
        if tail == ["typing"]:
            if method != "POST":
                return not_allowed()
            self._require(channel_id, SEND_MESSAGES)
            return web.Response(status=204)
        if tail[0] == "pins" or tail[:2] == ["messages", "pins"]:
            return await self._pins_route(request, method, channel_id, tail, permissions)
        if tail == ["messages"]:
            if method == "GET":
                limit, problem = _int_query(request.query, "limit", 50, 1, 100)
                if problem is not None:
                    return problem
                if not permissions & READ_MESSAGE_HISTORY:
                    # docs: Get Channel Messages: "If the current user is missing the
                    # READ_MESSAGE_HISTORY permission in the channel, then no messages will be returned."
                    return _json([])
                return _json([self._readable(m) for m in self._history(channel_id, request.query, limit)])
            if method == "POST":
                self._require(channel_id, SEND_MESSAGES)
                payload, files = await self._read_message(request)
                status, message = await self._create_message(channel_id, world.bot_id, payload, files)
                return _json(message.data, status)
            return not_allowed()
        if tail == ["messages", "bulk-delete"]:
            if method != "POST":
                return not_allowed()
            self._require(channel_id, MANAGE_MESSAGES)
            body = await read_json(request)
            ids = body.get("messages") if isinstance(body, dict) else None
            if not isinstance(ids, list) or not 2 <= len(ids) <= 100:
                return _form_error("messages", "BASE_TYPE_BAD_LENGTH", "Must be between 2 and 100 in length.")
            for message_id in ids:
                await self._delete_message(channel_id, int(message_id))
            return web.Response(status=204)
        if tail[0] != "messages" or not tail[1].isdigit():
            return not_found()
        found = world.find_message(int(tail[1]))
        if found is None or found[0] != channel_id:
            return _error(404, 10008, "Unknown Message")
        stored = found[1]
        if tail[2:] == ["threads"]:
            if method != "POST":
                return not_allowed()
            return await self._start_thread(request, channel_id, stored)
        if len(tail) >= 4 and tail[2] == "reactions":
            return await self._reaction_route(request, method, channel_id, stored, tail[3:], permissions)
        if len(tail) > 2:
            return not_found()
        if method == "GET":
            # docs: Get Channel Message "requires VIEW_CHANNEL and READ_MESSAGE_HISTORY".
            if not permissions & READ_MESSAGE_HISTORY:
                return _error(403, 50001, "Missing Access")
            return _json(self._readable(stored.data))
        if method == "PATCH":
            if stored.author_id != world.bot_id:
                return _error(403, 50005, "Cannot edit a message authored by another user")
            payload, files = await self._read_message(request)
            await self._edit_message(stored, payload, files)
            return _json(stored.data, 200)
        if method == "DELETE":
            # docs: Delete Message: another user's message needs MANAGE_MESSAGES.
            if stored.author_id != world.bot_id:
                self._require(channel_id, MANAGE_MESSAGES)
            await self._delete_message(channel_id, stored.data["id"])
            return web.Response(status=204)
        return not_allowed()

    async def _edit_channel(
        self, request: web.Request, channel_id: int, channel: dict[str, Any], permissions: int
    ) -> web.Response:
        """docs: resources/channel.md, Modify Channel: MANAGE_CHANNELS (a thread: MANAGE_THREADS, or its
        owner for name/archived/auto_archive_duration)."""
        thread = channel["type"] in THREAD_TYPES
        owner = thread and channel.get("owner_id") == str(self.world.bot_id)
        if not permissions & (MANAGE_THREADS if thread else MANAGE_CHANNELS) and not owner:
            return _error(403, 50013, "Missing Permissions")
        body = await read_json(request)
        if not isinstance(body, dict):
            return _form_error("_root", "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
        if "name" in body and not (isinstance(body["name"], str) and 1 <= len(body["name"]) <= 100):
            return _form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if "topic" in body and body["topic"] is not None and len(str(body["topic"])) > 1024:
            return _form_error("topic", "BASE_TYPE_MAX_LENGTH", "Must be 1024 or fewer in length.")
        for key in ("name", "topic", "nsfw", "rate_limit_per_user"):
            if key in body and not (thread and key in ("topic", "nsfw")):
                channel[key] = body[key]
        if thread:
            metadata = channel["thread_metadata"]
            for key in ("archived", "locked", "auto_archive_duration"):
                if key in body:
                    metadata[key] = body[key]
        await self.dispatch("THREAD_UPDATE" if thread else "CHANNEL_UPDATE", channel)
        return _json(channel)

    async def _start_thread(
        self, request: web.Request, channel_id: int, stored: StoredMessage
    ) -> web.Response:
        """docs: resources/channel.md, Start Thread from Message: CREATE_PUBLIC_THREADS; one per message."""
        self._require(channel_id, CREATE_PUBLIC_THREADS)
        if self.world.channels[channel_id]["type"] in THREAD_TYPES:
            return _error(400, 50024, "Cannot execute action on this channel type")
        body = await read_json(request)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            return _form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if int(stored.data["id"]) in self.world.channels:
            return _error(400, 160004, "A thread has already been created for this message")
        thread = self.world.create_thread(channel_id, int(stored.data["id"]), name)
        stored.data["thread"] = thread
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return _json(thread, 201)

    async def _pins_route(
        self, request: web.Request, method: str, channel_id: int, tail: list[str], permissions: int
    ) -> web.Response:
        """docs: resources/message.md, Get Channel Pins / Pin Message / Unpin Message (and the deprecated
        ``/pins`` forms). Pinning needs PIN_MESSAGES (MANAGE_MESSAGES still grants it while Discord moves
        pinning to its own permission)."""
        new_style = tail[0] == "messages"
        rest = tail[2:] if new_style else tail[1:]
        pinned = [m for m in self.world.messages[channel_id] if m.data.get("pinned") and not m.deleted]
        if not rest:
            if method != "GET":
                return not_allowed()
            if not permissions & READ_MESSAGE_HISTORY:
                pinned = []
            if new_style:
                items = [
                    {"pinned_at": m.data.get("pinned_at", iso_now()), "message": self._readable(m.data)}
                    for m in reversed(pinned)
                ]
                return _json({"items": items[:50], "has_more": len(items) > 50})
            return _json([self._readable(m.data) for m in reversed(pinned)][:50])
        if len(rest) != 1 or method not in ("PUT", "DELETE"):
            return not_allowed() if len(rest) == 1 else not_found()
        if not permissions & (PIN_MESSAGES | MANAGE_MESSAGES):
            return _error(403, 50013, "Missing Permissions")
        found = self.world.find_message(int(rest[0])) if rest[0].isdigit() else None
        if found is None or found[0] != channel_id:
            return _error(404, 10008, "Unknown Message")
        stored = found[1]
        if method == "PUT":
            if not stored.data["pinned"] and len(pinned) >= 250:
                return _error(400, 30003, "Maximum number of pins reached (250)")
            stored.data["pinned"] = True
            stored.data["pinned_at"] = iso_now()
        else:
            stored.data["pinned"] = False
            stored.data.pop("pinned_at", None)
        event = {"channel_id": str(channel_id), "last_pin_timestamp": iso_now()}
        if "guild_id" in stored.data:
            event["guild_id"] = stored.data["guild_id"]
        await self.dispatch("CHANNEL_PINS_UPDATE", event)
        await self.dispatch("MESSAGE_UPDATE", dict(stored.data), message=stored)
        return web.Response(status=204)

    async def _reaction_route(
        self,
        request: web.Request,
        method: str,
        channel_id: int,
        stored: StoredMessage,
        rest: list[str],
        permissions: int,
    ) -> web.Response:
        """docs: resources/message.md, Create Reaction (READ_MESSAGE_HISTORY, and ADD_REACTIONS for a new
        emoji), Delete Own Reaction, Get Reactions."""
        emoji = rest[0]
        reactions: list[dict[str, Any]] = stored.data.setdefault("reactions", [])
        reaction = next((r for r in reactions if r["emoji"]["name"] == emoji), None)
        if rest[1:] == ["@me"] and method == "PUT":
            if not permissions & READ_MESSAGE_HISTORY or (
                reaction is None and not permissions & ADD_REACTIONS
            ):
                return _error(403, 50013, "Missing Permissions")
            if reaction is None:
                reaction = {"count": 0, "me": False, "emoji": {"id": None, "name": emoji}, "users": []}
                reactions.append(reaction)
            if not reaction["me"]:
                reaction.update(count=reaction["count"] + 1, me=True)
            return web.Response(status=204)
        if rest[1:] == ["@me"] and method == "DELETE":
            if reaction is not None and reaction["me"]:
                reaction.update(count=reaction["count"] - 1, me=False)
                if reaction["count"] == 0:
                    reactions.remove(reaction)
            return web.Response(status=204)
        if not rest[1:] and method == "GET":
            return _json([self.world.bot_user] if reaction is not None and reaction["me"] else [])
        return not_allowed()

    def _history(self, channel_id: int, query: Any, limit: int) -> list[dict[str, Any]]:
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
                    try:
                        payload = json.loads(await part.read())
                    except ValueError as exc:
                        raise Refusal(invalid_json()) from exc
                elif part.name and part.name.startswith("files["):
                    content = bytes(await part.read())
                    if len(content) > MAX_UPLOAD:
                        raise Refusal(_error(413, 40005, "Request entity too large"))
                    files.append((part.filename or "file", content))
            if not isinstance(payload, dict):
                raise Refusal(
                    _form_error("_root", "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
                )
            return payload, files
        if not await request.read():
            return {}, files
        body = await read_json(request)
        if not isinstance(body, dict):
            raise Refusal(
                _form_error("_root", "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            )
        return body, files

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
        content_types: list[str | None] | None = None,
    ) -> tuple[int, StoredMessage]:
        """Create (or, for a repeated enforced nonce, return) a message; dispatch MESSAGE_CREATE.

        ``loading`` is the empty "thinking…" message a deferred interaction shows; ``content_types`` are
        the uploader's, one per file (None: guessed from the name).
        """
        world = self.world
        validate_message(payload, files, require_body=not loading)
        # Interaction responses and followups are webhook messages: the bot's channel permissions do not
        # apply to them, and their mentions default to users only (docs: resources/message.md,
        # "Default Settings for Allowed Mentions").
        webhook = bool(extra and "webhook_id" in extra)
        permissions = self._permissions(channel_id) if author_id == world.bot_id and not webhook else None
        if permissions is not None:
            reference = payload.get("message_reference") or {}
            if reference.get("message_id") and not permissions & READ_MESSAGE_HISTORY:
                # docs: Create Message: a reply needs READ_MESSAGE_HISTORY (JSON code 160002).
                raise Refusal(_error(403, 160002, "Cannot reply without permission to read message history"))
            if files and not permissions & ATTACH_FILES:
                raise Refusal(_error(403, 50013, "Missing Permissions"))
            if payload.get("embeds") and not permissions & EMBED_LINKS:
                # Without EMBED_LINKS Discord posts the message and drops its embeds.
                payload = {**payload, "embeds": []}
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            for existing in reversed(world.messages[channel_id]):
                if time.monotonic() - existing.created_at > NONCE_WINDOW:
                    break
                if existing.nonce == str(nonce) and existing.author_id == author_id and not existing.deleted:
                    return 200, existing
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
        allowed = payload.get("allowed_mentions", {"parse": ["users"]} if webhook else None)
        users, roles, everyone = world.mentions(content, author_id, allowed, replied, channel_id)
        message_id = world.ids.next()
        attachments = []
        stored_files: dict[str, bytes] = {}
        for index, (filename, blob) in enumerate(files):
            attachment_id = str(world.ids.next())
            stored_files[attachment_id] = blob
            url = f"{self.url}/attachments/{channel_id}/{attachment_id}/{filename}"
            content_type = content_types[index] if content_types else None
            attachments.append(attachment_object(attachment_id, filename, blob, url, content_type))
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
            "components": payload.get("components") or [],
        }
        if nonce is not None:
            data["nonce"] = nonce
        if channel["type"] in GUILD_CHANNEL_TYPES:
            data["guild_id"] = channel["guild_id"]
        if replied is not None:
            data["message_reference"] = {
                "type": 0,
                "message_id": replied.data["id"],
                "channel_id": str(channel_id),
            }
            if channel["type"] in GUILD_CHANNEL_TYPES:
                data["message_reference"]["guild_id"] = channel["guild_id"]
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
                member = world.member(author_id, int(channel["guild_id"]))
                event["member"] = {k: v for k, v in member.items() if k != "user"}
            await self.dispatch("MESSAGE_CREATE", event, message=stored)
        return 200, stored

    async def _edit_message(
        self, stored: StoredMessage, payload: dict[str, Any], files: list[tuple[str, bytes]]
    ) -> None:
        validate_message(payload, files, require_body=False)
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
        if "components" in payload:
            data["components"] = payload["components"] or []
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
            event["guild_id"] = self.world.channels[channel_id]["guild_id"]
        await self.dispatch("MESSAGE_DELETE", event)

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
                    {
                        "session_id": s.id,
                        "shard": list(s.shard) if s.shard else None,
                        "intents": s.intents,
                        "seq": s.seq,
                        "connected": True,
                        "encoding": s.connection.encoding,
                        "compress": s.connection.compress,
                    }
                    for s in self.sessions.values()
                    if s.connection is not None and not s.connection.socket.closed
                ],
                # Gateway connections that ended: {"session_id", "code", "by": "server" | "client"}.
                "closed": self.closed_connections,
                "commands": [command for scope in self.commands.values() for command in scope],
                # Every guild, in index order (index 0 is ``guild_id``): {"id", "name", "channels"}.
                "guilds": [
                    {
                        "id": str(record.id),
                        "name": record.name,
                        "channels": {
                            world.channels[c]["name"]: str(c)
                            for c in record.channel_ids
                            if c not in world.deleted_channels
                        },
                    }
                    for record in world.guilds.values()
                ],
                "gateway_bot": self._gateway_bot(),
                "identifies": self.identifies,
                # IDENTIFYs answered with op 9 for coming too early: {"shard", "bucket", "at", "since_last"}.
                "identify_refusals": self.identify_refusals,
            }
        )

    async def _control_message(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "channel_id" not in body or "author_id" not in body:
            return _json({"error": "channel_id and author_id are required"}, 400)
        # Names work too ("general", "alice"): ids change with every start of the emulator.
        channel_id = self.world.channel_id(body["channel_id"])
        author_id = self.world.user_id(body["author_id"])
        if channel_id is None or author_id is None:
            return _json({"error": "unknown channel or author"}, 400)
        self._channel(channel_id)
        payload: dict[str, Any] = {"content": body.get("content", "")}
        if body.get("reply_to"):
            payload["message_reference"] = {"message_id": str(body["reply_to"])}
        # A member's files: Discord's count and size limits for them apply (see .uploads).
        files, content_types = parse_member_uploads(body.get("attachments"))
        _, stored = await self._create_message(
            channel_id, author_id, payload, files, content_types=content_types
        )
        return _json(stored.data)

    async def _control_channel_messages(self, request: web.Request) -> web.Response:
        channel_id = self.world.channel_id(request.match_info["channel_id"]) or 0
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
        """The older form: ``{"bot_denied": [names]}`` replaces the bot's member overwrite."""
        body = await request.json()
        denied = body.get("bot_denied", [])
        return await self._apply_overwrite(request.match_info["channel_id"], "bot", [], denied)

    async def _control_overwrite(self, request: web.Request) -> web.Response:
        """``{"channel_id", "target": "bot" | user name | role name or id, "allow": [...], "deny": [...]}``
        sets that target's overwrite in the channel, as a server admin would. Without ``channel_id`` a
        role's own (guild-wide) permissions change instead: ``allow`` adds, ``deny`` removes."""
        body = await request.json()
        if not isinstance(body, dict):
            return _json({"error": "a JSON object is required"}, 400)
        return await self._apply_overwrite(
            body.get("channel_id"),
            str(body.get("target", "bot")),
            body.get("allow") or [],
            body.get("deny") or [],
        )

    async def _apply_overwrite(
        self, channel_ref: Any, target_name: str, allow: list[str], deny: list[str]
    ) -> web.Response:
        world = self.world
        unknown = [name for name in [*allow, *deny] if name not in PERMISSION_NAMES]
        if unknown:
            return _json({"error": f"unknown permissions {unknown}; known: {sorted(PERMISSION_NAMES)}"}, 400)
        target = world.overwrite_target(target_name)
        if target is None:
            return _json(
                {"error": f"unknown target {target_name!r}: 'bot', a user name, a role name or id"}, 400
            )
        allow_bits = sum({PERMISSION_NAMES[name] for name in allow})
        deny_bits = sum({PERMISSION_NAMES[name] for name in deny})
        if channel_ref is None:
            if target[1] != 0:
                return _json(
                    {"error": "guild-wide permissions belong to roles; name a channel_id for a member"}, 400
                )
            role = world.roles[target[0]]
            role["permissions"] = str((int(role["permissions"]) | allow_bits) & ~deny_bits)
            await self.dispatch("GUILD_ROLE_UPDATE", {"guild_id": str(world.guild_id), "role": role})
            return _json(role)
        channel_id = world.channel_names.get(str(channel_ref)) or (
            int(channel_ref) if str(channel_ref).isdigit() else 0
        )
        channel = world.channels.get(channel_id)
        if channel is None or channel.get("type") == 1:
            return _json({"error": f"unknown guild channel {channel_ref!r}"}, 400)
        if channel["type"] in THREAD_TYPES:
            return _json({"error": "a thread takes its parent's overwrites: set them on the parent"}, 400)
        world.set_overwrite(channel_id, target, allow_bits, deny_bits)
        await self.dispatch("CHANNEL_UPDATE", channel)
        return _json(channel)

    async def _attachment(self, request: web.Request) -> web.StreamResponse:
        """The CDN: an attachment's bytes at the ``url`` its message gave."""
        found = None
        channel_id = (
            int(request.match_info["channel_id"]) if request.match_info["channel_id"].isdigit() else 0
        )
        attachment_id = request.match_info["attachment_id"]
        for stored in self.world.messages.get(channel_id, []):
            if attachment_id in stored.files and not stored.deleted:
                found = stored
        if found is None:
            return web.Response(status=404, text="Not Found")
        meta = next(a for a in found.data["attachments"] if a["id"] == attachment_id)
        return web.Response(
            body=found.files[attachment_id],
            content_type=meta.get("content_type", "application/octet-stream").split(";")[0],
        )

    async def _control_requests(self, request: web.Request) -> web.Response:
        return _json(self.request_log)

    async def _control_faults(self, request: web.Request) -> web.Response:
        spec = await request.json()
        kind = spec.get("kind") if isinstance(spec, dict) else None
        if kind in ("gateway_reconnect", "gateway_invalid_session", "gateway_close"):
            await self._gateway_fault(spec)
            return _json({"applied": kind})
        if kind not in FAULT_KINDS:
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


def _reset(request: web.Request, entry: dict[str, Any]) -> NoReturn:
    """Drop the request's TCP connection without a response."""
    entry["status"] = "reset"
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError
