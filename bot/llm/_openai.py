"""Client for OpenAI-compatible servers (llama.cpp server, llama-cpp-python, vLLM, LM Studio, Ollama's /v1):
streaming ``/v1/chat/completions`` as server-sent events."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from bot.llm._errors import (
    BackendBusy,
    BackendError,
    BackendUnavailable,
    BadRequest,
    ContextOverflow,
    LLMError,
    ModelNotFound,
    StreamFailed,
)
from bot.llm._http import HTTPBackendClient
from bot.llm._stream import TextStream
from bot.llm._types import ChatMessage, GenerationStats, RetryPolicy, ServerInfo, Timeouts

# Ollama-style option names mapped to their OpenAI request fields; others are not sent (the OpenAI route
# takes no num_ctx: the context window is the server's).
_OPTION_FIELDS = {
    "temperature": "temperature",
    "num_predict": "max_tokens",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
}

# How servers word "the prompt does not fit", with the (prompt tokens, window) they give:
#   llama-cpp-python: "This model's maximum context length is 512 tokens. However, you requested 881 tokens
#     (831 in the messages, 50 in the completion)."  (the same wording as OpenAI and vLLM)
#   llama-cpp-python, inner: "Requested tokens (831) exceed context window of 512"
#   llama.cpp server: "the request exceeds the available context size" with n_prompt_tokens / n_ctx fields.
_OPENAI_STYLE = re.compile(
    r"maximum context length is (?P<ctx>\d+) tokens.*?requested \d+ tokens \((?P<prompt>\d+) in the",
    re.IGNORECASE | re.DOTALL,
)
_LLAMA_CPP_PYTHON = re.compile(
    r"Requested tokens \((?P<prompt>\d+)\) exceed context window of (?P<ctx>\d+)", re.IGNORECASE
)
_CONTEXT_WORDS = ("context length", "context window", "context size", "context_length_exceeded")


class OpenAIClient(HTTPBackendClient):
    """One OpenAI-compatible server. Same interface as :class:`~bot.llm.OllamaClient`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The context window a llama.cpp server announces at /props; asked once.
        self._props_asked = False
        self._props_context: int | None = None

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
            "messages": [_message(m) for m in messages],
            "stream": True,
        }
        for option, value in (options or {}).items():
            if option in _OPTION_FIELDS:
                body[_OPTION_FIELDS[option]] = value

        async def diagnose() -> LLMError | None:
            return await self._check_context(body, model)

        wire = _SSEWire(self.name, model, diagnose)
        return self._open_stream("/v1/chat/completions", body, wire, timeouts, retry)

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
        return _model_ids(await self._get_json("/v1/models"))

    async def loaded_models(self) -> list[str]:
        """What the server serves (``GET /v1/models``): llama.cpp and vLLM list only what they have loaded."""
        return await self.list_models()

    async def probe(self) -> ServerInfo:
        """One health check: ``GET /v1/models`` (and, once, ``GET /props`` for llama.cpp's context size).

        Only for idle servers: llama-cpp-python ends a running completion when any request arrives.
        """
        data = await self._get_json("/v1/models")
        models = tuple(_model_ids(data))
        context = _max_model_len(data)
        if context is None and not self._props_asked:
            self._props_asked = True
            self._props_context = await self._props_n_ctx()
        return ServerInfo(
            version="openai-compatible",
            models=models,
            loaded=models,
            context_tokens=context or self._props_context,
        )

    async def _props_n_ctx(self) -> int | None:
        try:
            props = await self._get_json("/props")
        except LLMError:
            return None  # not a llama.cpp server (llama-cpp-python, vLLM, LM Studio answer 404)
        settings = props.get("default_generation_settings")
        value = settings.get("n_ctx") if isinstance(settings, dict) else None
        return value if isinstance(value, int) and value > 0 else None

    async def _check_context(self, body: dict[str, Any], model: str) -> LLMError | None:
        """Ask again without streaming, for one token: such a server then says 400 "context length" when
        the prompt does not fit, where its stream just closed without a word."""
        probe = {**body, "stream": False, "max_tokens": 1}
        try:
            response = await self._http.post(
                self.base_url + "/v1/chat/completions", json=probe, timeout=self._request_timeout
            )
        except httpx.HTTPError:
            return None
        if response.status_code != 400:
            return None
        return _context_error(_error_message(response.content[:4000]) or "", self.name)


