"""The blog worker: runs queued jobs to completion. Knows nothing of Discord.

For each claimed job: generate the article through the backend pool (the lease renewed by a heartbeat
the whole time), store it (state ``generated``, so a crash never costs the GPU work again), then hand it to
the :class:`Delivery` to post, and record the posted message. Errors are classified: retryable ones put
the job back with exponential backoff and jitter; permanent ones fail it with a clear reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bot.blog.article import build_prompt, make_article, num_predict_for
from bot.blog.store import Article, Job, JobState, JobStore, replace
from bot.config import BlogConfig
from bot.llm import LLMError, ModelNotFound, Timeouts
from bot.llm.pool import BackendPool, Priority

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")


class DeliveryFailed(Exception):
    """Posting the article failed; ``permanent`` when trying again cannot help (channel gone, no access)."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class Delivery(Protocol):
    """What the worker needs from the outside world (the Discord cog implements it)."""

    async def deliver(self, job: Job) -> int:
        """Post the finished article (exactly once, even if called again after a crash); the message id."""
        ...

    def job_changed(self, job: Job) -> None:
        """The job moved (state, progress, retry): refresh whatever shows it. Must not block."""
        ...


@dataclass
class Progress:
    """How far a running generation is, for status displays."""

    words: int = 0
    started_at: float = 0.0


