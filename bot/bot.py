"""The Bot subclass: owns the application's services and loads one extension per feature."""

from __future__ import annotations

import logging

import discord
import httpx
from discord.ext import commands

from bot.config import Config

log = logging.getLogger(__name__)

EXTENSIONS: tuple[str, ...] = ()


class LLMBot(commands.Bot):
    """The Discord bot. Services are created by ``python -m bot`` and handed in, never built on import."""

    def __init__(self, config: Config, *, http_client: httpx.AsyncClient) -> None:
        intents = discord.Intents.default()
        # Reading the text of a mention needs the privileged Message Content intent (developer portal → Bot).
        intents.message_content = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            # Never ping anyone unless a message explicitly allows it (model output can hold @everyone).
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=config.discord.guild_ready_timeout,
        )
        self.config = config
        self.http_client = http_client

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)

    async def on_ready(self) -> None:
        # Fires again after every reconnect: log only, never set things up here.
        assert self.user is not None
        log.info("connected as %s (id %s) to %d guild(s)", self.user, self.user.id, len(self.guilds))
