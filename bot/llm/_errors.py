"""The exception tree every LLM backend call raises; callers turn each kind into a user message.

LLMError                  any failure talking to a model server
├── BackendUnavailable    could not connect, connection reset before any reply, 502/504  (retryable)
├── BackendBusy           503 / 429: the server's queue is full                          (retryable)
├── ModelNotFound         404 for the model: it is not pulled on that server              (permanent)
├── BadRequest            400: the request itself is wrong                                (permanent)
│   └── ContextOverflow   the prompt does not fit the model's context window (said by the
│                         server, or known before sending); carries the token counts
├── BackendError          any other HTTP error status (500 runner crashes are retryable)
├── StreamFailed          the reply broke off: an {"error"} line, a malformed line, the
│                         connection dropped, the stream ended without done:true, or an
│                         OpenAI-style stream said [DONE] without a finish reason (the
│                         server interrupted it). ``partial_text`` holds what arrived before.
├── LLMTimeout            connect / first byte / idle between chunks / overall deadline
└── Preempted             the pool stopped this (background) reply to serve a chat first;
                          ``partial_text`` holds what arrived before
"""

from __future__ import annotations

from typing import Literal

TimeoutPhase = Literal["first_byte", "idle", "deadline"]


class LLMError(Exception):
    """Base class: a call to a model server failed."""

    #: Whether trying again (on this or another server) may succeed.
    retryable: bool = False

    def __init__(self, message: str, *, backend: str = "") -> None:
        super().__init__(message)
        self.backend = backend


class BackendUnavailable(LLMError):
    """The server could not be reached or dropped the connection before answering."""

    retryable = True


class BackendBusy(LLMError):
    """The server refused the request because it is overloaded (503 or 429)."""

    retryable = True


class ModelNotFound(LLMError):
    """The server does not have the model; ``remedy`` says how to get it there, in the server's terms."""

    def __init__(self, model: str, *, backend: str = "", remedy: str = "") -> None:
        super().__init__(f"model {model!r} not found", backend=backend)
        self.model = model
        self.remedy = remedy

    def explain(self) -> str:
        """A sentence for people: what is missing, and the fix when there is a simple one."""
        where = f" on {self.backend}" if self.backend else " on the model server"
        return f"the model `{self.model}` is not available{where}" + (
            f" ({self.remedy})" if self.remedy else ""
        )


class BadRequest(LLMError):
    """The server rejected the request as malformed (400); retrying cannot help."""


class ContextOverflow(BadRequest):
    """The prompt does not fit the model's context window, even with the history trimmed.

    ``prompt_tokens`` is the server's count when it said so (else our estimate); ``context_tokens`` the
    window, when known.
    """

    def __init__(
        self, message: str, *, prompt_tokens: int | None, context_tokens: int | None, backend: str = ""
    ) -> None:
        super().__init__(message, backend=backend)
        self.prompt_tokens = prompt_tokens
        self.context_tokens = context_tokens


class BackendError(LLMError):
    """Any other error status from the server."""

    def __init__(self, message: str, *, status: int, retryable: bool, backend: str = "") -> None:
        super().__init__(message, backend=backend)
        self.status = status
        self.retryable = retryable


class StreamFailed(LLMError):
    """The reply started but did not finish; ``partial_text`` is what arrived before it broke."""

    def __init__(self, message: str, *, partial_text: str, retryable: bool = True, backend: str = "") -> None:
        super().__init__(message, backend=backend)
        self.partial_text = partial_text
        self.retryable = retryable


class LLMTimeout(LLMError):
    """A time limit ran out; ``phase`` says which one.

    Not retried: a slow first token is usually a model loading, and asking again would start over.
    """

    def __init__(
        self, phase: TimeoutPhase, seconds: float, *, partial_text: str = "", backend: str = ""
    ) -> None:
        descriptions = {
            "first_byte": "no text within",
            "idle": "the reply stalled for",
            "deadline": "the reply took longer than",
        }
        super().__init__(f"{descriptions[phase]} {seconds:g} s", backend=backend)
        self.phase = phase
        self.seconds = seconds
        self.partial_text = partial_text


class Preempted(LLMError):
    """A background generation was stopped to give its slot to a chat; continue it later from
    ``partial_text``. Not a failure of the server."""

    def __init__(self, *, partial_text: str, backend: str = "") -> None:
        super().__init__("stopped to let a chat reply go first", backend=backend)
        self.partial_text = partial_text
