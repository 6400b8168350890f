"""Images in the LLM layer: both wire formats, the vision question, the token budget, the pool's cache."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from bot.config import BackendConfig
from bot.llm import ChatMessage, Image, ModelNotFound, OllamaClient, OpenAIClient, Timeouts
from bot.llm.budget import IMAGE_TOKENS, MESSAGE_OVERHEAD_TOKENS, TokenEstimator
from bot.llm.pool import BackendPool, Priority
from tests.fakes.ollama_server import FakeOllamaServer
from tests.sample_files import png

PICTURE = Image("image/png", base64.b64encode(png()).decode())


async def test_ollama_sends_images_as_base64_and_asks_show_for_vision() -> None:
    async with FakeOllamaServer(models=["llama2", "llava"]) as fake, httpx.AsyncClient() as http:
        fake.script("llava", ["Black."])
        client = OllamaClient(http, fake.url)
        assert await client.sees_images("llava") is True
        assert await client.sees_images("llama2") is False
        with pytest.raises(ModelNotFound):
            await client.sees_images("nope")
        async with client.chat("llava", [ChatMessage("user", "what?", (PICTURE,))]) as stream:
            text = "".join([part async for part in stream])
    assert text == "Black."
    assert fake.requests[-1]["body"]["messages"] == [
        {"role": "user", "content": "what?", "images": [PICTURE.data]}
    ]


async def test_an_ollama_without_capabilities_is_read_from_its_families() -> None:
    answers = {
        "llava": {"details": {"families": ["llama", "clip"]}},
        "llama2": {"details": {"families": ["llama"]}},
        "odd": {"details": {}},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[json.loads(request.content)["model"]])

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = OllamaClient(http, "http://old-ollama")
        assert [await client.sees_images(m) for m in ("llava", "llama2", "odd")] == [True, False, None]


async def test_openai_sends_image_url_parts() -> None:
    async with FakeOllamaServer(models=["llava"]) as fake, httpx.AsyncClient() as http:
        fake.script("llava", ["A picture."])
        client = OpenAIClient(http, fake.url)
        messages = [ChatMessage("system", "be brief"), ChatMessage("user", "what?", (PICTURE,))]
        async with client.chat("llava", messages) as stream:
            text = "".join([part async for part in stream])
    assert text == "A picture."
    assert fake.requests[-1]["body"]["messages"] == [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PICTURE.data}"}},
            ],
        },
    ]


def test_an_image_costs_a_fixed_number_of_tokens() -> None:
    estimator = TokenEstimator(chars_per_token=3.0)
    plain = ChatMessage("user", "abc")
    assert estimator.message_tokens(plain) == MESSAGE_OVERHEAD_TOKENS + 1
    two = ChatMessage("user", "abc", (PICTURE, PICTURE))
    assert estimator.message_tokens(two) == MESSAGE_OVERHEAD_TOKENS + 1 + 2 * IMAGE_TOKENS
    # The images' share of a reported count is not mistaken for text.
    estimator.observe([ChatMessage("user", "x" * 600, (PICTURE,))], 3 + 5 + IMAGE_TOKENS + 200)
    assert estimator.chars_per_token == pytest.approx(3.0)


async def test_the_pool_asks_each_server_once_and_never_sends_images_to_a_blind_model() -> None:
    shows: list[str] = []

    async def log(request: httpx.Request) -> None:
        if request.url.path == "/api/show":
            shows.append(str(request.url.host) + str(request.url.port))

    async with (
        FakeOllamaServer(models=["llama2", "llava"]) as both,
        FakeOllamaServer(models=["llama2"]) as text_only,
        httpx.AsyncClient(event_hooks={"request": [log]}) as http,
    ):
        configs = [BackendConfig(url=both.url, name="both"), BackendConfig(url=text_only.url, name="text")]
        async with BackendPool(configs, http, health_interval=5) as pool:
            # llava is only on "both" (the other does not list it); llama2 is on both, blind on both.
            assert await pool.sees_images("llava") is True
            assert await pool.sees_images("llama2") is False
            asked = len(shows)
            assert await pool.sees_images("llava") is True and await pool.sees_images("llama2") is False
            assert len(shows) == asked == 3  # cached per server and model
            both.script("llama2", ["Text only."])
            text_only.script("llama2", ["Text only."])
            # Even a caller that did not ask gets no images through to a model that can't see them.
            stream = pool.chat(
                "llama2",
                [ChatMessage("user", "look", (PICTURE,))],
                options={"num_predict": 20},
                priority=Priority.CHAT,
                timeouts=Timeouts(),
            )
            async with stream:
                assert "".join([part async for part in stream]) == "Text only."
    sent = [r for r in both.requests + text_only.requests if r["path"] == "/api/chat"]
    assert sent and all("images" not in m for r in sent for m in r["body"]["messages"])


async def test_an_openai_backend_sees_only_its_configured_vision_models() -> None:
    async with FakeOllamaServer(models=["llava", "llama2"]) as fake, httpx.AsyncClient() as http:
        configs = [BackendConfig(url=fake.url, kind="openai", vision_models=("llava",))]
        async with BackendPool(configs, http, health_interval=5) as pool:
            assert await pool.sees_images("llava") is True
            assert await pool.sees_images("llama2") is False
