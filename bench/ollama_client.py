"""Overhead of the project's Ollama client over reading the raw socket.

Streams a 10,000-token reply from the fake Ollama server (in its own process, unlimited speed) in two
ways, alternating, several rounds each:

* raw: one HTTP/1.1 request over ``asyncio.open_connection``, counting NDJSON lines as they arrive;
* client: ``OllamaClient.chat`` (httpx, line parsing, per-chunk timeouts), counting text chunks.

Prints tokens/s for both (wall clock, median of the rounds), the client's CPU cost per token, and the
ratio (goal: the client costs < 10 % over raw). Writes ``bench/results/ollama_client.json``.

    python -m bench.ollama_client [--tokens 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

from bench.common import FakeOllamaProcess, write_results
from bot.llm import NO_RETRY, ChatMessage, OllamaClient, Timeouts


async def raw_stream(host: str, port: int, body: bytes) -> int:
    """Stream one reply over a bare socket; the number of NDJSON lines received."""
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        f"POST /api/chat HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    writer.write(request)
    await writer.drain()
    # Count token objects without parsing: the body is chunked, so line breaks alone would overcount.
    # A marker split across two reads is caught by keeping the tail of the previous read.
    marker, tokens, tail = b'"done": false', 0, b""
    while chunk := await reader.read(65536):
        data = tail + chunk
        tokens += data.count(marker)
        tail = data[-(len(marker) - 1) :] if not data.endswith(marker) else b""
    writer.close()
    await writer.wait_closed()
    return tokens


async def client_stream(client: OllamaClient, prompt: str, tokens: int) -> int:
    chunks = 0
    stream = client.chat(
        "llama2",
        [ChatMessage("user", prompt)],
        options={"num_predict": tokens},
        timeouts=Timeouts(first_byte=60, idle=60, total=600),
        retry=NO_RETRY,
    )
    async with stream:
        async for _ in stream:
            chunks += 1
    return chunks


async def main(tokens: int, rounds: int) -> dict[str, float]:
    reply = " ".join(f"w{i % 1000}" for i in range(tokens))
    async with FakeOllamaProcess(models=["llama2"]) as fake, httpx.AsyncClient() as http:
        client = OllamaClient(http, fake.url, retry=NO_RETRY)
        raw_rates, client_rates, raw_cpu, client_cpu = [], [], [], []
        for round_number in range(rounds + 1):  # round 0 warms both paths up
            for kind in ("raw", "client"):
                await fake.script("llama2", [reply])
                prompt = f"round {round_number}"
                wall, cpu = time.perf_counter(), time.process_time()
                if kind == "raw":
                    body = json.dumps(
                        {
                            "model": "llama2",
                            "messages": [{"role": "user", "content": prompt}],
                            "options": {"num_predict": tokens},
                        }
                    ).encode()
                    received = await raw_stream(fake.host, fake.port, body)
                else:
                    received = await client_stream(client, prompt, tokens)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if received != tokens:
                    raise SystemExit(f"{kind}: expected {tokens} tokens, got {received}")
                if round_number == 0:
                    continue
                (raw_rates if kind == "raw" else client_rates).append(tokens / wall)
                (raw_cpu if kind == "raw" else client_cpu).append(cpu / tokens * 1e6)
    raw_rate, client_rate = statistics.median(raw_rates), statistics.median(client_rates)
    return {
        "tokens": tokens,
        "rounds": rounds,
        "raw_tokens_per_second": raw_rate,
        "client_tokens_per_second": client_rate,
        "client_overhead": raw_rate / client_rate - 1,
        "raw_cpu_us_per_token": statistics.median(raw_cpu),
        "client_cpu_us_per_token": statistics.median(client_cpu),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = asyncio.run(main(args.tokens, args.rounds))
    print(
        f"raw socket : {results['raw_tokens_per_second']:>10,.0f} tokens/s "
        f"({results['raw_cpu_us_per_token']:.1f} µs CPU/token in this process)"
    )
    print(
        f"OllamaClient: {results['client_tokens_per_second']:>9,.0f} tokens/s "
        f"({results['client_cpu_us_per_token']:.1f} µs CPU/token in this process)"
    )
    print(f"client overhead over raw: {results['client_overhead']:+.1%} (goal < 10 %)")
    write_results("ollama_client", results)
