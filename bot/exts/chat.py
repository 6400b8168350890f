"""Chat: mention the bot (or reply to it, or DM it) and it answers, streaming the model's reply.

The conversation's memory is Discord itself: the reply chain leading to the question (or the thread the
bot owns) is read back on every turn, from the message cache and then from the API, so nothing is lost
when the bot restarts and two people talking at once never share a history.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.attachments import AttachmentReader, attachment_infos, noted, strip_note
from bot.chat.prompt import Turn, build_prompt, render_system_prompt
from bot.chat.text import clean_output
from bot.errors import DISCORD_ERRORS
from bot.llm import (
    BackendBusy,
    BackendUnavailable,
    ContextOverflow,
    LLMError,
    LLMTimeout,
    ModelNotFound,
    StreamFailed,
    Timeouts,
)
from bot.llm.pool import PooledStream, Priority
from bot.settings import GuildSettings
from bot.streaming import ChannelReply, InteractionReply, ReplyTarget, StreamedReply

if TYPE_CHECKING:
    from bot.bot import LLMBot

log = logging.getLogger(__name__)

FAILURE_NOTE = re.compile(r"\n*⚠️ \*[^\n]*\*\s*$")
USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")
CHANNEL_MENTION = re.compile(r"<#(\d+)>")
SHUTDOWN_GRACE_SECONDS = 10.0
# Notes about limits are clutter once read.
NOTE_LIFETIME_SECONDS = 15.0
# Questions one member may have waiting behind their reply in progress; more are refused.
MAX_WAITING_PER_USER = 2
# A reply that has shown nothing for this long says why (waiting for a server, reading the prompt).
WAIT_NOTICE_SECONDS = 2.0
#: How ``/chat reset`` marks a fresh start in a DM or thread: reading the conversation back stops there.
RESET_MARKER = "🧹 Fresh start"
#: The question behind the Continue button.
CONTINUE_PROMPT = "Continue your answer exactly where it stopped, without repeating anything."
INTERRUPTED_NOTE = "⚠️ *the reply was interrupted*"


@dataclass(frozen=True, slots=True)
class Request:
    """One answer to write: who asked, where (for the log), and the prompt's parts."""

    asker: discord.abc.User
    guild: discord.Guild | None
    #: The message the answer replies to (0: none, as for /ask), for the Regenerate button.
    origin_id: int
    model: str
    system_prompt: str
    history: list[Turn]
    current: Turn


@dataclass(eq=False)
class LiveReply:
    """A reply being written, so its Stop button can find it."""

    reply: StreamedReply
    asker_id: int
    consumer: asyncio.Task[str] | None = None
    stopped_by: str | None = None

    def stop(self, by: str) -> None:
        """Stop generating now; the text so far stays, marked as stopped by ``by``."""
        if self.consumer is not None and self.stopped_by is None:
            self.stopped_by = by
            self.consumer.cancel()


class ReplyButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"llmbot:(?P<action>stop|regenerate|continue):(?P<asker>[0-9]+):(?P<origin>[0-9]+)",
):
    """Stop, Regenerate or Continue on a chat reply. The ``custom_id`` carries everything a press needs
    (the action, who asked, the message answered), so the buttons work across restarts."""

    LOOKS: ClassVar[dict[str, tuple[str, str, discord.ButtonStyle]]] = {
        "stop": ("Stop", "⏹️", discord.ButtonStyle.secondary),
        "regenerate": ("Regenerate", "🔄", discord.ButtonStyle.secondary),
        "continue": ("Continue", "⏩", discord.ButtonStyle.primary),
    }

    def __init__(self, action: str, asker_id: int, origin_id: int) -> None:
        label, emoji, style = self.LOOKS[action]
        super().__init__(
            discord.ui.Button(
                label=label, emoji=emoji, style=style, custom_id=f"llmbot:{action}:{asker_id}:{origin_id}"
            )
        )
        self.action = action
        self.asker_id = asker_id
        self.origin_id = origin_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> ReplyButton:
        return cls(match["action"], int(match["asker"]), int(match["origin"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog(Chat.__cog_name__)
        if isinstance(cog, Chat):
            await cog.on_reply_button(interaction, self)


@dataclass(frozen=True, slots=True)
class ReplyButtons:
    """The buttons of one reply: Stop while it streams; Regenerate, and Continue if it was cut, after."""

    asker_id: int
    origin_id: int
    #: Made once per state: the reply re-edits a message only when its buttons change.
    _views: dict[str, discord.ui.View | None] = field(default_factory=dict)

    def streaming(self) -> discord.ui.View:
        view = self._view("stop")
        assert view is not None
        return view

    def finished(self, *, cut: bool) -> discord.ui.View | None:
        if not self.origin_id:
            return None  # an /ask answer: nothing to answer again or to reply to
        return self._view("regenerate", "continue") if cut else self._view("regenerate")

    def _view(self, *actions: str) -> discord.ui.View | None:
        key = ",".join(actions)
        if key not in self._views:
            view = discord.ui.View(timeout=None)
            for action in actions:
                view.add_item(ReplyButton(action, self.asker_id, self.origin_id))
            # Presses reach ReplyButton through add_dynamic_items; a stopped view is not stored per message.
            view.stop()
            self._views[key] = view
        return self._views[key]


def describe_failure(error: LLMError, model: str) -> str:
    """A short, specific sentence for the person waiting; never a traceback."""
    if isinstance(error, ModelNotFound):
        explanation = error.explain()
        return f"{explanation[:1].upper()}{explanation[1:]}."
    if isinstance(error, BackendUnavailable):
        return "I can't reach the model server right now. Please try again in a minute."
    if isinstance(error, BackendBusy):
        return "The model server is busy. Please try again in a moment."
    if isinstance(error, ContextOverflow):
        if error.prompt_tokens and error.context_tokens:
            size = f" (about {error.prompt_tokens} tokens; it holds {error.context_tokens})"
        else:
            size = ""
        return f"Your message is too long for the model's context window{size}. Please shorten it."
    if isinstance(error, LLMTimeout):
        if error.partial_text:
            return f"The reply was cut off: {error}."
        return f"The model did not answer in time ({error})."
    if isinstance(error, StreamFailed):
        return "The reply was cut off: the model server stopped in the middle of it."
    return "The model server returned an error. Please try again later."


class Chat(commands.Cog):
    """Answers mentions, replies and DMs with a streamed model reply."""

    chat = app_commands.Group(name="chat", description="Your conversation with the bot")

    def __init__(self, bot: LLMBot) -> None:
        self.bot = bot
        self.config = bot.config.chat
        self._last_started: dict[int, float] = {}
        # Per member: how many of their replies are being written or waiting, and the gate that lets
        # ``max_streams_per_user`` of them run at once (a second question waits its turn).
        self._pending: Counter[int] = Counter()
        self._gates: dict[int, asyncio.Semaphore] = {}
        # discord.py runs each on_message in its own task; we keep the ones answering, to drain them.
        self._answering: set[asyncio.Task[Any]] = set()
        self._live: set[LiveReply] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        self.attachments = AttachmentReader(bot.http_client, self.config, sees_images=bot.pool.sees_images)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ReplyButton)

    async def cog_unload(self) -> None:
        """Let replies in progress finish (briefly), then stop the rest; the listener is already removed."""
        self.bot.remove_dynamic_items(ReplyButton)
        for task in list(self._cleanups):
            task.cancel()  # the notes stay; better than a traceback at shutdown
        try:
            await asyncio.wait_for(self.wait_until_idle(), SHUTDOWN_GRACE_SECONDS)
        except TimeoutError:
            unfinished = list(self._answering)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def wait_until_idle(self) -> None:
        """Return once no reply is being written (replies that start meanwhile are waited for too)."""
        while self._answering:
            await asyncio.wait(set(self._answering))

    @chat.command(name="reset")
    async def reset(self, interaction: discord.Interaction) -> None:
        """Start a fresh conversation: in a DM or my thread, forget what came before."""
        channel = interaction.channel
        if isinstance(channel, discord.DMChannel) or self._own_thread(channel):
            await interaction.response.send_message(
                f"{RESET_MARKER}: I won't remember anything above this message."
            )
            return
        await interaction.response.send_message(
            "Here every mention that isn't a reply already starts a fresh conversation; reply to one of my "
            "answers to go on with it.",
            ephemeral=True,
        )

    @app_commands.command(name="ask")
    @app_commands.describe(
        question="What you want to ask the model", private="Only you see the answer (default: everyone)"
    )
    async def ask(
        self,
        interaction: discord.Interaction,
        question: app_commands.Range[str, 1, 4000],
        private: bool = False,
    ) -> None:
        """Ask the model something; the answer streams in here."""
        settings = self.bot.settings.get(interaction.guild_id)
        channel_id = interaction.channel_id or 0
        refusal = None
        if interaction.guild_id is None and not self.config.allow_dms:
            refusal = "I don't answer in DMs here; ask me in a server channel."
        elif not settings.allows_chat_in(channel_id, place(interaction.channel)[1]):
            refusal = "Chat is turned off in this channel."
        elif len(question) > self.config.max_prompt_chars:
            refusal = (
                f"That question is too long for me ({len(question)} characters; "
                f"the limit is {self.config.max_prompt_chars})."
            )
        cooldown = self._cooldown(settings)
        refusal = refusal or self._check_limits(interaction.user.id, cooldown)
        if refusal is not None:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        await interaction.response.defer(thinking=True, ephemeral=private)
        user = interaction.user
        model = self._model(settings, interaction.channel)
        system = self._system_prompt(interaction.guild, interaction.channel, user, settings)
        current = Turn("user", user.display_name, question)
        async with self._tracked(user.id, cooldown) as gate:
            await self._respond(
                Request(user, interaction.guild, 0, model, system, [], current),
                InteractionReply(interaction, ephemeral=private),
                gate,
            )

    async def on_reply_button(self, interaction: discord.Interaction, button: ReplyButton) -> None:
        """Stop, Regenerate or Continue pressed on one of our replies."""
        message, user = interaction.message, interaction.user
        if message is None:
            return
        if user.id != button.asker_id and not interaction.permissions.manage_messages:
            await interaction.response.send_message(
                f"Only <@{button.asker_id}> (who asked) or a moderator can use these buttons.", ephemeral=True
            )
            return
        if button.action == "stop":
            await self._stop(interaction, message, button)
            return
        settings = self.bot.settings.get(interaction.guild_id)
        cooldown = self._cooldown(settings)
        refusal = self._check_limits(user.id, cooldown)
        if not settings.allows_chat_in(*place(message.channel)):
            refusal = "Chat is turned off in this channel."
        if refusal is not None:
            await interaction.response.send_message(refusal, ephemeral=True)
            return
        # These buttons are used up: the new answer brings its own.
        await interaction.response.edit_message(view=None)
        async with self._tracked(user.id, cooldown) as gate:
            if button.action == "continue":
                await self._continue(message, user, settings, gate)
                return
            origin = await self._fetch(message.channel, button.origin_id)
            me = self.bot.user
            if origin is None or me is None:
                await interaction.followup.send(
                    "The message I answered is gone, so I can't answer it again.", ephemeral=True
                )
            elif origin.author.id == me.id:  # this reply continued an earlier one: continue it afresh
                await self._continue(origin, user, settings, gate)
            else:
                question = readable_content(origin, self.bot)
                await self._answer(origin, question, settings, message.channel, gate)

    async def _stop(
        self, interaction: discord.Interaction, message: discord.Message, button: ReplyButton
    ) -> None:
        live = next((live for live in self._live if message.id in {m.id for m in live.reply.messages}), None)
        if live is not None:
            live.stop(interaction.user.display_name)
            await interaction.response.defer()  # the reply's own last edit shows that it stopped
            return
        # Nothing is writing this reply any more (the bot restarted meanwhile): say it ended early.
        text = FAILURE_NOTE.sub("", message.content).rstrip()
        await interaction.response.edit_message(
            content=f"{text}\n\n{INTERRUPTED_NOTE}" if text else INTERRUPTED_NOTE,
            view=ReplyButtons(button.asker_id, button.origin_id).finished(cut=bool(text)),
        )

    async def _fetch(self, channel: discord.abc.Messageable, message_id: int) -> discord.Message | None:
        """A message in ``channel`` (or, for a thread, in its parent: the question a thread started from)."""
        if not message_id:
            return None
        cached = self.bot.get_cached_message(message_id)
        if cached is not None:
            return cached
        places = [channel]
        if isinstance(channel, discord.Thread) and isinstance(channel.parent, discord.TextChannel):
            places.append(channel.parent)
        for place in places:
            with contextlib.suppress(discord.NotFound, discord.Forbidden):
                return await place.fetch_message(message_id)
        return None

    # -- triggering ------------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not await self._is_for_us(message):
            return
        settings = self.bot.settings.get(message.guild.id if message.guild else None)
        if not settings.allows_chat_in(*place(message.channel)):
            return  # a moderator turned chat off here: stay quiet rather than nag
        cooldown = self._cooldown(settings)
        refusal = self._check_limits(message.author.id, cooldown)
        if refusal is None:
            question = readable_content(message, self.bot)
            if not question and not message.attachments:
                refusal = "Mention me with a question, and I'll answer."
            elif len(question) > self.config.max_prompt_chars:
                refusal = (
                    f"That message is too long for me ({len(question)} characters; "
                    f"the limit is {self.config.max_prompt_chars})."
                )
        if refusal is not None:
            await self._note(message, refusal)
            return
        async with self._tracked(message.author.id, cooldown) as gate:
            channel = await self._reply_channel(message, question)
            await self._answer(message, question, settings, channel, gate)

    @contextlib.asynccontextmanager
    async def _tracked(self, user_id: int, cooldown: float) -> AsyncIterator[asyncio.Semaphore]:
        """Count an answer for ``user_id`` while it is written (cooldown, waiting limit, shutdown drain);
        yields the gate that lets ``max_streams_per_user`` of theirs run at once."""
        self._last_started[user_id] = time.monotonic()
        self._pending[user_id] += 1
        gate = self._gates.setdefault(user_id, asyncio.Semaphore(self.config.max_streams_per_user))
        task = asyncio.current_task()
        assert task is not None
        self._answering.add(task)
        try:
            yield gate
        finally:
            self._answering.discard(task)
            self._pending[user_id] -= 1
            if not self._pending[user_id]:
                del self._pending[user_id]
                self._gates.pop(user_id, None)
            self._forget_old_cooldowns(cooldown)

    def _cooldown(self, settings: GuildSettings) -> float:
        return (
            self.config.cooldown_seconds if settings.cooldown_seconds is None else settings.cooldown_seconds
        )

    async def _is_for_us(self, message: discord.Message) -> bool:
        me = self.bot.user
        if (
            me is None
            or message.author.bot
            or message.type
            not in (
                discord.MessageType.default,
                discord.MessageType.reply,
            )
        ):
            return False
        if message.guild is None:
            return self.config.allow_dms
        if self._own_thread(message.channel):
            return True  # in a thread the bot started, every message continues the conversation
        if any(user.id == me.id for user in message.mentions) and f"{me.id}>" in message.content:
            return True
        if message.guild.self_role is not None and message.guild.self_role in message.role_mentions:
            return True
        # A reply to one of our chat answers continues the conversation without a new mention.
        parent = await self._referenced(message)
        return parent is not None and is_chat_answer(parent, me.id)

    def _check_limits(self, user_id: int, cooldown: float) -> str | None:
        if self._pending[user_id] >= self.config.max_streams_per_user + MAX_WAITING_PER_USER:
            return "You already have questions waiting for an answer; please wait for those first."
        last = self._last_started.get(user_id)
        if last is not None:
            wait = cooldown - (time.monotonic() - last)
            if wait > 0:
                return f"Slow down a little: try again in {wait:.0f} s."
        return None

    def _forget_old_cooldowns(self, cooldown: float) -> None:
        """Keep the cooldown table to the members still inside their cooldown."""
        horizon = time.monotonic() - max(cooldown, self.config.cooldown_seconds)
        for user_id in [user for user, at in self._last_started.items() if at < horizon]:
            del self._last_started[user_id]

    async def _note(self, message: discord.Message, text: str) -> None:
        try:
            note = await message.reply(
                text, allowed_mentions=discord.AllowedMentions.none(), mention_author=False
            )
        except DISCORD_ERRORS as exc:
            log.info("could not post a note in channel %s: %s", message.channel.id, exc)
            return
        # Not discord.py's delete_after: its task outlives the bot's HTTP session when the bot stops
        # within the note's lifetime, and dies with a traceback. Ours is cancelled on unload.
        task = asyncio.create_task(self._delete_later(note), name="chat-note-cleanup")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _delete_later(self, note: discord.Message) -> None:
        await asyncio.sleep(NOTE_LIFETIME_SECONDS)
        try:
            await note.delete()
        except DISCORD_ERRORS as exc:
            log.debug("could not delete note %s: %s", note.id, exc)

    # -- answering -------------------------------------------------------------------------------------

    async def _reply_channel(self, message: discord.Message, question: str) -> discord.abc.Messageable:
        """Where the answer goes: a new thread started from the question when ``reply_in_threads`` is on
        (and the question is a fresh mention in a text channel), else the question's channel."""
        if not self.config.reply_in_threads or not isinstance(message.channel, discord.TextChannel):
            return message.channel
        if message.reference is not None:
            return message.channel  # a reply continues its chain where it is
        try:
            return await message.create_thread(name=(question.splitlines()[0][:90] or "conversation"))
        except discord.HTTPException as exc:
            log.info(
                "could not start a thread in channel %s (%s); answering in place", message.channel.id, exc
            )
            return message.channel

    async def _answer(
        self,
        message: discord.Message,
        question: str,
        settings: GuildSettings,
        channel: discord.abc.Messageable,
        gate: asyncio.Semaphore,
    ) -> None:
        """Answer ``message`` (whose text, mentions made readable, is ``question``) in ``channel``."""
        model = self._model(settings, message.channel)
        history = await self._history(message)
        current = Turn("user", message.author.display_name, question, attachment_infos(message))
        read = await self.attachments.read(model, history, current)  # files: images and text into the turns
        system = self._system_prompt(message.guild, message.channel, message.author, settings)
        await self._respond(
            Request(message.author, message.guild, message.id, model, system, read.history, read.current),
            ChannelReply(message, channel),
            gate,
            transform=noted(read.notes),
        )

    async def _continue(
        self,
        reply: discord.Message,
        asker: discord.abc.User,
        settings: GuildSettings,
        gate: asyncio.Semaphore,
    ) -> None:
        """Go on with our cut ``reply``: its conversation, with the reply as the last turn, and a request
        to continue from where it stopped."""
        model = self._model(settings, reply.channel)
        history = await self._history(reply, including=True)
        system = self._system_prompt(reply.guild, reply.channel, asker, settings)
        current = Turn("user", asker.display_name, CONTINUE_PROMPT)
        await self._respond(
            Request(asker, reply.guild, reply.id, model, system, history, current), ChannelReply(reply), gate
        )

    async def _respond(
        self,
        request: Request,
        target: ReplyTarget,
        gate: asyncio.Semaphore,
        *,
        transform: Callable[[str], str] = clean_output,
    ) -> None:
        """Stream the model's answer to ``request`` into ``target``, with its buttons, and log it."""
        loop = asyncio.get_running_loop()
        received_at = loop.time()
        prompt = build_prompt(
            request.system_prompt,
            request.history,
            request.current,
            max_messages=self.config.history_messages,
            max_chars=self.config.history_chars,
        )
        options = {
            "temperature": self.config.temperature,
            "num_predict": self.config.max_tokens,
            # Always the same num_ctx: a different one makes Ollama reload the model.
            "num_ctx": self.config.num_ctx,
        }
        timeouts = Timeouts(
            first_byte=self.config.first_token_timeout,
            idle=self.config.idle_timeout,
            total=self.config.deadline,
        )
        # Nobody is pinged but the asker, and only if the model writes their mention: the reply itself is
        # silent (no replied_user ping); @everyone, roles and other users stay inert whatever the text says.
        mentions = discord.AllowedMentions(
            everyone=False, roles=False, users=[request.asker], replied_user=False
        )
        stream = self.bot.pool.chat(
            request.model,
            prompt.messages,
            options=options,
            priority=Priority.CHAT,
            timeouts=timeouts,
            slot_timeout=self.config.queue_timeout,
        )
        reply = StreamedReply(
            target,
            self.bot.budgets,
            edit_interval=self.config.edit_interval,
            mentions=mentions,
            max_messages=self.config.max_reply_messages,
            transform=transform,
        )
        buttons = ReplyButtons(request.asker.id, request.origin_id)
        live = LiveReply(reply, request.asker.id)
        async with reply, stream:
            reply.controls = buttons.streaming()
            if gate.locked():
                reply.waiting("⏳ I'll answer this as soon as I've finished your previous question.")
            await gate.acquire()
            watcher = asyncio.create_task(self._explain_waits(reply, stream), name="chat-wait-notice")
            live.consumer = asyncio.create_task(
                self._consume(stream, reply, request.model, buttons), name="chat-consume"
            )
            self._live.add(live)
            try:
                outcome = await live.consumer
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if live.stopped_by is None or (current is not None and current.cancelling()):
                    raise
                # Stopped with the button: keep the text so far, marked, and offer to go on.
                reply.controls = buttons.finished(cut=bool(reply.text))
                reply.fail(f"stopped by {live.stopped_by}")
                outcome = "stopped"
            finally:
                self._live.discard(live)
                gate.release()
                watcher.cancel()
        finished_at = loop.time()
        first_text = reply.first_visible_at
        metrics = self.bot.metrics
        metrics.chat_replies.labels(outcome).inc()
        if first_text is not None:
            metrics.chat_first_text.observe(first_text - received_at)
        metrics.chat_final_text.observe(finished_at - received_at)
        log.info(
            "chat reply guild=%s %s user=%s model=%s backend=%s outcome=%s history=%d "
            "dropped=%d first_text_ms=%s total_ms=%d chars=%d parts=%d",
            request.guild.id if request.guild else None,
            target.describe(),
            request.asker.id,
            request.model,
            stream.backend,
            outcome,
            len(stream.sent_messages or prompt.messages) - 2,
            prompt.dropped + stream.dropped,
            f"{(first_text - received_at) * 1000:.0f}" if first_text is not None else "-",
            (finished_at - received_at) * 1000,
            len(reply.text),
            len(reply.messages),
        )

    async def _consume(
        self, stream: PooledStream, reply: StreamedReply, model: str, buttons: ReplyButtons
    ) -> str:
        """Feed the model's text into the reply and end it (finished, cut at the budget, or broken, each
        with its buttons); how it ended."""
        try:
            async for text in stream:
                reply.append(text)
                if reply.broken is not None:
                    return "discord-refused"
        except LLMError as exc:
            reply.controls = buttons.finished(cut=bool(reply.text))
            reply.fail(describe_failure(exc, model))
            return type(exc).__name__
        if stream.stats is not None and stream.stats.truncated:
            limit = stream.max_tokens or self.config.max_tokens
            reply.controls = buttons.finished(cut=True)
            reply.fail(f"the reply reached the {limit}-token limit and stops here")
            return "truncated"
        reply.controls = buttons.finished(cut=False)
        reply.finish()
        return "ok"

    async def _explain_waits(self, reply: StreamedReply, stream: PooledStream) -> None:
        """While nothing is shown, say why after a moment: waiting in line for a model server (and where),
        or the model reading the conversation."""
        await asyncio.sleep(WAIT_NOTICE_SECONDS)
        while not reply.text:
            position = self.bot.pool.position(stream)
            if position is not None:
                place = f" — you're #{position} in line" if position > 1 else " — you're next"
                reply.waiting(f"⏳ Waiting for a model server{place}.")
            elif stream.started_at is not None:
                reply.waiting("⏳ The model is reading the conversation…")
            await asyncio.sleep(WAIT_NOTICE_SECONDS)

    def _model(self, settings: GuildSettings, channel: object) -> str:
        """The chat model in ``channel``: the channel's choice, else the server's, else the config's."""
        return settings.chat_model_in(*place(channel)) or self.config.model

    def _system_prompt(
        self,
        guild: discord.Guild | None,
        channel: object,
        user: discord.abc.User,
        settings: GuildSettings,
    ) -> str:
        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        if guild is None:
            return render_system_prompt(self.config.dm_system_prompt, user=user.display_name, date=today)
        template = settings.system_prompt_in(*place(channel)) or self.config.system_prompt
        name = getattr(channel, "name", None) or "this channel"
        return render_system_prompt(template, server=guild.name, channel=name, date=today)

    # -- memory ----------------------------------------------------------------------------------------

    async def _history(self, message: discord.Message, *, including: bool = False) -> list[Turn]:
        """The earlier turns of this conversation, oldest first (``including`` ``message`` itself)."""
        me = self.bot.user
        assert me is not None
        limit = self.config.history_messages
        if limit == 0:
            return []
        if self._own_thread(message.channel):
            chain = await self._thread_history(message, limit * 4)
        elif message.guild is None and message.reference is None:
            # A DM is one conversation: its recent messages are the memory, no Reply needed.
            chain = [m async for m in message.channel.history(limit=limit * 4, before=message)]
        else:
            chain = await self._reply_chain(message, limit * 4)
        if including:
            chain.insert(0, message)
        # A /chat reset marker ends the conversation read back (the chain is newest first).
        fresh = next(
            (i for i, m in enumerate(chain) if m.author.id == me.id and m.content.startswith(RESET_MARKER)),
            None,
        )
        if fresh is not None:
            chain = chain[:fresh]
        turns: list[Turn] = []
        for earlier in reversed(chain):
            if earlier.author.id == me.id:
                content = strip_note(FAILURE_NOTE.sub("", earlier.content))
                if turns and turns[-1].role == "assistant":  # the next part of the same answer
                    turns[-1] = Turn("assistant", turns[-1].author, f"{turns[-1].content}\n{content}")
                else:
                    turns.append(Turn("assistant", me.display_name, content))
            else:
                author, text = earlier.author.display_name, readable_content(earlier, self.bot)
                turns.append(Turn("user", author, text, attachment_infos(earlier)))
        return [turn for turn in turns if turn.content.strip() or turn.attachments]

    async def _reply_chain(self, message: discord.Message, most: int) -> list[discord.Message]:
        """The messages ``message`` replies to, newest first (a multi-part answer counts each part)."""
        chain: list[discord.Message] = []
        current = message
        while len(chain) < most:
            parent = await self._referenced(current)
            if parent is None:
                break
            chain.append(parent)
            current = parent
        return chain

    async def _thread_history(self, message: discord.Message, most: int) -> list[discord.Message]:
        """The earlier messages of a thread the bot started, newest first, ending with the question that
        started it (a thread started from a message has that message's id, in the parent channel)."""
        thread = message.channel
        assert isinstance(thread, discord.Thread)
        earlier = [m async for m in thread.history(limit=most, before=message)]
        if len(earlier) < most and isinstance(thread.parent, discord.TextChannel):
            # If the question was deleted, the thread alone is the conversation.
            with contextlib.suppress(discord.NotFound, discord.Forbidden):
                earlier.append(await thread.parent.fetch_message(thread.id))
        return earlier

    def _own_thread(self, channel: object) -> bool:
        me = self.bot.user
        return isinstance(channel, discord.Thread) and me is not None and channel.owner_id == me.id

    async def _referenced(self, message: discord.Message) -> discord.Message | None:
        """The message ``message`` replies to: from the payload, the cache, or the API."""
        reference = message.reference
        if reference is None or reference.message_id is None:
            return None
        if isinstance(reference.resolved, discord.Message):
            return reference.resolved
        cached = self.bot.get_cached_message(reference.message_id)
        if cached is not None:
            return cached
        channel = message.channel
        if reference.channel_id != channel.id:
            found = self.bot.get_channel(reference.channel_id)
            if not isinstance(found, discord.abc.Messageable):
                return None
            channel = found
        try:
            return await channel.fetch_message(reference.message_id)
        except (discord.NotFound, discord.Forbidden):
            return None


def place(channel: object) -> tuple[int, int | None]:
    """(channel id, parent channel id): per-channel settings of a thread follow its parent."""
    return int(getattr(channel, "id", 0) or 0), getattr(channel, "parent_id", None)


def is_chat_answer(message: discord.Message, bot_id: int) -> bool:
    """Whether ``message`` is one of our chat answers (they always reply to something)."""
    return (
        message.author.id == bot_id and message.reference is not None and message.interaction_metadata is None
    )


def readable_content(message: discord.Message, bot: commands.Bot) -> str:
    """The message text for the model: our own mention removed, other mentions as readable names."""
    me = bot.user
    text = message.content
    if me is not None:
        text = re.sub(rf"<@!?{me.id}>", "", text)
    guild = message.guild

    def user_name(match: re.Match[str]) -> str:
        user_id = int(match.group(1))
        user = discord.utils.get(message.mentions, id=user_id) or (
            guild.get_member(user_id) if guild else None
        )
        return f"@{user.display_name}" if user is not None else "@someone"

    def role_name(match: re.Match[str]) -> str:
        role = guild.get_role(int(match.group(1))) if guild else None
        return f"@{role.name}" if role is not None else "@role"

    def channel_name(match: re.Match[str]) -> str:
        channel = bot.get_channel(int(match.group(1)))
        return f"#{getattr(channel, 'name', 'channel')}"

    text = USER_MENTION.sub(user_name, text)
    text = ROLE_MENTION.sub(role_name, text)
    text = CHANNEL_MENTION.sub(channel_name, text)
    return text.strip()


async def setup(bot: LLMBot) -> None:
    await bot.add_cog(Chat(bot))
