"""The fake Ollama HTTP server: routes, scheduling, faults, harsh options and the request log."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeGuard

from aiohttp import web

from tests.fakes.ollama_server.replies import (
    article,
    asks_for_blog_post,
    chat_reply,
    chatty_article,
    message_tokens,
    tokenize,
)

VERSION = "0.5.7"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error"
)
FAULT_KINDS = (
    "die_mid_stream",
    "status",
    "hang",
    "error_line",
    "done_without_finish",
    "keepalive_only",
    "length_after",
)
_DEFAULT_AFTER_TOKENS = {"error_line": 3, "die_mid_stream": 5, "done_without_finish": 5, "length_after": 5}
# Unlimited speed still yields to the event loop now and then, and writes lines in batches.
UNLIMITED_BATCH = 64
# Ollama's default context window before v0.6 (api/types.go DefaultOptions NumCtx). v0.6-v0.11 default to
# 4096 (OLLAMA_CONTEXT_LENGTH); the newest pick 4k/32k/256k by VRAM (envconfig/config.go).
OLLAMA_DEFAULT_NUM_CTX = 2048
# Ollama's NumKeep default (api/types.go): the tokens kept at the start when a prompt is cut.
OLLAMA_NUM_KEEP = 4
# Probes: requests a health checker sends; logged apart from generations (GET /_fake/probes).
PROBE_PATHS = frozenset({"/v1/models", "/api/version", "/api/tags", "/api/ps"})
_SSE_DONE = b"data: [DONE]\n\n"
#: Models that take images (by name before the tag): ``/api/show`` lists "vision" in their capabilities.
VISION_MODELS = frozenset({"llava", "bakllava", "llama3.2-vision", "moondream", "minicpm-v", "qwen2.5vl"})
# Images sent to a model without a vision projector: the Ollama engine's error (model/model.go
# ErrNoVisionModel, wrapped by runner/ollamarunner "Failed to create new sequence", status 500). Runners of
# older text-only models silently drop the images instead; the fake takes the harsh answer.
NO_VISION = "Failed to create new sequence: this model is missing data required for image input"
# Bytes that decode as no known image (Go's image.ErrFormat, through the same runner path).
NOT_AN_IMAGE = "Failed to create new sequence: failed to process inputs: image: unknown format"
# llama.cpp's server without a multimodal projector, for image parts on /v1 (an invalid_request_error).
OPENAI_NO_VISION = (
    "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"
)
# Ollama's openai.decodeImageURL: data: URLs of these image types only (the fake also takes GIF, as
# llama.cpp and OpenAI do); anything else is 400 "invalid image input".
_DATA_URL_TYPES = ("jpeg", "jpg", "png", "webp", "gif")
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_ARRIVAL = web.RequestKey("arrival", int)  # the request's number in order of arrival


def normalise(name: str) -> str:
    """``llama2`` and ``llama2:latest`` name the same model."""
    return name if ":" in name else f"{name}:latest"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json", charset="utf-8"
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))


# -- options settable at construction, with POST /_fake/config and as CLI flags ---------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tokens_per_second": (lambda v: v is None or (_is_number(v) and v > 0), "a number > 0 or null"),
    "load_seconds": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "max_queue": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "max_loaded": (lambda v: v is None or (_is_int(v) and v >= 1), "an integer >= 1 or null"),
    "subword_tokens": (lambda v: isinstance(v, bool), "a boolean"),
    "prompt_tokens_per_second": (lambda v: v is None or (_is_number(v) and v > 0), "a number > 0 or null"),
    "openai_ping_interval": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "interrupt_requests": (lambda v: isinstance(v, bool), "a boolean"),
    "serialize_requests": (lambda v: isinstance(v, bool), "a boolean"),
    "num_ctx": (lambda v: v is None or (_is_int(v) and v > 2 * OLLAMA_NUM_KEEP), "an integer > 8 or null"),
    "props_endpoint": (lambda v: isinstance(v, bool), "a boolean"),
    "chatty_articles": (lambda v: isinstance(v, bool), "a boolean"),
    "openai_overflow_empty_stream": (lambda v: isinstance(v, bool), "a boolean"),
}
#: The options :meth:`FakeOllamaServer.configure` and ``POST /_fake/config`` accept.
CONFIG_OPTIONS = tuple(_CHECKS)


@dataclass
class _Model:
    name: str
    slots: asyncio.Semaphore
    loaded: bool = False
    loading: asyncio.Task[None] | None = None
    in_flight: int = 0
    last_used: float = 0.0


@dataclass
class _Fault:
    kind: str
    count: int
    status: int = 500
    after_tokens: int = 0
    model: str | None = None
    path: str | None = None


@dataclass
class _Stats:
    loads: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)


@dataclass
class _Job:
    """One generation request, checked and planned, waiting to be served."""

    route: str  # "chat", "generate" or "openai"
    name: str  # the model as the request spelled it
    model: _Model
    stream: bool
    fault: _Fault | None
    tokens: list[str]  # the reply, already cut at the token budget and the context window
    finish: str  # "stop" or "length": how the reply ends when nothing goes wrong
    prompt_tokens: int
    record: dict[str, Any]
    received: float
    load_seconds: float = 0.0
    prompt_seconds: float = 0.0


@dataclass
class _Plan:
    """How a reply goes out: ``send`` tokens, then ``ending``."""

    send: int
    ending: str  # "finish", "length", "die", "hang", "error_line", "no_finish", "keepalive"


class _SSE:
    """One ``/v1`` event stream: writes never interleave with the ping task's."""

    def __init__(self, response: web.StreamResponse, record: dict[str, Any]) -> None:
        self.response = response
        self.record = record
        self.lock = asyncio.Lock()
        self.closed = False
        self.interrupt = asyncio.Event()

    async def send(self, data: bytes) -> None:
        async with self.lock:
            await self.response.write(data)

    async def finish(self, data: bytes) -> bool:
        """Write the last bytes of the stream (no ping after them); False if it had already ended."""
        async with self.lock:
            if self.closed:
                return False
            self.closed = True
            await self.response.write(data)
            return True

    async def ping_forever(self, interval: float) -> None:
        """sse-starlette's ``_ping``: a comment every ``interval`` seconds from the start, whatever else is
        sent (llama-cpp-python passes ``sep="\\n"``, so a ping is ``: ping - <UTC time>\\n\\n``)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await asyncio.sleep(interval)
                async with self.lock:
                    if self.closed:
                        return
                    stamp = datetime.datetime.now(datetime.UTC)
                    await self.response.write(f": ping - {stamp}\n\n".encode())
                    self.record["pings"] += 1


class FakeOllamaServer:
    """See the package docstring. Use ``async with FakeOllamaServer(...) as server``."""

    def __init__(
        self,
        models: list[str] | tuple[str, ...] = ("llama2", "mistral:latest"),
        *,
        tokens_per_second: float | None = None,
        load_seconds: float = 0.0,
        num_parallel: int = 1,
        max_queue: int = 512,
        max_loaded: int | None = None,
        subword_tokens: bool = False,
        prompt_tokens_per_second: float | None = None,
        openai_ping_interval: float = 15.0,
        interrupt_requests: bool = True,
        serialize_requests: bool = True,
        num_ctx: int | None = None,
        props_endpoint: bool = False,
        chatty_articles: bool = False,
        openai_overflow_empty_stream: bool = True,
    ) -> None:
        self.tokens_per_second: float | None = None
        self.load_seconds = 0.0
        self.max_queue = 512
        self.max_loaded: int | None = None
        self.subword_tokens = False
        self.prompt_tokens_per_second: float | None = None
        self.openai_ping_interval = 15.0
        self.interrupt_requests = True
        self.serialize_requests = True
        self.num_ctx: int | None = None
        self.props_endpoint = False
        self.chatty_articles = False
        self.openai_overflow_empty_stream = True
        self.configure(
            tokens_per_second=tokens_per_second,
            load_seconds=load_seconds,
            max_queue=max_queue,
            max_loaded=max_loaded,
            subword_tokens=subword_tokens,
            prompt_tokens_per_second=prompt_tokens_per_second,
            openai_ping_interval=openai_ping_interval,
            interrupt_requests=interrupt_requests,
            serialize_requests=serialize_requests,
            num_ctx=num_ctx,
            props_endpoint=props_endpoint,
            chatty_articles=chatty_articles,
            openai_overflow_empty_stream=openai_overflow_empty_stream,
        )
        self.num_parallel = num_parallel
        self._models = {
            normalise(name): _Model(normalise(name), asyncio.Semaphore(num_parallel)) for name in models
        }
        self._load_lock = asyncio.Lock()
        self._idle = asyncio.Condition()
        self._pending_loads = 0
        self._scripts: dict[str, deque[str]] = {}
        # The whole texts handed out lately, so that a request to continue one gets its rest (see _reply_for).
        self._served: deque[str] = deque(maxlen=64)
        self._faults: list[_Fault] = []
        self._stats = _Stats()
        self.requests: list[dict[str, Any]] = []
        self.probes: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._arrivals = itertools.count(1)
        self._generating = 0  # generation requests between arrival and answer (any route)
        self._openai_pending: set[int] = set()  # /v1 completions not yet answered, by arrival number
        self._openai_done = asyncio.Condition()
        self._sse_streams: set[_SSE] = set()
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._arrival])
        app.router.add_route("GET", "/", self._root)
        app.router.add_route("HEAD", "/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_get("/v1/models", self._openai_models)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_get("/props", self._props)
        app.router.add_post("/_fake/script", self._control_script)
        app.router.add_post("/_fake/faults", self._control_faults)
        app.router.add_get("/_fake/requests", self._control_requests)
        app.router.add_get("/_fake/probes", self._control_probes)
        app.router.add_get("/_fake/stats", self._control_stats)
        app.router.add_get("/_fake/config", self._control_config)
        app.router.add_post("/_fake/config", self._control_config)
        app.router.add_post("/_fake/reset", self._control_reset)
        # handler_cancellation: a client that goes away cancels its handler, as Ollama cancels generation.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for model in self._models.values():
            if model.loading is not None and not model.loading.done():
                model.loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await model.loading

    async def __aenter__(self) -> FakeOllamaServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- test controls (also over HTTP) ----------------------------------------------------------------

    def configure(self, **options: Any) -> None:
        """Change options at run time (names: :data:`CONFIG_OPTIONS`); raises ValueError if one is bad.

        Nothing changes unless every option is valid. A change applies to requests that arrive after it."""
        for name, value in options.items():
            if name not in _CHECKS:
                raise ValueError(f"unknown option {name!r}; known: {', '.join(CONFIG_OPTIONS)}")
            check, expected = _CHECKS[name]
            if not check(value):
                raise ValueError(f"{name} must be {expected}, not {value!r}")
        for name, value in options.items():
            setattr(self, name, value)

    @property
    def config(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CONFIG_OPTIONS}

    def script(self, model: str, replies: list[str]) -> None:
        """The next requests for ``model`` get these exact texts, in order."""
        self._scripts.setdefault(normalise(model), deque()).extend(replies)

    def add_fault(self, spec: dict[str, Any]) -> None:
        """Queue a fault (see the package docstring); raises ValueError if malformed."""
        kind = spec.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        count = spec.get("count", 1)
        status = spec.get("status", 500)
        after = spec.get("after_tokens", _DEFAULT_AFTER_TOKENS.get(kind, 0))
        if not all(_is_int(value) for value in (count, status, after)):
            raise ValueError("count, status and after_tokens must be integers")
        model = spec.get("model")
        self._faults.append(
            _Fault(kind, count, status, after, normalise(model) if model else None, spec.get("path"))
        )

    @property
    def load_count(self) -> dict[str, int]:
        return dict(self._stats.loads)

    def reset(self) -> None:
        self.requests.clear()
        self.probes.clear()
        self._scripts.clear()
        self._faults.clear()
        self._stats = _Stats()

    def _tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.subword_tokens)

    # -- every request ---------------------------------------------------------------------------------

    @web.middleware
    async def _arrival(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Number each request; with ``interrupt_requests``, end every ``/v1`` stream now running.

        llama-cpp-python (``llama_cpp/server/app.py``, ``get_event_publisher``): a streaming completion
        checks after each chunk whether another request waits for the model lock (every ``/v1`` route
        takes it, ``GET /v1/models`` included) and if so sends ``data: [DONE]`` and stops, with no
        finish_reason. The fake ends it at once, wherever it is."""
        if request.path.startswith("/_fake/"):
            return await handler(request)
        request[_ARRIVAL] = next(self._arrivals)
        if self.interrupt_requests:
            for sse in self._sse_streams:
                sse.interrupt.set()
        if request.path in PROBE_PATHS:
            probe = {
                "path": request.path,
                "method": request.method,
                "received_at": time.monotonic(),
                "busy": self._generating > 0,
                "answered_at": None,
                "status": None,
            }
            self.probes.append(probe)
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                probe["status"] = exc.status
                raise
            finally:
                probe["answered_at"] = time.monotonic()
            probe["status"] = response.status
            return response
        return await handler(request)

    # -- metadata routes -------------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return _json({"version": VERSION})

    async def _tags(self, request: web.Request) -> web.Response:
        return _json({"models": [self._describe(name) for name in self._models]})

    async def _ps(self, request: web.Request) -> web.Response:
        expires = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)).isoformat()
        loaded = [
            {**self._describe(model.name), "expires_at": expires, "size_vram": 3_825_819_519}
            for model in self._models.values()
            if model.loaded
        ]
        return _json({"models": loaded})

    async def _show(self, request: web.Request) -> web.Response:
        body, error = await self._read_body(request)
        if error is not None:
            return error
        assert body is not None
        name = body.get("model") or body.get("name")
        if not name:
            return _error(400, "model is required")
        if normalise(str(name)) not in self._models:
            return _error(404, f"model '{name}' not found")
        vision = sees_images(str(name))
        return _json(
            {
                "modelfile": "",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": self._describe(normalise(str(name)))["details"],
                "model_info": {"general.architecture": "llama", "general.parameter_count": 6_738_415_616},
                "modified_at": "2024-05-01T12:00:00.000000000Z",
                # api.ShowResponse (Ollama 0.6.4+): types/model/capability.go names.
                "capabilities": ["completion", "vision"] if vision else ["completion"],
            }
        )

    async def _openai_models(self, request: web.Request) -> web.Response:
        if self.serialize_requests:
            # llama-cpp-python's GET /v1/models depends on get_llama_proxy, the lock every completion holds
            # until it ends: it waits behind the completions that came before it.
            arrival = request[_ARRIVAL]
            async with self._openai_done:
                await self._openai_done.wait_for(lambda: all(n > arrival for n in self._openai_pending))
        return _json(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "library"}
                    for name in self._models
                ],
            }
        )

    async def _props(self, request: web.Request) -> web.Response:
        """llama.cpp's own server (``tools/server``) has ``GET /props``; llama-cpp-python does not (404)."""
        if not self.props_endpoint:
            return _json({"detail": "Not Found"}, 404)
        n_ctx = self.num_ctx or OLLAMA_DEFAULT_NUM_CTX
        name = next(iter(self._models), "model")
        return _json(
            {
                "default_generation_settings": {
                    "n_ctx": n_ctx,
                    "n_predict": -1,
                    "model": f"/models/{name}.gguf",
                    "seed": -1,
                    "temperature": 0.8,
                    "top_k": 40,
                    "top_p": 0.95,
                },
                "total_slots": self.num_parallel,
                "model_path": f"/models/{name}.gguf",
                "chat_template": "{{ messages }}",
                "build_info": "b0000-fake",
            }
        )

    def _describe(self, name: str) -> dict[str, Any]:
        family = name.split(":")[0]
        return {
            "name": name,
            "model": name,
            "modified_at": "2024-05-01T12:00:00.000000000Z",
            "size": 3_825_819_519,
            "digest": f"{abs(hash(name)):064x}"[:64],
            "details": {
                "format": "gguf",
                "family": family,
                # A vision model's projector shows as a "clip" family (all Ollama versions).
                "families": [family, "clip"] if sees_images(name) else [family],
                "parameter_size": "7B",
                "quantization_level": "Q4_0",
            },
        }

    # -- generation routes -----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "chat")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "generate")

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "openai")

    async def _complete(self, request: web.Request, route: str) -> web.StreamResponse:
        record: dict[str, Any] = {
            "path": request.path,
            "body": None,
            "model": None,
            "received_at": time.monotonic(),
            "headers_at": None,
            "first_token_at": None,
            "finished_at": None,
            "disconnected": False,
            "status": None,
            "tokens": 0,
            "prompt_tokens": None,
            "prompt_truncated": False,
            "prompt_dropped_messages": 0,
            "prompt_cut_tokens": 0,
            "finish_reason": None,
            "interrupted": False,
            "completion_text": "",
            "pings": 0,
            "images": 0,
        }
        self.requests.append(record)
        arrival = request[_ARRIVAL]
        self._generating += 1
        if route == "openai":
            self._openai_pending.add(arrival)
        try:
            response = await self._serve(request, route, record)
        except asyncio.CancelledError:
            record["disconnected"] = True
            record["finished_at"] = time.monotonic()
            raise
        except ConnectionResetError:
            record["disconnected"] = True
            record["finished_at"] = time.monotonic()
            return web.Response(status=499)
        finally:
            self._generating -= 1
            if route == "openai":
                self._openai_pending.discard(arrival)
                async with self._openai_done:
                    self._openai_done.notify_all()
        record["finished_at"] = record["finished_at"] or time.monotonic()
        record["status"] = record["status"] or response.status
        return response

    async def _serve(self, request: web.Request, route: str, record: dict[str, Any]) -> web.StreamResponse:
        received = time.monotonic()
        body, error = await self._read_body(request)
        record["body"] = body
        if error is not None:
            return self._openai_error(error) if route == "openai" else error
        assert body is not None
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return self._fail(route, 400, "model is required")
        record["model"] = name
        model = self._models.get(normalise(name))
        if model is None:
            return self._fail(route, 404, f"model '{name}' not found")
        messages = body.get("messages")
        prompt = body.get("prompt")
        if route in ("chat", "openai") and messages is not None and not isinstance(messages, list):
            return self._fail(route, 400, "json: cannot unmarshal into Go struct field ChatRequest.messages")
        images, refusal = self._check_images(route, name, messages)
        record["images"] = images
        if refusal is not None:
            return refusal
        options: dict[str, Any] = body["options"] if isinstance(body.get("options"), dict) else {}
        num_predict = body.get("max_tokens") if route == "openai" else options.get("num_predict")
        stream = body.get("stream", route != "openai")  # Ollama's own routes stream unless told not to

        fault = self._take_fault(request.path, model.name)
        if fault is not None and fault.kind == "status":
            return self._fail(route, fault.status, self._status_message(fault.status, name))
        if fault is not None and fault.kind == "hang" and fault.after_tokens == 0:
            await asyncio.Event().wait()  # until the client goes away (the handler is cancelled)

        if route != "openai" and not messages and not prompt:
            return await self._load_only(route, name, model, body, record)

        prompt_messages = self._prompt_messages(route, messages, prompt, body.get("system"))
        if route == "openai":
            window = self.num_ctx
            prompt_tokens = sum(message_tokens(m, self.subword_tokens) for m in prompt_messages)
            record["prompt_tokens"] = prompt_tokens
            if window is not None and prompt_tokens >= window:
                return await self._context_overflow(
                    request, stream, prompt_tokens, window, num_predict, record
                )
            budget = num_predict if _is_int(num_predict) and num_predict > 0 else None
        else:
            requested = options.get("num_ctx")
            window = requested if _is_int(requested) and requested > 0 else self.num_ctx
            window = window or OLLAMA_DEFAULT_NUM_CTX
            prompt_tokens = self._fit_ollama_prompt(route, prompt_messages, window, record)
            budget = num_predict if _is_int(num_predict) and num_predict >= 0 else None

        text = self._reply_for(model.name, route, messages, prompt, num_predict)
        tokens = self._tokenize(text)
        finish = "stop"
        room = None if window is None else max(0, window - prompt_tokens)
        for limit in (budget, room):
            if limit is not None and len(tokens) > limit:
                tokens, finish = tokens[:limit], "length"
        job = _Job(route, name, model, stream, fault, tokens, finish, prompt_tokens, record, received)
        if route == "openai" and stream:
            return await self._openai_stream(request, job)
        busy = await self._acquire(job)
        if busy is not None:
            return self._fail(route, 503, BUSY)
        try:
            await self._read_prompt(job)
            if route == "openai":
                return await self._openai_whole(request, job)
            return await self._ollama_reply(request, job)
        finally:
            await self._release(model)

    def _check_images(self, route: str, name: str, messages: Any) -> tuple[int, web.Response | None]:
        """How many images the request carries, and Ollama's refusal when they are malformed or the model
        cannot see (before any slot or load, as Ollama decodes the request first)."""
        blobs: list[bytes] = []
        for message in messages if isinstance(messages, list) else []:
            if not isinstance(message, dict):
                continue
            if route == "chat" and "images" in message:
                images = message["images"]
                if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
                    error = "json: cannot unmarshal into Go struct field Message.messages.images"
                    return 0, _error(400, error)
                for image in images:
                    try:
                        blobs.append(base64.b64decode(image, validate=True))
                    except (binascii.Error, ValueError):
                        return 0, _error(400, "illegal base64 data at input byte 0")
            content = message.get("content")
            if route == "openai" and isinstance(content, list):
                for part in content:
                    if not isinstance(part, dict) or part.get("type") != "image_url":
                        continue
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    blob = _decode_data_url(url)
                    if isinstance(blob, str):
                        return 0, self._fail(route, 400, blob)
                    blobs.append(blob)
        if not blobs:
            return 0, None
        if not sees_images(name):
            if route == "openai":
                return len(blobs), self._fail(route, 400, OPENAI_NO_VISION)
            return len(blobs), _error(500, NO_VISION)
        if not all(blob.startswith(_IMAGE_MAGIC) or blob[8:12] == b"WEBP" for blob in blobs):
            return len(blobs), self._fail(route, 500 if route == "chat" else 400, NOT_AN_IMAGE)
        return len(blobs), None

    def _prompt_messages(self, route: str, messages: Any, prompt: Any, system: Any) -> list[Any]:
        if route != "generate":
            return list(messages or [])
        parts: list[Any] = [{"role": "system", "content": system}] if isinstance(system, str) else []
        return [*parts, {"role": "user", "content": prompt if isinstance(prompt, str) else ""}]

    def _fit_ollama_prompt(self, route: str, messages: list[Any], window: int, record: dict[str, Any]) -> int:
        """The prompt's token count once Ollama has silently made it fit ``window``.

        First (``server/prompt.go`` ``chatPrompt``, chat only) whole messages are dropped from the start,
        system messages kept, until the rest fits; the last message always stays. Then, if the prompt is
        still longer than ``window - 1`` tokens, the runner (``llm/llama_server.go``) keeps the first
        ``num_keep`` (4) tokens and the last ``contextShiftPromptLimit - 4``, where the limit is
        ``window - (window - 4) // 2``: the start of the prompt (the system prompt with it) is gone.
        (Runners up to v0.13 kept the last ``window - 4`` and then shifted the context while generating.)"""
        counts = [message_tokens(m, self.subword_tokens) for m in messages]
        kept = list(range(len(messages)))
        if route == "chat":
            for start in range(len(messages)):
                systems = [i for i in range(start) if _role(messages[i]) == "system"]
                candidate = systems + list(range(start, len(messages)))
                if sum(counts[i] for i in candidate) <= window or start == len(messages) - 1:
                    kept = candidate
                    break
        total = sum(counts[i] for i in kept)
        record["prompt_dropped_messages"] = len(messages) - len(kept)
        if total > window - 1:
            limit = window - max((window - OLLAMA_NUM_KEEP) // 2, 1)
            record["prompt_cut_tokens"] = total - limit
            total = limit
        record["prompt_truncated"] = bool(record["prompt_dropped_messages"] or record["prompt_cut_tokens"])
        record["prompt_tokens"] = total
        return total

    async def _context_overflow(
        self,
        request: web.Request,
        stream: bool,
        prompt_tokens: int,
        window: int,
        max_tokens: Any,
        record: dict[str, Any],
    ) -> web.StreamResponse:
        """llama-cpp-python: ``Llama._create_completion`` raises "Requested tokens (N) exceed context window
        of M" (``llama_cpp/llama.py``), which ``RouteErrorHandler`` (``llama_cpp/server/errors.py``) turns
        into a 400 with OpenAI's wording. With ``stream: true`` the error is raised only once the event
        stream has begun, so the client gets 200 and an empty stream (``openai_overflow_empty_stream``)."""
        if stream and self.openai_overflow_empty_stream:
            response = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
            response.content_type = "text/event-stream"
            await response.prepare(request)
            record["headers_at"] = time.monotonic()
            await response.write_eof()
            return response
        asked = (max_tokens if _is_int(max_tokens) else 0) + prompt_tokens
        message = (
            f"This model's maximum context length is {window} tokens. However, you requested {asked} tokens "
            f"({prompt_tokens} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion."
        )
        error = {
            "message": message,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
        return _json({"error": error}, 400)

    async def _load_only(
        self, route: str, name: str, model: _Model, body: dict[str, Any], record: dict[str, Any]
    ) -> web.Response:
        """Load (or, with keep_alive 0, unload) the model without generating."""
        busy = await self._load(model)
        if busy is not None:
            return self._fail(route, 503, BUSY)
        unload = body.get("keep_alive") == 0
        if unload:
            model.loaded = False
        reason = "unload" if unload else "load"
        record["finish_reason"] = reason
        final = {"model": name, "created_at": _now_rfc3339(), "done": True, "done_reason": reason}
        final["message" if route == "chat" else "response"] = (
            {"role": "assistant", "content": ""} if route == "chat" else ""
        )
        return _json(final)

    def _reply_for(self, model: str, route: str, messages: Any, prompt: Any, num_predict: Any) -> str:
        """The reply's whole text: a scripted one first, else the rest of a text this server began (a
        continuation request: the text so far as the assistant's turn, then a user turn asking to go on, as
        a real model would carry on), else an article for a blog prompt, else a chat reply."""
        queue = self._scripts.get(model)
        if queue:
            text = queue.popleft()
            self._served.append(text)
            return text
        so_far = _continued_text(messages) if route != "generate" else None
        if so_far is not None:
            for whole in reversed(self._served):
                rest = _rest_after(whole, so_far)
                if rest:
                    return rest
        asked = str(prompt or "") if route == "generate" else _first_user_text(messages)
        if route == "generate" or asks_for_blog_post(asked):
            budget = num_predict if _is_int(num_predict) else None
            if so_far is not None:
                # Asked to go on past the end of what it wrote: more sections, no new title.
                text = article(asked, budget, self._tokenize).split("\n", 1)[-1]
                return "\n\n## More on this" + text
            if self.chatty_articles:
                text = chatty_article(asked, budget, self._tokenize)
            else:
                text = article(asked, budget, self._tokenize)
            self._served.append(text)
            return text
        return chat_reply(model, messages or [prompt])

    def _plan(self, job: _Job) -> _Plan:
        fault, count = job.fault, len(job.tokens)
        if fault is None or (fault.kind in ("status", "hang") and fault.after_tokens == 0):
            return _Plan(count, "finish")
        if fault.kind == "keepalive_only":
            return _Plan(0, "keepalive")
        after = min(fault.after_tokens, count)
        ending = {
            "die_mid_stream": "die",
            "hang": "hang",
            "error_line": "error_line",
            "done_without_finish": "no_finish",
            "length_after": "length",
        }[fault.kind]
        if ending == "length" and fault.after_tokens >= count:
            return _Plan(count, "finish")  # the reply ends on its own first
        return _Plan(after, ending)

    async def _read_prompt(self, job: _Job) -> None:
        """Prompt evaluation: after the slot and the load, before the first token."""
        started = time.monotonic()
        if self.prompt_tokens_per_second:
            await asyncio.sleep(job.prompt_tokens / self.prompt_tokens_per_second)
        job.prompt_seconds = time.monotonic() - started

    # -- Ollama's routes -------------------------------------------------------------------------------

    async def _ollama_reply(self, request: web.Request, job: _Job) -> web.StreamResponse:
        route, record = job.route, job.record
        plan = self._plan(job)
        started = time.monotonic()
        if not job.stream:
            return await self._ollama_whole(job, plan, started, request)

        response = web.StreamResponse(status=200)
        response.content_type = "application/x-ndjson"

        async def open_once() -> None:
            if not response.prepared:
                await response.prepare(request)  # headers go out with the first chunk
                record["headers_at"] = time.monotonic()

        batch = 1 if self.tokens_per_second else UNLIMITED_BATCH
        pending: list[str] = []
        for index, token in enumerate(job.tokens[: plan.send]):
            await self._pace(index, started)
            pending.append(token)
            if len(pending) >= batch or index == plan.send - 1:
                await open_once()
                record["first_token_at"] = record["first_token_at"] or time.monotonic()
                await response.write(b"".join(self._ollama_chunk(job, t) for t in pending))
                record["completion_text"] += "".join(pending)
                record["tokens"] = index + 1
                pending.clear()
        await open_once()
        record["status"] = 200
        if plan.ending == "die":
            # An abrupt end: no terminating chunk, no done line.
            assert request.transport is not None
            request.transport.abort()
            record["finished_at"] = time.monotonic()
            return response
        if plan.ending in ("hang", "keepalive"):
            await asyncio.Event().wait()
        if plan.ending == "error_line":
            await response.write(json.dumps({"error": RUNNER_STOPPED}).encode() + b"\n")
            await response.write_eof()
            return response
        if plan.ending == "no_finish":
            await response.write_eof()  # the stream just ends: no done:true line
            return response
        await self._pace(plan.send, started)
        reason = "length" if plan.ending == "length" else job.finish
        final = self._final(job, reason, plan.send, started)
        final["message" if route == "chat" else "response"] = (
            {"role": "assistant", "content": ""} if route == "chat" else ""
        )
        await response.write(json.dumps(final).encode() + b"\n")
        record["finish_reason"] = reason
        await response.write_eof()
        return response

    async def _ollama_whole(
        self, job: _Job, plan: _Plan, started: float, request: web.Request
    ) -> web.StreamResponse:
        if plan.ending in ("hang", "keepalive"):
            await asyncio.Event().wait()
        sent = plan.send if plan.ending in ("length", "no_finish") else len(job.tokens)
        await self._pace(sent, started)
        record = job.record
        record["first_token_at"] = record["first_token_at"] or time.monotonic()
        record["tokens"] = sent
        text = "".join(job.tokens[:sent])
        record["completion_text"] = text
        reason = "length" if plan.ending == "length" else job.finish
        final = self._final(job, reason, sent, started)
        if plan.ending == "no_finish":
            final = {"model": job.name, "created_at": _now_rfc3339(), "done": False}
        else:
            record["finish_reason"] = reason
        final["message" if job.route == "chat" else "response"] = (
            {"role": "assistant", "content": text} if job.route == "chat" else text
        )
        return _json(final)

    def _ollama_chunk(self, job: _Job, token: str) -> bytes:
        data: dict[str, Any] = {"model": job.name, "created_at": _now_rfc3339()}
        if job.route == "chat":
            data["message"] = {"role": "assistant", "content": token}
        else:
            data["response"] = token
        data["done"] = False
        return json.dumps(data).encode() + b"\n"

    def _final(self, job: _Job, done_reason: str, count: int, started: float) -> dict[str, Any]:
        """The last line's statistics, measured: durations in nanoseconds, counts with the same tokenizer."""
        now = time.monotonic()
        final: dict[str, Any] = {
            "model": job.name,
            "created_at": _now_rfc3339(),
            "done": True,
            "done_reason": done_reason,
            "total_duration": _ns(now - job.received),
            "load_duration": _ns(job.load_seconds),
            "prompt_eval_count": job.prompt_tokens,
            "prompt_eval_duration": _ns(job.prompt_seconds),
            "eval_count": count,
            "eval_duration": _ns(now - started),
        }
        if job.route == "generate":
            final["context"] = [1, 2, 3]
        return final

    # -- the OpenAI-compatible route -------------------------------------------------------------------

    async def _openai_whole(self, request: web.Request, job: _Job) -> web.StreamResponse:
        plan = self._plan(job)
        started = time.monotonic()
        if plan.ending in ("hang", "keepalive"):
            await asyncio.Event().wait()
        sent = plan.send if plan.ending in ("length", "no_finish") else len(job.tokens)
        await self._pace(sent, started)
        record = job.record
        record["first_token_at"] = record["first_token_at"] or time.monotonic()
        record["tokens"] = sent
        text = "".join(job.tokens[:sent])
        record["completion_text"] = text
        reason: str | None = {"length": "length", "no_finish": None}.get(plan.ending, job.finish)
        record["finish_reason"] = reason
        return _json(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": job.name,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
                ],
                "usage": {
                    "prompt_tokens": job.prompt_tokens,
                    "completion_tokens": sent,
                    "total_tokens": job.prompt_tokens + sent,
                },
            }
        )

    async def _openai_stream(self, request: web.Request, job: _Job) -> web.StreamResponse:
        """llama-cpp-python's streaming: ``EventSourceResponse`` sends 200 and the headers before the
        publisher even waits for the model lock; pings run beside it; an interruption ends it."""
        response = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        record = job.record
        record["headers_at"] = time.monotonic()
        record["status"] = 200
        sse = _SSE(response, record)
        self._sse_streams.add(sse)
        pinger = asyncio.create_task(sse.ping_forever(self.openai_ping_interval))
        body = asyncio.create_task(self._openai_events(request, job, sse))
        interrupted = asyncio.create_task(sse.interrupt.wait())
        try:
            await asyncio.wait({body, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            if not body.done():
                body.cancel()
                await asyncio.wait({body})
                if await sse.finish(_SSE_DONE):
                    record["interrupted"] = True
                    record["finish_reason"] = None
            elif not body.cancelled():
                body.result()  # a client gone mid-write raises here
        finally:
            self._sse_streams.discard(sse)
            for task in (pinger, body, interrupted):
                task.cancel()
            await asyncio.gather(pinger, body, interrupted, return_exceptions=True)
        return response

    async def _openai_events(self, request: web.Request, job: _Job, sse: _SSE) -> None:
        record = job.record
        busy = await self._acquire(job)
        if busy is not None:
            error = {"error": {"message": BUSY, "type": "api_error", "param": None, "code": None}}
            await sse.finish(self._sse(error))
            return
        try:
            await self._read_prompt(job)
            plan = self._plan(job)
            if plan.ending == "keepalive":
                await asyncio.Event().wait()  # pings go on; not one token
            started = time.monotonic()
            # The first chunk carries only the role, right before the first text
            # (llama_cpp/llama_chat_format.py, _convert_text_completion_chunks_to_chat).
            await sse.send(self._openai_chunk(job, {"role": "assistant"}, None))
            batch = 1 if self.tokens_per_second else UNLIMITED_BATCH
            pending: list[str] = []
            for index, token in enumerate(job.tokens[: plan.send]):
                await self._pace(index, started)
                pending.append(token)
                if len(pending) >= batch or index == plan.send - 1:
                    record["first_token_at"] = record["first_token_at"] or time.monotonic()
                    # Recorded first: an interruption can cancel the write only after the bytes are out.
                    record["completion_text"] += "".join(pending)
                    record["tokens"] = index + 1
                    await sse.send(b"".join(self._openai_chunk(job, {"content": t}, None) for t in pending))
                    pending.clear()
            if plan.ending == "die":
                sse.closed = True
                assert request.transport is not None
                request.transport.abort()
                return
            if plan.ending == "hang":
                await asyncio.Event().wait()
            if plan.ending == "error_line":
                await sse.finish(self._sse({"error": {"message": RUNNER_STOPPED, "type": "api_error"}}))
                return
            if plan.ending == "no_finish":
                await sse.finish(_SSE_DONE)
                return
            await self._pace(plan.send, started)
            reason = "length" if plan.ending == "length" else job.finish
            if await sse.finish(self._openai_chunk(job, {}, reason) + _SSE_DONE):
                record["finish_reason"] = reason
        finally:
            await self._release(job.model)

    def _openai_chunk(self, job: _Job, delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": job.name,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return self._sse(chunk)

    @staticmethod
    def _sse(data: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    async def _pace(self, index: int, started: float) -> None:
        """Sleep until token ``index`` is due (a schedule from the start, so rounding never accumulates)."""
        if self.tokens_per_second:
            delay = started + index / self.tokens_per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif index % UNLIMITED_BATCH == 0:
            await asyncio.sleep(0)

    # -- scheduling ------------------------------------------------------------------------------------

    async def _acquire(self, job: _Job) -> str | None:
        """Load the model if needed, then wait (FIFO) for one of its slots; a reason if refused."""
        model = job.model
        while True:
            started = time.monotonic()
            busy = await self._load(model)
            job.load_seconds += time.monotonic() - started
            if busy is not None:
                return busy
            await model.slots.acquire()
            if model.loaded:
                model.in_flight += 1
                peak = self._stats.max_in_flight
                peak[model.name] = max(peak.get(model.name, 0), model.in_flight)
                return None
            model.slots.release()  # evicted while we waited: load it again

    async def _release(self, model: _Model) -> None:
        model.in_flight -= 1
        model.slots.release()
        model.last_used = time.monotonic()
        async with self._idle:  # an eviction waits for in_flight to reach 0
            self._idle.notify_all()

    async def _load(self, model: _Model) -> str | None:
        if model.loaded:
            return None
        if self._pending_loads >= self.max_queue:
            return "busy"  # OLLAMA_MAX_QUEUE counts every request waiting for a model to load
        if model.loading is None or model.loading.done():
            model.loading = asyncio.create_task(self._do_load(model))
        self._pending_loads += 1
        try:
            # Shielded: one client giving up must not abort a load that others wait for too.
            await asyncio.shield(model.loading)
        finally:
            self._pending_loads -= 1
        return None

    async def _do_load(self, model: _Model) -> None:
        async with self._load_lock:  # Ollama loads one model at a time
            if model.loaded:
                return
            if self.max_loaded is not None:
                while sum(m.loaded for m in self._models.values()) >= self.max_loaded:
                    victim = min((m for m in self._models.values() if m.loaded), key=lambda m: m.last_used)
                    async with self._idle:
                        await self._idle.wait_for(lambda v=victim: v.in_flight == 0)  # type: ignore[misc]
                    victim.loaded = False
            if self.load_seconds:
                await asyncio.sleep(self.load_seconds)
            model.loaded = True
            model.last_used = time.monotonic()
            self._stats.loads[model.name] = self._stats.loads.get(model.name, 0) + 1

    def _take_fault(self, path: str, model: str) -> _Fault | None:
        for fault in self._faults:
            if fault.count > 0 and fault.model in (None, model) and fault.path in (None, path):
                fault.count -= 1
                if fault.count == 0:
                    self._faults.remove(fault)
                return fault
        return None

    # -- errors ----------------------------------------------------------------------------------------

    @staticmethod
    def _status_message(status: int, model: str) -> str:
        return {
            400: "invalid options",
            404: f"model '{model}' not found",
            429: "too many requests",
            503: BUSY,
        }.get(status, RUNNER_STOPPED)

    def _fail(self, route: str, status: int, message: str) -> web.Response:
        if route == "openai":
            return self._openai_error(_error(status, message))
        return _error(status, message)

    @staticmethod
    def _openai_error(response: web.Response) -> web.Response:
        assert isinstance(response.body, bytes)
        message = json.loads(response.body)["error"]
        kind = "invalid_request_error" if response.status < 500 else "api_error"
        return _json(
            {"error": {"message": message, "type": kind, "param": None, "code": None}}, response.status
        )

    @staticmethod
    async def _read_body(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        raw = await request.read()
        if not raw:
            return None, _error(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return None, _error(400, str(exc))
        if not isinstance(body, dict):
            return None, _error(400, "json: cannot unmarshal array into Go value of type api.ChatRequest")
        return body, None

    # -- control endpoints -----------------------------------------------------------------------------

    async def _control_script(self, request: web.Request) -> web.Response:
        body, error = await self._read_body(request)
        if error is not None:
            return error
        assert body is not None
        model, replies = body.get("model"), body.get("replies")
        if (
            not isinstance(model, str)
            or not isinstance(replies, list)
            or not all(isinstance(r, str) for r in replies)
        ):
            return _error(400, 'expected {"model": str, "replies": [str, ...]}')
        self.script(model, replies)
        return _json({"queued": len(self._scripts[normalise(model)])})

    async def _control_faults(self, request: web.Request) -> web.Response:
        body, error = await self._read_body(request)
        if error is not None:
            return error
        assert body is not None
        try:
            self.add_fault(body)
        except ValueError as exc:
            return _error(400, str(exc))
        return _json({"faults": len(self._faults)})

    async def _control_config(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            body, error = await self._read_body(request)
            if error is not None:
                return error
            assert body is not None
            try:
                self.configure(**body)
            except ValueError as exc:
                return _error(400, str(exc))
        return _json(self.config)

    async def _control_requests(self, request: web.Request) -> web.Response:
        return _json(self.requests)

    async def _control_probes(self, request: web.Request) -> web.Response:
        return _json(self.probes)

    async def _control_stats(self, request: web.Request) -> web.Response:
        return _json(
            {
                "loads": self._stats.loads,
                "loaded": [m.name for m in self._models.values() if m.loaded],
                "in_flight": {m.name: m.in_flight for m in self._models.values()},
                "max_in_flight": self._stats.max_in_flight,
            }
        )

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json({"reset": True})


def sees_images(name: str) -> bool:
    """Whether the fake's model ``name`` takes images (:data:`VISION_MODELS`)."""
    return name.split(":")[0] in VISION_MODELS


def _decode_data_url(url: Any) -> bytes | str:
    """The image bytes of an ``image_url``, or the error Ollama's openai.decodeImageURL gives."""
    if not isinstance(url, str):
        return "invalid image input"
    if url.startswith(("http://", "https://")):
        return "image URLs are not currently supported, please use base64 encoded data instead"
    for kind in _DATA_URL_TYPES:
        prefix = f"data:image/{kind};base64,"
        if url.startswith(prefix):
            try:
                return base64.b64decode(url[len(prefix) :], validate=True)
            except (binascii.Error, ValueError):
                return "invalid image input"
    return "invalid image input"


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else None


def _continued_text(messages: Any) -> str | None:
    """The assistant's text when the request asks to continue it (an assistant turn, then the last user
    turn), else None."""
    if not isinstance(messages, list) or len(messages) < 2:
        return None
    before, last = messages[-2], messages[-1]
    if _role(before) == "assistant" and _role(last) == "user" and isinstance(before.get("content"), str):
        return str(before["content"])
    return None


def _rest_after(whole: str, prefix: str) -> str | None:
    """What follows ``prefix`` in ``whole``, comparing without whitespace (the caller may have joined the
    parts with other spacing); None when ``whole`` does not start that way or nothing follows."""
    index = 0
    for char in prefix:
        if char.isspace():
            continue
        while index < len(whole) and whole[index].isspace():
            index += 1
        if index >= len(whole) or whole[index] != char:
            return None
        index += 1
    rest = whole[index:]
    return rest if rest.strip() else None


def _first_user_text(messages: Any) -> str:
    for message in messages if isinstance(messages, list) else []:
        if _role(message) == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""
