"""Configuration: a TOML file read with :mod:`tomllib` into frozen dataclasses, validated at load.

Every key is declared once, as a dataclass field with its type, default and (in ``metadata``) its allowed
range. :func:`load_config` walks the parsed TOML against those declarations, so an unknown key, a wrong
type or an out-of-range value raises :class:`~bot.errors.ConfigError` with a one-line message naming the key.

The Discord token is deliberately *not* part of the printed or logged configuration: it comes from the
``DISCORD_TOKEN`` environment variable (``[discord] token`` is only a fallback) and its field has
``repr=False``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from bot.engine import redact
from bot.errors import ConfigError

TOKEN_ENV_VAR = "DISCORD_TOKEN"


def _range(low: float | None = None, high: float | None = None) -> dict[str, float | None]:
    return {"min": low, "max": high}


def _url(*schemes: str) -> dict[str, tuple[str, ...]]:
    return {"url_schemes": schemes}


@dataclass(frozen=True)
class DiscordConfig:
    """How to reach Discord (or a REST proxy, or the local emulator) and where commands are synced."""

    api_base: str = field(default="https://discord.com/api/v10", metadata=_url("http", "https"))
    gateway_url: str = field(default="wss://gateway.discord.gg/", metadata=_url("ws", "wss"))
    # Sync slash commands to these guilds (instant); empty means global commands (propagate slowly).
    command_guild_ids: tuple[int, ...] = ()
    # Fallback only: prefer the DISCORD_TOKEN environment variable so the token never sits in a file.
    token: str | None = field(default=None, repr=False)
    # Seconds discord.py waits for guilds after READY; the default 2 s only delays startup.
    guild_ready_timeout: float = field(default=2.0, metadata=_range(0.0, 60.0))


@dataclass(frozen=True)
class DatabaseConfig:
    """The database holding the blog queue and per-server settings: SQLite (default) or PostgreSQL."""

    # "sqlite:///path" or "postgresql://user:password@host:port/database"; empty = "sqlite:///" + path.
    url: str = field(default="", repr=False)  # may hold a password
    path: str = "bot.sqlite3"
    # Finished blog jobs (their articles included: the posts stay on Discord) are deleted after this many
    # days; moderators' audit entries after keep_audit_days. 0 keeps them forever.
    keep_finished_jobs_days: float = field(default=30.0, metadata=_range(0.0, 36500.0))
    keep_audit_days: float = field(default=180.0, metadata=_range(0.0, 36500.0))

    @property
    def resolved_url(self) -> str:
        """The database to open: :attr:`url`, or the SQLite file at :attr:`path`."""
        return self.url or f"sqlite:///{self.path}"


@dataclass(frozen=True)
class BackendConfig:
    """One LLM server in the pool."""

    url: str = field(metadata=_url("http", "https"))
    name: str = ""
    kind: Literal["ollama", "openai"] = "ollama"
    # Requests in flight on this server at once (match OLLAMA_NUM_PARALLEL).
    max_concurrent: int = field(default=1, metadata=_range(1, 64))
    # Models this server serves; empty means "ask the server" (/api/tags or /v1/models).
    models: tuple[str, ...] = ()
    connect_timeout: float = field(default=5.0, metadata=_range(0.1, 120.0))
    # Slots kept free for chat: blog jobs may use at most max_concurrent - reserved_chat_slots (and always 1;
    # on a one-slot server a chat preempts a blog generation instead, which continues afterwards).
    reserved_chat_slots: int = field(default=1, metadata=_range(0, 63))
    # The server's context window in tokens (OpenAI-compatible servers; Ollama uses the num_ctx the bot
    # sends). 0 = ask the server (llama.cpp /props, vLLM max_model_len) or learn it from its refusals.
    context_tokens: int = field(default=0, metadata=_range(0, 10_000_000))
    # Seconds between two health checks of an idle backend (a busy one is healthy by streaming).
    health_interval: float = field(default=15.0, metadata=_range(0.5, 3600.0))
    # Models here that take images. Ollama says so itself (/api/show capabilities), so this is only needed
    # for OpenAI-compatible servers, which have no way to tell: their other models never get images.
    vision_models: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        """The configured name, or the URL's host:port."""
        return self.name or (urlsplit(self.url).netloc or self.url)


