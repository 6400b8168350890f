"""The blog crash scenario, shared by ``tests/exts/test_blog_crash.py`` and ``bench/crash.py``.

The bot runs as a real ``python -m bot`` subprocess against the Discord emulator and the fake Ollama
server (both in this process). After every job is acknowledged, the bot is killed with SIGKILL at random
moments and restarted on the same database, until every job has ended. One kill is aimed at the worst
moment: the article's message has been created on Discord but the bot has not yet seen the reply (the
emulator holds the response), so the bot cannot have recorded it.

The verdict comes from the outside: the emulator's channel (how many article files each job got) and the
SQLite file (every job in a terminal state, none stuck running).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import sqlite3
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer, tokenize
from tests.harness import TOKEN, EmulatorControl, config_toml, wait_until

ROOT = Path(__file__).resolve().parent.parent
JOB_MARKER = re.compile(r"^📝 Blog post #(\d+) ")


@dataclass
class CrashReport:
    jobs: int
    kills: int
    restarts: int
    targeted_kill: bool
    files_per_job: dict[int, int]
    states: dict[int, str]
    seconds: float
    log_tail: list[str] = field(default_factory=list)

    @property
    def delivered_exactly_once(self) -> bool:
        return all(self.files_per_job.get(job_id) == 1 for job_id in self.states) and all(
            state == "delivered" for state in self.states.values()
        )


def config_text(emulator_url: str, ollama_url: str, database: Path) -> str:
    blog = {
        "workers": 2,
        "lease_seconds": 5.0,
        "progress_interval": 0.5,
        "retry_base_seconds": 0.2,
        "max_queued_per_user": 20,
        "max_queued_per_guild": 100,
    }
    return config_toml(emulator_url, ollama_url, database, backend={"max_concurrent": 2}, blog=blog)


class BotProcess:
    """``python -m bot`` in a subprocess whose output is kept for the report."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self._config_path = config_path
        self._log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        environment = {**os.environ, "DISCORD_TOKEN": TOKEN}
        with self._log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "--config",
                str(self._config_path),
                cwd=ROOT,
                env=environment,
                stdout=log,
                stderr=log,
            )

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    def tail(self, lines: int = 30) -> list[str]:
        return self._log_path.read_text(errors="replace").splitlines()[-lines:]


async def run_crash_scenario(
    workdir: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    api: EmulatorControl,
    *,
    jobs: int = 20,
    kills: int = 5,
    seed: int = 0,
    within: float = 120.0,
) -> CrashReport:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    started = loop.time()
    database = workdir / "crash.sqlite3"
    config_path = workdir / "crash.toml"
    config_path.write_text(config_text(emulator.url, ollama.url, database))
    bot = BotProcess(config_path, workdir / "bot.log")
    article = "# Crash Course\n\n" + " ".join(f"word{i}" for i in range(60))
    ollama.script("mistral:latest", [article] * (jobs * 3))

    await bot.start()
    restarts = 0
    try:
        await wait_until(lambda: _commands_synced(api), within=30)
        acknowledged = 0
        users = ("alice", "bob", "mod")
        for number in range(jobs):
            invocation = await api.invoke(
                "general", users[number % 3], "blog new", topic=f"crash topic {number}", target_length=300
            )
            record = await api.answered(invocation["interaction_id"])
            acknowledged += record["callbacks"][0]["type"] == 4
        assert acknowledged == jobs, f"only {acknowledged} of {jobs} jobs were acknowledged"

        # The aimed kill: hold the article's create response so the message exists but the bot can't know.
        await api.fault(
            kind="delay", method="POST", path="/channels/*/messages", seconds=3.0, count=1, attachments=True
        )
        targeted = False
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: _articles(api), within=30)
            targeted = True
        await bot.kill()
        await bot.start()
        restarts += 1

        for _ in range(kills - 1):
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            await bot.kill()
            await bot.start()
            restarts += 1
        await wait_until(lambda: _all_finished(database, jobs), within=within)
    finally:
        tail = bot.tail()
        await bot.kill()

    files: dict[int, int] = {}
    for message in await api.bot_replies("general"):
        match = JOB_MARKER.match(message["content"])
        if match and any(a["filename"].endswith(".md") for a in message["attachments"]):
            files[int(match.group(1))] = files.get(int(match.group(1)), 0) + 1
    return CrashReport(
        jobs=jobs,
        kills=kills,
        restarts=restarts,
        targeted_kill=targeted,
        files_per_job=files,
        states=_states(database),
        seconds=loop.time() - started,
        log_tail=tail,
    )


