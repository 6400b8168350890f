"""The job queue on both engines (``db`` runs each test on SQLite and on PostgreSQL): durability, atomic
fair claims, leases, fencing and quotas."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from bot.blog.store import Article, BlogRequest, JobState, JobStore, QuotaExceeded, Quotas
from bot.db import MIGRATIONS, Database
from bot.engine import Engine, open_database
from bot.errors import StartupError

QUOTAS = Quotas(per_user=3, per_guild=20)
LEASE = 30.0


class Clock:
    """SQLite: the store's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class ServerClock:
    """PostgreSQL: the store reads the server's clock; moving ``now`` moves the engine's offset to it."""

    def __init__(self, db: Engine) -> None:
        self._db = db

    @property
    def now(self) -> float:
        return time.time() + self._db.clock_offset  # type: ignore[attr-defined]

    @now.setter
    def now(self, value: float) -> None:
        self._db.clock_offset = value - time.time()  # type: ignore[attr-defined]


def request(user_id: int = 1, guild_id: int | None = 100, topic: str = "owls") -> BlogRequest:
    return BlogRequest(
        guild_id=guild_id,
        channel_id=10,
        user_id=user_id,
        topic=topic,
        style="technical",
        tone="professional",
        target_length=1500,
        tags=("birds", "night"),
        model="mistral:latest",
    )


ARTICLE = Article(
    title="Owls",
    slug="owls",
    text="---\ntitle: Owls\n---\n# Owls\n",
    word_count=2,
    generated_at="2026-11-25T00:00:00Z",
)


@pytest.fixture
def clock(db: Engine) -> Clock | ServerClock:
    return Clock() if db.dialect == "sqlite" else ServerClock(db)


@pytest.fixture
def store(db: Engine, clock: Clock | ServerClock) -> JobStore:
    return JobStore(db, clock=clock if isinstance(clock, Clock) else None)


async def test_enqueued_job_is_committed_and_visible_to_another_connection(
    store: JobStore, db_url: str
) -> None:
    job = await store.enqueue(request(), QUOTAS)
    assert job.state is JobState.QUEUED and job.tags == ("birds", "night") and job.attempts == 0
    async with open_database(db_url) as other:
        seen = await JobStore(other).get(job.id)
    assert seen == job


async def test_quotas_per_user_per_guild_and_total(store: JobStore) -> None:
    for _ in range(3):
        await store.enqueue(request(user_id=1), QUOTAS)
    with pytest.raises(QuotaExceeded) as info:
        await store.enqueue(request(user_id=1), QUOTAS)
    assert info.value.scope == "user"
    await store.enqueue(request(user_id=1, guild_id=200), QUOTAS)  # another guild counts separately
    small = Quotas(per_user=10, per_guild=5, total=7)
    for user in range(2, 4):
        await store.enqueue(request(user_id=user), small)
    with pytest.raises(QuotaExceeded, match="guild limit of 5"):
        await store.enqueue(request(user_id=9), small)
    await store.enqueue(request(user_id=9, guild_id=300), small)  # the 7th active job
    with pytest.raises(QuotaExceeded, match="global"):
        await store.enqueue(request(user_id=9, guild_id=300), small)


async def test_finished_jobs_free_the_quota(store: JobStore) -> None:
    jobs = [await store.enqueue(request(), QUOTAS) for _ in range(3)]
    await store.cancel(jobs[0].id)
    await store.enqueue(request(), QUOTAS)


