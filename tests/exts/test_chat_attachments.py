"""Attachments as chat context, end to end: a member posts files through the Discord emulator, the real
bot reads them, and the fake model server records what it was sent."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from tests.exts.test_chat import chat_requests, final_reply
from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl, make_config, running_bot
from tests.sample_files import png


def last_user_message(request: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = request["body"]["messages"][-1]
    assert message["role"] == "user"
    return message


async def test_an_image_reaches_a_vision_model_as_base64(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["llama2", "llava"]) as fake:
        fake.script("llava", ["A tiny black picture."])
        config = make_config(tmp_path, emulator.url, [fake.url], chat={"model": "llava"})
        async with running_bot(config):
            question = await discord_api.mention(
                "general", "alice", "what is this?", attachments=[("photo.png", "image/png", png())]
            )
            (reply,) = await final_reply(discord_api, "general", question["id"], contains="black picture")
        message = last_user_message(chat_requests(fake.requests)[-1])
    assert message["content"] == "what is this?"
    assert [base64.b64decode(image) for image in message["images"]] == [png()]
    assert reply["content"] == "A tiny black picture."  # nothing left out: no note


async def test_an_image_for_a_model_that_cannot_see_is_left_out_with_a_note(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    ollama.script("llama2", ["I can only read your words."])
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url])):
        question = await discord_api.mention(
            "general", "alice", "what is this?", attachments=[("photo.png", "image/png", png())]
        )
        (reply,) = await final_reply(discord_api, "general", question["id"], contains="your words")
    message = last_user_message(chat_requests(ollama.requests)[-1])
    assert "images" not in message
    assert message["content"] == "what is this?\n\n[Attached image photo.png was not included.]"
    note, answer = reply["content"].split("\n", 1)
    assert note == "-# 📎 llama2 can't see images; I ignored photo.png"
    assert answer == "I can only read your words."


async def test_a_text_file_is_in_the_prompt_with_its_name_and_the_note_stays_out_of_history(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    ollama.script("llama2", ["It prints hello.", "Yes."])
    code = "def greet():\n    print('hello')\n"
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url])):
        question = await discord_api.mention(
            "general", "alice", "what does this do?", attachments=[("greet.py", None, code.encode())]
        )
        (reply,) = await final_reply(discord_api, "general", question["id"], contains="prints hello")
        follow = await discord_api.say("general", "alice", "sure?", reply_to=reply["id"])
        await final_reply(discord_api, "general", follow["id"], contains="Yes.")
    first, second = chat_requests(ollama.requests)[-2:]
    expected = f"what does this do?\n\nFile `greet.py`:\n```py\n{code.rstrip()}\n```"
    assert last_user_message(first)["content"] == expected
    assert reply["content"] == "It prints hello."
    # Read back from the reply chain, the file is still part of the question.
    turns = [(m["role"], m["content"]) for m in second["body"]["messages"][1:]]
    assert turns == [("user", expected), ("assistant", "It prints hello."), ("user", "sure?")]


async def test_files_over_the_limits_are_refused_with_a_note_naming_them(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    ollama.script("llama2", ["Here is what I could read."])
    chat = {"max_attachment_bytes": 1024, "max_attachment_chars": 100}
    async with running_bot(make_config(tmp_path, emulator.url, [ollama.url], chat=chat)):
        question = await discord_api.mention(
            "general",
            "alice",
            "read these",
            attachments=[
                ("big.txt", "text/plain", b"x" * 2048),
                ("long.md", None, b"y" * 200),
                ("blob.bin", None, b"\x00\x01"),
                ("ok.txt", None, b"fine"),
            ],
        )
        (reply,) = await final_reply(discord_api, "general", question["id"], contains="could read")
    note = reply["content"].split("\n", 1)[0]
    assert note.startswith("-# 📎 ")
    assert "big.txt is too large (2 KB; my limit is 1 KB)" in note
    assert "long.md is 200 characters; I read at most 100 characters of files per message" in note
    assert "I can only read images and text files, not blob.bin (application/octet-stream)" in note
    content = last_user_message(chat_requests(ollama.requests)[-1])["content"]
    assert "File `ok.txt`:\n```\nfine\n```" in content
    assert "x" * 100 not in content and "y" * 100 not in content


async def test_an_openai_compatible_backend_gets_image_url_parts(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["llava"]) as fake:
        fake.script("llava", ["A picture."])
        config = make_config(
            tmp_path,
            emulator.url,
            [fake.url],
            chat={"model": "llava"},
            backends={"kind": "openai", "vision_models": ("llava",)},
        )
        async with running_bot(config):
            question = await discord_api.mention(
                "general", "alice", "and this?", attachments=[("p.png", None, png())]
            )
            await final_reply(discord_api, "general", question["id"], contains="A picture.")
        request = [r for r in fake.requests if r["path"] == "/v1/chat/completions"][-1]
    content = last_user_message(request)["content"]
    data_url = "data:image/png;base64," + base64.b64encode(png()).decode()
    assert content == [
        {"type": "text", "text": "and this?"},
        {"type": "image_url", "image_url": {"url": data_url}},
    ]


async def test_an_openai_compatible_backend_without_vision_models_gets_no_images(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["llava"]) as fake:
        fake.script("llava", ["Words only."])
        config = make_config(
            tmp_path, emulator.url, [fake.url], chat={"model": "llava"}, backends={"kind": "openai"}
        )
        async with running_bot(config):
            question = await discord_api.mention(
                "general", "alice", "this?", attachments=[("p.png", None, png())]
            )
            (reply,) = await final_reply(discord_api, "general", question["id"], contains="Words only.")
        request = [r for r in fake.requests if r["path"] == "/v1/chat/completions"][-1]
    assert isinstance(last_user_message(request)["content"], str)
    assert reply["content"].startswith("-# 📎 llava can't see images; I ignored p.png\n")
