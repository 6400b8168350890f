"""The container set-up cannot run here (no Docker engine): check that it is well-formed and agrees with
the project (the files it copies exist, it runs the bot the README's way, the config it mounts is the
example's shape)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from bot.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_parses_and_runs_the_bot_beside_ollama() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"bot", "ollama", "postgres"}
    # PostgreSQL is optional: only `docker compose --profile postgres up` starts it.
    assert services["postgres"]["profiles"] == ["postgres"] and "profiles" not in services["bot"]
    bot = services["bot"]
    assert bot["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert "DISCORD_TOKEN" in bot["environment"], "the token comes from the environment"
    assert "./config.toml:/app/config.toml:ro" in bot["volumes"]
    assert services["ollama"]["image"].startswith("ollama/ollama")
    # The health check asks the endpoint the comment's metrics.listen serves.
    assert "http://127.0.0.1:9108/healthz" in " ".join(bot["healthcheck"]["test"])
    named = {volume.split(":")[0] for service in services.values() for volume in service.get("volumes", [])}
    assert {name for name in named if not name.startswith(".")} <= set(compose["volumes"])


def test_dockerfile_copies_files_that_exist_and_runs_python_m_bot() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0].startswith("FROM python:3.1")
    for line in instructions:
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            assert all((ROOT / source).exists() for source in sources), line
    assert instructions[-1] == 'CMD ["python", "-m", "bot", "--config", "/app/config.toml"]'
    assert any(line.startswith("USER ") and "root" not in line for line in instructions)


def test_the_config_the_compose_comment_describes_is_valid(tmp_path: Path) -> None:
    """The example config with the two changes compose.yaml's comment asks for loads cleanly."""
    text = (ROOT / "config.example.toml").read_text()
    assert re.search(r'^url = "http://localhost:11434"', text, re.MULTILINE)
    text = re.sub(r'^url = "http://localhost:11434"', 'url = "http://ollama:11434"', text, flags=re.M)
    text = re.sub(r"^path = .*$", 'path = "/data/bot.sqlite3"', text, count=1, flags=re.M)
    text = re.sub(r'^listen = ""', 'listen = "127.0.0.1:9108"', text, count=1, flags=re.M)
    config_path = tmp_path / "config.toml"
    config_path.write_text(text)
    tomllib.loads(text)
    config = load_config(str(config_path))
    assert config.backends[0].url == "http://ollama:11434"
    assert config.database.path == "/data/bot.sqlite3"
    assert config.metrics.listen == "127.0.0.1:9108"


def test_the_postgres_url_the_compose_comment_gives_is_valid(tmp_path: Path) -> None:
    comment = (ROOT / "compose.yaml").read_text()
    [url] = re.findall(r'url = "(postgresql://[^"]+)"', comment)
    text = re.sub(
        r'^url = ""', f'url = "{url}"', (ROOT / "config.example.toml").read_text(), count=1, flags=re.M
    )
    config_path = tmp_path / "config.toml"
    config_path.write_text(text)
    assert load_config(str(config_path)).database.resolved_url == url
