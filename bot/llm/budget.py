"""Fitting a conversation into a model's context window, counted in estimated tokens.

No tokenizer is at hand for every server, so tokens are estimated from characters with a ratio learned per
backend and model from the prompt token counts servers report (Ollama's ``prompt_eval_count``, OpenAI
``usage.prompt_tokens``, a context-length refusal's numbers). The first estimates are deliberately
pessimistic: a prompt over the window is silently cut from the start by Ollama (system prompt first) and
refused or cut short by llama.cpp, so guessing high costs a little history, guessing low costs the answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bot.llm._errors import ContextOverflow
from bot.llm._types import ChatMessage

#: English text runs ~4 characters per token with llama/mistral tokenizers; code and other scripts fewer.
DEFAULT_CHARS_PER_TOKEN = 3.0
#: Chat templates wrap each message in role markers (ChatML: ``<|im_start|>user\n … <|im_end|>\n``).
MESSAGE_OVERHEAD_TOKENS = 5
#: The assistant turn's opening markers after the last message.
PROMPT_OVERHEAD_TOKENS = 3
#: What one image costs, whatever its size: Ollama counts a CLIP image as 768 embeddings when it fits a
#: chat to the window (``server/prompt.go``, ``imageNumTokens``); LLaVA-1.5 uses 576, newer projectors
#: tile large images into more, so this is a middle guess rather than a bound.
IMAGE_TOKENS = 768
_MIN_RATIO, _MAX_RATIO = 1.0, 8.0


class TokenEstimator:
    """Characters-per-token for one backend and model, calibrated from the counts the server reports."""

    def __init__(self, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> None:
        self.chars_per_token = chars_per_token
        self.samples = 0

    def estimate(self, messages: Sequence[ChatMessage]) -> int:
        """Estimated prompt tokens of ``messages``, template overhead included."""
        return PROMPT_OVERHEAD_TOKENS + sum(self.message_tokens(m) for m in messages)

    def message_tokens(self, message: ChatMessage) -> int:
        text = math.ceil(len(message.content) / self.chars_per_token)
        return MESSAGE_OVERHEAD_TOKENS + text + IMAGE_TOKENS * len(message.images)

    def text_tokens(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def observe(self, messages: Sequence[ChatMessage], prompt_tokens: int) -> None:
        """Learn from a server's count of the tokens in ``messages``.

        Counts that can't be the whole prompt are ignored: Ollama reports only the tokens it had to
        evaluate when it reused a cached prefix, and the count of a prompt it cut to fit its window.
        """
        images = sum(len(m.images) for m in messages)
        overhead = PROMPT_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS * len(messages) + IMAGE_TOKENS * images
        chars = sum(len(m.content) for m in messages)
        content_tokens = prompt_tokens - overhead
        if chars < 200 or content_tokens <= 0:
            return
        measured = chars / content_tokens
        if not _MIN_RATIO <= measured <= _MAX_RATIO or (
            self.samples and not 0.5 <= measured / self.chars_per_token <= 2.0
        ):
            return  # an outlier (cached prefix, truncated prompt): not this model's tokenizer
        # The first real count replaces the guess; later ones move the average a little.
        weight = 1.0 if self.samples == 0 else 0.3
        self.chars_per_token += weight * (measured - self.chars_per_token)
        self.samples += 1


@dataclass(frozen=True, slots=True)
class Fitted:
    """The messages that fit, how many history messages were left out, and the reply's token budget."""

    messages: list[ChatMessage]
    dropped: int
    max_tokens: int
    prompt_tokens: int


def fit_messages(
    messages: Sequence[ChatMessage],
    *,
    window: int,
    reply_tokens: int,
    min_reply_tokens: int,
    estimator: TokenEstimator,
) -> Fitted:
    """Keep the system prompt(s) at the start and the last message; add history, newest first, while the
    prompt plus ``reply_tokens`` fits ``window``.

    When even the essentials leave less than ``reply_tokens`` room, the reply budget shrinks down to
    ``min_reply_tokens``; below that the prompt is refused with :class:`ContextOverflow`.
    """
    if not messages:
        raise ValueError("nothing to send")
    head = [m for m in messages[:1] if m.role == "system"]
    last = messages[-1]
    history = list(messages[len(head) : -1])
    used = estimator.estimate([*head, last])
    room = window - reply_tokens
    if used > window - min_reply_tokens:
        raise ContextOverflow(
            f"the message is too long for the model's context window (about {used} tokens of {window})",
            prompt_tokens=used,
            context_tokens=window,
        )
    kept: list[ChatMessage] = []
    for message in reversed(history):
        cost = estimator.message_tokens(message)
        if used + cost > room:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    return Fitted(
        messages=[*head, *kept, last],
        dropped=len(history) - len(kept),
        max_tokens=max(min_reply_tokens, min(reply_tokens, window - used)),
        prompt_tokens=used,
    )


def tail_that_fits(text: str, tokens: int, estimator: TokenEstimator) -> str:
    """The end of ``text`` that fits in ``tokens`` (cut at a paragraph or line start when one is near)."""
    chars = int(tokens * estimator.chars_per_token)
    if len(text) <= chars:
        return text
    tail = text[-chars:]
    for separator in ("\n\n", "\n", " "):
        cut = tail.find(separator)
        if 0 <= cut < len(tail) // 4:
            return tail[cut + len(separator) :]
    return tail
