"""Per-server settings and the audit log, on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from bot.db import Database
from bot.settings import GuildSettings, SettingsStore


async def test_settings_default_change_survive_a_reopen_and_are_audited(tmp_path: Path) -> None:
    path = tmp_path / "settings.sqlite3"
    async with Database(path) as db:
        store = SettingsStore(db, clock=lambda: 1000.0)
        await store.load()
        assert store.get(1) == GuildSettings() and store.get(None) == GuildSettings()
        await store.update(1, 42, "config set", chat_model="mistral:latest", chat_enabled=False)
        await store.update(1, 42, "chat channels", chat_channels=(5, 6))
        await store.update(2, 43, "pause", blog_paused=True)
        await store.record(1, 42, "cancel", "job #3")
        assert store.get(1).chat_model == "mistral:latest" and store.paused_guilds() == frozenset({2})
    async with Database(path) as db:
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
    assert log[-1].details == "chat_enabled=False, chat_model='mistral:latest'"


def test_channel_rules() -> None:
    everywhere = GuildSettings()
    assert everywhere.allows_chat_in(1) and everywhere.allows_blog_in(1)
    limited = GuildSettings(chat_channels=(7,), blog_channels=(8,))
    assert limited.allows_chat_in(7) and not limited.allows_chat_in(8)
    assert limited.allows_chat_in(99, parent_id=7), "a thread follows its parent channel"
    assert limited.allows_blog_in(8) and not limited.allows_blog_in(7)
    assert not GuildSettings(chat_enabled=False).allows_chat_in(1)
