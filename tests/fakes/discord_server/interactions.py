"""Application commands and interactions: command sync, callbacks, webhooks (followups), the control API."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.discord_server.common import (
    COMMAND_NAME,
    EPHEMERAL,
    LOADING,
    MAX_UPLOAD,
    OPTION_TYPES,
    Refusal,
    _error,
    _form_error,
    _json,
    not_allowed,
    not_found,
    read_json,
)
from tests.fakes.discord_server.world import StoredMessage

# docs: interactions/receiving-and-responding.md, "Interaction Callback Type" (1 PONG is for HTTP endpoints).
CALLBACK_TYPES = (1, 4, 5, 6, 7, 8, 9, 10, 12)
#: interaction type (2 command, 3 component, 4 autocomplete) -> callback types it takes
ALLOWED_CALLBACKS = {2: {4, 5, 9, 12}, 3: {4, 5, 6, 7, 9}, 4: {8}}


@dataclass
class Interaction:
    id: int
    token: str
    channel_id: int
    user_id: int
    name: str
    dispatched_at: float
    kind: int = 2  # 2 application command, 3 component, 4 autocomplete
    message_id: int | None = None  # a component's message
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    original: StoredMessage | None = None
    followups: list[StoredMessage] = field(default_factory=list)
    ephemeral: bool = False


class InteractionsMixin:
    """The commands-and-interactions half of :class:`~tests.fakes.discord_server.server.DiscordEmulator`."""

    async def _commands_route(self, request: web.Request, method: str, parts: list[str]) -> web.Response:
        """docs: interactions/application-commands.md, "Endpoints": global and guild commands, in bulk
        (PUT, which discord.py's ``tree.sync`` uses) or one at a time (POST/GET/PATCH/DELETE, which
        discord.js and hikari use)."""
        if parts[1] != str(self.world.application_id):
            return _error(404, 10002, "Unknown Application")
        guild_id: int | None = None
        rest = parts[2:]
        if rest[:1] == ["guilds"] and len(rest) >= 3 and rest[2] == "commands":
            if not rest[1].isdigit() or int(rest[1]) not in self.world.guilds:
                return _error(403, 50001, "Missing Access")
            guild_id = int(rest[1])
            rest = rest[2:]
        if rest[:1] != ["commands"] or len(rest) > 2:
            return not_found()
        scope = self.commands.setdefault(guild_id, [])
        if len(rest) == 2:
            command = next((c for c in scope if c["id"] == rest[1]), None)
            if command is None:
                return _error(404, 10063, "Unknown application command")
            if method == "GET":
                return _json(command)
            if method == "DELETE":
                scope.remove(command)
                return web.Response(status=204)
            if method != "PATCH":
                return not_allowed()
            body = await read_json(request)
            if not isinstance(body, dict):
                return _form_error(
                    "_root", "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType"
                )
            edited = {**command, **body}
            problem = _command_problem(edited)
            if problem is not None:
                return _form_error(problem[0], "INVALID", problem[1])
            stored = self._stored_command(edited, command, guild_id)
            scope[scope.index(command)] = stored
            return _json(stored)
        if method == "GET":
            return _json(scope)
        if method == "POST":
            body = await read_json(request)
            problem = _command_problem(body)
            if problem is not None:
                return _form_error(problem[0], "INVALID", problem[1])
            kind = body.get("type", 1)
            previous = next((c for c in scope if c["name"] == body["name"] and c["type"] == kind), None)
            stored = self._stored_command(body, previous, guild_id)
            if previous is not None:  # "Creating a command with the same name as an existing command ...
                scope[scope.index(previous)] = stored  # will overwrite the old command"
                return _json(stored, 200)
            scope.append(stored)
            return _json(stored, 201)
        if method != "PUT":
            return not_allowed()
        body = await read_json(request)
        if not isinstance(body, list):
            return _form_error("_root", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        synced = []
        for index, command in enumerate(body):
            problem = _command_problem(command)
            if problem is not None:
                return _form_error(f"{index}.{problem[0]}", "INVALID", problem[1])
            previous = next((c for c in scope if c["name"] == command["name"]), None)
            synced.append(self._stored_command(command, previous, guild_id))
        self.commands[guild_id] = synced
        return _json(synced)

    def _stored_command(
        self, command: dict[str, Any], previous: dict[str, Any] | None, guild_id: int | None
    ) -> dict[str, Any]:
        stored = {
            **command,
            "id": previous["id"] if previous else str(self.world.ids.next()),
            "application_id": str(self.world.application_id),
            "version": str(self.world.ids.next()),
            "type": command.get("type", 1),
            "description": command.get("description", ""),
            "options": command.get("options") or [],
            # Discord answers permission bitfields as strings, whatever the client sent.
            "default_member_permissions": (
                None
                if command.get("default_member_permissions") is None
                else str(command["default_member_permissions"])
            ),
            "nsfw": bool(command.get("nsfw", False)),
        }
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        return stored

    def _find_command(self, name: str, guild_id: int | None) -> dict[str, Any] | None:
        """A chat-input command usable in ``guild_id`` (None: a DM): the guild's own, then a global one."""
        for scope in (guild_id, None) if guild_id is not None else (None,):
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
        """docs: interactions/receiving-and-responding.md: one initial response within 3 s, of a type the
        interaction allows ("Interaction Callback Type"): a command 4/5/9, a component 4/5/6/7/9,
        autocomplete 8."""
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
        kind = payload.get("type")
        if kind not in CALLBACK_TYPES or isinstance(kind, bool):
            return _form_error(
                "type",
                "BASE_TYPE_CHOICES",
                f"Value must be one of {{{', '.join(map(str, CALLBACK_TYPES))}}}.",
            )
        if kind not in ALLOWED_CALLBACKS[interaction.kind]:
            return _form_error(
                "type",
                "INTERACTION_RESPONSE_TYPE_INVALID",
                "This response type is not valid for this interaction.",
            )
        data = payload.get("data") or {}
        record = {"type": kind, "at": time.monotonic(), "data": data}
        interaction.callbacks.append(record)
        result: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.kind,
                "activity_instance_id": None,
                "response_message_id": None,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": False,
            },
            "resource": {"type": kind},
        }
        try:
            if kind in (4, 5):
                ephemeral = bool(int(data.get("flags") or 0) & EPHEMERAL)
                interaction.ephemeral = ephemeral
                message_payload = dict(data) if kind == 4 else {"content": "", "flags": LOADING}
                _, stored = await self._interaction_message(
                    interaction, message_payload, files, ephemeral, loading=kind == 5
                )
                interaction.original = stored
                result["interaction"].update(
                    response_message_id=stored.data["id"], response_message_ephemeral=ephemeral
                )
                if kind == 4:
                    result["resource"]["message"] = stored.data
            elif kind in (6, 7):
                # A component's deferred update (6) or update (7) acts on the message the component is on,
                # which @original then means.
                found = self.world.find_message(interaction.message_id or 0)
                if found is None:
                    return _error(404, 10008, "Unknown Message")
                interaction.original = found[1]
                if kind == 7:
                    await self._edit_message(found[1], dict(data), files)
                    result["resource"]["message"] = found[1].data
                result["interaction"]["response_message_id"] = found[1].data["id"]
        except Refusal:
            interaction.callbacks.pop()
            raise
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
        metadata: dict[str, Any] = {
            "id": str(interaction.id),
            "type": interaction.kind,
            "user": world.users[interaction.user_id],
            "authorizing_integration_owners": {
                "0": str(world.guild_of(interaction.channel_id) or world.guild_id)
            },
        }
        if interaction.kind == 3:
            metadata["interacted_message_id"] = str(interaction.message_id)
        else:
            metadata.update(name=interaction.name, command_type=1)
        extra = {
            "webhook_id": str(world.application_id),
            "application_id": str(world.application_id),
            "interaction_metadata": metadata,
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.kind,
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
        return not_allowed()

    async def _control_interaction(self, request: web.Request) -> web.Response:
        """A slash command (``{"channel_id", "user_id", "command", "options"}``) or a button press
        (``{"type": "component", "message_id", "custom_id", "user_id"}``) by a member."""
        body = await request.json()
        if not isinstance(body, dict):
            return _json({"error": "a JSON object is required"}, 400)
        if body.get("type") == "component":
            return await self._press(body)
        world = self.world
        if not all(key in body for key in ("channel_id", "user_id", "command")):
            return _json({"error": "channel_id, user_id and command are required"}, 400)
        # Names work too ("general", "alice"): ids change with every start of the emulator.
        channel_id, user_id = world.channel_id(body["channel_id"]), world.user_id(body["user_id"])
        path = str(body["command"]).split()
        guild_id = None if channel_id is None else world.guild_of(channel_id)
        member_roles = world.guild_record(guild_id).member_roles
        if channel_id is None or user_id is None or user_id not in member_roles or not path:
            return _json({"error": "unknown channel or user"}, 400)
        command = self._find_command(path[0], guild_id if guild_id is not None else world.guild_id)
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
        data: dict[str, Any] = {"id": command["id"], "name": command["name"], "type": 1, "options": options}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        if resolved:
            data["resolved"] = resolved
        interaction = await self._new_interaction(
            channel_id, user_id, " ".join(path), 4 if autocomplete else 2, data
        )
        return _json({"interaction_id": str(interaction.id), "token": interaction.token})

    async def _press(self, body: dict[str, Any]) -> web.Response:
        """A member presses a button: INTERACTION_CREATE of type 3 (docs: interactions/
        receiving-and-responding.md, "Message Component Data Structure") carrying the whole message."""
        world = self.world
        try:
            message_id, user_id, custom_id = (
                int(body["message_id"]),
                int(body["user_id"]),
                str(body["custom_id"]),
            )
        except (KeyError, TypeError, ValueError):
            return _json({"error": "message_id, custom_id and user_id are required"}, 400)
        found = world.find_message(message_id)
        if found is None or user_id not in world.users:
            return _json({"error": "unknown message or user"}, 400)
        channel_id, stored = found
        buttons = [
            child
            for row in stored.data.get("components") or []
            for child in row.get("components") or []
            if child.get("type") == 2
        ]
        button = next((b for b in buttons if b.get("custom_id") == custom_id), None)
        if button is None:
            known = [b.get("custom_id") for b in buttons]
            return _json({"error": f"no button {custom_id!r} on that message; it has {known}"}, 400)
        if button.get("disabled"):
            return _json({"error": "that button is disabled"}, 400)
        data = {"custom_id": custom_id, "component_type": 2}
        interaction = await self._new_interaction(
            channel_id, user_id, custom_id, 3, data, message=stored.data, message_id=message_id
        )
        return _json({"interaction_id": str(interaction.id), "token": interaction.token})

    async def _new_interaction(
        self,
        channel_id: int,
        user_id: int,
        name: str,
        kind: int,
        data: dict[str, Any],
        *,
        message: dict[str, Any] | None = None,
        message_id: int | None = None,
    ) -> Interaction:
        world = self.world
        interaction_id = world.ids.next()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        interaction = Interaction(
            interaction_id,
            token,
            channel_id,
            user_id,
            name,
            time.monotonic(),
            kind=kind,
            message_id=message_id,
        )
        self.interactions[interaction_id] = interaction
        self.tokens[token] = interaction
        channel = world.channels[channel_id]
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(world.application_id),
            "type": kind,
            "token": token,
            "version": 1,
            "channel_id": str(channel_id),
            "channel": channel,
            "data": data,
            "app_permissions": str(world.channel_permissions(world.bot_id, channel_id)),
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": MAX_UPLOAD,
        }
        if channel["type"] == 1:  # a DM: a user instead of a member (docs: "Interaction Object")
            payload.update(user=world.users[user_id], context=1, authorizing_integration_owners={"0": "0"})
        else:
            guild_id = channel["guild_id"]
            payload.update(
                guild_id=guild_id,
                guild_locale="en-US",
                member={
                    **world.member(user_id, int(guild_id)),
                    "permissions": str(world.channel_permissions(user_id, channel_id)),
                },
                context=0,
                authorizing_integration_owners={"0": guild_id},
            )
        if message is not None:
            payload["message"] = message
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

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
