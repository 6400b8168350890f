"""Building the model's message list from a conversation. Pure functions; no Discord imports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from bot.llm import ChatMessage, Image

if TYPE_CHECKING:
    from bot.chat.attachments import AttachmentInfo


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of the conversation, already turned into plain text.

    ``attachments`` are the files the message had, not read yet; once read (:mod:`bot.chat.attachments`),
    text files are part of ``content`` and pictures are ``images``.
    """

    role: Literal["user", "assistant"]
    author: str
    content: str
    attachments: tuple[AttachmentInfo, ...] = ()
    images: tuple[Image, ...] = ()


@dataclass(frozen=True, slots=True)
class Prompt:
    """The messages to send, and how many earlier turns did not fit."""

    messages: list[ChatMessage]
    dropped: int


def render_system_prompt(template: str, **values: str) -> str:
    """Fill the placeholders (``{server}``, ``{channel}``, ``{user}``, ``{date}``) named in ``values``.

    Plain replacement rather than ``str.format``: a moderator's prompt may contain other braces.
    """
    for name, value in values.items():
        template = template.replace(f"{{{name}}}", value)
    return template


def build_prompt(
    system_prompt: str,
    history: Sequence[Turn],
    current: Turn,
    *,
    max_messages: int,
    max_chars: int,
) -> Prompt:
    """The system prompt, as many of the newest ``history`` turns as fit, then ``current``.

    The system prompt and the current turn are always kept; older turns are dropped first once either
    ``max_messages`` or ``max_chars`` (counted over the history) would be exceeded.
    """
    # With several people in one conversation, the model needs to know who said what.
    speakers = {turn.author for turn in (*history, current) if turn.role == "user"}
    named = len(speakers) > 1

    def message(turn: Turn) -> ChatMessage:
        content = f"{turn.author}: {turn.content}" if named and turn.role == "user" else turn.content
        return ChatMessage(turn.role, content, turn.images)

    kept: list[ChatMessage] = []
    used = 0
    for turn in reversed(history[-max_messages:] if max_messages else ()):
        candidate = message(turn)
        if used + len(candidate.content) > max_chars:
            break
        kept.append(candidate)
        used += len(candidate.content)
    kept.reverse()
    messages = [ChatMessage("system", system_prompt), *kept, message(current)]
    return Prompt(messages=messages, dropped=len(history) - len(kept))