async def test_claims_are_fair_between_users(store: JobStore) -> None:
    a1 = await store.enqueue(request(user_id=1, topic="a1"), QUOTAS)
    a2 = await store.enqueue(request(user_id=1, topic="a2"), QUOTAS)
    a3 = await store.enqueue(request(user_id=1, topic="a3"), QUOTAS)
    b1 = await store.enqueue(request(user_id=2, topic="b1"), QUOTAS)
    c1 = await store.enqueue(request(user_id=3, topic="c1"), QUOTAS)
    expected = [a1.id, b1.id, c1.id, a2.id, a3.id]
    assert list((await store.queue_positions()).keys()) == expected
    positions = [await store.queue_position(job) for job in (a1, a2, a3, b1, c1)]
    assert positions == [1, 4, 5, 2, 3]
    claimed = []
    while (job := await store.claim(LEASE)) is not None:
        claimed.append(job.id)
        assert job.state is JobState.RUNNING and job.attempts == 1 and job.lease_token
    assert claimed == expected


async def test_a_newcomer_joins_the_current_round(store: JobStore) -> None:
    backlog = [await store.enqueue(request(user_id=1, topic=f"a{i}"), QUOTAS) for i in range(3)]
    first = await store.claim(LEASE)
    assert first is not None and first.id == backlog[0].id
    newcomer = await store.enqueue(request(user_id=2, topic="b1"), QUOTAS)
    order = list(await store.queue_positions())
    assert order == [backlog[1].id, newcomer.id, backlog[2].id]


async def test_concurrent_claims_from_two_connections_never_share_a_job(db_url: str) -> None:
    async with open_database(db_url) as first, open_database(db_url) as second:
        for user in range(40):
            await JobStore(first).enqueue(request(user_id=user), Quotas(per_user=3, per_guild=100))

        async def drain(database: Engine) -> list[int]:
            store, ids = JobStore(database), []
            while (job := await store.claim(LEASE)) is not None:
                ids.append(job.id)
            return ids

        ours, theirs = await asyncio.gather(drain(first), drain(second))
    assert not set(ours) & set(theirs)
    assert len(ours) + len(theirs) == 40


async def test_expired_lease_is_reclaimed_and_the_old_holder_is_fenced(
    store: JobStore, clock: Clock | ServerClock
) -> None:
    await store.enqueue(request(), QUOTAS)
    first = await store.claim(LEASE)
    assert first is not None
    assert await store.claim(LEASE) is None  # held
    clock.now += LEASE / 2
    assert await store.heartbeat(first, LEASE, progress_words=10)
    clock.now += LEASE * 0.9
    assert await store.claim(LEASE) is None  # the heartbeat extended the lease
    clock.now += LEASE
    second = await store.claim(LEASE)
    assert second is not None and second.id == first.id and second.attempts == 2
    assert not await store.heartbeat(first, LEASE, progress_words=20)
    assert not await store.store_article(first, ARTICLE)
    assert await store.store_article(second, ARTICLE)


async def test_generated_job_is_delivered_not_regenerated_after_a_crash(
    store: JobStore, clock: Clock | ServerClock
) -> None:
    await store.enqueue(request(), QUOTAS)
    job = await store.claim(LEASE)
    assert job is not None and await store.store_article(job, ARTICLE)
    clock.now += LEASE + 1  # the worker died before posting
    again = await store.claim(LEASE)
    assert again is not None and again.state is JobState.GENERATED and again.attempts == 1
    assert again.article == ARTICLE.text
    assert not await store.mark_delivered(job, 555)  # the dead worker's late write is refused
    assert await store.mark_delivered(again, 555)
    done = await store.get(job.id)
    assert done is not None and done.state is JobState.DELIVERED and done.delivered_message_id == 555
    assert done.finished_at is not None and done.lease_token is None
    assert await store.claim(LEASE) is None


async def test_retry_waits_for_run_at(store: JobStore, clock: Clock | ServerClock) -> None:
    await store.enqueue(request(), QUOTAS)
    job = await store.claim(LEASE)
    assert job is not None and await store.retry_later(job, "server busy", delay=10)
    assert await store.claim(LEASE) is None
    assert await store.next_run_at() == pytest.approx(clock.now + 10, abs=1)
    clock.now += 10
    again = await store.claim(LEASE)
    assert again is not None and again.attempts == 2 and again.error == "server busy"


