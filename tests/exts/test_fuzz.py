"""Fuzzing (hypothesis) the two ways outsiders feed the bot: /blog options, and model output.

Each hypothesis example is a batch of cases run against one bot, so a few examples cover many inputs
without restarting the stack every time. The invariants: the bot answers and stays up, nobody is pinged,
no message breaks Discord's limits, and every job ends in a terminal state.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bot.blog.article import STYLES, TONES
from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl, make_config, running_bot, wait_until

UNICODE = st.characters(codec="utf-8", exclude_categories=["Cs"])
NASTY = st.sampled_from(
    [
        "@everyone",
        "@here",
        "<@{alice}>",
        "<@!{bob}>",
        "<@&{role}>",
        "```python\n",
        "\n```\n",
        "~~~",
        "<think>",
        "</think>",
        "\u200b",
        "\u202e",
        "\x00",
        "\x1b[31m",
        "\r\n",
        "# Title\n",
        "a" * 2500,
        "\n\n",
    ]
)
FRAGMENTS = st.lists(st.one_of(st.text(UNICODE, max_size=200), NASTY), max_size=12).map("".join)
# Deterministic, and no shrinking: each example runs a whole stack, so shrinking a failure would take minutes
# (and swallow pytest-timeout's interrupt); the failing batch is printed as it is.
FUZZ = settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def fill(text: str, api: EmulatorControl) -> str:
    return (
        text.replace("{alice}", api.user("alice"))
        .replace("{bob}", api.user("bob"))
        .replace("{role}", api.state["roles"]["moderator"])
    )


@pytest.mark.timeout(300)
@FUZZ
@given(outputs=st.lists(FRAGMENTS, min_size=6, max_size=6))
def test_model_output_cannot_ping_crash_or_break_limits(tmp_path_factory: Any, outputs: list[str]) -> None:
    # One huge reply in every batch: 100 kB of text.
    outputs = [*outputs, "x" * 50_000 + " @everyone " + "y " * 25_000]
    asyncio.run(_chat_batch(tmp_path_factory.mktemp("chat"), outputs))


async def _chat_batch(tmp_path: Path, outputs: list[str]) -> None:
    async with (
        DiscordEmulator() as emulator,
        FakeOllamaServer(models=["llama2"]) as ollama,
        httpx.AsyncClient(timeout=30) as http,
    ):
        api = EmulatorControl(emulator.url, http)
        await api.refresh()
        ollama.script("llama2", [fill(text, api) for text in outputs])
        config = make_config(tmp_path, emulator.url, [ollama.url], chat={"max_tokens": 100_000})
        async with running_bot(config) as runner:
            assert runner.bot is not None
            # discord.py loads extensions as fresh module objects, so check by name rather than isinstance.
            chat: Any = runner.bot.get_cog("Chat")
            assert chat is not None
            for number in range(len(outputs)):
                users = ("alice", "bob", "mod")
                await api.mention("general", users[number % 3], f"question {number}")
                await wait_until(lambda n=number: _received(ollama, n + 1), within=10)
                await asyncio.wait_for(chat.wait_until_idle(), 30)
            messages = {m["id"]: m for m in await api.messages("general")}
        replies = [m for m in messages.values() if str(m["author"]["id"]) == api.bot_id]
        assert len(replies) >= len(outputs)
        for message in replies:
            # The asker may be pinged, and only if the model wrote their mention; nobody else ever.
            asker = _asker(message, messages)
            assert set(message["pinged"]) <= {asker}, (message["content"][:100], message["pinged"], asker)
            assert len(message["content"]) <= 2000
            assert "Traceback" not in message["content"]


blog_options = st.fixed_dictionaries(
    {"topic": st.text(UNICODE, min_size=3, max_size=300)},
    optional={
        "style": st.sampled_from(STYLES),
        "tone": st.sampled_from(TONES),
        "target_length": st.integers(300, 5000),
        "tags": st.one_of(
            st.text(UNICODE, max_size=400), st.lists(st.text(UNICODE, max_size=40), max_size=14).map(",".join)
        ),
    },
)


@FUZZ
@given(
    cases=st.lists(blog_options, min_size=8, max_size=8), articles=st.lists(FRAGMENTS, min_size=8, max_size=8)
)
def test_blog_options_and_articles_cannot_hurt(
    tmp_path_factory: Any, cases: list[dict[str, Any]], articles: list[str]
) -> None:
    asyncio.run(_blog_batch(tmp_path_factory.mktemp("blog"), cases, articles))


async def _blog_batch(tmp_path: Path, cases: list[dict[str, Any]], articles: list[str]) -> None:
    async with (
        DiscordEmulator() as emulator,
        FakeOllamaServer(models=["mistral:latest"]) as ollama,
        httpx.AsyncClient(timeout=30) as http,
    ):
        api = EmulatorControl(emulator.url, http)
        await api.refresh()
        ollama.script("mistral:latest", [fill(text, api) for text in articles])
        blog = {"max_queued_per_user": 100, "progress_interval": 0.2, "retry_base_seconds": 0.05}
        config = make_config(tmp_path, emulator.url, [ollama.url], blog=blog)
        async with running_bot(config):
            records = []
            for number, options in enumerate(cases):
                invocation = await api.invoke("general", ("alice", "bob")[number % 2], "blog new", **options)
                records.append(await api.answered(invocation["interaction_id"]))
            for record in records:
                assert record["callbacks"][0]["type"] == 4  # answered, never left to time out
            await wait_until(lambda: _all_finished(tmp_path / "bot.sqlite3"), within=30)
        messages = await api.bot_replies("general")
        requesters = {api.user("alice"), api.user("bob")}
        for message in messages:
            # Only an article post may ping, and only its requester.
            assert set(message["pinged"]) <= requesters and len(message["pinged"]) <= 1, message["pinged"]
            assert len(message["content"]) <= 2000
        posts = [m for m in messages if m["attachments"]]
        assert all(m["attachments"][0]["filename"].endswith(".md") for m in posts)


def _asker(message: dict[str, Any], messages: dict[str, dict[str, Any]]) -> str:
    """The author of the question a bot reply (or a later part of it) answers."""
    while str(message["author"]["bot"]).lower() == "true":
        message = messages[message["message_reference"]["message_id"]]
    return str(message["author"]["id"])


async def _received(ollama: FakeOllamaServer, count: int) -> bool:
    return len([r for r in ollama.requests if r["finished_at"] is not None]) >= count


async def _all_finished(database: Path) -> bool:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        states = [row[0] for row in connection.execute("SELECT state FROM jobs")]
    return all(state in ("delivered", "failed", "cancelled") for state in states)
