"""``/blog``: queue a long article generation, show its progress, post the result as a Markdown file.

The command answers at once (the job is committed first); a :class:`~bot.blog.worker.BlogWorker` runs the
queue; this cog shows each job's progress by editing its status message, and posts the finished article
in the channel (never through the interaction token, which expires after 15 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.blog.article import (
    DEFAULT_TARGET_LENGTH,
    STYLES,
    TONES,
    InvalidRequest,
    normalise_tags,
    validate_choice,
    validate_target_length,
    validate_topic,
)
from bot.blog.store import (
    CANCEL_CHANNEL,
    JOBS_CHANNEL,
    BlogRequest,
    Job,
    JobState,
    JobStore,
    QuotaExceeded,
    Quotas,
)
from bot.blog.worker import BlogWorker, DeliveryFailed, Progress
from bot.errors import DISCORD_ERRORS, describe_discord_error, is_transient
from bot.supervise import Supervisor

if TYPE_CHECKING:
    from bot.bot import LLMBot

log = logging.getLogger(__name__)

PROGRESS_BAR_WIDTH = 12
RECOVERY_HISTORY_LIMIT = 100
#: Queue positions (and paused notices) are refreshed at most this often, and at least this often
#: while jobs are queued.
POSITIONS_EVERY = 5.0
#: The supervised loop that edits status messages.
BOARD_LOOP = "blog-status-board"


def delivery_nonce(job_id: int) -> str:
    """The nonce for a job's post: Discord returns the existing message for a repeated nonce (≤ 25 chars)."""
    return f"blog-{job_id}"


def delivery_marker(job_id: int) -> str:
    """The start of a job's post, so it can be recognised in the channel's history after a crash."""
    return f"📝 Blog post #{job_id} "


def render_status(
    job: Job,
    *,
    position: int | None = None,
    progress: Progress | None = None,
    paused: bool = False,
    now: float | None = None,
) -> str:
    """The status message text for ``job`` (``progress``: the live view of a job being written here;
    ``paused``: its server's moderators paused the queue)."""
    now = time.time() if now is None else now
    head = f"**Blog post #{job.id}** — *{discord.utils.escape_markdown(job.topic)}*"
    if job.state is JobState.QUEUED:
        if paused:
            line = (
                f"⏸️ {head}\nQueued, but this server's moderators have paused the blog queue: it will be "
                "written once they resume it."
            )
        else:
            where = f"position {position} in the queue" if position else "in the queue"
            line = f"⏳ {head}\nQueued ({where}). The article will be posted here when it is ready."
        if job.attempts and job.error:
            line += f"\nThe last try stopped: {job.error}. It will go on from there (try {job.attempts + 1})."
        return line
    if job.state is JobState.RUNNING:
        return f"✍️ {head}\n{_running_line(job, progress, now)}"
    if job.state is JobState.GENERATED:
        return f"📦 {head}\nWritten ({job.word_count} words); posting it…"
    if job.state is JobState.DELIVERED:
        if job.incomplete:
            return (
                f"⚠️ {head}\nPosted incomplete ({job.word_count} words; {job.incomplete}): "
                f"the article is {_message_link(job)}."
            )
        return f"✅ {head}\nDone ({job.word_count} words): the article is {_message_link(job)}."
    if job.state is JobState.FAILED:
        return f"❌ {head}\nFailed: {job.error}"
    if job.cancelled_by is not None and job.cancelled_by != job.user_id:
        return f"🚫 {head}\nCancelled by <@{job.cancelled_by}>."
    return f"🚫 {head}\nCancelled."


def ending_notice(job: Job) -> str | None:
    """The one message that tells the requester how their job ended, when the article post does not
    (it pings them itself) and they did not end it themselves."""
    topic = discord.utils.escape_markdown(job.topic)
    if job.state is JobState.FAILED:
        return f"<@{job.user_id}> your blog post #{job.id} (*{topic}*) could not be written: {job.error}."
    if job.state is JobState.CANCELLED and job.cancelled_by not in (None, job.user_id):
        return (
            f"<@{job.user_id}> your blog post #{job.id} (*{topic}*) was cancelled by <@{job.cancelled_by}>."
        )
    return None