async def _commands_synced(api: EmulatorControl) -> bool:
    state = await api.refresh()
    return any(command["name"] == "blog" for command in state["commands"]) and bool(state["sessions"])


async def _articles(api: EmulatorControl) -> list[Any]:
    return [m for m in await api.bot_replies("general") if m["attachments"]]


def _states(database: Path) -> dict[int, str]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return dict(connection.execute("SELECT id, state FROM jobs").fetchall())


async def _all_finished(database: Path, jobs: int) -> bool:
    states = _states(database)
    return len(states) == jobs and all(
        state in ("delivered", "failed", "cancelled") for state in states.values()
    )


@dataclass
class Kill:
    """One SIGKILL during a generation: tokens the model had sent in the killed request, and how many of
    them the next request carried back as the text so far (the rest were written again)."""

    sent: int
    kept: int

    @property
    def regenerated(self) -> int:
        return max(0, self.sent - self.kept)


@dataclass
class CheckpointReport:
    kills: list[Kill]
    #: Tokens the model writes in one heartbeat interval: the most a kill may cost.
    tokens_per_heartbeat: float
    requests: int
    state: str
    articles: list[dict[str, Any]]
    seconds: float
    log_tail: list[str] = field(default_factory=list)


async def run_checkpoint_scenario(
    workdir: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    api: EmulatorControl,
    *,
    tokens_per_second: float,
    kills: int = 3,
    seed: int = 0,
    target_length: int = 1000,
    within: float = 120.0,
) -> CheckpointReport:
    """One long job; the bot is SIGKILLed ``kills`` times at random moments while the model writes, and
    restarted. Every restart must continue from the text saved by the last heartbeat."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    started = loop.time()
    database = workdir / "checkpoint.sqlite3"
    config_path = workdir / "checkpoint.toml"
    # Every crash costs the job an attempt (a job that keeps killing the bot must end): allow them all.
    blog = {
        "workers": 1,
        "lease_seconds": 5.0,
        "progress_interval": 0.5,
        "retry_base_seconds": 0.2,
        "max_attempts": kills + 2,
    }
    config_path.write_text(config_toml(emulator.url, ollama.url, database, blog=blog))
    heartbeat = min(float(blog["lease_seconds"]) / 3, float(blog["progress_interval"]))
    bot = BotProcess(config_path, workdir / "bot.log")
    await bot.start()
    try:
        await wait_until(lambda: _commands_synced(api), within=30)
        seen = len(ollama.requests)
        invocation = await api.invoke(
            "general", "alice", "blog new", topic="the long history of owls", target_length=target_length
        )
        await api.answered(invocation["interaction_id"])
        for _ in range(kills):
            # A random moment while it writes (not before it has written a few tokens).
            await wait_until(partial(_writing, ollama, after=seen, tokens=20), within=30)
            await asyncio.sleep(rng.uniform(0.0, 3 * heartbeat))
            await bot.kill()
            seen = len(ollama.requests)
            await bot.start()
        await wait_until(lambda: _all_finished(database, 1), within=within)
        articles = await wait_until(lambda: _articles(api), within=30)
    finally:
        tail = bot.tail()
        await bot.kill()

    generations = [r for r in ollama.requests if r["model"] == "mistral:latest"]
    drafts = [_text_so_far(r) for r in generations]
    report_kills = [
        Kill(sent=r["tokens"], kept=len(tokenize(after)) - len(tokenize(before)))
        for r, before, after in zip(generations, drafts, drafts[1:], strict=False)
        if r["disconnected"]
    ]
    return CheckpointReport(
        kills=report_kills,
        tokens_per_heartbeat=tokens_per_second * heartbeat,
        requests=len(generations),
        state=_states(database)[1],
        articles=articles,
        seconds=loop.time() - started,
        log_tail=tail,
    )


async def _writing(ollama: FakeOllamaServer, after: int, tokens: int) -> dict[str, Any] | None:
    """A generation that arrived after the first ``after`` requests, has not ended and has sent at least
    ``tokens`` tokens, if any."""
    return next(
        (
            r
            for r in ollama.requests[after:]
            if r["model"] == "mistral:latest" and r["finished_at"] is None and r["tokens"] >= tokens
        ),
        None,
    )


def _text_so_far(record: dict[str, Any]) -> str:
    """The article text a generation request carried (the assistant's turn of a continuation), or ""."""
    messages = (record["body"] or {}).get("messages") or []
    if len(messages) >= 2 and messages[-2].get("role") == "assistant":
        return str(messages[-2].get("content") or "")
    return ""
