"""What only the PostgreSQL engine has to show: many processes claiming at once, the serialised enqueue,
LISTEN/NOTIFY between processes, placeholders, and clear start-up errors. (The store's behaviour on both
engines is the conformance suite in tests/blog/test_store.py, tests/test_settings.py and tests/test_db.py.)"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("asyncpg")

from bot.blog.store import (
    CANCEL_CHANNEL,
    JOBS_CHANNEL,
    JobState,
    JobStore,
    QuotaExceeded,
    Quotas,
)
from bot.engine import ServerNow, open_database
from bot.errors import StartupError
from bot.pg import PostgresDatabase, translate
from bot.settings import SETTINGS_CHANNEL, GuildSettings, SettingsStore
from tests.blog.test_store import ARTICLE, request


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[PostgresDatabase]:
    async with PostgresDatabase(postgres_url) as database:
        yield database


def test_placeholders_become_numbered_and_the_server_clock_is_written_in() -> None:
    assert translate("SELECT ? + ?, '?', x::text FROM t WHERE a = ?", (1, 2, 3)) == (
        "SELECT $1 + $2, '?', x::text FROM t WHERE a = $3",
        [1, 2, 3],
    )
    sql, arguments = translate(
        "UPDATE t SET a = :now + :lease, b = :now, c = ':now' WHERE d = :d",
        {
            "now": ServerNow(),
            "lease": 30.0,
            "d": 7,
        },
    )
    clock = "(EXTRACT(EPOCH FROM statement_timestamp())::float8)"
    assert sql == f"UPDATE t SET a = {clock} + $1, b = {clock}, c = ':now' WHERE d = $2"
    assert arguments == [30.0, 7]
    assert (
        translate("SELECT ?", (ServerNow(5.0),))[0]
        == "SELECT (EXTRACT(EPOCH FROM statement_timestamp())::float8 + 5.0)"
    )


async def test_eight_processes_claim_3000_jobs_once_each_in_fair_order(postgres_url: str) -> None:
    users, per_user, workers = 300, 10, 8
    databases = [PostgresDatabase(postgres_url, max_connections=2) for _ in range(workers)]
    for database in databases:
        await database.open()
    try:
        # The queue as enqueue leaves it when every user asked for per_user posts (fair_seq = the round),
        # written in one statement: enqueue's own concurrency is the quota race test's.
        async with databases[0].transaction() as connection:
            await connection.execute(
                """INSERT INTO jobs (guild_id, channel_id, user_id, topic, style, tone, target_length, tags,
                                     model, state, run_at, fair_seq, created_at, updated_at)
                   SELECT 1000 + u, 10, u, 'topic ' || r, 'technical', 'neutral', 300, '[]', 'm', 'queued',
                          0, r, 0, 0
                   FROM generate_series(0, ? - 1) AS r, generate_series(0, ? - 1) AS u
                   ORDER BY r, u""",
                (per_user, users),
            )

        claims: list[tuple[int, int]] = []  # (job id, user id), in the order the claims returned

        async def work(database: PostgresDatabase) -> int:
            store, done = JobStore(database), 0
            while (job := await store.claim(60.0)) is not None:
                claims.append((job.id, job.user_id))
                assert await store.store_article(job, ARTICLE)
                assert await store.mark_delivered(job, 10_000 + job.id)
                done += 1
            return done

        started = time.perf_counter()
        done = await asyncio.gather(*(work(db) for db in databases))
        elapsed = time.perf_counter() - started
    finally:
        for database in databases:
            await database.close()
    total = users * per_user
    ids = [job_id for job_id, _ in claims]
    assert len(ids) == total and len(set(ids)) == total, "0 duplicate claims, 0 lost"
    assert sum(done) == total and all(done), done
    # Fairness: everyone's first job before anyone's second (up to the few claims in flight at once).
    first_round = [user for _, user in claims[: users - workers]]
    assert len(set(first_round)) == len(first_round)
    by_user: dict[int, list[int]] = {}
    for job_id, user in claims:
        by_user.setdefault(user, []).append(job_id)
    assert all(jobs == sorted(jobs) for jobs in by_user.values()), "each user's jobs in their order"
    async with open_database(postgres_url) as check:
        counts = await JobStore(check).count_by_state()
    assert counts[JobState.DELIVERED] == total and sum(counts.values()) == total
    print(
        f"\n{total} jobs, {workers} processes: claim+store+deliver {total / elapsed:.0f}/s ({elapsed:.2f} s)",
        file=sys.stderr,
    )


async def test_concurrent_enqueues_never_pass_a_quota_together(postgres_url: str) -> None:
    """Two processes enqueue for the same member at the same moment against a limit of 1: one wins.

    Without the advisory lock (READ COMMITTED) both saw 0 queued jobs and both were accepted."""
    async with PostgresDatabase(postgres_url) as first, PostgresDatabase(postgres_url) as second:
        stores = JobStore(first), JobStore(second)
        for user in range(20):
            results = await asyncio.gather(
                *(
                    store.enqueue(request(user_id=user), Quotas(per_user=1, per_guild=100))
                    for store in stores
                ),
                return_exceptions=True,
            )
            accepted = [result for result in results if not isinstance(result, BaseException)]
            refused = [result for result in results if isinstance(result, QuotaExceeded)]
            assert (len(accepted), len(refused)) == (1, 1), f"user {user}: {results}"


async def test_concurrent_settings_edits_from_two_processes_all_survive(postgres_url: str) -> None:
    """Two processes add channels to the same server's list at once: every addition is kept.

    Each process applies its own edits in order; between processes only the database's per-guild lock
    keeps one edit from overwriting another's (READ COMMITTED lets both read the same stored list)."""
    async with PostgresDatabase(postgres_url) as first, PostgresDatabase(postgres_url) as second:
        stores = SettingsStore(first), SettingsStore(second)
        for store in stores:
            await store.load()

        def add(channel: int) -> Any:
            return lambda current: {"chat_channels": (*current.chat_channels, channel)}

        channels = range(1, 13)
        await asyncio.gather(
            *(stores[channel % 2].edit(1, 42, "chat channels", add(channel)) for channel in channels)
        )
        await stores[0].reload(1)
        assert sorted(stores[0].get(1).chat_channels) == list(channels)


