"""Crash test: the bot (a real subprocess) is SIGKILLed repeatedly; every job is posted exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crashes import run_checkpoint_scenario, run_crash_scenario
from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl


@pytest.mark.timeout(180)
async def test_every_job_is_delivered_exactly_once_through_sigkills(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"], tokens_per_second=150, num_parallel=2) as ollama:
        report = await run_crash_scenario(tmp_path, emulator, ollama, discord_api, jobs=20, kills=4, seed=7)
    assert report.targeted_kill, "the kill between posting and recording did not happen"
    assert len(report.states) == 20, report.log_tail
    assert report.delivered_exactly_once, (report.files_per_job, report.states, report.log_tail)


@pytest.mark.timeout(180)
async def test_a_job_killed_while_writing_continues_from_its_last_heartbeat(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    rate = 100
    async with FakeOllamaServer(models=["mistral:latest"], tokens_per_second=rate) as ollama:
        report = await run_checkpoint_scenario(
            tmp_path, emulator, ollama, discord_api, tokens_per_second=rate, kills=3, seed=11
        )
    assert report.state == "delivered", report.log_tail
    assert len(report.kills) == 3, (report.kills, report.log_tail)
    for kill in report.kills:
        # Resumed, not restarted: at most the text since the last heartbeat is written again (the
        # heartbeat's figures are in bench/crash.py; here the bound has room for a slow machine).
        assert kill.kept > 0 and kill.regenerated <= 2 * report.tokens_per_heartbeat, report.kills
    (post,) = report.articles
    body = post["attachments"][0]["text"].split("---\n", 2)[2]
    # One article: the title only in the front matter, every part once and in order, one conclusion.
    headings = [line for line in body.splitlines() if line.startswith("#")]
    assert headings == [*(f"## Part {n}" for n in range(1, len(headings))), "## Conclusion"], headings
    assert "Incomplete" not in post["content"]
