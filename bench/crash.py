"""Longer crash run: the bot SIGKILLed many times while 20+ blog jobs run; every job must be posted once.
Then one long job killed at random moments while it is written: how many tokens each kill cost (written
again after the restart), against the goal of less than one heartbeat interval's worth.

python -m bench.crash [--jobs 20] [--kills 15] [--checkpoint-kills 5] [--seed N]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
from pathlib import Path

import httpx

from bench.common import write_results
from tests.crashes import CheckpointReport, run_checkpoint_scenario, run_crash_scenario
from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl

CHECKPOINT_RATE = 100  # tokens/s of the fake model in the checkpoint run


async def main(jobs: int, kills: int, checkpoint_kills: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        async with (
            DiscordEmulator() as emulator,
            FakeOllamaServer(models=["mistral:latest"], tokens_per_second=150, num_parallel=2) as ollama,
            httpx.AsyncClient(timeout=30) as http,
        ):
            api = EmulatorControl(emulator.url, http)
            await api.refresh()
            report = await run_crash_scenario(
                Path(scratch), emulator, ollama, api, jobs=jobs, kills=kills, seed=seed, within=600
            )
    duplicates = {job: n for job, n in report.files_per_job.items() if n > 1}
    missing = [job for job in report.states if report.files_per_job.get(job, 0) == 0]
    stuck = {job: state for job, state in report.states.items() if state != "delivered"}
    print(
        f"{report.jobs} jobs, {report.restarts} SIGKILL + restart cycles "
        f"(aimed kill between posting and recording: {'yes' if report.targeted_kill else 'no'}), "
        f"{report.seconds:.1f} s"
    )
    print(
        f"delivered exactly once: {sum(1 for n in report.files_per_job.values() if n == 1)}/{report.jobs}; "
        f"duplicates: {duplicates or 'none'}; missing: {missing or 'none'}; not delivered: {stuck or 'none'}"
    )
    checkpoint = await checkpoint_run(checkpoint_kills, seed)
    regenerated = [kill.regenerated for kill in checkpoint.kills]
    print(
        f"checkpoints: {len(checkpoint.kills)} kills while writing (job {checkpoint.state}); tokens written "
        f"again per kill: {regenerated} (max {max(regenerated, default=0)}, mean "
        f"{sum(regenerated) / max(1, len(regenerated)):.0f}); goal < {checkpoint.tokens_per_heartbeat:.0f} "
        f"(one heartbeat at {CHECKPOINT_RATE} tokens/s)"
    )
    results = dataclasses.asdict(report)
    results["delivered_exactly_once"] = report.delivered_exactly_once
    results["checkpoint"] = {
        "kills": len(checkpoint.kills),
        "state": checkpoint.state,
        "regenerated_tokens_per_kill": regenerated,
        "tokens_per_heartbeat": checkpoint.tokens_per_heartbeat,
        "seconds": checkpoint.seconds,
    }
    write_results("crash", results)
    if not report.delivered_exactly_once or checkpoint.state != "delivered":
        raise SystemExit(1)


async def checkpoint_run(kills: int, seed: int) -> CheckpointReport:
    with tempfile.TemporaryDirectory() as scratch:
        async with (
            DiscordEmulator() as emulator,
            FakeOllamaServer(models=["mistral:latest"], tokens_per_second=CHECKPOINT_RATE) as ollama,
            httpx.AsyncClient(timeout=30) as http,
        ):
            api = EmulatorControl(emulator.url, http)
            await api.refresh()
            return await run_checkpoint_scenario(
                Path(scratch),
                emulator,
                ollama,
                api,
                tokens_per_second=CHECKPOINT_RATE,
                kills=kills,
                seed=seed,
                target_length=1500,
                within=600,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--kills", type=int, default=15)
    parser.add_argument("--checkpoint-kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.jobs, arguments.kills, arguments.checkpoint_kills, arguments.seed))
