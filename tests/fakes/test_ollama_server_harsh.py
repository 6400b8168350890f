"""The fake's harsh options: what real model servers do that a kind fake does not.

Measured against llama-cpp-python 0.3.36's server and read from its source and Ollama's (see the package
docstring of ``tests.fakes.ollama_server``)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests.fakes.ollama_server import (
    CHATTY_VARIANTS,
    FakeOllamaServer,
    chatty_article,
    count_prompt_tokens,
    tokenize,
    tokenize_subword,
)
from tests.harness import wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
USER = [{"role": "user", "content": "hello"}]
LONG = "word " * 400


def words(count: int) -> str:
    """``count`` tokens of text (under either tokenizer)."""
    return " ".join(["word"] * count)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


class SSE:
    """A ``/v1`` stream read event by event, with the time each arrived."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.events: list[tuple[float, str]] = []  # (time, "data: ..." or ": ping - ...")
        self._lines = response.aiter_lines()

    async def next(self) -> str | None:
        """The next event's line (``data: ...`` or a ``: ...`` comment); None at the end of the stream."""
        async for line in self._lines:
            if line:
                self.events.append((asyncio.get_running_loop().time(), line))
                return line
        return None

    async def until(self, predicate: Any) -> str:
        while (line := await self.next()) is not None:
            if predicate(line):
                return line
        raise AssertionError(f"the stream ended first; events: {[e for _, e in self.events]}")

    async def rest(self) -> None:
        while await self.next() is not None:
            pass

    @property
    def data(self) -> list[str]:
        return [line[6:] for _, line in self.events if line.startswith("data: ")]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(d) for d in self.data if d != "[DONE]"]

    @property
    def text(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks)

    @property
    def pings(self) -> list[str]:
        return [line for _, line in self.events if line.startswith(":")]


def chat_body(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "llama2", "messages": [{"role": "user", "content": content}], **extra}


def is_content(line: str) -> bool:
    return line.startswith("data: {") and bool(json.loads(line[6:])["choices"][0]["delta"].get("content"))


# -- 1. sub-word tokens -----------------------------------------------------------------------------------


def test_subword_tokens_split_words_digits_urls_and_punctuation() -> None:
    text = "See https://example.com/a_b-c?x=1&y=2 in 2024: extraordinary!"
    tokens = tokenize_subword(text)
    assert "".join(tokens) == text
    assert tokens[:2] == ["See", " https"]
    for separator in "/.:-_?=&":
        assert separator in tokens, separator
    assert [t for t in tokens if t.strip().isdigit()] == ["1", "2", " 2", "0", "2", "4"]
    pieces = tokens[tokens.index(" 2") + 4 + 1 :]  # after "2024" and ":"
    assert "".join(pieces[:-1]) == " extraordinary" and len(pieces[:-1]) >= 3
    assert all(2 <= len(p.strip()) <= 5 for p in pieces[:-1])
    assert pieces[-1] == "!"
    assert pieces[0].startswith(" ") and pieces[1][0].isalpha(), "the next chunk starts mid-word"
    assert tokenize_subword(text) == tokens == tokenize(text, subword=True)  # deterministic
    assert tokenize("a supercalifragilistic") == ["a", " supercal", "ifragili", "stic"]  # the old rule


def test_subword_tokens_round_trip_any_text() -> None:
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzÄé漢字 0123456789\n\t.,:;/_-?=&!'\"#*()[]{}`~|\\  "
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        assert "".join(tokenize_subword(text)) == text
        assert all(tokenize_subword(text))
    assert tokenize_subword("") == []
    assert len(tokenize_subword("Why hello there.")) == 4 > len(tokenize("Why hello there."))