@dataclass(frozen=True)
class ChatConfig:
    """Mention-to-reply chat."""

    model: str = "llama2"
    temperature: float = field(default=0.7, metadata=_range(0.0, 2.0))
    # Sent as Ollama's num_predict: the longest reply, in tokens.
    max_tokens: int = field(default=500, metadata=_range(1, 32768))
    # Sent on every call: a changing num_ctx makes Ollama reload the model.
    num_ctx: int = field(default=4096, metadata=_range(256, 262144))
    system_prompt: str = (
        "You are a helpful assistant in the Discord server {server}, channel #{channel}. "
        "Today is {date}. Answer concisely and use Markdown where it helps."
    )
    # Direct messages have no server or channel: their own prompt, with {user} and {date} filled in.
    dm_system_prompt: str = (
        "You are a helpful assistant in a private Discord conversation with {user}. "
        "Today is {date}. Answer concisely and use Markdown where it helps."
    )
    history_messages: int = field(default=20, metadata=_range(0, 100))
    history_chars: int = field(default=12000, metadata=_range(500, 500000))
    # A longer reply is cut after this many messages and attached whole as a file.
    max_reply_messages: int = field(default=4, metadata=_range(2, 20))
    # Minimum seconds between two edits of one streaming message.
    edit_interval: float = field(default=1.2, metadata=_range(0.2, 30.0))
    allow_dms: bool = True
    # Answer a mention in a new thread started from it; the thread is then the conversation.
    reply_in_threads: bool = False
    cooldown_seconds: float = field(default=2.0, metadata=_range(0.0, 3600.0))
    max_streams_per_user: int = field(default=1, metadata=_range(1, 10))
    # Longest wait for a free model slot before the user is told the server is busy.
    queue_timeout: float = field(default=20.0, metadata=_range(0.1, 600.0))
    # Longest prompt accepted from a user, in characters; longer ones are refused before the model.
    max_prompt_chars: int = field(default=6000, metadata=_range(100, 100000))
    first_token_timeout: float = field(default=60.0, metadata=_range(1.0, 3600.0))
    idle_timeout: float = field(default=30.0, metadata=_range(1.0, 3600.0))
    deadline: float = field(default=300.0, metadata=_range(1.0, 86400.0))
    # Attachments read per message (images for vision models, text and code files); 0 = ignore them.
    max_attachments: int = field(default=5, metadata=_range(0, 10))
    # Largest attachment downloaded, in bytes (the download stops there, whatever size Discord says).
    max_attachment_bytes: int = field(default=8 * 1024 * 1024, metadata=_range(1024, 100 * 1024 * 1024))
    # Characters of text files added to one message's prompt, all files together; a file that would go
    # over is left out with a note. Raise it together with num_ctx (about 3 characters a token).
    max_attachment_chars: int = field(default=6000, metadata=_range(0, 1_000_000))
    # Images sent in one prompt, newest first (each costs ~768 tokens of the context window).
    max_images: int = field(default=2, metadata=_range(0, 20))
    # Longest download of one attachment, in seconds.
    attachment_timeout: float = field(default=15.0, metadata=_range(1.0, 300.0))


@dataclass(frozen=True)
class BlogConfig:
    """The /blog generation queue."""

    model: str = "mistral:latest"
    temperature: float = field(default=0.7, metadata=_range(0.0, 2.0))
    num_ctx: int = field(default=8192, metadata=_range(256, 262144))
    max_queued_per_user: int = field(default=3, metadata=_range(1, 1000))
    max_queued_per_guild: int = field(default=20, metadata=_range(1, 100000))
    # Ceiling on unfinished jobs across every server.
    max_queued_total: int = field(default=500, metadata=_range(1, 1000000))
    max_attempts: int = field(default=4, metadata=_range(1, 50))
    # A running job's lease; the worker renews it every third of this while the job runs.
    lease_seconds: float = field(default=60.0, metadata=_range(5.0, 3600.0))
    retry_base_seconds: float = field(default=5.0, metadata=_range(0.0, 3600.0))
    workers: int = field(default=2, metadata=_range(1, 64))
    progress_interval: float = field(default=3.0, metadata=_range(0.5, 300.0))
    first_token_timeout: float = field(default=600.0, metadata=_range(1.0, 86400.0))
    idle_timeout: float = field(default=120.0, metadata=_range(1.0, 86400.0))
    deadline: float = field(default=3600.0, metadata=_range(1.0, 86400.0))
    # Token budget of one generation request; 0 = from the target length (1.5 tokens per word + 200).
    max_tokens: int = field(default=0, metadata=_range(0, 262144))
    # How often an article cut at the budget (or far below its target) is continued before it is posted
    # as it is, marked incomplete.
    max_continuations: int = field(default=3, metadata=_range(0, 20))


