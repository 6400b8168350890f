"""The durable blog job queue, on SQLite or PostgreSQL (:mod:`bot.engine`). Knows nothing of Discord.

Every job moves through :class:`JobState`. A worker *claims* a job in one atomic UPDATE, which gives it a
lease (``lease_token`` + ``lease_until``); it renews the lease by heartbeat while it works, and every
later write it makes checks the token, so a worker that lost its lease (it hung, or the bot was killed
and the job re-claimed after the lease expired) can never overwrite the job's new holder.

The SQL is written once for both engines; the fragments that differ are in :data:`_CLAIM_LOCK` and
:data:`_ENQUEUE_LOCK`. Times come from :meth:`Engine.now <bot.engine.Engine.now>` (on PostgreSQL the
database server's clock, so leases mean the same on every machine) and sums with them are done in SQL.
Whenever a job becomes claimable the store sends ``NOTIFY`` :data:`JOBS_CHANNEL`, and a cancellation
:data:`CANCEL_CHANNEL` with the job id, so workers in other processes hear of it at once.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.engine import Engine, Row, ServerNow

#: NOTIFY channel: a job became claimable (enqueued, retried, released, a server resumed).
JOBS_CHANNEL = "blog_jobs"
#: NOTIFY channel: a job was cancelled; the payload is its id (its holder stops generating it).
CANCEL_CHANNEL = "blog_cancel"


class JobState(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"  # waiting for a worker (maybe until run_at, after a failed attempt)
    RUNNING = "running"  # a worker holds the lease and is generating the article
    GENERATED = "generated"  # the article is stored; it still has to be posted (never regenerated)
    DELIVERED = "delivered"  # posted in the channel; delivered_message_id says where. Terminal.
    FAILED = "failed"  # gave up; error says why. Terminal.
    CANCELLED = "cancelled"  # cancelled by its requester or a moderator. Terminal.

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.GENERATED)


@dataclass(frozen=True, slots=True)
class BlogRequest:
    """What a member asked for with ``/blog new``, already validated."""

    guild_id: int | None
    channel_id: int
    user_id: int
    topic: str
    style: str
    tone: str
    target_length: int
    tags: tuple[str, ...]
    model: str


@dataclass(frozen=True, slots=True)
class Job:
    """One row of the queue."""

    id: int
    guild_id: int | None
    channel_id: int
    user_id: int
    status_message_id: int | None
    topic: str
    style: str
    tone: str
    target_length: int
    tags: tuple[str, ...]
    model: str
    state: JobState
    attempts: int
    run_at: float
    fair_seq: float
    lease_token: str | None
    lease_until: float | None
    progress_words: int
    started_at: float | None
    title: str | None
    slug: str | None
    article: str | None
    word_count: int | None
    generated_at: str | None
    delivered_message_id: int | None
    error: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    #: The text generated so far, saved with each heartbeat: a new attempt continues from it.
    draft: str | None = None
    #: Why the posted article is not whole (cut at the length cap, far below its target); None if it is.
    incomplete: str | None = None
    #: Who cancelled the job (a user id), when it was cancelled.
    cancelled_by: int | None = None
    #: Failed attempts to post the article (Discord trouble), for backoff and giving up.
    post_attempts: int = 0

    @classmethod
    def from_row(cls, row: Row) -> Job:
        values: dict[str, Any] = {key: row[key] for key in row.keys()}  # noqa: SIM118 - sqlite3.Row
        values["tags"] = tuple(json.loads(values["tags"]))
        values["state"] = JobState(values["state"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Article:
    """A generated article, ready to post."""

    title: str
    slug: str
    text: str
    word_count: int
    generated_at: str
    #: Why the article is not whole, when it is not (it is posted anyway, marked as such).
    incomplete: str | None = None


class QuotaExceeded(Exception):
    """Too much queued work; ``scope`` is ``user``, ``guild`` or ``global``."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope} limit of {limit} queued jobs reached")
        self.scope = scope
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Quotas:
    """Limits on queued (not yet finished) jobs."""

    per_user: int
    per_guild: int
    total: int = 1000