async def test_subword_counts_are_what_is_streamed_and_reported(http: httpx.AsyncClient) -> None:
    text = "Version 3.12 is at https://docs.python.org/3/whatsnew/ today."
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what's new?"}]
    async with FakeOllamaServer(models=["llama2"], subword_tokens=True) as fake:
        fake.script("llama2", [text, text, text])
        client = ollama.AsyncClient(host=fake.url)
        try:
            parts = [p async for p in await client.chat(model="llama2", messages=messages, stream=True)]
        finally:
            await client.close()
        assert [p.message.content for p in parts[:-1]] == tokenize_subword(text)
        assert parts[-1].eval_count == len(tokenize_subword(text))
        assert parts[-1].prompt_eval_count == count_prompt_tokens(messages, subword=True)
        assert count_prompt_tokens(messages, subword=True) == 3 + 4 + 5 + 4  # "what", "'", "s", " new", "?"
        whole = await http.post(
            f"{fake.url}/v1/chat/completions", json={"model": "llama2", "messages": messages}
        )
        usage = whole.json()["usage"]
        assert usage["completion_tokens"] == len(tokenize_subword(text))
        assert usage["prompt_tokens"] == count_prompt_tokens(messages, subword=True)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        fake.configure(subword_tokens=False)
        await http.post(
            f"{fake.url}/api/chat", json={"model": "llama2", "messages": messages, "stream": False}
        )
        assert fake.requests[-1]["tokens"] == len(tokenize(text)) < len(tokenize_subword(text))


# -- 2. prompt reading time -------------------------------------------------------------------------------


async def test_prompt_reading_comes_after_the_load_and_is_reported() -> None:
    messages = [{"role": "user", "content": words(96)}]  # 96 + 4 = 100 prompt tokens
    async with FakeOllamaServer(models=["llama2"], load_seconds=0.1, prompt_tokens_per_second=400) as fake:
        fake.script("llama2", ["ok"])
        client = ollama.AsyncClient(host=fake.url)
        try:
            reply = await client.chat(model="llama2", messages=messages)
        finally:
            await client.close()
        assert reply.prompt_eval_count == 100
        assert 0.24 <= (reply.prompt_eval_duration or 0) / 1e9 < 1.0
        assert 0.09 <= (reply.load_duration or 0) / 1e9 < 1.0
        assert (reply.total_duration or 0) / 1e9 >= 0.33
        record = fake.requests[-1]
        assert record["first_token_at"] - record["received_at"] >= 0.33
        assert record["prompt_tokens"] == 100 and record["prompt_truncated"] is False


# -- 3. the /v1 stream: headers at once, a role-only first chunk, pings -----------------------------------


async def test_openai_stream_headers_at_once_then_pings_then_role_then_text(http: httpx.AsyncClient) -> None:
    content = words(96)  # 100 prompt tokens: 0.4 s of reading at 250 tokens/s
    async with FakeOllamaServer(
        models=["llama2"], load_seconds=0.1, prompt_tokens_per_second=250, openai_ping_interval=0.05
    ) as fake:
        fake.script("llama2", ["Hello there friend."])
        started = asyncio.get_running_loop().time()
        async with http.stream(
            "POST", f"{fake.url}/v1/chat/completions", json=chat_body(content, stream=True)
        ) as r:
            headers_after = asyncio.get_running_loop().time() - started
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            sse = SSE(r)
            first_data = await sse.until(lambda line: line.startswith("data: "))
            await sse.rest()
        assert headers_after < 0.3, "headers must not wait for the load and the prompt"
        first_chunk = json.loads(first_data[6:])
        assert first_chunk["choices"][0]["delta"] == {"role": "assistant"}
        assert first_chunk["choices"][0]["finish_reason"] is None
        data_times = [t for t, line in sse.events if line.startswith("data: ")]
        assert data_times[0] - started >= 0.48, "text comes after the load and the prompt"
        assert len([1 for t, line in sse.events if line.startswith(":") and t < data_times[0]]) >= 5
        assert all(re.fullmatch(r": ping - \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+00:00", p) for p in sse.pings)
        chunks = sse.chunks
        assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == tokenize(
            "Hello there friend."
        )
        assert chunks[-1]["choices"][0] == {
            "index": 0,
            "delta": {},
            "logprobs": None,
            "finish_reason": "stop",
        }
        assert sse.data[-1] == "[DONE]"
        record = fake.requests[-1]
        assert record["headers_at"] < record["first_token_at"]
        assert record["finish_reason"] == "stop" and record["completion_text"] == "Hello there friend."
        assert record["pings"] == len(sse.pings) and record["interrupted"] is False


