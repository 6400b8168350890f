"""``/llm``: moderators see and steer the bot: backends, the blog queue, per-server settings, the audit log.

The commands are hidden from members (``default_member_permissions`` = Manage Server) and every
invocation is checked again at run time, because a server admin can override command visibility.

Replies say what actually happened, in words (never Python values), and a command that changes nothing
says so and leaves no audit entry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import __version__
from bot.blog.store import Job, JobState
from bot.llm.pool import BackendStatus
from bot.settings import MAX_CHANNELS, MAX_SYSTEM_PROMPT, GuildSettings, with_override
from bot.supervise import LoopHealth

if TYPE_CHECKING:
    from bot.bot import LLMBot
    from bot.exts.blog import Blog

log = logging.getLogger(__name__)

MODERATOR_PERMISSIONS = discord.Permissions(manage_guild=True)
#: Discord's limit on a message's content.
MESSAGE_LIMIT = 2000
#: The most jobs ``/llm queue`` reads (more than one message can hold; the rest are counted).
QUEUE_READ_LIMIT = 100
#: A healthy backend's last error is shown for this long after it happened (a down one's, always).
RECENT_ERROR_SECONDS = 300.0
#: ``-1`` in ``/llm config set`` puts a number back to the config file's value.
RESET = -1


def _models_line(backend: BackendStatus) -> str:
    """What the server has in memory, in its own terms: Ollama loads models, an OpenAI-compatible server
    serves the ones it lists."""
    if backend.loaded_models is None:
        models = "not reported"
    else:
        models = ", ".join(_short_model(name) for name in backend.loaded_models) or "none"
    label = "loaded" if backend.kind == "ollama" else "serving"
    context = f" · context {backend.context_tokens} tokens" if backend.context_tokens else ""
    return f"{label}: {models}{context}"


def _loop_lines(loops: Sequence[LoopHealth]) -> list[str]:
    """The background loops: one line when all run, else one line per loop in trouble."""
    trouble = [loop for loop in loops if loop.failing or not loop.running]
    if not trouble:
        return [f"background loops: all {len(loops)} running"]
    lines = []
    for loop in trouble:
        state = "FAILING" if loop.failing else "restarting" if loop.restarts else "stopped"
        error = f": {loop.last_error[:70]}" if loop.last_error else ""
        lines.append(f"{loop.name:<16} {state} (restarted {loop.restarts}×){error}")
    return lines


def _short_model(name: str) -> str:
    """A model file path (llama.cpp servers name models by path) shown by its file name."""
    return name.rsplit("/", 1)[-1]


def _age(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _whole_lines(lines: Sequence[str], total: int, *, more: str = "more", limit: int = MESSAGE_LIMIT) -> str:
    """As many whole lines as fit in one message, then "… and N more" for the rest of ``total``."""
    text = "\n".join(lines)
    if len(lines) >= total and len(text) <= limit:
        return text
    reserve = len(f"\n… and {total} {more}")
    shown: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + reserve > limit:
            break
        shown.append(line)
        size += len(line) + 1
    return "\n".join([*shown, f"… and {total - len(shown)} {more}"])


def _job_ids(jobs: Sequence[Job], limit: int = 1500) -> str:
    """``#3, #5, #8`` (ending in "and N more" if that would be too long)."""
    ids = [f"#{job.id}" for job in jobs]
    text = ", ".join(ids)
    if len(text) <= limit:
        return text
    shown: list[str] = []
    for index, item in enumerate(ids):
        if len(", ".join([*shown, item])) > limit - 20:
            return ", ".join(shown) + f" and {len(ids) - index} more"
        shown.append(item)
    return text


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _channels(ids: tuple[int, ...]) -> str:
    return ", ".join(f"<#{channel}>" for channel in ids) or "every channel"


class _TooManyChannels(Exception):
    pass


