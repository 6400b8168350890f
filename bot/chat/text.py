"""Turning model output into Discord-sized, Discord-safe text. Pure functions; no Discord imports."""

from __future__ import annotations

import re

#: Discord's limit on a message's content, in characters.
MESSAGE_LIMIT = 2000

_FENCE_LINE = re.compile(r"^[ \t]*(`{3,}|~{3,})([^\s`]*)")
# The fence and language tag are echoed when a block is reopened; cap them so they can't eat the message.
_MAX_FENCE = 10
_MAX_LANGUAGE = 20
_CLOSE_RESERVE = 1 + _MAX_FENCE
_SEPARATORS = ("\n\n", "\n", " ")

# A reasoning block, with the whitespace around it, at the very start of a reply.
_LEADING_THINK = re.compile(r"\s*<think>.*?</think>\s*", re.DOTALL)
_THINK_OPEN = "<think>"
# C0 controls other than tab and newline, DEL, and C1 controls: invisible at best, confusing at worst. Lone
# surrogates (a JSON "\ud800" escape decodes to one) cannot be encoded as UTF-8 at all.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters.

    Cuts at a paragraph break, else a line break, else a space, else mid-word; the separator at a cut is
    dropped. A code block that a cut falls inside is closed at the end of the chunk and reopened, with its
    language tag, at the start of the next one.

    The split is *prefix-stable*: a chunk followed by more text depends only on the text up to its end
    plus one window, so while a reply grows, every chunk but the last stays as it was sent.
    """
    if limit < 64:
        raise ValueError("limit is too small to hold a reopened code block")
    chunks: list[str] = []
    reopen = ""
    rest = text
    while True:
        body = reopen + rest
        if len(body) <= limit:
            if body.strip() or not chunks:
                chunks.append(body)
            return chunks
        cut, separator_length = _best_cut(body, len(reopen), limit - _CLOSE_RESERVE)
        piece = body[:cut]
        state = _code_block_state(piece)
        open_block = None if state is None else state[:2]
        if state is not None and state[2]:
            # The cut fell on the line that opens the block: cut before that line instead, or, when it is
            # the whole window, leave the fence alone rather than invent a block around half an info string.
            line_start = piece.rfind("\n")
            if line_start > len(reopen):
                cut, separator_length = line_start, 1
                piece = body[:cut]
                open_block = _open_code_block(piece)
            else:
                open_block = None
        if open_block is None:
            reopen = ""
        else:
            fence, language = open_block
            piece += "\n" + fence
            reopen = f"{fence}{language}\n"
        chunks.append(piece)
        rest = body[cut + separator_length :]


def _best_cut(body: str, low: int, high: int) -> tuple[int, int]:
    """Where to cut ``body`` so the first part ends at or before ``high``: (index, separator length)."""
    # A separator in the second half of the window gives a full-looking chunk; prefer bigger breaks.
    middle = low + (high - low) // 2
    for separator in _SEPARATORS:
        position = body.rfind(separator, middle, high)
        if position > low:
            return position, len(separator)
    for separator in _SEPARATORS[1:]:
        position = body.rfind(separator, low + 1, high)
        if position > low:
            return position, len(separator)
    return high, 0


def _open_code_block(text: str) -> tuple[str, str] | None:
    """The fence and language tag of a code block still open at the end of ``text``, else None."""
    state = _code_block_state(text)
    return None if state is None else (state[0], state[1])


def _code_block_state(text: str) -> tuple[str, str, bool] | None:
    """Like :func:`_open_code_block`, plus whether the block's opening line is the last line of ``text``."""
    open_fence: str | None = None
    language = ""
    opener = -1
    lines = text.split("\n")
    for index, line in enumerate(lines):
        match = _FENCE_LINE.match(line)
        if match is None:
            continue
        fence = match.group(1)
        if open_fence is None:
            open_fence, language, opener = fence, match.group(2), index
        elif fence[0] == open_fence[0] and len(fence) >= len(open_fence) and not match.group(2):
            open_fence = None
    if open_fence is None:
        return None
    return open_fence[:_MAX_FENCE], language[:_MAX_LANGUAGE], opener == len(lines) - 1


def hide_reasoning(text: str, *, final: bool) -> str:
    """Remove the ``<think>…</think>`` block that reasoning models (DeepSeek-R1, Qwen3) emit before their
    answer.

    Only a block that *starts* the reply (after optional whitespace) is reasoning: one that is closed is
    removed with the whitespace around it (and so is a second one right after it); one that is never
    closed hides everything, also when ``final``. A ``<think>`` later in the text ("use the <think> tag")
    is part of the answer and is left alone. While streaming (``final=False``) a half-written ``<think``
    at the very start is held back too, so the reasoning never flashes on screen.
    """
    while True:
        match = _LEADING_THINK.match(text)
        if match is None:
            break
        text = text[match.end() :]
    head = text.lstrip()
    if head.startswith(_THINK_OPEN):
        return ""
    if not final and head and _THINK_OPEN.startswith(head):
        return ""
    return text


def clean_output(text: str) -> str:
    """Model text made harmless for Discord: control characters dropped, line endings normalised.

    Mentions are not rewritten here: every message the bot sends carries ``allowed_mentions`` that let
    nobody but the asker be pinged, which Discord enforces whatever the text says.
    """
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
