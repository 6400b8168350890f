"""The backend pool: every model call of the bot goes through here.

* **Slots.** A backend never has more than ``max_concurrent`` requests in flight.
* **Priority.** Waiting requests are served chat first (people are watching), then by arrival.
  A backend's ``reserved_chat_slots`` are kept free for chat.
* **Health.** A backend that cannot be reached is taken out and probed with exponential backoff until it
  answers again; a periodic check (``GET /api/version``, ``GET /v1/models``) catches the ones that die
  quietly. A backend that is streaming is healthy by that fact: probes go only to idle or down backends
  (llama-cpp-python ends a running generation when any other request arrives) and nothing is sent to a
  backend while it is being probed.
* **Context windows.** Each call's messages are fitted to the backend's window (Ollama: the ``num_ctx``
  sent; OpenAI-compatible: ``context_tokens`` from the config, the server, or its refusals), history
  dropped oldest first by estimated tokens; see :mod:`bot.llm.budget`.
* **Failover.** A call that fails before producing any text (connection refused, busy) moves to another
  healthy backend serving the model. A server that answers "no such model" is skipped for that call; the
  call fails for good only when no configured server has (or may have) the model — a blog job whose model
  is on a server that is down waits for it.
* **Preemption.** A chat that finds every slot of its backends taken by background work stops one of those
  generations (:class:`Preempted`); the job continues it from its text once the chat is served.

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

from bot.backoff import backoff
from bot.config import BackendConfig
from bot.llm._errors import (
    BackendBusy,
    BackendUnavailable,
    ContextOverflow,
    LLMError,
    ModelNotFound,
    Preempted,
)
from bot.llm._ollama import OllamaClient
from bot.llm._openai import OpenAIClient
from bot.llm._stream import TextStream
from bot.llm._types import NO_RETRY, ChatMessage, GenerationStats, RetryPolicy, Timeouts
from bot.llm.budget import TokenEstimator, fit_messages
from bot.supervise import Supervisor

log = logging.getLogger(__name__)

#: The supervised loop that checks backends.
HEALTH_LOOP = "backend-health"


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
    #: False when the server does not say which models are loaded.
    reports_loaded: bool = True
    #: A health probe is in flight: nothing else is sent meanwhile.
    probing: bool = False
    #: The context window the server announced (OpenAI-compatible servers that tell).
    announced_context: int | None = None
    #: Context windows learned from the server's refusals, by model.
    learned_context: dict[str, int] = field(default_factory=dict)
    #: Characters-per-token estimators, by model.
    estimators: dict[str, TokenEstimator] = field(default_factory=dict)
    #: Whether a model here takes images, by model (asked once; forgotten when the server comes back).
    vision: dict[str, bool] = field(default_factory=dict)
    #: The calls streaming here now.
    calls: set[PooledStream] = field(default_factory=set)
    tokens_per_second: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    errors: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def name(self) -> str:
        return self.config.display_name

    def estimator(self, model: str) -> TokenEstimator:
        return self.estimators.setdefault(normalise_model(model), TokenEstimator())

    def context_window(self, model: str, options: dict[str, Any]) -> int | None:
        """The window a call to ``model`` with ``options`` gets here, in tokens, when known."""
        if self.config.kind == "ollama":
            # Ollama's window is the num_ctx we send (a prompt over it is silently cut from the start).
            num_ctx = options.get("num_ctx")
            return int(num_ctx) if isinstance(num_ctx, int) else self.config.context_tokens or None
        return (
            self.config.context_tokens
            or self.learned_context.get(normalise_model(model))
            or self.announced_context
        )

    def known_to_see(self, model: str) -> bool:
        """Whether ``model`` is known to take images here (configured, or the server said so)."""
        key = normalise_model(model)
        return key in {normalise_model(m) for m in self.config.vision_models} or self.vision.get(key) is True

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
    kind: str
    healthy: bool
    in_flight: int
    max_concurrent: int
    waiting: int
    #: None when the server does not say what is loaded.
    loaded_models: tuple[str, ...] | None
    tokens_per_second: float | None
    recent_errors: tuple[str, ...]
    version: str | None
    context_tokens: int | None = None
    #: Seconds since the last of ``recent_errors``, when there is one.
    last_error_age: float | None = None


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
    sequence: int = 0
    #: A background call was preempted to make room for this (chat) waiter.
    preempted: bool = False


class BackendPool:
    """Routes model calls to a set of backends; see the module docstring."""

    def __init__(
        self,
        backends: Sequence[BackendConfig],
        http: httpx.AsyncClient,
        *,
        health_interval: float | None = None,
        max_probe_backoff: float = 60.0,
        call_attempts: int = 3,
        affinity_max_wait: float = 30.0,
        fifo: bool = False,
        clock: Callable[[], float] = time.monotonic,
        supervisor: Supervisor | None = None,
    ) -> None:
        """``fifo=True`` serves strictly by arrival (no priority, no model affinity): the baseline that
        ``bench/backends.py`` compares against, not a setting for real use. ``health_interval`` overrides
        every backend's configured one (tests)."""
        self._states = [BackendState(config, make_client(config, http)) for config in backends]
        self._health_interval = health_interval
        self._max_probe_backoff = max_probe_backoff
        self._retry = RetryPolicy(attempts=call_attempts)
        self._clock = clock
        self._affinity_max_wait = affinity_max_wait
        self._fifo = fifo
        self._waiters: list[tuple[int, int, _Waiter]] = []
        self._order = itertools.count()
        self._supervisor = supervisor or Supervisor()
        self._health_wakeup = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check every backend once, then keep checking in the background."""
        await asyncio.gather(*(self._probe(state) for state in self._states))
        self._supervisor.start(HEALTH_LOOP, self._health_loop)

    async def close(self) -> None:
        """Stop the health checks and fail whoever is still waiting for a slot."""
        await self._supervisor.stop(HEALTH_LOOP)
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
        min_reply_tokens: int = 64,
    ) -> PooledStream:
        """Stream a chat reply from some backend serving ``model``.

        ``messages`` are the system prompt(s), the history and the question: on each backend they are
        fitted to its context window (history dropped oldest first) and ``num_predict`` lowered to the room
        left, never below ``min_reply_tokens``; when even that does not fit, :class:`ContextOverflow`.
        """
        call = PooledStream(self, model, priority, slot_timeout)

        def open_stream(state: BackendState) -> TextStream:
            call.sent_messages = None
            sent, sent_options = list(messages), dict(options)
            window = state.context_window(model, options)
            if window is not None:
                reply = int(options.get("num_predict") or min_reply_tokens)
                fitted = fit_messages(
                    messages,
                    window=window,
                    reply_tokens=reply,
                    min_reply_tokens=min(reply, min_reply_tokens),
                    estimator=state.estimator(model),
                )
                sent, call.dropped = fitted.messages, fitted.dropped
                sent_options["num_predict"] = fitted.max_tokens
            if not state.known_to_see(model) and any(m.images for m in sent):
                # A server not asked by sees_images (it came up since): never images to a blind model.
                sent = [m.without_images() for m in sent]
            call.sent_messages, call.max_tokens = sent, sent_options.get("num_predict")
            return state.client.chat(model, sent, options=sent_options, timeouts=timeouts, retry=NO_RETRY)

        call.open_stream = open_stream
        return call

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
        call = PooledStream(self, model, priority, slot_timeout)

        def open_stream(state: BackendState) -> TextStream:
            return state.client.generate(
                model, prompt, system=system, options=options, timeouts=timeouts, retry=NO_RETRY
            )

        call.open_stream = open_stream
        return call

    async def sees_images(self, model: str) -> bool:
        """Whether images may be sent with a chat to ``model``: True only when every reachable server
        that may serve it says the model takes images, so a failover never lands them on a blind one.

        Ollama is asked (``/api/show``) once per server and model. OpenAI-compatible servers have no
        such call: only the models listed in the backend's ``vision_models`` get images.
        """
        answers = []
        for state in self._states:
            if not state.healthy or state.serves(model) is False:
                continue
            answer = await self._sees_images(state, model)
            if answer is not None:
                answers.append(answer)
        return bool(answers) and all(answers)

    async def _sees_images(self, state: BackendState, model: str) -> bool | None:
        """One server's answer; None when it does not have the model."""
        key = normalise_model(model)
        if state.known_to_see(model):
            return True
        if key in state.vision:
            return state.vision[key]
        if not isinstance(state.client, OllamaClient):
            return False
        try:
            answer = await state.client.sees_images(model)
        except ModelNotFound:
            return None
        except LLMError as exc:
            log.info("could not ask %s whether %s takes images (%s); assuming not", state.name, model, exc)
            return False  # not remembered: asked again next time
        state.vision[key] = bool(answer)
        return state.vision[key]

    def status(self) -> list[BackendStatus]:
        """A snapshot of every backend, for moderators."""
        waiting = sum(1 for _, _, waiter in self._waiters if not waiter.future.done())
        return [
            BackendStatus(
                name=state.name,
                url=state.config.url,
                kind=state.config.kind,
                healthy=state.healthy,
                in_flight=state.in_flight,
                max_concurrent=state.config.max_concurrent,
                waiting=waiting,
                loaded_models=tuple(sorted(state.loaded_models)) if state.reports_loaded else None,
                tokens_per_second=(
                    sum(state.tokens_per_second) / len(state.tokens_per_second)
                    if state.tokens_per_second
                    else None
                ),
                recent_errors=tuple(message for _, message in state.errors),
                version=state.version,
                context_tokens=state.config.context_tokens or state.announced_context,
                last_error_age=self._clock() - state.errors[-1][0] if state.errors else None,
            )
            for state in self._states
        ]

    def tokens_per_second(self, model: str) -> float | None:
        """The generation speed healthy backends have shown lately (for estimates), or None."""
        rates = [rate for state in self._states if state.healthy for rate in state.tokens_per_second]
        return sum(rates) / len(rates) if rates else None

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
        self,
        model: str,
        priority: Priority,
        *,
        exclude: frozenset[str] = frozenset(),
        max_wait: float | None,
        call: PooledStream | None = None,
    ) -> BackendState:
        """Wait for a free slot on a backend that can serve ``model``; the caller must :meth:`release` it."""
        if priority is Priority.CHAT and not self._candidates(model, exclude):
            # Nobody can answer: a person is waiting, so say so now rather than after a timeout.
            raise BackendUnavailable("no model server is reachable right now")
        sequence = next(self._order)
        waiter = _Waiter(
            priority, model, exclude, asyncio.get_running_loop().create_future(), self._clock(), sequence
        )
        if call is not None:
            call.waiter = waiter
        heapq.heappush(self._waiters, (priority, sequence, waiter))
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
        finally:
            if call is not None:
                call.waiter = None

    def position(self, call: PooledStream) -> int | None:
        """The call's place in line for a slot (1 = next), or None when it is not waiting."""
        waiter = call.waiter
        if waiter is None or waiter.future.done():
            return None
        ahead = sum(
            1
            for _, _, other in self._waiters
            if not other.future.done()
            and (other.priority, other.sequence) < (waiter.priority, waiter.sequence)
        )
        return ahead + 1

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

    def _open_candidates(self, model: str, exclude: frozenset[str]) -> list[BackendState]:
        """:meth:`_candidates` that may be sent a request right now (not being probed)."""
        return [state for state in self._candidates(model, exclude) if not state.probing]

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
                for state in self._open_candidates(waiter.model, waiter.exclude):
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
        if not self._fifo:
            self._preempt_for_chat()

    def _preempt_for_chat(self) -> None:
        """A chat still waiting while background work holds every slot it could use: stop one of those
        generations (the most recent, which loses the least) so the chat goes next."""
        for _, _, waiter in self._waiters:
            if waiter.priority is not Priority.CHAT or waiter.preempted or waiter.future.done():
                continue
            running = [
                call
                for state in self._open_candidates(waiter.model, waiter.exclude)
                for call in state.calls
                if call.priority is not Priority.CHAT and not call.preempting
            ]
            if running:
                victim = max(running, key=lambda call: call.started_at or 0.0)
                log.info("pausing a %s generation on %s to serve a chat", victim.model, victim.backend)
                victim.preempt()
                waiter.preempted = True

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

    async def _failover(self, call: PooledStream) -> AsyncIterator[str]:
        """Run one call: take a slot, stream, and on a retryable failure before any text try elsewhere.

        A server's "the prompt does not fit" teaches the pool that backend's window; the same backend is
        then asked once more with the history trimmed to fit.
        """
        model, priority = call.model, call.priority
        tried: set[str] = set()
        missing: set[str] = set()
        refitted: set[str] = set()
        produced = False
        for attempt in itertools.count(1):
            # Never a server that said it lacks the model; prefer backends not tried yet, and when none is
            # left, the tried ones are better than nothing.
            untried = frozenset(tried | missing)
            exclude = untried if self._candidates(model, untried) else frozenset(missing)
            if call.on_waiting is not None:
                call.on_waiting()
            state = await self.acquire(
                model, priority, exclude=exclude, max_wait=call.slot_timeout, call=call
            )
            loop = asyncio.get_running_loop()
            call.backend = state.name
            call.started_at = loop.time()
            call.preempting = False
            state.calls.add(call)
            if call.on_started is not None:
                call.on_started()
            delay = 0.0
            try:
                async with call.open_stream(state) as stream:
                    call.stream = stream
                    if call.preempting:
                        stream.interrupt()
                    async for text in stream:
                        produced = True
                        yield text
                    call.stats = stream.stats
                self.record_success(state, call, stream)
                return
            except Preempted:
                raise  # not the server's fault, and the caller continues from the text it has
            except ContextOverflow as exc:
                learned = self._learn_context(state, call, exc)
                if produced or not learned or state.name in refitted:
                    raise
                refitted.add(state.name)
                log.info("%s: the prompt did not fit (%s); trying again with less history", state.name, exc)
                continue
            except ModelNotFound as exc:
                state.errors.append((self._clock(), str(exc)))
                missing.add(state.name)
                if produced or not self._may_serve(model, frozenset(missing)):
                    raise
                log.info("%s does not have %s; another server may", state.name, model)
                continue
            except LLMError as exc:
                self.record_failure(state, exc)
                if produced or not exc.retryable or attempt >= self._retry.attempts:
                    raise
                tried.add(state.name)
                log.info("model call failed on %s before any text (%s); trying again", state.name, exc)
                # Another server can take it at once; the same server(s) again get a moment first.
                delay = (
                    0.0 if self._candidates(model, frozenset(tried | missing)) else self._retry.delay(attempt)
                )
            finally:
                state.calls.discard(call)
                self.release(state)
            await asyncio.sleep(delay)

    def _may_serve(self, model: str, exclude: frozenset[str]) -> bool:
        """Whether a server not in ``exclude``, up or down, has (or may have) ``model``."""
        return any(state.serves(model) is not False for state in self._states if state.name not in exclude)

    def _learn_context(self, state: BackendState, call: PooledStream, error: ContextOverflow) -> bool:
        """Remember what a context refusal says; True when there is something new to fit to."""
        if error.context_tokens is None or call.sent_messages is None:
            return False
        if error.prompt_tokens is not None:
            state.estimator(call.model).observe(call.sent_messages, error.prompt_tokens)
        key = normalise_model(call.model)
        before = state.learned_context.get(key)
        state.learned_context[key] = error.context_tokens
        if state.config.kind == "ollama" or state.config.context_tokens:
            return False  # the window is the configured one; a refusal means the prompt alone is too long
        return before != error.context_tokens or error.prompt_tokens is not None

    # -- health ----------------------------------------------------------------------------------------

    def record_success(self, state: BackendState, call: PooledStream, stream: TextStream) -> None:
        """A call finished: the model is loaded there, and its speed and token counts are worth keeping."""
        stats = stream.stats
        state.loaded_models.add(normalise_model(call.model))
        rate = stats.tokens_per_second if stats is not None else None
        if rate is None:
            rate = stream_rate(stream)  # OpenAI-compatible servers rarely report timings: measure them
        if rate is not None:
            state.tokens_per_second.append(rate)
        if stats is not None and stats.prompt_tokens and call.sent_messages is not None:
            state.estimator(call.model).observe(call.sent_messages, stats.prompt_tokens)
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
        delay = backoff(state.consecutive_failures, base=0.5, cap=self._max_probe_backoff)
        state.next_probe_at = self._clock() + delay
        if state.healthy:
            log.warning("backend %s is down (%s); probing again in %.1fs", state.name, reason, delay)
        state.healthy = False
        self._health_wakeup.set()

    async def _probe(self, state: BackendState) -> None:
        state.probing = True
        try:
            info = await state.client.probe()
        except LLMError as exc:
            if state.in_flight and state.healthy:
                # Work started meanwhile and the server is busy with it: a slow answer is no verdict.
                state.next_probe_at = self._clock() + self._interval(state)
            else:
                self._mark_down(state, str(exc))
            return
        finally:
            state.probing = False
            self._dispatch()
        state.version = info.version
        state.available_models = frozenset(normalise_model(m) for m in info.models)
        state.reports_loaded = info.loaded is not None
        state.loaded_models = {normalise_model(m) for m in info.loaded or ()}
        if info.context_tokens:
            state.announced_context = info.context_tokens
        if not state.healthy:
            log.info("backend %s is back (version %s)", state.name, state.version)
            state.vision.clear()  # it may have come back with other models
        state.healthy, state.consecutive_failures = True, 0
        state.next_probe_at = self._clock() + self._interval(state)
        self._dispatch()

    def _interval(self, state: BackendState) -> float:
        return self._health_interval if self._health_interval is not None else state.config.health_interval

    async def _health_loop(self) -> None:
        while True:
            now = self._clock()
            due = [state for state in self._states if state.next_probe_at <= now]
            for state in due:
                if state.healthy and state.in_flight:
                    # Streaming right now: healthy by that fact, and a probe could end the stream.
                    state.next_probe_at = now + self._interval(state)
            probes = [state for state in due if not (state.healthy and state.in_flight)]
            await asyncio.gather(*(self._probe(state) for state in probes))
            next_at = min(state.next_probe_at for state in self._states)
            self._health_wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._health_wakeup.wait(), max(0.05, next_at - self._clock()))


