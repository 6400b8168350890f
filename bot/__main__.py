"""``python -m bot``: the composition root. Reads the config, opens the long-lived resources, runs the bot."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import discord
import httpx
import yarl

from bot import __version__
from bot.bot import LLMBot
from bot.config import Config, load_config, resolve_token
from bot.errors import StartupError
from bot.log import setup_logging

log = logging.getLogger("bot")

EXIT_USAGE = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bot", description="A Discord bot for local LLMs (Ollama)."
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


async def run_bot(config: Config, token: str) -> None:
    """Open the shared resources, start the bot, and close everything on the way out."""
    point_discord_at(config)
    # One HTTP client for every model call; the backend pool bounds concurrency, not httpx.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
    async with httpx.AsyncClient(limits=limits) as http_client:
        bot = LLMBot(config, http_client=http_client)
        async with bot:
            await bot.start(token)


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
    try:
        asyncio.run(run_bot(config, token))
    except discord.LoginFailure:
        log.error("Discord rejected the token (DISCORD_TOKEN): reset it in the developer portal")
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
