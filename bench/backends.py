"""The backend pool against fake Ollama servers with realistic speed (40 tokens/s) and model load time (6 s).

1. 20 blog jobs on 2 backends × 2 slots (``--max-loaded 1``): makespan ÷ ideal, where ideal is the sum of the
   jobs' times on the servers ÷ the number of slots. Goal ≤ 1.05.
2. A chat every 2 s during a blog backlog on one backend with 2 slots and both models loaded
   (``--max-loaded 2``): chat wait p95 (call → first token), with ``reserved_chat_slots = 1`` (goal ≤ 1 s)
   and without.
3. llama2 chats and mistral blogs arriving interleaved on one backend that holds one model
   (``--max-loaded 1``): model loads and total time, the pool's order vs plain FIFO. Goal ≥ 2× fewer loads.
4. A chat every 2 s during a blog backlog on one backend with ONE slot (the default config on a small
   server): the chat preempts the running generation, which continues after it. Chat wait p95 (call →
   first token; goal ≤ 2 s) and how many times the blog generations were paused.

    python -m bench.backends [--load-seconds 6] [--tps 40]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx

from bench.common import percentile, write_results
from bot.config import BackendConfig
from bot.llm import ChatMessage, Preempted, Timeouts
from bot.llm.pool import BackendPool, Priority
from tests.fakes.ollama_server import FakeOllamaServer

TIMEOUTS = Timeouts(first_byte=600, idle=60, total=3600)
FILLER = "word " * 5000


def pool_for(
    urls: list[str],
    http: httpx.AsyncClient,
    *,
    slots: int,
    reserved: int = 0,
    fifo: bool = False,
) -> BackendPool:
    configs = [
        BackendConfig(url=url, name=f"b{i}", max_concurrent=slots, reserved_chat_slots=reserved)
        for i, url in enumerate(urls)
    ]
    return BackendPool(configs, http, fifo=fifo)


async def generate(pool: BackendPool, model: str, tokens: int, priority: Priority) -> tuple[float, float]:
    """Run one call; (start, first text) in time.monotonic()."""
    started = time.monotonic()
    first: float | None = None
    if priority is Priority.CHAT:
        stream = pool.chat(
            model,
            [ChatMessage("user", f"chat {started}")],
            options={"num_predict": tokens},
            priority=priority,
            timeouts=TIMEOUTS,
        )
    else:
        stream = pool.generate(
            model, f"blog {started}", options={"num_predict": tokens}, priority=priority, timeouts=TIMEOUTS
        )
    async with stream:
        async for _ in stream:
            if first is None:
                first = time.monotonic()
    return started, first or time.monotonic()


async def makespan(load_seconds: float, tps: float, jobs: int = 20, tokens: int = 120) -> dict[str, Any]:
    fakes = [
        FakeOllamaServer(
            models=["mistral:latest"],
            tokens_per_second=tps,
            load_seconds=load_seconds,
            num_parallel=2,
            max_loaded=1,
        )
        for _ in range(2)
    ]
    for fake in fakes:
        await fake.start()
        fake.script("mistral:latest", [FILLER] * jobs)
    try:
        async with httpx.AsyncClient() as http, pool_for([f.url for f in fakes], http, slots=2) as pool:
            started = time.monotonic()
            await asyncio.gather(
                *(generate(pool, "mistral:latest", tokens, Priority.BLOG) for _ in range(jobs))
            )
            finished = time.monotonic()
        records = [r for fake in fakes for r in fake.requests if r["path"] == "/api/generate"]
        busy = sum(r["finished_at"] - r["received_at"] for r in records)
        per_backend = [len([r for r in fake.requests if r["path"] == "/api/generate"]) for fake in fakes]
    finally:
        for fake in fakes:
            await fake.stop()
    ideal = busy / 4
    return {
        "jobs": jobs,
        "tokens": tokens,
        "makespan_s": finished - started,
        "ideal_s": ideal,
        "ratio": (finished - started) / ideal,
        "jobs_per_backend": per_backend,
    }


async def chat_waits(load_seconds: float, tps: float, reserved: int, chats: int = 8) -> dict[str, Any]:
    async with FakeOllamaServer(
        models=["llama2", "mistral:latest"],
        tokens_per_second=tps,
        load_seconds=load_seconds,
        num_parallel=2,
        max_loaded=2,
    ) as fake:
        fake.script("mistral:latest", [FILLER] * 20)
        async with (
            httpx.AsyncClient() as http,
            pool_for([fake.url], http, slots=2, reserved=reserved) as pool,
        ):
            # Warm both models up so load time doesn't count as waiting (both fit: --max-loaded 2).
            await asyncio.gather(
                generate(pool, "llama2", 1, Priority.CHAT), generate(pool, "mistral:latest", 1, Priority.BLOG)
            )
            backlog = [
                asyncio.create_task(generate(pool, "mistral:latest", int(tps * 10), Priority.BLOG))
                for _ in range(6)
            ]
            await asyncio.sleep(0.5)
            waits = await chat_every_two_seconds(pool, chats)
            for task in backlog:
                task.cancel()
            await asyncio.gather(*backlog, return_exceptions=True)
    return {"reserved_chat_slots": reserved, "chats": chats, **wait_figures(waits)}


async def chat_every_two_seconds(pool: BackendPool, chats: int) -> list[float]:
    """Ask ``chats`` short llama2 chats, one every 2 s; each one's wait (call → first token) in ms."""
    waits = []
    for _ in range(chats):
        started, first = await generate(pool, "llama2", 20, Priority.CHAT)
        waits.append((first - started) * 1000)
        await asyncio.sleep(2.0)
    return waits


