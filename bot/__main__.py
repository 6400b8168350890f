"""``python -m bot``: the composition root. Reads the config, opens the long-lived resources, runs the bot."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import discord
import httpx
import yarl

from bot import __version__
from bot.bot import LLMBot, Role, ShardedLLMBot
from bot.config import Config, load_config, resolve_token
from bot.doctor import run_checks
from bot.engine import open_database
from bot.errors import StartupError
from bot.llm.pool import BackendPool
from bot.log import setup_logging
from bot.metrics import Metrics, OpsServer
from bot.supervise import Supervisor

log = logging.getLogger("bot")

EXIT_USAGE = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot", description="A Discord bot for local LLMs (Ollama)."
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=("run", "gateway", "worker", "sync", "doctor"),
        help="run the bot in one process (default); or, on PostgreSQL, as gateway processes (chat and "
        "slash commands) and worker processes (blog jobs); sync the slash commands now; check the set-up",
    )
    parser.add_argument(
        "--shards",
        type=shard_range,
        help="gateway: the shard ids this process runs, e.g. 0-3 or 0,2 (needs --shard-count)",
    )
    parser.add_argument(
        "--shard-count", type=int, help="gateway: the bot's total number of shards (all processes together)"
    )
    parser.add_argument(
        "--config", default="config.toml", help="path to the TOML config (default: config.toml)"
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the config and exit without connecting anywhere"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def shard_range(text: str) -> list[int]:
    """``0-3`` → [0, 1, 2, 3]; ``0,2,5`` → [0, 2, 5]."""
    try:
        ids: list[int] = []
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            ids.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard range like 0-3 or 0,2") from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard range like 0-3 or 0,2")
    return sorted(set(ids))


def check_role(args: argparse.Namespace, config: Config) -> None:
    """Multi-process roles need a shared database and a sound shard range; a StartupError says why not."""
    if args.command in ("gateway", "worker") and not config.database.resolved_url.startswith("postgres"):
        raise StartupError(
            f"python -m bot {args.command} runs beside other processes and needs PostgreSQL "
            '(database.url = "postgresql://…"); on SQLite run everything in one process: python -m bot run'
        )
    if (args.shards is not None or args.shard_count is not None) and args.command != "gateway":
        raise StartupError("--shards and --shard-count are for python -m bot gateway")
    if (args.shards is None) != (args.shard_count is None):
        raise StartupError("--shards and --shard-count go together (e.g. --shards 0-3 --shard-count 8)")
    if args.shards is not None and (args.shard_count < 1 or max(args.shards) >= args.shard_count):
        count = args.shard_count
        raise StartupError(f"--shards must lie in 0..{count - 1} (--shard-count {count})")


def point_discord_at(config: Config) -> None:
    """Send discord.py's REST and gateway traffic to the configured hosts (a REST proxy or the emulator).

    discord.py has no option for this; both are class attributes read at request/connect time.
    """
    discord.http.Route.BASE = config.discord.api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.discord.gateway_url)


@contextlib.asynccontextmanager
async def open_bot(
    config: Config,
    *,
    background_work: bool = True,
    role: Role = "run",
    shards: Sequence[int] | None = None,
    shard_count: int | None = None,
) -> AsyncIterator[LLMBot]:
    """The bot with its long-lived resources open (database, HTTP client, backend pool), ready to ``start``
    (a ``worker`` only logs in). Everything opened here is closed, in reverse order, when the block exits.
    """
    sharding: dict[str, Any] = {}
    if role == "gateway":
        # An AutoShardedBot; without --shards, discord.py asks Discord how many shards to run.
        sharding = {"shard_ids": list(shards) if shards else None, "shard_count": shard_count}
    point_discord_at(config)
    # One HTTP client for every model call; the backend pool bounds concurrency, not httpx.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
    async with (
        open_database(config.database.resolved_url) as db,
        httpx.AsyncClient(limits=limits) as http_client,
        Supervisor() as supervisor,
        BackendPool(config.backends, http_client, supervisor=supervisor) as pool,
        (ShardedLLMBot if role == "gateway" else LLMBot)(
            config,
            http_client=http_client,
            pool=pool,
            db=db,
            background_work=background_work,
            supervisor=supervisor,
            metrics=Metrics(),
            role=role,
            **sharding,
        ) as bot,
    ):
        listen = config.metrics.listen if background_work else ""
        async with OpsServer(bot, listen) if listen else contextlib.nullcontext():
            yield bot


async def run_bot(
    config: Config,
    token: str,
    role: Role = "run",
    shards: Sequence[int] | None = None,
    shard_count: int | None = None,
) -> None:
    """Run the bot until it is closed, the task is cancelled, or SIGTERM/SIGINT arrives."""
    loop = asyncio.get_running_loop()
    closing: set[asyncio.Task[None]] = set()

    def stop() -> None:
        # A clean stop: the cogs stop taking work, let running replies finish and put jobs back.
        # The task is kept (the loop holds only weak references) and awaited before the resources close.
        if not closing:
            closing.add(asyncio.create_task(bot.close(), name="close on signal"))

    async with open_bot(config, role=role, shards=shards, shard_count=shard_count) as bot:
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop)
        try:
            if role == "worker":
                # REST only: log in (which loads the blog extension and starts its workers), then wait.
                await bot.login(token)
                log.info("blog worker running (no gateway)")
                await bot.wait_until_closed()
            else:
                await bot.start(token)
        finally:
            for signal_number in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signal_number)
            if closing:
                await asyncio.gather(*closing, return_exceptions=True)


async def sync_commands(config: Config, token: str) -> None:
    """Log in (no gateway), register the slash commands, and leave."""
    async with open_bot(config, background_work=False) as bot:
        await bot.login(token)
        await bot.sync_commands(force=True)


async def doctor(config: Config, token: str) -> bool:
    checks = await run_checks(config, token, emit=lambda check: print(check.line(), flush=True))
    return all(check.ok for check in checks)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        if args.check_config:
            print(
                f"{args.config}: OK ({len(config.backends)} backend(s), chat model {config.chat.model}, "
                f"blog model {config.blog.model})"
            )
            return 0
        check_role(args, config)
        token = resolve_token(config)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.logging.level, secrets=[token])
    if args.command == "doctor":
        return 0 if asyncio.run(doctor(config, token)) else 1
    try:
        if args.command == "sync":
            asyncio.run(sync_commands(config, token))
        else:
            role: Role = "run" if args.command == "run" else args.command
            asyncio.run(run_bot(config, token, role, args.shards, args.shard_count))
    except StartupError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except discord.LoginFailure:
        log.error("Discord rejected the token (DISCORD_TOKEN): reset it in the developer portal")
        return 1
    except (aiohttp.ClientError, OSError) as exc:
        # discord.py lets transport failures at login and connect through unwrapped.
        log.error("cannot reach Discord at %s: %s", config.discord.api_base, exc or type(exc).__name__)
        return 1
    except discord.PrivilegedIntentsRequired:
        log.error(
            "enable the Message Content intent in the developer portal (Bot → Privileged Gateway Intents)"
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
