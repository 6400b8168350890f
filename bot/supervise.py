"""Long-lived background loops that never die silently.

Every loop of the bot (blog worker slots, the status board, the backend health checks) runs under one
:class:`Supervisor`: an exception is logged with its traceback, the loop waits (the one backoff rule) and
runs again; its health — running, restarts, the last error and whether it keeps failing — is what
``/llm status`` and ``doctor`` show. Knows nothing of Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.backoff import backoff

log = logging.getLogger(__name__)

#: A loop that failed this many times in a row, without a quiet spell in between, is reported failing.
FAILING_AFTER = 3
#: A loop that ran this long without failing has recovered: its next failure starts the backoff again.
QUIET_SECONDS = 60.0


@dataclass
class LoopHealth:
    """What is known about one supervised loop."""

    name: str
    running: bool = False
    restarts: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    #: ``time.time()`` of the last error.
    last_error_at: float | None = None
    started_at: float = 0.0

    @property
    def failing(self) -> bool:
        """It keeps failing: something an operator should look at."""
        return self.consecutive_failures >= FAILING_AFTER


class Supervisor:
    """Runs named loops and restarts the ones that fail; see the module docstring."""

    def __init__(self, *, base_delay: float = 1.0, max_delay: float = 60.0) -> None:
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.loops: dict[str, LoopHealth] = {}

    def start(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``loop()`` as ``name`` until it returns or is stopped, restarting it whenever it raises."""
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"a loop named {name!r} is already running")
        health = self.loops[name] = LoopHealth(name)
        task = asyncio.create_task(self._supervise(health, loop), name=name)
        self._tasks[name] = task
        return task

    async def stop(self, *names: str) -> None:
        """Stop the named loops (all of them when none is named) and wait until they have ended."""
        tasks = [self._tasks.pop(name) for name in names or list(self._tasks) if name in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def health(self) -> list[LoopHealth]:
        """Every loop's health, in start order."""
        return list(self.loops.values())

    def all_running(self) -> bool:
        """True when every loop that was started is running and none keeps failing."""
        return all(health.running and not health.failing for health in self.loops.values())

    async def _supervise(self, health: LoopHealth, loop: Callable[[], Awaitable[None]]) -> None:
        while True:
            health.running, health.started_at = True, time.monotonic()
            try:
                await loop()
            except asyncio.CancelledError:
                health.running = False
                raise
            except Exception as exc:
                health.running = False
                if time.monotonic() - health.started_at >= QUIET_SECONDS:
                    health.consecutive_failures = 0
                health.consecutive_failures += 1
                health.restarts += 1
                health.last_error = f"{type(exc).__name__}: {exc}"[:300]
                health.last_error_at = time.time()
                delay = backoff(health.consecutive_failures, base=self._base_delay, cap=self._max_delay)
                log.exception("%s failed; restarting it in %.1fs", health.name, delay)
                await asyncio.sleep(delay)
                continue
            health.running = False
            log.info("%s finished", health.name)
            return

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop()
