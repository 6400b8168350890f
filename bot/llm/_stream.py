"""A streamed model reply: an async iterator of text chunks with timeouts, retries and clean cancellation.

The stream is wire-format agnostic: a :class:`WireFormat` opens the HTTP request and turns each line of the
body into text and, on the last line, :class:`GenerationStats`. Ollama's NDJSON and the OpenAI-compatible
SSE format are two implementations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Protocol

import httpx

from bot.llm._errors import LLMError, LLMTimeout, Preempted, StreamFailed
from bot.llm._types import GenerationStats, RetryPolicy, Timeouts

log = logging.getLogger(__name__)


class WireFormat(Protocol):
    """How one server speaks: how an error reply maps to an exception, and what a body line means."""

    backend: str

    async def error_for(self, response: httpx.Response) -> LLMError:
        """The exception for a non-200 reply (the body may be read)."""
        ...

    def parse_line(self, line: bytes) -> tuple[str, GenerationStats | None]:
        """Text carried by one body line, and the final stats if this line ends the reply.

        Raises :class:`StreamFailed` for an error line, a line that is not valid, or a last line that
        says the reply was cut short.
        """
        ...

    async def diagnose_empty(self) -> LLMError | None:
        """The real reason when a 200 reply ended with no line at all, if the server can tell (else None)."""
        ...


class TextStream:
    """One streamed reply. Use as ``async with stream: async for text in stream: ...``.

    Leaving the ``async with`` block (normally, by ``break``, by an exception or by cancellation) closes the
    HTTP connection, which is how a model server learns to stop generating. After the iteration ends,
    :attr:`stats` holds the server's final report and :attr:`text` the whole reply.

    Errors before any text was produced are retried according to the :class:`RetryPolicy`; once text has
    been yielded, a failure raises (with the partial text attached) because the caller may have shown it.
    """

    def __init__(
        self,
        send: Callable[[], Awaitable[httpx.Response]],
        wire: WireFormat,
        *,
        timeouts: Timeouts,
        retry: RetryPolicy,
    ) -> None:
        self._send = send
        self._wire = wire
        self._timeouts = timeouts
        self._retry = retry
        self._parts: list[str] = []
        self._iterator: AsyncIterator[str] | None = None
        self._response: httpx.Response | None = None
        self.stats: GenerationStats | None = None
        #: How many attempts were made (1 when the first one worked).
        self.attempts = 0
        #: ``loop.time()`` when the first content arrived, and how many content chunks (≈ tokens) came.
        self.first_content_at: float | None = None
        self.content_chunks = 0
        self._first_content_by = 0.0
        self._lines_seen = False
        # The timeout around the read in progress; :meth:`interrupt` fires it early.
        self._wait: asyncio.Timeout | None = None
        self._interrupted = False

    @property
    def text(self) -> str:
        """All text received so far."""
        return "".join(self._parts)

    async def __aenter__(self) -> TextStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterator is not None:
            raise RuntimeError("a TextStream can be iterated only once")
        self._iterator = self._run()
        return self._iterator

    def interrupt(self) -> None:
        """Make the reading task stop now with :class:`Preempted` (from any task; cheap, no task per read)."""
        self._interrupted = True
        if self._wait is not None:
            self._wait.reschedule(asyncio.get_running_loop().time())

    async def aclose(self) -> None:
        """Stop the reply and close the connection (idempotent)."""
        if self._response is not None:
            await self._response.aclose()
            self._response = None
        if self._iterator is not None and hasattr(self._iterator, "aclose"):
            await self._iterator.aclose()

    async def _run(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeouts.total
        while True:
            self.attempts += 1
            self._lines_seen = False
            try:
                response = await self._open(deadline)
            except LLMError as exc:
                await self._wait_before_retry(exc, deadline)
                continue
            self._response = response
            try:
                # aiter_raw is an async generator: close it with the response, not at garbage collection.
                raw = typing.cast(AsyncGenerator[bytes, None], response.aiter_raw())
                async with contextlib.aclosing(raw) as chunks:
                    async for text in self._read(chunks, deadline):
                        yield text
                return
            except LLMError as exc:
                if self._parts:  # the caller may already have shown this text: never silently restart
                    raise
                await self._wait_before_retry(exc, deadline)
            finally:
                await response.aclose()
                self._response = None

    async def _open(self, deadline: float) -> httpx.Response:
        """Send the request and wait for the status line.

        Ollama sends headers with the first token; llama.cpp-style servers send them at once and then read
        the prompt for seconds. Either way the first-token clock started here keeps running in :meth:`_read`
        until the first *content* arrives.
        """
        loop = asyncio.get_running_loop()
        self._first_content_by = min(deadline, loop.time() + self._timeouts.first_byte)
        try:
            async with self._waiting(self._first_content_by):
                response = await self._send()
        except TimeoutError:
            raise self._timeout(deadline, "first_byte") from None
        if response.status_code != 200:
            try:
                async with asyncio.timeout_at(min(deadline, loop.time() + self._timeouts.idle)):
                    error = await self._wire.error_for(response)
            except TimeoutError:
                raise self._timeout(deadline, "idle") from None
            except (httpx.HTTPError, httpx.StreamError) as exc:
                # The connection broke while the error body was read: the status still says what it was.
                raise self._broken(
                    f"HTTP {response.status_code}, then the connection broke ({type(exc).__name__})"
                ) from exc
            finally:
                await response.aclose()
            raise error
        return response

    async def _read(self, chunks: AsyncIterator[bytes], deadline: float) -> AsyncIterator[str]:
        """Text from the body's lines.

        Until the first content token, the first-token deadline applies; after it, the idle timeout runs
        from the last content token. Lines without content (keep-alive pings, role-only deltas, empty
        chunks) keep the connection open but never reset either clock: a server that only pings is stuck.
        """
        loop = asyncio.get_running_loop()
        pending = b""
        content_by = self._first_content_by
        phase = "first_byte"
        while True:
            try:
                # The timeout wraps only our own read, never the caller's code between two chunks.
                async with self._waiting(min(deadline, content_by)):
                    chunk = await anext(chunks, None)
            except TimeoutError:
                raise self._timeout(deadline, phase) from None
            except (httpx.HTTPError, httpx.StreamError) as exc:
                raise self._broken(f"connection lost mid-reply ({type(exc).__name__})") from exc
            if chunk is None:
                break
            pending += chunk
            if b"\n" not in chunk:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = self._parse(line)
                if text:
                    if self.first_content_at is None:
                        self.first_content_at = loop.time()
                    self.content_chunks += 1
                    self._parts.append(text)
                    content_by, phase = loop.time() + self._timeouts.idle, "idle"
                    yield text
                if self.stats is not None:
                    return
        if pending.strip():
            text = self._parse(pending)
            if text:
                self.content_chunks += 1
                self._parts.append(text)
                yield text
        if self.stats is None:
            if not self._lines_seen:
                # llama.cpp-style servers answer 200 and then close an overflowing prompt's stream unsaid.
                reason = await self._wire.diagnose_empty()
                if reason is not None:
                    raise reason
            raise self._broken("the reply ended before the server said it was done")

    @contextlib.asynccontextmanager
    async def _waiting(self, when: float) -> AsyncIterator[None]:
        """``asyncio.timeout_at(when)`` that :meth:`interrupt` can fire early."""
        async with asyncio.timeout_at(when) as wait:
            self._wait = wait
            if self._interrupted:
                wait.reschedule(asyncio.get_running_loop().time())
            try:
                yield
            finally:
                self._wait = None

    def _parse(self, line: bytes) -> str:
        if not line.strip():
            return ""
        self._lines_seen = True
        try:
            text, stats = self._wire.parse_line(line)
        except StreamFailed as exc:
            exc.partial_text = self.text
            raise
        if stats is not None:
            self.stats = stats
        return text

    def _broken(self, reason: str) -> StreamFailed:
        return StreamFailed(reason, partial_text=self.text, backend=self._wire.backend)

    def _timeout(self, deadline: float, phase: str) -> LLMError:
        if self._interrupted:
            return Preempted(partial_text=self.text, backend=self._wire.backend)
        if asyncio.get_running_loop().time() >= deadline:
            return LLMTimeout(
                "deadline", self._timeouts.total, partial_text=self.text, backend=self._wire.backend
            )
        seconds = self._timeouts.first_byte if phase == "first_byte" else self._timeouts.idle
        return LLMTimeout(
            "first_byte" if phase == "first_byte" else "idle",
            seconds,
            partial_text=self.text,
            backend=self._wire.backend,
        )

    async def _wait_before_retry(self, error: LLMError, deadline: float) -> None:
        """Sleep before the next attempt, or re-raise ``error`` when retrying is not allowed or useful."""
        if not error.retryable or self.attempts >= self._retry.attempts:
            raise error
        delay = self._retry.delay(self.attempts)
        if asyncio.get_running_loop().time() + delay >= deadline:
            raise error
        log.info(
            "retrying model call backend=%s attempt=%d error=%s delay=%.1fs",
            self._wire.backend,
            self.attempts,
            error,
            delay,
        )
        await asyncio.sleep(delay)
