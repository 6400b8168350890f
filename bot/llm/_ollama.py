"""Client for Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/tags``, ``/api/ps``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from bot.llm._errors import (
    BackendBusy,
    BackendError,
    BackendUnavailable,
    BadRequest,
    LLMError,
    ModelNotFound,
    StreamFailed,
)
from bot.llm._http import HTTPBackendClient
from bot.llm._stream import TextStream
from bot.llm._types import ChatMessage, GenerationStats, RetryPolicy, ServerInfo, Timeouts

# 500 bodies that mean the runner died or failed to start: a fresh attempt may well work.
_TRANSIENT_500_MARKERS = ("terminated", "unexpectedly stopped", "timed out waiting")
_NANOSECONDS = 1e9


class OllamaClient(HTTPBackendClient):
    """One Ollama server, spoken to through a shared :class:`httpx.AsyncClient`.

    The client knows nothing of Discord. It never creates its own HTTP client: pass the one the
    application owns, so connections are pooled and closed in one place.
    """

    def chat(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        *,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
    ) -> TextStream:
        """Stream a chat reply from ``POST /api/chat``."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [_message(m) for m in messages],
            "stream": True,
            "options": dict(options or {}),
        }
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return self._stream("/api/chat", body, model, timeouts, retry)

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        system: str | None = None,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
    ) -> TextStream:
        """Stream a completion from ``POST /api/generate``."""
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "stream": True,
            "options": dict(options or {}),
        }
        if system is not None:
            body["system"] = system
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        return self._stream("/api/generate", body, model, timeouts, retry)

    async def version(self) -> str:
        """The server's version (``GET /api/version``); a cheap health check that loads no model."""
        data = await self._get_json("/api/version")
        return str(data.get("version", "unknown"))

    async def list_models(self) -> list[str]:
        """Names of the models pulled on the server (``GET /api/tags``)."""
        data = await self._get_json("/api/tags")
        return [str(entry.get("name")) for entry in data.get("models") or [] if isinstance(entry, dict)]

    async def loaded_models(self) -> list[str]:
        """Names of the models loaded in memory right now (``GET /api/ps``)."""
        data = await self._get_json("/api/ps")
        return [str(entry.get("name")) for entry in data.get("models") or [] if isinstance(entry, dict)]

    async def sees_images(self, model: str) -> bool | None:
        """Whether ``model`` takes images (``POST /api/show``); None when the server can't say.

        Ollama 0.6.4 and later list ``capabilities`` (``["completion", "vision"]``); older servers only
        have ``details.families``, where a vision model has a ``clip`` (or ``mllama``) projector. A model
        the server does not have raises :class:`ModelNotFound`.
        """
        try:
            data = await self._post_json("/api/show", {"model": model})
        except BackendError as exc:
            if exc.status == 404:
                raise ModelNotFound(model, backend=self.name) from exc
            raise
        capabilities = data.get("capabilities")
        if isinstance(capabilities, list):
            return "vision" in capabilities
        details = data.get("details")
        families = details.get("families") if isinstance(details, dict) else None
        if isinstance(families, list):
            return any(family in ("clip", "mllama") for family in families)
        return None

    async def probe(self) -> ServerInfo:
        """One health check: version, pulled models and loaded models (loads nothing)."""
        version = await self.version()
        return ServerInfo(
            version=version,
            models=tuple(await self.list_models()),
            loaded=tuple(await self.loaded_models()),
        )

    def _stream(
        self,
        path: str,
        body: dict[str, Any],
        model: str,
        timeouts: Timeouts | None,
        retry: RetryPolicy | None,
    ) -> TextStream:
        wire = _OllamaWire(self.name, model, chat=path == "/api/chat")
        return self._open_stream(path, body, wire, timeouts, retry)


class _OllamaWire:
    """Ollama's NDJSON stream: one object per line, ``done: true`` with the stats on the last one."""

    def __init__(self, backend: str, model: str, *, chat: bool) -> None:
        self.backend = backend
        self._model = model
        self._chat = chat

    async def error_for(self, response: httpx.Response) -> LLMError:
        status = response.status_code
        body = (await response.aread())[:2000]
        message = _error_text(body) or f"HTTP {status}"
        is_json_error = _error_text(body) is not None
        if status == 404 and is_json_error:
            return ModelNotFound(
                self._model, backend=self.backend, remedy=f"run `ollama pull {self._model}` there"
            )
        if status == 400:
            return BadRequest(f"request refused: {message}", backend=self.backend)
        if status in (429, 503):
            return BackendBusy(f"server busy: {message}", backend=self.backend)
        if status in (502, 504):
            return BackendUnavailable(f"gateway error HTTP {status}", backend=self.backend)
        transient = status == 500 and any(marker in message for marker in _TRANSIENT_500_MARKERS)
        if status == 404:
            message = "endpoint not found (is this an Ollama server?)"
        return BackendError(
            f"HTTP {status}: {message}", status=status, retryable=transient, backend=self.backend
        )

    async def diagnose_empty(self) -> LLMError | None:
        return None  # Ollama answers errors with a status; an empty 200 is just a broken stream

    def parse_line(self, line: bytes) -> tuple[str, GenerationStats | None]:
        try:
            data = json.loads(line)
        except ValueError:
            raise StreamFailed(
                "the server sent a malformed line", partial_text="", backend=self.backend
            ) from None
        if not isinstance(data, dict):
            raise StreamFailed("the server sent a malformed line", partial_text="", backend=self.backend)
        if "error" in data:
            message = str(data["error"])
            transient = any(marker in message for marker in _TRANSIENT_500_MARKERS)
            raise StreamFailed(
                f"the server reported: {message}", partial_text="", retryable=transient, backend=self.backend
            )
        if self._chat:
            message_obj = data.get("message")
            text = message_obj.get("content", "") if isinstance(message_obj, dict) else ""
        else:
            text = data.get("response", "")
        if not isinstance(text, str):
            raise StreamFailed("the server sent a malformed line", partial_text="", backend=self.backend)
        if data.get("done") is not True:
            return text, None
        return text, GenerationStats(
            model=str(data.get("model", self._model)),
            done_reason=str(data.get("done_reason") or "stop"),
            prompt_tokens=_int_or_none(data.get("prompt_eval_count")),
            completion_tokens=_int_or_none(data.get("eval_count")),
            total_seconds=_seconds(data.get("total_duration")),
            load_seconds=_seconds(data.get("load_duration")),
            eval_seconds=_seconds(data.get("eval_duration")),
        )


def _message(message: ChatMessage) -> dict[str, Any]:
    """A message as ``/api/chat`` takes it: images as a list of bare base64 strings."""
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.images:
        wire["images"] = [image.data for image in message.images]
    return wire


def _error_text(body: bytes) -> str | None:
    """The ``error`` field of a JSON error body, or None when the body is not one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _seconds(nanoseconds: object) -> float | None:
    number = _int_or_none(nanoseconds)
    return None if number is None else number / _NANOSECONDS