async def test_openai_stream_errors_found_first_are_plain_http_errors(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"]) as fake:
        url = f"{fake.url}/v1/chat/completions"
        missing = await http.post(url, json={"model": "nope", "messages": USER, "stream": True})
        assert missing.status_code == 404 and missing.json()["error"]["message"] == "model 'nope' not found"
        bad = await http.post(url, content=b"{oops", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "error" in bad.json()


async def test_length_finish_on_openai_stream_at_max_tokens(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"]) as fake:
        fake.script("llama2", ["one two three four"])
        async with http.stream(
            "POST", f"{fake.url}/v1/chat/completions", json=chat_body(stream=True, max_tokens=2)
        ) as r:
            sse = SSE(r)
            await sse.rest()
        assert sse.text == "one two" and sse.chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert fake.requests[-1]["finish_reason"] == "length"


# -- 4. interruption and serialisation --------------------------------------------------------------------


async def test_a_models_probe_interrupts_a_running_stream(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=100) as fake:
        fake.script("llama2", [LONG])
        async with http.stream("POST", f"{fake.url}/v1/chat/completions", json=chat_body(stream=True)) as r:
            sse = SSE(r)
            await sse.until(is_content)
            models = await http.get(f"{fake.url}/v1/models")
            await sse.rest()
        assert models.status_code == 200
        assert sse.data[-1] == "[DONE]"
        assert all(c["choices"][0]["finish_reason"] is None for c in sse.chunks), "no finish reason"
        assert 1 <= len(tokenize(sse.text)) < 400
        record = fake.requests[-1]
        assert record["interrupted"] is True and record["finish_reason"] is None
        assert record["completion_text"] == sse.text
        probe = fake.probes[-1]
        assert probe["path"] == "/v1/models" and probe["busy"] is True
        assert probe["answered_at"] >= record["finished_at"], "the probe waited for the lock"
        assert [r["path"] for r in fake.requests] == ["/v1/chat/completions"]


@pytest.mark.parametrize("path", ["/api/version", "/api/tags", "/nowhere"])
async def test_any_request_interrupts_but_control_requests_do_not(http: httpx.AsyncClient, path: str) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=100) as fake:
        fake.script("llama2", [LONG])
        async with http.stream("POST", f"{fake.url}/v1/chat/completions", json=chat_body(stream=True)) as r:
            sse = SSE(r)
            await sse.until(is_content)
            assert (await http.get(f"{fake.url}/_fake/requests")).status_code == 200
            assert (await http.post(f"{fake.url}/_fake/config", json={})).status_code == 200
            await sse.until(is_content)  # still streaming
            await http.get(f"{fake.url}{path}")
            await sse.rest()
        assert sse.data[-1] == "[DONE]" and fake.requests[-1]["interrupted"] is True


async def test_a_second_completion_interrupts_the_first(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=100) as fake:
        fake.script("llama2", [LONG, "second reply"])
        url = f"{fake.url}/v1/chat/completions"
        async with http.stream("POST", url, json=chat_body("one", stream=True)) as first:
            sse = SSE(first)
            await sse.until(is_content)
            second = await http.post(url, json=chat_body("two"))
            await sse.rest()
        assert second.json()["choices"][0]["message"]["content"] == "second reply"
        assert [r["interrupted"] for r in fake.requests] == [True, False]
        assert [r["finish_reason"] for r in fake.requests] == [None, "stop"]


async def test_without_interrupting_a_probe_waits_behind_the_completion(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=200, interrupt_requests=False) as fake:
        fake.script("llama2", ["w " * 60])
        async with http.stream("POST", f"{fake.url}/v1/chat/completions", json=chat_body(stream=True)) as r:
            sse = SSE(r)
            await sse.until(is_content)
            probe = asyncio.create_task(http.get(f"{fake.url}/v1/models"))
            await sse.rest()
            assert (await probe).status_code == 200
        record = fake.requests[-1]
        assert record["finish_reason"] == "stop" and record["interrupted"] is False
        assert fake.probes[-1]["busy"] is True
        assert fake.probes[-1]["answered_at"] >= record["finished_at"]


async def test_without_serializing_a_probe_answers_at_once(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(
        models=["llama2"], tokens_per_second=100, interrupt_requests=False, serialize_requests=False
    ) as fake:
        fake.script("llama2", [LONG])
        async with http.stream("POST", f"{fake.url}/v1/chat/completions", json=chat_body(stream=True)) as r:
            sse = SSE(r)
            await sse.until(is_content)
            assert (await http.get(f"{fake.url}/v1/models")).status_code == 200
            assert fake.requests[-1]["finished_at"] is None, "the completion is still running"
            await sse.until(is_content)
        assert fake.probes[-1]["busy"] is True


async def test_a_probe_waits_behind_a_non_streamed_completion(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=100) as fake:
        fake.script("llama2", ["w " * 30])
        completion = asyncio.create_task(http.post(f"{fake.url}/v1/chat/completions", json=chat_body()))
        await wait_until(lambda: _true(fake.requests))
        models = await http.get(f"{fake.url}/v1/models")
        assert models.status_code == 200 and (await completion).status_code == 200
        assert fake.requests[-1]["finish_reason"] == "stop", "a non-streamed completion is not interrupted"
        assert fake.probes[-1]["answered_at"] >= fake.requests[-1]["finished_at"]


async def test_probes_are_logged_apart(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"]) as fake:
        for path in ("/api/version", "/api/tags", "/api/ps", "/v1/models"):
            assert (await http.get(f"{fake.url}{path}")).status_code == 200
        await http.get(f"{fake.url}/")
        probes = (await http.get(f"{fake.url}/_fake/probes")).json()
        assert [p["path"] for p in probes] == ["/api/version", "/api/tags", "/api/ps", "/v1/models"]
        assert all(p["busy"] is False and p["status"] == 200 and p["received_at"] for p in probes)
        assert fake.requests == []
        await http.post(f"{fake.url}/_fake/reset")
        assert fake.probes == []


# -- 5. context windows -----------------------------------------------------------------------------------


async def test_openai_prompt_over_the_window_is_a_400(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], num_ctx=64) as fake:
        url = f"{fake.url}/v1/chat/completions"
        body = chat_body(words(60), max_tokens=10)  # 64 prompt tokens
        refused = await http.post(url, json=body)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
        assert error["message"] == (
            "This model's maximum context length is 64 tokens. However, you requested 74 tokens "
            "(64 in the messages, 10 in the completion). "
            "Please reduce the length of the messages or completion."
        )
        async with http.stream("POST", url, json={**body, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert await r.aread() == b"", "llama-cpp-python's stream just closes"
        fake.configure(openai_overflow_empty_stream=False)
        assert (await http.post(url, json={**body, "stream": True})).status_code == 400
        assert fake.requests[-1]["prompt_tokens"] == 64


async def test_openai_reply_stops_at_the_window(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], num_ctx=64) as fake:
        fake.script("llama2", [LONG])
        async with http.stream(
            "POST", f"{fake.url}/v1/chat/completions", json=chat_body(words(50), stream=True)
        ) as r:
            sse = SSE(r)
            await sse.rest()
        assert len(tokenize(sse.text)) == 64 - 54
        assert sse.chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_ollama_silently_cuts_the_start_of_a_long_prompt() -> None:
    system = {"role": "system", "content": " ".join(["You are a pirate."] * 10)}  # 40 + 4 tokens
    user = {"role": "user", "content": words(200)}  # 204 tokens
    async with FakeOllamaServer(models=["llama2"]) as fake:
        fake.script("llama2", [LONG])
        client = ollama.AsyncClient(host=fake.url)
        try:
            parts = [
                p
                async for p in await client.chat(
                    model="llama2", messages=[system, user], stream=True, options={"num_ctx": 128}
                )
            ]
        finally:
            await client.close()
        final = parts[-1]
        limit = 128 - (128 - 4) // 2  # ollama llm/llama_server.go contextShiftPromptLimit
        assert final.prompt_eval_count == limit == 66
        assert final.done_reason == "length" and final.eval_count == 128 - limit
        record = fake.requests[-1]
        assert record["prompt_truncated"] is True and record["prompt_dropped_messages"] == 0
        assert record["prompt_cut_tokens"] == 248 - 66 > 44, "the whole system prompt went with the start"


async def test_ollama_drops_old_messages_but_keeps_the_system_prompt(http: httpx.AsyncClient) -> None:
    system = {"role": "system", "content": "Be terse."}  # 6 tokens
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": words(20)} for i in range(10)]
    async with FakeOllamaServer(models=["llama2"], num_ctx=100) as fake:
        fake.script("llama2", ["fine"])
        response = await http.post(
            f"{fake.url}/api/chat",
            json={"model": "llama2", "messages": [system, *history], "stream": False},
        )
        body = response.json()
        assert body["prompt_eval_count"] == 6 + 3 * 24 and body["done_reason"] == "stop"
        record = fake.requests[-1]
        assert record["prompt_dropped_messages"] == 7 and record["prompt_cut_tokens"] == 0


async def test_ollama_default_window_is_2048_and_the_request_can_widen_it(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"]) as fake:
        body = {"model": "llama2", "prompt": words(3000), "stream": False, "options": {"num_predict": 5}}
        cut = (await http.post(f"{fake.url}/api/generate", json=body)).json()
        assert cut["prompt_eval_count"] == 2048 - (2048 - 4) // 2
        body["options"]["num_ctx"] = 8192
        whole = (await http.post(f"{fake.url}/api/generate", json=body)).json()
        assert whole["prompt_eval_count"] == 3004 and fake.requests[-1]["prompt_truncated"] is False


async def test_props_only_when_asked(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], num_ctx=512) as fake:
        assert (await http.get(f"{fake.url}/props")).status_code == 404
        fake.configure(props_endpoint=True)
        props = (await http.get(f"{fake.url}/props")).json()
        assert props["default_generation_settings"]["n_ctx"] == 512


# -- 6. chatty articles -----------------------------------------------------------------------------------


def test_chatty_article_shapes() -> None:
    prompt = "Write a blog post about: owls\n\nStyle: casual"
    texts = [chatty_article(prompt, 300, variant=v) for v in range(CHATTY_VARIANTS)]
    assert len(set(texts)) == CHATTY_VARIANTS
    preambles = {t.splitlines()[0] for t in texts}
    assert "Sure! Here is a blog post about owls:" in preambles and len(preambles) == 4
    assert all("owls" in p and not p.startswith("#") for p in preambles)
    title_lines = {t.split("\n\n")[1].removeprefix("```markdown\n").splitlines()[0] for t in texts}
    assert {"# Owls", "Title: Owls", "**Owls**", "An introduction to owls."} == title_lines
    fenced = [t for t in texts if "```markdown\n" in t]
    assert len(fenced) == CHATTY_VARIANTS // 2 and all(t.count("```") == 2 for t in fenced)
    endings = {t.rstrip().splitlines()[-1] for t in texts}
    assert endings == {
        "I hope this helps!",
        "Let me know if you'd like any changes.",
        "```",
        "That is the whole story.",
    }
    for budget in (120, 600, 2000):
        length = len(tokenize(chatty_article(prompt, budget, variant=5)))
        assert 0.5 * budget <= length <= budget


async def test_chatty_articles_on_every_route(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], chatty_articles=True) as fake:
        generate = {
            "model": "llama2",
            "prompt": "Write about: owls",
            "stream": False,
            "options": {"num_predict": 300},
        }
        first = (await http.post(f"{fake.url}/api/generate", json=generate)).json()["response"]
        again = (await http.post(f"{fake.url}/api/generate", json=generate)).json()["response"]
        assert first == again == chatty_article("Write about: owls", 300) and not first.startswith("# ")
        shapes = set()
        for topic in ("owls", "tea", "rust", "bees", "maps", "jazz", "ice", "kites"):
            body = {**generate, "prompt": f"Write about: {topic}"}
            shapes.add(
                (await http.post(f"{fake.url}/api/generate", json=body)).json()["response"].split("\n")[0][:5]
            )
        assert len(shapes) > 1, "the shape varies with the prompt"
        asked = [
            {"role": "system", "content": "x"},
            {"role": "user", "content": "Write a blog post about: tea"},
        ]
        chat = await http.post(
            f"{fake.url}/api/chat", json={"model": "llama2", "messages": asked, "stream": False}
        )
        assert chat.json()["message"]["content"] == chatty_article("Write a blog post about: tea", None)
        openai = await http.post(
            f"{fake.url}/v1/chat/completions", json={"model": "llama2", "messages": asked, "max_tokens": 200}
        )
        reply = openai.json()["choices"][0]["message"]["content"]
        assert reply == chatty_article("Write a blog post about: tea", 200)
        plain = await http.post(
            f"{fake.url}/api/chat", json={"model": "llama2", "messages": USER, "stream": False}
        )
        assert "blog post" not in plain.json()["message"]["content"]
        fake.script("llama2", ["# Scripted wins"])
        assert (await http.post(f"{fake.url}/api/generate", json=generate)).json()[
            "response"
        ] == "# Scripted wins"
        fake.configure(chatty_articles=False)
        assert (
            (await http.post(f"{fake.url}/api/generate", json=generate))
            .json()["response"]
            .startswith("# Owls")
        )


# -- 7. new faults ----------------------------------------------------------------------------------------


async def test_done_without_finish_on_both_routes(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"]) as fake:
        fake.script("llama2", [LONG, LONG])
        fake.add_fault({"kind": "done_without_finish", "after_tokens": 4, "count": 2})
        async with http.stream("POST", f"{fake.url}/v1/chat/completions", json=chat_body(stream=True)) as r:
            sse = SSE(r)
            await sse.rest()
        assert sse.data[-1] == "[DONE]" and len(tokenize(sse.text)) == 4
        assert all(c["choices"][0]["finish_reason"] is None for c in sse.chunks)
        response = await http.post(f"{fake.url}/api/chat", json={"model": "llama2", "messages": USER})
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert len(lines) == 4 and not any(line["done"] for line in lines)
        assert [r["finish_reason"] for r in fake.requests] == [None, None]
        assert [len(tokenize(r["completion_text"])) for r in fake.requests] == [4, 4]


async def test_keepalive_only_pings_but_never_sends_a_token(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"], openai_ping_interval=0.02) as fake:
        fake.add_fault({"kind": "keepalive_only", "path": "/v1/chat/completions"})
        async with http.stream("POST", f"{fake.url}/v1/chat/completions", json=chat_body(stream=True)) as r:
            assert r.status_code == 200
            sse = SSE(r)
            for _ in range(3):
                assert (await sse.next() or "").startswith(": ping - ")
        await wait_until(lambda: _true(fake.requests[-1]["disconnected"]))
        assert fake.requests[-1]["tokens"] == 0 and fake.requests[-1]["first_token_at"] is None
        fake.add_fault({"kind": "keepalive_only", "path": "/api/chat"})
        async with http.stream(
            "POST", f"{fake.url}/api/chat", json={"model": "llama2", "messages": USER}
        ) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        await wait_until(lambda: _true(fake.requests[-1]["disconnected"]))
        assert fake.requests[-1]["tokens"] == 0


async def test_length_after_ends_early_with_length(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"]) as fake:
        fake.script("llama2", [LONG, LONG])
        fake.add_fault({"kind": "length_after", "after_tokens": 3, "count": 2})
        client = ollama.AsyncClient(host=fake.url)
        try:
            parts = [p async for p in await client.chat(model="llama2", messages=USER, stream=True)]
        finally:
            await client.close()
        assert parts[-1].done_reason == "length" and parts[-1].eval_count == 3 and len(parts) == 4
        async with http.stream("POST", f"{fake.url}/v1/chat/completions", json=chat_body(stream=True)) as r:
            sse = SSE(r)
            await sse.rest()
        assert sse.chunks[-1]["choices"][0]["finish_reason"] == "length" and sse.text == "word word word"
        assert [r["finish_reason"] for r in fake.requests] == ["length", "length"]


async def test_broken_streams_record_no_finish_reason(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"]) as fake:
        fake.script("llama2", [LONG])
        fake.add_fault({"kind": "error_line", "after_tokens": 2})
        response = await http.post(f"{fake.url}/api/chat", json={"model": "llama2", "messages": USER})
        assert json.loads(response.text.splitlines()[-1]) == {"error": fake_runner_stopped()}
        record = fake.requests[-1]
        assert record["finish_reason"] is None and record["completion_text"] == "word word"


def fake_runner_stopped() -> str:
    from tests.fakes.ollama_server.app import RUNNER_STOPPED

    return RUNNER_STOPPED


# -- configuration ----------------------------------------------------------------------------------------


async def test_config_over_http_is_validated(http: httpx.AsyncClient) -> None:
    async with FakeOllamaServer(models=["llama2"]) as fake:
        url = f"{fake.url}/_fake/config"
        config = (await http.get(url)).json()
        assert config["interrupt_requests"] is True and config["num_ctx"] is None
        assert config["openai_ping_interval"] == 15.0 and config["subword_tokens"] is False
        changed = await http.post(url, json={"num_ctx": 256, "subword_tokens": True})
        assert changed.json()["num_ctx"] == 256 and fake.subword_tokens is True
        for bad in (
            {"nonsense": 1},
            {"num_ctx": "big"},
            {"interrupt_requests": 1},
            {"openai_ping_interval": 0},
        ):
            refused = await http.post(url, json=bad)
            assert refused.status_code == 400 and refused.json()["error"]
        assert fake.num_ctx == 256
        with pytest.raises(ValueError, match="prompt_tokens_per_second"):
            FakeOllamaServer(prompt_tokens_per_second=-1)


async def test_cli_flags() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.ollama_server",
        "--port",
        "0",
        "--models",
        "llama2",
        "--subword-tokens",
        "--no-interrupt-requests",
        "--num-ctx",
        "128",
        "--props-endpoint",
        "--chatty-articles",
        "--prompt-tokens-per-second",
        "500",
        "--openai-ping-interval",
        "2.5",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        async with httpx.AsyncClient() as http:
            config = (await http.get(line.split()[-1] + "/_fake/config")).json()
        assert config == {
            **config,
            "subword_tokens": True,
            "interrupt_requests": False,
            "serialize_requests": True,
            "num_ctx": 128,
            "props_endpoint": True,
            "chatty_articles": True,
            "prompt_tokens_per_second": 500.0,
            "openai_ping_interval": 2.5,
        }
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def _true(value: Any) -> bool:
    return bool(value)