def _message(message: ChatMessage) -> dict[str, Any]:
    """A message as ``/v1/chat/completions`` takes it: with images, ``content`` is a list of parts."""
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts.extend({"type": "image_url", "image_url": {"url": image.data_url}} for image in message.images)
    return {"role": message.role, "content": parts}


def _model_ids(data: dict[str, Any]) -> list[str]:
    return [str(entry.get("id")) for entry in data.get("data") or [] if isinstance(entry, dict)]


def _max_model_len(data: dict[str, Any]) -> int | None:
    """vLLM reports each model's context window as ``max_model_len``."""
    for entry in data.get("data") or []:
        if isinstance(entry, dict) and isinstance(entry.get("max_model_len"), int):
            return int(entry["max_model_len"])
    return None


def _context_error(message: str, backend: str) -> ContextOverflow | None:
    """A :class:`ContextOverflow` when ``message`` says the prompt is over the context window."""
    for pattern in (_OPENAI_STYLE, _LLAMA_CPP_PYTHON):
        match = pattern.search(message)
        if match:
            return ContextOverflow(
                f"the prompt does not fit the context window: {message}",
                prompt_tokens=int(match.group("prompt")),
                context_tokens=int(match.group("ctx")),
                backend=backend,
            )
    if any(words in message.lower() for words in _CONTEXT_WORDS):
        return ContextOverflow(
            f"the prompt does not fit the context window: {message}",
            prompt_tokens=None,
            context_tokens=None,
            backend=backend,
        )
    return None


class _SSEWire:
    """``data: {json}`` events; the reply ends with a chunk carrying ``finish_reason``, then ``data: [DONE]``.

    ``[DONE]`` without a finish reason is not an ending: llama-cpp-python sends exactly that when another
    request interrupts the generation, so it is a broken stream.
    """

    def __init__(self, backend: str, model: str, diagnose: Any = None) -> None:
        self.backend = backend
        self._model = model
        self._diagnose = diagnose
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] = {}

    async def error_for(self, response: httpx.Response) -> LLMError:
        status = response.status_code
        message = _error_message((await response.aread())[:4000]) or f"HTTP {status}"
        if status == 404 and "model" in message.lower():
            return ModelNotFound(self._model, backend=self.backend)
        if status == 400:
            return _context_error(message, self.backend) or BadRequest(
                f"request refused: {message}", backend=self.backend
            )
        if status in (429, 503):
            return BackendBusy(f"server busy: {message}", backend=self.backend)
        if status in (502, 504):
            return BackendUnavailable(f"gateway error HTTP {status}", backend=self.backend)
        return BackendError(
            f"HTTP {status}: {message}", status=status, retryable=status >= 500, backend=self.backend
        )

    async def diagnose_empty(self) -> LLMError | None:
        return await self._diagnose() if self._diagnose is not None else None

    def parse_line(self, line: bytes) -> tuple[str, GenerationStats | None]:
        line = line.strip()
        if not line.startswith(b"data:"):
            return "", None  # comments (": ping"), "event:" and "id:" lines carry no text
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return "", self._final()
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

    def _final(self) -> GenerationStats:
        """The stats for ``[DONE]``: only a finish reason of ``stop`` or ``length`` makes it an ending."""
        reason = self._finish_reason
        if reason is None:
            raise StreamFailed(
                "the server ended the reply without finishing it (it was interrupted)",
                partial_text="",
                backend=self.backend,
            )
        if reason not in ("stop", "length", "eos"):
            raise StreamFailed(
                f"the server stopped the reply early ({reason})",
                partial_text="",
                retryable=False,
                backend=self.backend,
            )
        return GenerationStats(
            model=self._model,
            done_reason="length" if reason == "length" else "stop",
            prompt_tokens=_int(self._usage.get("prompt_tokens")),
            completion_tokens=_int(self._usage.get("completion_tokens")),
        )


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
