"""Per-server settings and the audit log, on both engines (SQLite file, PostgreSQL database)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from bot.engine import open_database
from bot.settings import GuildSettings, SettingsStore


async def test_settings_default_change_survive_a_reopen_and_are_audited(db_url: str) -> None:
    async with open_database(db_url) as db:
        store = SettingsStore(db, clock=lambda: 1000.0)
        await store.load()
        assert store.get(1) == GuildSettings() and store.get(None) == GuildSettings()
        await store.update(1, 42, "config set", chat_model="mistral:latest", chat_enabled=False)
        await store.update(1, 42, "chat channels", chat_channels=(5, 6))
        await store.update(2, 43, "pause", blog_paused=True)
        await store.record(1, 42, "cancel", "job #3")
        assert store.get(1).chat_model == "mistral:latest" and store.paused_guilds() == frozenset({2})
    async with open_database(db_url) as db:
        reopened = SettingsStore(db)
        await reopened.load()
        assert reopened.get(1) == GuildSettings(
            chat_model="mistral:latest", chat_enabled=False, chat_channels=(5, 6)
        )
        assert reopened.paused_guilds() == frozenset({2})
        log = await reopened.audit_log(1)
    assert [(entry.user_id, entry.action) for entry in log] == [
        (42, "cancel"),
        (42, "chat channels"),
        (42, "config set"),
    ]
    assert log[-1].details == "chat_enabled: off, chat_model: mistral:latest"


def test_channel_rules() -> None:
    everywhere = GuildSettings()
    assert everywhere.allows_chat_in(1) and everywhere.allows_blog_in(1)
    limited = GuildSettings(chat_channels=(7,), blog_channels=(8,))
    assert limited.allows_chat_in(7) and not limited.allows_chat_in(8)
    assert limited.allows_chat_in(99, parent_id=7), "a thread follows its parent channel"
    assert limited.allows_blog_in(8) and not limited.allows_blog_in(7)
    assert not GuildSettings(chat_enabled=False).allows_chat_in(1)


async def test_concurrent_updates_of_different_keys_both_survive(db_url: str) -> None:
    async with open_database(db_url) as db, open_database(db_url) as other_process:
        store = SettingsStore(db)
        await store.load()
        # Two moderators at once, through the same store: each change is read and written in one transaction.
        await asyncio.gather(
            store.update(1, 42, "config set", chat_model="mistral:latest"),
            store.update(1, 43, "config set", blog_quota=5),
        )
        assert store.get(1) == GuildSettings(chat_model="mistral:latest", blog_quota=5)
        # Another process whose memory is older reads the stored settings before changing them.
        stale = SettingsStore(other_process)
        await stale.load()
        await store.update(1, 42, "pause", blog_paused=True)
        await stale.update(1, 44, "config set", cooldown_seconds=3.0)
        assert stale.get(1) == GuildSettings(
            chat_model="mistral:latest", blog_quota=5, blog_paused=True, cooldown_seconds=3.0
        )
    async with open_database(db_url) as db:
        reopened = SettingsStore(db)
        await reopened.load()
        assert reopened.get(1) == GuildSettings(
            chat_model="mistral:latest", blog_quota=5, blog_paused=True, cooldown_seconds=3.0
        )
        assert len(await reopened.audit_log(1)) == 4


async def test_edit_computes_from_the_stored_value_and_records_only_real_changes(db_url: str) -> None:
    async with open_database(db_url) as db:
        store = SettingsStore(db, clock=lambda: 1000.0)
        await store.load()

        def add(channel: int) -> Callable[[GuildSettings], dict[str, object]]:
            return lambda current: {"chat_channels": (*current.chat_channels, channel)}

        await asyncio.gather(*(store.edit(1, 42, "chat channels", add(channel)) for channel in (5, 6, 7)))
        assert store.get(1).chat_channels == (5, 6, 7)
        unchanged = await store.edit(1, 42, "pause", lambda _: {"blog_paused": False})
        assert unchanged.changes == {} and unchanged.before == unchanged.after
        partly = await store.update(
            1, 42, "config set", blog_paused=False, blog_quota=None, cooldown_seconds=1.0
        )
        assert partly.cooldown_seconds == 1.0

        def refuse(current: GuildSettings) -> dict[str, object]:
            raise ValueError("too many")

        with pytest.raises(ValueError):
            await store.edit(1, 42, "chat channels", refuse)
        log = await store.audit_log(1)
        assert [entry.action for entry in log] == ["config set"] + ["chat channels"] * 3
        assert log[0].details == "cooldown_seconds: 1"
        await store.record_cancels(1, 42, [(3, 7), (4, 8)], via="/llm cancel")
        await store.record_cancels(None, 42, [(5, 7)], via="/blog cancel")
        await store.record_cancels(1, 42, [], via="/llm cancel")
        cancels = [entry.details for entry in await store.audit_log(1, limit=2)]
    assert cancels == ["job #4 of <@8> (via /llm cancel)", "job #3 of <@7> (via /llm cancel)"]