# Claim order. Jobs waiting to be posted go first (their work is done). Then fairness between users, by
# virtual time (stride scheduling): at enqueue a job gets fair_seq = max(the queue's head, the user's last
# active fair_seq + 1), so each user's first job comes before anyone's second, and a newcomer joins the
# current round instead of waiting behind a backlog. Ties go to the older job.
_CLAIM_ORDER = "state = 'generated' DESC, fair_seq, id"
_CLAIMABLE = """
    (state = 'queued' AND run_at <= :now)
    OR (state IN ('running', 'generated') AND (lease_until IS NULL OR lease_until < :now))
"""

# The only SQL that differs between the engines.
# Claims: PostgreSQL workers in other transactions skip the row a concurrent claim has locked instead of
# waiting for it (and then finding it taken). SQLite has one writer at a time.
_CLAIM_LOCK = {"sqlite": "", "postgresql": "FOR UPDATE SKIP LOCKED"}
# Enqueues one at a time: PostgreSQL's READ COMMITTED lets two concurrent enqueues both pass a per-user
# limit of 1 (measured), and fair_seq is read from the queue head. SQLite's BEGIN IMMEDIATE already
# serialises every writer.
_ENQUEUE_LOCK = {"sqlite": "", "postgresql": "SELECT pg_advisory_xact_lock(1651273575)"}  # "blog"


