"""The /blog queue under load.

1. 100 ``/blog new`` invocations at once against the real bot (``python -m bot``): acknowledgement latency
   as the emulator measures it (dispatch → first callback); goal p99 < 100 ms, never near 3 s.
2. With a zero-latency fake model: end-to-end jobs/s through generate + deliver (Discord's per-channel
   limit of ~5 messages per 5 s bounds this; the jobs are spread over both channels).
3. The store alone on SQLite (synchronous=FULL): enqueue + claim + store + deliver cycles per second.

    python -m bench.blog_queue [--invocations 100] [--cycles 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, DiscordEmulatorProcess, FakeOllamaProcess, percentile, write_results
from bot.blog.store import Article, BlogRequest, JobStore, Quotas
from bot.db import Database
from tests.harness import config_toml, wait_until

ARTICLE = "# Bench Post\n\n" + "word " * 200  # over half of the 300-word target: a whole article


def bot_config(emulator_url: str, ollama_url: str, database: Path) -> str:
    blog = {"workers": 4, "max_queued_per_user": 1000, "max_queued_per_guild": 1000, "progress_interval": 5.0}
    return config_toml(
        emulator_url,
        ollama_url,
        database,
        backend={"max_concurrent": 4},
        blog=blog,
        logging={"level": "WARNING"},
    )


async def end_to_end(invocations: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        async with (
            DiscordEmulatorProcess() as emulator,
            FakeOllamaProcess(["mistral:latest"], "--num-parallel", "4") as ollama,
        ):
            await ollama.script("mistral:latest", [ARTICLE] * invocations)
            config_path = Path(scratch) / "config.toml"
            config_path.write_text(bot_config(emulator.url, ollama.url, Path(scratch) / "bot.sqlite3"))
            environment = {**os.environ, "DISCORD_TOKEN": "bench-token-0123456789abcdef"}
            bot = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "--config", str(config_path), cwd=ROOT, env=environment
            )
            try:

                async def ready() -> dict[str, Any] | None:
                    state: dict[str, Any] = await emulator.get("/_emulator/state")
                    return state if state["sessions"] and state["commands"] else None

                state = await wait_until(ready, within=30)
                channels = [state["channels"]["general"], state["channels"]["blog"]]
                users = list(state["users"].values())

                async def invoke(number: int) -> str:
                    body = {
                        "channel_id": channels[number % 2],
                        "user_id": users[number % len(users)],
                        "command": "blog new",
                        "options": {"topic": f"bench topic {number}", "target_length": 300},
                    }
                    result = await emulator.post("/_emulator/interactions", body)
                    return str(result["interaction_id"])

                interaction_ids = await asyncio.gather(*(invoke(n) for n in range(invocations)))

                # Read the records once, after Discord's 3 s window: polling them all meanwhile would load the
                # emulator, which timestamps the very callbacks being measured.
                await asyncio.sleep(3.5)
                records = [await emulator.get(f"/_emulator/interactions/{i}") for i in interaction_ids]
                unanswered = [r for r in records if not r["callbacks"]]
                if unanswered:
                    raise SystemExit(f"{len(unanswered)} interactions were not answered within 3 s")
                acks = [(r["callbacks"][0]["at"] - r["dispatched_at"]) * 1000 for r in records]
                first_ack = min(r["callbacks"][0]["at"] for r in records)

                async def delivered() -> list[float] | None:
                    times = []
                    for channel in channels:
                        for message in await emulator.get(f"/_emulator/channels/{channel}/messages"):
                            if any(a["filename"].endswith(".md") for a in message["attachments"]):
                                times.append(message["history"][0]["at"])
                    return times if len(times) >= invocations else None

                posted = await wait_until(delivered, within=600, interval=0.5)
                too_many = [r for r in await emulator.get("/_emulator/requests") if r["status"] == 429]
            finally:
                bot.terminate()
                await bot.wait()
    span = max(posted) - first_ack
    return {
        "invocations": invocations,
        "ack_p50_ms": percentile(acks, 0.5),
        "ack_p99_ms": percentile(acks, 0.99),
        "ack_max_ms": max(acks),
        "jobs_delivered": len(posted),
        "end_to_end_seconds": span,
        "end_to_end_jobs_per_second": len(posted) / span,
        "http_429": len(too_many),
    }


async def store_rate(cycles: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        async with Database(Path(scratch) / "rate.sqlite3") as db:
            store = JobStore(db)
            quotas = Quotas(per_user=cycles + 1, per_guild=cycles + 1, total=cycles + 1)
            article = Article(title="t", slug="t", text="---\n---\n# t\n", word_count=1, generated_at="now")
            started = time.perf_counter()
            for number in range(cycles):
                await store.enqueue(
                    BlogRequest(1, 2, number % 7, "topic", "technical", "neutral", 300, (), "mistral"), quotas
                )
                job = await store.claim(60.0)
                assert job is not None
                await store.store_article(job, article)
                await store.mark_delivered(job, number + 1)
            elapsed = time.perf_counter() - started
    return {"cycles": cycles, "cycles_per_second": cycles / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invocations", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=2000)
    args = parser.parse_args()
    results = asyncio.run(end_to_end(args.invocations))
    results["store"] = asyncio.run(store_rate(args.cycles))
    print(
        f"{results['invocations']} simultaneous /blog new: ack p50 {results['ack_p50_ms']:.1f} ms, "
        f"p99 {results['ack_p99_ms']:.1f} ms, max {results['ack_max_ms']:.1f} ms (goal p99 < 100 ms)"
    )
    print(
        f"end to end (zero-latency model, 2 channels): {results['jobs_delivered']} jobs in "
        f"{results['end_to_end_seconds']:.1f} s = {results['end_to_end_jobs_per_second']:.2f} jobs/s; "
        f"429s: {results['http_429']}"
    )
    print(
        f"store alone (SQLite, synchronous=FULL): {results['store']['cycles_per_second']:.0f} "
        f"enqueue+claim+store+deliver cycles/s"
    )
    write_results("blog_queue", results)


if __name__ == "__main__":
    main()
