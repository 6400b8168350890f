"""Stop, Regenerate and Continue on chat replies, and /ask: pressed and invoked through the emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.exts.test_chat import chat_requests, conversation, final_reply
from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl, make_config, running_bot, wait_until

LONG_ANSWER = " ".join(f"word{i}" for i in range(400)) + " THE-END."


def buttons(message: dict[str, Any]) -> list[str]:
    """The custom ids of a message's buttons, in order."""
    return [
        child["custom_id"]
        for row in message.get("components") or []
        for child in row.get("components") or []
        if "custom_id" in child
    ]


def actions(message: dict[str, Any]) -> list[str]:
    """The actions of a reply's buttons ("stop", "regenerate", "continue")."""
    return [custom_id.split(":")[1] for custom_id in buttons(message)]


async def current(api: EmulatorControl, channel: str, message_id: str) -> dict[str, Any]:
    return next(m for m in await api.messages(channel) if str(m["id"]) == str(message_id))


async def replies_to(api: EmulatorControl, channel: str, message_id: str) -> list[dict[str, Any]]:
    return [
        m
        for m in await api.bot_replies(channel)
        if (m.get("message_reference") or {}).get("message_id") == str(message_id)
    ]


async def streaming_reply(api: EmulatorControl, question_id: str) -> dict[str, Any]:
    """The reply's first message, once it shows text and its Stop button."""

    async def probe() -> dict[str, Any] | None:
        parts = await replies_to(api, "general", question_id)
        return parts[0] if parts and "word" in parts[0]["content"] and "stop" in actions(parts[0]) else None

    return await wait_until(probe, within=10)


async def test_stop_ends_the_reply_at_once_keeping_its_text_marked_stopped(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=20) as slow:
        slow.script("llama2", [LONG_ANSWER])
        config = make_config(tmp_path, emulator.url, [slow.url], chat={"edit_interval": 0.3})
        async with running_bot(config):
            question = await discord_api.mention("general", "alice", "tell me everything")
            reply = await streaming_reply(discord_api, question["id"])
            # Someone else may not stop it: they are told so, privately, and the reply goes on.
            refused = await discord_api.press(reply["id"], buttons(reply)[0], "bob")
            refusal = (await discord_api.answered(refused["interaction_id"]))["callbacks"][0]
            assert refusal["data"]["flags"] & 64 and "who asked" in refusal["data"]["content"]
            pressed = await discord_api.press(reply["id"], buttons(reply)[0], "alice")
            await discord_api.answered(pressed["interaction_id"])
            parts = await final_reply(discord_api, "general", question["id"], contains="stopped by")
            generation = await wait_until(lambda: _finished(chat_requests(slow.requests)[-1]), within=5)
    text = "\n".join(part["content"] for part in parts)
    assert "THE-END" not in text and "word0" in text
    assert text.rstrip().endswith("⚠️ *stopped by Alice*")
    # The model stopped too: the bot hung up on the generation.
    assert generation["disconnected"] and generation["tokens"] < 400
    # The reply can be redone, or go on.
    assert actions(parts[-1]) == ["regenerate", "continue"]
    assert all(actions(part) == [] for part in parts[:-1])


