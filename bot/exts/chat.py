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
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.attachments import AttachmentReader, attachment_infos, noted, strip_note
from bot.chat.prompt import Turn, build_prompt, render_system_prompt
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
from bot.streaming import StreamedReply

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
        self._answering: set[asyncio.Task[None]] = set()
        self.attachments = AttachmentReader(bot.http_client, self.config, sees_images=bot.pool.sees_images)

    async def cog_unload(self) -> None:
        """Let replies in progress finish (briefly), then stop the rest; the listener is already removed."""
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

    # -- triggering ------------------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not await self._is_for_us(message):
            return
        settings = self.bot.settings.get(message.guild.id if message.guild else None)
        parent_id = getattr(message.channel, "parent_id", None)
        if not settings.allows_chat_in(message.channel.id, parent_id):
            return  # a moderator turned chat off here: stay quiet rather than nag
        cooldown = (
            self.config.cooldown_seconds if settings.cooldown_seconds is None else settings.cooldown_seconds
        )
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
        user_id = message.author.id
        self._last_started[user_id] = time.monotonic()
        self._pending[user_id] += 1
        gate = self._gates.setdefault(user_id, asyncio.Semaphore(self.config.max_streams_per_user))
        task = asyncio.current_task()
        assert task is not None
        self._answering.add(task)
        try:
            channel = await self._reply_channel(message, question)
            await self._answer(message, question, settings, channel, gate)
        finally:
            self._answering.discard(task)
            self._pending[user_id] -= 1
            if not self._pending[user_id]:
                del self._pending[user_id]
                self._gates.pop(user_id, None)
            self._forget_old_cooldowns(cooldown)

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
            await message.reply(
                text,
                allowed_mentions=discord.AllowedMentions.none(),
                mention_author=False,
                delete_after=NOTE_LIFETIME_SECONDS,
            )
        except discord.HTTPException as exc:
            log.info("could not post a note in channel %s: %s", message.channel.id, exc)

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
        loop = asyncio.get_running_loop()
        received_at = loop.time()
        model = settings.chat_model or self.config.model
        history = await self._history(message)
        current = Turn("user", message.author.display_name, question, attachment_infos(message))
        read = await self.attachments.read(model, history, current)  # files: images and text into the turns
        prompt = build_prompt(
            self._system_prompt(message, settings.system_prompt or self.config.system_prompt),
            read.history,
            read.current,
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
            everyone=False, roles=False, users=[message.author], replied_user=False
        )
        outcome = "ok"
        stream = self.bot.pool.chat(
            model,
            prompt.messages,
            options=options,
            priority=Priority.CHAT,
            timeouts=timeouts,
            slot_timeout=self.config.queue_timeout,
        )
        reply = StreamedReply(
            message,
            self.bot.budgets,
            edit_interval=self.config.edit_interval,
            mentions=mentions,
            max_messages=self.config.max_reply_messages,
            channel=channel,
            transform=noted(read.notes),
        )
        async with reply, stream:
            if gate.locked():
                reply.waiting("⏳ I'll answer this as soon as I've finished your previous question.")
            await gate.acquire()
            watcher = asyncio.create_task(self._explain_waits(reply, stream), name="chat-wait-notice")
            try:
                async for text in stream:
                    reply.append(text)
                    if reply.broken is not None:
                        outcome = "discord-refused"
                        break
                else:
                    if stream.stats is not None and stream.stats.truncated:
                        limit = stream.max_tokens or self.config.max_tokens
                        reply.fail(f"the reply reached the {limit}-token limit and stops here")
                        outcome = "truncated"
                    else:
                        reply.finish()
            except LLMError as exc:
                outcome = type(exc).__name__
                reply.fail(describe_failure(exc, model))
            finally:
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
            "chat reply guild=%s channel=%s user=%s message=%s model=%s backend=%s outcome=%s history=%d "
            "dropped=%d first_text_ms=%s total_ms=%d chars=%d parts=%d",
            message.guild.id if message.guild else None,
            message.channel.id,
            message.author.id,
            message.id,
            model,
            stream.backend,
            outcome,
            len(stream.sent_messages or prompt.messages) - 2,
            prompt.dropped + stream.dropped,
            f"{(first_text - received_at) * 1000:.0f}" if first_text is not None else "-",
            (finished_at - received_at) * 1000,
            len(reply.text),
            len(reply.messages),
        )

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

    def _system_prompt(self, message: discord.Message, template: str) -> str:
        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        if message.guild is None:
            user = message.author.display_name
            return render_system_prompt(self.config.dm_system_prompt, user=user, date=today)
        channel = getattr(message.channel, "name", None) or "this channel"
        return render_system_prompt(template, server=message.guild.name, channel=channel, date=today)

    # -- memory ----------------------------------------------------------------------------------------

    async def _history(self, message: discord.Message) -> list[Turn]:
        """The earlier turns of this conversation, oldest first."""
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
