"""Client for OpenAI-compatible servers (llama.cpp server, vLLM, LM Studio, Ollama's /v1): streaming
``/v1/chat/completions`` as server-sent events."""

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
from bot.llm._types import ChatMessage, GenerationStats, RetryPolicy, Timeouts

# Ollama-style option names mapped to their OpenAI request fields; others are not sent.
_OPTION_FIELDS = {
    "temperature": "temperature",
    "num_predict": "max_tokens",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
}


class OpenAIClient(HTTPBackendClient):
    """One OpenAI-compatible server. Same interface as :class:`~bot.llm.OllamaClient`."""

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
        """Stream a chat reply from ``POST /v1/chat/completions``."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
        }
        for option, value in (options or {}).items():
            if option in _OPTION_FIELDS:
                body[_OPTION_FIELDS[option]] = value
        return self._open_stream("/v1/chat/completions", body, _SSEWire(self.name, model), timeouts, retry)

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
        """A completion, as a one-turn chat (the chat endpoint is the one every such server has)."""
        messages = [ChatMessage("system", system)] if system else []
        messages.append(ChatMessage("user", prompt))
        return self.chat(model, messages, options=options, timeouts=timeouts, retry=retry)

    async def version(self) -> str:
        """A cheap health check: ``GET /v1/models`` answers."""
        await self._get_json("/v1/models")
        return "openai-compatible"

    async def list_models(self) -> list[str]:
        """Model ids from ``GET /v1/models``."""
        data = await self._get_json("/v1/models")
        return [str(entry.get("id")) for entry in data.get("data") or [] if isinstance(entry, dict)]

    async def loaded_models(self) -> list[str]:
        """Not knowable through this API: nothing is reported as loaded."""
        return []


class _SSEWire:
    """``data: {json}`` events; the reply ends with ``data: [DONE]`` after a chunk with ``finish_reason``."""

    def __init__(self, backend: str, model: str) -> None:
        self.backend = backend
        self._model = model
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] = {}

    async def error_for(self, response: httpx.Response) -> LLMError:
        status = response.status_code
        message = _error_message((await response.aread())[:2000]) or f"HTTP {status}"
        if status == 404 and "model" in message.lower():
            return ModelNotFound(self._model, backend=self.backend)
        if status == 400:
            return BadRequest(f"request refused: {message}", backend=self.backend)
        if status in (429, 503):
            return BackendBusy(f"server busy: {message}", backend=self.backend)
        if status in (502, 504):
            return BackendUnavailable(f"gateway error HTTP {status}", backend=self.backend)
        return BackendError(
            f"HTTP {status}: {message}", status=status, retryable=status >= 500, backend=self.backend
        )

    def parse_line(self, line: bytes) -> tuple[str, GenerationStats | None]:
        line = line.strip()
        if not line.startswith(b"data:"):
            return "", None  # comments (": ping"), "event:" and "id:" lines carry no text
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return "", GenerationStats(
                model=self._model,
                done_reason="length" if self._finish_reason == "length" else "stop",
                prompt_tokens=_int(self._usage.get("prompt_tokens")),
                completion_tokens=_int(self._usage.get("completion_tokens")),
            )
        try:
            data = json.loads(payload)
        except ValueError:
            raise StreamFailed(
                "the server sent a malformed event", partial_text="", backend=self.backend
            ) from None
        if not isinstance(data, dict):
            raise StreamFailed("the server sent a malformed event", partial_text="", backend=self.backend)
        if "error" in data:
            raise StreamFailed(
                f"the server reported: {_error_message(json.dumps(data).encode())}",
                partial_text="",
                backend=self.backend,
            )
        if isinstance(data.get("usage"), dict):
            self._usage = data["usage"]
        choices = data.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return "", None
        choice = choices[0]
        if choice.get("finish_reason"):
            self._finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        return (text if isinstance(text, str) else ""), None


def _error_message(body: bytes) -> str | None:
    """The message of an error body, however the server shapes it."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text or None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    if isinstance(error, str):
        return error
    return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
