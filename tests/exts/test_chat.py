"""Chat end to end: the real bot, the Discord emulator and the fake Ollama server, over real sockets."""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl, FakeOllamaControl, make_config, running_bot, wait_until

FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)


async def final_reply(
    api: EmulatorControl,
    channel: str,
    question: str,
    expected_parts: int | None = None,
    *,
    contains: str = "",
    within: float = 10.0,
) -> list[dict[str, Any]]:
    """Wait until the bot's answer to message ``question`` contains ``contains``; its parts, in order.

    The answer is the chain of bot messages replying to the question, then each to the previous part.
    """

    async def settled() -> list[dict[str, Any]] | None:
        messages = await api.bot_replies(channel)
        chain: list[dict[str, Any]] = []
        parent = question
        while True:
            part = next(
                (m for m in messages if (m.get("message_reference") or {}).get("message_id") == parent), None
            )
            if part is None:
                break
            chain.append(part)
            parent = part["id"]
        if not chain or (expected_parts is not None and len(chain) < expected_parts):
            return None
        return chain if contains in "\n".join(m["content"] for m in chain) else None

    return await wait_until(settled, within=within)


async def thread_shows(http: Any, emulator_url: str, thread_id: str, text: str) -> bool:
    """Whether a message in the thread (once it exists) contains ``text``."""
    response = await http.get(f"{emulator_url}/_emulator/channels/{thread_id}/messages")
    messages = response.json() if response.status_code == 200 else []
    return any(text in m["content"] for m in messages)


def chat_requests(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if r["path"] == "/api/chat"]