def _running_line(job: Job, progress: Progress | None, now: float) -> str:
    """What a running job is doing, truthfully: waiting for a server, reading the prompt, or writing."""
    if progress is None:
        # Not being written here: the bot was restarted (or crashed) while writing it. It goes on from its
        # saved text once its lease runs out.
        so_far = f" with {job.progress_words} words written" if job.progress_words else ""
        return f"Interrupted{so_far}; it will go on from where it stopped shortly."
    elapsed = _duration(progress.elapsed())
    part = f" (part {progress.part})" if progress.part > 1 else ""
    if progress.phase == "waiting":
        waited = _duration(progress.in_phase())
        return f"Waiting for a model server to take `{job.model}`{part} · waiting {waited}"
    words = progress.words
    left = progress.seconds_left()
    estimate = f" · about {_duration(left)} left" if left is not None else ""
    if progress.phase == "reading":
        so_far = f" ({words} words so far)" if words else ""
        return f"Reading the prompt with `{job.model}`{part}{so_far} · {elapsed} elapsed{estimate}"
    filled = round(progress.fraction * PROGRESS_BAR_WIDTH)
    bar = "█" * filled + "░" * (PROGRESS_BAR_WIDTH - filled)
    return (
        f"Writing with `{job.model}`{part}: `{bar}` {progress.fraction:.0%} "
        f"({words} / {job.target_length} words) · {elapsed} elapsed{estimate}"
    )


def _message_link(job: Job) -> str:
    if job.guild_id is None or job.delivered_message_id is None:
        return "posted above"
    return f"https://discord.com/channels/{job.guild_id}/{job.channel_id}/{job.delivered_message_id}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=r"llmbot:blog-cancel:(?P<job>[0-9]+)"
):
    """Cancel on a job's status message; the ``custom_id`` carries the job, so it works across restarts."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel",
                emoji="✖️",
                style=discord.ButtonStyle.danger,
                custom_id=f"llmbot:blog-cancel:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> CancelButton:
        return cls(int(match["job"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog(Blog.__cog_name__)
        if isinstance(cog, Blog):
            await cog.on_cancel_button(interaction, self.job_id)


def status_buttons(job: Job) -> discord.ui.View | None:
    """The buttons of a job's status message: Cancel until the job has finished."""
    if job.state.terminal:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job.id))
    view.stop()  # presses reach CancelButton through add_dynamic_items; nothing is stored per message
    return view


