"""Scaling out: gateway and worker processes on PostgreSQL, against the emulator with thousands of guilds.

The emulator serves ``--guilds`` guilds (default 2,000) on 4 shards, run by 2 gateway processes
(``python -m bot gateway --shards 0-1 --shard-count 4`` and ``--shards 2-3``); blog jobs are written by
1, 2, … ``--max-workers`` worker processes (``python -m bot worker``, one run per count, each process with
``blog.workers = --slots``), all sharing one PostgreSQL database. Every time comes from the stand-ins' own
records (``time.monotonic()``, one clock for every process on the machine):

(1) chat: mentions spread over guilds of every shard, one per shard at a time; lag = first visible text of the
    reply (emulator message history) − the model's first token (fake's request record), as in
    bench/chat_latency.py; p50/p95 per shard                                     goal p50 ≤ 50 ms
(2) ``/blog new`` acknowledgement: the emulator's dispatch of the interaction → the bot's first callback
    (the gateway commits the job, then answers with its status message); every burst of every run
    (all invocations of a run sent at once); p50/p99                     goal p99 well under Discord's 3 s
(3) blog throughput vs worker processes: ``--rounds`` × slots × workers jobs per run, sent at once over
    distinct guilds of every shard; jobs/min = jobs / (last article posted − first interaction dispatched),
    and the ratio to linear (jobs/min with k workers ÷ k × jobs/min with 1)     goal ≥ 0.9× linear until
    the model servers saturate

The model side is not the bottleneck by design: each worker process has its own fake model server with as
many parallel slots as the worker has (``--num-parallel`` = ``--slots``), each request streamed at a fixed
``--blog-tps``, and every job gets the same scripted article (``--article-words`` tokens), so a job takes the
same model time in every run and the ideal rate is ``workers × slots × 60 / (words / tps)`` jobs/min. What
limits the scaling is then the bot, PostgreSQL, the emulator and the machine's CPU, which every process
shares: CPU use per process group and the machine's busy share are recorded for each run.

    python -m bench.scale [--guilds 2000] [--max-workers 4] [--slots 4] [--rounds 3] [--article-words 200]
                          [--blog-tps 50] [--chat-per-shard 5] [--chat-tokens 60] [--chat-tps 40]
                          [--max-concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from bench.chat_latency import EDIT_INTERVAL, measure, wait_for_reply
from bench.common import DiscordEmulatorProcess, FakeOllamaProcess, percentile, write_results
from tests.harness import BotProcess, config_toml, wait_until
from tests.postgres import PostgresServer, database_url, postgres_server

SHARD_COUNT = 4
GATEWAY_SHARDS = ("0-1", "2-3")
CHAT_MODEL = "llama2"
BLOG_MODEL = "mistral:latest"
USERS = ("alice", "bob", "mod")
TOKEN = "bench-token-0123456789abcdef"
GENERATION_PATHS = ("/api/chat", "/api/generate", "/v1/chat/completions")


# -- PostgreSQL ----------------------------------------------------------------------------------------


def postmaster_pid(server: PostgresServer) -> int | None:
    """The pid of a server started here (its CPU time is measured), from its postmaster.pid."""
    pid_file = server.data / "postmaster.pid" if server.data is not None else None
    return int(pid_file.read_text().split()[0]) if pid_file is not None and pid_file.exists() else None


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """An empty database on the server (the server's default durability: synchronous_commit on)."""
    name = f"bench_scale_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        yield database_url(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# -- the bot's processes -------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, from /proc (Linux); None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, … utime (14), stime (15)
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot (/proc/stat)."""
    values = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU seconds of process groups (each process and its children) between two readings, and the share
    of the whole machine that was busy (every process on it, ours or not)."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self._machine = (0.0, 0.0)
        self._started_at = 0.0

    @staticmethod
    def _seconds(pids: list[int]) -> float:
        parents: dict[int, list[int]] = {}
        cpu: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
                parents.setdefault(stat[0], []).append(int(entry.name))
                cpu[int(entry.name)] = stat[1]
        total, todo = 0.0, list(pids)
        while todo:
            pid = todo.pop()
            total += cpu.get(pid, 0.0)
            todo.extend(parents.get(pid, []))
        return total

    def start(self) -> None:
        self._machine = _machine_busy()
        self._start = {name: self._seconds(pids) for name, pids in self.groups.items()}
        self._started_at = time.monotonic()

    def stop(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self._started_at
        busy, total = _machine_busy()
        machine = 100 * (busy - self._machine[0]) / max(1.0, total - self._machine[1])
        cores = {
            name: round((self._seconds(pids) - self._start[name]) / elapsed, 2)
            for name, pids in self.groups.items()
        }
        return {"cores_used": cores, "machine_busy_percent": round(machine, 1), "seconds": round(elapsed, 1)}


def gateway_config(emulator_url: str, chat_url: str, database: str) -> str:
    chat = {
        "edit_interval": EDIT_INTERVAL,
        "cooldown_seconds": 0.0,
        "max_streams_per_user": 10,
        "queue_timeout": 300.0,
        "max_tokens": 1000,
    }
    return config_toml(
        emulator_url,
        chat_url,
        database,
        backend={"max_concurrent": 8, "reserved_chat_slots": 0},
        chat=chat,
        blog=blog_section(1),
        logging={"level": "WARNING"},
    )


def blog_section(slots: int) -> dict[str, Any]:
    return {
        "model": BLOG_MODEL,
        "workers": slots,
        "max_queued_per_user": 1000,
        "max_queued_per_guild": 100,
        "max_queued_total": 100000,
    }


def worker_config(emulator_url: str, blog_url: str, database: str, slots: int) -> str:
    return config_toml(
        emulator_url,
        blog_url,
        database,
        backend={"max_concurrent": slots, "reserved_chat_slots": 0},
        blog=blog_section(slots),
        logging={"level": "INFO"},  # "blog worker running" says the worker is ready
    )


# -- the phases ----------------------------------------------------------------------------------------


def shard_of(guild_id: str) -> int:
    return (int(guild_id) >> 22) % SHARD_COUNT


async def chat_phase(
    emulator: DiscordEmulatorProcess,
    chat: FakeOllamaProcess,
    state: dict[str, Any],
    by_shard: dict[int, list[dict[str, Any]]],
    per_shard: int,
    tokens: int,
) -> dict[str, Any]:
    """``per_shard`` mentions in distinct guilds of each shard, one per shard at a time."""
    answer = " ".join(f"w{i}" for i in range(tokens))
    samples: dict[int, list[dict[str, float]]] = {shard: [] for shard in by_shard}
    number = 0

    async def one(shard: int, guild: dict[str, Any], user: str) -> None:
        nonlocal number
        number += 1
        question = f"scale question {number}"
        channel_id = str(guild["channels"]["general"])
        body = {
            "channel_id": channel_id,
            "author_id": state["users"][user],
            "content": f"<@{state['bot_user_id']}> {question}",
        }
        asked = await emulator.post("/_emulator/messages", body)
        reply = await wait_for_reply(emulator, channel_id, str(asked["id"]), answer)
        requests = await chat.get("/_fake/requests")
        request = next(
            r
            for r in requests
            if r["body"] and r["body"].get("messages") and r["body"]["messages"][-1]["content"] == question
        )
        samples[shard].append(measure(reply, request, answer))

    for round_number in range(per_shard):
        await chat.script(CHAT_MODEL, [answer] * len(by_shard))
        await asyncio.gather(
            *(
                one(shard, guilds[round_number], USERS[(round_number + shard) % len(USERS)])
                for shard, guilds in by_shard.items()
            )
        )
    result: dict[str, Any] = {"tokens": tokens, "per_shard": {}}
    every: list[float] = []
    for shard, rows in sorted(samples.items()):
        lags = [row["first_text_after_first_token_ms"] for row in rows]
        every.extend(lags)
        result["per_shard"][str(shard)] = {
            "replies": len(rows),
            "first_text_p50_ms": percentile(lags, 0.5),
            "first_text_p95_ms": percentile(lags, 0.95),
            "first_text_max_ms": max(lags),
        }
    result["all"] = {
        "replies": len(every),
        "first_text_p50_ms": percentile(every, 0.5),
        "first_text_p95_ms": percentile(every, 0.95),
    }
    return result


async def blog_run(
    *,
    workers: int,
    slots: int,
    rounds: int,
    article: str,
    emulator: DiscordEmulatorProcess,
    blog_fakes: list[FakeOllamaProcess],
    guilds: list[dict[str, Any]],
    state: dict[str, Any],
    database: str,
    scratch: Path,
    cpu_groups: dict[str, list[int]],
) -> dict[str, Any]:
    jobs = rounds * slots * workers
    for fake in blog_fakes[:workers]:
        await fake.script(BLOG_MODEL, [article] * jobs)
    processes = []
    for index in range(workers):
        config = scratch / f"worker{index}.toml"
        config.write_text(worker_config(emulator.url, blog_fakes[index].url, database, slots))
        processes.append(
            BotProcess(["worker"], config, scratch / f"worker{index}-{workers}.log", token=TOKEN)
        )
    requests_before = [len(await fake.get("/_fake/requests")) for fake in blog_fakes[:workers]]
    try:
        for process in processes:
            await process.start()

        async def ready() -> bool:
            for process in processes:
                process.check_alive()
            return all("blog worker running" in process.output() for process in processes)

        await wait_until(ready, within=60, interval=0.2)
        meter = CpuMeter(
            {**cpu_groups, "workers": [p.process.pid for p in processes if p.process is not None]}
        )
        meter.start()

        async def invoke(number: int) -> tuple[str, str]:
            guild = guilds[number]
            body = {
                "channel_id": guild["channels"]["general"],
                "user_id": state["users"][USERS[number % len(USERS)]],
                "command": "blog new",
                "options": {"topic": f"scale topic {workers}-{number}", "target_length": 300},
            }
            result = await emulator.post("/_emulator/interactions", body)
            return str(result["interaction_id"]), str(guild["channels"]["general"])

        sent = await asyncio.gather(*(invoke(n) for n in range(jobs)))
        # Read the interaction records after Discord's 3 s window: polling meanwhile would load the
        # emulator, which timestamps the very callbacks being measured.
        await asyncio.sleep(3.5)
        records = [await emulator.get(f"/_emulator/interactions/{i}") for i, _ in sent]
        unanswered = [r for r in records if not r["callbacks"]]
        acks = [(r["callbacks"][0]["at"] - r["dispatched_at"]) * 1000 for r in records if r["callbacks"]]
        first_dispatch = min(r["dispatched_at"] for r in records)

        connection = await asyncpg.connect(database)
        try:

            async def finished() -> bool:
                for process in processes:
                    process.check_alive()
                left = await connection.fetchval(
                    "SELECT count(*) FROM jobs WHERE state NOT IN ('delivered', 'failed', 'cancelled')"
                )
                return bool(left == 0)

            await wait_until(finished, within=600, interval=0.5)
            failed = await connection.fetchval("SELECT count(*) FROM jobs WHERE state != 'delivered'")
        finally:
            await connection.close()
        cpu = meter.stop()
        posted: list[float] = []
        for _, channel_id in sent:
            for message in await emulator.get(f"/_emulator/channels/{channel_id}/messages"):
                if any(a["filename"].endswith(".md") for a in message["attachments"]):
                    posted.append(message["history"][0]["at"])
        generations: list[list[dict[str, Any]]] = []
        for fake, before in zip(blog_fakes[:workers], requests_before, strict=True):
            records_here = (await fake.get("/_fake/requests"))[before:]
            generations.append([r for r in records_here if r["path"] in GENERATION_PATHS])
    finally:
        await asyncio.gather(*(process.terminate() for process in processes))
    span = max(posted) - first_dispatch
    return {
        "workers": workers,
        "jobs": jobs,
        "jobs_posted": len(posted),
        "jobs_not_delivered_total": failed,
        "unanswered_interactions": len(unanswered),
        "seconds": span,
        "jobs_per_minute": len(posted) / span * 60,
        "model_requests_per_worker": [len(rows) for rows in generations],
        # How long the first job waited for a worker to ask the model, and the model time per request.
        "first_model_request_after_dispatch_s": min(
            (r["received_at"] for rows in generations for r in rows), default=first_dispatch
        )
        - first_dispatch,
        "model_seconds_p50": percentile(
            [r["finished_at"] - r["received_at"] for rows in generations for r in rows if r["finished_at"]]
            or [0.0],
            0.5,
        ),
        "jobs_per_shard": {
            str(s): sum(1 for g in guilds[:jobs] if shard_of(g["id"]) == s) for s in range(SHARD_COUNT)
        },
        "ack_ms": acks,
        "ack_p50_ms": percentile(acks, 0.5),
        "ack_p99_ms": percentile(acks, 0.99),
        "cpu": cpu,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    article = "# Bench Post\n\n" + "word " * args.article_words  # over half the 300-word target: done
    job_seconds = (args.article_words + 4) / args.blog_tps
    with (
        postgres_server("benchpg") as postgres,
        tempfile.TemporaryDirectory() as scratch_name,
    ):
        scratch = Path(args.logs or scratch_name)
        await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
        emulator = DiscordEmulatorProcess(
            "--guilds", str(args.guilds), "--max-concurrency", str(args.max_concurrency)
        )
        chat = FakeOllamaProcess(
            [CHAT_MODEL, BLOG_MODEL], "--tokens-per-second", str(args.chat_tps), "--num-parallel", "8"
        )
        # The model side is not the bottleneck: one fake per worker process, a slot per blog worker slot.
        blog_fakes = [
            FakeOllamaProcess(
                [BLOG_MODEL], "--tokens-per-second", str(args.blog_tps), "--num-parallel", str(args.slots)
            )
            for _ in range(args.max_workers)
        ]
        async with (
            fresh_database(postgres.url) as database,
            emulator,
            chat,
            contextlib.AsyncExitStack() as stack,
        ):
            for fake in blog_fakes:
                await stack.enter_async_context(fake)
            config = scratch / "gateway.toml"
            config.write_text(gateway_config(emulator.url, chat.url, database))
            gateways = [
                BotProcess(
                    ["gateway", "--shards", shards, "--shard-count", str(SHARD_COUNT)],
                    config,
                    scratch / f"gateway{index}.log",
                    token=TOKEN,
                )
                for index, shards in enumerate(GATEWAY_SHARDS)
            ]
            try:
                connect_started = time.monotonic()
                for gateway in gateways:
                    await gateway.start()

                async def all_shards() -> dict[str, Any] | None:
                    for gateway in gateways:
                        gateway.check_alive()
                    state: dict[str, Any] = await emulator.get("/_emulator/state")
                    shards = {tuple(s.get("shard") or ()) for s in state["sessions"]}
                    wanted = {(shard, SHARD_COUNT) for shard in range(SHARD_COUNT)}
                    return state if shards >= wanted and state["commands"] else None

                state = await wait_until(all_shards, within=120, interval=0.5)
                await asyncio.sleep(1.0)  # let discord.py finish its READY handling (guild_ready_timeout)
                connected_seconds = time.monotonic() - connect_started
                print(f"4 shards connected in {connected_seconds:.1f} s ({len(state['guilds'])} guilds)")

                guilds = state["guilds"][1:]  # the first is the emulator's own, with its extra channels
                by_shard: dict[int, list[dict[str, Any]]] = {s: [] for s in range(SHARD_COUNT)}
                for guild in guilds:
                    by_shard[shard_of(guild["id"])].append(guild)
                chat_guilds = {s: rows[: args.chat_per_shard] for s, rows in by_shard.items()}
                used = {g["id"] for rows in chat_guilds.values() for g in rows}
                free = [g for g in guilds if g["id"] not in used]

                chat_result = await chat_phase(
                    emulator, chat, state, chat_guilds, args.chat_per_shard, args.chat_tokens
                )
                print_chat(chat_result)

                cpu_groups = {
                    "gateways": [g.process.pid for g in gateways if g.process is not None],
                    "emulator": [emulator._process.pid] if emulator._process else [],
                    "fake_models": [f._process.pid for f in (chat, *blog_fakes) if f._process],
                }
                if (postmaster := postmaster_pid(postgres)) is not None:
                    cpu_groups["postgresql"] = [postmaster]
                runs = []
                offset = 0
                for workers in range(1, args.max_workers + 1):
                    jobs = args.rounds * args.slots * workers
                    if offset + jobs > len(free):
                        raise SystemExit(f"not enough guilds for {jobs} more jobs: raise --guilds")
                    result = await blog_run(
                        workers=workers,
                        slots=args.slots,
                        rounds=args.rounds,
                        article=article,
                        emulator=emulator,
                        blog_fakes=blog_fakes,
                        guilds=free[offset : offset + jobs],
                        state=state,
                        database=database,
                        scratch=scratch,
                        cpu_groups=cpu_groups,
                    )
                    offset += jobs
                    runs.append(result)
                    print_run(result, runs[0], args.slots, job_seconds)
                logged = await emulator.get("/_emulator/requests")
                too_many = [r for r in logged if r["status"] == 429]
                # Which limit each 429 met: writes to its channel in the 5 s before it (Discord's
                # per-channel window), and requests of the token in the second before it (the global 50/s).
                for refused in too_many:
                    channel = (
                        refused["path"].split("/")[2] if refused["path"].startswith("/channels/") else ""
                    )
                    refused["same_channel_writes_5s"] = sum(
                        1
                        for r in logged
                        if r["method"] != "GET"
                        and channel
                        and r["path"].startswith(f"/channels/{channel}/")
                        and refused["at"] - 5 <= r["at"] <= refused["at"]
                    )
                    refused["token_requests_1s"] = sum(
                        1
                        for r in logged
                        if not r["path"].startswith(("/interactions/", "/webhooks/"))
                        and refused["at"] - 1 <= r["at"] <= refused["at"]
                    )
                final_state = await emulator.get("/_emulator/state")
            finally:
                await asyncio.gather(*(gateway.terminate() for gateway in gateways))
    acks = [ack for result in runs for ack in result.pop("ack_ms")]
    base = runs[0]["jobs_per_minute"]
    for result in runs:
        result["ratio_to_linear"] = result["jobs_per_minute"] / (result["workers"] * base)
        result["model_bound_jobs_per_minute"] = result["workers"] * args.slots * 60 / job_seconds
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "parameters": {key: value for key, value in vars(args).items() if not key.startswith("_")},
        "shards": SHARD_COUNT,
        "gateway_processes": list(GATEWAY_SHARDS),
        "gateways_connected_seconds": connected_seconds,
        "identify_refusals": len(final_state.get("identify_refusals", [])),
        "model_side": (
            f"one fake model server per worker process, {args.slots} parallel slots each "
            f"(= blog.workers), {args.blog_tps:g} tokens/s per request, every article "
            f"{args.article_words} words: {job_seconds:.1f} s of model time per job"
        ),
        "chat": chat_result,
        "blog_ack": {
            "invocations": len(acks),
            "ack_p50_ms": percentile(acks, 0.5),
            "ack_p99_ms": percentile(acks, 0.99),
            "ack_max_ms": max(acks),
        },
        "blog_throughput": runs,
        "http_429": len(too_many),
        "http_429_routes": dict(Counter(r["route"] for r in too_many)),
        "http_429_details": [
            {key: r[key] for key in ("route", "path", "same_channel_writes_5s", "token_requests_1s")}
            for r in too_many
        ],
        "run_seconds": time.monotonic() - started,
    }


def print_chat(result: dict[str, Any]) -> None:
    print(f"(1) chat first text − first token ({result['tokens']}-token replies), per shard:")
    for shard, row in result["per_shard"].items():
        print(
            f"    shard {shard}: {row['replies']} replies, p50 {row['first_text_p50_ms']:.0f} ms, "
            f"p95 {row['first_text_p95_ms']:.0f} ms, max {row['first_text_max_ms']:.0f} ms"
        )
    row = result["all"]
    print(
        f"    all: p50 {row['first_text_p50_ms']:.0f} ms, p95 {row['first_text_p95_ms']:.0f} ms "
        "(goal p50 ≤ 50 ms)"
    )


def print_run(result: dict[str, Any], first: dict[str, Any], slots: int, job_seconds: float) -> None:
    ratio = result["jobs_per_minute"] / (result["workers"] * first["jobs_per_minute"])
    ceiling = result["workers"] * slots * 60 / job_seconds
    cpu = result["cpu"]
    cores = ", ".join(f"{name} {value:.2f}" for name, value in cpu["cores_used"].items())
    print(
        f"(3) {result['workers']} worker process(es): {result['jobs_posted']}/{result['jobs']} jobs in "
        f"{result['seconds']:.1f} s = {result['jobs_per_minute']:.1f} jobs/min, {ratio:.2f}× linear "
        f"(model-bound ceiling {ceiling:.0f} jobs/min); model requests per worker "
        f"{result['model_requests_per_worker']}"
    )
    print(
        f"    /blog new burst of {result['jobs']}: ack p50 {result['ack_p50_ms']:.0f} ms, "
        f"p99 {result['ack_p99_ms']:.0f} ms"
    )
    print(
        f"    first model request {result['first_model_request_after_dispatch_s']:.1f} s after the first "
        f"dispatch; model time per request p50 {result['model_seconds_p50']:.1f} s"
    )
    print(f"    CPU cores used: {cores}; machine busy {cpu['machine_busy_percent']:.0f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guilds", type=int, default=2000)
    parser.add_argument("--max-workers", type=int, default=4, help="runs with 1..N worker processes")
    parser.add_argument("--slots", type=int, default=4, help="blog.workers of each worker process")
    parser.add_argument("--rounds", type=int, default=3, help="jobs per run = rounds × slots × workers")
    parser.add_argument("--article-words", type=int, default=200, help="tokens of every article")
    parser.add_argument("--blog-tps", type=float, default=50.0, help="tokens/s of each blog request")
    parser.add_argument("--chat-per-shard", type=int, default=5)
    parser.add_argument("--chat-tokens", type=int, default=60)
    parser.add_argument("--chat-tps", type=float, default=40.0)
    parser.add_argument(
        "--max-concurrency", type=int, default=4, help="the emulator's IDENTIFY buckets (Discord: 1–16)"
    )
    parser.add_argument("--logs", help="keep the configs and the bot processes' logs in this directory")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    ack = results["blog_ack"]
    print(
        f"(2) /blog new acknowledgement (dispatch → first callback), {ack['invocations']} invocations in "
        f"bursts: p50 {ack['ack_p50_ms']:.0f} ms, p99 {ack['ack_p99_ms']:.0f} ms, max "
        f"{ack['ack_max_ms']:.0f} ms (goal: well under 3 s)"
    )
    print(
        f"429 responses: {results['http_429']}; IDENTIFY refusals: {results['identify_refusals']}; "
        f"run time {results['run_seconds']:.0f} s on {results['machine']['cpus']} CPU(s)"
    )
    for route, count in results["http_429_routes"].items():
        print(f"    429 × {count}: {route}")
    for refused in results["http_429_details"]:
        print(
            f"      {refused['path']}: {refused['same_channel_writes_5s']} writes to that channel in the 5 s "
            f"before, {refused['token_requests_1s']} requests of the token in the second before"
        )
    write_results("scale", results)


if __name__ == "__main__":
    main()
