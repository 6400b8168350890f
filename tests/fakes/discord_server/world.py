"""The emulated Discord world: one application, its guilds, their members, channels and messages.

By default there is one guild (``general`` and ``blog`` channels; alice, bob and mod, its owner, as members).
``World(guilds=N)`` makes N guilds: the first is that guild, the others each have a ``general`` text channel,
an @everyone role, the bot's managed role, and the same members. Their snowflakes are one millisecond apart,
so ``(guild_id >> 22) % shard_count`` deals them round-robin to shards, evenly for any shard count.

Objects are kept as the JSON Discord sends (``dict``), built complete enough for discord.py 2.7's parsers
(an incomplete payload crashes the client, see ``shared/reference/discord.md``).
"""

from __future__ import annotations

import datetime
import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

DISCORD_EPOCH_MS = 1_420_070_400_000

# Permission bits, named as Discord names them (docs: topics/permissions.md, "Bitwise Permission Flags").
PERMISSION_BITS = {
    "CREATE_INSTANT_INVITE": 0,
    "KICK_MEMBERS": 1,
    "BAN_MEMBERS": 2,
    "ADMINISTRATOR": 3,
    "MANAGE_CHANNELS": 4,
    "MANAGE_GUILD": 5,
    "ADD_REACTIONS": 6,
    "VIEW_AUDIT_LOG": 7,
    "PRIORITY_SPEAKER": 8,
    "STREAM": 9,
    "VIEW_CHANNEL": 10,
    "SEND_MESSAGES": 11,
    "SEND_TTS_MESSAGES": 12,
    "MANAGE_MESSAGES": 13,
    "EMBED_LINKS": 14,
    "ATTACH_FILES": 15,
    "READ_MESSAGE_HISTORY": 16,
    "MENTION_EVERYONE": 17,
    "USE_EXTERNAL_EMOJIS": 18,
    "VIEW_GUILD_INSIGHTS": 19,
    "CONNECT": 20,
    "SPEAK": 21,
    "MUTE_MEMBERS": 22,
    "DEAFEN_MEMBERS": 23,
    "MOVE_MEMBERS": 24,
    "USE_VAD": 25,
    "CHANGE_NICKNAME": 26,
    "MANAGE_NICKNAMES": 27,
    "MANAGE_ROLES": 28,
    "MANAGE_WEBHOOKS": 29,
    "MANAGE_GUILD_EXPRESSIONS": 30,
    "USE_APPLICATION_COMMANDS": 31,
    "REQUEST_TO_SPEAK": 32,
    "MANAGE_EVENTS": 33,
    "MANAGE_THREADS": 34,
    "CREATE_PUBLIC_THREADS": 35,
    "CREATE_PRIVATE_THREADS": 36,
    "USE_EXTERNAL_STICKERS": 37,
    "SEND_MESSAGES_IN_THREADS": 38,
    "USE_EMBEDDED_ACTIVITIES": 39,
    "MODERATE_MEMBERS": 40,
    "VIEW_CREATOR_MONETIZATION_ANALYTICS": 41,
    "USE_SOUNDBOARD": 42,
    "CREATE_GUILD_EXPRESSIONS": 43,
    "CREATE_EVENTS": 44,
    "USE_EXTERNAL_SOUNDS": 45,
    "SEND_VOICE_MESSAGES": 46,
    "SET_VOICE_CHANNEL_STATUS": 48,
    "SEND_POLLS": 49,
    "USE_EXTERNAL_APPS": 50,
    "PIN_MESSAGES": 51,
    "BYPASS_SLOWMODE": 52,
}
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
SEND_TTS_MESSAGES = 1 << 12
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_THREADS = 1 << 34
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
PIN_MESSAGES = 1 << 51
ALL_PERMISSIONS = sum(1 << bit for bit in PERMISSION_BITS.values())
#: Discord's names plus their lower-case spellings (the old control endpoint took ``send_messages``).
PERMISSION_NAMES = {
    spelling: 1 << bit for name, bit in PERMISSION_BITS.items() for spelling in (name, name.lower())
}
THREAD_TYPES = (10, 11, 12)
EVERYONE_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | MENTION_EVERYONE
    | ADD_REACTIONS
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)

USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
EVERYONE_MENTION = re.compile(r"@(everyone|here)")


