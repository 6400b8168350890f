"""The Bot subclass: owns the application's services and loads one extension per feature."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from typing import Any, Literal

import discord
import httpx
import yarl
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

#: What one process does: ``run`` everything (one process, the default); ``gateway``: the Discord gateway
#: (chat, slash commands), queueing blog jobs for workers; ``worker``: blog jobs only (REST, no gateway).
Role = Literal["run", "gateway", "worker"]
#: Discord allows ``max_concurrency`` IDENTIFYs per 5 s (one per bucket); a little margin for the clock.
IDENTIFY_SPACING = 5.5
#: Advisory-lock keys of the IDENTIFY buckets (plus the bucket number), shared by every gateway process.
IDENTIFY_LOCK_BASE = 0x1D3_0000


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
        role: Role = "run",
        **options: Any,
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
            **options,
        )
        self.config = config
        self.role: Role = role
        self._closed_event = asyncio.Event()
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
        for extension in self.extensions_to_load:
            await self.load_extension(extension)
        if self.background_work and self.role != "worker":
            await self.sync_commands(force=False)

    @property
    def extensions_to_load(self) -> tuple[str, ...]:
        """A worker process only writes and posts blog jobs; the others run every feature."""
        return ("bot.exts.blog",) if self.role == "worker" else EXTENSIONS

    @property
    def runs_blog_jobs(self) -> bool:
        """Whether this process claims and writes blog jobs (and shows their progress)."""
        return self.background_work and self.role in ("run", "worker")

    def gateway_connected(self) -> bool:
        """Whether the gateway session is up (a worker process has none: always True there)."""
        if self.role == "worker":
            return True
        return self.is_ready() and not self.is_closed() and self.ws is not None and self.ws.open

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

    async def wait_until_closed(self) -> None:
        """Return once :meth:`close` has run (a worker process has no gateway connection to wait on)."""
        await self._closed_event.wait()

    async def close(self) -> None:
        # Closed while discord.py still waits for guilds after READY (guild_ready_timeout), its ready task
        # would later dispatch on the closed client and die with a traceback: let that short wait end first.
        if self.ws is not None and not self.is_ready():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_until_ready(), self.config.discord.guild_ready_timeout + 1)
        # Unload in reverse: the blog worker stops taking jobs (and puts back the ones it is writing) before
        # chat gives the replies in progress their grace period; commands.Bot would unload chat first.
        for name in reversed(self.extensions_to_load):
            with contextlib.suppress(commands.ExtensionNotLoaded):
                await self.unload_extension(name)
        await super().close()
        self._closed_event.set()

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


class ShardedLLMBot(LLMBot, commands.AutoShardedBot):
    """``python -m bot gateway``: a range of shards in one process (``shard_ids``, ``shard_count``).

    Several such processes share one bot token, so their IDENTIFYs are spaced through the database
    (:meth:`~bot.engine.Engine.take_turn`): at most one per bucket (``shard_id % max_concurrency``) every
    5 seconds, as Discord requires, whichever process sends it.
    """

    _max_concurrency: int | None = None
    # The launch of a shard in progress, and whether close() began (see launch_shard).
    _launching: asyncio.Future[None] | None = None
    _stopping = False

    async def launch_shard(self, gateway: yarl.URL, shard_id: int, *, initial: bool = False) -> None:
        # Stopped while shards are still being launched (one may wait for its IDENTIFY turn): discord.py
        # would retry the launch on the closed HTTP session every 5 s, logging a traceback each time.
        if self._stopping:
            return
        self._launching = asyncio.ensure_future(super().launch_shard(gateway, shard_id, initial=initial))
        try:
            await self._launching
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are cancelled ourselves; otherwise close() stopped the launch
        finally:
            self._launching = None

    async def close(self) -> None:
        self._stopping = True
        if self._launching is not None:
            self._launching.cancel()
        await super().close()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if self._max_concurrency is None:
            _, _, limits = await self.http.get_bot_gateway()
            self._max_concurrency = max(1, int(limits.get("max_concurrency", 1)))
        bucket = (shard_id or 0) % self._max_concurrency
        await self.db.take_turn(IDENTIFY_LOCK_BASE + bucket, IDENTIFY_SPACING)

    def gateway_connected(self) -> bool:
        shards = self.shards.values()
        return self.is_ready() and bool(shards) and not any(shard.is_closed() for shard in shards)
