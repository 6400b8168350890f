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


async def run_command(api: EmulatorControl, user: str, command: str, /, **options: Any) -> str:
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
    for action in ("pause", "resume", "config set"):  # "all" on no list changed nothing
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
        assert "blog model: `llama2`" in saved
        before = len(ollama.requests)
        await discord_api.invoke("general", "bob", "blog new", topic="which model")
        await wait_until(lambda: _article(discord_api))
        assert {r["model"] or r["body"]["model"] for r in ollama.requests[before:]} == {"llama2"}
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
        assert "background loops: all 4 running" in status  # health checks, status board, 2 workers
        assert not [r for r in ollama.requests if r["path"] in ("/api/chat", "/api/generate")]
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
    assert "FAIL  blog model: mixtral:8x7b is not served: run `ollama pull mixtral:8x7b`" in missing.stdout
    assert TOKEN not in missing.stdout + missing.stderr
    assert not (await discord_api.refresh())["commands"]
    synced = await _run("sync", "--config", str(config))
    assert synced.returncode == 0, synced.stderr
    assert {c["name"] for c in (await discord_api.refresh())["commands"]} == {
        "ask",
        "blog",
        "chat",
        "help",
        "llm",
    }


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


# -- issue 12: what a careful moderator expects -------------------------------------------------------


async def run_deferred(api: EmulatorControl, user: str, command: str, /, **options: Any) -> str:
    """Invoke a command whose answer may come after a deferral; the answer's final text."""
    invocation = await api.invoke("general", user, command, bypass_permissions=True, **options)
    record = await api.answered(invocation["interaction_id"])
    assert record["callbacks"][0]["data"].get("flags", 0) & EPHEMERAL, f"/{command} answered publicly"

    async def final() -> str | None:
        original = (await api.interaction(invocation["interaction_id"]))["original"]
        return str(original["content"]) if original and original["content"] else None

    return await wait_until(final)


async def queue_posts(api: EmulatorControl, user: str, *topics: str) -> None:
    for topic in topics:
        invocation = await api.invoke("general", user, "blog new", topic=topic)
        answer = (await api.answered(invocation["interaction_id"]))["callbacks"][0]["data"]["content"]
        assert "Blog post #" in answer, answer


async def test_cancels_by_moderators_are_in_the_audit_log(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url], blog=FAST_BLOG)):
        await run_command(discord_api, "mod", "llm pause")
        await queue_posts(discord_api, "alice", "first post", "second post", "third post")
        assert "#1 is cancelled" in await run_command(discord_api, "mod", "llm cancel", job=1)
        by_mod = await run_command(discord_api, "mod", "blog cancel", job=2)
        assert "#2 is cancelled" in by_mod
        own = await run_command(discord_api, "alice", "blog cancel", job=3)
        assert "#3 is cancelled" in own
        audit = await run_command(discord_api, "mod", "llm audit")
    alice, mod = discord_api.user("alice"), discord_api.user("mod")
    assert f"<@{mod}> **cancel** job #1 of <@{alice}> (via /llm cancel)" in audit, audit
    assert f"<@{mod}> **cancel** job #2 of <@{alice}> (via /blog cancel)" in audit, audit
    assert "job #3" not in audit, "a member cancelling her own post is no moderator action"


async def test_queue_shows_whole_lines_and_how_many_more(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    blog = {**FAST_BLOG, "max_queued_per_user": 30, "max_queued_per_guild": 60}
    topics = {
        number: f"post number {number:02d} about a long and winding road trip!" for number in range(1, 26)
    }
    assert all(len(topic) == 50 for topic in topics.values())
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url], blog=blog)):
        await run_command(discord_api, "mod", "llm pause")
        await queue_posts(discord_api, "bob", *topics.values())
        queue = await run_command(discord_api, "mod", "llm queue")
    assert len(queue) <= 2000
    *lines, last = queue.split("\n")
    assert last.startswith("… and ") and last.endswith(" more"), last
    assert len(lines) + int(last.split()[2]) == 25
    for position, line in enumerate(lines, start=1):
        number = int(line.split("`")[1].lstrip("#"))
        assert f"#{position} in line" in line and line.endswith(topics[number]), line


async def test_channel_rules_answer_what_really_happened(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    general, blog = discord_api.channel("general"), discord_api.channel("blog")
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url], blog=FAST_BLOG)):

        async def rule(action: str, channel: str | None = None) -> str:
            options = {"feature": "chat", "action": action}
            return await run_command(
                discord_api,
                "mod",
                "llm config channel",
                **options,
                **({"channel": channel} if channel else {}),
            )

        nothing = await rule("remove", general)
        assert "Nothing to remove" in nothing and "already allowed in every channel" in nothing, nothing
        assert "Nothing changed" in await rule("all")
        assert await run_command(discord_api, "mod", "llm audit") == "No moderator actions yet."
        assert f"now allowed only in <#{general}> (before: every channel)" in await rule("allow", general)
        assert "already on the list" in await rule("allow", general)
        not_listed = await rule("remove", blog)
        assert f"<#{blog}> is not on the list; chat is allowed in <#{general}>" in not_listed, not_listed
        last = await rule("remove", general)
        assert f"<#{general}> was the last channel on the list" in last and "every channel" in last, last
        audit = await run_command(discord_api, "mod", "llm audit")
    assert audit.count("**chat channels**") == 2, audit


