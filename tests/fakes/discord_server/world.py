"""The emulated Discord world: one application, one guild, its members, channels and messages.

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

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_THREADS = 1 << 34
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 50) - 1
PERMISSION_NAMES = {
    "view_channel": VIEW_CHANNEL,
    "send_messages": SEND_MESSAGES,
    "manage_messages": MANAGE_MESSAGES,
    "embed_links": EMBED_LINKS,
    "attach_files": ATTACH_FILES,
    "read_message_history": READ_MESSAGE_HISTORY,
    "mention_everyone": MENTION_EVERYONE,
    "add_reactions": ADD_REACTIONS,
}
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


class World:
    """Everything the emulator knows; the REST and gateway layers read and change it."""

    def __init__(self) -> None:
        self.ids = Snowflakes()
        self.application_id = self.ids.next()
        self.bot_id = self.ids.next()
        self.guild_id = self.ids.next()
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

    def member(self, user_id: int) -> dict[str, Any]:
        return {
            "user": self.users[user_id],
            "roles": [str(role) for role in self.member_roles.get(user_id, [])],
            "joined_at": self.joined_at,
            "flags": 0,
            "deaf": False,
            "mute": False,
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "pending": False,
        }

    def guild(self) -> dict[str, Any]:
        members = [self.member(user_id) for user_id in self.member_roles]
        return {
            "id": str(self.guild_id),
            "name": "Emulated Guild",
            "icon": None,
            "owner_id": str(self.names["mod"]),
            "member_count": len(members),
            "unavailable": False,
            "large": False,
            "joined_at": self.joined_at,
            "roles": list(self.roles.values()),
            "channels": [
                c
                for c in self.channels.values()
                if c["type"] == 0 and int(c["id"]) not in self.deleted_channels
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
        }

    # -- permissions -----------------------------------------------------------------------------------

    def guild_permissions(self, user_id: int) -> int:
        permissions = int(self.roles[self.guild_id]["permissions"])
        for role in self.member_roles.get(user_id, []):
            permissions |= int(self.roles[role]["permissions"])
        if permissions & ADMINISTRATOR:
            return ALL_PERMISSIONS
        return permissions

    def create_thread(self, parent_id: int, message_id: int, name: str) -> dict[str, Any]:
        """A public thread started from a message (Discord gives it the message's id), owned by the bot."""
        thread = {
            "id": str(message_id),
            "type": 11,
            "guild_id": str(self.guild_id),
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

    def channel_permissions(self, user_id: int, channel_id: int) -> int:
        """Permissions in a channel: guild permissions, then @everyone, role and member overwrites."""
        channel = self.channels[channel_id]
        if channel["type"] == 11:  # a thread has its parent's permissions
            channel = self.channels[int(channel["parent_id"])]
        if channel["type"] == 1:
            return VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | EMBED_LINKS | ATTACH_FILES
        permissions = self.guild_permissions(user_id)
        if permissions & ADMINISTRATOR:
            return ALL_PERMISSIONS
        overwrites = {int(o["id"]): o for o in channel["permission_overwrites"]}
        everyone = overwrites.get(self.guild_id)
        if everyone is not None:
            permissions = (permissions & ~int(everyone["deny"])) | int(everyone["allow"])
        deny = allow = 0
        for role in self.member_roles.get(user_id, []):
            if role in overwrites:
                deny |= int(overwrites[role]["deny"])
                allow |= int(overwrites[role]["allow"])
        permissions = (permissions & ~deny) | allow
        member = overwrites.get(user_id)
        if member is not None:
            permissions = (permissions & ~int(member["deny"])) | int(member["allow"])
        return permissions

    # -- messages --------------------------------------------------------------------------------------

    def mentions(
        self, content: str, author_id: int, allowed: Any, replied_to: StoredMessage | None, channel_id: int
    ) -> tuple[list[int], list[int], bool]:
        """Who Discord notifies: (user ids, role ids, @everyone/@here), applying ``allowed_mentions``."""
        users = [int(u) for u in USER_MENTION.findall(content) if int(u) in self.users]
        roles = [int(r) for r in ROLE_MENTION.findall(content) if int(r) in self.roles]
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
