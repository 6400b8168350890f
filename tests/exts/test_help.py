"""/help end to end."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl, make_config, running_bot


async def test_help_explains_chat_blog_and_moderation_privately(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url])):
        invocation = await discord_api.invoke("general", "alice", "help")
        record = await discord_api.answered(invocation["interaction_id"])
    callback = record["callbacks"][0]
    assert callback["type"] == 4 and callback["data"]["flags"] & 64
    text = callback["data"]["content"]
    for command in ("/blog new", "/blog cancel", "/chat reset", "/llm status"):
        assert command in text, command
    assert len(text) <= 2000