async def test_regenerate_answers_the_question_again_and_retires_the_old_buttons(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    ollama.script("llama2", ["first try", "second try"])
    config = make_config(tmp_path, emulator.url, [ollama.url])
    async with running_bot(config):
        question = await discord_api.mention("general", "alice", "name a bird")
        [first] = await final_reply(discord_api, "general", question["id"], contains="first try")
        first = await wait_until(lambda: _with_actions(discord_api, first["id"], ["regenerate"]), within=5)
        pressed = await discord_api.press(first["id"], buttons(first)[0], "alice")
        await discord_api.answered(pressed["interaction_id"])

        async def second() -> dict[str, Any] | None:
            found = [
                m
                for m in await replies_to(discord_api, "general", question["id"])
                if "second" in m["content"]
            ]
            return found[0] if found and actions(found[0]) == ["regenerate"] else None

        regenerated = await wait_until(second, within=10)
        old = await current(discord_api, "general", first["id"])
    assert regenerated["content"] == "second try"
    assert old["content"] == "first try" and actions(old) == []
    # The same question went to the model twice.
    asked = [conversation(r) for r in chat_requests(ollama.requests)]
    assert asked[-1] == asked[-2] == [("user", "name a bird")]


async def _finished(request: dict[str, Any]) -> dict[str, Any] | None:
    return request if request["finished_at"] else None


async def _with_actions(api: EmulatorControl, message_id: str, wanted: list[str]) -> dict[str, Any] | None:
    message = await current(api, "general", message_id)
    return message if actions(message) == wanted else None


async def test_continue_goes_on_from_a_reply_cut_at_the_token_limit(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    ollama.script("llama2", [" ".join(f"w{i}" for i in range(30)), "and the rest."])
    config = make_config(tmp_path, emulator.url, [ollama.url], chat={"max_tokens": 10})
    async with running_bot(config):
        question = await discord_api.mention("general", "alice", "count for me")
        [cut] = await final_reply(discord_api, "general", question["id"], contains="token limit")
        cut = await wait_until(
            lambda: _with_actions(discord_api, cut["id"], ["regenerate", "continue"]), within=5
        )
        # A moderator may press it too.
        pressed = await discord_api.press(cut["id"], buttons(cut)[1], "mod")
        await discord_api.answered(pressed["interaction_id"])
        [going_on] = await final_reply(discord_api, "general", cut["id"], contains="and the rest.")
        cut_now = await current(discord_api, "general", cut["id"])
    assert actions(cut_now) == [], "a used Continue button goes away"
    request = conversation(chat_requests(ollama.requests)[-1])
    # Two people in this conversation now: each user turn says who spoke.
    assert request[0] == ("user", "Alice: count for me")
    assert (
        request[1][0] == "assistant"
        and request[1][1].startswith("w0 w1")
        and "token limit" not in request[1][1]
    )
    assert request[2][0] == "user" and request[2][1].startswith("Mod: Continue")
    assert going_on["content"] == "and the rest."


async def test_a_stop_button_left_by_a_restart_ends_the_reply_honestly(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=20) as slow:
        slow.script("llama2", [LONG_ANSWER])
        config = make_config(
            tmp_path, emulator.url, [slow.url], chat={"edit_interval": 0.3, "max_tokens": 1000}
        )
        async with running_bot(config) as runner:
            question = await discord_api.mention("general", "alice", "tell me everything")
            reply = await streaming_reply(discord_api, question["id"])
            await runner.stop()  # killed mid-reply: the Stop button stays behind
            left = await current(discord_api, "general", reply["id"])
            assert actions(left) == ["stop"]
            await runner.start()
            pressed = await discord_api.press(reply["id"], buttons(left)[0], "alice")
            await discord_api.answered(pressed["interaction_id"])
            ended = await current(discord_api, "general", reply["id"])
    assert ended["content"].endswith("⚠️ *the reply was interrupted*")
    assert ended["content"].startswith(left["content"].split("\n")[0])
    assert actions(ended) == ["regenerate", "continue"]


async def test_ask_answers_in_the_interaction_publicly_or_privately(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    ollama.script("llama2", ["a public answer", "a private answer"])
    config = make_config(tmp_path, emulator.url, [ollama.url])
    async with running_bot(config):
        public = await discord_api.invoke("general", "alice", "ask", question="what is an owl?")
        private = await discord_api.invoke("general", "bob", "ask", question="and a crow?", private=True)

        async def answered(invocation: dict[str, Any], text: str) -> dict[str, Any] | None:
            record = await discord_api.interaction(invocation["interaction_id"])
            original = record["original"]
            return record if original and original["content"] == text and not buttons(original) else None

        shown = await wait_until(lambda: answered(public, "a public answer"), within=10)
        hidden = await wait_until(lambda: answered(private, "a private answer"), within=10)
    assert not shown["original"]["flags"] & 64
    assert hidden["original"]["flags"] & 64, "private answers are ephemeral"
    assert [conversation(r) for r in chat_requests(ollama.requests)] == [
        [("user", "what is an owl?")],
        [("user", "and a crow?")],
    ]
