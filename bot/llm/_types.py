"""Plain data passed to and from model servers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.backoff import backoff

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Image:
    """An image attached to a message, for vision models: its media type and its bytes in base64."""

    media_type: str  # "image/png", "image/jpeg", "image/webp" or "image/gif"
    data: str  # standard base64, no data: prefix

    @property
    def data_url(self) -> str:
        """The image as a ``data:`` URL (what OpenAI-compatible servers take)."""
        return f"data:{self.media_type};base64,{self.data}"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation; ``images`` only reach a model that can see them."""

    role: Role
    content: str
    images: tuple[Image, ...] = ()

    def without_images(self) -> ChatMessage:
        """The same turn with its images left out."""
        return ChatMessage(self.role, self.content) if self.images else self


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """What the server reported when the reply finished (every metric is optional on the wire)."""

    model: str
    done_reason: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_seconds: float | None = None
    load_seconds: float | None = None
    eval_seconds: float | None = None

    @property
    def tokens_per_second(self) -> float | None:
        """Generation speed, when the server reported it."""
        if not self.completion_tokens or not self.eval_seconds:
            return None
        return self.completion_tokens / self.eval_seconds

    @property
    def truncated(self) -> bool:
        """True when the reply stopped at the token limit rather than where the model ended it."""
        return self.done_reason == "length"


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What one health check learned about a server."""

    version: str
    #: Models the server has (Ollama: pulled; OpenAI-compatible: served).
    models: tuple[str, ...]
    #: Models in memory now, or None when the server does not say.
    loaded: tuple[str, ...] | None
    #: The server's context window in tokens, when it announces one.
    context_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Time limits for one streamed call, in seconds.

    ``first_byte`` runs from the request to the first *content* token, so it must cover waiting in the
    server's queue, loading the model (~6 s cold for a 7B model, minutes for large ones) and reading the
    prompt (seconds on a CPU). Headers, keep-alive pings and role-only chunks don't stop it.
    ``idle`` bounds the gap between two content tokens; ``total`` bounds the whole call, retries included.
    """

    first_byte: float = 120.0
    idle: float = 30.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how patiently, a call is retried before any text has been produced."""

    attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based): exponential, jittered."""
        return backoff(attempt, base=self.base_delay, cap=self.max_delay, jitter=0.25)


NO_RETRY = RetryPolicy(attempts=1)