async def test_notifications_reach_another_process(pg: PostgresDatabase, postgres_url: str) -> None:
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    async with PostgresDatabase(postgres_url) as other:
        for channel in (JOBS_CHANNEL, CANCEL_CHANNEL, SETTINGS_CHANNEL):
            await other.listen(channel, lambda payload, channel=channel: heard.put_nowait((channel, payload)))
        # A settings store in the other process follows changes made here.
        theirs = SettingsStore(other)
        await theirs.load()
        await other.listen(SETTINGS_CHANNEL, theirs.on_notify)

        store = JobStore(pg)
        job = await store.enqueue(request(), Quotas(per_user=3, per_guild=10))
        assert await asyncio.wait_for(heard.get(), 5) == (JOBS_CHANNEL, "")
        await store.cancel(job.id)
        assert await asyncio.wait_for(heard.get(), 5) == (CANCEL_CHANNEL, str(job.id))
        ours = SettingsStore(pg)
        await ours.update(100, 42, "pause", blog_paused=True)
        assert await asyncio.wait_for(heard.get(), 5) == (SETTINGS_CHANNEL, "100")
        await ours.update(100, 42, "resume", blog_paused=False)  # the server's jobs are claimable again
        assert {await asyncio.wait_for(heard.get(), 5) for _ in range(2)} == {
            (SETTINGS_CHANNEL, "100"),
            (JOBS_CHANNEL, ""),
        }
        await ours.update(100, 42, "config set", chat_model="mistral:latest")
        assert await asyncio.wait_for(heard.get(), 5) == (SETTINGS_CHANNEL, "100")
        for _ in range(100):
            if theirs.get(100) == GuildSettings(chat_model="mistral:latest"):
                break
            await asyncio.sleep(0.02)
        assert theirs.get(100) == GuildSettings(chat_model="mistral:latest")

        # Nothing is sent for a transaction rolled back.
        with pytest.raises(RuntimeError):
            async with pg.transaction() as connection:
                await pg.notify(connection, JOBS_CHANNEL, "rolled back")
                raise RuntimeError
        await pg.set_meta("sync", "1")
        await asyncio.sleep(0.2)
        assert heard.empty()


async def test_listening_resumes_after_the_connection_is_lost(
    pg: PostgresDatabase, postgres_url: str
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    async with PostgresDatabase(postgres_url) as other:
        await other.listen(JOBS_CHANNEL, heard.put_nowait)
        listener = other._listen_connection
        assert listener is not None
        await pg.fetch_one("SELECT pg_terminate_backend(?)", (listener.get_server_pid(),))
        # Told that anything may have changed meanwhile, then hears notifications again.
        assert await asyncio.wait_for(heard.get(), 10) == ""
        await JobStore(pg).enqueue(request(), Quotas(per_user=3, per_guild=10))
        assert await asyncio.wait_for(heard.get(), 5) == ""
        assert other._listen_connection is not listener


async def test_leases_use_the_server_clock(pg: PostgresDatabase) -> None:
    store = JobStore(pg)
    await store.enqueue(request(), Quotas(per_user=3, per_guild=10))
    before = time.time()
    job = await store.claim(60.0)
    assert job is not None and job.lease_until is not None and job.started_at is not None
    # Same machine here, so the server's clock is ours: the lease is 60 s from about now.
    assert job.lease_until - job.started_at == pytest.approx(60.0)
    assert before - 1 < job.started_at < time.time() + 1
    pg.clock_offset = 3600.0  # the server's clock, as a test moves it: the lease has long expired
    again = await store.claim(60.0)
    assert again is not None and again.id == job.id and again.attempts == 2


async def test_unreachable_server_is_a_startup_error() -> None:
    with pytest.raises(
        StartupError, match=r"database.url: cannot connect to PostgreSQL at postgresql://bot:\*\*\*@"
    ):
        async with open_database("postgresql://bot:secret@127.0.0.1:9/bot"):
            pass


def test_missing_driver_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import fails, as when it is not installed
    monkeypatch.delitem(sys.modules, "bot.pg")
    with pytest.raises(StartupError, match=r"pip install 'ollama-discord-bot\[postgres\]'"):
        open_database("postgresql://db/bot")
