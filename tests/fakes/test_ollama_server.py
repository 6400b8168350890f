"""The fake Ollama server behaves like the real one: the official client, the wire format, scheduling."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.fakes.ollama_server import FakeOllamaServer, tokenize

ROOT = Path(__file__).resolve().parent.parent.parent
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def server() -> AsyncIterator[FakeOllamaServer]:
    async with FakeOllamaServer(models=["llama2", "mistral:latest"]) as fake:
        yield fake


@pytest.fixture
async def client(server: FakeOllamaServer) -> AsyncIterator[ollama.AsyncClient]:
    """The official client (it owns an httpx client that must be closed)."""
    official = ollama.AsyncClient(host=server.url)
    yield official
    await official.close()


# -- the official client ------------------------------------------------------------------------------


async def test_official_client_streamed_chat(server: FakeOllamaServer, client: ollama.AsyncClient) -> None:
    server.script("llama2", ["Why hello there."])
    parts = [
        part
        async for part in await client.chat(
            model="llama2", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    ]
    assert "".join(p.message.content or "" for p in parts) == "Why hello there."
    assert parts[-1].done and parts[-1].done_reason == "stop" and parts[-1].eval_count == 3
    assert all(not p.done and p.eval_count is None for p in parts[:-1])


async def test_official_client_streamed_generate_and_plain_chat(
    server: FakeOllamaServer, client: ollama.AsyncClient
) -> None:
    server.configure(chatty_articles=False)
    parts = [
        p
        async for p in await client.generate(
            model="mistral:latest", prompt="Write about: owls", stream=True, options={"num_predict": 120}
        )
    ]
    text = "".join(p.response for p in parts)
    assert text.startswith("# Owls") and parts[-1].done and parts[-1].context
    server.script("llama2", ["one shot"])
    whole = await client.chat(model="llama2", messages=[{"role": "user", "content": "hi"}])
    assert whole.message.content == "one shot" and whole.done


async def test_official_client_list_and_errors(server: FakeOllamaServer, client: ollama.AsyncClient) -> None:
    listed = await client.list()
    assert {m.model for m in listed.models} == {"llama2:latest", "mistral:latest"}
    with pytest.raises(ollama.ResponseError) as info:
        await client.chat(model="llama9", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404 and "llama9" in info.value.error
    server.add_fault({"kind": "error_line", "after_tokens": 1})
    with pytest.raises(ollama.ResponseError):
        async for _ in await client.chat(
            model="llama2", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass


# -- wire format --------------------------------------------------------------------------------------


async def test_stream_defaults_to_true_and_stats_only_at_the_end(server: FakeOllamaServer) -> None:
    server.script("llama2", ["a b c"])
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/api/chat", json={"model": "llama2", "messages": [{"role": "user", "content": "x"}]}
        )
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["message"]["content"] for line in lines] == ["a", " b", " c", ""]
    assert lines[-1]["done"] is True and "eval_count" in lines[-1]
    assert all(line["done"] is False and "eval_count" not in line for line in lines[:-1])
    assert lines[0]["model"] == "llama2"


async def test_headers_wait_for_the_first_token_which_waits_for_the_load() -> None:
    async with FakeOllamaServer(models=["llama2"], load_seconds=0.3) as fake, httpx.AsyncClient() as http:
        started = asyncio.get_running_loop().time()
        async with http.stream(
            "POST", f"{fake.url}/api/generate", json={"model": "llama2", "prompt": "x"}
        ) as r:
            headers_after = asyncio.get_running_loop().time() - started
            await r.aread()
        assert headers_after >= 0.3
        assert fake.load_count == {"llama2:latest": 1}
        record = fake.requests[-1]
        assert record["first_token_at"] - record["received_at"] >= 0.3


async def test_num_predict_cuts_with_done_reason_length(server: FakeOllamaServer) -> None:
    server.script("llama2", ["one two three four"])
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/api/chat",
            json={"model": "llama2", "messages": USER, "stream": False, "options": {"num_predict": 2}},
        )
    body = response.json()
    assert body["message"]["content"] == "one two" and body["done_reason"] == "length"
    assert response.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"", 400, "missing request body"),
        (b"{not json", 400, None),
        (b'{"messages": []}', 400, "model is required"),
        (
            b'{"model": "llama9", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "model 'llama9' not found",
        ),
    ],
)
async def test_error_table(server: FakeOllamaServer, body: bytes, status: int, error: str | None) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{server.url}/api/chat", content=body)
    assert response.status_code == status
    if error is not None:
        assert response.json() == {"error": error}


async def test_unknown_route_and_wrong_method(server: FakeOllamaServer) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{server.url}/api/nope")).status_code == 404
        assert (await http.get(f"{server.url}/api/chat")).status_code == 405
        assert (await http.get(f"{server.url}/")).text == "Ollama is running"
        assert (await http.get(f"{server.url}/api/version")).json()["version"]


async def test_an_empty_chat_only_loads_the_model(server: FakeOllamaServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{server.url}/api/chat", json={"model": "llama2", "messages": []})
    assert response.json()["done_reason"] == "load"


async def test_load_queue_limit_gives_503() -> None:
    async with (
        FakeOllamaServer(models=["llama2"], load_seconds=0.5, max_queue=1) as fake,
        httpx.AsyncClient() as http,
    ):
        body = {"model": "llama2", "prompt": "x", "stream": False}
        first = asyncio.create_task(http.post(f"{fake.url}/api/generate", json=body))
        await asyncio.sleep(0.1)
        second = await http.post(f"{fake.url}/api/generate", json=body)
        assert second.status_code == 503 and "maximum pending requests exceeded" in second.json()["error"]
        assert (await first).status_code == 200


# -- scheduling ---------------------------------------------------------------------------------------


async def test_parallel_slots_are_fifo_and_never_exceeded() -> None:
    async with (
        FakeOllamaServer(models=["llama2"], tokens_per_second=200, num_parallel=2) as fake,
        httpx.AsyncClient(timeout=30) as http,
    ):
        fake.script("llama2", ["x " * 20] * 6)
        await asyncio.gather(
            *(
                http.post(
                    f"{fake.url}/api/chat",
                    json={
                        "model": "llama2",
                        "messages": [{"role": "user", "content": str(i)}],
                        "stream": False,
                    },
                )
                for i in range(6)
            )
        )
        spans = sorted((r["first_token_at"], r["finished_at"]) for r in fake.requests)
        for start, _ in spans:
            assert sum(1 for s, f in spans if s <= start < f) <= 2
        stats = (await http.get(f"{fake.url}/_fake/stats")).json()
        assert stats["max_in_flight"] == {"llama2:latest": 2}


async def test_max_loaded_one_evicts_on_every_switch() -> None:
    async with (
        FakeOllamaServer(models=["llama2", "mistral"], max_loaded=1, load_seconds=0.05) as fake,
        httpx.AsyncClient() as http,
    ):
        for model in ("llama2", "mistral", "llama2"):
            await http.post(f"{fake.url}/api/generate", json={"model": model, "prompt": "x", "stream": False})
        assert fake.load_count == {"llama2:latest": 2, "mistral:latest": 1}
        ps = (await http.get(f"{fake.url}/api/ps")).json()["models"]
        assert [m["name"] for m in ps] == ["llama2:latest"]


async def test_client_disconnect_cancels_and_frees_the_slot() -> None:
    async with FakeOllamaServer(models=["llama2"], tokens_per_second=50) as fake, httpx.AsyncClient() as http:
        fake.script("llama2", ["word " * 500, "short"])
        async with http.stream(
            "POST", f"{fake.url}/api/chat", json={"model": "llama2", "messages": USER}
        ) as response:
            async for _ in response.aiter_lines():
                break
        done = await http.post(
            f"{fake.url}/api/chat", json={"model": "llama2", "messages": USER, "stream": False}
        )
        assert done.json()["message"]["content"] == "short"
        assert fake.requests[0]["disconnected"] is True


async def test_tokens_per_second_is_honoured() -> None:
    async with (
        FakeOllamaServer(models=["llama2"], tokens_per_second=100) as fake,
        httpx.AsyncClient() as http,
    ):
        fake.script("llama2", ["w " * 50])
        await http.post(f"{fake.url}/api/chat", json={"model": "llama2", "messages": USER, "stream": False})
        record = fake.requests[-1]
        assert 0.45 <= record["finished_at"] - record["received_at"] < 1.5


async def test_openai_compatible_streaming_and_errors(server: FakeOllamaServer) -> None:
    server.script("llama2", ["hi there"])
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "llama2", "messages": [{"role": "user", "content": "x"}], "stream": True},
        )
        events = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "hi there"
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        missing = await http.post(f"{server.url}/v1/chat/completions", json={"model": "nope", "messages": []})
        assert missing.status_code == 404 and missing.json()["error"]["message"] == "model 'nope' not found"
        models = (await http.get(f"{server.url}/v1/models")).json()
        assert {m["id"] for m in models["data"]} == {"llama2:latest", "mistral:latest"}


async def test_control_endpoints_validate(server: FakeOllamaServer) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"{server.url}/_fake/faults", json={"kind": "explode"})).status_code == 400
        assert (await http.post(f"{server.url}/_fake/script", json={"model": "x"})).status_code == 400
        assert (await http.post(f"{server.url}/_fake/reset")).json() == {"reset": True}


def test_tokenizer_round_trips() -> None:
    for text in ["", "a", "hello world  ", "supercalifragilistic word", "\n\n# T\n"]:
        assert "".join(tokenize(text)) == text
    assert tokenize("supercalifragilistic") == ["supercal", "ifragili", "stic"]


async def test_runs_on_its_own() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.ollama_server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--models",
        "llama2",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("listening on http://127.0.0.1:")
        async with httpx.AsyncClient() as http:
            assert (await http.get(line.split()[-1] + "/api/version")).status_code == 200
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0
