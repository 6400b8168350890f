"""The project's Ollama client against the fake server (and a raw server for malformed replies)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

import httpx
import pytest
from aiohttp import web

from bot.llm import (
    NO_RETRY,
    BackendBusy,
    BackendError,
    BackendUnavailable,
    BadRequest,
    ChatMessage,
    LLMTimeout,
    ModelNotFound,
    OllamaClient,
    RetryPolicy,
    StreamFailed,
    TextStream,
    Timeouts,
)
from tests.fakes.ollama_server import FakeOllamaServer, tokenize
from tests.harness import wait_until

T = TypeVar("T")

QUICK_RETRY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
HELLO = [ChatMessage("user", "hello")]


@pytest.fixture
async def server() -> AsyncIterator[FakeOllamaServer]:
    async with FakeOllamaServer(models=["llama2", "mistral:latest"]) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def client(server: FakeOllamaServer, http: httpx.AsyncClient) -> OllamaClient:
    return OllamaClient(http, server.url, name="fake", retry=NO_RETRY)


async def collect(stream: TextStream) -> tuple[list[str], TextStream]:
    chunks: list[str] = []
    async with stream:
        async for text in stream:
            chunks.append(text)
    return chunks, stream


async def test_chat_streams_the_scripted_reply_then_stats(
    server: FakeOllamaServer, client: OllamaClient
) -> None:
    server.script("llama2", ["Hello there, general Kenobi."])
    chunks, stream = await collect(client.chat("llama2", HELLO, options={"num_predict": 100}))
    assert "".join(chunks) == "Hello there, general Kenobi."
    assert chunks == tokenize("Hello there, general Kenobi.")
    assert stream.stats is not None
    assert stream.stats.done_reason == "stop"
    assert stream.stats.completion_tokens == len(chunks)
    body = server.requests[-1]["body"]
    assert body["messages"] == [{"role": "user", "content": "hello"}] and body["stream"] is True


async def test_generate_streams_an_article(client: OllamaClient) -> None:
    chunks, stream = await collect(
        client.generate("mistral:latest", "Write about owls", options={"num_predict": 200})
    )
    text = "".join(chunks)
    assert text.startswith("# ")
    assert stream.stats.model == "mistral:latest"


async def test_num_predict_cut_is_reported_as_truncated(
    server: FakeOllamaServer, client: OllamaClient
) -> None:
    server.script("llama2", ["one two three four five six"])
    chunks, stream = await collect(client.chat("llama2", HELLO, options={"num_predict": 3}))
    assert "".join(chunks) == "one two three"
    assert stream.stats.truncated


async def test_unknown_model_is_model_not_found_and_never_retried(
    server: FakeOllamaServer, http: httpx.AsyncClient
) -> None:
    client = OllamaClient(http, server.url, retry=QUICK_RETRY)
    with pytest.raises(ModelNotFound) as info:
        await collect(client.chat("llama9", HELLO))
    assert info.value.model == "llama9"
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (503, BackendBusy, True),
        (400, BadRequest, False),
        (500, BackendError, True),
        (404, ModelNotFound, False),
    ],
)
async def test_status_faults_map_to_typed_errors(
    server: FakeOllamaServer, client: OllamaClient, status: int, error_type: type[Exception], retryable: bool
) -> None:
    server.add_fault({"kind": "status", "status": status})
    with pytest.raises(error_type) as info:
        await collect(client.chat("llama2", HELLO))
    assert getattr(info.value, "retryable", None) is retryable


async def test_retryable_error_is_retried_before_any_text(
    server: FakeOllamaServer, http: httpx.AsyncClient
) -> None:
    server.add_fault({"kind": "status", "status": 503, "count": 2})
    server.script("llama2", ["third time lucky"])
    client = OllamaClient(http, server.url, retry=QUICK_RETRY)
    chunks, stream = await collect(client.chat("llama2", HELLO))
    assert "".join(chunks) == "third time lucky"
    assert stream.attempts == 3


async def test_die_mid_stream_keeps_partial_text_and_is_not_retried(
    server: FakeOllamaServer, http: httpx.AsyncClient
) -> None:
    server.add_fault({"kind": "die_mid_stream", "after_tokens": 3})
    server.script("llama2", ["a b c d e f"])
    client = OllamaClient(http, server.url, retry=QUICK_RETRY)
    with pytest.raises(StreamFailed) as info:
        await collect(client.chat("llama2", HELLO))
    assert info.value.partial_text == "a b c"
    assert len(server.requests) == 1


async def test_error_line_mid_stream_is_an_error(server: FakeOllamaServer, client: OllamaClient) -> None:
    server.add_fault({"kind": "error_line", "after_tokens": 2})
    server.script("llama2", ["a b c d"])
    with pytest.raises(StreamFailed) as info:
        await collect(client.chat("llama2", HELLO))
    assert info.value.partial_text == "a b"
    assert "server reported" in str(info.value)


async def test_hang_before_first_byte_times_out(server: FakeOllamaServer, client: OllamaClient) -> None:
    server.add_fault({"kind": "hang"})
    with pytest.raises(LLMTimeout) as info:
        await collect(client.chat("llama2", HELLO, timeouts=Timeouts(first_byte=0.3, idle=5, total=10)))
    assert info.value.phase == "first_byte"
    await wait_until(lambda: _true(server.requests[-1]["disconnected"]))


async def test_stall_mid_stream_hits_the_idle_timeout(server: FakeOllamaServer, client: OllamaClient) -> None:
    server.add_fault({"kind": "hang", "after_tokens": 2})
    server.script("llama2", ["a b c d"])
    with pytest.raises(LLMTimeout) as info:
        await collect(client.chat("llama2", HELLO, timeouts=Timeouts(first_byte=5, idle=0.3, total=10)))
    assert info.value.phase == "idle"
    assert info.value.partial_text == "a b"


async def test_overall_deadline(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=20) as slow:
        slow.script("llama2", ["word " * 100])
        client = OllamaClient(http, slow.url, retry=NO_RETRY)
        with pytest.raises(LLMTimeout) as info:
            await collect(client.chat("llama2", HELLO, timeouts=Timeouts(first_byte=5, idle=5, total=0.5)))
    assert info.value.phase == "deadline"
    assert info.value.partial_text


async def test_connection_refused_is_backend_unavailable(http: httpx.AsyncClient) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = OllamaClient(http, f"http://127.0.0.1:{port}", retry=QUICK_RETRY)
    with pytest.raises(BackendUnavailable):
        await collect(client.chat("llama2", HELLO))
    with pytest.raises(BackendUnavailable):
        await client.version()


async def test_leaving_the_stream_early_closes_the_connection(
    http: httpx.AsyncClient,
) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=200) as slow:
        slow.script("llama2", ["word " * 500])
        client = OllamaClient(http, slow.url, retry=NO_RETRY)
        async with client.chat("llama2", HELLO) as stream:
            async for _ in stream:
                break
        record = await wait_until(lambda: _first(r for r in slow.requests if r["disconnected"]), within=5)
        assert record["finished_at"] is not None


async def test_cancelling_the_task_closes_the_connection(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=200) as slow:
        slow.script("llama2", ["word " * 500])
        client = OllamaClient(http, slow.url, retry=NO_RETRY)
        first = asyncio.Event()

        async def consume() -> None:
            async with client.chat("llama2", HELLO) as stream:
                async for _ in stream:
                    first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: _first(r for r in slow.requests if r["disconnected"]), within=5)


async def test_metadata_calls(client: OllamaClient) -> None:
    assert await client.version()
    assert set(await client.list_models()) == {"llama2:latest", "mistral:latest"}
    assert await client.loaded_models() == []


# -- replies the fake never sends: a raw server for malformed streams ---------------------------------


async def raw_server(lines: list[bytes]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for line in lines:
            await response.write(line)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/api/chat", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([b'{"message":{"content":"hi"},"done":false}\n', b"not json\n"], "malformed"),
        ([b'{"message":{"content":"hi"},"done":false}\n', b"[1, 2]\n"], "malformed"),
        ([b'{"message":{"content":"hi"},"done":false}\n'], "ended before the server said it was done"),
        ([b'{"message":{"content":5},"done":false}\n'], "malformed"),
    ],
)
async def test_malformed_streams_are_errors_not_truncation(
    http: httpx.AsyncClient, lines: list[bytes], message: str
) -> None:
    runner, url = await raw_server(lines)
    try:
        client = OllamaClient(http, url, retry=NO_RETRY)
        with pytest.raises(StreamFailed, match=message):
            await collect(client.chat("llama2", HELLO))
    finally:
        await runner.cleanup()


async def test_final_line_without_newline_is_parsed(http: httpx.AsyncClient) -> None:
    runner, url = await raw_server(
        [b'{"message":{"content":"hi"},"done":false}\n{"message":{"content":"!"},"done":true,"eval_count":2}']
    )
    try:
        chunks, stream = await collect(OllamaClient(http, url, retry=NO_RETRY).chat("llama2", HELLO))
        assert chunks == ["hi", "!"] and stream.stats.completion_tokens == 2
    finally:
        await runner.cleanup()


async def _true(value: object) -> bool:
    return bool(value)


async def _first(items: Iterable[T]) -> T | None:
    return next(iter(items), None)
