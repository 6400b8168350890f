"""Per-server settings that moderators change from Discord, and the audit trail of their actions.

Settings live in the database (only the keys a moderator changed; everything else falls back to the TOML
config) and in memory, so reading them costs nothing on the hot paths and a change takes effect at once.
A change is read, computed and written in one transaction, so two moderators changing the same server at
once both keep their change, and announced with ``NOTIFY`` :data:`SETTINGS_CHANNEL` (the guild id), so
other processes sharing a PostgreSQL database reload that server (:meth:`SettingsStore.on_notify`).
Imports nothing of Discord (audit details are text shown there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bot.blog.store import JOBS_CHANNEL
from bot.engine import Engine

#: NOTIFY channel: a server's settings changed; the payload is its id.
SETTINGS_CHANNEL = "bot_settings"

# One change of a server's settings at a time. PostgreSQL's READ COMMITTED would let two concurrent edits
# read the same stored value and the second write lose the first's change (measured: 2 of 3 concurrent
# channel additions lost); there is no row to lock FOR UPDATE before a server's first change, so an
# advisory lock keyed by the guild id. SQLite's BEGIN IMMEDIATE already serialises every writer.
_EDIT_LOCK = {"sqlite": "", "postgresql": "SELECT pg_advisory_xact_lock(?)"}

MAX_SYSTEM_PROMPT = 2000
MAX_CHANNELS = 50


@dataclass(frozen=True, slots=True)
class GuildSettings:
    """One server's overrides; ``None`` (or empty) means "use the config file's value"."""

    chat_enabled: bool = True
    #: Channels where chat answers; empty = every channel the bot can see.
    chat_channels: tuple[int, ...] = ()
    #: Channels where /blog may be used; empty = everywhere.
    blog_channels: tuple[int, ...] = ()
    chat_model: str | None = None
    blog_model: str | None = None
    system_prompt: str | None = None
    cooldown_seconds: float | None = None
    blog_quota: int | None = None
    blog_paused: bool = False
    #: Per-channel overrides, as (channel id, value) pairs: a channel's chat model and system prompt win
    #: over the server's (a thread follows its parent channel).
    channel_chat_models: tuple[tuple[int, str], ...] = ()
    channel_system_prompts: tuple[tuple[int, str], ...] = ()

    def chat_model_in(self, channel_id: int, parent_id: int | None = None) -> str | None:
        """The chat model chosen for the channel, else the server's; None means the config's."""
        return _for_channel(self.channel_chat_models, channel_id, parent_id) or self.chat_model

    def system_prompt_in(self, channel_id: int, parent_id: int | None = None) -> str | None:
        """The system prompt chosen for the channel, else the server's; None means the config's."""
        return _for_channel(self.channel_system_prompts, channel_id, parent_id) or self.system_prompt

    def allows_chat_in(self, channel_id: int, parent_id: int | None = None) -> bool:
        """Whether chat may answer in the channel (a thread follows its parent channel)."""
        if not self.chat_enabled:
            return False
        return not self.chat_channels or channel_id in self.chat_channels or parent_id in self.chat_channels

    def allows_blog_in(self, channel_id: int, parent_id: int | None = None) -> bool:
        return not self.blog_channels or channel_id in self.blog_channels or parent_id in self.blog_channels


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded moderator action."""

    id: int
    guild_id: int
    user_id: int
    action: str
    details: str
    at: float


@dataclass(frozen=True, slots=True)
class Change:
    """What :meth:`SettingsStore.edit` did."""

    before: GuildSettings
    after: GuildSettings
    #: Only the keys whose value differs from before (empty: nothing was written or recorded).
    changes: dict[str, Any]


class SettingsStore:
    """Read and change :class:`GuildSettings`; record moderator actions."""

    def __init__(self, db: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._cache: dict[int, GuildSettings] = {}
        # Edits made in this process apply in the order they were asked for, on either engine (the
        # database lock below only serialises them, in whatever order their transactions reach it).
        self._edits = asyncio.Lock()

    async def load(self) -> None:
        """Read every server's settings into memory (done once at start-up)."""
        rows = await self._db.fetch_all("SELECT guild_id, settings FROM guild_settings")
        self._cache = {int(row[0]): _decode(row[1]) for row in rows}

    async def reload(self, guild_id: int) -> None:
        """Read one server's settings again (another process changed them)."""
        row = await self._db.fetch_one("SELECT settings FROM guild_settings WHERE guild_id = ?", (guild_id,))
        if row is None:
            self._cache.pop(guild_id, None)
        else:
            self._cache[guild_id] = _decode(row[0])

    async def on_notify(self, payload: str) -> None:
        """A :data:`SETTINGS_CHANNEL` notification: reload that server ("" or garbage: every server)."""
        if payload.isdigit():
            await self.reload(int(payload))
        else:
            await self.load()

    def get(self, guild_id: int | None) -> GuildSettings:
        """The server's settings (defaults for DMs and for servers nobody configured)."""
        if guild_id is None:
            return GuildSettings()
        return self._cache.get(guild_id, GuildSettings())

    def paused_guilds(self) -> frozenset[int]:
        """Servers whose blog queue a moderator paused."""
        return frozenset(guild_id for guild_id, settings in self._cache.items() if settings.blog_paused)

    async def edit(
        self,
        guild_id: int,
        user_id: int,
        action: str,
        compute: Callable[[GuildSettings], dict[str, Any]],
        *,
        describe: Callable[[dict[str, Any]], str] | None = None,
    ) -> Change:
        """Change settings computed from their stored values, read and written in one transaction, and
        record who did it (``describe`` words the changes for the audit log).

        Keys that ``compute`` sets to their current value are left out; if none is left, nothing is written
        or recorded. An exception from ``compute`` rolls everything back.
        """
        async with self._edits:
            return await self._edit(guild_id, user_id, action, compute, describe)

    async def _edit(
        self,
        guild_id: int,
        user_id: int,
        action: str,
        compute: Callable[[GuildSettings], dict[str, Any]],
        describe: Callable[[dict[str, Any]], str] | None,
    ) -> Change:
        now = self._clock()
        async with self._db.transaction() as connection:
            if lock := _EDIT_LOCK[self._db.dialect]:
                await connection.execute(lock, (guild_id,))
            cursor = await connection.execute(
                "SELECT settings FROM guild_settings WHERE guild_id = ?", (guild_id,)
            )
            row = await cursor.fetchone()
            await cursor.close()
            before = GuildSettings() if row is None else _decode(row[0])
            changes = {key: value for key, value in compute(before).items() if getattr(before, key) != value}
            after = dataclasses.replace(before, **changes)
            if changes:
                await connection.execute(
                    """INSERT INTO guild_settings (guild_id, settings, updated_at) VALUES (?, ?, ?)
                       ON CONFLICT (guild_id) DO UPDATE SET settings = excluded.settings,
                                                            updated_at = excluded.updated_at""",
                    (guild_id, _encode(after), now),
                )
                await _record(connection, guild_id, user_id, action, (describe or _describe)(changes), now)
                await self._db.notify(connection, SETTINGS_CHANNEL, str(guild_id))
                if changes.get("blog_paused") is False:
                    await self._db.notify(connection, JOBS_CHANNEL)  # the server's queued jobs are claimable
        self._cache[guild_id] = after
        return Change(before, after, changes)

    async def update(
        self,
        guild_id: int,
        user_id: int,
        action: str,
        *,
        describe: Callable[[dict[str, Any]], str] | None = None,
        **changes: Any,
    ) -> GuildSettings:
        """Set some settings and record who did it, in one transaction (see :meth:`edit`)."""
        return (await self.edit(guild_id, user_id, action, lambda _: changes, describe=describe)).after

    async def record(self, guild_id: int, user_id: int, action: str, details: str) -> None:
        """Record a moderator action that changes no setting (e.g. cancelling a job)."""
        async with self._db.transaction() as connection:
            await _record(connection, guild_id, user_id, action, details, self._clock())

    async def record_cancels(
        self, guild_id: int | None, user_id: int, jobs: Iterable[tuple[int, int]], *, via: str
    ) -> None:
        """Record a moderator's cancelling of blog jobs, given as (job id, requester id): one entry per job,
        in one transaction (nothing outside a server)."""
        entries = [f"job #{job_id} of <@{requester}> (via {via})" for job_id, requester in jobs]
        if guild_id is None or not entries:
            return
        now = self._clock()
        async with self._db.transaction() as connection:
            for details in entries:
                await _record(connection, guild_id, user_id, "cancel", details, now)

    async def prune_audit(self, older_than_days: float) -> int:
        """Delete audit entries older than ``older_than_days``; how many went."""
        cutoff = self._clock() - older_than_days * 86400
        async with self._db.transaction() as connection:
            cursor = await connection.execute("DELETE FROM audit_log WHERE at < ?", (cutoff,))
            return cursor.rowcount

    async def audit_log(self, guild_id: int, limit: int = 20) -> list[AuditEntry]:
        """The server's most recent moderator actions, newest first."""
        rows = await self._db.fetch_all(
            "SELECT * FROM audit_log WHERE guild_id = ? ORDER BY id DESC LIMIT ?", (guild_id, limit)
        )
        return [AuditEntry(**{key: row[key] for key in row.keys()}) for row in rows]  # noqa: SIM118