async def test_replies_and_audit_speak_in_words(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    blog = discord_api.channel("blog")
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url], blog=FAST_BLOG)):
        chosen = await run_command(discord_api, "mod", "llm config set", chat_model="mistral:latest")
        assert chosen == "Saved: chat model: `mistral:latest`.", chosen
        reset = await run_command(discord_api, "mod", "llm config set", chat_model="default")
        assert reset == "Saved: chat model: back to the default (`llama2`).", reset
        off = await run_command(
            discord_api, "mod", "llm config set", chat_enabled=False, cooldown_seconds=2.5
        )
        assert off == "Saved: chat: off; cooldown: 2.5 s per member.", off
        again = await run_command(discord_api, "mod", "llm config set", chat_enabled=False)
        assert again == "Nothing changed. Already so: chat: off.", again
        await run_command(
            discord_api, "mod", "llm config channel", feature="blog", action="allow", channel=blog
        )
        await run_command(discord_api, "mod", "llm pause")
        assert "already paused" in await run_command(discord_api, "mod", "llm pause")
        audit = await run_command(discord_api, "mod", "llm audit")
    for words in (
        "**config set** chat model: `mistral:latest`",
        "**config set** chat model: back to the default (`llama2`)",
        "**config set** chat: off; cooldown: 2.5 s per member",
        f"**blog channels** blog channels: <#{blog}>",
        "**pause** blog queue: paused",
    ):
        assert words in audit, (words, audit)
    for python in ("None", "True", "False", "=", "'", "(1", ",)"):
        assert python not in audit, (python, audit)
    assert audit.count("**pause**") == 1 and audit.count("**config set**") == 3


async def test_cooldown_and_quota_go_back_to_the_defaults(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    def line(view: str, name: str) -> str:
        return next(row for row in view.splitlines() if row.startswith(f"**{name}**"))

    config = make_config(tmp_path, emulator.url, [ollama.url], blog=FAST_BLOG, chat={"cooldown_seconds": 4.0})
    async with running_bot(config) as runner:
        view = await run_command(discord_api, "mod", "llm config view")
        assert line(view, "cooldown") == "**cooldown**: 4 s per member (default)"
        assert line(view, "blog quota") == "**blog quota**: 3 queued posts per member (default)"
        assert line(view, "chat model") == "**chat model**: `llama2` (default)"
        await run_command(discord_api, "mod", "llm config set", cooldown_seconds=10, blog_quota=7)
        view = await run_command(discord_api, "mod", "llm config view")
        assert line(view, "cooldown") == "**cooldown**: 10 s per member"
        assert line(view, "blog quota") == "**blog quota**: 7 queued posts per member"
        reset = await run_command(discord_api, "mod", "llm config set", cooldown_seconds=-1, blog_quota=-1)
        assert reset == (
            "Saved: cooldown: back to the default (4 s per member); "
            "blog quota: back to the default (3 queued posts per member)."
        ), reset
        view = await run_command(discord_api, "mod", "llm config view")
        assert line(view, "cooldown") == "**cooldown**: 4 s per member (default)"
        assert line(view, "blog quota") == "**blog quota**: 3 queued posts per member (default)"
        assert runner.bot is not None
        guild = int(discord_api.state["guild_id"])
        settings = runner.bot.settings.get(guild)
        assert settings.cooldown_seconds is None and settings.blog_quota is None
        refused = await run_command(discord_api, "mod", "llm config set", blog_quota=0)
        assert "-1 for the default" in refused


async def test_status_shows_an_error_while_down_or_recent_only(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    async def status() -> str:
        return await run_command(discord_api, "mod", "llm status")

    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url], blog=FAST_BLOG)) as runner:
        ollama.add_fault({"kind": "status", "status": 400, "count": 1})
        asked = await discord_api.mention("general", "alice", "hello?")
        await wait_until(lambda: _reply_to(discord_api, "general", asked["id"]))
        recent = await status()
        assert "healthy" in recent and "last error" in recent, recent
        assert runner.bot is not None
        moderation: Any = runner.bot.get_cog("Moderation")
        moderation.recent_error_seconds = 0.3
        # Healthy again and the error is old: it is no longer shown.
        await wait_until(lambda: _without(status, "last error"))
        await ollama.stop()
        asked = await discord_api.mention("general", "alice", "still there?")
        await wait_until(lambda: _reply_to(discord_api, "general", asked["id"]))
        down = await wait_until(lambda: _with(status, "DOWN"))
        await asyncio.sleep(0.4)  # older than recent_error_seconds: shown all the same while down
        down = await status()
    assert "DOWN" in down and "last error (" in down, down