class Snowflakes:
    """Real Discord snowflakes: milliseconds since 2015 in the top bits, a counter in the low 12."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def next(self) -> int:
        milliseconds = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (milliseconds << 22) | (1 << 17) | (1 << 12) | (next(self._counter) % 4096)


def iso_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


@dataclass
class StoredMessage:
    """A message plus what only the emulator knows about it."""

    data: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    allowed_mentions: Any = None
    pinged: list[str] = field(default_factory=list)
    nonce: str | None = None
    author_id: int = 0
    created_at: float = 0.0
    files: dict[str, bytes] = field(default_factory=dict)
    ephemeral: bool = False
    deleted: bool = False

    def control_view(self) -> dict[str, Any]:
        """The message as ``GET /_emulator/channels/{id}/messages`` shows it."""
        attachments = []
        for attachment in self.data["attachments"]:
            content = self.files.get(attachment["id"], b"")
            try:
                text: str | None = content.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            attachments.append({**attachment, "text": text})
        return {
            **self.data,
            "attachments": attachments,
            "history": self.history,
            "nonce": self.nonce,
            "allowed_mentions": self.allowed_mentions,
            "pinged": self.pinged,
        }


@dataclass
class Guild:
    """One guild's own records (its channels live in :attr:`World.channels` like every channel)."""

    id: int
    index: int
    name: str
    roles: dict[int, dict[str, Any]]
    member_roles: dict[int, list[int]]
    channel_ids: list[int] = field(default_factory=list)  # text channels, in position order


#: Discord's process-id bits (12–16) set to 2 in the spread guild ids, which no other snowflake here uses.
SPREAD_GUILD_BITS = (1 << 17) | (2 << 12)


