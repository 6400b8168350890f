"""The blog worker: runs queued jobs to completion. Knows nothing of Discord.

For each claimed job: generate the article through the backend pool (the lease renewed by a heartbeat
the whole time, the text so far saved with it), store it (state ``generated``, so a crash never costs the
GPU work again), then hand it to the :class:`Delivery` to post, and record the posted message.

A generation ends one of three ways, and only one of them is an article: the model *finished* (and wrote
at least half the target), it was *cut at the token budget* (or stopped far short), or the stream *broke*.
A cut article is continued — the text so far goes back as the assistant's turn and the model is asked to go
on — up to ``max_continuations`` times; past that it is posted marked incomplete, never as done. A broken
stream keeps its text: the job is retried later and continues from there.

Errors are classified: retryable ones put the job back with exponential backoff and jitter; permanent ones
fail it with a clear reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bot.backoff import backoff
from bot.blog.article import build_prompt, clean_article, count_words, make_article, num_predict_for
from bot.blog.store import Article, Job, JobState, JobStore, replace
from bot.config import BlogConfig
from bot.llm import (
    BackendBusy,
    BackendError,
    BackendUnavailable,
    ChatMessage,
    ContextOverflow,
    LLMError,
    LLMTimeout,
    ModelNotFound,
    Preempted,
    StreamFailed,
    Timeouts,
)
from bot.llm.pool import BackendPool, PooledStream, Priority
from bot.supervise import Supervisor

log = logging.getLogger(__name__)

# A continuation that opens by talking about itself ("Sure! Here is the rest of the post:").
_CONTINUATION_PREAMBLE = re.compile(
    r"^\s*(sure|certainly|of course|okay|ok|here(?:'s| is| are)|continuing|below is|as requested)\b"
    r"[^\n]{0,160}[:.!]\s*\n",
    re.IGNORECASE,
)
#: A finished article under this share of its target is not done: it is continued.
MIN_TARGET_SHARE = 0.5
#: A job that fails for good with at least this many words written posts them (marked incomplete).
SALVAGE_MIN_WORDS = 150
#: Posting a finished article is tried this often (Discord trouble), waiting at most POST_RETRY_CAP between.
MAX_POST_ATTEMPTS = 12
POST_RETRY_CAP = 600.0
CONTINUE_CUT = (
    "Continue the blog post about {topic} exactly where the text above stops, mid-sentence if it stops "
    "mid-sentence. Do not repeat anything, do not restart, and do not comment: write only the rest of the "
    "post."
)
CONTINUE_SHORT = (
    "The blog post about {topic} above is too short: about {words} words of the {target} asked for. "
    "Continue it from where it ends with further sections, then a conclusion. Do not repeat anything and do "
    "not comment: write only the rest of the post."
)


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

    def job_changed(self, job: Job, progress: Progress | None = None) -> None:
        """The job moved (state, progress, retry): refresh whatever shows it. Must not block."""
        ...


Phase = str  # "waiting" (for a model server) | "reading" (the prompt) | "writing"


@dataclass
class Progress:
    """How far a running generation is, for status displays. Times are ``clock()`` (monotonic)."""

    target_words: int
    clock: Callable[[], float] = time.monotonic
    #: What the model is doing: waiting for a model server, reading the prompt, or writing.
    phase: Phase = "waiting"
    #: The text of the finished parts, and the stream writing the current one.
    base_text: str = ""
    current: PooledStream | None = None
    #: Which generation request this is (1, then 2, 3… for continuations).
    part: int = 1
    started_at: float = -1.0
    phase_since: float = -1.0
    #: Seconds spent writing in finished parts, and the words written in them (this process only).
    written_seconds: float = 0.0
    written_words: int = 0
    #: When the current part's first token came, and the words before it.
    writing_since: float | None = None
    words_before_part: int = 0
    #: The expected length of the finished article in words (the target, corrected by experience).
    expected_words: float = 0.0
    #: Tokens per second the backend has shown (for an estimate before the first token).
    backend_rate: float | None = None
    #: Each part's token budget and how many more parts may follow the current one (0: no cap known).
    budget_tokens: int = 0
    parts_left: int = 0
    #: Characters of the system prompt and the request, which every part's prompt holds before the text.
    prompt_chars: int = 0
    #: Time spent reading prompts, and their estimated tokens: a continuation has to read the text so far
    #: again first, which on a CPU takes seconds.
    read_seconds: float = 0.0
    read_tokens: float = 0.0
    #: Tokens (content chunks) of the finished parts written in this process.
    tokens_written: int = 0
    _words: int = 0
    _counted_chars: int = -1

    def __post_init__(self) -> None:
        if self.started_at < 0:
            self.started_at = self.phase_since = self.clock()

    def elapsed(self) -> float:
        """Seconds since the job started here."""
        return self.clock() - self.started_at

    def in_phase(self) -> float:
        """Seconds in the current phase."""
        return self.clock() - self.phase_since

    @property
    def text(self) -> str:
        """The article so far: the finished parts and what the current one has written."""
        if self.current is None:
            return self.base_text
        return join_continuation(self.base_text, self.current.text)

    def close_part(self) -> None:
        """The current part ended (whichever way): its text joins the finished ones."""
        if self.current is not None:
            self.tokens_written += self.current.content_chunks
        self.base_text, self.current = self.text, None

    @property
    def words(self) -> int:
        """Words of the text so far, counted as a reader would (recounted only when the text grew)."""
        if self._counted_chars != len(self.text):
            self._words = count_words(clean_article(self.text).body) if self.text else 0
            self._counted_chars = len(self.text)
        return self._words

    def enter(self, phase: Phase) -> None:
        now = self.clock()
        if self.phase == "writing" and self.writing_since is not None:
            self.written_seconds += now - self.writing_since
            self.written_words += max(0, self.words - self.words_before_part)
            self.writing_since = None
        if self.phase == "reading" and phase == "writing":
            self.read_seconds += now - self.phase_since
            self.read_tokens += self._prompt_tokens()
        self.phase, self.phase_since = phase, now
        if phase == "writing":
            self.writing_since, self.words_before_part = now, self.words

    def words_per_second(self) -> float | None:
        """The real writing speed: words written over the time spent writing (waits and prompt reading
        excluded)."""
        seconds, words = self.written_seconds, self.written_words
        if self.writing_since is not None:
            seconds += self.clock() - self.writing_since
            words += max(0, self.words - self.words_before_part)
        if seconds >= 1.0 and words >= 10:
            return words / seconds
        if self.backend_rate:
            return self.backend_rate * WORDS_PER_TOKEN
        return None

    def words_left(self) -> float:
        """How many more words the model will probably write.

        Up to the expected length, the rest of it. Past it the model is ignoring the target and nothing
        tells when it will stop: the median guess for a process of unknown length is "as long again as
        so far". Never more than the token budget still allows (this part's rest and the parts left), at
        the words per token this model has shown."""
        words = self.words
        expected = self.expected_words or self.target_words
        left = expected - words if words < expected else float(words)
        budget = self._tokens_left()
        if budget is not None:
            left = min(left, sum(budget) * self._words_per_token())
        return max(left, 10.0)

    def seconds_left(self) -> float | None:
        """Time until the article is done at the speed seen so far (reading the prompts of the parts still
        to come included), or None before anything is known."""
        if self.phase == "waiting":
            return None
        rate = self.words_per_second()
        if rate is None:
            return None
        words_left = self.words_left()
        return words_left / rate + self._reading_left(words_left)

    def _tokens_left(self) -> tuple[int, int] | None:
        """Tokens the current part may still write and those of the parts that may follow, or None when
        no budget is known."""
        if not self.budget_tokens:
            return None
        written = self.current.content_chunks if self.current is not None else self.budget_tokens
        return max(0, self.budget_tokens - written), self.parts_left * self.budget_tokens

    def _words_per_token(self) -> float:
        tokens = self.tokens_written + (self.current.content_chunks if self.current is not None else 0)
        return self.words / tokens if tokens >= 20 and self.words else WORDS_PER_TOKEN

    def _prompt_tokens(self, more_words: float = 0.0) -> float:
        """Estimated tokens of the prompt a part reads: the request and the text so far (and more)."""
        return (self.prompt_chars + len(self.text)) / CHARS_PER_TOKEN + more_words / self._words_per_token()

    def _reading_left(self, words_left: float) -> float:
        """Seconds of prompt reading still to come: the rest of the current reading, then one reading for
        each continuation that ``words_left`` needs, at the reading speed measured so far."""
        if self.read_seconds <= 0 or self.read_tokens <= 0:
            return 0.0
        per_token = self.read_seconds / self.read_tokens
        seconds = 0.0
        if self.phase == "reading":
            seconds += max(0.0, self._prompt_tokens() * per_token - self.in_phase())
        budget = self._tokens_left()
        if budget is not None:
            words_per_token = self._words_per_token()
            part_words = budget[0] * words_per_token
            more = words_left - part_words
            if more > 0:
                parts = min(self.parts_left, math.ceil(more / (self.budget_tokens * words_per_token)))
                seconds += parts * self._prompt_tokens(part_words) * per_token
        return seconds

    @property
    def fraction(self) -> float:
        words = self.words
        return min(0.99, words / (words + self.words_left()))


#: Words per token of English prose with llama-family tokenizers, for estimates before any text.
WORDS_PER_TOKEN = 0.75
#: Characters per token of English prose, for estimating how long a prompt is.
CHARS_PER_TOKEN = 4.0


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
        supervisor: Supervisor | None = None,
    ) -> None:
        self._store = store
        self._supervisor = supervisor or Supervisor()
        self._pool = pool
        self._delivery = delivery
        self._config = config
        self._paused_guilds = paused_guilds
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._slots: list[str] = []
        self._generations: dict[int, asyncio.Task[Draft]] = {}
        #: Live progress of the jobs this process is generating, by job id.
        self.progress: dict[int, Progress] = {}
        #: Finished length over target length, per model, as seen so far (models over- and undershoot).
        self._length_ratio: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the job slots, each a supervised loop (idempotent)."""
        if not self._slots:
            self._slots = [f"blog-worker-{n}" for n in range(1, self._config.workers + 1)]
            for name in self._slots:
                self._supervisor.start(name, self._run_slot)

    async def stop(self) -> None:
        """Stop taking jobs; jobs being generated go back to the queue without losing an attempt."""
        await self._supervisor.stop(*self._slots)
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
                incomplete=article.incomplete,
            )
            log.info("blog job %d generated words=%d", job.id, article.word_count)
            self._delivery.job_changed(job)
        await self._deliver(job)

    async def _generate(self, job: Job) -> Article | None:
        """Generate and store the article; None when the job ended otherwise (failed, retried, cancelled)."""
        progress = self.progress[job.id] = Progress(
            target_words=job.target_length,
            base_text=job.draft or "",
            expected_words=job.target_length * self._length_ratio.get(job.model, 1.0),
        )
        generation = asyncio.create_task(self._write(job, progress), name=f"blog-generate-{job.id}")
        self._generations[job.id] = generation
        heartbeat = asyncio.create_task(
            self._heartbeat(job, progress, generation), name=f"blog-heartbeat-{job.id}"
        )
        try:
            draft = await generation
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # We are being stopped ourselves: keep the text so far for the next run.
                await asyncio.shield(self._store.release(job, draft=progress.text or None))
                raise
            log.info("blog job %d stopped (cancelled or lease lost)", job.id)
            await self._publish(job.id)
            return None
        except LLMError as exc:
            salvaged = await self._handle_model_error(job, exc, progress.text)
            if salvaged is None:
                return None
            draft = salvaged
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            self._generations.pop(job.id, None)
            self.progress.pop(job.id, None)
        article = make_article(
            draft.text,
            topic=job.topic,
            style=job.style,
            tone=job.tone,
            tags=job.tags,
            model=job.model,
            now=datetime.datetime.fromtimestamp(self._clock(), datetime.UTC),
            job_id=job.id,
        )
        if draft.complete and article.word_count >= MIN_TARGET_SHARE * job.target_length:
            self._learn_length(job, article.word_count)
        else:
            article = dataclasses.replace(article, incomplete=draft.incomplete or "shorter than asked")
        if not await self._store.store_article(job, article):
            log.info("blog job %d finished generating but was cancelled meanwhile", job.id)
            return None
        return article

    def _learn_length(self, job: Job, words: int) -> None:
        ratio = min(2.0, max(0.5, words / job.target_length))
        previous = self._length_ratio.get(job.model)
        self._length_ratio[job.model] = ratio if previous is None else previous + 0.5 * (ratio - previous)

    async def _write(self, job: Job, progress: Progress) -> Draft:
        """Generate until the model finishes a long-enough article, continuing it after every cut.

        Raises :class:`LLMError` when a request fails; ``progress.text`` then holds everything written,
        the broken part included, for the next attempt to continue from.
        """
        system, prompt = build_prompt(job.topic, job.style, job.tone, job.target_length, job.tags)
        progress.prompt_chars = len(system) + len(prompt)
        budget = self._config.max_tokens or num_predict_for(job.target_length)
        timeouts = Timeouts(
            first_byte=self._config.first_token_timeout,
            idle=self._config.idle_timeout,
            total=self._config.deadline,
        )
        options = {
            "temperature": self._config.temperature,
            "num_predict": budget,
            "num_ctx": self._config.num_ctx,
        }
        part = 0
        preempted = False
        while True:
            if not preempted:
                part += 1
            continuations, preempted = part - 1, False
            messages = article_messages(job, system, prompt, progress.text)
            progress.part = part
            progress.budget_tokens = budget
            progress.parts_left = self._config.max_continuations - continuations
            stream = self._pool.chat(
                job.model,
                messages,
                options=options,
                priority=Priority.BLOG,
                timeouts=timeouts,
                min_reply_tokens=min(budget, 256),
            )
            stream.on_waiting = lambda: progress.enter("waiting")
            stream.on_started = lambda: progress.enter("reading")
            progress.backend_rate = self._pool.tokens_per_second(job.model)
            progress.current = stream
            try:
                async with stream:
                    async for _ in stream:
                        if progress.phase != "writing":
                            progress.enter("writing")
            except Preempted:
                # A chat needed the slot: go on from the text so far as soon as the pool lets us.
                log.info("blog job %d paused for a chat at %d words", job.id, progress.words)
                preempted = True
                continue
            finally:
                # Whatever happened, the text written so far stays (a broken reply included): the next
                # part or attempt continues from it.
                progress.enter("waiting")
                progress.close_part()
            cut = stream.stats is not None and stream.stats.truncated
            words = progress.words
            if not cut and words >= MIN_TARGET_SHARE * job.target_length:
                return Draft(progress.text, complete=True)
            if continuations >= self._config.max_continuations:
                why = (
                    f"it reached the length cap after {part} parts"
                    if cut
                    else f"the model stopped at {words} of {job.target_length} words"
                )
                log.info("blog job %d posted incomplete: %s", job.id, why)
                return Draft(progress.text, complete=False, incomplete=why)
            log.info(
                "blog job %d part %d ended %s at %d words; continuing",
                job.id,
                part,
                "at the token budget" if cut else "short of the target",
                words,
            )

    async def _heartbeat(self, job: Job, progress: Progress, generation: asyncio.Task[Draft]) -> None:
        """Every progress interval (at least three times a lease): publish progress, renew the lease and
        save the text written since the last beat, so a crash loses at most one interval of writing; stop
        the generation if the job is no longer ours."""
        every = min(self._config.lease_seconds / 3, self._config.progress_interval)
        saved = len(progress.text)
        self._delivery.job_changed(job, progress)
        while True:
            await asyncio.sleep(every)
            self._delivery.job_changed(replace(job, progress_words=progress.words), progress)
            text = progress.text
            draft = text if len(text) != saved else None
            if not await self._store.heartbeat(job, self._config.lease_seconds, progress.words, draft):
                generation.cancel()  # cancelled by someone, or the lease was lost: stop the model
                return
            saved = len(text)

    async def _handle_model_error(self, job: Job, error: LLMError, text: str) -> Draft | None:
        """Retry later, or fail the job; a job that can't go on but has a real article's worth of text
        gets it posted, marked incomplete, rather than thrown away (returned as a :class:`Draft`)."""
        reason = describe_model_error(error, job.model)
        if error.retryable and job.attempts < self._config.max_attempts:
            delay = retry_delay(job.attempts, self._config.retry_base_seconds)
            log.info(
                "blog job %d attempt %d failed (%s); retrying in %.0fs from %d characters",
                job.id,
                job.attempts,
                error,
                delay,
                len(text),
            )
            await self._store.retry_later(job, reason, delay, draft=text or None)
            await self._publish(job.id)
            self.notify()
            return None
        if count_words(clean_article(text).body) >= SALVAGE_MIN_WORDS:
            log.info("blog job %d cannot go on (%s); posting what was written", job.id, error)
            return Draft(text, complete=False, incomplete=f"writing stopped early: {reason}")
        await self._finish_failed(job, reason)
        return None

    async def _deliver(self, job: Job) -> None:
        """Post the article, holding the lease meanwhile (a slow post is never claimed by another worker);
        a passing failure is tried again later with capped backoff, by whichever worker claims it."""
        keep = asyncio.create_task(self._keep_lease(job), name=f"blog-post-lease-{job.id}")
        try:
            message_id = await self._delivery.deliver(job)
        except DeliveryFailed as exc:
            if exc.permanent:
                await self._finish_failed(job, exc.reason)
            elif job.post_attempts + 1 >= MAX_POST_ATTEMPTS:
                await self._finish_failed(job, f"Discord kept refusing the post ({exc.reason})")
            else:
                delay = min(
                    POST_RETRY_CAP, retry_delay(job.post_attempts + 1, self._config.retry_base_seconds)
                )
                log.warning("blog job %d post failed (%s); trying again in %.0fs", job.id, exc.reason, delay)
                await self._store.postpone_post(job, exc.reason, delay)
                self.notify()
            return
        finally:
            keep.cancel()
            await asyncio.gather(keep, return_exceptions=True)
        if await self._store.mark_delivered(job, message_id):
            log.info("blog job %d delivered message=%d", job.id, message_id)
            await self._publish(job.id)

    async def _keep_lease(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self._config.lease_seconds / 3)
            if not await self._store.extend_lease(job, self._config.lease_seconds):
                return

    async def _finish_failed(self, job: Job, reason: str) -> None:
        if await self._store.fail(job, reason):
            log.info("blog job %d failed: %s", job.id, reason)
            await self._publish(job.id)

    async def _publish(self, job_id: int) -> None:
        """Show a job's new state, read back from the store (the one source of truth)."""
        job = await self._store.get(job_id)
        if job is not None:
            self._delivery.job_changed(job)


