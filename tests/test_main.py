"""The command line as an operator meets it: exit codes and one-line errors, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
