"""The OpenAI-compatible client and the pool against a server that behaves like llama-cpp-python's.

The behaviours below were measured against llama-cpp-python 0.3.36's server (``shared/reference/ollama.md``):
headers at once, a role-only first chunk, SSE comment pings while the prompt is read, ``[DONE]`` without a
finish reason when another request interrupts a generation, an empty 200 body for a streamed prompt over
the context window (a 400 with the counts for the same request without streaming).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web

from bot.config import BackendConfig
from bot.llm import NO_RETRY, ChatMessage, ContextOverflow, LLMTimeout, OpenAIClient, StreamFailed, Timeouts
from bot.llm.budget import TokenEstimator, fit_messages
from bot.llm.pool import BackendPool, Priority
from tests.harness import wait_until

HELLO = [ChatMessage("user", "hello")]
CHARS_PER_TOKEN = 4  # this server's "tokenizer"


@dataclass
class LlamaLike:
    """A small server with llama-cpp-python's wire behaviour; ``mode`` picks what the next streams do."""

    mode: str = "ok"
    tokens: list[str] = field(default_factory=lambda: [f" word{i}" for i in range(10)])
    token_delay: float = 0.0
    prompt_seconds: float = 0.0
    ping_interval: float = 0.05
    n_ctx: int | None = None
    interrupt_after: int = 3
    probes: list[float] = field(default_factory=list)
    completions: list[dict[str, Any]] = field(default_factory=list)
    streaming: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> LlamaLike:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        return sum(5 + len(m["content"]) // CHARS_PER_TOKEN for m in body["messages"]) + 3

    async def _models(self, request: web.Request) -> web.Response:
        self.probes.append(asyncio.get_running_loop().time())
        return web.json_response({"object": "list", "data": [{"id": "/models/tiny.gguf", "object": "model"}]})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = self.prompt_tokens(body)
        self.completions.append({"body": body, "prompt_tokens": prompt})
        if not body.get("stream"):
            if self.n_ctx is not None and prompt >= self.n_ctx:
                asked = prompt + (body.get("max_tokens") or 0)
                message = (
                    f"This model's maximum context length is {self.n_ctx} tokens. However, you requested "
                    f"{asked} tokens ({prompt} in the messages, {body.get('max_tokens')} in the completion). "
                    "Please reduce the length of the messages or completion."
                )
                error = {
                    "message": message,
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
                return web.json_response({"error": error}, status=400)
            return web.json_response({"choices": [{"message": {"content": "x"}, "finish_reason": "length"}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)  # headers at once, before the prompt is read
        if self.n_ctx is not None and prompt >= self.n_ctx:
            return response  # what llama-cpp-python does: the stream closes without a single event
        self.streaming += 1
        try:
            await self._send(response, {"role": "assistant"})
            waited = 0.0
            while waited < self.prompt_seconds:
                await asyncio.sleep(self.ping_interval)
                waited += self.ping_interval
                await response.write(b": ping - 2026-11-25 12:00:00.000000+00:00\r\n\r\n")
            limit = body.get("max_tokens") or len(self.tokens)
            for index, token in enumerate(self.tokens[:limit]):
                if self.mode == "interrupt" and index == self.interrupt_after:
                    await response.write(b"data: [DONE]\r\n\r\n")
                    return response
                if self.mode == "stall" and index == self.interrupt_after:
                    await asyncio.Event().wait()
                await self._send(response, {"content": token})
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
            finish = "length" if limit < len(self.tokens) else "stop"
            await self._send(response, {}, finish)
            await response.write(b"data: [DONE]\r\n\r\n")
            return response
        finally:
            self.streaming -= 1

    @staticmethod
    async def _send(response: web.StreamResponse, delta: dict[str, Any], finish: str | None = None) -> None:
        chunk = {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def collect(
    client: OpenAIClient, messages: list[ChatMessage] = HELLO, **kwargs: Any
) -> tuple[str, Any]:
    stream = client.chat("tiny", messages, **kwargs)
    async with stream:
        async for _ in stream:
            pass
    return stream.text, stream.stats


async def test_done_without_a_finish_reason_is_a_broken_stream_not_an_answer(http: httpx.AsyncClient) -> None:
    async with LlamaLike(mode="interrupt") as server:
        client = OpenAIClient(http, server.url, retry=NO_RETRY)
        with pytest.raises(StreamFailed, match="without finishing") as info:
            await collect(client)
    assert info.value.partial_text == " word0 word1 word2"
    assert info.value.retryable


async def test_finish_reasons_say_finished_or_cut_at_the_budget(http: httpx.AsyncClient) -> None:
    async with LlamaLike() as server:
        client = OpenAIClient(http, server.url, retry=NO_RETRY)
        text, stats = await collect(client)
        assert stats.done_reason == "stop" and not stats.truncated and text.endswith("word9")
        text, stats = await collect(client, options={"num_predict": 4})
        assert stats.truncated and text == " word0 word1 word2 word3"


async def test_pings_and_role_chunks_do_not_stop_the_first_token_clock(http: httpx.AsyncClient) -> None:
    # Headers at once, then pings while the prompt is read: the first-token timeout must still fire.
    async with LlamaLike(prompt_seconds=5.0) as server:
        client = OpenAIClient(http, server.url, retry=NO_RETRY)
        started = asyncio.get_running_loop().time()
        with pytest.raises(LLMTimeout) as info:
            await collect(client, timeouts=Timeouts(first_byte=0.5, idle=10, total=30))
    assert info.value.phase == "first_byte"
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_a_long_prompt_read_is_not_an_idle_stall(http: httpx.AsyncClient) -> None:
    # The idle timeout runs between content tokens only: reading the prompt for longer is fine.
    async with LlamaLike(prompt_seconds=0.6) as server:
        client = OpenAIClient(http, server.url, retry=NO_RETRY)
        text, stats = await collect(client, timeouts=Timeouts(first_byte=5, idle=0.3, total=30))
    assert stats.done_reason == "stop" and text.endswith("word9")


async def test_a_stall_after_the_first_token_hits_the_idle_timeout(http: httpx.AsyncClient) -> None:
    async with LlamaLike(mode="stall") as server:
        client = OpenAIClient(http, server.url, retry=NO_RETRY)
        with pytest.raises(LLMTimeout) as info:
            await collect(client, timeouts=Timeouts(first_byte=5, idle=0.3, total=30))
    assert info.value.phase == "idle" and info.value.partial_text == " word0 word1 word2"


async def test_an_empty_stream_over_the_context_window_is_diagnosed(http: httpx.AsyncClient) -> None:
    async with LlamaLike(n_ctx=100) as server:
        client = OpenAIClient(http, server.url, retry=NO_RETRY)
        with pytest.raises(ContextOverflow) as info:
            await collect(client, [ChatMessage("user", "x" * 2000)], options={"num_predict": 50})
    assert info.value.context_tokens == 100
    assert info.value.prompt_tokens == server.completions[0]["prompt_tokens"]


def test_fit_keeps_system_and_question_and_drops_oldest_history() -> None:
    estimator = TokenEstimator(chars_per_token=4)
    system, question = ChatMessage("system", "s" * 40), ChatMessage("user", "q" * 40)
    history = [ChatMessage("user" if i % 2 else "assistant", f"{i}" * 400) for i in range(10)]
    fitted = fit_messages(
        [system, *history, question], window=600, reply_tokens=200, min_reply_tokens=50, estimator=estimator
    )
    assert fitted.messages[0] == system and fitted.messages[-1] == question
    assert fitted.messages[1:-1] == history[-3:]  # 3 × 105 tokens fit beside 33 + 200
    assert fitted.dropped == 7 and fitted.max_tokens == 200
    assert fitted.prompt_tokens <= 400
    with pytest.raises(ContextOverflow):
        fit_messages(
            [system, ChatMessage("user", "q" * 4000)],
            window=600,
            reply_tokens=200,
            min_reply_tokens=50,
            estimator=estimator,
        )
    # Near the limit the reply budget shrinks instead of the question being refused.
    near = fit_messages(
        [system, ChatMessage("user", "q" * 2000)],
        window=600,
        reply_tokens=200,
        min_reply_tokens=50,
        estimator=estimator,
    )
    assert 50 <= near.max_tokens < 200 and near.prompt_tokens + near.max_tokens <= 600


def test_the_estimator_learns_the_servers_ratio_and_ignores_outliers() -> None:
    estimator = TokenEstimator()
    messages = [ChatMessage("user", "a" * 4000)]
    estimator.observe(messages, 1000 + 8)
    assert estimator.chars_per_token == pytest.approx(4.0)
    estimator.observe(messages, 30)  # a cached prefix: only part of the prompt was evaluated
    assert estimator.chars_per_token == pytest.approx(4.0)


def pool_for(http: httpx.AsyncClient, url: str, **backend: Any) -> BackendPool:
    config = BackendConfig(url=url, name="llama", kind="openai", **backend)
    return BackendPool([config], http, health_interval=0.05, max_probe_backoff=0.2)


async def chat(pool: BackendPool, messages: list[ChatMessage], **options: Any) -> Any:
    stream = pool.chat(
        "tiny",
        messages,
        options={"num_predict": 5, **options},
        priority=Priority.CHAT,
        timeouts=Timeouts(first_byte=5, idle=5, total=30),
    )
    async with stream:
        async for _ in stream:
            pass
    return stream


async def test_the_pool_learns_the_window_from_a_refusal_and_trims_history(http: httpx.AsyncClient) -> None:
    history = [ChatMessage("user" if i % 2 else "assistant", f"turn {i} " + "x" * 300) for i in range(8)]
    question = ChatMessage("user", "and now?")
    async with LlamaLike(n_ctx=300) as server, pool_for(http, server.url) as pool:
        stream = await chat(pool, [ChatMessage("system", "be brief"), *history, question])
        assert stream.text.endswith("word4") and stream.stats.truncated
        assert stream.dropped > 0
        last = server.completions[-1]
        assert last["body"]["stream"] and last["prompt_tokens"] < 300
        assert last["body"]["messages"][-1]["content"] == "and now?"
        assert last["body"]["messages"][0]["content"] == "be brief"
        assert pool.status()[0].healthy
        # Learned: the next call is fitted before it is sent, without a refusal first.
        sent = len(server.completions)
        await chat(pool, [ChatMessage("system", "be brief"), *history, question])
        assert len(server.completions) == sent + 1


async def test_a_question_alone_over_the_window_is_refused_clearly(http: httpx.AsyncClient) -> None:
    async with LlamaLike() as server, pool_for(http, server.url, context_tokens=200) as pool:
        with pytest.raises(ContextOverflow, match="too long"):
            await chat(pool, [ChatMessage("system", "s"), ChatMessage("user", "q" * 3000)])
        assert not server.completions, "nothing was sent"


async def test_health_probes_never_hit_a_streaming_backend(http: httpx.AsyncClient) -> None:
    server = LlamaLike(token_delay=0.05, tokens=[f" t{i}" for i in range(30)])
    async with server, pool_for(http, server.url) as pool:
        await asyncio.sleep(0.2)
        assert len(server.probes) >= 2, "an idle backend is probed"
        stream = pool.chat("tiny", HELLO, options={}, priority=Priority.CHAT, timeouts=Timeouts(5, 5, 30))
        probes_at_first_token: int | None = None
        async with stream:
            async for _ in stream:
                if probes_at_first_token is None:
                    probes_at_first_token = len(server.probes)
        assert stream.stats.done_reason == "stop"
        assert len(server.probes) == probes_at_first_token, "no probe while the reply streamed (1.5 s)"
        after = len(server.probes)
        await wait_until(lambda: _more(server.probes, after), within=5)


async def _more(probes: list[float], count: int) -> bool:
    return len(probes) > count


def test_context_refusal_texts_are_parsed() -> None:
    from bot.llm._openai import _context_error

    error = _context_error("Requested tokens (831) exceed context window of 512", "b")
    assert error is not None and (error.prompt_tokens, error.context_tokens) == (831, 512)
    assert _context_error("something else entirely", "b") is None
    assert re.search("context window", str(_context_error("the context length is exceeded", "b")))