@dataclass(frozen=True)
class LoggingConfig:
    """Log output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True)
class MetricsConfig:
    """The operations endpoint (/healthz, /metrics)."""

    # "host:port" to serve /healthz and /metrics on; empty = off.
    listen: str = ""


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    discord: DiscordConfig = DiscordConfig()
    database: DatabaseConfig = DatabaseConfig()
    backends: tuple[BackendConfig, ...] = (BackendConfig(url="http://localhost:11434"),)
    chat: ChatConfig = ChatConfig()
    blog: BlogConfig = BlogConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()


def load_config(path: str | Path) -> Config:
    """Read and validate the TOML file at ``path``; raise :class:`ConfigError` naming the bad key."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (copy config.example.toml to start)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        config = typing.cast(Config, _build(Config, raw, ""))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    _check_cross_field(config, path)
    return config


def resolve_token(config: Config, environ: typing.Mapping[str, str] = os.environ) -> str:
    """The bot token: ``DISCORD_TOKEN`` from the environment, else ``[discord] token``."""
    token = environ.get(TOKEN_ENV_VAR, "").strip() or (config.discord.token or "").strip()
    if not token:
        raise ConfigError(
            f"{TOKEN_ENV_VAR} is not set: export the bot token from the Discord developer portal "
            f"(Bot → Reset Token) as {TOKEN_ENV_VAR}"
        )
    return token


def _check_cross_field(config: Config, path: Path) -> None:
    listen = config.metrics.listen
    if listen and not re.fullmatch(r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", listen):
        example = '"host:port", e.g. "127.0.0.1:9108"'
        raise ConfigError(f"{path}: metrics.listen must be {example}, got {listen!r}")
    url = config.database.url
    if url and not (
        (url.startswith("sqlite:///") and len(url) > len("sqlite:///"))
        or re.fullmatch(r"postgres(ql)?://\S*", url)
    ):
        example = '"sqlite:///bot.sqlite3" or "postgresql://user:password@host:5432/bot"'
        raise ConfigError(f"{path}: database.url must be {example}, got {redact(url)!r}")
    if not config.backends:
        raise ConfigError(f"{path}: backends needs at least one [[backends]] entry")
    names = [backend.display_name for backend in config.backends]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(f"{path}: backends[{index}].name {name!r} is used twice")


def _build(cls: type[Any], raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from the TOML table ``raw``; ``where`` names the table in messages."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'the file'} must be a table, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown key {_join(where, key)} (known keys here: {known})")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        key = _join(where, name)
        if name not in raw:
            if spec.default is dataclasses.MISSING:
                raise ConfigError(f"{key} is required")
            continue
        values[name] = _convert(hints[name], raw[name], key, spec.metadata)
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, metadata: typing.Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), value, key)
    if origin in (types.UnionType, typing.Union):
        if value is None:  # TOML has no null, but keep the check honest for Optional fields
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _convert(inner, value, key, metadata)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(arg) for arg in args)
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be an array, got {_kind(value)}")
        return tuple(_convert(args[0], item, f"{key}[{index}]", metadata) for index, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {_kind(value)}")
        _check_range(value, key, metadata)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {_kind(value)}")
        _check_range(value, key, metadata)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {_kind(value)}")
        if "url_schemes" in metadata:
            _check_url(value, key, metadata["url_schemes"])
        return value
    raise TypeError(f"config field {key} has unsupported type {hint!r}")  # a bug in this module


def _check_range(value: float, key: str, metadata: typing.Mapping[str, Any]) -> None:
    low, high = metadata.get("min"), metadata.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{key} must be between {low:g} and {high:g}, got {value!r}")


def _check_url(value: str, key: str, schemes: tuple[str, ...]) -> None:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        allowed = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ConfigError(f"{key} must be a URL starting with {allowed}, got {value!r}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)
