"""The multi-process crash test: PostgreSQL, 2 gateway processes (2 shards each of 4), 3 worker processes
and 2 model servers; 200 blog jobs in 200 guilds while workers and gateways are SIGKILLed at random and
replaced (same arguments). The verdict comes from the outside: the emulator's channels (one article per
guild), the jobs table (all delivered), and every chat mention answered.

Chat is judged as Discord would: a mention is only sent to a guild whose shard has a connected session
(per ``/_emulator/state``); a message sent while its shard is down is lost on real Discord too. A mention
whose gateway process is SIGKILLed before it has answered is lost with the process (Discord does not
deliver an event twice); such mentions are counted apart, every other one must get its answer.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.bot import IDENTIFY_LOCK_BASE
from bot.engine import open_database
from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import BotProcess, EmulatorControl, config_toml, wait_until

asyncpg = pytest.importorskip("asyncpg")

SEED = 20261204
GUILDS = JOBS = 200
SHARD_COUNT = 4
GATEWAYS = (
    ["gateway", "--shards", "0-1", "--shard-count", "4"],
    ["gateway", "--shards", "2-3", "--shard-count", "4"],
)
WORKERS = 3
ARTICLE_MARKER = re.compile(r"^📝 Blog post #(\d+) ")
#: Seconds a mention may wait for its answer (a busy 2-core machine, a process starting beside it).
ANSWER_WITHIN = 20.0


def shards_of(process: BotProcess) -> set[int]:
    """The shards a gateway process runs (``gateway --shards a-b …``); none for a worker."""
    if process.command[0] != "gateway":
        return set()
    first, last = process.command[2].split("-")
    return set(range(int(first), int(last) + 1))


@dataclass
class Mention:
    guild: int
    shard: int
    message_id: str
    #: When its shard was seen connected, just before it was sent.
    checked_at: float
    answered_at: float | None = None
    lost_to_kill: bool = False


@dataclass
class Figures:
    kills: dict[str, int] = field(default_factory=lambda: {"worker": 0, "gateway": 0})
    mentions: list[Mention] = field(default_factory=list)
    skipped_shard_down: int = 0
    #: (when, the shards of the gateway process killed then)
    shard_kills: list[tuple[float, set[int]]] = field(default_factory=list)


def lost_with(figures: Figures) -> None:
    """Unanswered mentions whose shard's gateway was SIGKILLed after the mention's shard was seen
    connected: they may have died with the process (Discord does not send an event twice)."""
    for mention in figures.mentions:
        if mention.answered_at is None and any(
            at >= mention.checked_at and mention.shard in shards for at, shards in figures.shard_kills
        ):
            mention.lost_to_kill = True


def config_text(emulator_url: str, model_urls: list[str], database: str) -> str:
    backend = {"max_concurrent": 4, "reserved_chat_slots": 1, "health_interval": 1.0}
    text = config_toml(
        emulator_url,
        model_urls[0],
        database,
        backend={"name": "models-a", **backend},
        chat={"cooldown_seconds": 0.0, "edit_interval": 0.3},
        blog={
            "workers": 2,
            "lease_seconds": 5.0,  # the smallest allowed: a killed worker's jobs come back within 5 s
            "progress_interval": 0.5,
            "retry_base_seconds": 0.2,
            # Every SIGKILL during a job costs it an attempt: room for a job to be hit several times.
            "max_attempts": 20,
            "max_queued_per_user": JOBS,
            "max_queued_per_guild": JOBS,
        },
    )
    lines = ["[[backends]]", f'url = "{model_urls[1]}"', 'name = "models-b"']
    lines += [f"{key} = {value}" for key, value in backend.items()]
    return text + "\n".join(lines) + "\n"


def shard_of(guild_id: str) -> int:
    return (int(guild_id) >> 22) % SHARD_COUNT


async def connected_shards(api: EmulatorControl) -> set[int]:
    sessions = (await api.refresh())["sessions"]
    return {s["shard"][0] for s in sessions if s.get("shard") and s["shard"][1] == SHARD_COUNT}


async def job_states(database: str) -> dict[int, str]:
    return {job: state for job, (state, _) in (await job_rows(database)).items()}


async def job_rows(database: str) -> dict[int, tuple[str, int]]:
    """Every job's ``(state, attempts)`` by id."""
    connection = await asyncpg.connect(database)
    try:
        rows = await connection.fetch("SELECT id, state, attempts FROM jobs")
    finally:
        await connection.close()
    return {row["id"]: (row["state"], row["attempts"]) for row in rows}


