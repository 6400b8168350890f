"""A recording reverse proxy between the bot and a real model server: the ground truth of the real lane.

Every request is forwarded as it is, except that a completion request without a ``seed`` gets one derived
from its messages (reproducible runs; the server's settings stay its defaults). A streamed response is
passed through chunk by chunk as it arrives (nothing is buffered, so the bot sees the server's timing), and
when the bot hangs up the upstream connection is closed too, as the server would have seen it without the
proxy. For every ``POST /v1/chat/completions`` the proxy keeps a :class:`Completion`: what the bot asked for
and, from the server-sent events, every content delta with its arrival time (``time.monotonic()``, the clock
the Discord emulator stamps its message history with), which ``finish_reason`` came (if any) and whether
``[DONE]`` came.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

# Hop-by-hop headers and those aiohttp recomputes; never copied across.
_SKIPPED_HEADERS = {
    "connection",
    "content-length",
    "content-encoding",
    "host",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
}


@dataclass
class Completion:
    """One chat completion request as the server answered it."""

    sent_at: float
    messages: list[dict[str, Any]]
    max_tokens: int | None
    stream: bool
    status: int | None = None
    error: str | None = None
    #: (arrival time, text) of every non-empty content delta, in order.
    deltas: list[tuple[float, str]] = field(default_factory=list)
    first_token_at: float | None = None
    finish_reason: str | None = None
    done: bool = False
    #: SSE comment lines (``: ping …``) seen, and role-only or empty chunks.
    pings: int = 0
    empty_chunks: int = 0
    #: The server's token counts, when it reported them.
    usage: dict[str, Any] | None = None
    ended_at: float | None = None
    #: The bot hung up before the server ended the response.
    client_disconnected: bool = False

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.deltas)

    def text_until(self, moment: float) -> str:
        return "".join(text for at, text in self.deltas if at <= moment)

    @property
    def outcome(self) -> str:
        """``stop`` or ``length`` (the server said so), else ``broken`` (no finish reason, an error, a
        dropped connection, or a refusal before any text)."""
        if self.status == 200 and self.finish_reason in ("stop", "length"):
            return self.finish_reason
        return "broken"

    @property
    def last_user_message(self) -> str:
        users = [m for m in self.messages if m.get("role") == "user"]
        content = users[-1].get("content", "") if users else ""
        return content if isinstance(content, str) else json.dumps(content)


@dataclass
class Seen:
    """Any other request (health checks, model lists, ``/props``)."""

    method: str
    path: str
    at: float
    status: int | None = None


class RecordingProxy:
    """``async with RecordingProxy(upstream) as proxy``: listens on ``proxy.url``, forwards upstream."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.url = ""
        self.completions: list[Completion] = []
        self.others: list[Seen] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RecordingProxy:
        # No read timeout: a prompt may take long to read; the bot's own timeouts are what is under test.
        # One upstream connection per request (force_close): uvicorn closes a connection whose stream ended
        # abnormally, and reusing it would turn the server's next answer into a reset the bot never sees.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def busy_between(self, start: float, end: float) -> list[Seen]:
        """Requests other than completions that reached the server between ``start`` and ``end``."""
        return [seen for seen in self.others if start < seen.at < end]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIPPED_HEADERS}
        record: Completion | Seen
        if request.method == "POST" and request.path.endswith("/chat/completions"):
            try:
                payload = json.loads(body)
            except ValueError:
                payload = {}
            if isinstance(payload, dict) and "seed" not in payload:
                # Sampling seeded by the request itself: the same question gets the same text in every
                # run, so the lane is reproducible (a request the bot seeds itself is left alone).
                payload["seed"] = zlib.crc32(json.dumps(payload.get("messages"), sort_keys=True).encode())
                body = json.dumps(payload).encode()
            record = Completion(
                sent_at=time.monotonic(),
                messages=list(payload.get("messages") or []),
                max_tokens=payload.get("max_tokens"),
                stream=bool(payload.get("stream")),
            )
            self.completions.append(record)
        else:
            record = Seen(request.method, request.path, time.monotonic())
            self.others.append(record)
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream + request.path_qs,
                data=body or None,
                headers=headers,
                allow_redirects=False,
            )
        except aiohttp.ClientError as exc:
            record.status = 502
            if isinstance(record, Completion):
                record.error, record.ended_at = f"upstream unreachable: {exc}", time.monotonic()
            return web.Response(status=502, text=str(exc))
        async with upstream:
            record.status = upstream.status
            copied = {k: v for k, v in upstream.headers.items() if k.lower() not in _SKIPPED_HEADERS}
            if not isinstance(record, Completion):
                body = await upstream.read()
                return web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=copied)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=copied)
            events = _EventReader(record)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    events.feed(chunk)
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                # The bot hung up: leaving this block closes the upstream connection, so the server
                # sees the disconnect and stops generating.
                record.client_disconnected = True
            except aiohttp.ClientPayloadError as exc:
                record.error = f"upstream broke off: {exc}"
            finally:
                record.ended_at = time.monotonic()
                if not record.stream:
                    events.whole_body()
                if record.status != 200:
                    record.error = record.error or events.raw.decode(errors="replace")[:500]
            return response


class _EventReader:
    """Parses the server-sent events of a completion as they pass through, into its record."""

    def __init__(self, record: Completion) -> None:
        self._record = record
        self._pending = b""
        self.raw = b""

    def feed(self, chunk: bytes) -> None:
        now = time.monotonic()
        if not self._record.stream or len(self.raw) < 4096:
            self.raw += chunk
        self._pending += chunk
        *lines, self._pending = self._pending.replace(b"\r\n", b"\n").split(b"\n")
        for line in lines:
            self._line(line.decode(errors="replace"), now)

    def whole_body(self) -> None:
        """A non-streamed completion: one JSON object with the whole message."""
        try:
            event = json.loads(self.raw)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        record, now = self._record, time.monotonic()
        record.usage = event.get("usage") or record.usage
        for choice in event.get("choices") or []:
            content = (choice.get("message") or {}).get("content") or ""
            if content:
                record.deltas.append((now, content))
                record.first_token_at = record.first_token_at or now
            record.finish_reason = choice.get("finish_reason") or record.finish_reason

    def _line(self, line: str, now: float) -> None:
        record = self._record
        if not line:
            return
        if line.startswith(":"):
            record.pings += 1
            return
        if not line.startswith("data:"):
            return
        data = line[5:].strip()
        if data == "[DONE]":
            record.done = True
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if "error" in event:
            record.error = json.dumps(event["error"])[:500]
            return
        if event.get("usage"):
            record.usage = event["usage"]
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content") or ""
            if content:
                record.deltas.append((now, content))
                if record.first_token_at is None:
                    record.first_token_at = now
            else:
                record.empty_chunks += 1
            if choice.get("finish_reason"):
                record.finish_reason = choice["finish_reason"]