class World:
    """Everything the emulator knows; the REST and gateway layers read and change it."""

    def __init__(self, guilds: int | None = None) -> None:
        if guilds is not None and guilds < 1:
            raise ValueError("guilds must be at least 1")
        self.ids = Snowflakes()
        self.application_id = self.ids.next()
        self.bot_id = self.ids.next()
        # Many guilds: ids one millisecond apart (in the past, so they never meet a fresh snowflake).
        spread_base = int(time.time() * 1000) - DISCORD_EPOCH_MS - 60_000 - (guilds or 0)
        self.guild_id = self.ids.next() if guilds is None else (spread_base << 22) | SPREAD_GUILD_BITS
        self.users: dict[int, dict[str, Any]] = {}
        self.names: dict[str, int] = {}
        self.bot_user = self._user(self.bot_id, "LLMBot", bot=True)
        for name in ("alice", "bob", "mod"):
            self.names[name] = self.ids.next()
            self._user(self.names[name], name)
        self.moderator_role = self.ids.next()
        self.bot_role = self.ids.next()
        self.roles: dict[int, dict[str, Any]] = {
            self.guild_id: self._role(self.guild_id, "@everyone", EVERYONE_PERMISSIONS, 0),
            self.moderator_role: self._role(
                self.moderator_role, "Moderator", MANAGE_GUILD | MANAGE_MESSAGES, 1
            ),
            self.bot_role: {
                **self._role(self.bot_role, "LLMBot", EVERYONE_PERMISSIONS | MANAGE_THREADS, 2),
                "managed": True,
                "tags": {"bot_id": str(self.bot_id)},
            },
        }
        self.member_roles: dict[int, list[int]] = {
            self.names["alice"]: [],
            self.names["bob"]: [],
            self.names["mod"]: [self.moderator_role],
            self.bot_id: [self.bot_role],
        }
        self.joined_at = iso_now()
        self.channels: dict[int, dict[str, Any]] = {}
        self.channel_names: dict[str, int] = {}
        for position, name in enumerate(("general", "blog")):
            channel_id = self.ids.next()
            self.channel_names[name] = channel_id
            self.channels[channel_id] = {
                "id": str(channel_id),
                "type": 0,
                "guild_id": str(self.guild_id),
                "name": name,
                "position": position,
                "permission_overwrites": [],
                "topic": None,
                "nsfw": False,
                "parent_id": None,
                "rate_limit_per_user": 0,
                "last_message_id": None,
                "flags": 0,
            }
        self.guilds: dict[int, Guild] = {
            self.guild_id: Guild(
                self.guild_id,
                0,
                "Emulated Guild",
                self.roles,
                self.member_roles,
                list(self.channel_names.values()),
            )
        }
        for index in range(1, guilds or 1):
            self._add_guild(index, ((spread_base + index) << 22) | SPREAD_GUILD_BITS)
        self.dm_channels: dict[int, int] = {}
        for user_id in self.names.values():
            channel_id = self.ids.next()
            self.dm_channels[user_id] = channel_id
            self.channels[channel_id] = {
                "id": str(channel_id),
                "type": 1,
                "recipients": [self.users[user_id]],
                "last_message_id": None,
                "flags": 0,
            }
        self.messages: dict[int, list[StoredMessage]] = {channel_id: [] for channel_id in self.channels}
        self.message_index: dict[int, tuple[int, StoredMessage]] = {}
        self.deleted_channels: set[int] = set()
        self.verify_key = secrets.token_hex(32)

    def _add_guild(self, index: int, guild_id: int) -> None:
        """Another guild: @everyone, the bot's managed role, a ``general`` channel; alice, bob, mod, bot."""
        bot_role = self.ids.next()
        roles = {
            guild_id: self._role(guild_id, "@everyone", EVERYONE_PERMISSIONS, 0),
            bot_role: {
                **self._role(bot_role, "LLMBot", EVERYONE_PERMISSIONS | MANAGE_THREADS, 1),
                "managed": True,
                "tags": {"bot_id": str(self.bot_id)},
            },
        }
        member_roles: dict[int, list[int]] = {user_id: [] for user_id in self.names.values()}
        member_roles[self.bot_id] = [bot_role]
        channel_id = self.ids.next()
        self.channels[channel_id] = {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(guild_id),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "topic": None,
            "nsfw": False,
            "parent_id": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }
        self.guilds[guild_id] = Guild(
            guild_id, index, f"Emulated Guild {index}", roles, member_roles, [channel_id]
        )

    # -- guilds ----------------------------------------------------------------------------------------

    def guild_record(self, guild_id: int | None = None) -> Guild:
        """A guild's records (the first guild's by default); KeyError if the bot is in no such guild."""
        return self.guilds[self.guild_id if guild_id is None else guild_id]

    def guild_of(self, channel_id: int) -> int | None:
        """The id of the guild a channel (or thread) belongs to; None for a DM or an unknown channel."""
        channel = self.channels.get(channel_id)
        if channel is None or "guild_id" not in channel:
            return None
        return int(channel["guild_id"])

    def guild_ref(self, ref: Any) -> int | None:
        """A guild given by index among the guilds (``0``, ``"17"``) or by id; None if there is none."""
        text = str(ref)
        if not text.isdigit():
            return None
        number = int(text)
        if number in self.guilds:
            return number
        if number < len(self.guilds):
            return list(self.guilds)[number]
        return None

    @staticmethod
    def shard_of(guild_id: int, shard_count: int) -> int:
        """docs: events/gateway.md, "Sharding Formula"."""
        return (guild_id >> 22) % shard_count

    # -- objects ---------------------------------------------------------------------------------------

    def _user(self, user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
        user = {
            "id": str(user_id),
            "username": name,
            "global_name": None if bot else name.capitalize(),
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
        }
        self.users[user_id] = user
        return user

    @staticmethod
    def _role(role_id: int, name: str, permissions: int, position: int) -> dict[str, Any]:
        return {
            "id": str(role_id),
            "name": name,
            "permissions": str(permissions),
            "position": position,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
            "icon": None,
            "unicode_emoji": None,
        }

    def member(self, user_id: int, guild_id: int | None = None) -> dict[str, Any]:
        member_roles = self.guild_record(guild_id).member_roles
        return {
            "user": self.users[user_id],
            "roles": [str(role) for role in member_roles.get(user_id, [])],
            "joined_at": self.joined_at,
            "flags": 0,
            "deaf": False,
            "mute": False,
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "pending": False,
        }

    def guild(self, guild_id: int | None = None) -> dict[str, Any]:
        record = self.guild_record(guild_id)
        members = [self.member(user_id, record.id) for user_id in record.member_roles]
        return {
            "id": str(record.id),
            "name": record.name,
            "icon": None,
            "owner_id": str(self.names["mod"]),
            "member_count": len(members),
            "unavailable": False,
            "large": False,
            "joined_at": self.joined_at,
            "roles": list(record.roles.values()),
            "channels": [
                self.channels[channel_id]
                for channel_id in record.channel_ids
                if channel_id not in self.deleted_channels
            ],
            "members": members,
            "threads": [],
            "emojis": [],
            "stickers": [],
            "features": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "rules_channel_id": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "application_id": None,
            "max_members": 500000,
            # The rest of the documented Guild object (docs: resources/guild.md, "Guild Structure").
            "icon_hash": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "vanity_url_code": None,
            "widget_enabled": False,
            "widget_channel_id": None,
            "system_channel_flags": 0,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "max_presences": None,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "premium_progress_bar_enabled": False,
            "incidents_data": None,
            "hub_type": None,
            "region": "deprecated",
        }

    # -- permissions -----------------------------------------------------------------------------------

    def guild_permissions(self, user_id: int, guild_id: int | None = None) -> int:
        """Base permissions, as docs/topics/permissions.md computes them: the owner and administrators
        have all; otherwise @everyone's permissions and those of each of the member's roles."""
        if user_id == self.names["mod"]:  # every guild's owner
            return ALL_PERMISSIONS
        record = self.guild_record(guild_id)
        permissions = int(record.roles[record.id]["permissions"])
        for role in record.member_roles.get(user_id, []):
            permissions |= int(record.roles[role]["permissions"])
        if permissions & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return permissions

    def channel_permissions(self, user_id: int, channel_id: int) -> int:
        """Permissions in a channel (docs/topics/permissions.md): base permissions, then the @everyone
        overwrite, the member's role overwrites together, then the member's own overwrite. A thread
        takes its parent's overwrites, except that sending there needs SEND_MESSAGES_IN_THREADS, which
        this returns as SEND_MESSAGES ("Inherited Permissions (Threads)"). Implicit denials: without
        VIEW_CHANNEL nothing else counts; without SEND_MESSAGES neither do MENTION_EVERYONE,
        SEND_TTS_MESSAGES, ATTACH_FILES and EMBED_LINKS ("Implicit Permissions")."""
        channel = self.channels[channel_id]
        thread = channel["type"] in THREAD_TYPES
        if thread:
            channel = self.channels[int(channel["parent_id"])]
        if channel["type"] == 1:
            return (
                VIEW_CHANNEL
                | SEND_MESSAGES
                | READ_MESSAGE_HISTORY
                | EMBED_LINKS
                | ATTACH_FILES
                | ADD_REACTIONS
            )
        record = self.guild_record(int(channel["guild_id"]))
        permissions = self.guild_permissions(user_id, record.id)
        if permissions & ADMINISTRATOR:
            return ALL_PERMISSIONS
        overwrites = {int(o["id"]): o for o in channel["permission_overwrites"]}
        everyone = overwrites.get(record.id)
        if everyone is not None:
            permissions = (permissions & ~int(everyone["deny"])) | int(everyone["allow"])
        deny = allow = 0
        for role in record.member_roles.get(user_id, []):
            if role in overwrites:
                deny |= int(overwrites[role]["deny"])
                allow |= int(overwrites[role]["allow"])
        permissions = (permissions & ~deny) | allow
        member = overwrites.get(user_id)
        if member is not None:
            permissions = (permissions & ~int(member["deny"])) | int(member["allow"])
        if thread:
            permissions &= ~SEND_MESSAGES
            if permissions & SEND_MESSAGES_IN_THREADS:
                permissions |= SEND_MESSAGES
        if not permissions & VIEW_CHANNEL:
            return 0
        if not permissions & SEND_MESSAGES:
            permissions &= ~(MENTION_EVERYONE | SEND_TTS_MESSAGES | ATTACH_FILES | EMBED_LINKS)
        return permissions

    def overwrite_target(self, target: str) -> tuple[int, int] | None:
        """``(id, type)`` of a permission overwrite's target: "bot", a user name, a role name or id
        ("@everyone"/"everyone" is the guild's id); type 0 is a role, 1 a member."""
        if target == "bot":
            return self.bot_id, 1
        if target in self.names:
            return self.names[target], 1
        lowered = target.lower().lstrip("@")
        for role_id, role in self.roles.items():
            if target == str(role_id) or lowered == role["name"].lower().lstrip("@"):
                return role_id, 0
        if target.isdigit() and int(target) in self.users:
            return int(target), 1
        return None

    def channel_id(self, ref: Any) -> int | None:
        """A channel named (``"general"``, in the first guild), named in a guild (``"17/general"``: the
        guild by index or id, see :meth:`guild_ref`) or given by id; None if there is no such channel."""
        text = str(ref)
        if "/" in text:
            guild_part, _, name = text.partition("/")
            guild_id = self.guild_ref(guild_part)
            if guild_id is None:
                return None
            channels = (self.channels[c] for c in self.guilds[guild_id].channel_ids)
            return next((int(c["id"]) for c in channels if c["name"] == name), None)
        found = self.channel_names.get(text) or (int(text) if text.isdigit() else None)
        return found if found in self.channels else None

    def user_id(self, ref: Any) -> int | None:
        """A user named (``"alice"``) or given by id; None if there is no such user."""
        found = self.names.get(str(ref)) or (int(ref) if str(ref).isdigit() else None)
        return found if found in self.users else None

    def set_overwrite(self, channel_id: int, target: tuple[int, int], allow: int, deny: int) -> None:
        """Replace the channel's overwrite for ``target``; an overwrite with nothing in it is removed."""
        channel = self.channels[channel_id]
        overwrites = [o for o in channel["permission_overwrites"] if o["id"] != str(target[0])]
        if allow or deny:
            overwrites.append(
                {"id": str(target[0]), "type": target[1], "allow": str(allow), "deny": str(deny & ~allow)}
            )
        channel["permission_overwrites"] = overwrites

    def create_thread(self, parent_id: int, message_id: int, name: str) -> dict[str, Any]:
        """A public thread started from a message (Discord gives it the message's id), owned by the bot."""
        thread = {
            "id": str(message_id),
            "type": 11,
            "guild_id": self.channels[parent_id]["guild_id"],
            "parent_id": str(parent_id),
            "owner_id": str(self.bot_id),
            "name": name,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": iso_now(),
                "locked": False,
            },
        }
        self.channels[message_id] = thread
        self.messages[message_id] = []
        return thread

    # -- messages --------------------------------------------------------------------------------------

    def mentions(
        self, content: str, author_id: int, allowed: Any, replied_to: StoredMessage | None, channel_id: int
    ) -> tuple[list[int], list[int], bool]:
        """Who Discord notifies: (user ids, role ids, @everyone/@here), applying ``allowed_mentions``."""
        users = [int(u) for u in USER_MENTION.findall(content) if int(u) in self.users]
        guild_roles = self.guild_record(self.guild_of(channel_id)).roles
        roles = [int(r) for r in ROLE_MENTION.findall(content) if int(r) in guild_roles]
        everyone = bool(EVERYONE_MENTION.search(content))
        if allowed is None:
            parse = {"users", "roles", "everyone"}
            allowed_users: set[int] = set()
            allowed_roles: set[int] = set()
            replied_user = True
        else:
            parse = set(allowed.get("parse") or [])
            allowed_users = {int(u) for u in allowed.get("users") or []}
            allowed_roles = {int(r) for r in allowed.get("roles") or []}
            replied_user = bool(allowed.get("replied_user", False))
        pinged_users = [u for u in dict.fromkeys(users) if "users" in parse or u in allowed_users]
        if replied_to is not None and replied_user and replied_to.author_id not in pinged_users:
            pinged_users.append(replied_to.author_id)
        pinged_users = [u for u in pinged_users if u != author_id]
        pinged_roles = [r for r in dict.fromkeys(roles) if "roles" in parse or r in allowed_roles]
        can_ping_everyone = channel_id in self.channels and bool(
            self.channels[channel_id]["type"] == 1
            or self.channel_permissions(author_id, channel_id) & MENTION_EVERYONE
        )
        return pinged_users, pinged_roles, everyone and "everyone" in parse and can_ping_everyone

    def find_message(self, message_id: int) -> tuple[int, StoredMessage] | None:
        found = self.message_index.get(message_id)
        if found is None or found[1].deleted:
            return None
        return found
