"""The fake Ollama HTTP server: routes, scheduling, faults and the request log."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.fakes.ollama_server.replies import article, chat_reply, tokenize

VERSION = "0.5.7"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error"
)
FAULT_KINDS = ("die_mid_stream", "status", "hang", "error_line")
# Unlimited speed still yields to the event loop now and then, and writes lines in batches.
UNLIMITED_BATCH = 64


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
    ) -> None:
        self.tokens_per_second = tokens_per_second
        self.load_seconds = load_seconds
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.max_loaded = max_loaded
        self._models = {
            normalise(name): _Model(normalise(name), asyncio.Semaphore(num_parallel)) for name in models
        }
        self._load_lock = asyncio.Lock()
        self._idle = asyncio.Condition()
        self._pending_loads = 0
        self._scripts: dict[str, deque[str]] = {}
        self._faults: list[_Fault] = []
        self._stats = _Stats()
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._streams: set[web.StreamResponse] = set()
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
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
        app.router.add_post("/_fake/script", self._control_script)
        app.router.add_post("/_fake/faults", self._control_faults)
        app.router.add_get("/_fake/requests", self._control_requests)
        app.router.add_get("/_fake/stats", self._control_stats)
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

    def script(self, model: str, replies: list[str]) -> None:
        """The next requests for ``model`` get these exact texts, in order."""
        self._scripts.setdefault(normalise(model), deque()).extend(replies)

    def add_fault(self, spec: dict[str, Any]) -> None:
        """Queue a fault (see the module docstring of the package); raises ValueError if malformed."""
        kind = spec.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        count = spec.get("count", 1)
        status = spec.get("status", 500)
        after = spec.get(
            "after_tokens", 3 if kind == "error_line" else (5 if kind == "die_mid_stream" else 0)
        )
        if not all(
            isinstance(value, int) and not isinstance(value, bool) for value in (count, status, after)
        ):
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
        self._scripts.clear()
        self._faults.clear()
        self._stats = _Stats()

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
        return _json(
            {
                "modelfile": "",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": self._describe(normalise(str(name)))["details"],
            }
        )

    async def _openai_models(self, request: web.Request) -> web.Response:
        return _json(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "library"}
                    for name in self._models
                ],
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
            "first_token_at": None,
            "finished_at": None,
            "disconnected": False,
            "status": None,
            "tokens": 0,
        }
        self.requests.append(record)
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
        record["finished_at"] = record["finished_at"] or time.monotonic()
        record["status"] = record["status"] or response.status
        return response

    async def _serve(self, request: web.Request, route: str, record: dict[str, Any]) -> web.StreamResponse:
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
        options: dict[str, Any] = body["options"] if isinstance(body.get("options"), dict) else {}
        num_predict = body.get("max_tokens") if route == "openai" else options.get("num_predict")
        stream = body.get("stream", route != "openai")  # Ollama's own routes stream unless told not to

        fault = self._take_fault(request.path, model.name)
        if fault is not None and fault.kind == "status":
            return self._fail(route, fault.status, self._status_message(fault.status, name))
        if fault is not None and fault.kind == "hang" and fault.after_tokens == 0:
            await asyncio.Event().wait()  # until the client goes away (the handler is cancelled)

        if route != "openai" and not messages and not prompt:
            # Load (or, with keep_alive 0, unload) the model without generating.
            busy = await self._load(model)
            if busy is not None:
                return self._fail(route, 503, BUSY)
            unload = body.get("keep_alive") == 0
            if unload:
                model.loaded = False
            reason = "unload" if unload else "load"
            final = {"model": name, "created_at": _now_rfc3339(), "done": True, "done_reason": reason}
            final["message" if route == "chat" else "response"] = (
                {"role": "assistant", "content": ""} if route == "chat" else ""
            )
            return _json(final)

        text = self._reply_for(model.name, route, messages, prompt, num_predict)
        tokens = tokenize(text)
        limit = num_predict if isinstance(num_predict, int) and num_predict >= 0 else None
        done_reason = "stop"
        if limit is not None and len(tokens) > limit:
            tokens, done_reason = tokens[:limit], "length"

        busy = await self._acquire(model)
        if busy is not None:
            return self._fail(route, 503, BUSY)
        try:
            return await self._stream(request, route, name, tokens, done_reason, stream, fault, record)
        finally:
            model.in_flight -= 1
            model.slots.release()
            model.last_used = time.monotonic()
            async with self._idle:
                self._idle.notify_all()

    def _reply_for(self, model: str, route: str, messages: Any, prompt: Any, num_predict: Any) -> str:
        queue = self._scripts.get(model)
        if queue:
            return queue.popleft()
        if route == "generate":
            return article(str(prompt or ""), num_predict if isinstance(num_predict, int) else None)
        return chat_reply(model, messages or [prompt])

    async def _stream(
        self,
        request: web.Request,
        route: str,
        name: str,
        tokens: list[str],
        done_reason: str,
        stream: bool,
        fault: _Fault | None,
        record: dict[str, Any],
    ) -> web.StreamResponse:
        started = time.monotonic()
        if not stream:
            await self._pace(len(tokens), started)
            record["first_token_at"] = record["first_token_at"] or time.monotonic()
            record["tokens"] = len(tokens)
            text = "".join(tokens)
            if route == "openai":
                return _json(self._openai_completion(name, text, done_reason))
            final = self._final(route, name, done_reason, len(tokens), started)
            final["message" if route == "chat" else "response"] = (
                {"role": "assistant", "content": text} if route == "chat" else text
            )
            return _json(final)

        response = web.StreamResponse(status=200)
        response.content_type = "text/event-stream" if route == "openai" else "application/x-ndjson"
        if route == "openai":
            response.headers["Cache-Control"] = "no-cache"
        stop_after = (
            len(tokens) if fault is None or fault.kind == "status" else min(fault.after_tokens, len(tokens))
        )
        batch = 1 if self.tokens_per_second else UNLIMITED_BATCH
        pending: list[bytes] = []
        for index, token in enumerate(tokens[:stop_after]):
            await self._pace(index, started)
            pending.append(self._chunk(route, name, token))
            if len(pending) >= batch or index == stop_after - 1:
                if not response.prepared:
                    await response.prepare(request)  # headers go out with the first chunk
                    record["first_token_at"] = time.monotonic()
                await response.write(b"".join(pending))
                pending.clear()
            record["tokens"] = index + 1
        if not response.prepared:
            await response.prepare(request)
            record["first_token_at"] = time.monotonic()
        record["status"] = 200
        if fault is not None and fault.kind == "die_mid_stream":
            # An abrupt end: no terminating chunk, no done line.
            assert request.transport is not None
            request.transport.abort()
            record["finished_at"] = time.monotonic()
            return response
        if fault is not None and fault.kind == "hang":
            await asyncio.Event().wait()
        if fault is not None and fault.kind == "error_line":
            error = {"error": {"message": RUNNER_STOPPED}} if route == "openai" else {"error": RUNNER_STOPPED}
            await response.write(self._line(route, error))
            await response.write_eof()
            return response
        await self._pace(len(tokens), started)
        if route == "openai":
            finish = "length" if done_reason == "length" else "stop"
            last = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": name,
                "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
            }
            await response.write(self._line(route, last) + b"data: [DONE]\n\n")
        else:
            final = self._final(route, name, done_reason, len(tokens), started)
            final["message" if route == "chat" else "response"] = (
                {"role": "assistant", "content": ""} if route == "chat" else ""
            )
            await response.write(self._line(route, final))
        await response.write_eof()
        return response

    async def _pace(self, index: int, started: float) -> None:
        """Sleep until token ``index`` is due (a schedule from the start, so rounding never accumulates)."""
        if self.tokens_per_second:
            delay = started + index / self.tokens_per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif index % UNLIMITED_BATCH == 0:
            await asyncio.sleep(0)

    def _chunk(self, route: str, name: str, token: str) -> bytes:
        if route == "openai":
            return self._line(
                route,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": name,
                    "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": token}, "finish_reason": None}
                    ],
                },
            )
        data: dict[str, Any] = {"model": name, "created_at": _now_rfc3339()}
        if route == "chat":
            data["message"] = {"role": "assistant", "content": token}
        else:
            data["response"] = token
        data["done"] = False
        return self._line(route, data)

    @staticmethod
    def _line(route: str, data: dict[str, Any]) -> bytes:
        encoded = json.dumps(data).encode()
        return b"data: " + encoded + b"\n\n" if route == "openai" else encoded + b"\n"

    def _final(self, route: str, name: str, done_reason: str, count: int, started: float) -> dict[str, Any]:
        elapsed = max(1, int((time.monotonic() - started) * 1e9))
        final: dict[str, Any] = {
            "model": name,
            "created_at": _now_rfc3339(),
            "done": True,
            "done_reason": done_reason,
            "total_duration": elapsed,
            "load_duration": 1_234_567,
            "prompt_eval_count": 26,
            "prompt_eval_duration": 21_000_000,
            "eval_count": count,
            "eval_duration": elapsed,
        }
        if route == "generate":
            final["context"] = [1, 2, 3]
        return final

    def _openai_completion(self, name: str, text: str, done_reason: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if done_reason == "length" else "stop",
                }
            ],
            "usage": {"prompt_tokens": 26, "completion_tokens": len(tokenize(text)), "total_tokens": 0},
        }

    # -- scheduling ------------------------------------------------------------------------------------

    async def _acquire(self, model: _Model) -> str | None:
        """Load the model if needed, then wait (FIFO) for one of its slots; a reason if refused."""
        while True:
            busy = await self._load(model)
            if busy is not None:
                return busy
            await model.slots.acquire()
            if model.loaded:
                model.in_flight += 1
                peak = self._stats.max_in_flight
                peak[model.name] = max(peak.get(model.name, 0), model.in_flight)
                return None
            model.slots.release()  # evicted while we waited: load it again

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

    async def _control_requests(self, request: web.Request) -> web.Response:
        return _json(self.requests)

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
