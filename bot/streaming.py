"""Showing a model reply on Discord while it is generated.

A :class:`StreamedReply` owns one renderer task. The producer (the chat cog) feeds it text with
:meth:`~StreamedReply.append`, which never blocks, so a slow Discord never slows the model stream down;
the renderer coalesces whatever arrived into at most one edit per message per ``edit_interval``, and
every write goes through the channel's :class:`~bot.ratelimit.RateBudget`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

import discord
from discord.utils import MISSING

from bot.backoff import backoff
from bot.chat.text import MESSAGE_LIMIT, clean_output, hide_reasoning, split_message
from bot.errors import DISCORD_ERRORS, describe_discord_error, is_transient
from bot.ratelimit import ChannelBudgets, WriteKind

log = logging.getLogger(__name__)

EMPTY_REPLY = "*(the model returned an empty reply)*"
OVERFLOW_NOTE = "*(the reply is longer than this; the whole of it is attached as a file)*"
#: Transient write failures in a row (dropped connections, 5xx) before a reply is given up as broken.
MAX_WRITE_RETRIES = 5
# Discord shows "is typing…" for about 10 s after each trigger.
TYPING_REFRESH_SECONDS = 8.0


class StreamedReply:
    """A reply to ``origin``, shown as one or more messages that are edited as the text grows.

    Use as ``async with StreamedReply(...) as reply:``, call :meth:`append` per chunk, then :meth:`finish`
    (or :meth:`fail` with a note); leaving the block waits until the final text has landed on Discord.
    If Discord refuses a write (message deleted, channel gone, permission removed) or keeps failing,
    :attr:`broken` is set and the producer should stop generating; a dropped connection or a 5xx is
    retried first.
    """

    def __init__(
        self,
        target: ReplyTarget,
        budgets: ChannelBudgets,
        *,
        edit_interval: float,
        mentions: discord.AllowedMentions,
        max_messages: int = 4,
        transform: Callable[[str], str] = clean_output,
    ) -> None:
        self._target = target
        self._max_messages = max(2, max_messages)
        self._budgets = budgets
        self._edit_interval = edit_interval
        self._mentions = mentions
        self._transform = transform
        self._parts: list[str] = []
        self._note = ""
        # Shown in place of the reply while there is no text yet (why it is taking a while).
        self._waiting = ""
        # Buttons on the reply's last message (None: none); earlier messages lose theirs.
        self._controls: discord.ui.View | None = None
        #: Set once the reply is complete; also wakes a renderer that is waiting out the edit interval.
        self._finished = asyncio.Event()
        self._changed = asyncio.Event()
        self._first_text = asyncio.Event()
        self._messages: list[discord.Message] = []
        self._shown: list[tuple[str, discord.ui.View | None]] = []
        self._edited_at: list[float] = []
        self._renderer: asyncio.Task[None] | None = None
        self._typing: asyncio.Task[None] | None = None
        self._streaming = contextlib.ExitStack()
        self.broken: BaseException | None = None
        #: ``loop.time()`` when the first text became visible, for the reply's log line.
        self.first_visible_at: float | None = None

    @property
    def text(self) -> str:
        """The raw model text received so far."""
        return "".join(self._parts)

    @property
    def messages(self) -> list[discord.Message]:
        """The messages posted so far, in order."""
        return list(self._messages)

    @property
    def controls(self) -> discord.ui.View | None:
        """The buttons shown on the reply's last message."""
        return self._controls

    @controls.setter
    def controls(self, view: discord.ui.View | None) -> None:
        # Set before finish()/fail() so the final text and its buttons go out in one edit.
        self._controls = view
        self._changed.set()

    async def __aenter__(self) -> StreamedReply:
        # While the reply streams, the channel keeps an edit of its window free for our final text.
        self._streaming.enter_context(self._budgets.get(self._target.budget_key, "edit").streaming())
        self._typing = asyncio.create_task(self._keep_typing(), name="chat-typing")
        self._renderer = asyncio.create_task(self._render(), name="chat-render")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._renderer is not None and self._typing is not None
        if exc is None or isinstance(exc, Exception):
            if not self._final:
                # The producer left without saying how it ended: show what there is, marked as cut off.
                self.fail("the reply was interrupted")
            try:
                await self._renderer
            except Exception as exc:  # Discord's refusals end the renderer quietly: this is a bug
                log.exception("reply renderer failed %s", self._target.describe())
                self.broken = exc
        else:  # cancelled or shutting down: stop at once
            self._renderer.cancel()
        self._typing.cancel()
        await asyncio.gather(self._renderer, self._typing, return_exceptions=True)
        self._streaming.close()

    def append(self, text: str) -> None:
        """Add model text; the renderer shows it at its next turn."""
        if self._final:
            raise RuntimeError("the reply is already finished")
        self._parts.append(text)
        self._changed.set()

    def waiting(self, note: str) -> None:
        """Show ``note`` until the first text arrives (the reply's first message then replaces it)."""
        if not self._final and not self._parts and note != self._waiting:
            self._waiting = note
            self._changed.set()

    def finish(self) -> None:
        """The reply is complete: show the final text."""
        self._finished.set()
        self._changed.set()

    def fail(self, note: str) -> None:
        """The reply ended in an error: keep what arrived and add ``note`` (shown in italics)."""
        self._note = f"⚠️ *{note}*"
        self.finish()

    @property
    def _final(self) -> bool:
        """Whether the reply is complete (the text will not grow any more)."""
        return self._finished.is_set()

    def _body(self) -> str:
        """The text to show: reasoning hidden, cleaned, with the failure note (if any) at the end."""
        body = hide_reasoning(self._transform(self.text), final=self._final).strip()
        if self._note:
            return f"{body}\n\n{self._note}" if body else self._note
        if self._final and not body:
            return EMPTY_REPLY
        return body

    def _chunks(self) -> list[str]:
        text = hide_reasoning(self._transform(self.text), final=self._final).strip()
        if self._final and not text and not self._note:
            text = EMPTY_REPLY
        if not text and not self._final and self._waiting:
            return [self._waiting]
        chunks = split_message(text) if text else []
        if len(chunks) > self._max_messages:
            # A wall of messages helps nobody (and takes a minute to post at 5 per 5 s): the last part
            # says the whole reply follows as a file, which is attached once the reply is complete.
            chunks = [*chunks[: self._max_messages - 1], OVERFLOW_NOTE]
        if self._note:
            # The note belongs to the text it qualifies: it goes in the last message, never alone.
            if not chunks:
                chunks = [self._note]
            elif len(chunks[-1]) + 2 + len(self._note) <= MESSAGE_LIMIT:
                chunks[-1] = f"{chunks[-1]}\n\n{self._note}"
            else:
                tail = split_message(chunks[-1], MESSAGE_LIMIT - 2 - len(self._note))
                chunks[-1:] = [*tail[:-1], f"{tail[-1]}\n\n{self._note}"]
        return chunks

    @property
    def overflowed(self) -> bool:
        """Whether the reply was too long for ``max_messages`` messages (and is attached as a file)."""
        return any(chunk.startswith(OVERFLOW_NOTE) for chunk in self._chunks()[-1:])

    async def _render(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            await self._changed.wait()
            self._changed.clear()
            # Coalesce: wait until every message that needs an edit may be edited again. The final text
            # does not wait for that: it goes out as soon as the channel's rate budget has room.
            due = [self._edited_at[i] + self._edit_interval for i in self._pending()]
            delay = max(due, default=0.0) - loop.time()
            if delay > 0 and not self._final:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finished.wait(), delay)
            try:
                await self._flush()
                if self._final and not self._pending() and self._shown:
                    if self.overflowed:
                        await self._attach_whole_reply()
                    return
            except DISCORD_ERRORS as exc:
                failures += 1
                if not is_transient(exc) or failures > MAX_WRITE_RETRIES:
                    self.broken = exc
                    log.warning(
                        "stopped streaming reply %s: %s", self._target.describe(), describe_discord_error(exc)
                    )
                    return
                # A dropped connection or a 5xx: the write may or may not have happened. Edits are
                # idempotent and creates carry a nonce, so the same writes are simply made again.
                wait = backoff(failures, base=0.5, cap=8.0)
                log.info(
                    "reply write failed %s (%s); retrying in %.1fs",
                    self._target.describe(),
                    describe_discord_error(exc),
                    wait,
                )
                await asyncio.sleep(wait)
                self._changed.set()
                continue
            failures = 0

    def _wanted(self) -> list[tuple[str, discord.ui.View | None]]:
        """What each message should show now: its text, and the buttons on the last one."""
        chunks = self._chunks()
        return [(chunk, self._controls if i == len(chunks) - 1 else None) for i, chunk in enumerate(chunks)]

    def _pending(self) -> list[int]:
        """Indexes of messages whose shown state differs from what they should show now."""
        wanted = self._wanted()
        return [i for i in range(min(len(wanted), len(self._shown))) if not _same(wanted[i], self._shown[i])]

    async def _flush(self) -> None:
        """Bring every message up to date with the current text, in order, through the rate budgets."""
        loop = asyncio.get_running_loop()
        index = 0
        while True:
            wanted = self._wanted()
            if index >= len(wanted):
                return
            if index < len(self._shown) and _same(wanted[index], self._shown[index]):
                index += 1
                continue
            kind: WriteKind = "edit" if index < len(self._messages) else "create"
            await self._acquire(kind)
            content, view = shown = self._wanted()[index]  # the freshest text, now that the write is allowed
            if kind == "edit":
                self._messages[index] = await self._messages[index].edit(
                    content=content, allowed_mentions=self._mentions, view=view
                )
                self._shown[index] = shown
                self._edited_at[index] = loop.time()
            else:
                previous = self._messages[-1] if self._messages else None
                self._messages.append(
                    await self._target.post(content, index, previous, mentions=self._mentions, view=view)
                )
                self._shown.append(shown)
                self._edited_at.append(loop.time())
            if self.first_visible_at is None and content != self._waiting:
                # The first text (not a wait notice) is what the asker waited for.
                self.first_visible_at = loop.time()
                self._first_text.set()
            index += 1

    async def _acquire(self, kind: WriteKind) -> None:
        """Wait for the channel's budget to allow one write; the final text goes first, even when the
        reply finishes while an intermediate write is waiting."""
        budget = self._budgets.get(self._target.budget_key, kind)
        if not self._final:
            write = asyncio.ensure_future(budget.acquire())
            finished = asyncio.ensure_future(self._finished.wait())
            try:
                await asyncio.wait({write, finished}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                finished.cancel()
                if not write.done():
                    write.cancel()
                await asyncio.gather(write, finished, return_exceptions=True)
            if not write.cancelled():
                return
        await budget.acquire(urgent=True)

    async def _attach_whole_reply(self) -> None:
        await self._budgets.get(self._target.budget_key, "create").acquire(urgent=True)
        file = discord.File(io.BytesIO(self._body().encode("utf-8")), filename="reply.md")
        self._messages.append(
            await self._target.post(
                None, len(self._messages), self._messages[-1], mentions=self._mentions, file=file
            )
        )

    async def _keep_typing(self) -> None:
        """Show "typing…" until the first text is visible (a failed trigger just means no indicator)."""
        while not self._first_text.is_set() and not self._final:
            try:
                await self._target.typing()
            except DISCORD_ERRORS as exc:
                log.debug("typing indicator refused %s: %s", self._target.describe(), exc)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_text.wait(), TYPING_REFRESH_SECONDS)