def stream_rate(stream: TextStream) -> float | None:
    """Content chunks per second from the first to the last one (a chunk is about one token)."""
    if stream.first_content_at is None or stream.content_chunks < 8:
        return None
    elapsed = asyncio.get_running_loop().time() - stream.first_content_at
    return (stream.content_chunks - 1) / elapsed if elapsed > 0 else None


class PooledStream:
    """A :class:`TextStream` whose backend is chosen by the pool, with failover before the first text.

    Use exactly like a TextStream: ``async with pool.chat(...) as stream: async for text in stream``.
    """

    def __init__(self, pool: BackendPool, model: str, priority: Priority, slot_timeout: float | None) -> None:
        self._pool = pool
        self.model = model
        self.priority = priority
        self.slot_timeout = slot_timeout
        #: Opens the request on the chosen backend (set by the pool).
        self.open_stream: Callable[[BackendState], TextStream] = _not_set
        self._iterator: AsyncIterator[str] | None = None
        self._parts: list[str] = []
        self.stats: GenerationStats | None = None
        #: The backend that produced the reply (or the last one tried).
        self.backend: str | None = None
        #: ``loop.time()`` when a slot was granted: queue wait ends here.
        self.started_at: float | None = None
        #: The stream of the current attempt.
        self.stream: TextStream | None = None
        #: Called when the call starts waiting for a slot, and when one is granted (the request is sent).
        self.on_waiting: Callable[[], None] | None = None
        self.on_started: Callable[[], None] | None = None
        #: The pool's entry for this call while it waits for a slot (for :meth:`BackendPool.position`).
        self.waiter: _Waiter | None = None
        #: Set when the pool asked this call to stop for a chat.
        self.preempting = False
        #: What was sent on the last attempt: the fitted messages, how many history messages were left
        #: out to fit the context window, and the reply's token budget.
        self.sent_messages: list[ChatMessage] | None = None
        self.dropped = 0
        self.max_tokens: int | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def preempt(self) -> None:
        """Stop streaming now; the reader gets :class:`Preempted` with the text so far."""
        self.preempting = True
        if self.stream is not None:
            self.stream.interrupt()

    @property
    def first_content_at(self) -> float | None:
        """``loop.time()`` of the first content token, once it came."""
        return self.stream.first_content_at if self.stream is not None else None

    @property
    def content_chunks(self) -> int:
        """Content chunks (≈ tokens) received on the current attempt."""
        return self.stream.content_chunks if self.stream is not None else 0

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
        async for text in self._pool._failover(self):
            self._parts.append(text)
            yield text


def _not_set(state: BackendState) -> TextStream:
    raise RuntimeError("PooledStream.open_stream was not set")
