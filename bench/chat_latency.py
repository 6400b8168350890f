"""Chat streaming latency: the real bot (``python -m bot``) against the emulator and a 40 tokens/s fake.

20 sequential mentions, then 5 concurrent ones (the model server streams them all at once), all in one
channel, each answered with a 300-token reply. Every time comes from the stand-ins' own records
(``time.monotonic()``, one clock for every process on the machine):

(a) first visible text (not a wait notice) − the model's first token   goal p50 ≤ 50 ms
(b) final text landed − the model done             goal p50 ≤ 150 ms alone, ≤ 600 ms with 5 at once
(c) edits per reply
(d) 429 answers from the emulator                  goal 0

    python -m bench.chat_latency [--sequential 20] [--concurrent 5] [--tokens 300] [--tps 40]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, DiscordEmulatorProcess, FakeOllamaProcess, percentile, write_results
from tests.harness import config_toml, wait_until

EDIT_INTERVAL = 1.2


def bot_config(emulator_url: str, ollama_url: str, database: Path, slots: int) -> str:
    chat = {
        "edit_interval": EDIT_INTERVAL,
        "cooldown_seconds": 0.0,
        "max_streams_per_user": 10,
        "queue_timeout": 300.0,
        "max_tokens": 1000,
    }
    return config_toml(
        emulator_url,
        ollama_url,
        database,
        backend={"max_concurrent": slots, "reserved_chat_slots": 0},
        chat=chat,
        logging={"level": "WARNING"},
    )


async def start_bot(config_path: Path, emulator: DiscordEmulatorProcess) -> asyncio.subprocess.Process:
    environment = {**os.environ, "DISCORD_TOKEN": "bench-token-0123456789abcdef"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "--config", str(config_path), cwd=ROOT, env=environment
    )

    async def connected() -> list[Any] | None:
        sessions: list[Any] = (await emulator.get("/_emulator/state"))["sessions"]
        return sessions or None

    await wait_until(connected, within=30)
    await asyncio.sleep(0.5)  # let discord.py finish its READY handling before the first mention
    return process


async def ask(
    emulator: DiscordEmulatorProcess, state: dict[str, Any], user: str, text: str
) -> dict[str, Any]:
    content = f"<@{state['bot_user_id']}> {text}"
    body = {"channel_id": state["channels"]["general"], "author_id": state["users"][user], "content": content}
    result: dict[str, Any] = await emulator.post("/_emulator/messages", body)
    return result


async def wait_for_reply(
    emulator: DiscordEmulatorProcess, channel_id: str, question_id: str, expected: str
) -> list[dict[str, Any]]:
    async with asyncio.timeout(300):
        while True:
            messages = await emulator.get(f"/_emulator/channels/{channel_id}/messages")
            parts = [
                m for m in messages if (m.get("message_reference") or {}).get("message_id") == question_id
            ]
            chain = []
            while parts:
                chain.append(parts[0])
                parts = [
                    m
                    for m in messages
                    if (m.get("message_reference") or {}).get("message_id") == parts[0]["id"]
                ]
            if chain and "".join("".join(m["content"].split()) for m in chain) == "".join(expected.split()):
                return chain
            await asyncio.sleep(0.1)


def measure(reply: list[dict[str, Any]], request: dict[str, Any], expected: str) -> dict[str, float]:
    # A wait notice ("⏳ Waiting for a model server…") is not the answer's first text.
    first_visible = next(h["at"] for h in reply[0]["history"] if not h["content"].startswith("⏳"))
    # The final text has landed when the last part reached its final content.
    last = reply[-1]
    landed = next(
        h["at"] for h in last["history"] if "".join(h["content"].split()) == "".join(last["content"].split())
    )
    return {
        "first_text_after_first_token_ms": (first_visible - request["first_token_at"]) * 1000,
        "final_after_model_done_ms": (landed - request["finished_at"]) * 1000,
        "edits": sum(len(m["history"]) - 1 for m in reply),
    }


async def run(sequential: int, concurrent: int, tokens: int, tps: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        async with (
            DiscordEmulatorProcess() as emulator,
            FakeOllamaProcess(
                ["llama2"], "--tokens-per-second", str(tps), "--num-parallel", str(max(1, concurrent))
            ) as ollama,
        ):
            config_path = Path(scratch) / "config.toml"
            database = Path(scratch) / "bot.sqlite3"
            config_path.write_text(bot_config(emulator.url, ollama.url, database, max(1, concurrent)))
            bot = await start_bot(config_path, emulator)
            try:
                state = await emulator.get("/_emulator/state")
                channel_id = str(state["channels"]["general"])
                samples: dict[str, list[dict[str, float]]] = {"sequential": [], "concurrent": []}
                number = 0

                async def one(phase: str, user: str, answer: str) -> None:
                    nonlocal number
                    number += 1
                    question = f"question {number}"
                    asked = await ask(emulator, state, user, question)
                    reply = await wait_for_reply(emulator, channel_id, str(asked["id"]), answer)
                    requests = await ollama.get("/_fake/requests")
                    request = next(
                        r for r in requests if r["body"] and r["body"]["messages"][-1]["content"] == question
                    )
                    samples[phase].append(measure(reply, request, answer))

                answer = " ".join(f"w{i}" for i in range(tokens))
                for _ in range(sequential):
                    await ollama.script("llama2", [answer])
                    await one("sequential", "alice", answer)
                # The burst reaches the model in any order: every reply is the same text, scripted up front.
                await ollama.script("llama2", [answer] * concurrent)
                users = ("alice", "bob", "mod")
                await asyncio.gather(*(one("concurrent", users[i % 3], answer) for i in range(concurrent)))
                too_many = [r for r in await emulator.get("/_emulator/requests") if r["status"] == 429]
            finally:
                bot.terminate()
                await bot.wait()
    results: dict[str, Any] = {
        "edit_interval": EDIT_INTERVAL,
        "tokens": tokens,
        "tokens_per_second": tps,
        "http_429": len(too_many),
    }
    for phase, rows in samples.items():
        first = [row["first_text_after_first_token_ms"] for row in rows]
        final = [row["final_after_model_done_ms"] for row in rows]
        edits = [row["edits"] for row in rows]
        results[phase] = {
            "replies": len(rows),
            "first_text_p50_ms": percentile(first, 0.5),
            "first_text_p95_ms": percentile(first, 0.95),
            "final_p50_ms": percentile(final, 0.5),
            "final_p95_ms": percentile(final, 0.95),
            "edits_p50": percentile(edits, 0.5),
            "edits_p95": percentile(edits, 0.95),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--tps", type=float, default=40.0)
    args = parser.parse_args()
    results = asyncio.run(run(args.sequential, args.concurrent, args.tokens, args.tps))
    goal_final = {"sequential": 150, "concurrent": 600}
    print(f"{args.tokens}-token replies at {args.tps:g} tokens/s, edit interval {EDIT_INTERVAL}s")
    for phase in ("sequential", "concurrent"):
        row = results[phase]
        print(f"{phase} ({row['replies']} replies):")
        print(
            f"  (a) first text − first token: p50 {row['first_text_p50_ms']:.0f} ms, "
            f"p95 {row['first_text_p95_ms']:.0f} ms (goal p50 ≤ 50 ms)"
        )
        print(
            f"  (b) final text − model done:  p50 {row['final_p50_ms']:.0f} ms, "
            f"p95 {row['final_p95_ms']:.0f} ms (goal p50 ≤ {goal_final[phase]} ms)"
        )
        print(f"  (c) edits per reply:          p50 {row['edits_p50']:.0f}, p95 {row['edits_p95']:.0f}")
    print(f"(d) 429 responses: {results['http_429']} (goal 0)")
    write_results("chat_latency", results)


if __name__ == "__main__":
    main()
