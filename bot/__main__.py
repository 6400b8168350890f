"""``python -m bot``: the composition root. Reads the config, opens the long-lived resources, runs the bot."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import aiohttp
import discord
import httpx
import yarl

from bot import __version__
from bot.bot import LLMBot
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
        choices=("run", "sync", "doctor"),
        help="run the bot (default), sync the slash commands now, or check the set-up",
    )
    parser.add_argument(
        "--config", default="config.toml", help="path to the TOML config (default: config.toml)"
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the config and exit without connecting anywhere"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def point_discord_at(config: Config) -> None:
    """Send discord.py's REST and gateway traffic to the configured hosts (a REST proxy or the emulator).

    discord.py has no option for this; both are class attributes read at request/connect time.
    """
    discord.http.Route.BASE = config.discord.api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config.discord.gateway_url)


@contextlib.asynccontextmanager
async def open_bot(config: Config, *, background_work: bool = True) -> AsyncIterator[LLMBot]:
    """The bot with its long-lived resources open (database, HTTP client, backend pool), ready to ``start``.

    Everything opened here is closed, in reverse order, when the block exits.
    """
    point_discord_at(config)
    # One HTTP client for every model call; the backend pool bounds concurrency, not httpx.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
    async with (
        open_database(config.database.resolved_url) as db,
        httpx.AsyncClient(limits=limits) as http_client,
        Supervisor() as supervisor,
        BackendPool(config.backends, http_client, supervisor=supervisor) as pool,
        LLMBot(
            config,
            http_client=http_client,
            pool=pool,
            db=db,
            background_work=background_work,
            supervisor=supervisor,
            metrics=Metrics(),
        ) as bot,
    ):
        listen = config.metrics.listen if background_work else ""
        async with OpsServer(bot, listen) if listen else contextlib.nullcontext():
            yield bot


async def run_bot(config: Config, token: str) -> None:
    """Run the bot until it is closed, the task is cancelled, or SIGTERM/SIGINT arrives."""
    loop = asyncio.get_running_loop()
    closing: set[asyncio.Task[None]] = set()

    def stop() -> None:
        # A clean stop: the cogs stop taking work, let running replies finish and put jobs back.
        # The task is kept (the loop holds only weak references) and awaited before the resources close.
        if not closing:
            closing.add(asyncio.create_task(bot.close(), name="close on signal"))

    async with open_bot(config) as bot:
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop)
        try:
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
        token = resolve_token(config)
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.logging.level, secrets=[token])
    if args.command == "doctor":
        return 0 if asyncio.run(doctor(config, token)) else 1
    try:
        asyncio.run(sync_commands(config, token) if args.command == "sync" else run_bot(config, token))
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