@pytest.mark.timeout(400)
async def test_many_processes_deliver_every_job_once_and_keep_chatting_through_sigkills(
    tmp_path: Path, postgres_url: str, http: httpx.AsyncClient
) -> None:
    # Seeded, one stream each so the kill schedule does not depend on how the chat loop interleaves.
    rng, kill_rng, chat_rng = (random.Random(f"{SEED}-{name}") for name in ("jobs", "kills", "chat"))
    started = time.monotonic()
    figures = Figures()
    async with (
        DiscordEmulator(guilds=GUILDS, max_concurrency=2) as emulator,
        FakeOllamaServer(models=["llama2", "mistral:latest"], tokens_per_second=400, num_parallel=4) as one,
        FakeOllamaServer(models=["llama2", "mistral:latest"], tokens_per_second=400, num_parallel=4) as two,
    ):
        api = EmulatorControl(emulator.url, http)
        state = await api.refresh()
        guild_ids = [g["id"] for g in state["guilds"]]
        config = tmp_path / "config.toml"
        config.write_text(config_text(emulator.url, [one.url, two.url], postgres_url))
        serial = iter(range(1000))
        running = [BotProcess(c, config, tmp_path / f"{next(serial):03d}-gateway.log") for c in GATEWAYS]
        running += [
            BotProcess(["worker"], config, tmp_path / f"{next(serial):03d}-worker.log")
            for _ in range(WORKERS)
        ]
        every = list(running)
        for process in running:
            await process.start()
        try:
            await wait_until(lambda: all_shards_up(api), within=60, interval=0.2)
            await wait_until(lambda: blog_command_synced(api), within=30, interval=0.2)

            # One /blog new per guild, by any user; each acknowledged by its shard's gateway.
            users = ("alice", "bob", "mod")
            for index in range(JOBS):
                invocation = await api.invoke(
                    f"{index}/general",
                    rng.choice(users),
                    "blog new",
                    topic=f"topic {index}",
                    target_length=300,
                )
                record = await api.answered(invocation["interaction_id"])
                assert record["callbacks"][0]["type"] == 4, record

            async def finished() -> bool:
                states = await job_states(postgres_url)
                return len(states) == JOBS and all(
                    s in ("delivered", "failed", "cancelled") for s in states.values()
                )

            done = asyncio.Event()

            async def chaos() -> None:
                nonlocal running
                while not done.is_set():
                    await asyncio.sleep(kill_rng.uniform(2.0, 4.0))
                    if done.is_set():
                        return
                    kind = "worker" if kill_rng.random() < 0.6 else "gateway"
                    victims = [p for p in running if (p.command[0] == "worker") == (kind == "worker")]
                    victim = kill_rng.choice(victims)
                    await victim.kill()
                    figures.kills[kind] += 1
                    figures.shard_kills.append((time.monotonic(), shards_of(victim)))
                    lost_with(figures)
                    replacement = BotProcess(
                        victim.command, config, tmp_path / f"{next(serial):03d}-{kind}.log"
                    )
                    await replacement.start()
                    running = [replacement if p is victim else p for p in running]
                    every.append(replacement)

            async def chat() -> None:
                while not done.is_set():
                    await asyncio.sleep(chat_rng.uniform(0.7, 1.3))
                    index = chat_rng.randrange(GUILDS)
                    shard = shard_of(guild_ids[index])
                    checked_at = time.monotonic()
                    if shard not in await connected_shards(api):
                        figures.skipped_shard_down += 1
                        continue
                    message = await api.mention(
                        f"{index}/general", chat_rng.choice(users), f"question {len(figures.mentions)}"
                    )
                    sent = Mention(index, shard, message["id"], checked_at)
                    figures.mentions.append(sent)
                    lost_with(figures)  # a kill between the check and the send

            async def answers() -> None:
                while not done.is_set() or any(pending(m) for m in figures.mentions):
                    for mention in [m for m in figures.mentions if pending(m)]:
                        replies = await api.bot_replies(f"{mention.guild}/general", after=mention.message_id)
                        if any(reference(r) == mention.message_id for r in replies):
                            mention.answered_at = time.monotonic()
                        elif (
                            time.monotonic() - mention.checked_at > ANSWER_WITHIN and not mention.lost_to_kill
                        ):
                            raise AssertionError(f"no answer within {ANSWER_WITHIN} s: {mention}")
                    await asyncio.sleep(0.2)

            queued_at = time.monotonic()
            tasks = [asyncio.create_task(work()) for work in (chaos, chat, answers)]
            try:
                await wait_until(finished, within=240, interval=0.5)
            finally:
                done.set()
                for task in tasks[:2]:
                    task.cancel()
                await asyncio.gather(*tasks[:2], return_exceptions=True)
            await asyncio.wait_for(tasks[2], ANSWER_WITHIN + 10)
        finally:
            returncodes = {}
            for process in running:
                if process.process is not None and not process.killed:
                    returncodes[process.log.name] = await process.terminate()

        # Exactly once: one article message per guild, every job delivered, none stuck.
        finished_at = time.monotonic()
        rows = await job_rows(postgres_url)
        states = {job: state for job, (state, _) in rows.items()}
        retried = sum(attempts > 1 for _, attempts in rows.values())
        articles: dict[int, list[str]] = {}
        for index in range(GUILDS):
            for message in await api.bot_replies(f"{index}/general"):
                match = ARTICLE_MARKER.match(message["content"])
                if match and any(a["filename"].endswith(".md") for a in message["attachments"]):
                    articles.setdefault(index, []).append(match.group(1))
        state = await api.refresh()

    duplicates = {index: ids for index, ids in articles.items() if len(ids) != 1}
    stuck = {job: s for job, s in states.items() if s != "delivered"}
    mentions = figures.mentions
    answered = [m for m in mentions if m.answered_at is not None]
    lost = [m for m in mentions if m.answered_at is None and m.lost_to_kill]
    lags = sorted(m.answered_at - m.checked_at for m in answered if m.answered_at is not None)
    print(
        f"\n{JOBS} jobs in {GUILDS} guilds; kills: {figures.kills}; "
        f"mentions sent {len(mentions)}, answered {len(answered)}, lost with a killed gateway {len(lost)}, "
        f"skipped (shard down) {figures.skipped_shard_down}; answer lag max {lags[-1] if lags else 0:.2f} s; "
        f"guilds without exactly one article {len(duplicates) + GUILDS - len(articles)}; "
        f"not delivered {len(stuck)}; jobs taken over after a kill {retried}; "
        f"jobs queued after {queued_at - started:.0f} s, all finished {finished_at - queued_at:.0f} s later, "
        f"{time.monotonic() - started:.0f} s in all"
    )
    assert len(states) == JOBS
    assert not stuck, stuck
    assert len(articles) == GUILDS and not duplicates, duplicates
    assert sorted(int(i) for ids in articles.values() for i in ids) == sorted(states)
    # The kills hit the work: gateways and workers both, and jobs in flight (taken over by another worker).
    assert figures.kills["worker"] >= 2 and figures.kills["gateway"] >= 2, figures.kills
    assert retried >= 1
    assert len(answered) + len(lost) == len(mentions) and len(answered) >= 10
    assert state.get("identify_refusals", []) == []
    for process in every:
        if not process.killed:
            output = process.log.read_text(errors="replace")
            assert "Traceback" not in output, (process.log.name, output[-3000:])
    assert all(code == 0 for code in returncodes.values()), returncodes


