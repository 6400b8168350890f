"""The backend pool against several fake Ollama servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bot.config import BackendConfig
from bot.llm import BackendUnavailable, ChatMessage, Preempted, Timeouts
from bot.llm.pool import BackendPool, Priority
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import wait_until

TIMEOUTS = Timeouts(first_byte=10, idle=10, total=30)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def pool_of(http: httpx.AsyncClient, urls: list[str], **backend: Any) -> BackendPool:
    configs = [BackendConfig(url=url, name=f"b{index}", **backend) for index, url in enumerate(urls)]
    return BackendPool(configs, http, health_interval=0.2, max_probe_backoff=0.4)


async def call(pool: BackendPool, model: str, priority: Priority, tokens: int = 10) -> str:
    if priority is Priority.CHAT:
        stream = pool.chat(
            model,
            [ChatMessage("user", "hi")],
            options={"num_predict": tokens},
            priority=priority,
            timeouts=TIMEOUTS,
        )
    else:
        stream = pool.generate(
            model, "write", options={"num_predict": tokens}, priority=priority, timeouts=TIMEOUTS
        )
    async with stream:
        async for _ in stream:
            pass
    return stream.text


def max_overlap(records: list[dict[str, Any]]) -> int:
    spans = [(r["received_at"], r["finished_at"]) for r in records]
    return max((sum(1 for s, f in spans if s <= start < f) for start, _ in spans), default=0)


async def test_in_flight_never_exceeds_max_concurrent(http: httpx.AsyncClient) -> None:
    async with (
        FakeOllamaServer(models=["mistral"], tokens_per_second=200, num_parallel=8) as first,
        FakeOllamaServer(models=["mistral"], tokens_per_second=200, num_parallel=8) as second,
    ):
        async with pool_of(http, [first.url, second.url], max_concurrent=2) as pool:
            await asyncio.gather(*(call(pool, "mistral", Priority.BLOG) for _ in range(12)))
        for fake in (first, second):
            generated = [r for r in fake.requests if r["path"] == "/api/generate"]
            assert generated, "both backends take work"
            assert max_overlap(generated) <= 2


async def test_a_chat_behind_a_blog_backlog_preempts_the_running_one_and_goes_next(
    http: httpx.AsyncClient,
) -> None:
    async with FakeOllamaServer(models=["llama2", "mistral"], tokens_per_second=100) as fake:
        async with pool_of(http, [fake.url], max_concurrent=1) as pool:
            blogs = [asyncio.create_task(resumable_blog(pool, tokens=20)) for _ in range(4)]
            await wait_until(lambda: _started(fake, "/api/generate"))
            chat = asyncio.create_task(call(pool, "llama2", Priority.CHAT))
            await asyncio.gather(chat, *blogs)
        order = [r["path"] for r in fake.requests if r["path"] != "/api/version"]
    # The running generation stopped at once (the one slot went to the chat), then every blog call ran.
    assert order[:2] == ["/api/generate", "/api/chat"]
    preempted = next(r for r in fake.requests if r["path"] == "/api/generate")
    assert preempted["disconnected"] and preempted["tokens"] < 20
    assert order.count("/api/generate") == 5 and sum(r.done() for r in blogs) == 4


async def resumable_blog(pool: BackendPool, tokens: int) -> int:
    """A background call that, like the blog worker, starts again when it is preempted; how many tries."""
    for tries in range(1, 10):
        try:
            await call(pool, "mistral", Priority.BLOG, tokens=tokens)
            return tries
        except Preempted:
            continue
    raise AssertionError("preempted forever")


async def test_a_killed_backend_is_routed_around_and_comes_back(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"]) as steady:
        flaky = FakeOllamaServer(models=["llama2"])
        await flaky.start()
        port = int(flaky.url.rsplit(":", 1)[1])
        async with pool_of(http, [flaky.url, steady.url], max_concurrent=1) as pool:
            await flaky.stop()
            texts = await asyncio.gather(*(call(pool, "llama2", Priority.CHAT) for _ in range(4)))
            assert all(texts)
            assert [s.healthy for s in pool.status()] == [False, True]
            revived = FakeOllamaServer(models=["llama2"])
            await revived.start(port=port)
            try:
                await wait_until(lambda: _healthy(pool, "b0"), within=10)
                await asyncio.gather(*(call(pool, "llama2", Priority.CHAT) for _ in range(4)))
                assert any(r["path"] == "/api/chat" for r in revived.requests), "traffic returns to it"
            finally:
                await revived.stop()


async def test_all_down_chat_fails_at_once_and_blog_waits(http: httpx.AsyncClient) -> None:
    fake = FakeOllamaServer(models=["llama2", "mistral"])
    await fake.start()
    port = int(fake.url.rsplit(":", 1)[1])
    await fake.stop()
    async with pool_of(http, [fake.url], max_concurrent=1) as pool:
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendUnavailable):
            await call(pool, "llama2", Priority.CHAT)
        assert asyncio.get_running_loop().time() - started < 1.0
        blog = asyncio.create_task(call(pool, "mistral", Priority.BLOG))
        await asyncio.sleep(0.3)
        assert not blog.done(), "a blog job waits for a backend instead of failing"
        revived = FakeOllamaServer(models=["llama2", "mistral"])
        await revived.start(port=port)
        try:
            assert await asyncio.wait_for(blog, 10)
        finally:
            await revived.stop()


async def test_reserved_chat_slot_keeps_room_for_chat(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2", "mistral"], tokens_per_second=50, num_parallel=2) as fake:
        async with pool_of(http, [fake.url], max_concurrent=2, reserved_chat_slots=1) as pool:
            blogs = [asyncio.create_task(call(pool, "mistral", Priority.BLOG, tokens=25)) for _ in range(3)]
            await wait_until(lambda: _started(fake, "/api/generate"))
            waited = asyncio.get_running_loop().time()
            await call(pool, "llama2", Priority.CHAT, tokens=2)
            assert asyncio.get_running_loop().time() - waited < 0.3, "the chat did not wait for a blog"
            await asyncio.gather(*blogs)
        assert max_overlap([r for r in fake.requests if r["path"] == "/api/generate"]) == 1


async def test_an_openai_compatible_backend_serves_chat_and_blog(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2", "mistral"]) as fake:
        fake.script("llama2", ["chat over openai"])
        fake.script("mistral", ["# Blog over openai"])
        async with pool_of(http, [fake.url], kind="openai") as pool:
            assert await call(pool, "llama2", Priority.CHAT) == "chat over openai"
            assert await call(pool, "mistral", Priority.BLOG) == "# Blog over openai"
            assert pool.status()[0].healthy
        assert {r["path"] for r in fake.requests} == {"/v1/chat/completions"}


async def test_the_last_model_is_preferred_so_models_do_not_ping_pong(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2", "mistral"], max_loaded=1, load_seconds=0.1) as fake:
        async with pool_of(http, [fake.url], max_concurrent=1) as pool:
            calls = []
            for _ in range(3):
                calls.append(asyncio.create_task(call(pool, "mistral", Priority.BLOG)))
                calls.append(asyncio.create_task(call(pool, "llama2", Priority.BLOG)))
            await asyncio.gather(*calls)
        assert sum(fake.load_count.values()) <= 3  # FIFO would load six times


async def _started(fake: FakeOllamaServer, path: str) -> bool:
    return any(r["path"] == path and r["first_token_at"] for r in fake.requests)


async def _healthy(pool: BackendPool, name: str) -> bool:
    return any(status.name == name and status.healthy for status in pool.status())
