"""Talking to model servers. Knows nothing of Discord.

The public names are re-exported here; the modules behind them are private.
"""

from bot.llm._errors import (
    BackendBusy,
    BackendError,
    BackendUnavailable,
    BadRequest,
    ContextOverflow,
    LLMError,
    LLMTimeout,
    ModelNotFound,
    Preempted,
    StreamFailed,
)
from bot.llm._ollama import OllamaClient
from bot.llm._openai import OpenAIClient
from bot.llm._stream import TextStream
from bot.llm._types import (
    NO_RETRY,
    ChatMessage,
    GenerationStats,
    Image,
    RetryPolicy,
    ServerInfo,
    Timeouts,
)

__all__ = [
    "NO_RETRY",
    "BackendBusy",
    "BackendError",
    "BackendUnavailable",
    "BadRequest",
    "ChatMessage",
    "ContextOverflow",
    "GenerationStats",
    "Image",
    "LLMError",
    "LLMTimeout",
    "ModelNotFound",
    "OllamaClient",
    "OpenAIClient",
    "Preempted",
    "RetryPolicy",
    "ServerInfo",
    "StreamFailed",
    "TextStream",
    "Timeouts",
]