async def test_release_does_not_count_an_attempt(store: JobStore) -> None:
    await store.enqueue(request(), QUOTAS)
    job = await store.claim(LEASE)
    assert job is not None and await store.release(job)
    again = await store.claim(LEASE)
    assert again is not None and again.attempts == 1


async def test_cancel(store: JobStore) -> None:
    queued = await store.enqueue(request(topic="q"), QUOTAS)
    running_job = await store.enqueue(request(user_id=2, topic="r"), QUOTAS)
    cancelled = await store.cancel(queued.id)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    held = await store.claim(LEASE)
    assert held is not None and held.id == running_job.id
    assert await store.cancel(held.id) is not None
    assert not await store.heartbeat(held, LEASE, progress_words=5)  # the worker learns it must stop
    assert await store.cancel(held.id) is None  # already finished


async def test_fail_keeps_the_reason(store: JobStore) -> None:
    await store.enqueue(request(), QUOTAS)
    job = await store.claim(LEASE)
    assert job is not None and await store.fail(job, "model 'mistral' not found")
    failed = await store.get(job.id)
    assert (
        failed is not None and failed.state is JobState.FAILED and failed.error == "model 'mistral' not found"
    )
    assert (await store.count_by_state())[JobState.FAILED] == 1


async def test_schema_is_versioned_and_constraints_hold(db: Engine, db_url: str) -> None:
    assert await db.schema_version() == len(MIGRATIONS)
    async with open_database(db_url) as reopened:  # migrations don't run twice
        assert await reopened.schema_version() == len(MIGRATIONS)
    with pytest.raises(integrity_errors()):
        async with db.transaction() as connection:
            await connection.execute(
                """INSERT INTO jobs (channel_id, user_id, topic, style, tone, target_length, tags, model,
                                     state, run_at, fair_seq, created_at, updated_at, finished_at)
                   VALUES (1, 1, 't', 's', 't', 300, '[]', 'm', 'delivered', 0, 0, 0, 0, 0)"""
            )


async def test_newer_schema_is_refused(db: Engine, db_url: str) -> None:
    future = len(MIGRATIONS) + 1
    async with db.transaction() as connection:
        if isinstance(db, Database):
            await connection.execute(f"PRAGMA user_version = {future}")
        else:
            await connection.execute("UPDATE schema_version SET version = ?", (future,))
    with pytest.raises(StartupError, match="newer than this bot knows"):
        async with open_database(db_url):
            pass


def integrity_errors() -> tuple[type[Exception], ...]:
    """What a broken constraint raises, on either engine."""
    try:
        import asyncpg
    except ImportError:
        return (sqlite3.IntegrityError,)
    return (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)


async def test_the_text_so_far_is_kept_across_attempts_and_dropped_when_the_job_ends(
    store: JobStore,
) -> None:
    await store.enqueue(request(), QUOTAS)
    job = await store.claim(LEASE)
    assert job is not None and await store.heartbeat(job, LEASE, 120, draft="the first part")
    assert await store.retry_later(job, "the model server stopped", 0.0, draft="the first part, more")
    again = await store.claim(LEASE)
    assert again is not None and again.draft == "the first part, more" and again.attempts == 2
    assert await store.fail(again, "gave up")
    ended = await store.get(again.id)
    assert ended is not None and ended.draft is None


async def test_old_finished_jobs_are_pruned_and_unfinished_ones_never(
    store: JobStore, clock: Clock | ServerClock
) -> None:
    for topic in ("old done", "old queued"):
        await store.enqueue(request(topic=topic), QUOTAS)
    job = await store.claim(LEASE)
    assert job is not None and await store.fail(job, "gave up")
    clock.now += 31 * 86400
    await store.enqueue(request(user_id=2, topic="recent"), QUOTAS)
    recent = await store.claim(LEASE)
    assert recent is not None and await store.fail(recent, "gave up")
    assert await store.prune_finished(30) == 1
    left = {job.topic for job in await store.list_jobs(limit=10)}
    assert left == {"old queued", "recent"}
