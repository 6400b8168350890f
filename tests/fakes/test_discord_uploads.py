"""Members' files through the emulator: attachment objects like Discord's, served back, Discord's limits."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.discord_server.uploads import MEMBER_MAX_UPLOAD
from tests.harness import EmulatorControl
from tests.sample_files import png


async def test_a_members_files_get_attachment_objects_and_are_served_back(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    message = await discord_api.say(
        "general",
        "alice",
        "look",
        attachments=[("photo.png", "image/png", png(7, 9)), ("notes.py", None, b"print('hi')\n")],
    )
    photo, notes = message["attachments"]
    assert photo["filename"] == "photo.png" and photo["size"] == len(png(7, 9))
    assert photo["content_type"] == "image/png" and (photo["width"], photo["height"]) == (7, 9)
    assert photo["proxy_url"] and int(photo["id"]) > 0
    assert notes["content_type"] == "text/x-python; charset=utf-8" and "width" not in notes
    downloaded = await http.get(photo["url"])
    assert downloaded.status_code == 200 and downloaded.content == png(7, 9)
    assert downloaded.headers["content-type"] == "image/png"
    # The REST message has the same attachments.
    rest = emulator.world.find_message(int(message["id"]))
    assert rest is not None and rest[1].data["attachments"] == message["attachments"]


async def test_an_attachment_only_message_is_valid(discord_api: EmulatorControl) -> None:
    message = await discord_api.say("general", "alice", "", attachments=[("a.txt", "text/plain", b"x")])
    assert message["content"] == "" and len(message["attachments"]) == 1


@pytest.mark.parametrize(
    ("files", "status", "code"),
    [
        ([("big.bin", None, b"x" * (MEMBER_MAX_UPLOAD + 1))], 413, 40005),
        ([(f"f{i}.txt", None, b"x") for i in range(11)], 400, 50035),
    ],
    ids=["over-10-MiB", "11-files"],
)
async def test_discords_limits_for_members_apply(
    emulator: DiscordEmulator, http: httpx.AsyncClient, files: list[Any], status: int, code: int
) -> None:
    body = {
        "channel_id": "general",
        "author_id": "alice",
        "content": "files",
        "attachments": [
            {"filename": name, "content_type": kind, "data_base64": base64.b64encode(data).decode()}
            for name, kind, data in files
        ],
    }
    response = await http.post(f"{emulator.url}/_emulator/messages", json=body)
    assert response.status_code == status and response.json()["code"] == code
    assert not [
        m for m in emulator.world.messages[emulator.world.channel_id("general") or 0] if m.data["content"]
    ]


async def test_malformed_uploads_are_a_control_api_error(
    emulator: DiscordEmulator, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        f"{emulator.url}/_emulator/messages",
        json={
            "channel_id": "general",
            "author_id": "alice",
            "attachments": [{"filename": "a", "data_base64": "%"}],
        },
    )
    assert response.status_code == 400 and "base64" in response.json()["error"]
