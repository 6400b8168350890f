"""``/llm``: moderators see and steer the bot: backends, the blog queue, per-server settings, the audit log.

The commands are hidden from members (``default_member_permissions`` = Manage Server) and every
invocation is checked again at run time, because a server admin can override command visibility.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import __version__
from bot.blog.store import JobState
from bot.settings import MAX_CHANNELS, MAX_SYSTEM_PROMPT

if TYPE_CHECKING:
    from bot.bot import LLMBot
    from bot.exts.blog import Blog

MODERATOR_PERMISSIONS = discord.Permissions(manage_guild=True)


def _age(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


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
        lines = [f"**LLM bot {__version__}** · up {_age(time.monotonic() - self.bot.started_at)}", "```"]
        for backend in self.bot.pool.status():
            speed = f"{backend.tokens_per_second:.1f} tok/s" if backend.tokens_per_second else "– tok/s"
            loaded = ", ".join(backend.loaded_models) or "none"
            health = "healthy" if backend.healthy else "DOWN"
            lines.append(
                f"{backend.name:<16} {health:<7} {backend.in_flight}/{backend.max_concurrent} busy  "
                f"{backend.waiting} waiting  {speed:<12} loaded: {loaded}"
            )
            if backend.recent_errors:
                lines.append(f"{'':<16} last error: {backend.recent_errors[-1][:80]}")
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
        jobs = await self._blog.store.list_jobs(guild_id=interaction.guild_id, limit=50, active_only=True)
        if not jobs:
            await interaction.response.send_message("The blog queue is empty.", ephemeral=True)
            return
        positions = await self._blog.store.queue_positions()
        now = time.time()
        lines = []
        for job in sorted(jobs, key=lambda j: positions.get(j.id, 0)):
            where = f"#{positions[job.id]} in line" if job.id in positions else str(job.state)
            lines.append(
                f"`#{job.id}` <@{job.user_id}> · {where} · {_age(now - job.created_at)} old · "
                f"{discord.utils.escape_markdown(job.topic[:50])}"
            )
        await interaction.response.send_message(
            "\n".join(lines)[:2000], ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    @llm.command(name="cancel")
    @app_commands.describe(job="The job number")
    async def cancel(self, interaction: discord.Interaction, job: int) -> None:
        """Cancel any blog job in this server."""
        assert interaction.guild_id is not None
        found = await self._blog.store.get(job)
        if found is None or found.guild_id != interaction.guild_id:
            await interaction.response.send_message(f"There is no job #{job} in this server.", ephemeral=True)
            return
        if await self._blog.cancel_job(job, by=interaction.user.id) is None:
            await interaction.response.send_message(
                f"Job #{job} already finished ({found.state}).", ephemeral=True
            )
            return
        await self.bot.settings.record(interaction.guild_id, interaction.user.id, "cancel", f"job #{job}")
        await interaction.response.send_message(f"Job #{job} is cancelled.", ephemeral=True)

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
        await self.bot.settings.update(
            interaction.guild_id, interaction.user.id, "pause" if paused else "resume", blog_paused=paused
        )
        self._blog.worker.notify()
        word = "paused: queued jobs wait until `/llm resume`" if paused else "resumed"
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
            "\n".join(lines)[:2000], ephemeral=True, allowed_mentions=discord.AllowedMentions.none()
        )

    # -- settings --------------------------------------------------------------------------------------

    @config_group.command(name="view")
    async def config_view(self, interaction: discord.Interaction) -> None:
        """Show this server's settings (and the defaults they fall back to)."""
        settings = self.bot.settings.get(interaction.guild_id)
        chat, blog = self.bot.config.chat, self.bot.config.blog

        def channels(ids: tuple[int, ...]) -> str:
            return ", ".join(f"<#{channel}>" for channel in ids) or "all channels"

        prompt = settings.system_prompt or chat.system_prompt
        cooldown = chat.cooldown_seconds if settings.cooldown_seconds is None else settings.cooldown_seconds

        def model(chosen: str | None, default: str) -> str:
            return f"`{chosen}`" if chosen else f"`{default}` (default)"

        paused = " · PAUSED" if settings.blog_paused else ""
        text = "\n".join(
            [
                f"**chat**: {'on' if settings.chat_enabled else 'off'} in {channels(settings.chat_channels)}",
                f"**chat model**: {model(settings.chat_model, chat.model)}",
                f"**blog**: in {channels(settings.blog_channels)}{paused}",
                f"**blog model**: {model(settings.blog_model, blog.model)}",
                f"**cooldown**: {cooldown:g} s per member",
                f"**blog quota**: {settings.blog_quota or blog.max_queued_per_user} queued posts per member",
                f"**system prompt**: {discord.utils.escape_markdown(prompt[:500])}",
            ]
        )
        await interaction.response.send_message(text[:2000], ephemeral=True)

    @config_group.command(name="set")
    @app_commands.describe(
        chat_enabled="Answer mentions in this server",
        chat_model="Model for chat replies",
        blog_model="Model for blog posts",
        system_prompt="System prompt for chat ({server}, {channel}, {date} are filled in); 'default' resets",
        cooldown_seconds="Seconds a member waits between two questions",
        blog_quota="Blog posts one member may have waiting",
    )
    async def config_set(
        self,
        interaction: discord.Interaction,
        chat_enabled: bool | None = None,
        chat_model: str | None = None,
        blog_model: str | None = None,
        system_prompt: app_commands.Range[str, 1, MAX_SYSTEM_PROMPT] | None = None,
        cooldown_seconds: app_commands.Range[float, 0, 3600] | None = None,
        blog_quota: app_commands.Range[int, 1, 100] | None = None,
    ) -> None:
        """Change this server's settings; options left out stay as they are."""
        assert interaction.guild_id is not None
        changes: dict[str, object] = {}
        known = set(await self.bot.pool.list_models())
        for name, model in (("chat_model", chat_model), ("blog_model", blog_model)):
            if model is None:
                continue
            if model == "default":
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
            changes["cooldown_seconds"] = float(cooldown_seconds)
        if blog_quota is not None:
            changes["blog_quota"] = blog_quota
        if not changes:
            await interaction.response.send_message(
                "Nothing to change: give at least one option.", ephemeral=True
            )
            return
        await self.bot.settings.update(interaction.guild_id, interaction.user.id, "config set", **changes)
        await interaction.response.send_message(
            "Saved: " + ", ".join(f"{key} = {value!r}" for key, value in changes.items()), ephemeral=True
        )

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
        key = f"{feature}_channels"
        current: tuple[int, ...] = getattr(self.bot.settings.get(interaction.guild_id), key)
        if action == "all":
            updated: tuple[int, ...] = ()
        elif channel is None:
            await interaction.response.send_message("⚠️ Pick a channel for allow/remove.", ephemeral=True)
            return
        elif action == "allow":
            if len(current) >= MAX_CHANNELS:
                await interaction.response.send_message(f"⚠️ At most {MAX_CHANNELS} channels.", ephemeral=True)
                return
            updated = tuple(dict.fromkeys((*current, channel.id)))
        else:
            updated = tuple(c for c in current if c != channel.id)
        await self.bot.settings.update(
            interaction.guild_id, interaction.user.id, f"{feature} channels", **{key: updated}
        )
        where = ", ".join(f"<#{c}>" for c in updated) or "every channel"
        await interaction.response.send_message(f"{feature} is now allowed in {where}.", ephemeral=True)


async def setup(bot: LLMBot) -> None:
    await bot.add_cog(Moderation(bot))
