"""The backend pool: every model call of the bot goes through here.

* **Slots.** A backend never has more than ``max_concurrent`` requests in flight.
* **Priority.** Waiting requests are served chat first (people are watching), then by arrival.
  A backend's ``reserved_chat_slots`` are kept free for chat.
* **Health.** A backend that cannot be reached is taken out and probed with exponential backoff until it
  answers again; a periodic check (``GET /api/version``) catches the ones that die quietly.
* **Failover.** A call that fails before producing any text (connection refused, busy) moves to another
  healthy backend serving the model.

The pool knows nothing of Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from bot.config import BackendConfig
from bot.llm._errors import BackendBusy, BackendUnavailable, LLMError
from bot.llm._ollama import OllamaClient
from bot.llm._openai import OpenAIClient
from bot.llm._stream import TextStream
from bot.llm._types import NO_RETRY, ChatMessage, GenerationStats, RetryPolicy, Timeouts

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    """Lower values are served first."""

    CHAT = 0  # someone is waiting for the answer
    BLOG = 1  # a background job


@dataclass
class BackendState:
    """What the pool knows about one backend; also what moderators see in ``/llm status``."""

    config: BackendConfig
    client: OllamaClient | OpenAIClient
    in_flight: int = 0
    healthy: bool = True
    consecutive_failures: int = 0
    next_probe_at: float = 0.0
    version: str | None = None
    #: Models the server has pulled (from /api/tags); None until the first successful check.
    available_models: frozenset[str] | None = None
    #: Models loaded in memory (from /api/ps at the last check, plus what we just used).
    loaded_models: set[str] = field(default_factory=set)
    #: The model of the request started last here: with room for one model, the one in memory.
    current_model: str | None = None
    tokens_per_second: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    errors: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def name(self) -> str:
        return self.config.display_name

    def serves(self, model: str) -> bool | None:
        """True/False when known (config, or the server's list), None when unknown."""
        wanted = normalise_model(model)
        if self.config.models:
            return wanted in {normalise_model(m) for m in self.config.models}
        if self.available_models is None:
            return None
        return wanted in self.available_models


@dataclass(frozen=True)
class BackendStatus:
    """A snapshot of one backend for status displays."""

    name: str
    url: str
    healthy: bool
    in_flight: int
    max_concurrent: int
    waiting: int
    loaded_models: tuple[str, ...]
    tokens_per_second: float | None
    recent_errors: tuple[str, ...]
    version: str | None


def normalise_model(name: str) -> str:
    """``llama2`` and ``llama2:latest`` are the same model to Ollama."""
    return name if ":" in name else f"{name}:latest"


def make_client(config: BackendConfig, http: httpx.AsyncClient) -> OllamaClient | OpenAIClient:
    # The pool does its own retrying (with failover), so the clients don't.
    kind = OpenAIClient if config.kind == "openai" else OllamaClient
    return kind(
        http, config.url, name=config.display_name, connect_timeout=config.connect_timeout, retry=NO_RETRY
    )


@dataclass(eq=False)
class _Waiter:
    priority: Priority
    model: str
    exclude: frozenset[str]
    future: asyncio.Future[BackendState]
    enqueued_at: float


class BackendPool:
    """Routes model calls to a set of backends; see the module docstring."""

    def __init__(
        self,
        backends: Sequence[BackendConfig],
        http: httpx.AsyncClient,
        *,
        health_interval: float = 15.0,
        max_probe_backoff: float = 60.0,
        call_attempts: int = 3,
        affinity_max_wait: float = 30.0,
        fifo: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``fifo=True`` serves strictly by arrival (no priority, no model affinity): the baseline that
        ``bench/backends.py`` compares against, not a setting for real use."""
        self._states = [BackendState(config, make_client(config, http)) for config in backends]
        self._health_interval = health_interval
        self._max_probe_backoff = max_probe_backoff
        self._retry = RetryPolicy(attempts=call_attempts)
        self._clock = clock
        self._affinity_max_wait = affinity_max_wait
        self._fifo = fifo
        self._waiters: list[tuple[int, int, _Waiter]] = []
        self._order = itertools.count()
        self._health_task: asyncio.Task[None] | None = None
        self._health_wakeup = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check every backend once, then keep checking in the background."""
        await asyncio.gather(*(self._probe(state) for state in self._states))
        self._health_task = asyncio.create_task(self._health_loop(), name="backend-health")

    async def close(self) -> None:
        """Stop the health checks and fail whoever is still waiting for a slot."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        for _, _, waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(BackendUnavailable("the bot is shutting down"))
        self._waiters.clear()

    async def __aenter__(self) -> BackendPool:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- calls -----------------------------------------------------------------------------------------

    def chat(
        self,
        model: str,
        messages: Sequence[ChatMessage],
        *,
        options: dict[str, Any],
        priority: Priority,
        timeouts: Timeouts,
        slot_timeout: float | None = None,
    ) -> PooledStream:
        """Stream a chat reply from some backend serving ``model``."""

        def open_stream(state: BackendState) -> TextStream:
            return state.client.chat(model, messages, options=options, timeouts=timeouts, retry=NO_RETRY)

        return PooledStream(self, model, priority, open_stream, slot_timeout)

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        system: str | None = None,
        options: dict[str, Any],
        priority: Priority,
        timeouts: Timeouts,
        slot_timeout: float | None = None,
    ) -> PooledStream:
        """Stream a completion from some backend serving ``model``."""

        def open_stream(state: BackendState) -> TextStream:
            return state.client.generate(
                model, prompt, system=system, options=options, timeouts=timeouts, retry=NO_RETRY
            )

        return PooledStream(self, model, priority, open_stream, slot_timeout)

    def status(self) -> list[BackendStatus]:
        """A snapshot of every backend, for moderators."""
        waiting = sum(1 for _, _, waiter in self._waiters if not waiter.future.done())
        return [
            BackendStatus(
                name=state.name,
                url=state.config.url,
                healthy=state.healthy,
                in_flight=state.in_flight,
                max_concurrent=state.config.max_concurrent,
                waiting=waiting,
                loaded_models=tuple(sorted(state.loaded_models)),
                tokens_per_second=(
                    sum(state.tokens_per_second) / len(state.tokens_per_second)
                    if state.tokens_per_second
                    else None
                ),
                recent_errors=tuple(message for _, message in state.errors),
                version=state.version,
            )
            for state in self._states
        ]

    async def list_models(self) -> list[str]:
        """Every model any healthy backend reports, for pickers and autocomplete."""
        names: set[str] = set()
        for state in self._states:
            names.update(state.config.models)
            if state.available_models:
                names.update(state.available_models)
        return sorted(names)

    # -- slots -----------------------------------------------------------------------------------------

    async def acquire(
        self, model: str, priority: Priority, *, exclude: frozenset[str] = frozenset(), max_wait: float | None
    ) -> BackendState:
        """Wait for a free slot on a backend that can serve ``model``; the caller must :meth:`release` it."""
        if priority is Priority.CHAT and not self._candidates(model, exclude):
            # Nobody can answer: a person is waiting, so say so now rather than after a timeout.
            raise BackendUnavailable("no model server is reachable right now")
        waiter = _Waiter(priority, model, exclude, asyncio.get_running_loop().create_future(), self._clock())
        heapq.heappush(self._waiters, (priority, next(self._order), waiter))
        self._dispatch()
        try:
            async with asyncio.timeout(max_wait):
                return await waiter.future
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                # The slot was granted at the very moment we gave up: hand it back.
                self.release(waiter.future.result())
            waiter.future.cancel()
            if isinstance(exc, TimeoutError):
                raise BackendBusy("every model server is busy; try again in a moment") from None
            raise

    def release(self, state: BackendState) -> None:
        """Give a slot back and let the next waiter in."""
        state.in_flight -= 1
        self._dispatch()

    def _candidates(self, model: str, exclude: frozenset[str]) -> list[BackendState]:
        """Healthy backends, not excluded, that may serve ``model``.

        Only a configured ``models`` list rules a backend out: the list a server reported may be stale
        (a model pulled since the last check), so such a server is still asked, ranked after the others,
        and its own 404 is the authoritative "model not found".
        """
        return [
            s
            for s in self._states
            if s.healthy and s.name not in exclude and not (s.config.models and s.serves(model) is False)
        ]

    def _dispatch(self) -> None:
        """Hand free slots to waiters, one at a time, always the best (waiter, backend) pair first.

        Best means: chat before blog; then a waiter whose model the backend ran last (so two models on one
        small GPU don't evict each other on every request; a waiter older than ``affinity_max_wait`` no
        longer defers to this); then arrival; then the least busy backend. A waiter that fits nowhere
        right now doesn't block the others.
        """
        while True:
            now = self._clock()
            best: tuple[tuple[float, ...], _Waiter, BackendState] | None = None
            for _, sequence, waiter in self._waiters:
                if waiter.future.done():
                    continue
                for state in self._candidates(waiter.model, waiter.exclude):
                    if state.in_flight >= self._capacity(state, waiter.priority):
                        continue
                    key = self._rank(waiter, sequence, state, now)
                    if best is None or key < best[0]:
                        best = (key, waiter, state)
            if best is None:
                break
            _, waiter, state = best
            state.in_flight += 1
            state.current_model = normalise_model(waiter.model)
            waiter.future.set_result(state)
        self._waiters = [entry for entry in self._waiters if not entry[2].future.done()]
        heapq.heapify(self._waiters)

    def _rank(self, waiter: _Waiter, sequence: int, state: BackendState, now: float) -> tuple[float, ...]:
        load = state.in_flight / state.config.max_concurrent
        if self._fifo:
            return (sequence, load)
        model = normalise_model(waiter.model)
        if model == state.current_model or now - waiter.enqueued_at > self._affinity_max_wait:
            affinity = 0
        elif model in state.loaded_models:
            affinity = 1
        else:
            affinity = 2
        known = 0 if state.serves(waiter.model) is True else 1
        return (waiter.priority, affinity, sequence, known, load)

    @staticmethod
    def _capacity(state: BackendState, priority: Priority) -> int:
        capacity = state.config.max_concurrent
        if priority is not Priority.CHAT:
            capacity -= min(state.config.reserved_chat_slots, capacity - 1)
        return capacity

    async def _failover(
        self,
        call: PooledStream,
        model: str,
        priority: Priority,
        open_stream: Callable[[BackendState], TextStream],
        slot_timeout: float | None,
    ) -> AsyncIterator[str]:
        """Run one call: take a slot, stream, and on a retryable failure before any text try elsewhere."""
        tried: set[str] = set()
        produced = False
        for attempt in itertools.count(1):
            # Prefer backends not tried yet; when none is left, the tried ones are better than nothing.
            exclude = frozenset(tried) if self._candidates(model, frozenset(tried)) else frozenset()
            state = await self.acquire(model, priority, exclude=exclude, max_wait=slot_timeout)
            call.backend = state.name
            call.started_at = asyncio.get_running_loop().time()
            try:
                async with open_stream(state) as stream:
                    async for text in stream:
                        produced = True
                        yield text
                    call.stats = stream.stats
                self.record_success(state, model, call.stats)
                return
            except LLMError as exc:
                self.record_failure(state, exc)
                if produced or not exc.retryable or attempt >= self._retry.attempts:
                    raise
                tried.add(state.name)
                log.info("model call failed on %s before any text (%s); trying again", state.name, exc)
                # Another server can take it at once; the same server(s) again get a moment first.
                delay = 0.0 if self._candidates(model, frozenset(tried)) else self._retry.delay(attempt)
            finally:
                self.release(state)
            await asyncio.sleep(delay)

    # -- health ----------------------------------------------------------------------------------------

    def record_success(self, state: BackendState, model: str, stats: GenerationStats | None) -> None:
        """A call finished: the model is loaded there, and the speed is worth remembering."""
        state.loaded_models.add(normalise_model(model))
        if stats is not None and stats.tokens_per_second is not None:
            state.tokens_per_second.append(stats.tokens_per_second)
        if not state.healthy or state.consecutive_failures:
            state.healthy, state.consecutive_failures = True, 0
            self._dispatch()

    def record_failure(self, state: BackendState, error: LLMError) -> None:
        """A call failed; unreachable servers are taken out until a probe succeeds."""
        state.errors.append((self._clock(), str(error)))
        if isinstance(error, BackendUnavailable):
            self._mark_down(state, str(error))

    def _mark_down(self, state: BackendState, reason: str) -> None:
        state.consecutive_failures += 1
        delay = min(self._max_probe_backoff, 0.5 * 2 ** (state.consecutive_failures - 1))
        state.next_probe_at = self._clock() + delay
        if state.healthy:
            log.warning("backend %s is down (%s); probing again in %.1fs", state.name, reason, delay)
        state.healthy = False
        self._health_wakeup.set()

    async def _probe(self, state: BackendState) -> None:
        try:
            state.version = await state.client.version()
            state.available_models = frozenset(normalise_model(m) for m in await state.client.list_models())
            state.loaded_models = {normalise_model(m) for m in await state.client.loaded_models()}
        except LLMError as exc:
            self._mark_down(state, str(exc))
            return
        if not state.healthy:
            log.info("backend %s is back (version %s)", state.name, state.version)
        state.healthy, state.consecutive_failures = True, 0
        state.next_probe_at = self._clock() + self._health_interval
        self._dispatch()

    async def _health_loop(self) -> None:
        while True:
            now = self._clock()
            due = [state for state in self._states if state.next_probe_at <= now]
            await asyncio.gather(*(self._probe(state) for state in due))
            next_at = min(state.next_probe_at for state in self._states)
            self._health_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_wakeup.wait(), max(0.05, next_at - self._clock()))


class PooledStream:
    """A :class:`TextStream` whose backend is chosen by the pool, with failover before the first text.

    Use exactly like a TextStream: ``async with pool.chat(...) as stream: async for text in stream``.
    """

    def __init__(
        self,
        pool: BackendPool,
        model: str,
        priority: Priority,
        open_stream: Callable[[BackendState], TextStream],
        slot_timeout: float | None,
    ) -> None:
        self._pool = pool
        self._model = model
        self._priority = priority
        self._open_stream = open_stream
        self._slot_timeout = slot_timeout
        self._iterator: AsyncIterator[str] | None = None
        self._parts: list[str] = []
        self.stats: GenerationStats | None = None
        #: The backend that produced the reply (or the last one tried).
        self.backend: str | None = None
        #: ``loop.time()`` when a slot was granted: queue wait ends here.
        self.started_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    async def __aenter__(self) -> PooledStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "aclose"):
            await self._iterator.aclose()

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterator is not None:
            raise RuntimeError("a PooledStream can be iterated only once")
        self._iterator = self._run()
        return self._iterator

    async def _run(self) -> AsyncIterator[str]:
        async for text in self._pool._failover(
            self, self._model, self._priority, self._open_stream, self._slot_timeout
        ):
            self._parts.append(text)
            yield text