class StatusBoard:
    """Keeps every job's status message up to date, through the channel rate budgets.

    ``job_changed`` only records the newest snapshot and wakes the renderer, so the worker never waits on
    Discord. The renderer edits each message at most once per ``interval`` (a final state goes at once).
    Queue positions and the paused state of every queued job are refreshed whenever the queue moves (at
    most every :data:`POSITIONS_EVERY` seconds), and every unfinished job's status is shown afresh when the
    bot starts. A job that fails or is cancelled by someone else gets one message pinging its requester.
    """

    def __init__(
        self,
        bot: LLMBot,
        store: JobStore,
        interval: float,
        paused_guilds: Callable[[], frozenset[int]] = frozenset,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._bot = bot
        self._supervisor = supervisor or Supervisor()
        self._store = store
        self._interval = interval
        self._paused_guilds = paused_guilds
        self._latest: dict[int, Job] = {}
        # The live progress of jobs being written in this process (read when their status is shown).
        self._progress: dict[int, Progress] = {}
        self._shown: dict[int, str] = {}
        self._edited_at: dict[int, float] = {}
        self._states: dict[int, JobState] = {}
        # Status message ids known here but not yet written to the database (see remember_message).
        self._message_ids: dict[int, int] = {}
        self._unsaved: dict[int, int] = {}
        self._queue_moved = True
        self._positions_at = 0.0
        self._paused_seen: frozenset[int] = frozenset()
        self._wakeup = asyncio.Event()

    def start(self) -> None:
        self._supervisor.start(BOARD_LOOP, self._run)

    async def stop(self) -> None:
        await self._supervisor.stop(BOARD_LOOP)
        if self._unsaved:
            await self._store.set_status_messages(self._unsaved)
            self._unsaved = {}

    def job_changed(self, job: Job, progress: Progress | None = None) -> None:
        self._latest[job.id] = job
        if progress is not None and job.state is JobState.RUNNING:
            self._progress[job.id] = progress
        else:
            self._progress.pop(job.id, None)
        if self._states.get(job.id) is not job.state:
            self._queue_moved = True  # a job joined, left or moved: positions change
            self._states[job.id] = job.state
        self._wakeup.set()

    def queue_changed(self) -> None:
        """Something moved every queued job (a pause, a resume, a bulk cancel): show them afresh."""
        self._queue_moved = True
        self._positions_at = 0.0
        self._wakeup.set()

    def remember_message(self, job_id: int, message_id: int) -> None:
        """The job's status message. Written to the database in batches, off the acknowledgement path:
        a burst of /blog commands then costs one transaction each, not two (and a status message is a
        courtesy; losing its id in a crash only stops its updates)."""
        self._message_ids[job_id] = message_id
        self._unsaved[job_id] = message_id
        self._wakeup.set()

    async def _run(self) -> None:
        # After a (re)start, every unfinished job's status says where it is now, not where it was.
        for job in await self._store.active_with_status():
            self._latest.setdefault(job.id, job)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), POSITIONS_EVERY)
            self._wakeup.clear()
            if self._unsaved:
                unsaved, self._unsaved = self._unsaved, {}
                await self._store.set_status_messages(unsaved)
            await self._render_due()

    async def _render_due(self) -> None:
        paused = self._paused_guilds()
        if paused != self._paused_seen:
            self._paused_seen, self._queue_moved = paused, True
        positions: dict[int, int] = {}
        now = time.monotonic()
        if self._queue_moved and now - self._positions_at >= POSITIONS_EVERY:
            self._queue_moved, self._positions_at = False, now
            positions = await self._store.queue_positions()
            for job in await self._store.active_with_status():
                if job.state is JobState.QUEUED:
                    self._latest.setdefault(job.id, job)
        elif any(job.state is JobState.QUEUED for job in self._latest.values()):
            positions = await self._store.queue_positions()
        next_due: float | None = None
        for job_id, job in list(self._latest.items()):
            final = job.state.terminal
            if not final and now - self._edited_at.get(job_id, 0.0) < self._interval:
                due = self._edited_at[job_id] + self._interval
                next_due = due if next_due is None else min(next_due, due)
                continue
            del self._latest[job_id]
            await self._show(job, positions.get(job_id), paused=job.guild_id in paused, urgent=final)
            if final:
                await self._tell_requester(job)
                for table in (self._shown, self._edited_at, self._message_ids, self._progress, self._states):
                    table.pop(job_id, None)
        if next_due is not None:
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))
            self._wakeup.set()

    async def show_now(self, job: Job) -> None:
        """Show a finished job's status at once (from a process whose board does not run)."""
        await self._show(job, None, paused=False, urgent=True)

    async def _show(self, job: Job, position: int | None, *, paused: bool, urgent: bool) -> None:
        message_id = job.status_message_id or self._message_ids.get(job.id)
        if message_id is None:
            # Claimed by this (worker) process before the gateway process that queued it had saved
            # its status message: look again.
            stored = await self._store.get(job.id)
            message_id = stored.status_message_id if stored is not None else None
            if message_id is None:
                return
            self._message_ids[job.id] = message_id
        text = render_status(job, position=position, progress=self._progress.get(job.id), paused=paused)
        if self._shown.get(job.id) == text:
            return
        await self._bot.budgets.get(job.channel_id, "edit").acquire(urgent=urgent)
        message = self._bot.get_partial_messageable(job.channel_id).get_partial_message(message_id)
        try:
            await message.edit(
                content=text, allowed_mentions=discord.AllowedMentions.none(), view=status_buttons(job)
            )
        except DISCORD_ERRORS as exc:
            # The status message is a courtesy: the job itself is unaffected if it can't be updated.
            log.info("could not update the status of blog job %d: %s", job.id, exc)
        self._shown[job.id] = text
        self._edited_at[job.id] = time.monotonic()

    async def _tell_requester(self, job: Job) -> None:
        notice = ending_notice(job)
        if notice is None:
            return
        await self._bot.budgets.get(job.channel_id, "create").acquire(urgent=True)
        channel = self._bot.get_partial_messageable(job.channel_id)
        message_id = job.status_message_id or self._message_ids.get(job.id)
        reference = (
            channel.get_partial_message(message_id).to_reference(fail_if_not_exists=False)
            if message_id
            else None
        )
        try:
            await channel.send(
                notice,
                reference=reference,  # type: ignore[arg-type]
                nonce=f"blog-end-{job.id}",  # sent again after a crash, Discord keeps one
                allowed_mentions=discord.AllowedMentions(users=[discord.Object(job.user_id)]),
            )
        except DISCORD_ERRORS as exc:
            log.info("could not tell the requester of blog job %d how it ended: %s", job.id, exc)


