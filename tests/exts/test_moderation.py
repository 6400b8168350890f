"""/llm end to end: moderators steer the bot, members are refused, settings apply at once and persist."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import TOKEN, EmulatorControl, make_config, running_bot, wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
FAST_BLOG = {"retry_base_seconds": 0.05, "progress_interval": 0.3, "lease_seconds": 5.0}
EPHEMERAL = 64


async def run_command(api: EmulatorControl, user: str, command: str, **options: Any) -> str:
    """Invoke a slash command (through an admin override, as if the member could see it); the answer."""
    invocation = await api.invoke("general", user, command, bypass_permissions=True, **options)
    record = await api.answered(invocation["interaction_id"])
    callback = record["callbacks"][0]
    assert callback["data"].get("flags", 0) & EPHEMERAL, f"/{command} answered publicly"
    return str(callback["data"]["content"])


MODERATOR_COMMANDS: list[tuple[str, dict[str, Any], str]] = [
    ("llm status", {}, "LLM bot"),
    ("llm queue", {}, "queue"),
    ("llm cancel", {"job": 999}, "no job #999"),
    ("llm pause", {}, "paused"),
    ("llm resume", {}, "resumed"),
    ("llm config view", {}, "chat model"),
    ("llm config set", {"cooldown_seconds": 1.5}, "Saved"),
    ("llm config channel", {"feature": "chat", "action": "all"}, "every channel"),
    ("llm audit", {}, "config set"),
]


async def test_moderators_can_and_members_cannot(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    discord_api: EmulatorControl,
    http: httpx.AsyncClient,
) -> None:
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url], blog=FAST_BLOG)):
        await discord_api.refresh()
        llm = next(c for c in discord_api.state["commands"] if c["name"] == "llm")
        assert llm["default_member_permissions"] == str(1 << 5)  # hidden from members: Manage Server
        # Discord itself refuses a member who cannot see the command...
        refused = await http.post(
            f"{emulator.url}/_emulator/interactions",
            json={
                "channel_id": discord_api.channel("general"),
                "user_id": discord_api.user("alice"),
                "command": "llm status",
                "options": {},
            },
        )
        assert refused.status_code == 403
        for command, options, expected in MODERATOR_COMMANDS:
            answer = await run_command(discord_api, "mod", command, **options)
            assert expected in answer, (command, answer)
            # ...and the bot refuses her again at run time, had an admin made it visible to her.
            denied = await run_command(discord_api, "alice", command, **options)
            assert "don't have permission" in denied, (command, denied)
        audit = await run_command(discord_api, "mod", "llm audit")
    for action in ("pause", "resume", "config set", "chat channels"):
        assert action in audit
    assert f"<@{discord_api.user('mod')}>" in audit


async def test_settings_apply_at_once_and_survive_a_restart(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    discord_api: EmulatorControl,
) -> None:
    ollama.script("llama2", ["chat answer"])
    ollama.script("mistral:latest", ["# Mistral Post\n\nbody"])
    ollama.script("llama2", ["# Llama Post\n\nbody"])
    config = make_config(tmp_path, emulator.url, [ollama.url], blog=FAST_BLOG)
    async with running_bot(config) as runner:
        # Chat only in #blog: a mention in #general gets no answer.
        await run_command(
            discord_api,
            "mod",
            "llm config channel",
            feature="chat",
            action="allow",
            channel=discord_api.channel("blog"),
        )
        ignored = await discord_api.mention("general", "alice", "are you there?")
        answered = await discord_api.mention("blog", "alice", "and here?")
        await wait_until(lambda: _reply_to(discord_api, "blog", answered["id"]))
        assert await _reply_to(discord_api, "general", ignored["id"]) is None
        # The blog model a moderator picks is the one the next job uses.
        saved = await run_command(discord_api, "mod", "llm config set", blog_model="llama2")
        assert "blog_model = 'llama2'" in saved
        await discord_api.invoke("general", "bob", "blog new", topic="which model")
        await wait_until(lambda: _article(discord_api))
        generate = [r for r in ollama.requests if r["path"] == "/api/generate"]
        assert [r["body"]["model"] for r in generate] == ["llama2"]
        refused_model = await run_command(discord_api, "mod", "llm config set", chat_model="gpt-9")
        assert "not on any backend" in refused_model
        await runner.restart()
        view = await run_command(discord_api, "mod", "llm config view")
    assert "`llama2`" in view and f"<#{discord_api.channel('blog')}>" in view


async def test_pause_holds_jobs_and_resume_releases_them(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    discord_api: EmulatorControl,
) -> None:
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url], blog=FAST_BLOG)):
        await run_command(discord_api, "mod", "llm pause")
        invocation = await discord_api.invoke("general", "alice", "blog new", topic="held back")
        await discord_api.answered(invocation["interaction_id"])
        queue = await run_command(discord_api, "mod", "llm queue")
        assert "#1 in line" in queue
        status = await run_command(discord_api, "mod", "llm status")
        assert "PAUSED" in status and "1 queued" in status
        assert not [r for r in ollama.requests if r["path"] == "/api/generate"]
        await run_command(discord_api, "mod", "llm resume")
        await wait_until(lambda: _article(discord_api))
        cancelled = await run_command(discord_api, "mod", "llm cancel", job=1)
    assert "already finished" in cancelled


async def test_doctor_and_sync_as_an_operator_runs_them(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"""
[discord]
api_base = "{emulator.api_base}"
gateway_url = "{emulator.gateway_url}"
[database]
path = "{tmp_path / "bot.sqlite3"}"
[[backends]]
url = "{ollama.url}"
""")
    ok = await _run("doctor", "--config", str(config))
    assert ok.returncode == 0, ok.stdout
    assert [line.split()[0] for line in ok.stdout.strip().splitlines()] == ["ok"] * 5
    config.write_text(config.read_text() + '[blog]\nmodel = "mixtral:8x7b"\n')
    missing = await _run("doctor", "--config", str(config))
    assert missing.returncode == 1
    assert "FAIL  blog model: mixtral:8x7b is missing: run `ollama pull mixtral:8x7b`" in missing.stdout
    assert TOKEN not in missing.stdout + missing.stderr
    assert not (await discord_api.refresh())["commands"]
    synced = await _run("sync", "--config", str(config))
    assert synced.returncode == 0, synced.stderr
    assert {c["name"] for c in (await discord_api.refresh())["commands"]} == {"blog", "llm"}


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


async def _run(*args: str) -> _Result:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=ROOT,
        env={**os.environ, "DISCORD_TOKEN": TOKEN},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return _Result(process.returncode, stdout.decode(), stderr.decode())


async def _reply_to(api: EmulatorControl, channel: str, message_id: str) -> dict[str, Any] | None:
    return next(
        (
            m
            for m in await api.bot_replies(channel)
            if (m.get("message_reference") or {}).get("message_id") == message_id
        ),
        None,
    )


async def _article(api: EmulatorControl) -> bool:
    return any(
        a["filename"].endswith(".md") for m in await api.bot_replies("general") for a in m["attachments"]
    )
