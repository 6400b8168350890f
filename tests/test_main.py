"""The command line as an operator meets it: exit codes and one-line errors, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_bot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_check_config_accepts_the_example() -> None:
    result = run_bot("--config", "config.example.toml", "--check-config")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_typo_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("[chat]\ntemprature = 0.5\n")
    result = run_bot("--config", str(bad), "--check-config")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "chat.temprature" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_token_exits_2_with_a_clear_line() -> None:
    result = run_bot("--config", "config.example.toml")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: DISCORD_TOKEN is not set: export the bot token from the Discord developer portal "
        "(Bot → Reset Token) as DISCORD_TOKEN"
    ]


def test_token_in_file_is_not_echoed_by_errors(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("[discord]\ntoken = 'SECRET-TOKEN-123456'\napi_base = 'nope'\n")
    result = run_bot("--config", str(bad))
    assert result.returncode == 2
    assert "SECRET-TOKEN" not in result.stderr + result.stdout


async def test_sigterm_stops_cleanly_puts_the_job_back_and_restart_does_not_resync(
    tmp_path: Path, emulator: Any, discord_api: Any
) -> None:
    import asyncio
    import contextlib
    import signal
    import sqlite3

    from tests.fakes.ollama_server import FakeOllamaServer
    from tests.harness import TOKEN, wait_until

    database = tmp_path / "bot.sqlite3"
    config = tmp_path / "config.toml"
    async with FakeOllamaServer(models=["mistral:latest"], tokens_per_second=20) as slow:
        slow.script("mistral:latest", ["word " * 2000])
        config.write_text(
            f'[discord]\napi_base = "{emulator.api_base}"\ngateway_url = "{emulator.gateway_url}"\n'
            f'guild_ready_timeout = 0.05\n[database]\npath = "{database}"\n[[backends]]\nurl = "{slow.url}"\n'
        )
        environment = {**os.environ, "DISCORD_TOKEN": TOKEN}

        async def start() -> asyncio.subprocess.Process:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "--config",
                str(config),
                cwd=ROOT,
                env=environment,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            await wait_until(lambda: _connected(discord_api), within=20)
            return process

        async def command_syncs() -> int:
            return len(
                [r for r in await discord_api.requests() if r["method"] == "PUT" and "commands" in r["path"]]
            )

        bot = await start()
        # A note lives 15 s: stopping before it is deleted must not leave a failing task behind.
        empty = await discord_api.mention("general", "bob", "")
        await wait_until(lambda: _replied(discord_api, empty["id"]), within=10)
        invocation = await discord_api.invoke("general", "alice", "blog new", topic="interrupted")
        await discord_api.answered(invocation["interaction_id"])
        await wait_until(lambda: _true(any(r["first_token_at"] for r in slow.requests)), within=10)
        bot.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(bot.communicate(), 20)
        assert bot.returncode == 0, output.decode()[-2000:]
        assert b"Traceback" not in output, output.decode()[-3000:]
        await wait_until(lambda: _true(slow.requests[-1]["disconnected"]), within=5)
        with contextlib.closing(sqlite3.connect(database)) as connection:
            state, attempts = connection.execute("SELECT state, attempts FROM jobs WHERE id = 1").fetchone()
        assert (state, attempts) == ("queued", 0), "the job went back to the queue without losing an attempt"
        assert await command_syncs() == 1
        await wait_until(lambda: _disconnected(discord_api), within=10)
        again = await start()
        again.send_signal(signal.SIGTERM)
        await asyncio.wait_for(again.communicate(), 20)
        assert await command_syncs() == 1, "an unchanged command set is not synced again"


async def _connected(api: Any) -> bool:
    return bool((await api.refresh())["sessions"])


async def _replied(api: Any, message_id: str) -> bool:
    return any(
        (m.get("message_reference") or {}).get("message_id") == message_id
        for m in await api.bot_replies("general")
    )


async def _disconnected(api: Any) -> bool:
    return not (await api.refresh())["sessions"]


async def _true(value: object) -> bool:
    return bool(value)


def test_unreachable_discord_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[discord]\napi_base = "http://127.0.0.1:9/api/v10"\ngateway_url = "ws://127.0.0.1:9/"\n'
        f'[database]\npath = "{tmp_path / "bot.sqlite3"}"\n[[backends]]\nurl = "http://127.0.0.1:9"\n'
    )
    result = run_bot("--config", str(config), env={"DISCORD_TOKEN": "not-a-real-token"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert "cannot reach Discord at http://127.0.0.1:9/api/v10" in errors[0]
    assert "voice will NOT be supported" not in result.stderr


def test_a_database_path_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\npath = "{tmp_path / "missing" / "bot.sqlite3"}"\n')
    result = run_bot("--config", str(config), env={"DISCORD_TOKEN": "not-a-real-token"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "database.path: cannot open" in result.stderr and "Traceback" not in result.stderr


def test_a_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(
            f'[database]\npath = "{tmp_path / "bot.sqlite3"}"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
        )
        result = run_bot("--config", str(config), env={"DISCORD_TOKEN": "not-a-real-token"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"metrics.listen: cannot listen on 127.0.0.1:{port}" in errors[0], errors