class JobStore:
    """Blog jobs in the database; every method is one short transaction (never held across a model call)."""

    def __init__(self, db: Engine, *, clock: Callable[[], float] | None = None) -> None:
        self._db = db
        # Wall-clock time: run_at and leases must mean the same thing after a restart. None: the engine's
        # (this machine's for SQLite, the server's for PostgreSQL); tests give SQLite a fake one.
        self._clock = clock

    def _now(self) -> float | ServerNow:
        return self._clock() if self._clock is not None else self._db.now()

    async def enqueue(self, request: BlogRequest, quotas: Quotas) -> Job:
        """Queue a job, unless a quota is reached (checked in the same transaction as the insert)."""
        now = self._now()
        active = ", ".join(f"'{state}'" for state in ACTIVE_STATES)
        # A DM's jobs (no guild) count together; "guild_id IS ?" would be SQLite-only.
        guild: tuple[int, ...]
        same_guild, guild = "guild_id IS NULL", ()
        if request.guild_id is not None:
            same_guild, guild = "guild_id = ?", (request.guild_id,)
        async with self._db.transaction() as connection:
            if lock := _ENQUEUE_LOCK[self._db.dialect]:
                await connection.execute(lock)
            cursor = await connection.execute(
                f"""SELECT COUNT(*),
                           COUNT(*) FILTER (WHERE user_id = ? AND {same_guild}),
                           COUNT(*) FILTER (WHERE {same_guild})
                    FROM jobs WHERE state IN ({active})""",
                (request.user_id, *guild, *guild),
            )
            total, user_count, guild_count = await cursor.fetchone() or (0, 0, 0)
            if user_count >= quotas.per_user:
                raise QuotaExceeded("user", quotas.per_user)
            if request.guild_id is not None and guild_count >= quotas.per_guild:
                raise QuotaExceeded("guild", quotas.per_guild)
            if total >= quotas.total:
                raise QuotaExceeded("global", quotas.total)
            cursor = await connection.execute(
                f"""SELECT (SELECT MIN(fair_seq) FROM jobs WHERE state = 'queued'),
                           (SELECT MAX(fair_seq) + 1 FROM jobs WHERE user_id = ? AND state IN ({active}))""",
                (request.user_id,),
            )
            head, after_own = await cursor.fetchone() or (None, None)
            fair_seq = float(max(head or 0, after_own or 0))
            cursor = await connection.execute(
                """INSERT INTO jobs (guild_id, channel_id, user_id, topic, style, tone, target_length, tags,
                                     model, state, run_at, fair_seq, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?) RETURNING *""",
                (
                    request.guild_id,
                    request.channel_id,
                    request.user_id,
                    request.topic,
                    request.style,
                    request.tone,
                    request.target_length,
                    json.dumps(list(request.tags)),
                    request.model,
                    now,
                    fair_seq,
                    now,
                    now,
                ),
            )
            row = await cursor.fetchone()
            await self._db.notify(connection, JOBS_CHANNEL)
        assert row is not None
        return Job.from_row(row)

    async def set_status_messages(self, message_ids: dict[int, int]) -> None:
        """Remember the messages that show jobs' progress (job id → message id), in one transaction."""
        now = self._now()
        async with self._db.transaction() as connection:
            await connection.executemany(
                "UPDATE jobs SET status_message_id = ?, updated_at = ? WHERE id = ?",
                [(message_id, now, job_id) for job_id, message_id in message_ids.items()],
            )

    async def claim(self, lease_seconds: float, *, paused_guilds: frozenset[int] = frozenset()) -> Job | None:
        """Atomically take the next job (queued, or one whose holder's lease expired), or None.

        A queued job becomes ``running`` with one more attempt; an expired ``running`` job runs again
        (one more attempt); a ``generated`` job stays ``generated`` (only its delivery is left).
        """
        where = f"({_CLAIMABLE})"
        token = secrets.token_hex(8)
        parameters: dict[str, Any] = {"now": self._now(), "lease": lease_seconds, "token": token}
        if paused_guilds:
            names = [f"paused{index}" for index in range(len(paused_guilds))]
            where += f" AND (guild_id IS NULL OR guild_id NOT IN ({', '.join(':' + name for name in names)}))"
            parameters.update(zip(names, sorted(paused_guilds), strict=True))
        async with self._db.transaction() as connection:
            cursor = await connection.execute(
                f"""WITH next AS (SELECT id FROM jobs WHERE {where} ORDER BY {_CLAIM_ORDER} LIMIT 1
                                  {_CLAIM_LOCK[self._db.dialect]})
                    UPDATE jobs SET
                        state = CASE state WHEN 'generated' THEN 'generated' ELSE 'running' END,
                        attempts = CASE state WHEN 'generated' THEN attempts ELSE attempts + 1 END,
                        progress_words = CASE state WHEN 'generated' THEN progress_words ELSE 0 END,
                        started_at = CASE state WHEN 'generated' THEN started_at ELSE :now END,
                        lease_token = :token, lease_until = :now + :lease, updated_at = :now
                    WHERE id = (SELECT id FROM next)
                    RETURNING *""",
                parameters,
            )
            row = await cursor.fetchone()
        return None if row is None else Job.from_row(row)

    async def next_run_at(self) -> float | None:
        """When the earliest job becomes claimable (now, a retry's run_at, or a lease's expiry), or None."""
        row = await self._db.fetch_one(
            """SELECT MIN(CASE state WHEN 'queued' THEN run_at ELSE COALESCE(lease_until, 0) END)
               FROM jobs WHERE state IN ('queued', 'running', 'generated')"""
        )
        return None if row is None or row[0] is None else float(row[0])

    async def heartbeat(
        self, job: Job, lease_seconds: float, progress_words: int, draft: str | None = None
    ) -> bool:
        """Renew the lease and record progress (and the text so far, when given); False if the job was
        cancelled or taken from us."""
        now = self._now()
        return await self._update_held(
            job,
            "lease_until = ? + ?, progress_words = ?, draft = COALESCE(?, draft), updated_at = ?",
            (now, lease_seconds, progress_words, draft, now),
        )

    async def store_article(self, job: Job, article: Article) -> bool:
        """``running`` → ``generated``: keep the finished article so it is never generated twice."""
        return await self._update_held(
            job,
            """state = 'generated', title = ?, slug = ?, article = ?, word_count = ?, generated_at = ?,
               incomplete = ?, progress_words = ?, draft = NULL, updated_at = ?""",
            (
                article.title,
                article.slug,
                article.text,
                article.word_count,
                article.generated_at,
                article.incomplete,
                article.word_count,
                self._now(),
            ),
            expected_state=JobState.RUNNING,
        )

    async def mark_delivered(self, job: Job, message_id: int) -> bool:
        """``generated`` → ``delivered``, recording the posted message in the same UPDATE."""
        now = self._now()
        return await self._update_held(
            job,
            """state = 'delivered', delivered_message_id = ?, lease_token = NULL, lease_until = NULL,
               error = NULL, draft = NULL, finished_at = ?, updated_at = ?""",
            (message_id, now, now),
            expected_state=JobState.GENERATED,
        )

    async def retry_later(self, job: Job, error: str, delay: float, draft: str | None = None) -> bool:
        """``running`` → ``queued`` after ``delay`` seconds, keeping ``error`` as the last failure (and the
        text so far, when given, for the next attempt to continue)."""
        now = self._now()
        return await self._update_held(
            job,
            """state = 'queued', run_at = ? + ?, error = ?, draft = COALESCE(?, draft), lease_token = NULL,
               lease_until = NULL, updated_at = ?""",
            (now, delay, error, draft, now),
            expected_state=JobState.RUNNING,
            notify=True,
        )

    async def release(self, job: Job, error: str | None = None, draft: str | None = None) -> bool:
        """Give the job back without counting an attempt against it (shutdown, or no backend yet),
        keeping the text so far when given."""
        now = self._now()
        return await self._update_held(
            job,
            """state = CASE state WHEN 'running' THEN 'queued' ELSE state END,
               attempts = CASE state WHEN 'running' THEN attempts - 1 ELSE attempts END, run_at = ?,
               error = COALESCE(?, error), draft = COALESCE(?, draft), lease_token = NULL, lease_until = NULL,
               updated_at = ?""",
            (now, error, draft, now),
            notify=True,
        )

    async def postpone_post(self, job: Job, error: str, delay: float) -> bool:
        """Posting a ``generated`` job failed for a passing reason: give it up for ``delay`` seconds (it is
        claimed again then, by any worker) and count the failed try."""
        now = self._now()
        return await self._update_held(
            job,
            """post_attempts = post_attempts + 1, error = ?, lease_token = NULL, lease_until = ? + ?,
               updated_at = ?""",
            (error, now, delay, now),
            expected_state=JobState.GENERATED,
        )

    async def extend_lease(self, job: Job, lease_seconds: float) -> bool:
        """Renew the lease of a job being posted (no progress to record); False if it was taken from us."""
        now = self._now()
        return await self._update_held(job, "lease_until = ? + ?, updated_at = ?", (now, lease_seconds, now))

    async def prune_finished(self, older_than_days: float) -> int:
        """Delete jobs that finished more than ``older_than_days`` ago; how many went."""
        async with self._db.transaction() as connection:
            cursor = await connection.execute(
                """DELETE FROM jobs
                   WHERE state IN ('delivered', 'failed', 'cancelled') AND finished_at < ? - ?""",
                (self._now(), older_than_days * 86400),
            )
            return cursor.rowcount

    async def active_with_status(self) -> list[Job]:
        """Unfinished jobs that have a status message, oldest first (to refresh them after a restart)."""
        rows = await self._db.fetch_all(
            """SELECT * FROM jobs WHERE state IN ('queued', 'running', 'generated')
               AND status_message_id IS NOT NULL ORDER BY id"""
        )
        return [Job.from_row(row) for row in rows]

    async def fail(self, job: Job, error: str) -> bool:
        """Give up on the job, keeping the reason."""
        now = self._now()
        return await self._update_held(
            job,
            """state = 'failed', error = ?, draft = NULL, lease_token = NULL, lease_until = NULL,
               finished_at = ?, updated_at = ?""",
            (error, now, now),
        )

    async def cancel(self, job_id: int, by: int | None = None) -> Job | None:
        """Cancel a job that has not finished yet (``by``: who); the cancelled job, or None if it had."""
        now = self._now()
        async with self._db.transaction() as connection:
            cursor = await connection.execute(
                """UPDATE jobs SET state = 'cancelled', lease_token = NULL, lease_until = NULL, draft = NULL,
                                   cancelled_by = ?, finished_at = ?, updated_at = ?
                   WHERE id = ? AND state IN ('queued', 'running', 'generated') RETURNING *""",
                (by, now, now, job_id),
            )
            row = await cursor.fetchone()
            if row is not None:
                await self._db.notify(connection, CANCEL_CHANNEL, str(job_id))
        return None if row is None else Job.from_row(row)

    async def get(self, job_id: int) -> Job | None:
        """One job by id."""
        row = await self._db.fetch_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else Job.from_row(row)

    async def list_jobs(
        self,
        *,
        guild_id: int | None = None,
        user_id: int | None = None,
        limit: int = 25,
        active_only: bool = False,
    ) -> list[Job]:
        """Newest first, filtered by guild and/or user."""
        clauses, parameters = ["TRUE"], []
        if guild_id is not None:
            clauses.append("guild_id = ?")
            parameters.append(guild_id)
        if user_id is not None:
            clauses.append("user_id = ?")
            parameters.append(user_id)
        if active_only:
            clauses.append("state IN ('queued', 'running', 'generated')")
        rows = await self._db.fetch_all(
            f"SELECT * FROM jobs WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?", (*parameters, limit)
        )
        return [Job.from_row(row) for row in rows]

    async def queue_position(self, job: Job) -> int | None:
        """The queued job's position (1 = next), counted in claim order; None if it is not queued."""
        row = await self._db.fetch_one(
            """SELECT COUNT(*) FROM jobs WHERE state = 'queued'
               AND (fair_seq < ? OR (fair_seq = ? AND id <= ?))
               AND EXISTS (SELECT 1 FROM jobs WHERE id = ? AND state = 'queued')""",
            (job.fair_seq, job.fair_seq, job.id, job.id),
        )
        return (int(row[0]) or None) if row is not None else None

    async def queue_positions(self) -> dict[int, int]:
        """Position (1 = next) of every queued job, in the order workers will claim them."""
        rows = await self._db.fetch_all("SELECT id FROM jobs WHERE state = 'queued' ORDER BY fair_seq, id")
        return {int(row[0]): index for index, row in enumerate(rows, start=1)}

    async def count_by_state(self, guild_id: int | None = None) -> dict[JobState, int]:
        """How many jobs are in each state (in one guild, or everywhere)."""
        where, parameters = ("WHERE guild_id = ?", (guild_id,)) if guild_id is not None else ("", ())
        rows = await self._db.fetch_all(
            f"SELECT state, COUNT(*) FROM jobs {where} GROUP BY state", parameters
        )
        counts = dict.fromkeys(JobState, 0)
        counts.update({JobState(row[0]): int(row[1]) for row in rows})
        return counts

    async def _update_held(
        self,
        job: Job,
        assignments: str,
        parameters: tuple[Any, ...],
        *,
        expected_state: JobState | None = None,
        notify: bool = False,
    ) -> bool:
        """UPDATE the job only while ``job``'s lease token holds it (and it is in ``expected_state``);
        ``notify``: the job is claimable again, tell the workers."""
        condition = "id = ? AND lease_token = ?"
        extra: tuple[Any, ...] = (job.id, job.lease_token)
        if expected_state is not None:
            condition += " AND state = ?"
            extra += (expected_state.value,)
        async with self._db.transaction() as connection:
            cursor = await connection.execute(
                f"UPDATE jobs SET {assignments} WHERE {condition}", parameters + extra
            )
            if notify and cursor.rowcount == 1:
                await self._db.notify(connection, JOBS_CHANNEL)
            return cursor.rowcount == 1

    async def active_jobs(self, guild_id: int, limit: int) -> tuple[list[Job], int]:
        """A server's unfinished jobs in the order they will be done (those being written or posted first,
        then the queue in claim order), at most ``limit`` of them, and how many there are in all."""
        rows = await self._db.fetch_all(
            """SELECT * FROM jobs WHERE guild_id = ? AND state IN ('queued', 'running', 'generated')
               ORDER BY state = 'queued', fair_seq, id LIMIT ?""",
            (guild_id, limit),
        )
        count = await self._db.fetch_one(
            "SELECT COUNT(*) FROM jobs WHERE guild_id = ? AND state IN ('queued', 'running', 'generated')",
            (guild_id,),
        )
        return [Job.from_row(row) for row in rows], int(count[0]) if count is not None else len(rows)

    async def queued_jobs(self, guild_id: int, user_id: int | None = None) -> list[Job]:
        """A server's queued jobs (one member's, when given), in claim order."""
        mine, parameters = ("", (guild_id,)) if user_id is None else ("AND user_id = ?", (guild_id, user_id))
        rows = await self._db.fetch_all(
            f"""SELECT * FROM jobs WHERE guild_id = ? AND state = 'queued' {mine} ORDER BY fair_seq, id""",
            parameters,
        )
        return [Job.from_row(row) for row in rows]


def replace(job: Job, **changes: Any) -> Job:
    """A copy of ``job`` with some fields changed (for callers keeping their view in step)."""
    return dataclasses.replace(job, **changes)