class Blog(commands.Cog):
    """Blog post generation."""

    blog = app_commands.Group(
        name="blog", description="Write blog posts with the local model", guild_only=True
    )

    def __init__(self, bot: LLMBot) -> None:
        self.bot = bot
        self.config = bot.config.blog
        self.store = JobStore(bot.db)
        self.board = StatusBoard(
            bot,
            self.store,
            self.config.progress_interval,
            paused_guilds=bot.settings.paused_guilds,
            supervisor=bot.supervisor,
        )
        self.worker = BlogWorker(
            self.store,
            bot.pool,
            self,
            self.config,
            paused_guilds=bot.settings.paused_guilds,
            supervisor=bot.supervisor,
        )

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(CancelButton)
        if self.bot.runs_blog_jobs:
            self.board.start()
            self.worker.start()
            # Other processes sharing a PostgreSQL database enqueue and cancel jobs too (no-ops on SQLite).
            await self.bot.db.listen(JOBS_CHANNEL, self._on_jobs_notify)
            await self.bot.db.listen(CANCEL_CHANNEL, self._on_cancel_notify)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(CancelButton)
        await self.bot.db.unlisten(JOBS_CHANNEL, self._on_jobs_notify)
        await self.bot.db.unlisten(CANCEL_CHANNEL, self._on_cancel_notify)
        await self.worker.stop()
        await self.board.stop()

    def _on_jobs_notify(self, payload: str) -> None:
        self.worker.notify()

    def _on_cancel_notify(self, payload: str) -> None:
        if payload.isdigit():
            self.worker.stop_generation(int(payload))

    # -- commands --------------------------------------------------------------------------------------

    @blog.command(name="new")
    @app_commands.describe(
        topic="What the post is about (3–300 characters)",
        style="The kind of post",
        tone="How it should sound",
        target_length="About how many words (300–5000)",
        tags="Comma-separated keywords, e.g. python, async",
    )
    @app_commands.choices(
        style=[app_commands.Choice(name=style, value=style) for style in STYLES],
        tone=[app_commands.Choice(name=tone, value=tone) for tone in TONES],
    )
    async def new(
        self,
        interaction: discord.Interaction,
        topic: app_commands.Range[str, 3, 300],
        style: str = "technical",
        tone: str = "professional",
        target_length: app_commands.Range[int, 300, 5000] = DEFAULT_TARGET_LENGTH,
        tags: str | None = None,
    ) -> None:
        """Queue a blog post; it is posted here as a Markdown file when ready."""
        settings = self.bot.settings.get(interaction.guild_id)
        channel_id = interaction.channel_id or 0
        if not settings.allows_blog_in(channel_id, getattr(interaction.channel, "parent_id", None)):
            places = ", ".join(f"<#{channel}>" for channel in settings.blog_channels)
            await interaction.response.send_message(f"⚠️ Use `/blog` in {places}.", ephemeral=True)
            return
        try:
            request = BlogRequest(
                guild_id=interaction.guild_id,
                channel_id=channel_id,
                user_id=interaction.user.id,
                topic=validate_topic(topic),
                style=validate_choice("style", style, STYLES),
                tone=validate_choice("tone", tone, TONES),
                target_length=validate_target_length(target_length),
                tags=normalise_tags(tags),
                model=settings.blog_model or self.config.model,
            )
        except InvalidRequest as exc:
            await interaction.response.send_message(f"⚠️ {exc}", ephemeral=True)
            return
        quotas = Quotas(
            per_user=settings.blog_quota or self.config.max_queued_per_user,
            per_guild=self.config.max_queued_per_guild,
            total=self.config.max_queued_total,
        )
        try:
            # Committed before we say "queued": a crash after this line loses nothing.
            job = await self.store.enqueue(request, quotas)
        except QuotaExceeded as exc:
            await interaction.response.send_message(_quota_message(exc), ephemeral=True)
            return
        callback = await interaction.response.send_message(
            render_status(job, position=await self.store.queue_position(job)),
            allowed_mentions=discord.AllowedMentions.none(),
            view=status_buttons(job) or discord.utils.MISSING,
        )
        log.info(
            "blog job %d queued guild=%s user=%s target=%d",
            job.id,
            job.guild_id,
            job.user_id,
            job.target_length,
        )
        if isinstance(callback.resource, discord.InteractionMessage):
            if self.bot.runs_blog_jobs:
                self.board.remember_message(job.id, callback.resource.id)
            else:  # a gateway process: the worker that claims the job reads the id from the database
                await self.store.set_status_messages({job.id: callback.resource.id})
        self.worker.notify()

    @blog.command(name="status")
    @app_commands.describe(job="The job number (default: your latest)")
    async def status(self, interaction: discord.Interaction, job: int | None = None) -> None:
        """Show how a blog post is coming along."""
        found = await self._visible_job(interaction, job)
        if found is None:
            return
        positions = await self.store.queue_positions()
        live = self.worker.progress.get(found.id) if found.state is JobState.RUNNING else None
        await interaction.response.send_message(
            render_status(found, position=positions.get(found.id), progress=live), ephemeral=True
        )

    @blog.command(name="list")
    async def list_jobs(self, interaction: discord.Interaction) -> None:
        """List your blog posts in this server."""
        jobs = await self.store.list_jobs(
            guild_id=interaction.guild_id, user_id=interaction.user.id, limit=10
        )
        if not jobs:
            await interaction.response.send_message("You have no blog posts here yet.", ephemeral=True)
            return
        positions = await self.store.queue_positions()
        lines = [_list_line(job, positions.get(job.id)) for job in jobs]
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @blog.command(name="cancel")
    @app_commands.describe(job="The job number to cancel")
    async def cancel(self, interaction: discord.Interaction, job: int) -> None:
        """Cancel a queued or running blog post (yours, or any with Manage Messages)."""
        found = await self._visible_job(interaction, job)
        if found is None:
            return
        cancelled = await self.cancel_job(found.id, by=interaction.user.id)
        if cancelled is None:
            await interaction.response.send_message(
                f"Blog post #{found.id} has already finished ({found.state}).", ephemeral=True
            )
            return
        if found.user_id != interaction.user.id:  # a moderator's: recorded, like /llm cancel
            await self.bot.settings.record_cancels(
                found.guild_id, interaction.user.id, [(found.id, found.user_id)], via="/blog cancel"
            )
        await interaction.response.send_message(f"Blog post #{found.id} is cancelled.", ephemeral=True)

    async def on_cancel_button(self, interaction: discord.Interaction, job_id: int) -> None:
        """Cancel pressed on a status message: the requester's job, or any with Manage Messages."""
        job = await self.store.get(job_id)
        if job is None or job.state.terminal:
            # Finished meanwhile (the status message is about to say so): the button goes.
            await interaction.response.edit_message(view=None)
            return
        if job.user_id != interaction.user.id and not interaction.permissions.manage_messages:
            await interaction.response.send_message(
                f"Only <@{job.user_id}> (who asked for it) or a moderator can cancel blog post #{job.id}.",
                ephemeral=True,
            )
            return
        cancelled = await self.cancel_job(job.id, by=interaction.user.id)
        if cancelled is not None and job.user_id != interaction.user.id:
            await self.bot.settings.record_cancels(
                job.guild_id, interaction.user.id, [(job.id, job.user_id)], via="the Cancel button"
            )
        # The status message itself shows the outcome (its board edit drops the button).
        await interaction.response.defer()

    async def cancel_job(self, job_id: int, *, by: int) -> Job | None:
        """Cancel an unfinished job: stop its generation now (closing the model connection) and show it.

        Returns the cancelled job, or None if it had already finished. Callers check who may do this.
        """
        cancelled = await self.store.cancel(job_id, by=by)
        if cancelled is None:
            return None
        stopped = self.worker.stop_generation(job_id)
        log.info("blog job %d cancelled by user=%s (generation stopped: %s)", job_id, by, stopped)
        if self.bot.runs_blog_jobs:
            self.job_changed(cancelled)
        else:  # a gateway process has no status board running: show the outcome now
            await self.board.show_now(cancelled)
        return cancelled

    async def _visible_job(self, interaction: discord.Interaction, job_id: int | None) -> Job | None:
        """The job a member may see: their own, or any in this server for a moderator. Answers if none."""
        if job_id is None:
            mine = await self.store.list_jobs(
                guild_id=interaction.guild_id, user_id=interaction.user.id, limit=1
            )
            job = mine[0] if mine else None
        else:
            job = await self.store.get(job_id)
        moderator = isinstance(interaction.user, discord.Member) and (
            interaction.user.guild_permissions.manage_messages
        )
        if (
            job is None
            or job.guild_id != interaction.guild_id
            or (job.user_id != interaction.user.id and not moderator)
        ):
            what = f"blog post #{job_id}" if job_id is not None else "a blog post of yours"
            await interaction.response.send_message(f"I can't find {what} in this server.", ephemeral=True)
            return None
        return job

    # -- Delivery (called by the worker) ---------------------------------------------------------------

    def job_changed(self, job: Job, progress: Progress | None = None) -> None:
        self.board.job_changed(job, progress)

    async def deliver(self, job: Job) -> int:
        """Post the article in the job's channel, exactly once; the posted message's id."""
        assert job.article is not None and job.slug is not None
        channel = await self._channel(job)
        existing = await self._find_existing_post(channel, job)
        if existing is not None:
            log.info("blog job %d was already posted as message %d; recording it", job.id, existing)
            return existing
        title = discord.utils.escape_markdown(job.title or job.topic)
        content = f"{delivery_marker(job.id)}for <@{job.user_id}>: **{title}** ({job.word_count} words)"
        if job.incomplete:
            content += f"\n⚠️ *Incomplete: {job.incomplete}.*"
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
        file = discord.File(io.BytesIO(job.article.encode("utf-8")), filename=f"{job.slug}.md")
        await self.bot.budgets.get(job.channel_id, "create").acquire(urgent=True)
        try:
            message = await channel.send(
                content, file=file, nonce=delivery_nonce(job.id), allowed_mentions=mentions
            )
        except discord.Forbidden:
            why = self._missing_permission(channel)
            sent = await self._tell_requester(job, why)
            where = "; it was sent to the requester by DM instead" if sent else ""
            raise DeliveryFailed(f"{why}{where}", permanent=True) from None
        except discord.NotFound:
            await self._tell_requester(job, "the channel no longer exists")
            raise DeliveryFailed("the channel no longer exists", permanent=True) from None
        except DISCORD_ERRORS as exc:
            raise DeliveryFailed(describe_discord_error(exc), permanent=not is_transient(exc)) from None
        return message.id

    def _missing_permission(self, channel: discord.abc.Messageable) -> str:
        """Which permission kept the article out of the channel, in the words of Discord's settings."""
        me = getattr(getattr(channel, "guild", None), "me", None)
        if me is None:  # a worker process has no member cache to tell which permission is missing
            return "I am not allowed to post there any more"
        if isinstance(channel, discord.Thread):
            permissions = channel.permissions_for(me)
            send = (permissions.send_messages_in_threads, "Send Messages in Threads")
        elif isinstance(channel, discord.TextChannel):
            permissions = channel.permissions_for(me)
            send = (permissions.send_messages, "Send Messages")
        else:
            return "I am not allowed to post there any more"
        for allowed, name in (
            (permissions.view_channel, "View Channel"),
            send,
            (permissions.attach_files, "Attach Files"),
        ):
            if not allowed:
                return f"I lack the {name} permission in that channel"
        return "I am not allowed to post there any more"

    async def _channel(self, job: Job) -> discord.abc.Messageable:
        channel = self.bot.get_channel(job.channel_id)
        if isinstance(channel, discord.abc.Messageable):
            return channel
        try:
            fetched = await self.bot.fetch_channel(job.channel_id)
        except (discord.NotFound, discord.Forbidden):
            await self._tell_requester(job, "the channel no longer exists")
            raise DeliveryFailed("the channel no longer exists", permanent=True) from None
        except DISCORD_ERRORS as exc:
            raise DeliveryFailed(describe_discord_error(exc), permanent=False) from None
        if not isinstance(fetched, discord.abc.Messageable):
            raise DeliveryFailed("the channel cannot hold messages", permanent=True)
        return fetched

    async def _find_existing_post(self, channel: discord.abc.Messageable, job: Job) -> int | None:
        """After a crash between posting and recording, the post is already there: find it."""
        me = self.bot.user
        marker = delivery_marker(job.id)
        try:
            async for message in channel.history(limit=RECOVERY_HISTORY_LIMIT):
                if (
                    me is not None
                    and message.author.id == me.id
                    and message.content.startswith(marker)
                    and any(attachment.filename == f"{job.slug}.md" for attachment in message.attachments)
                ):
                    return message.id
        except DISCORD_ERRORS as exc:
            log.info("could not read history for blog job %d (%s); relying on the nonce", job.id, exc)
        return None

    async def _tell_requester(self, job: Job, reason: str) -> bool:
        """The article can't go where it was asked for: send it to the requester privately instead.
        True if that worked."""
        assert job.article is not None
        try:
            user = self.bot.get_user(job.user_id) or await self.bot.fetch_user(job.user_id)
            file = discord.File(io.BytesIO(job.article.encode("utf-8")), filename=f"{job.slug}.md")
            await user.send(
                f"Your blog post #{job.id} could not be posted ({reason}), so here it is.", file=file
            )
        except DISCORD_ERRORS as exc:
            log.info("could not send blog job %d to its requester either: %s", job.id, exc)
            return False
        return True


def _quota_message(exc: QuotaExceeded) -> str:
    if exc.scope == "user":
        return f"⚠️ You already have {exc.limit} blog posts waiting. Wait for one to finish (or cancel one)."
    if exc.scope == "guild":
        return f"⚠️ This server already has {exc.limit} blog posts waiting. Please try again later."
    return "⚠️ The blog queue is full right now. Please try again later."


def _list_line(job: Job, position: int | None) -> str:
    state = f"{job.state} (position {position})" if position else str(job.state)
    return f"`#{job.id}` {discord.utils.escape_markdown(job.topic[:60])} — {state}"


async def setup(bot: LLMBot) -> None:
    await bot.add_cog(Blog(bot))
