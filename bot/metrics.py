"""Operations endpoint: ``/healthz`` for a supervisor or container runtime, ``/metrics`` for Prometheus.

Off unless ``[metrics] listen = "host:port"`` is set. Counters and histograms are updated where things
happen (chat replies); gauges that describe state (backends, the blog queue, supervised loops) are read
when Prometheus scrapes, so they are never stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from types import TracebackType
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from bot.blog.store import JobStore
from bot.errors import StartupError

if TYPE_CHECKING:
    from bot.bot import LLMBot

log = logging.getLogger(__name__)

#: Seconds, from Discord's "instant" to a slow CPU model reading a long prompt.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
#: /healthz gives the database this long to answer.
DATABASE_TIMEOUT = 2.0


class Metrics:
    """The bot's Prometheus metrics, in a registry of their own (no process-wide state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.chat_replies = Counter(
            "llmbot_chat_replies", "Chat replies, by how they ended", ["outcome"], registry=self.registry
        )
        self.chat_first_text = Histogram(
            "llmbot_chat_first_text_seconds",
            "From the question to the first text of the answer on Discord",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.chat_final_text = Histogram(
            "llmbot_chat_final_text_seconds",
            "From the question to the whole answer on Discord",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.backend_up = Gauge(
            "llmbot_backend_up", "1 if the model server is healthy", ["backend"], registry=self.registry
        )
        self.backend_slots_in_use = Gauge(
            "llmbot_backend_slots_in_use",
            "Requests running on the server",
            ["backend"],
            registry=self.registry,
        )
        self.backend_slots = Gauge(
            "llmbot_backend_slots", "The server's max_concurrent", ["backend"], registry=self.registry
        )
        self.backend_tokens_per_second = Gauge(
            "llmbot_backend_tokens_per_second",
            "Recent generation speed seen from the server",
            ["backend"],
            registry=self.registry,
        )
        self.blog_jobs = Gauge(
            "llmbot_blog_jobs",
            "Blog jobs in the database by state (queued and running: the queue; the rest: outcomes)",
            ["state"],
            registry=self.registry,
        )
        self.loop_running = Gauge(
            "llmbot_loop_running",
            "1 if the supervised loop runs and is not failing",
            ["loop"],
            registry=self.registry,
        )

        self.discord_rate_limited = Counter(
            "llmbot_discord_rate_limited",
            "429 answers from Discord's API, by X-RateLimit-Scope (user, shared, global)",
            ["scope"],
            registry=self.registry,
        )

    def discord_trace(self) -> aiohttp.TraceConfig:
        """Hooks for discord.py's HTTP session (``http_trace``) that count Discord's 429 answers."""

        async def on_request_end(
            session: aiohttp.ClientSession, context: object, params: aiohttp.TraceRequestEndParams
        ) -> None:
            if params.response.status == 429:
                scope = params.response.headers.get("X-RateLimit-Scope", "user")
                self.discord_rate_limited.labels(scope).inc()

        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(on_request_end)
        return trace

    async def refresh(self, bot: LLMBot) -> None:
        """Read the state gauges from the bot's services."""
        for backend in bot.pool.status():
            self.backend_up.labels(backend.name).set(1 if backend.healthy else 0)
            self.backend_slots_in_use.labels(backend.name).set(backend.in_flight)
            self.backend_slots.labels(backend.name).set(backend.max_concurrent)
            self.backend_tokens_per_second.labels(backend.name).set(backend.tokens_per_second or 0)
        for state, count in (await JobStore(bot.db).count_by_state()).items():
            self.blog_jobs.labels(str(state)).set(count)
        for loop in bot.supervisor.health():
            self.loop_running.labels(loop.name).set(1 if loop.running and not loop.failing else 0)


class OpsServer:
    """The HTTP endpoint, open while the bot runs: ``async with OpsServer(bot, "127.0.0.1:9108")``."""

    def __init__(self, bot: LLMBot, listen: str) -> None:
        self._bot = bot
        self._host, _, port = listen.rpartition(":")
        self._port = int(port)
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> OpsServer:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        # Scrapers keep connections open: don't wait out aiohttp's 60 s for them at shutdown.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            await self._runner.cleanup()
            where = f"{self._host}:{self._port}"
            raise StartupError(f"metrics.listen: cannot listen on {where} ({exc.strerror or exc})") from None
        log.info("metrics and health at http://%s:%d/ (/metrics, /healthz)", self._host, self._port)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def checks(self) -> dict[str, bool]:
        """What /healthz reports: the gateway is connected, the database answers, every loop runs."""
        bot = self._bot
        database = False
        with contextlib.suppress(Exception):
            database = await asyncio.wait_for(bot.db.fetch_one("SELECT 1"), DATABASE_TIMEOUT) is not None
        return {
            "gateway": bot.gateway_connected(),
            "database": database,
            "loops": bot.supervisor.all_running(),
        }

    async def _healthz(self, request: web.Request) -> web.Response:
        checks = await self.checks()
        return web.Response(
            status=200 if all(checks.values()) else 503,
            body=json.dumps(checks).encode(),
            content_type="application/json",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        await self._bot.metrics.refresh(self._bot)
        body = generate_latest(self._bot.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