class Moderation(commands.Cog):
    """Moderator commands."""

    llm = app_commands.Group(
        name="llm",
        description="See and steer the LLM bot (moderators)",
        guild_only=True,
        default_permissions=MODERATOR_PERMISSIONS,
    )
    config_group = app_commands.Group(name="config", description="This server's bot settings", parent=llm)

    def __init__(self, bot: LLMBot) -> None:
        self.bot = bot
        #: How long a healthy backend's last error stays in ``/llm status``.
        self.recent_error_seconds = RECENT_ERROR_SECONDS

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        # Checked on every call: hiding the command is only a default that admins can change.
        return interaction.guild_id is not None and interaction.permissions.manage_guild

    @property
    def _blog(self) -> Blog:
        cog = self.bot.get_cog("Blog")
        assert cog is not None
        return cog  # type: ignore[return-value]

    # -- overview --------------------------------------------------------------------------------------

    @llm.command(name="status")
    async def status(self, interaction: discord.Interaction) -> None:
        """Backends, queue depth, uptime and version."""
        assert interaction.guild_id is not None
        await interaction.response.send_message(
            await self.render_status(interaction.guild_id), ephemeral=True
        )

    async def render_status(self, guild_id: int) -> str:
        """The text of ``/llm status``."""
        now = time.monotonic()
        lines = [f"**LLM bot {__version__}** · up {_age(now - self.bot.started_at)}", "```"]
        for backend in self.bot.pool.status():
            speed = f"{backend.tokens_per_second:.1f} tok/s" if backend.tokens_per_second else "– tok/s"
            health = "healthy" if backend.healthy else "DOWN"
            lines.append(
                f"{backend.name:<16} {health:<7} {backend.in_flight}/{backend.max_concurrent} busy  "
                f"{backend.waiting} waiting  {speed:<12} {_models_line(backend)}"
            )
            # An old error of a backend that has recovered is history, not news.
            age = backend.last_error_age
            if age is not None and (not backend.healthy or age <= self.recent_error_seconds):
                lines.append(f"{'':<16} last error ({_age(age)} ago): {backend.recent_errors[-1][:80]}")
        lines.extend(_loop_lines(self.bot.supervisor.health()))
        counts = await self._blog.store.count_by_state(guild_id)
        settings = self.bot.settings.get(guild_id)
        lines.append(
            f"blog queue: {counts[JobState.QUEUED]} queued, {counts[JobState.RUNNING]} writing, "
            f"{counts[JobState.GENERATED]} posting · {counts[JobState.DELIVERED]} done, "
            f"{counts[JobState.FAILED]} failed{' · PAUSED' if settings.blog_paused else ''}"
        )
        lines.append("```")
        entries = await self.bot.settings.audit_log(guild_id, limit=3)
        if entries:
            lines.append(
                "Recent moderator actions: "
                + "; ".join(
                    f"<@{entry.user_id}> {entry.action} ({_age(time.time() - entry.at)} ago)"
                    for entry in entries
                )
            )
        return "\n".join(lines)

    @llm.command(name="queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        """Every unfinished blog job in this server."""
        assert interaction.guild_id is not None
        jobs, total = await self._blog.store.active_jobs(interaction.guild_id, limit=QUEUE_READ_LIMIT)
        if not jobs:
            await interaction.response.send_message("The blog queue is empty.", ephemeral=True)
            return
        positions = await self._blog.store.queue_positions()
        now = time.time()
        lines = []
        for job in jobs:
            where = f"#{positions[job.id]} in line" if job.id in positions else str(job.state)
            lines.append(
                f"`#{job.id}` <@{job.user_id}> · {where} · {_age(now - job.created_at)} old · "
                f"{discord.utils.escape_markdown(job.topic[:50])}"
            )
        await interaction.response.send_message(
            _whole_lines(lines, total), ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @llm.command(name="cancel")
    @app_commands.describe(
        job="The job number",
        user="Cancel every queued job of this member",
        all_queued="Cancel every queued job in this server",
    )
    async def cancel(
        self,
        interaction: discord.Interaction,
        job: int | None = None,
        user: discord.User | None = None,
        all_queued: bool = False,
    ) -> None:
        """Cancel a blog job in this server, or all queued jobs of a member or of the server."""
        assert interaction.guild_id is not None
        if (job is not None) + (user is not None) + all_queued != 1:
            await interaction.response.send_message(
                "⚠️ Give one of: a `job` number, a `user` (their queued jobs), or `all_queued: True`.",
                ephemeral=True,
            )
            return
        if job is None:
            await self._cancel_queued(interaction, interaction.guild_id, user)
            return
        found = await self._blog.store.get(job)
        if found is None or found.guild_id != interaction.guild_id:
            await interaction.response.send_message(f"There is no job #{job} in this server.", ephemeral=True)
            return
        if await self._blog.cancel_job(job, by=interaction.user.id) is None:
            await interaction.response.send_message(
                f"Job #{job} already finished ({found.state}).", ephemeral=True
            )
            return
        await self.bot.settings.record_cancels(
            interaction.guild_id, interaction.user.id, [(found.id, found.user_id)], via="/llm cancel"
        )
        await interaction.response.send_message(f"Job #{job} is cancelled.", ephemeral=True)

    async def _cancel_queued(
        self, interaction: discord.Interaction, guild_id: int, user: discord.User | None
    ) -> None:
        """Cancel every queued job of ``user`` (or of the server), one by one through the blog cog."""
        # Many cancellations can take longer than the 3 s an answer may wait.
        await interaction.response.defer(ephemeral=True, thinking=True)
        whose = f" of <@{user.id}>" if user is not None else " in this server"
        cancelled: list[Job] = []
        try:
            for queued in await self._blog.store.queued_jobs(guild_id, user.id if user else None):
                # A job claimed meanwhile is cancelled all the same: its generation is stopped.
                if await self._blog.cancel_job(queued.id, by=interaction.user.id) is not None:
                    cancelled.append(queued)
        finally:
            if cancelled:
                await asyncio.shield(
                    self.bot.settings.record_cancels(
                        guild_id,
                        interaction.user.id,
                        [(found.id, found.user_id) for found in cancelled],
                        via="/llm cancel",
                    )
                )
        if cancelled:
            text = f"Cancelled {_plural(len(cancelled), 'queued job')}{whose}: {_job_ids(cancelled)}."
        else:
            text = f"There are no queued jobs{whose}; nothing was cancelled."
        busy = [
            found
            for found in await self._blog.store.list_jobs(
                guild_id=guild_id, user_id=user.id if user else None, limit=25, active_only=True
            )
            if found.state is not JobState.QUEUED
        ]
        if busy:
            text += (
                f"\nNot queued, so left alone: {_job_ids(busy, limit=300)} (being written or posted; "
                "`/llm cancel job:` stops one)."
            )
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())

    @llm.command(name="pause")
    async def pause(self, interaction: discord.Interaction) -> None:
        """Hold this server's blog queue (jobs already writing finish)."""
        await self._set_paused(interaction, True)

    @llm.command(name="resume")
    async def resume(self, interaction: discord.Interaction) -> None:
        """Release this server's blog queue."""
        await self._set_paused(interaction, False)

    async def _set_paused(self, interaction: discord.Interaction, paused: bool) -> None:
        assert interaction.guild_id is not None
        change = await self.bot.settings.edit(
            interaction.guild_id,
            interaction.user.id,
            "pause" if paused else "resume",
            lambda _: {"blog_paused": paused},
            describe=self.describe,
        )
        self._blog.worker.notify()
        word = "paused: queued jobs wait until `/llm resume`" if paused else "resumed"
        if not change.changes:
            word = "already paused" if paused else "not paused (nothing to resume)"
        await interaction.response.send_message(f"The blog queue is {word}.", ephemeral=True)

    @llm.command(name="audit")
    async def audit(self, interaction: discord.Interaction) -> None:
        """The most recent moderator actions in this server."""
        assert interaction.guild_id is not None
        entries = await self.bot.settings.audit_log(interaction.guild_id, limit=20)
        if not entries:
            await interaction.response.send_message("No moderator actions yet.", ephemeral=True)
            return
        lines = [
            f"<t:{int(entry.at)}:f> <@{entry.user_id}> **{entry.action}** {entry.details}"[:200]
            for entry in entries
        ]
        await interaction.response.send_message(
            _whole_lines(lines, len(lines), more="older"),
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    # -- settings --------------------------------------------------------------------------------------

    def describe(self, changes: dict[str, Any]) -> str:
        """Settings changes in words, with what a reset falls back to: for replies and the audit log."""
        chat, blog = self.bot.config.chat, self.bot.config.blog

        def default(text: str) -> str:
            return f"back to the default ({text})"

        def model(chosen: str | None, fallback: str) -> str:
            return f"`{chosen}`" if chosen else default(f"`{fallback}`")

        def one(key: str, value: Any) -> str:
            if key == "chat_enabled":
                return f"chat: {'on' if value else 'off'}"
            if key == "blog_paused":
                return f"blog queue: {'paused' if value else 'running'}"
            if key in ("chat_channels", "blog_channels"):
                where = ", ".join(f"<#{channel}>" for channel in value) or "every channel (no list)"
                return f"{key.removesuffix('_channels')} channels: {where}"
            if key == "chat_model":
                return f"chat model: {model(value, chat.model)}"
            if key == "blog_model":
                return f"blog model: {model(value, blog.model)}"
            if key == "cooldown_seconds":
                seconds = f"{value:g} s per member" if value is not None else None
                return f"cooldown: {seconds or default(f'{chat.cooldown_seconds:g} s per member')}"
            if key == "blog_quota":
                posts = f"{value} queued posts per member" if value is not None else None
                return (
                    f"blog quota: {posts or default(f'{blog.max_queued_per_user} queued posts per member')}"
                )
            if key == "channel_chat_models":
                listed = ", ".join(f"<#{channel}> `{name}`" for channel, name in value)
                return f"chat model by channel: {listed or 'none (every channel follows the server)'}"
            if key == "channel_system_prompts":
                listed = ", ".join(f"<#{channel}> ({len(text)} characters)" for channel, text in value)
                return f"system prompt by channel: {listed or 'none (every channel follows the server)'}"
            if key == "system_prompt":
                if value is None:
                    return "system prompt: back to the default"
                shown = discord.utils.escape_markdown(value[:60]) + ("…" if len(value) > 60 else "")
                return f"system prompt: “{shown}” ({len(value)} characters)"
            return f"{key}: {value}"

        return "; ".join(one(key, value) for key, value in changes.items()) or "nothing"

    @config_group.command(name="view")
    async def config_view(self, interaction: discord.Interaction) -> None:
        """Show this server's settings (and the defaults they fall back to)."""
        settings = self.bot.settings.get(interaction.guild_id)
        chat, blog = self.bot.config.chat, self.bot.config.blog

        def mark(value: str, is_default: bool) -> str:
            return f"{value} (default)" if is_default else value

        prompt = settings.system_prompt or chat.system_prompt
        cooldown = chat.cooldown_seconds if settings.cooldown_seconds is None else settings.cooldown_seconds
        quota = settings.blog_quota or blog.max_queued_per_user
        paused = " · PAUSED" if settings.blog_paused else ""
        text = "\n".join(
            [
                f"**chat**: {mark('on' if settings.chat_enabled else 'off', settings.chat_enabled)} in "
                f"{mark(_channels(settings.chat_channels), not settings.chat_channels)}",
                f"**chat model**: {mark(f'`{settings.chat_model or chat.model}`', not settings.chat_model)}",
                f"**blog**: in {mark(_channels(settings.blog_channels), not settings.blog_channels)}{paused}",
                f"**blog model**: {mark(f'`{settings.blog_model or blog.model}`', not settings.blog_model)}",
                f"**cooldown**: {mark(f'{cooldown:g} s per member', settings.cooldown_seconds is None)}",
                f"**blog quota**: {mark(f'{quota} queued posts per member', settings.blog_quota is None)}",
                f"**system prompt**{' (default)' if settings.system_prompt is None else ''}: "
                f"{discord.utils.escape_markdown(prompt[:500])}",
                *(
                    f"**chat model in** <#{channel}>: `{name}`"
                    for channel, name in settings.channel_chat_models
                ),
                *(
                    f"**system prompt in** <#{channel}>: {discord.utils.escape_markdown(text[:200])}"
                    for channel, text in settings.channel_system_prompts
                ),
                "-# Options left at (default) follow the config file; `default` or -1 in "
                "`/llm config set` puts one back.",
            ]
        )
        await interaction.response.send_message(text[:MESSAGE_LIMIT], ephemeral=True)

    @config_group.command(name="set")
    @app_commands.describe(
        chat_enabled="Answer mentions in this server",
        chat_model="Model for chat replies; 'default' resets",
        blog_model="Model for blog posts; 'default' resets",
        system_prompt="System prompt for chat ({server}, {channel}, {date} are filled in); 'default' resets",
        cooldown_seconds="Seconds a member waits between two questions; -1 resets to the default",
        blog_quota="Blog posts one member may have waiting; -1 resets to the default",
        channel="Set chat_model/system_prompt for this channel only ('default': back to the server's)",
    )
    async def config_set(
        self,
        interaction: discord.Interaction,
        chat_enabled: bool | None = None,
        chat_model: str | None = None,
        blog_model: str | None = None,
        system_prompt: app_commands.Range[str, 1, MAX_SYSTEM_PROMPT] | None = None,
        cooldown_seconds: app_commands.Range[float, RESET, 3600] | None = None,
        blog_quota: app_commands.Range[int, RESET, 100] | None = None,
        channel: discord.TextChannel | None = None,
    ) -> None:
        """Change this server's settings (or one channel's model and prompt); options left out stay."""
        assert interaction.guild_id is not None
        if channel is not None and (
            any(option is not None for option in (chat_enabled, blog_model, cooldown_seconds, blog_quota))
            or (chat_model is None and system_prompt is None)
        ):
            await interaction.response.send_message(
                "⚠️ With `channel`, give `chat_model` and/or `system_prompt` (only those two can differ "
                "per channel).",
                ephemeral=True,
            )
            return
        changes: dict[str, object] = {}
        known = set(await self.bot.pool.list_models())
        for name, model in (("chat_model", chat_model), ("blog_model", blog_model)):
            if model is None:
                continue
            if model.strip().lower() == "default":
                changes[name] = None
            elif known and model not in known and f"{model}:latest" not in known:
                await interaction.response.send_message(
                    f"⚠️ `{model}` is not on any backend. Available: {', '.join(sorted(known))}.",
                    ephemeral=True,
                )
                return
            else:
                changes[name] = model
        if chat_enabled is not None:
            changes["chat_enabled"] = chat_enabled
        if system_prompt is not None:
            changes["system_prompt"] = None if system_prompt.strip().lower() == "default" else system_prompt
        if cooldown_seconds is not None:
            if cooldown_seconds < 0 and cooldown_seconds != RESET:
                await interaction.response.send_message(
                    "⚠️ `cooldown_seconds`: 0 to 3600, or -1 for the default.", ephemeral=True
                )
                return
            changes["cooldown_seconds"] = None if cooldown_seconds == RESET else float(cooldown_seconds)
        if blog_quota is not None:
            if blog_quota == 0:
                await interaction.response.send_message(
                    "⚠️ `blog_quota`: 1 to 100, or -1 for the default.", ephemeral=True
                )
                return
            changes["blog_quota"] = None if blog_quota == RESET else blog_quota
        if not changes:
            await interaction.response.send_message(
                "Nothing to change: give at least one option.", ephemeral=True
            )
            return
        compute = _per_channel(channel.id, changes) if channel is not None else _everywhere(changes)
        change = await self.bot.settings.edit(
            interaction.guild_id, interaction.user.id, "config set", compute, describe=self.describe
        )
        same = {key: value for key, value in changes.items() if key not in change.changes}
        parts = [f"Saved: {self.describe(change.changes)}."] if change.changes else ["Nothing changed."]
        if same:
            parts.append(f"Already so: {self.describe(same)}.")
        await interaction.response.send_message(" ".join(parts), ephemeral=True)

    @config_set.autocomplete("chat_model")
    @config_set.autocomplete("blog_model")
    async def model_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        models = await self.bot.pool.list_models()
        matches = [model for model in models if current.lower() in model.lower()]
        return [app_commands.Choice(name=model, value=model) for model in ["default", *matches][:25]]

    @config_group.command(name="channel")
    @app_commands.describe(
        feature="Which feature the rule is for",
        action="allow: add the channel to the allowed list; remove: take it off; all: allow every channel",
        channel="The channel (not needed for 'all')",
    )
    async def config_channel(
        self,
        interaction: discord.Interaction,
        feature: Literal["chat", "blog"],
        action: Literal["allow", "remove", "all"],
        channel: discord.TextChannel | None = None,
    ) -> None:
        """Limit chat or /blog to some channels."""
        assert interaction.guild_id is not None
        if action != "all" and channel is None:
            await interaction.response.send_message("⚠️ Pick a channel for allow/remove.", ephemeral=True)
            return
        key = f"{feature}_channels"
        target = channel.id if channel is not None else 0

        def compute(current: GuildSettings) -> dict[str, Any]:
            listed: tuple[int, ...] = getattr(current, key)
            if action == "all":
                return {key: ()}
            if action == "remove":
                return {key: tuple(c for c in listed if c != target)}
            if target not in listed and len(listed) >= MAX_CHANNELS:
                raise _TooManyChannels
            return {key: tuple(dict.fromkeys((*listed, target)))}

        try:
            change = await self.bot.settings.edit(
                interaction.guild_id,
                interaction.user.id,
                f"{feature} channels",
                compute,
                describe=self.describe,
            )
        except _TooManyChannels:
            await interaction.response.send_message(f"⚠️ At most {MAX_CHANNELS} channels.", ephemeral=True)
            return
        await interaction.response.send_message(
            _channel_answer(feature, action, target, getattr(change.before, key), getattr(change.after, key)),
            ephemeral=True,
        )


def _everywhere(changes: dict[str, Any]) -> Callable[[GuildSettings], dict[str, Any]]:
    return lambda _: changes


def _per_channel(channel_id: int, changes: dict[str, Any]) -> Callable[[GuildSettings], dict[str, Any]]:
    """``/llm config set channel:…``: the server-wide chat_model/system_prompt changes, made for one
    channel instead (None takes the channel's override away)."""
    keys = {"chat_model": "channel_chat_models", "system_prompt": "channel_system_prompts"}

    def compute(current: GuildSettings) -> dict[str, Any]:
        return {
            keys[key]: with_override(getattr(current, keys[key]), channel_id, value)
            for key, value in changes.items()
        }

    return compute


def _channel_answer(
    feature: str, action: str, channel: int, before: tuple[int, ...], after: tuple[int, ...]
) -> str:
    """What ``/llm config channel`` did, truthfully: an empty list means every channel."""
    name = "chat" if feature == "chat" else "`/blog`"
    if before == after:
        if not before:
            if action == "remove":
                return (
                    f"Nothing to remove: {name} has no channel list, so it is already allowed in every "
                    "channel."
                )
            return f"Nothing changed: {name} is already allowed in every channel."
        if action == "remove":
            return (
                f"Nothing changed: <#{channel}> is not on the list; {name} is allowed in {_channels(after)}."
            )
        return (
            f"Nothing changed: <#{channel}> is already on the list; {name} is allowed in {_channels(after)}."
        )
    if not after:
        how = f"<#{channel}> was the last channel on the list, so " if action == "remove" else ""
        return f"{how}{name} is now allowed in every channel."
    if not before:
        return f"{name} is now allowed only in {_channels(after)} (before: every channel)."
    return f"{name} is now allowed in {_channels(after)}."


async def setup(bot: LLMBot) -> None:
    await bot.add_cog(Moderation(bot))