def conversation(request: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, content) of a model request, without the system prompt."""
    return [(m["role"], m["content"]) for m in request["body"]["messages"] if m["role"] != "system"]


async def test_mention_gets_a_streamed_reply_equal_to_the_model_text(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl, http: Any
) -> None:
    answer = " ".join(f"word{i}" for i in range(60)) + "."
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=60) as slow:
        slow.script("llama2", [answer])
        config = make_config(tmp_path, emulator.url, [slow.url], chat={"edit_interval": 0.25})
        async with running_bot(config):
            question = await discord_api.mention("general", "alice", "tell me something")
            replies = await final_reply(discord_api, "general", question["id"], contains="word59.")
        request = chat_requests(slow.requests)[-1]
    assert [m["content"] for m in replies] == [answer]
    reply = replies[0]
    # Streamed: posted early, then edited as text arrived, the last version being the whole answer.
    assert len(reply["history"]) >= 3
    assert reply["history"][0]["content"] != answer
    assert reply["history"][-1]["content"] == answer
    assert reply["message_reference"]["message_id"] == question["id"]
    # The bot's own mention was stripped from the prompt; the model options are the configured ones.
    assert conversation(request) == [("user", "tell me something")]
    assert request["body"]["model"] == "llama2"
    assert request["body"]["options"] == {"temperature": 0.7, "num_predict": 500, "num_ctx": 4096}
    typing = [
        r for r in await discord_api.requests() if r["method"] == "POST" and r["path"].endswith("/typing")
    ]
    assert typing, "the typing indicator was never shown"


async def test_reply_chain_is_the_conversation(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    discord_api: EmulatorControl,
) -> None:
    ollama.script("llama2", ["answer one", "answer two", "answer three"])
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url])):
        q1 = await discord_api.mention("general", "alice", "question one")
        (a1,) = await final_reply(discord_api, "general", q1["id"], contains="answer one")
        # Replying to the bot continues the conversation without a new mention.
        q2 = await discord_api.say("general", "alice", "question two", reply_to=a1["id"])
        (a2,) = await final_reply(discord_api, "general", q2["id"], contains="answer two")
        q3 = await discord_api.say("general", "alice", "question three", reply_to=a2["id"])
        await final_reply(discord_api, "general", q3["id"], contains="answer three")
    assert conversation(chat_requests(ollama.requests)[-1]) == [
        ("user", "question one"),
        ("assistant", "answer one"),
        ("user", "question two"),
        ("assistant", "answer two"),
        ("user", "question three"),
    ]


async def test_two_people_at_once_keep_separate_histories(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=200, num_parallel=2) as fake:
        fake.script("llama2", ["This answer is complete."] * 4)
        async with running_bot(
            make_config(tmp_path, emulator.url, [fake.url], backends={"max_concurrent": 2})
        ):
            qa, qb = await asyncio.gather(
                discord_api.mention("general", "alice", "alice asks about cats"),
                discord_api.mention("general", "bob", "bob asks about dogs"),
            )
            (aa,), (ab,) = await asyncio.gather(
                final_reply(discord_api, "general", qa["id"], contains="complete.", within=15),
                final_reply(discord_api, "general", qb["id"], contains="complete.", within=15),
            )
            qa2, qb2 = await asyncio.gather(
                discord_api.say("general", "alice", "and kittens?", reply_to=aa["id"]),
                discord_api.say("general", "bob", "and puppies?", reply_to=ab["id"]),
            )
            await asyncio.gather(
                final_reply(discord_api, "general", qa2["id"], contains="complete.", within=15),
                final_reply(discord_api, "general", qb2["id"], contains="complete.", within=15),
            )
        requests = chat_requests(fake.requests)
    followups = {conversation(r)[-1][1]: conversation(r) for r in requests if len(conversation(r)) > 1}
    alice, bob = followups["and kittens?"], followups["and puppies?"]
    assert [c for _, c in alice if "dogs" in c or "puppies" in c] == []
    assert [c for _, c in bob if "cats" in c or "kittens" in c] == []
    assert alice[0] == ("user", "alice asks about cats") and bob[0] == ("user", "bob asks about dogs")


async def test_long_reply_arrives_whole_with_balanced_fences(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    code = "\n".join(f"    total += compute({i})  # step {i}" for i in range(60))
    prose = " ".join(f"sentence{i} goes here." for i in range(120))
    answer = f"Intro paragraph.\n\n{prose}\n\n```python\ndef main():\n{code}\n```\n\n{prose} The end."
    assert len(answer) > 5000
    ollama.script("llama2", [answer])
    config = make_config(tmp_path, emulator.url, [ollama.url], chat={"max_tokens": 5000})
    async with running_bot(config):
        question = await discord_api.mention("general", "alice", "write a lot")
        replies = await final_reply(discord_api, "general", question["id"], contains="The end.", within=20)
    contents = [m["content"] for m in replies]
    assert len(contents) >= 3
    assert all(len(c) <= 2000 for c in contents)
    for content in contents:
        assert len(FENCE.findall(content)) % 2 == 0, content
    assert any(c.startswith("```python\n") for c in contents[1:]), (
        "a split code block is reopened with its tag"
    )
    added = re.compile(r"\n```$|^```python\n")
    rejoined = "".join("".join(added.sub("", c).split()) for c in contents)
    assert rejoined == "".join(answer.split())
    # Every part after the first replies to the previous part, so the chain stays one conversation.
    for previous, part in itertools.pairwise(replies):
        assert part["message_reference"]["message_id"] == previous["id"]


async def test_mentions_in_model_output_ping_nobody(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    bob = discord_api.user("bob")
    roles = discord_api.state.get("roles", {})
    role_mentions = " ".join(f"<@&{role_id}>" for role_id in roles.values())
    ollama.script("llama2", [f"@everyone @here look at <@{bob}> and <@!{bob}> {role_mentions}!"])
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url])):
        question = await discord_api.mention("general", "alice", "ping everyone please")
        replies = await final_reply(discord_api, "general", question["id"], contains="look at")
    assert replies[0]["content"].startswith("@everyone @here")
    assert [m["pinged"] for m in replies] == [[]]
    assert replies[0]["allowed_mentions"]["parse"] == []


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("unreachable", "can't reach the model server"),
        ("model_not_found", "`llama9` is not available"),
        ("busy", "busy"),
        ("timeout", "did not answer in time"),
        ("cut_off", "cut off"),
    ],
)
async def test_each_failure_gets_a_specific_message_within_seconds(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    ollama_control: FakeOllamaControl,
    discord_api: EmulatorControl,
    setup: str,
    expected: str,
) -> None:
    backend_url = ollama.url
    chat: dict[str, Any] = {"first_token_timeout": 1.0}
    if setup == "unreachable":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            backend_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    elif setup == "model_not_found":
        chat["model"] = "llama9"
    elif setup == "busy":
        await ollama_control.fault(kind="status", status=503, count=10)
    elif setup == "timeout":
        await ollama_control.fault(kind="hang")
    elif setup == "cut_off":
        await ollama_control.script("llama2", "the first words and then more words")
        await ollama_control.fault(kind="die_mid_stream", after_tokens=3)
    async with running_bot(make_config(tmp_path, emulator.url, [backend_url], chat=chat)):
        started = asyncio.get_running_loop().time()
        question = await discord_api.mention("general", "alice", "hello?")
        replies = await final_reply(discord_api, "general", question["id"], contains="⚠️", within=8)
        elapsed = asyncio.get_running_loop().time() - started
    text = replies[-1]["content"]
    assert expected in text, text
    assert "Traceback" not in text
    assert elapsed < 6
    if setup == "cut_off":
        assert text.startswith("the first words"), "the partial text is kept"


async def test_conversation_survives_a_restart(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    ollama.script("llama2", ["first answer", "second answer"])
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url])) as runner:
        q1 = await discord_api.mention("general", "alice", "remember the word banana")
        (a1,) = await final_reply(discord_api, "general", q1["id"], contains="first answer")
        await runner.restart()  # a fresh process would have an empty message cache too
        assert runner.bot is not None and not runner.bot.cached_messages
        q2 = await discord_api.say("general", "alice", "what was the word?", reply_to=a1["id"])
        await final_reply(discord_api, "general", q2["id"], contains="second answer")
    assert conversation(chat_requests(ollama.requests)[-1]) == [
        ("user", "remember the word banana"),
        ("assistant", "first answer"),
        ("user", "what was the word?"),
    ]


async def test_a_second_question_waits_for_the_first_answer_and_says_so(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=40, num_parallel=2) as slow:
        slow.script("llama2", ["slow " * 80, "the second answer"])
        async with running_bot(make_config(tmp_path, emulator.url, [slow.url])):
            first = await discord_api.mention("general", "alice", "long one")
            await wait_until(lambda: discord_api.bot_replies("general", after=first["id"]))
            second = await discord_api.mention("general", "alice", "another")
            (answer,) = await final_reply(
                discord_api, "general", second["id"], contains="the second answer", within=15
            )
    assert answer["message_reference"]["message_id"] == second["id"]
    shown = [version["content"] for version in answer["history"]]
    assert "previous question" in shown[0], shown
    assert shown[-1] == "the second answer"
    one, two = chat_requests(slow.requests)
    assert two["received_at"] >= one["finished_at"], "one reply per member at a time"


async def test_messages_not_for_the_bot_are_ignored(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    ollama.script("llama2", ["only this one"])
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url])):
        await discord_api.say("general", "alice", "just chatting, no mention")
        await discord_api.say("general", "bob", f"<@{discord_api.user('alice')}> hi alice")
        question = await discord_api.mention("general", "alice", "now you")
        await final_reply(discord_api, "general", question["id"], contains="only this one")
    assert len(chat_requests(ollama.requests)) == 1


async def test_a_huge_reply_is_capped_and_attached_whole(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    answer = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum " * 30 for i in range(60)) + "\n\nTHE END"
    assert len(answer) > 20000
    ollama.script("llama2", [answer])
    config = make_config(
        tmp_path, emulator.url, [ollama.url], chat={"max_tokens": 20000, "max_reply_messages": 3}
    )
    async with running_bot(config):
        question = await discord_api.mention("general", "alice", "write a book")
        parts = await final_reply(discord_api, "general", question["id"], expected_parts=4, within=20)
    assert len(parts) == 4 and all(len(p["content"]) <= 2000 for p in parts)
    assert "attached as a file" in parts[2]["content"]
    (attachment,) = parts[3]["attachments"]
    assert attachment["filename"] == "reply.md" and attachment["text"] == answer
    assert all(p["pinged"] == [] for p in parts)


async def test_direct_messages_are_answered(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    discord_api: EmulatorControl,
    http: Any,
) -> None:
    ollama.script("llama2", ["hello in private"])
    dm_channel = discord_api.state["dm_channels"]["alice"]
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url])):
        sent = await http.post(
            f"{emulator.url}/_emulator/messages",
            json={
                "channel_id": dm_channel,
                "author_id": discord_api.user("alice"),
                "content": "hi, no mention needed",
            },
        )
        question = sent.json()

        async def answered() -> list[dict[str, Any]] | None:
            messages = (await http.get(f"{emulator.url}/_emulator/channels/{dm_channel}/messages")).json()
            replies = [
                m for m in messages if (m.get("message_reference") or {}).get("message_id") == question["id"]
            ]
            return replies if replies and "private" in replies[0]["content"] else None

        (reply,) = await wait_until(answered)
    assert reply["content"] == "hello in private"
    assert conversation(chat_requests(ollama.requests)[-1]) == [("user", "hi, no mention needed")]


async def test_in_a_thread_it_started_the_thread_is_the_conversation(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    discord_api: EmulatorControl,
    http: Any,
) -> None:
    ollama.script("llama2", ["first answer, in a thread", "second answer"])
    config = make_config(tmp_path, emulator.url, [ollama.url], chat={"reply_in_threads": True})
    async with running_bot(config):
        question = await discord_api.mention("general", "alice", "let us talk about owls")
        thread_id = str(question["id"])  # a thread started from a message takes the message's id

        def answer(text: str) -> Awaitable[bool]:
            return thread_shows(http, emulator.url, thread_id, text)

        await wait_until(lambda: answer("first answer"))
        # In the thread no mention or reply is needed: every message continues the conversation.
        await http.post(
            f"{emulator.url}/_emulator/messages",
            json={
                "channel_id": thread_id,
                "author_id": discord_api.user("alice"),
                "content": "what do they eat?",
            },
        )
        await wait_until(lambda: answer("second answer"))
    assert (await discord_api.refresh())["threads"] == [thread_id]
    assert conversation(chat_requests(ollama.requests)[-1]) == [
        ("user", "let us talk about owls"),
        ("assistant", "first answer, in a thread"),
        ("user", "what do they eat?"),
    ]
    assert await discord_api.bot_replies("general") == [], "the answers went to the thread"


async def test_a_question_over_the_size_limit_never_reaches_the_model(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    config = make_config(tmp_path, emulator.url, [ollama.url], chat={"max_prompt_chars": 100})
    async with running_bot(config):
        question = await discord_api.mention("general", "alice", "why " * 60)
        (note,) = await final_reply(discord_api, "general", question["id"], contains="too long")
    assert "the limit is 100" in note["content"]
    assert chat_requests(ollama.requests) == []


async def test_a_limit_note_near_2000_characters_stays_with_its_text(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    # 398 five-character tokens ≈ 1,990 characters: the note no longer fits the last message's 2,000.
    ollama.script("llama2", [" word" * 450])
    config = make_config(tmp_path, emulator.url, [ollama.url], chat={"max_tokens": 398})
    async with running_bot(config):
        question = await discord_api.mention("general", "alice", "go on and on")
        parts = await final_reply(discord_api, "general", question["id"], contains="token limit")
    assert all(len(part["content"]) <= 2000 for part in parts)
    last = parts[-1]["content"]
    assert "398-token limit" in last
    assert "word" in last, "the note shares its message with text, never stands alone"


async def test_a_chat_waiting_for_a_busy_server_says_where_it_is_in_line(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=40) as slow:
        slow.script("llama2", ["busy " * 240, "alice's answer", "mod's answer"])
        config = make_config(tmp_path, emulator.url, [slow.url], backends={"max_concurrent": 1})
        async with running_bot(config):
            first = await discord_api.mention("general", "bob", "a long one")
            await wait_until(lambda: discord_api.bot_replies("general", after=first["id"]))
            alice = await discord_api.mention("general", "alice", "me next")
            await final_reply(discord_api, "general", alice["id"], contains="you're next")
            moderator = await discord_api.mention("general", "mod", "and me")
            (second,) = await final_reply(
                discord_api, "general", moderator["id"], contains="mod's answer", within=20
            )
            (first_in_line,) = await final_reply(
                discord_api, "general", alice["id"], contains="alice's answer"
            )
    notices = [version["content"] for version in second["history"]]
    assert any("Waiting for a model server — you're #2 in line" in text for text in notices), notices
    assert first_in_line["content"] == "alice's answer"
    assert len(chat_requests(slow.requests)) == 3


async def test_a_mention_during_a_blog_job_on_a_one_slot_server_is_answered_at_once(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    """The chat preempts the article being written; the article continues afterwards as one text."""
    async with FakeOllamaServer(models=["llama2", "mistral:latest"], tokens_per_second=100) as fake:
        config = make_config(
            tmp_path,
            emulator.url,
            [fake.url],
            backends={"max_concurrent": 1},
            blog={"progress_interval": 0.5, "lease_seconds": 5.0},
        )
        async with running_bot(config):
            job = await discord_api.invoke(
                "general", "bob", "blog new", topic="owls at night", target_length=300
            )
            await discord_api.answered(job["interaction_id"])
            await wait_until(lambda: _writing(fake, "mistral:latest"), within=10)
            asked_at = asyncio.get_running_loop().time()
            question = await discord_api.mention("general", "alice", "quick question")
            await final_reply(discord_api, "general", question["id"], contains=".", within=10)
            chat = next(r for r in fake.requests if r["path"] == "/api/chat" and r["model"] == "llama2")
            post = await wait_until(lambda: _article_post(discord_api), within=30)
            record = await discord_api.interaction(job["interaction_id"])
            status = await wait_until(lambda: _status_done(discord_api, str(record["original"]["id"])))
        blog = [r for r in fake.requests if r["model"] == "mistral:latest"]
    assert chat["first_token_at"] - asked_at < 2.0, "the chat did not wait for the article"
    assert blog[0]["disconnected"] and len(blog) == 2, "the article was paused once, then continued"
    body = post["attachments"][0]["text"].split("---\n", 2)[2]
    headings = [line for line in body.splitlines() if line.startswith("## ")]
    assert headings == [f"## Part {n}" for n in range(1, len(headings))] + ["## Conclusion"], headings
    assert status.startswith("✅") and "Incomplete" not in post["content"]


async def _writing(fake: FakeOllamaServer, model: str) -> bool:
    return any(r["model"] == model and r["tokens"] > 20 for r in fake.requests)


async def _status_done(api: EmulatorControl, message_id: str) -> str | None:
    for message in await api.messages("general"):
        if str(message["id"]) == message_id and "Done" in message["content"]:
            return str(message["content"])
    return None


async def _article_post(api: EmulatorControl) -> dict[str, Any] | None:
    return next((m for m in await api.bot_replies("general") if m["attachments"]), None)


@pytest.mark.parametrize(
    ("method", "path", "count", "after_processing"),
    [
        ("PATCH", "/channels/*/messages/*", 2, False),
        ("PATCH", "/channels/*/messages/*", 2, True),
        # The reply was created but the bot never heard: the retry must not post it twice.
        ("POST", "/channels/*/messages", 1, True),
    ],
    ids=["edit", "edit-after-processing", "create-after-processing"],
)
async def test_connection_resets_while_streaming_still_end_in_the_whole_reply(
    tmp_path: Path,
    emulator: DiscordEmulator,
    discord_api: EmulatorControl,
    method: str,
    path: str,
    count: int,
    after_processing: bool,
) -> None:
    """discord.py lets a dropped connection through as an aiohttp error, not an HTTPException: the renderer
    must treat it as a transient failure, not stop and leave a half-written reply."""
    answer = " ".join(f"word{i}" for i in range(80)) + "."
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=60) as slow:
        slow.script("llama2", [answer])
        config = make_config(tmp_path, emulator.url, [slow.url], chat={"edit_interval": 0.25})
        async with running_bot(config):
            await discord_api.fault(
                kind="connection_reset",
                method=method,
                path=path,
                count=count,
                after_processing=after_processing,
            )
            question = await discord_api.mention("general", "alice", "tell me something")
            replies = await final_reply(discord_api, "general", question["id"], contains="word79.", within=20)
            resets = [r for r in await discord_api.requests() if r["status"] == "reset"]
            answers = [
                m
                for m in await discord_api.bot_replies("general")
                if (m.get("message_reference") or {}).get("message_id") == question["id"]
            ]
    assert len(resets) == count, "the faults never fired"
    assert [m["content"] for m in replies] == [answer]
    assert len(answers) == 1, "the reply was posted twice"


async def test_a_direct_message_conversation_needs_no_reply_button(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    discord_api: EmulatorControl,
    http: Any,
) -> None:
    ollama.script("llama2", ["Nice to meet you, Alice.", "Your name is Alice.", "I don't know your name."])
    dm_channel = discord_api.state["dm_channels"]["alice"]

    async def say(text: str) -> dict[str, Any]:
        body = {"channel_id": dm_channel, "author_id": discord_api.user("alice"), "content": text}
        question: dict[str, Any] = (await http.post(f"{emulator.url}/_emulator/messages", json=body)).json()

        async def answered() -> dict[str, Any] | None:
            messages = (await http.get(f"{emulator.url}/_emulator/channels/{dm_channel}/messages")).json()
            replies = (m for m in messages if (m.get("message_reference") or {}).get("message_id"))
            return next((m for m in replies if m["message_reference"]["message_id"] == question["id"]), None)

        return await wait_until(answered)

    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url])):
        await say("hi, I'm Alice")
        await say("what is my name?")
        reset = await http.post(
            f"{emulator.url}/_emulator/interactions",
            json={"channel_id": dm_channel, "user_id": "alice", "command": "chat reset"},
        )
        await discord_api.answered(reset.json()["interaction_id"])
        await say("what is my name now?")
    _, second, third = chat_requests(ollama.requests)
    assert conversation(third) == [("user", "what is my name now?")], "/chat reset starts afresh"
    assert conversation(second) == [
        ("user", "hi, I'm Alice"),
        ("assistant", "Nice to meet you, Alice."),
        ("user", "what is my name?"),
    ]
    system = second["body"]["messages"][0]["content"]
    assert "private Discord conversation with" in system and "server" not in system, system


async def test_while_replies_finish_at_shutdown_no_blog_job_is_taken(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    """A clean stop gives replies in progress a grace period; the blog worker must already have stopped
    taking jobs by then, or it starts generations that are thrown back a moment later."""
    async with FakeOllamaServer(models=["llama2", "mistral:latest"], tokens_per_second=20) as slow:
        slow.script("llama2", [" ".join(f"word{i}" for i in range(60)) + "."])
        async with running_bot(make_config(tmp_path, emulator.url, [slow.url])) as runner:
            assert runner.bot is not None
            question = await discord_api.mention("general", "alice", "tell me something long")
            await wait_until(lambda: _writing(slow, "llama2"), within=10)
            closing = asyncio.create_task(runner.bot.close())
            await asyncio.sleep(0.5)  # the reply is still streaming (3 s at 20 tokens/s)
            await discord_api.invoke("general", "bob", "blog new", topic="owls at night")
            await asyncio.wait_for(closing, 15)
            replies = await final_reply(discord_api, "general", question["id"], contains="word59.")
    assert replies, "the reply in progress was finished"
    assert not [r for r in slow.requests if r["model"] == "mistral:latest"], "a blog job was started"


async def test_chat_reset_starts_a_thread_conversation_afresh(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    discord_api: EmulatorControl,
    http: Any,
) -> None:
    ollama.script("llama2", ["first answer, in a thread", "second answer"])
    config = make_config(tmp_path, emulator.url, [ollama.url], chat={"reply_in_threads": True})
    async with running_bot(config):
        question = await discord_api.mention("general", "alice", "let us talk about owls")
        thread_id = str(question["id"])

        def answer(text: str) -> Awaitable[bool]:
            return thread_shows(http, emulator.url, thread_id, text)

        await wait_until(lambda: answer("first answer"))
        pressed = await http.post(
            f"{emulator.url}/_emulator/interactions",
            json={"channel_id": thread_id, "user_id": "alice", "command": "chat reset"},
        )
        record = await discord_api.answered(pressed.json()["interaction_id"])
        assert record["callbacks"][0]["data"]["content"].startswith("🧹 Fresh start")
        await wait_until(lambda: answer("Fresh start"))
        await http.post(
            f"{emulator.url}/_emulator/messages",
            json={"channel_id": thread_id, "author_id": "alice", "content": "what do they eat?"},
        )
        await wait_until(lambda: answer("second answer"))
        # In a channel a mention is already a fresh start: the command only says so, privately.
        elsewhere = await discord_api.invoke("general", "bob", "chat reset")
        note = (await discord_api.answered(elsewhere["interaction_id"]))["callbacks"][0]["data"]
    assert conversation(chat_requests(ollama.requests)[-1]) == [("user", "what do they eat?")]
    assert note["flags"] & 64 and "already starts a fresh conversation" in note["content"]