async def _record(connection: Any, guild_id: int, user_id: int, action: str, details: str, at: float) -> None:
    await connection.execute(
        "INSERT INTO audit_log (guild_id, user_id, action, details, at) VALUES (?, ?, ?, ?, ?)",
        (guild_id, user_id, action, details, at),
    )


def _for_channel(
    overrides: tuple[tuple[int, str], ...], channel_id: int, parent_id: int | None
) -> str | None:
    chosen = dict(overrides)
    return chosen.get(channel_id) or (chosen.get(parent_id) if parent_id is not None else None)


def with_override(
    overrides: tuple[tuple[int, str], ...], channel_id: int, value: str | None
) -> tuple[tuple[int, str], ...]:
    """``overrides`` with the channel's value set (None: removed)."""
    kept = tuple((channel, old) for channel, old in overrides if channel != channel_id)
    return kept if value is None else (*kept, (channel_id, value))


def _encode(settings: GuildSettings) -> str:
    defaults = GuildSettings()
    changed = {
        field.name: getattr(settings, field.name)
        for field in dataclasses.fields(settings)
        if getattr(settings, field.name) != getattr(defaults, field.name)
    }
    return json.dumps(changed, sort_keys=True)


def _decode(text: str) -> GuildSettings:
    known = {field.name for field in dataclasses.fields(GuildSettings)}
    data = {key: value for key, value in json.loads(text).items() if key in known}
    for key in ("chat_channels", "blog_channels"):
        if key in data:
            data[key] = tuple(data[key])
    for key in ("channel_chat_models", "channel_system_prompts"):
        if key in data:
            data[key] = tuple((int(channel), str(value)) for channel, value in data[key])
    return GuildSettings(**data)


def _describe(changes: dict[str, Any]) -> str:
    """Plain words for changes, when the caller gives none: ``chat_enabled: off, chat_channels: 5, 6``."""
    return ", ".join(f"{key}: {_word(value)}" for key, value in sorted(changes.items())) or "-"


def _word(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)