def _same(a: tuple[str, discord.ui.View | None], b: tuple[str, discord.ui.View | None]) -> bool:
    """Whether two message states look the same (views compare by identity: set once per change)."""
    return a[0] == b[0] and a[1] is b[1]


class ReplyTarget(Protocol):
    """Where a :class:`StreamedReply` posts its messages."""

    #: The rate budget its writes count against (a channel id, or an interaction's for its webhook).
    budget_key: int

    async def post(
        self,
        content: str | None,
        index: int,
        previous: discord.Message | None,
        *,
        mentions: discord.AllowedMentions,
        view: discord.ui.View | None = None,
        file: discord.File | None = None,
    ) -> discord.Message:
        """Post the reply's message number ``index`` (``previous``: the one before it, if any)."""
        ...

    async def typing(self) -> None:
        """Show that an answer is coming."""
        ...

    def describe(self) -> str:
        """Where the reply goes, for log lines."""
        ...


class ChannelReply:
    """A reply to ``origin`` in a channel (``channel``: a thread started from it, else its own): each
    message replies to the one before, so the reply chain (the conversation's memory) runs through
    every part in order."""

    def __init__(self, origin: discord.Message, channel: discord.abc.Messageable | None = None) -> None:
        self.origin = origin
        self.channel: discord.abc.Messageable = channel or origin.channel
        self.budget_key = int(getattr(self.channel, "id", 0))
        # Per reply, not per question: a second answer to the same question (Regenerate) is a new message.
        self._nonce = secrets.token_hex(8)

    async def post(
        self,
        content: str | None,
        index: int,
        previous: discord.Message | None,
        *,
        mentions: discord.AllowedMentions,
        view: discord.ui.View | None = None,
        file: discord.File | None = None,
    ) -> discord.Message:
        previous = previous or self.origin
        # Discord replies stay within one channel: the first part in a new thread stands alone.
        same_channel = previous.channel.id == self.budget_key
        return await self.channel.send(
            content,
            reference=previous.to_reference(fail_if_not_exists=False) if same_channel else None,  # type: ignore[arg-type]
            allowed_mentions=mentions,
            # A create retried after a dropped connection gets the message the first try made
            # (Discord matches the author's nonces for a few minutes).
            nonce=f"{self._nonce}-{index}",
            view=view or MISSING,
            file=file or MISSING,
        )

    async def typing(self) -> None:
        await self.channel.typing()

    def describe(self) -> str:
        return f"channel={self.budget_key} message={self.origin.id}"


class InteractionReply:
    """The answer to a slash command: the deferred response, then follow-ups (``ephemeral``: only the
    member who asked sees them). Its writes go through the interaction's webhook, with a budget of its own."""

    def __init__(self, interaction: discord.Interaction, *, ephemeral: bool) -> None:
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.budget_key = interaction.id

    async def post(
        self,
        content: str | None,
        index: int,
        previous: discord.Message | None,
        *,
        mentions: discord.AllowedMentions,
        view: discord.ui.View | None = None,
        file: discord.File | None = None,
    ) -> discord.Message:
        if index == 0:
            return await self.interaction.edit_original_response(
                content=content, allowed_mentions=mentions, view=view
            )
        return await self.interaction.followup.send(
            content or MISSING,
            ephemeral=self.ephemeral,
            allowed_mentions=mentions,
            wait=True,
            view=view or MISSING,
            file=file or MISSING,
        )

    async def typing(self) -> None:
        return None  # a deferred response already shows "thinking…"

    def describe(self) -> str:
        return f"interaction={self.interaction.id} channel={self.interaction.channel_id}"
