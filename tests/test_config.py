"""Config loading: every key validated, errors name the key, the token never leaks."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from bot.config import (
    BackendConfig,
    BlogConfig,
    ChatConfig,
    Config,
    DatabaseConfig,
    DiscordConfig,
    LoggingConfig,
    MetricsConfig,
    load_config,
    resolve_token,
)
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_loads_with_the_contract_keys() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert config.discord.api_base == "https://discord.com/api/v10"
    assert config.discord.gateway_url == "wss://gateway.discord.gg/"
    assert config.discord.command_guild_ids == ()
    assert config.database.path == "bot.sqlite3"
    assert [(b.url, b.max_concurrent) for b in config.backends] == [("http://localhost:11434", 1)]
    assert (config.chat.model, config.chat.temperature, config.chat.max_tokens) == ("llama2", 0.7, 500)
    assert config.blog.model == "mistral:latest"


def _keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(f.type)]


def test_the_example_and_the_readme_show_every_key_with_its_default() -> None:
    raw = tomllib.loads((ROOT / "config.example.toml").read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sections = {"discord": DiscordConfig, "database": DatabaseConfig, "chat": ChatConfig, "blog": BlogConfig}
    sections["logging"] = LoggingConfig
    sections["metrics"] = MetricsConfig
    for name, cls in sections.items():
        written = set(raw.get(name, {}))
        if name == "discord":
            written.add("token")  # shown commented out: the token belongs in the environment
        assert set(_keys(cls)) == written, f"[{name}] in config.example.toml"
        for key in _keys(cls):
            assert f"`{name}.{key}`" in readme, f"{name}.{key} missing from the README"
    assert set(_keys(BackendConfig)) == set(raw["backends"][0]), "[[backends]] in config.example.toml"
    for key in _keys(BackendConfig):
        assert f"`backends[].{key}`" in readme, f"backends[].{key} missing from the README"
    example = load_config(ROOT / "config.example.toml")
    assert example == Config(), "the example shows the defaults"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_database_url_defaults_to_the_sqlite_path(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).database.resolved_url == "sqlite:///bot.sqlite3"
    moved = load_config(write(tmp_path, "[database]\npath = '/data/bot.sqlite3'\n"))
    assert moved.database.resolved_url == "sqlite:////data/bot.sqlite3"
    for url in ("postgresql://bot:pw@db:5432/bot", "postgres://db/bot", "sqlite:///x.db"):
        config = load_config(write(tmp_path, f"[database]\nurl = '{url}'\n"))
        assert config.database.resolved_url == url and "pw" not in repr(config)


def test_values_are_converted(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            [discord]
            command_guild_ids = [123, 456]
            [chat]
            temperature = 1          # an integer is a fine float
            [[backends]]
            url = "http://a:11434"
            name = "a"
            [[backends]]
            url = "http://b:8080"
            kind = "openai"
            max_concurrent = 4
            models = ["llama2"]
            """,
        )
    )
    assert config.discord.command_guild_ids == (123, 456)
    assert config.chat.temperature == 1.0 and isinstance(config.chat.temperature, float)
    assert [b.display_name for b in config.backends] == ["a", "b:8080"]
    assert config.backends[1].kind == "openai" and config.backends[1].models == ("llama2",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[chat]\nmodle = 'x'\n", "unknown key chat.modle"),
        ("[chatt]\n", "unknown key chatt"),
        ("[chat]\ntemperature = 'hot'\n", "chat.temperature must be a number, got a string"),
        ("[chat]\ntemperature = 3.5\n", "chat.temperature must be between 0 and 2, got 3.5"),
        ("[chat]\nmax_tokens = 1.5\n", "chat.max_tokens must be an integer, got a number"),
        ("[chat]\nmax_tokens = true\n", "chat.max_tokens must be an integer, got a boolean"),
        ("[chat]\nallow_dms = 1\n", "chat.allow_dms must be true or false, got an integer"),
        ("[discord]\ncommand_guild_ids = 5\n", "discord.command_guild_ids must be an array"),
        ("[discord]\ncommand_guild_ids = ['x']\n", "discord.command_guild_ids[0] must be an integer"),
        ("[discord]\napi_base = 'discord.com'\n", "discord.api_base must be a URL starting with http://"),
        ("[discord]\ngateway_url = 'http://x/'\n", "discord.gateway_url must be a URL starting with ws://"),
        ("[[backends]]\nmax_concurrent = 2\n", "backends[0].url is required"),
        (
            "[[backends]]\nurl = 'http://a'\nkind = 'vllm'\n",
            "backends[0].kind must be one of 'ollama', 'openai'",
        ),
        (
            "[[backends]]\nurl = 'http://a'\nmax_concurrent = 0\n",
            "backends[0].max_concurrent must be between 1",
        ),
        ("backends = []\n", "backends needs at least one"),
        ("[[backends]]\nurl = 'http://a'\n[[backends]]\nurl = 'http://a'\n", "'a' is used twice"),
        ("chat = 3\n", "chat must be a table"),
        ("[logging]\nlevel = 'LOUD'\n", "logging.level must be one of"),
        ("[metrics]\nlisten = '9108'\n", 'metrics.listen must be "host:port"'),
        ("[database]\nurl = 'mysql://bot@db/bot'\n", "database.url must be"),
        ("[database]\nurl = 'sqlite://bot.sqlite3'\n", "database.url must be"),
        ("[database]\nurl = 'postgresql:// bot:secret@db'\n", "postgresql:// bot:***@db"),
        ("[chat\n", "invalid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_token_prefers_environment_and_is_never_in_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[discord]\ntoken = 'file-token-abcdefgh'\n"))
    assert resolve_token(config, {"DISCORD_TOKEN": "env-token-abcdefgh"}) == "env-token-abcdefgh"
    assert resolve_token(config, {}) == "file-token-abcdefgh"
    assert "file-token" not in repr(config)
    with pytest.raises(ConfigError, match="DISCORD_TOKEN is not set"):
        resolve_token(Config(), {"DISCORD_TOKEN": "  "})
