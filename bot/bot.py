"""The Bot subclass: owns the application's services and loads one extension per feature."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time

import discord
import httpx
from discord import app_commands
from discord.ext import commands

from bot.config import Config
from bot.engine import Engine
from bot.llm.pool import BackendPool
from bot.metrics import Metrics
from bot.ratelimit import ChannelBudgets
from bot.settings import SETTINGS_CHANNEL, SettingsStore
from bot.supervise import Supervisor

log = logging.getLogger(__name__)

EXTENSIONS: tuple[str, ...] = ("bot.exts.chat", "bot.exts.blog", "bot.exts.moderation", "bot.exts.help")
COMMANDS_HASH_KEY = "synced_commands_hash"


class LLMBot(commands.Bot):
    """The Discord bot. Services are created by ``python -m bot`` and handed in, never built on import."""

    def __init__(
        self,
        config: Config,
        *,
        http_client: httpx.AsyncClient,
        pool: BackendPool,
        db: Engine,
        background_work: bool = True,
        supervisor: Supervisor | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        # The bot has no voice: discord.py's start-up warnings about missing voice libraries are noise.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        intents = discord.Intents.default()
        # Reading the text of a mention needs the privileged Message Content intent (developer portal → Bot).
        intents.message_content = True
        metrics = metrics or Metrics()
        super().__init__(
            command_prefix=commands.when_mentioned,
            http_trace=metrics.discord_trace(),
            intents=intents,
            help_command=None,
            # Never ping anyone unless a message explicitly allows it (model output can hold @everyone).
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=config.discord.guild_ready_timeout,
        )
        self.config = config
        self.http_client = http_client
        self.pool = pool
        self.db = db
        #: False for one-off commands (``python -m bot sync``): cogs then start no workers.
        self.background_work = background_work
        #: Runs every long-lived loop (worker slots, status board, health checks) and knows their health.
        self.supervisor = supervisor or Supervisor()
        #: Prometheus metrics, served by the operations endpoint when ``[metrics] listen`` is set.
        self.metrics = metrics
        self.settings = SettingsStore(db)
        #: ``time.monotonic()`` at construction, for uptime in /llm status.
        self.started_at = time.monotonic()
        #: Every message write in a channel goes through its budget, so streaming never earns a 429.
        self.budgets = ChannelBudgets()
        self.tree.error(self.on_app_command_error)

    async def setup_hook(self) -> None:
        await self.settings.load()
        if self.background_work:
            # Other processes sharing a PostgreSQL database change settings too (a no-op on SQLite).
            await self.db.listen(SETTINGS_CHANNEL, self.settings.on_notify)
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self.background_work:
            await self.sync_commands(force=False)

    async def sync_commands(self, *, force: bool) -> bool:
        """Register the slash commands with Discord, unless the same set was registered before.

        Syncing on every start is slow and rate-limited; a hash of the command definitions (and of where
        they go) stored in the database tells whether anything changed. Returns True if it synced.
        """
        guild_ids = self.config.discord.command_guild_ids
        payload = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        digest = hashlib.sha256(json.dumps([payload, guild_ids], sort_keys=True).encode()).hexdigest()
        if not force and await self.db.get_meta(COMMANDS_HASH_KEY) == digest:
            return False
        if guild_ids:
            for guild_id in guild_ids:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()
        await self.db.set_meta(COMMANDS_HASH_KEY, digest)
        log.info("synced %d slash command(s) to %s", len(payload), list(guild_ids) or "all servers")
        return True

    async def close(self) -> None:
        # Closed while discord.py still waits for guilds after READY (guild_ready_timeout), its ready task
        # would later dispatch on the closed client and die with a traceback: let that short wait end first.
        if self.ws is not None and not self.is_ready():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_until_ready(), self.config.discord.guild_ready_timeout + 1)
        # Unload in reverse: the blog worker stops taking jobs (and puts back the ones it is writing) before
        # chat gives the replies in progress their grace period; commands.Bot would unload chat first.
        for name in reversed(EXTENSIONS):
            with contextlib.suppress(commands.ExtensionNotLoaded):
                await self.unload_extension(name)
        await super().close()

    async def on_message(self, message: discord.Message, /) -> None:
        # The bot has no prefix commands: without this override commands.Bot would try to run
        # "@bot alice: hi" as a command named "alice". Cogs still get every message through listeners.
        return

    async def on_ready(self) -> None:
        # Fires again after every reconnect: log only, never set things up here.
        assert self.user is not None
        log.info("connected as %s (id %s) to %d guild(s)", self.user, self.user.id, len(self.guilds))

    def get_cached_message(self, message_id: int) -> discord.Message | None:
        """A message from discord.py's message cache, newest first, or None."""
        return discord.utils.find(lambda message: message.id == message_id, reversed(self.cached_messages))

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """The one place slash-command errors end up: a short message for the user, the details in the log."""
        if isinstance(error, app_commands.CheckFailure):
            message = "You don't have permission to use this command here."
        elif isinstance(error, app_commands.TransformerError | app_commands.CommandSignatureMismatch):
            message = "That option value isn't valid; please check it and try again."
        else:
            log.error(
                "slash command /%s failed",
                interaction.command and interaction.command.qualified_name,
                exc_info=error,
            )
            message = "Something went wrong on my side. The error has been logged."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(f"⚠️ {message}", ephemeral=True)
            else:
                await interaction.response.send_message(f"⚠️ {message}", ephemeral=True)
        except discord.HTTPException as exc:
            log.info("could not report a command error to the user: %s", exc)