class BlogWorker:
    """Runs ``config.workers`` job slots until stopped; see the module docstring."""

    def __init__(
        self,
        store: JobStore,
        pool: BackendPool,
        delivery: Delivery,
        config: BlogConfig,
        *,
        paused_guilds: Callable[[], frozenset[int]] = frozenset,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._pool = pool
        self._delivery = delivery
        self._config = config
        self._paused_guilds = paused_guilds
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._slots: list[asyncio.Task[None]] = []
        self._generations: dict[int, asyncio.Task[str]] = {}
        #: Live progress of the jobs this process is generating, by job id.
        self.progress: dict[int, Progress] = {}

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the job slots (idempotent)."""
        if not self._slots:
            self._slots = [
                asyncio.create_task(self._run_slot(), name=f"blog-worker-{n}")
                for n in range(self._config.workers)
            ]

    async def stop(self) -> None:
        """Stop taking jobs; jobs being generated go back to the queue without losing an attempt."""
        for task in self._slots:
            task.cancel()
        await asyncio.gather(*self._slots, return_exceptions=True)
        self._slots = []

    def notify(self) -> None:
        """Something changed in the queue (a job was added, a guild resumed): look now."""
        self._wakeup.set()

    def stop_generation(self, job_id: int) -> bool:
        """Stop generating ``job_id`` now (it was cancelled); True if this process was generating it."""
        task = self._generations.get(job_id)
        if task is None:
            return False
        task.cancel()
        return True

    # -- the loop --------------------------------------------------------------------------------------

    async def _run_slot(self) -> None:
        while True:
            job = await self._store.claim(self._config.lease_seconds, paused_guilds=self._paused_guilds())
            if job is None:
                await self._wait_for_work()
                continue
            try:
                await self._process(job)
            except asyncio.CancelledError:
                # Shutting down: put the job back for the next run, without counting this attempt.
                await self._store.release(job)
                raise
            except Exception:
                # A bug, not a model or Discord failure: keep the worker alive, fail the job visibly.
                log.exception("blog job %d failed unexpectedly", job.id)
                await self._store.fail(job, "an internal error stopped this job; the bot's log has details")
                await self._publish(job.id)

    async def _wait_for_work(self) -> None:
        next_at = await self._store.next_run_at()
        # With nothing scheduled, still look now and then: another process may share the database.
        delay = 30.0 if next_at is None else min(30.0, max(0.05, next_at - self._clock()))
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), delay)

    async def _process(self, job: Job) -> None:
        if job.state is JobState.RUNNING and job.attempts > self._config.max_attempts:
            # The bot died while generating this job, again and again: stop trying.
            await self._finish_failed(job, f"gave up after {self._config.max_attempts} attempts")
            return
        if job.state is JobState.RUNNING:
            log.info("blog job %d running attempt=%d model=%s", job.id, job.attempts, job.model)
            self._delivery.job_changed(job)
            article = await self._generate(job)
            if article is None:
                return
            job = replace(
                job,
                state=JobState.GENERATED,
                article=article.text,
                title=article.title,
                slug=article.slug,
                word_count=article.word_count,
                generated_at=article.generated_at,
            )
            log.info("blog job %d generated words=%d", job.id, article.word_count)
            self._delivery.job_changed(job)
        await self._deliver(job)

    async def _generate(self, job: Job) -> Article | None:
        """Generate and store the article; None when the job ended otherwise (failed, retried, cancelled)."""
        progress = self.progress[job.id] = Progress(started_at=self._clock())
        generation = asyncio.create_task(self._stream_article(job, progress), name=f"blog-generate-{job.id}")
        self._generations[job.id] = generation
        heartbeat = asyncio.create_task(
            self._heartbeat(job, progress, generation), name=f"blog-heartbeat-{job.id}"
        )
        try:
            text = await generation
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being stopped ourselves, not just the generation
            log.info("blog job %d stopped (cancelled or lease lost)", job.id)
            await self._publish(job.id)
            return None
        except LLMError as exc:
            await self._handle_model_error(job, exc)
            return None
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            self._generations.pop(job.id, None)
            self.progress.pop(job.id, None)
        article = make_article(
            text,
            topic=job.topic,
            style=job.style,
            tone=job.tone,
            tags=job.tags,
            model=job.model,
            now=datetime.datetime.fromtimestamp(self._clock(), datetime.UTC),
        )
        if not await self._store.store_article(job, article):
            log.info("blog job %d finished generating but was cancelled meanwhile", job.id)
            return None
        return article

    async def _stream_article(self, job: Job, progress: Progress) -> str:
        system, prompt = build_prompt(job.topic, job.style, job.tone, job.target_length, job.tags)
        options = {
            "temperature": self._config.temperature,
            "num_predict": num_predict_for(job.target_length),
            "num_ctx": self._config.num_ctx,
        }
        timeouts = Timeouts(
            first_byte=self._config.first_token_timeout,
            idle=self._config.idle_timeout,
            total=self._config.deadline,
        )
        stream = self._pool.generate(
            job.model, prompt, system=system, options=options, priority=Priority.BLOG, timeouts=timeouts
        )
        async with stream:
            async for text in stream:
                progress.words += len(_WORD.findall(text))
        return stream.text

    async def _heartbeat(self, job: Job, progress: Progress, generation: asyncio.Task[str]) -> None:
        """Renew the lease and publish progress; stop the generation if the job is no longer ours."""
        renew_every = self._config.lease_seconds / 3
        show_every = self._config.progress_interval
        last_renewal = self._clock()
        while True:
            await asyncio.sleep(min(renew_every, show_every))
            self._delivery.job_changed(replace(job, progress_words=progress.words))
            if self._clock() - last_renewal >= renew_every * 0.99:
                if not await self._store.heartbeat(job, self._config.lease_seconds, progress.words):
                    generation.cancel()  # cancelled by someone, or the lease was lost: stop the model
                    return
                last_renewal = self._clock()

    async def _handle_model_error(self, job: Job, error: LLMError) -> None:
        reason = describe_model_error(error, job.model)
        if error.retryable and job.attempts < self._config.max_attempts:
            delay = retry_delay(job.attempts, self._config.retry_base_seconds)
            log.info(
                "blog job %d attempt %d failed (%s); retrying in %.0fs", job.id, job.attempts, error, delay
            )
            await self._store.retry_later(job, reason, delay)
            await self._publish(job.id)
            self.notify()
        else:
            await self._finish_failed(job, reason)

    async def _deliver(self, job: Job) -> None:
        try:
            message_id = await self._delivery.deliver(job)
        except DeliveryFailed as exc:
            if exc.permanent:
                await self._finish_failed(job, exc.reason)
            else:
                # Discord is having trouble: keep the article and try posting again once the lease runs out.
                log.warning("blog job %d delivery failed (%s); will retry", job.id, exc.reason)
            return
        if await self._store.mark_delivered(job, message_id):
            log.info("blog job %d delivered message=%d", job.id, message_id)
            await self._publish(job.id)

    async def _finish_failed(self, job: Job, reason: str) -> None:
        if await self._store.fail(job, reason):
            log.info("blog job %d failed: %s", job.id, reason)
            await self._publish(job.id)

    async def _publish(self, job_id: int) -> None:
        """Show a job's new state, read back from the store (the one source of truth)."""
        job = await self._store.get(job_id)
        if job is not None:
            self._delivery.job_changed(job)


def retry_delay(attempt: int, base: float) -> float:
    """Exponential backoff with ±10 % jitter: base, 2·base, 4·base, … (capped at an hour)."""
    delay = min(3600.0, base * 2.0 ** (attempt - 1))
    return delay * random.uniform(0.9, 1.1)


def describe_model_error(error: LLMError, model: str) -> str:
    """The reason kept on a failed or retried job, for the requester."""
    if isinstance(error, ModelNotFound):
        return f"the model `{model}` is not installed on the server (run `ollama pull {model}` there)"
    return f"the model server failed: {error}"