async def test_a_turn_outlives_the_process_that_took_it(postgres_url: str) -> None:
    """The IDENTIFY spacing survives a SIGKILL: the advisory lock goes with the dead process's connection,
    the time of its turn does not (the crash test above saw op 9 refusals: a replacement gateway
    IDENTIFYing ~1 s after the killed one had)."""
    hold = 3.0
    async with open_database(postgres_url) as first, open_database(postgres_url) as second:
        started = time.monotonic()
        await first.take_turn(IDENTIFY_LOCK_BASE, hold)
        # The taker dies: the server ends its connection, as when the process is SIGKILLed.
        admin = await asyncpg.connect(postgres_url)
        try:
            ended = await admin.fetchval(
                """SELECT count(pg_terminate_backend(pid)) FROM pg_locks
                   WHERE locktype = 'advisory' AND objid = $1::bigint::oid AND granted""",
                IDENTIFY_LOCK_BASE,
            )
        finally:
            await admin.close()
        assert ended == 1
        await asyncio.wait_for(second.take_turn(IDENTIFY_LOCK_BASE, hold), hold + 5)
        waited = time.monotonic() - started
    assert waited >= hold - 0.2, f"the next turn came {waited:.2f} s after the dead one's"


def pending(mention: Mention) -> bool:
    """Not answered yet, and still expected (or killed with its gateway, but not given up on yet)."""
    return mention.answered_at is None and time.monotonic() - mention.checked_at <= ANSWER_WITHIN + 1


def reference(message: dict[str, Any]) -> str | None:
    return (message.get("message_reference") or {}).get("message_id")


async def all_shards_up(api: EmulatorControl) -> bool:
    return await connected_shards(api) == set(range(SHARD_COUNT))


async def blog_command_synced(api: EmulatorControl) -> bool:
    return any(command["name"] == "blog" for command in (await api.refresh())["commands"])