@dataclass(frozen=True)
class Draft:
    """A generation's text and whether it is a whole article."""

    text: str
    complete: bool
    incomplete: str | None = None


def article_messages(job: Job, system: str, prompt: str, text_so_far: str) -> list[ChatMessage]:
    """The request for the article, or to continue it: the text so far as the assistant's turn, then the
    request to go on (naming the topic, in case a small context window leaves only the text's end)."""
    messages = [ChatMessage("system", system), ChatMessage("user", prompt)]
    if not text_so_far:
        return messages
    words = count_words(clean_article(text_so_far).body)
    if words < MIN_TARGET_SHARE * job.target_length or not text_so_far.rstrip().endswith((".", "!", "?")):
        request = CONTINUE_CUT if not text_so_far.rstrip().endswith((".", "!", "?")) else CONTINUE_SHORT
    else:
        request = CONTINUE_CUT
    request = request.format(topic=job.topic, words=words, target=job.target_length)
    return [*messages, ChatMessage("assistant", text_so_far), ChatMessage("user", request)]


def join_continuation(before: str, after: str) -> str:
    """``before`` and a continuation of it as one text: a preamble the model put before the continuation
    is dropped, and the seam gets the space or paragraph break it needs."""
    if not before:
        return after
    after = _CONTINUATION_PREAMBLE.sub("", after, count=1)
    if not after:
        return before
    if before[-1].isspace() or after[0].isspace() or after[0] in ".,;:!?)]}'\"":
        return before + after
    if after.startswith(("#", "- ", "* ", "|", "```", ">")) or re.match(r"\d+\.\s", after):
        return before.rstrip() + "\n\n" + after
    return before + " " + after


def retry_delay(attempt: int, base: float) -> float:
    """Exponential backoff with ±10 % jitter: base, 2·base, 4·base, … (capped at an hour)."""
    return backoff(attempt, base=base, cap=3600.0)


def describe_model_error(error: LLMError, model: str) -> str:
    """Why a try stopped, in plain words for the requester (the log keeps the server's own message)."""
    if isinstance(error, ModelNotFound):
        return error.explain()
    if isinstance(error, ContextOverflow):
        return "the request did not fit the model's context window"
    if isinstance(error, BackendUnavailable):
        return "no model server could be reached"
    if isinstance(error, BackendBusy):
        return "the model servers were too busy"
    if isinstance(error, LLMTimeout):
        return f"the model server stopped answering ({error})"
    if isinstance(error, StreamFailed):
        return "the model server stopped in the middle of writing"
    if isinstance(error, BackendError):
        return f"the model server reported an error (HTTP {error.status})"
    return "the model server failed"
