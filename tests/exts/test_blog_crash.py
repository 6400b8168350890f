"""Crash test: the bot (a real subprocess) is SIGKILLed repeatedly; every job is posted exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crashes import run_crash_scenario
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
