"""Unmodified discord.js and hikari bots against the standalone Discord emulator (issue 11).

Each library's bot (``js/tour.js``, ``hikari_tour.py``) runs as its own process, pointed at the emulator
only through the library's documented options, and prints one JSON line per step. The test drives it
through the control API and checks the emulator's own record of what happened: the state it keeps and
its request log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import EmulatorControl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
JS = HERE / "js"
STEP_TIMEOUT = 20.0
RETRY_AFTER = 0.2


def client_command(library: str) -> list[str]:
    """How to start ``library``'s tour bot, or a skip when the library is not installed."""
    if library == "discord.js":
        node = shutil.which("node")
        if node is None:
            pytest.skip("node is not installed")
        if not (JS / "node_modules" / "discord.js").is_dir():
            pytest.skip("discord.js is not installed: run `npm ci --prefix tests/clients/js`")
        return [node, str(JS / "tour.js")]
    if importlib.util.find_spec("hikari") is None:
        pytest.skip("hikari is not installed: pip install -e '.[test]'")
    return [sys.executable, str(HERE / "hikari_tour.py")]


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(5):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def standalone_emulator() -> AsyncIterator[str]:
    """``python -m tests.fakes.discord_server --port 0`` in its own process; yields its URL."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.discord_server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        # Granted Message Content only: a bot that asked for more would be closed with 4014.
        "--privileged-intents",
        "message_content",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("listening on http://"), line
        yield line.split()[-1]
    finally:
        await stop(process)


class TourBot:
    """A client library's bot in a subprocess; :meth:`expect` reads its JSON step lines."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.process = process
        self.stderr = stderr
        self.steps: list[dict[str, Any]] = []

    async def expect(self, step: str) -> dict[str, Any]:
        """The next line for ``step``; fails on an ``error`` line, an early exit, or after STEP_TIMEOUT."""
        assert self.process.stdout is not None
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                raw = await self.process.stdout.readline()
                if not raw:
                    code = await self.process.wait()
                    raise AssertionError(f"the bot exited ({code}) before {step!r}: {self.tail()}")
                if not raw.startswith(b"{"):
                    continue
                line: dict[str, Any] = json.loads(raw)
                self.steps.append(line)
                assert line["step"] != "error", f"{line}\n{self.tail()}"
                if line["step"] == step:
                    return line

    def tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:]


@contextlib.asynccontextmanager
async def tour_bot(command: list[str], stderr: Path) -> AsyncIterator[TourBot]:
    with stderr.open("wb") as errors:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=errors
        )
        try:
            yield TourBot(process, stderr)
        finally:
            await stop(process)


def bot_token(bot_user_id: str) -> str:
    """A token shaped like Discord's (hikari reads the bot's id from its first segment)."""
    return base64.b64encode(bot_user_id.encode()).decode().rstrip("=") + ".emulator.not-a-secret"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("library", ["discord.js", "hikari"])
async def test_an_unmodified_client_library_tours_the_emulator(library: str, tmp_path: Path) -> None:
    command = client_command(library)
    async with standalone_emulator() as url, httpx.AsyncClient(timeout=10) as http:
        api = EmulatorControl(url, http)
        state = await api.refresh()
        general, blog = api.channel("general"), api.channel("blog")
        async with tour_bot([*command, url, bot_token(api.bot_id)], tmp_path / "stderr.txt") as bot:
            ready = await bot.expect("ready")
            order = await api.say("general", "alice", "tour")
            received = await bot.expect("received")
            sent = await bot.expect("sent")
            edited = await bot.expect("edited")
            replied = await bot.expect("replied")
            uploaded = await bot.expect("uploaded")
            deleted = await bot.expect("deleted")
            registered = await bot.expect("command")

            invocation = await api.invoke("general", "bob", "tour")
            await bot.expect("followup")

            # In a channel of its own, so the library's bucket holds nothing but the injected 429.
            await api.fault(
                kind="rate_limit",
                method="POST",
                path=f"/channels/{blog}/messages",
                count=1,
                retry_after=RETRY_AFTER,
            )
            before_retry = len(await api.requests())
            await api.say("blog", "alice", "retry")
            retried = await bot.expect("retried")

        requests = await api.requests()
        messages = {m["id"]: m for m in await api.messages("general")}
        blog_messages = await api.messages("blog")
        interaction = await api.interaction(invocation["interaction_id"])
        commands = (await api.refresh())["commands"]

    # Ready, with the guild and its channels.
    assert ready["user"] == state["bot_user_id"]
    assert ready["guilds"] == [{"id": state["guild_id"], "name": "Emulated Guild"}]
    assert {c["name"]: c["id"] for c in ready["channels"]} == state["channels"]

    # The message arrived with its content (the Message Content intent was asked for and granted).
    assert received == {
        "step": "received",
        "id": order["id"],
        "content": "tour",
        "author": "alice",
    }

    # Send and edit: the emulator holds the edited message and its history.
    assert edited["id"] == sent["id"] and edited["content"] == "tour: edited"
    assert [h["content"] for h in messages[sent["id"]]["history"]] == ["tour: sent", "tour: edited"]

    # Reply: a reply (type 19) referencing the order.
    assert replied["reference"] == order["id"]
    reply = messages[replied["id"]]
    assert reply["type"] == 19 and reply["message_reference"]["message_id"] == order["id"]

    # Upload: the file is stored with its bytes.
    assert uploaded["files"] == [{"name": "tour.txt", "size": len(f"uploaded by {library}")}]
    (attachment,) = messages[uploaded["id"]]["attachments"]
    assert attachment["filename"] == "tour.txt" and attachment["text"] == f"uploaded by {library}"

    # Delete: gone from the channel, through one DELETE of that message.
    assert deleted["id"] not in messages
    deletes = [r for r in requests if r["method"] == "DELETE" and r["path"].endswith(f"/{deleted['id']}")]
    assert [(r["path"], r["status"]) for r in deletes] == [
        (f"/channels/{general}/messages/{deleted['id']}", 204)
    ]

    # A guild command, created with one POST to the guild's command route (both libraries' create call).
    guild_route = f"/applications/{state['application_id']}/guilds/{state['guild_id']}/commands"
    registrations = [(r["method"], r["status"]) for r in requests if r["path"] == guild_route]
    assert registrations in ([("POST", 200)], [("POST", 201)])
    (tour_command,) = [c for c in commands if c["name"] == "tour"]
    assert tour_command["guild_id"] == state["guild_id"] == registered["guild"]
    assert tour_command["id"] == registered["id"]

    # The interaction: a deferral first, then the followup that replaces the "thinking…" message.
    assert [c["type"] for c in interaction["callbacks"]] == [5]
    assert [f["content"] for f in interaction["followups"]] == ["tour: followup"]
    token = invocation["token"]
    answered = [r["path"] for r in requests if token in r["path"]]
    assert answered[0] == f"/interactions/{invocation['interaction_id']}/{token}/callback"
    assert answered[1:] == [f"/webhooks/{state['application_id']}/{token}"]

    # The injected 429 was followed by exactly one retry. How long each library waits is its own model of the
    # bucket (hikari spreads Reset-After over the limit as a sliding window), so it is counted, not timed.
    creates = [
        r
        for r in requests[before_retry:]
        if r["method"] == "POST" and r["path"] == f"/channels/{blog}/messages"
    ]
    assert [r["status"] for r in creates] == [429, 200]
    assert [m["id"] for m in blog_messages if m["content"] == "tour: after a 429"] == [retried["id"]]