def wait_figures(waits: list[float]) -> dict[str, float]:
    return {
        "wait_p50_ms": percentile(waits, 0.5),
        "wait_p95_ms": percentile(waits, 0.95),
        "wait_max_ms": max(waits),
    }


async def one_slot_chat_waits(load_seconds: float, tps: float, chats: int = 8) -> dict[str, Any]:
    async with FakeOllamaServer(
        models=["llama2", "mistral:latest"],
        tokens_per_second=tps,
        load_seconds=load_seconds,
        num_parallel=1,
        max_loaded=2,
    ) as fake:
        fake.script("mistral:latest", [FILLER] * 100)
        async with httpx.AsyncClient() as http, pool_for([fake.url], http, slots=1) as pool:
            await generate(pool, "llama2", 1, Priority.CHAT)
            await generate(pool, "mistral:latest", 1, Priority.BLOG)
            paused = 0

            async def blog_worker() -> None:
                # A worker slot: long generations, each continued after a preemption (as the blog worker
                # continues from the text so far).
                nonlocal paused
                while True:
                    try:
                        await generate(pool, "mistral:latest", int(tps * 10), Priority.BLOG)
                    except Preempted:
                        paused += 1

            workers = [asyncio.create_task(blog_worker()) for _ in range(2)]
            await asyncio.sleep(1.0)
            waits = await chat_every_two_seconds(pool, chats)
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return {"slots": 1, "chats": chats, **wait_figures(waits), "blog_generations_paused": paused}


async def model_switching(load_seconds: float, tps: float, fifo: bool, each: int = 6) -> dict[str, Any]:
    async with FakeOllamaServer(
        models=["llama2", "mistral:latest"],
        tokens_per_second=tps,
        load_seconds=load_seconds,
        num_parallel=1,
        max_loaded=1,
    ) as fake:
        fake.script("mistral:latest", [FILLER] * each)
        async with httpx.AsyncClient() as http, pool_for([fake.url], http, slots=1, fifo=fifo) as pool:
            started = time.monotonic()
            calls = []
            for index in range(each):
                calls.append(asyncio.create_task(generate(pool, "llama2", 40, Priority.CHAT)))
                await asyncio.sleep(0.25)
                calls.append(asyncio.create_task(generate(pool, "mistral:latest", 120, Priority.BLOG)))
                await asyncio.sleep(0.25 if index < each - 1 else 0)
            await asyncio.gather(*calls)
            total = time.monotonic() - started
        loads = sum(fake.load_count.values())
    return {"order": "fifo" if fifo else "pool", "requests": 2 * each, "model_loads": loads, "total_s": total}


async def main(load_seconds: float, tps: float) -> dict[str, Any]:
    results: dict[str, Any] = {"load_seconds": load_seconds, "tokens_per_second": tps}
    results["makespan"] = await makespan(load_seconds, tps)
    row = results["makespan"]
    print(
        f"(1) {row['jobs']} blog jobs on 2 backends × 2 slots: makespan {row['makespan_s']:.1f} s, "
        f"ideal {row['ideal_s']:.1f} s, ratio {row['ratio']:.3f} (goal ≤ 1.05); "
        f"jobs per backend {row['jobs_per_backend']}"
    )
    results["chat_wait"] = [await chat_waits(load_seconds, tps, reserved) for reserved in (1, 0)]
    for row in results["chat_wait"]:
        print(
            f"(2) chat during a blog backlog, reserved_chat_slots={row['reserved_chat_slots']}: wait p50 "
            f"{row['wait_p50_ms']:.0f} ms, p95 {row['wait_p95_ms']:.0f} ms, max {row['wait_max_ms']:.0f} ms"
            f"{' (goal p95 ≤ 1000 ms)' if row['reserved_chat_slots'] else ''}"
        )
    results["model_switching"] = [await model_switching(load_seconds, tps, fifo) for fifo in (True, False)]
    fifo, pool = results["model_switching"]
    print(
        f"(3) mixed llama2 chat + mistral blog, one model fits: FIFO {fifo['model_loads']} loads in "
        f"{fifo['total_s']:.1f} s; pool {pool['model_loads']} loads in {pool['total_s']:.1f} s "
        f"({fifo['model_loads'] / max(1, pool['model_loads']):.1f}× fewer; goal ≥ 2×)"
    )
    results["one_slot_chat_wait"] = row = await one_slot_chat_waits(load_seconds, tps)
    print(
        f"(4) chat during a blog backlog on a one-slot backend: wait p50 {row['wait_p50_ms']:.0f} ms, "
        f"p95 {row['wait_p95_ms']:.0f} ms, max {row['wait_max_ms']:.0f} ms (goal p95 ≤ 2000 ms); "
        f"blog generations paused {row['blog_generations_paused']} times and continued"
    )
    write_results("backends", results)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-seconds", type=float, default=6.0)
    parser.add_argument("--tps", type=float, default=40.0)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.load_seconds, arguments.tps))