async def _with(probe: Any, text: str) -> str | None:
    answer: str = await probe()
    return answer if text in answer else None


async def _without(probe: Any, text: str) -> str | None:
    answer: str = await probe()
    return answer if text not in answer else None


async def test_bulk_cancel_of_queued_jobs(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"], tokens_per_second=20) as slow:
        slow.script("mistral:latest", ["word " * 2000])
        config = make_config(tmp_path, emulator.url, [slow.url], blog={**FAST_BLOG, "workers": 1})
        async with running_bot(config) as runner:
            await queue_posts(discord_api, "alice", "alice writes first")
            await wait_until(lambda: _true(any(r["first_token_at"] for r in slow.requests)))
            await queue_posts(discord_api, "bob", "bob one", "bob two", "bob three")
            await queue_posts(discord_api, "alice", "alice again")
            guidance = await run_command(discord_api, "mod", "llm cancel")
            assert "Give one of" in guidance
            both = await run_command(discord_api, "mod", "llm cancel", job=2, all_queued=True)
            assert "Give one of" in both
            bob = discord_api.user("bob")
            by_user = await run_deferred(discord_api, "mod", "llm cancel", user=bob)
            assert by_user == f"Cancelled 3 queued jobs of <@{bob}>: #2, #3, #4.", by_user
            rest = await run_deferred(discord_api, "mod", "llm cancel", all_queued=True)
            assert rest.startswith("Cancelled 1 queued job in this server: #5."), rest
            assert "Not queued, so left alone: #1" in rest, rest
            none_left = await run_deferred(discord_api, "mod", "llm cancel", user=bob)
            assert "no queued jobs" in none_left and "nothing was cancelled" in none_left
            audit = await run_command(discord_api, "mod", "llm audit")
            assert runner.bot is not None
            blog: Any = runner.bot.get_cog("Blog")
            states = {job: (await blog.store.get(job)).state for job in range(1, 6)}
            assert not any(r["disconnected"] for r in slow.requests), "the running job was left alone"
    assert states == {1: "running", 2: "cancelled", 3: "cancelled", 4: "cancelled", 5: "cancelled"}
    for job in (2, 3, 4):
        assert f"job #{job} of <@{bob}> (via /llm cancel)" in audit, audit
    assert f"job #5 of <@{discord_api.user('alice')}>" in audit and "job #1 " not in audit


async def _true(value: bool) -> bool:
    return value


async def test_a_channel_can_have_its_own_chat_model_and_system_prompt(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    discord_api: EmulatorControl,
) -> None:
    ollama.script("mistral:latest", ["from mistral", "mistral again"])
    ollama.script("llama2", ["from llama2", "llama2 again"])
    config = make_config(tmp_path, emulator.url, [ollama.url])
    blog = discord_api.channel("blog")
    async with running_bot(config) as runner:
        saved = await run_command(
            discord_api,
            "mod",
            "llm config set",
            channel=blog,
            chat_model="mistral:latest",
            system_prompt="You are the blog desk's editor.",
        )
        assert f"<#{blog}> `mistral:latest`" in saved
        mixed = await run_command(discord_api, "mod", "llm config set", channel=blog, cooldown_seconds=3)
        assert "only those two" in mixed
        await runner.restart()  # the overrides are stored, not only in memory
        in_blog = await discord_api.mention("blog", "alice", "edit this")
        await wait_until(lambda: _reply_to(discord_api, "blog", in_blog["id"]))
        in_general = await discord_api.mention("general", "alice", "hello")
        await wait_until(lambda: _reply_to(discord_api, "general", in_general["id"]))
        view = await run_command(discord_api, "mod", "llm config view")
        reset = await run_command(discord_api, "mod", "llm config set", channel=blog, chat_model="default")
        again = await discord_api.mention("blog", "alice", "edit this too")
        await wait_until(lambda: _reply_to(discord_api, "blog", again["id"]))
    chats = [r["body"] for r in ollama.requests if r["path"] == "/api/chat"]
    assert [body["model"] for body in chats] == ["mistral:latest", "llama2", "llama2"]
    systems = [body["messages"][0]["content"] for body in chats]
    assert systems[0] == "You are the blog desk's editor."
    assert systems[1] != systems[0]
    assert systems[2] == systems[0], "only the model was reset; the channel keeps its prompt"
    assert f"**chat model in** <#{blog}>: `mistral:latest`" in view
    assert "none (every channel follows the server)" in reset
