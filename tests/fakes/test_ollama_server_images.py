"""The fake Ollama server and images: vision capabilities, Ollama's refusals, and the request log."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import ollama
import pytest

from tests.fakes.ollama_server import FakeOllamaServer
from tests.fakes.ollama_server.app import NO_VISION
from tests.sample_files import gif, png


@pytest.fixture
async def server() -> AsyncIterator[FakeOllamaServer]:
    async with FakeOllamaServer(models=["llama2", "llava"]) as fake:
        yield fake


async def test_show_reports_capabilities_as_the_official_client_reads_them(server: FakeOllamaServer) -> None:
    client = ollama.AsyncClient(host=server.url)
    try:
        llava, llama2 = await client.show("llava"), await client.show("llama2")
    finally:
        await client.close()
    assert llava.capabilities == ["completion", "vision"]
    assert llama2.capabilities == ["completion"]
    assert llava.details is not None and llava.details.families == ["llava", "clip"]


async def test_images_reach_a_vision_model_and_are_logged(server: FakeOllamaServer) -> None:
    server.script("llava", ["A black square."])
    client = ollama.AsyncClient(host=server.url)
    try:
        reply = await client.chat(
            "llava", [{"role": "user", "content": "what is this?", "images": [png()]}], stream=False
        )
    finally:
        await client.close()
    assert reply.message.content == "A black square."
    record = server.requests[-1]
    assert record["images"] == 1
    assert base64.b64decode(record["body"]["messages"][0]["images"][0]) == png()
    # An image costs 768 prompt tokens, as Ollama counts a CLIP image.
    assert record["prompt_tokens"] >= 768


async def test_images_for_a_model_that_cannot_see_get_ollamas_error(server: FakeOllamaServer) -> None:
    client = ollama.AsyncClient(host=server.url)
    try:
        with pytest.raises(ollama.ResponseError) as caught:
            await client.chat("llama2", [{"role": "user", "content": "hi", "images": [png()]}], stream=False)
    finally:
        await client.close()
    assert caught.value.status_code == 500
    assert caught.value.error == NO_VISION


async def test_malformed_images_are_refused(server: FakeOllamaServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        bad_base64 = await http.post(
            "/api/chat",
            json={"model": "llava", "messages": [{"role": "user", "content": "x", "images": ["%%%"]}]},
        )
        not_an_image = await http.post(
            "/api/chat",
            json={
                "model": "llava",
                "messages": [{"role": "user", "content": "x", "images": [base64.b64encode(b"hi").decode()]}],
            },
        )
    assert bad_base64.status_code == 400 and "base64" in bad_base64.json()["error"]
    assert not_an_image.status_code == 500 and "unknown format" in not_an_image.json()["error"]


async def test_openai_route_takes_image_url_parts_for_vision_models_only(server: FakeOllamaServer) -> None:
    data_url = "data:image/gif;base64," + base64.b64encode(gif()).decode()
    parts = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": data_url}}]
    server.script("llava", ["A dot."])
    async with httpx.AsyncClient(base_url=server.url) as http:
        seen = await http.post(
            "/v1/chat/completions", json={"model": "llava", "messages": [{"role": "user", "content": parts}]}
        )
        blind = await http.post(
            "/v1/chat/completions", json={"model": "llama2", "messages": [{"role": "user", "content": parts}]}
        )
        remote = await http.post(
            "/v1/chat/completions",
            json={
                "model": "llava",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                    }
                ],
            },
        )
    assert seen.status_code == 200 and seen.json()["choices"][0]["message"]["content"] == "A dot."
    assert blind.status_code == 400 and "image input is not supported" in blind.json()["error"]["message"]
    assert remote.status_code == 400 and "not currently supported" in remote.json()["error"]["message"]
    assert [r["images"] for r in server.requests] == [1, 1, 0]  # a refused image is not counted
