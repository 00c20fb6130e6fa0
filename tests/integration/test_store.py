"""The SQLite store against real database files: schema, state machine, delivery, history."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.store import (
    CancelTooLate,
    DeliveryTarget,
    GuildSettings,
    InvalidTransition,
    JobNotFound,
    Jobs,
    RateDecision,
    SchemaTooNewError,
    Store,
    UserDefaults,
)
from bot.store import database as database_module
from inference.jobs import (
    JobJournal,
    JobOutcome,
    JobRecord,
    JobState,
    Lineage,
    Owner,
    StoredImage,
)
from inference.types import GenerationRequest, ImageSource

LATEST_VERSION = len(database_module._migrations())


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def opened(path: Path, clock: Callable[[], float] | None = None) -> AsyncIterator[Store]:
    store = await Store.open(path, clock=clock or FakeClock())
    async with store:
        yield store


def request(**changes: object) -> GenerationRequest:
    fields: dict[str, object] = dict(
        prompt="a lighthouse at dusk",
        negative_prompt="blurry",
        width=512,
        height=768,
        steps=25,
        guidance=7.5,
        seed=1234,
        sampler="DPM++ 2M Karras",
        count=2,
        model="sd15",
    )
    fields.update(changes)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def outcome(job_id: int, n: int = 2) -> JobOutcome:
    return JobOutcome(
        images=tuple(StoredImage(f"/data/{job_id}/{i}.png", 1234 + i, 512, 768) for i in range(n)),
        grid_path=f"/data/{job_id}/grid.png" if n > 1 else None,
        elapsed_s=3.25,
        notes=("retried with VAE tiling after OOM",),
    )


OWNER = Owner(user_id=111, guild_id=222)

# Image 1 of a 512x768 result, upscaled ×2 with an upscaler model.
UPSCALE_SOURCE = ImageSource("/data/41/1.png", 512, 768, "upscale", 0.3, 2.0, "4x-UltraSharp")
UPSCALE = request(width=1024, height=1536, count=1, source=UPSCALE_SOURCE)
VARIATION = request(seed=77, source=ImageSource("/data/41/0.png", 512, 768, "img2img", 0.45))
ZOOM_OUT = request(
    width=768,
    height=1152,
    count=1,
    source=ImageSource("/data/41/0.png", 512, 768, "zoom_out", 1.0, 1.5),
)
UPLOAD = request(source=ImageSource("/data/uploads/cat.png", 512, 768))  # img2img, defaults


def raw(path: Path) -> sqlite3.Connection:
    """A second, plain connection: checks what is really in the file."""
    return sqlite3.connect(path)


# --------------------------------------------------------------------------- schema


async def test_migrations_apply_from_empty_and_reopen_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "bot.db"  # the parent folder does not exist yet
    async with opened(db) as store:
        job_id = await store.jobs.create_job(OWNER, request())
    with raw(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION >= 3
    assert {"jobs", "job_images", "rate_events", "guild_settings", "instance"} <= tables
    assert "users" not in tables  # dropped by 0003: written with every job, never read
    # Re-applying 0001 would fail on CREATE TABLE; reopening twice must keep the data.
    for _ in range(2):
        async with opened(db) as store:
            job = await store.jobs.get_job(job_id)
            assert job is not None and job.request == request()
        with raw(db) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION


def test_jobs_implement_job_journal() -> None:
    def journal(store: Store) -> JobJournal:
        return store.jobs  # a type checker verifies the return types here

    members = [m for m in vars(JobJournal) if not m.startswith("_")]
    assert len(members) == 7
    for name in members:
        wanted = inspect.signature(getattr(JobJournal, name))
        got = inspect.signature(getattr(Jobs, name))
        assert inspect.iscoroutinefunction(getattr(Jobs, name)), name
        assert list(got.parameters)[: len(wanted.parameters)] == list(wanted.parameters), name
        extra = list(got.parameters.values())[len(wanted.parameters) :]
        assert all(p.default is not p.empty for p in extra), name  # extras are optional
        assert got.return_annotation == wanted.return_annotation, name


async def test_pragmas_wal_foreign_keys_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        # Per connection, so read on the store's own (nothing else runs: no lock needed).
        pragma = store.database.scalar
        assert await pragma("PRAGMA journal_mode") == "wal"
        assert await pragma("PRAGMA foreign_keys") == 1  # on again after the migrations
        assert await pragma("PRAGMA busy_timeout") > 0
        assert await pragma("PRAGMA synchronous") == 1  # NORMAL
    with raw(db) as conn:  # WAL is a property of the file: visible from another connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with opened(db):
        pass
    with raw(db) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    with pytest.raises(SchemaTooNewError, match=r"schema version \d+.*only knows up to"):
        await Store.open(db)
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION + 1


async def test_failed_migration_rolls_back_entirely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "bot.db"
    async with opened(db):
        pass
    good = database_module._migrations()
    bad_sql = "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
    monkeypatch.setattr(
        database_module, "_migrations", lambda: [*good, (len(good) + 1, "bad.sql", bad_sql)]
    )
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        await Store.open(db)
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in names


async def test_dropping_users_keeps_every_job_image_link_and_id(tmp_path: Path) -> None:
    """0003 rebuilds jobs without its reference to users: a database written at version 2
    keeps its jobs, images and re-roll links, and never hands out an id again."""
    db = tmp_path / "bot.db"
    folder = Path(database_module.__file__).parents[1] / "migrations"
    with raw(db) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        for version, name in ((1, "0001_initial.sql"), (2, "0002_delivery.sql")):
            conn.executescript((folder / name).read_text(encoding="utf-8"))
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("INSERT INTO users (id, first_seen, last_seen) VALUES (111, 1, 1)")
        for seed, source in ((1, None), (2, 1), (3, None)):
            conn.execute(
                "INSERT INTO jobs (user_id, guild_id, prompt, negative_prompt, width, height,"
                " steps, guidance, seed, sampler, count, model, created_at, rerolled_from,"
                " rate_event_id) VALUES (111, 222, 'p', 'n', 64, 64, 1, 7.0, ?, 's', 1, 'm',"
                " 1.0, ?, 9)",
                (seed, source),
            )
        conn.execute(
            "UPDATE jobs SET state = 'done', started_at = 2, finished_at = 3, elapsed_s = 1"
            " WHERE id = 1"
        )
        conn.execute("INSERT INTO job_images VALUES (1, 0, '/1.png', 1, 64, 64)")
        conn.execute("DELETE FROM jobs WHERE id = 3")  # the newest id must stay used
    async with opened(db) as store:
        done = await store.jobs.get_job(1)
        assert done is not None and done.owner == OWNER and done.state is JobState.DONE
        assert done.outcome is not None and done.outcome.images[0].path == "/1.png"
        assert await store.jobs.rate_event_of(2) == 9
        assert await store.jobs.create_job(OWNER, request()) == 4
    with raw(db) as conn:
        assert conn.execute("SELECT id, rerolled_from FROM jobs ORDER BY id").fetchall() == [
            (1, None),
            (2, 1),
            (4, None),
        ]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "users" not in names and "jobs_new" not in names
        assert {"jobs_unfinished", "jobs_user", "jobs_message", "jobs_undelivered"} <= names
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def _database_at_version(db: Path, version: int) -> None:
    """A database file as the imagine-bot of schema `version` left it."""
    with raw(db) as conn:  # foreign keys off, as the runner applies migrations
        for number, _name, script in database_module._migrations()[:version]:
            conn.executescript(script)
            conn.execute(f"PRAGMA user_version = {number}")


async def test_v3_database_gains_image_sources_and_keeps_its_jobs(tmp_path: Path) -> None:
    """0004 adds the source and lineage columns: a version 3 database keeps its jobs, images
    and re-roll links, reads them back as prompt-only jobs, and takes image jobs after."""
    db = tmp_path / "bot.db"
    _database_at_version(db, 3)
    with raw(db) as conn:
        for seed, rerolled in ((1, None), (2, 1)):
            conn.execute(
                "INSERT INTO jobs (user_id, guild_id, prompt, negative_prompt, width, height,"
                " steps, guidance, seed, sampler, count, model, created_at, rerolled_from)"
                " VALUES (111, 222, 'p', 'n', 64, 64, 1, 7.0, ?, 's', 1, 'm', 1.0, ?)",
                (seed, rerolled),
            )
        conn.execute(
            "UPDATE jobs SET state = 'done', started_at = 2, finished_at = 3, elapsed_s = 1"
            " WHERE id = 1"
        )
        conn.execute("INSERT INTO job_images VALUES (1, 0, '/1.png', 1, 64, 64)")
    async with opened(db) as store:
        old = await store.jobs.get_job(1)
        assert old is not None and old.state is JobState.DONE and old.owner == OWNER
        assert old.request.source is None and old.parent is None
        assert old.outcome is not None and old.outcome.images[0].path == "/1.png"
        [queued] = await store.jobs.unfinished_jobs()
        assert queued.id == 2 and queued.request.source is None and queued.parent is None
        new = await store.jobs.create_job(OWNER, UPSCALE, parent=Lineage(1, 0))
        job = await store.jobs.get_job(new)
        assert job is not None and job.request == UPSCALE and job.parent == Lineage(1, 0)
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION >= 4
        assert conn.execute(
            "SELECT id, rerolled_from, source_path, operation, parent_job_id FROM jobs ORDER BY id"
        ).fetchall() == [
            (1, None, None, None, None),
            (2, 1, None, None, None),
            (3, None, "/data/41/1.png", "upscale", 1),
        ]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"jobs_unfinished", "jobs_user", "jobs_message", "jobs_undelivered"} <= names
        assert "jobs_parent" in names
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_split_sql_keeps_semicolons_inside_strings_comments_and_triggers() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT ';');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN
        UPDATE t SET x = 'a;b';
    END;
    -- trailing comment
    """
    statements = database_module._split_sql(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(database_module.MigrationError, match="incomplete"):
        database_module._split_sql("CREATE TABLE a (x);\nCREATE TABLE b (y)")


# --------------------------------------------------------------------------- state machine

Action = Callable[[Store, int], Awaitable[object]]

ACTIONS: dict[str, Action] = {
    "run": lambda s, j: s.jobs.mark_running(j),
    "done": lambda s, j: s.jobs.mark_done(j, outcome(j)),
    "fail": lambda s, j: s.jobs.mark_failed(j, "boom"),
    "cancel": lambda s, j: s.jobs.mark_cancelled(j),
    "requeue": lambda s, j: s.jobs.requeue(j),
}

# (state the job is in, action) -> state after, or "illegal", or "unchanged" (allowed no-op)
EXPECTED: dict[tuple[JobState, str], JobState | str] = {
    (JobState.QUEUED, "run"): JobState.RUNNING,
    (JobState.QUEUED, "done"): "illegal",
    (JobState.QUEUED, "fail"): JobState.FAILED,
    (JobState.QUEUED, "cancel"): JobState.CANCELLED,
    (JobState.QUEUED, "requeue"): "unchanged",
    (JobState.RUNNING, "run"): "illegal",
    (JobState.RUNNING, "done"): JobState.DONE,
    (JobState.RUNNING, "fail"): JobState.FAILED,
    (JobState.RUNNING, "cancel"): JobState.CANCELLED,
    (JobState.RUNNING, "requeue"): JobState.QUEUED,
    **{
        (finished, action): "illegal"
        for finished in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
        for action in ACTIONS
    },
    (JobState.DONE, "cancel"): "too late",  # the cancel lost the race to the worker
    (JobState.FAILED, "cancel"): "too late",
    (JobState.CANCELLED, "cancel"): "unchanged",  # a double click
}

PATH_TO: dict[JobState, tuple[str, ...]] = {
    JobState.QUEUED: (),
    JobState.RUNNING: ("run",),
    JobState.DONE: ("run", "done"),
    JobState.FAILED: ("fail",),
    JobState.CANCELLED: ("cancel",),
}


@pytest.mark.parametrize(("start", "action"), sorted(EXPECTED, key=str))
async def test_state_transition(tmp_path: Path, start: JobState, action: str) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "bot.db", clock) as store:
        job_id = await store.jobs.create_job(OWNER, request())
        for step in PATH_TO[start]:
            clock.advance(1)
            await ACTIONS[step](store, job_id)
        before = await store.jobs.get_job(job_id)
        assert before is not None and before.state is start
        clock.advance(1)
        expected = EXPECTED[(start, action)]

        if expected in ("illegal", "too late"):
            with pytest.raises(InvalidTransition) as info:
                await ACTIONS[action](store, job_id)
            assert info.value.job_id == job_id and info.value.current is start
            assert str(start) in str(info.value)
            assert isinstance(info.value, CancelTooLate) == (expected == "too late")
            assert await store.jobs.get_job(job_id) == before  # nothing overwritten
        elif expected == "unchanged":
            await ACTIONS[action](store, job_id)
            assert await store.jobs.get_job(job_id) == before
        else:
            await ACTIONS[action](store, job_id)
            after = await store.jobs.get_job(job_id)
            assert after is not None and after.state is expected
            if expected.finished:
                assert after.finished_at == clock.now
            if expected is JobState.RUNNING:
                assert after.started_at == clock.now
            if action == "requeue":
                assert after.started_at is None
            if expected is JobState.DONE:
                assert after.outcome == outcome(job_id)
            else:
                assert after.outcome is None
            if expected is JobState.FAILED:
                assert after.error == "boom"


@pytest.mark.parametrize("action", sorted(ACTIONS))
async def test_transitions_on_unknown_job_raise_not_found(tmp_path: Path, action: str) -> None:
    async with opened(tmp_path / "bot.db") as store:
        with pytest.raises(JobNotFound):
            await ACTIONS[action](store, 999)


async def test_second_mark_done_keeps_the_first_images(tmp_path: Path) -> None:
    async with opened(tmp_path / "bot.db") as store:
        job_id = await store.jobs.create_job(OWNER, request())
        await store.jobs.mark_running(job_id)
        await store.jobs.mark_done(job_id, outcome(job_id, 2))
        with pytest.raises(InvalidTransition):
            await store.jobs.mark_done(job_id, outcome(job_id, 3))
        job = await store.jobs.get_job(job_id)
        assert job is not None and job.outcome == outcome(job_id, 2)


async def test_mark_done_is_one_transaction(tmp_path: Path) -> None:
    async with opened(tmp_path / "bot.db") as store:
        job_id = await store.jobs.create_job(OWNER, request())
        await store.jobs.mark_running(job_id)
        broken = JobOutcome(
            images=(StoredImage("/ok.png", 1, 64, 64), StoredImage(None, 2, 64, 64)),  # type: ignore[arg-type]
            grid_path="/grid.png",
            elapsed_s=1.0,
        )
        with pytest.raises(sqlite3.IntegrityError):
            await store.jobs.mark_done(job_id, broken)
        job = await store.jobs.get_job(job_id)
        assert job is not None and job.state is JobState.RUNNING
        # The first image's row was rolled back with the state change: a retry succeeds.
        await store.jobs.mark_done(job_id, outcome(job_id))
        job = await store.jobs.get_job(job_id)
        assert job is not None and job.outcome == outcome(job_id)


async def test_unfinished_jobs_oldest_first(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "bot.db", clock) as store:
        ids = []
        for i in range(6):
            ids.append(await store.jobs.create_job(Owner(i), request(prompt=f"p{i}")))
            clock.advance(-10)  # a clock stepping backwards must not reorder the queue
        await store.jobs.mark_running(ids[1])
        await store.jobs.mark_running(ids[2])
        await store.jobs.mark_done(ids[2], outcome(ids[2]))
        await store.jobs.mark_cancelled(ids[3])
        await store.jobs.mark_running(ids[4])
    async with opened(tmp_path / "bot.db", clock) as store:  # crash recovery reads after restart
        unfinished = await store.jobs.unfinished_jobs()
        assert [j.id for j in unfinished] == [ids[0], ids[1], ids[4], ids[5]]
        assert [j.state for j in unfinished] == [
            JobState.QUEUED,
            JobState.RUNNING,
            JobState.RUNNING,
            JobState.QUEUED,
        ]
        for job in unfinished:
            await store.jobs.requeue(job.id)
        assert {j.state for j in await store.jobs.unfinished_jobs()} == {JobState.QUEUED}


# --------------------------------------------------------------------------- round trip

texts = st.text(max_size=300)
requests = st.builds(
    GenerationRequest,
    prompt=texts,
    negative_prompt=texts,
    width=st.integers(1, 8192),
    height=st.integers(1, 8192),
    steps=st.integers(1, 1000),
    guidance=st.floats(allow_nan=False, allow_infinity=False),
    seed=st.integers(0, 2**63 - 1),
    sampler=st.text(min_size=1, max_size=40),
    count=st.integers(1, 16),
    model=st.text(min_size=1, max_size=80),
    source=st.none()
    | st.builds(
        ImageSource,
        path=texts,
        width=st.integers(1, 8192),
        height=st.integers(1, 8192),
        operation=st.sampled_from(["img2img", "upscale", "zoom_out"]),
        strength=st.floats(0, 1, exclude_min=True),
        scale=st.floats(0, 64, exclude_min=True),
        upscaler=st.none() | st.text(max_size=80),
    ),
)
owners = st.builds(
    Owner, user_id=st.integers(0, 2**63 - 1), guild_id=st.none() | st.integers(0, 2**63 - 1)
)
stored_images = st.builds(
    StoredImage,
    path=texts,
    seed=st.integers(0, 2**63 - 1),
    width=st.integers(1, 8192),
    height=st.integers(1, 8192),
)
outcomes = st.builds(
    JobOutcome,
    images=st.lists(stored_images, max_size=6).map(tuple),
    grid_path=st.none() | texts,
    elapsed_s=st.floats(0, 1e6),
    notes=st.lists(texts, max_size=3).map(tuple),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    owner=owners,
    req=requests,
    result=outcomes,
    image_index=st.none() | st.integers(0, 2**31),
)
async def test_journal_round_trip_preserves_every_field(
    owner: Owner, req: GenerationRequest, result: JobOutcome, image_index: int | None
) -> None:
    clock = FakeClock(1_700_000_000.125)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "bot.db"
        async with opened(db, clock) as store:
            parent = None
            if req.source is not None and image_index is not None:  # only a picture has one
                parent = Lineage(await store.jobs.create_job(OWNER, request()), image_index)
                await store.jobs.mark_cancelled(parent.job_id)
            job_id = await store.jobs.create_job(owner, req, parent=parent)
            [queued] = await store.jobs.unfinished_jobs()
            assert queued.request == req and queued.owner == owner and queued.parent == parent
            clock.advance(1.5)
            await store.jobs.mark_running(job_id)
            clock.advance(2.25)
            await store.jobs.mark_done(job_id, result)
        async with opened(db, clock) as store:  # read back after a restart
            job = await store.jobs.get_job(job_id)
    assert job == JobRecord(
        id=job_id,
        owner=owner,
        request=req,
        state=JobState.DONE,
        created_at=1_700_000_000.125,
        started_at=1_700_000_001.625,
        finished_at=1_700_000_003.875,
        error=None,
        outcome=result,
        delivered=False,
        parent=parent,
    )


async def test_sql_injection_looking_text_is_stored_verbatim(tmp_path: Path) -> None:
    evil = "'); DROP TABLE jobs;--"
    req = request(
        prompt=evil,
        negative_prompt='"; DELETE FROM users; --',
        sampler="Euler' OR '1'='1",
        model="x'); DROP TABLE job_images;--",
    )
    async with opened(tmp_path / "bot.db") as store:
        job_id = await store.jobs.create_job(OWNER, req)
        await store.jobs.mark_running(job_id)
        await store.jobs.mark_failed(job_id, evil)
        await store.guilds.set_guild_settings(GuildSettings(5, blocked_words=(evil, "a'b")))
        job = await store.jobs.get_job(job_id)
        assert job is not None and job.request == req and job.error == evil
        assert (await store.guilds.get_guild_settings(5)).blocked_words == (evil, "a'b")
        assert [j.id for j in await store.jobs.history(OWNER.user_id)] == [job_id]
    with raw(tmp_path / "bot.db") as conn:
        assert conn.execute("SELECT prompt FROM jobs").fetchall() == [(evil,)]
        assert conn.execute("SELECT user_id FROM jobs").fetchall() == [(OWNER.user_id,)]


# --------------------------------------------------------------------------- delivery


async def _finished_job(store: Store, state: JobState = JobState.DONE) -> int:
    job_id = await store.jobs.create_job(OWNER, request())
    await store.jobs.mark_running(job_id)
    if state is JobState.DONE:
        await store.jobs.mark_done(job_id, outcome(job_id))
    elif state is JobState.FAILED:
        await store.jobs.mark_failed(job_id, "boom")
    else:
        await store.jobs.mark_cancelled(job_id)
    return job_id


async def test_mark_delivered_true_exactly_once_under_concurrency(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as one, opened(db) as two:  # two connections, as two processes
        job_ids = [await _finished_job(one) for _ in range(5)]
        for job_id in job_ids:
            calls = [s.jobs.mark_delivered(job_id) for _ in range(10) for s in (one, two)]
            results = await asyncio.gather(*calls)
            assert results.count(True) == 1 and results.count(False) == 19
        job = await two.jobs.get_job(job_ids[0])
        assert job is not None and job.delivered
        assert await one.jobs.mark_delivered(job_ids[0]) is False


async def test_mark_delivered_refuses_unfinished_and_unknown_jobs(tmp_path: Path) -> None:
    async with opened(tmp_path / "bot.db") as store:
        job_id = await store.jobs.create_job(OWNER, request())
        with pytest.raises(InvalidTransition, match="only a finished job"):
            await store.jobs.mark_delivered(job_id)
        await store.jobs.mark_running(job_id)
        with pytest.raises(InvalidTransition):
            await store.jobs.mark_delivered(job_id)
        with pytest.raises(JobNotFound):
            await store.jobs.mark_delivered(12345)
        job = await store.jobs.get_job(job_id)
        assert job is not None and not job.delivered


async def test_undelivered_finished_jobs_for_redelivery_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        done = await _finished_job(store, JobState.DONE)
        failed = await _finished_job(store, JobState.FAILED)
        await _finished_job(store, JobState.CANCELLED)
        delivered = await _finished_job(store, JobState.DONE)
        assert await store.jobs.mark_delivered(delivered)
        await store.jobs.create_job(OWNER, request())  # still queued
    async with opened(db) as store:
        pending = await store.jobs.undelivered_finished_jobs()
        assert [(j.id, j.state) for j in pending] == [
            (done, JobState.DONE),
            (failed, JobState.FAILED),
        ]
        assert pending[0].outcome == outcome(done) and pending[1].error == "boom"
        assert await store.jobs.mark_delivered(done)
        assert [j.id for j in await store.jobs.undelivered_finished_jobs()] == [failed]


async def test_delivery_target_and_job_by_message_survive_restart(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        job_id = await store.jobs.create_job(OWNER, request(), target=DeliveryTarget(0, 10))
        other = await store.jobs.create_job(OWNER, request(prompt="other"))
        assert await store.jobs.get_delivery_target(job_id) == DeliveryTarget(job_id, 10)
        # At defer time: the token, no message yet.
        await store.jobs.set_delivery_target(
            job_id,
            channel_id=10,
            interaction_token="secret-token",
            application_id=77,
            token_expires_at=1_700_000_900.0,
        )
        # After the first followup: the message id; the token must be kept.
        await store.jobs.set_delivery_target(job_id, channel_id=10, message_id=2**62 + 5)
        await store.jobs.set_delivery_target(other, channel_id=11, message_id=999)
        with pytest.raises(JobNotFound):
            await store.jobs.set_delivery_target(4242, channel_id=1)
    async with opened(db) as store:
        job = await store.jobs.job_by_message(2**62 + 5)
        assert job is not None and job.id == job_id and job.request == request()
        target = await store.jobs.get_delivery_target(job_id)
        assert target == DeliveryTarget(
            job_id=job_id,
            channel_id=10,
            message_id=2**62 + 5,
            interaction_token="secret-token",
            application_id=77,
            token_expires_at=1_700_000_900.0,
        )
        assert "secret-token" not in repr(target)
        assert target.token_usable(1_700_000_000.0)
        assert not target.token_usable(1_700_000_890.0)
        assert await store.jobs.job_by_message(123) is None
        assert await store.jobs.get_delivery_target(4242) is None
        other_job = await store.jobs.job_by_message(999)
        assert other_job is not None and other_job.id == other
        # A re-roll that reuses the message: the message now means the newer job.
        newer = await store.jobs.create_job(OWNER, request(seed=5))
        await store.jobs.set_delivery_target(newer, channel_id=11, message_id=999)
        newest = await store.jobs.job_by_message(999)
        assert newest is not None and newest.id == newer


async def test_a_reroll_records_its_source(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        source = await store.jobs.create_job(OWNER, request())
        reroll = await store.jobs.create_job(OWNER, request(seed=99), rerolled_from=source)
        with pytest.raises(sqlite3.IntegrityError):  # the foreign key holds: foreign_keys is on
            await store.jobs.create_job(OWNER, request(seed=100), rerolled_from=5555)
    with raw(db) as conn:
        lineage = conn.execute("SELECT id, rerolled_from FROM jobs ORDER BY id").fetchall()
        assert lineage == [(source, None), (reroll, source)]
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM jobs WHERE id = ?", (source,))
        # The rebuilt table (0003) kept ON DELETE SET NULL.
        assert conn.execute("SELECT rerolled_from FROM jobs").fetchall() == [(None,)]


# --------------------------------------------------------------------------- image jobs


async def test_image_jobs_keep_their_source_and_parent_across_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        parent = await _finished_job(store)
        made = {
            await store.jobs.create_job(OWNER, UPSCALE, parent=Lineage(parent, 1)): (
                UPSCALE,
                Lineage(parent, 1),
            ),
            await store.jobs.create_job(OWNER, VARIATION, parent=Lineage(parent, 0)): (
                VARIATION,
                Lineage(parent, 0),
            ),
            await store.jobs.create_job(OWNER, ZOOM_OUT, parent=Lineage(parent, 0)): (
                ZOOM_OUT,
                Lineage(parent, 0),
            ),
            await store.jobs.create_job(OWNER, UPLOAD): (UPLOAD, None),
        }
        for job_id, (req, lineage) in made.items():
            job = await store.jobs.get_job(job_id)
            assert job is not None and (job.request, job.parent) == (req, lineage)
        first = next(iter(made))
        await store.jobs.set_delivery_target(first, channel_id=10, message_id=555)
        await store.jobs.mark_running(first)
        await store.jobs.mark_done(first, outcome(first, 1))
        origin = await store.jobs.get_job(parent)
        assert origin is not None and origin.parent is None and origin.request.source is None
    async with opened(db) as store:  # a new connection reads only what the file holds
        for job_id, (req, lineage) in made.items():
            job = await store.jobs.get_job(job_id)
            assert job is not None and (job.request, job.parent) == (req, lineage)
        done = await store.jobs.job_by_message(555)
        assert done is not None and done.id == first and done.state is JobState.DONE
        assert done.request.source == UPSCALE_SOURCE and done.parent == Lineage(parent, 1)
        assert done.outcome == outcome(first, 1)
        page = await store.jobs.history(OWNER.user_id)
        assert [(j.id, j.request, j.parent) for j in page] == [
            (job_id, req, lineage) for job_id, (req, lineage) in reversed(made.items())
        ] + [(parent, request(), None)]
        # Re-delivery after a restart sees the lineage too (the result embed shows it).
        undelivered = await store.jobs.undelivered_finished_jobs()
        assert [(j.id, j.parent) for j in undelivered] == [
            (parent, None),
            (first, Lineage(parent, 1)),
        ]
    with raw(db) as conn:
        assert conn.execute(
            "SELECT operation, strength, scale, upscaler, parent_image_idx FROM jobs WHERE id = ?",
            (first,),
        ).fetchone() == ("upscale", 0.3, 2.0, "4x-UltraSharp", 1)


async def test_queue_rebuilds_unfinished_image_jobs_from_the_store(tmp_path: Path) -> None:
    """After a crash the queue re-runs queued and running jobs from unfinished_jobs alone:
    an image job must come back with its picture and what to do with it."""
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        parent = await _finished_job(store)
        running = await store.jobs.create_job(OWNER, UPSCALE, parent=Lineage(parent, 1))
        await store.jobs.mark_running(running)
        queued = await store.jobs.create_job(OWNER, UPLOAD)
        plain = await store.jobs.create_job(OWNER, request(prompt="plain"))
    async with opened(db) as store:
        unfinished = await store.jobs.unfinished_jobs()
        assert [(j.id, j.state, j.request, j.parent) for j in unfinished] == [
            (running, JobState.RUNNING, UPSCALE, Lineage(parent, 1)),
            (queued, JobState.QUEUED, UPLOAD, None),
            (plain, JobState.QUEUED, request(prompt="plain"), None),
        ]
        assert unfinished[0].request.batch_key() == UPSCALE.batch_key()
        await store.jobs.requeue(running)
        again = await store.jobs.get_job(running)
        assert again is not None and again.request == UPSCALE and again.parent == Lineage(parent, 1)


# Each (column, value) breaks one rule of a job with a whole source and a parent.
BROKEN_IMAGE_JOBS = [
    ("source_path", None),
    ("source_width", None),
    ("source_height", None),
    ("operation", None),
    ("strength", None),
    ("scale", None),
    ("source_width", 0),
    ("source_height", -1),
    ("operation", "inpaint"),
    ("strength", 0.0),
    ("strength", 1.5),
    ("scale", 0.0),
    ("parent_image_idx", None),
    ("parent_image_idx", -1),
]


@pytest.mark.parametrize(("column", "value"), BROKEN_IMAGE_JOBS)
async def test_schema_refuses_half_a_source_or_a_broken_lineage(
    tmp_path: Path, column: str, value: object
) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        parent = await store.jobs.create_job(OWNER, request())
        child = await store.jobs.create_job(OWNER, UPSCALE, parent=Lineage(parent, 1))
    with raw(db) as conn, pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        # `column` is one of BROKEN_IMAGE_JOBS' names, not outside input.
        conn.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (value, child))
    async with opened(db) as store:
        job = await store.jobs.get_job(child)
        assert job is not None and job.request == UPSCALE  # nothing changed


async def test_store_refuses_a_lineage_without_a_source_or_a_parent(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        parent = await store.jobs.create_job(OWNER, request())
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # a parent, no picture
            await store.jobs.create_job(OWNER, request(), parent=Lineage(parent, 0))
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await store.jobs.create_job(OWNER, UPSCALE, parent=Lineage(5555, 0))
        assert [j.id for j in await store.jobs.history(OWNER.user_id)] == [parent]
    with raw(db) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # an upscaler, no picture
            conn.execute("UPDATE jobs SET upscaler = '4x' WHERE id = ?", (parent,))
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # half a source
            conn.execute(
                "UPDATE jobs SET source_path = '/a.png', source_width = 8, source_height = 8"
                " WHERE id = ?",
                (parent,),
            )


async def test_deleting_a_parent_unlinks_its_children_and_keeps_their_source(
    tmp_path: Path,
) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        parent = await _finished_job(store)
        child = await store.jobs.create_job(OWNER, VARIATION, parent=Lineage(parent, 1))
    with raw(db) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM jobs WHERE id = ?", (parent,))
        assert conn.execute(
            "SELECT parent_job_id, parent_image_idx FROM jobs WHERE id = ?", (child,)
        ).fetchone() == (None, 1)
    async with opened(db) as store:
        job = await store.jobs.get_job(child)
        assert job is not None and job.parent is None and job.request == VARIATION


# --------------------------------------------------------------------------- history


async def test_history_pages_newest_first(tmp_path: Path) -> None:
    async with opened(tmp_path / "bot.db") as store:
        mine: list[int] = []
        for i in range(25):
            mine.append(await store.jobs.create_job(Owner(1, 9), request(prompt=f"mine {i}")))
            await store.jobs.create_job(Owner(2, 9), request(prompt=f"theirs {i}"))
        pages = [await store.jobs.history(1, limit=10, offset=o) for o in (0, 10, 20, 30)]
        assert [len(p) for p in pages] == [10, 10, 5, 0]
        seen = [j.id for page in pages for j in page]
        assert seen == sorted(mine, reverse=True)
        assert all(j.owner.user_id == 1 for page in pages for j in page)
        assert pages[0][0].request.prompt == "mine 24"
        assert await store.jobs.count_history(1) == 25
        assert await store.jobs.count_history(3) == 0
        assert await store.jobs.history(3) == []

        await store.jobs.mark_running(mine[0])
        await store.jobs.mark_done(mine[0], outcome(mine[0]))
        await store.jobs.mark_cancelled(mine[1])
        done = await store.jobs.history(1, states={JobState.DONE})
        assert [j.id for j in done] == [mine[0]] and done[0].outcome == outcome(mine[0])
        assert await store.jobs.count_history(1, states={JobState.DONE, JobState.CANCELLED}) == 2
        with pytest.raises(ValueError):
            await store.jobs.history(1, limit=-1)


# --------------------------------------------------------------------------- guild settings


async def test_guild_settings_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        assert await store.guilds.get_guild_settings(1) == GuildSettings(1)
        assert await store.guilds.longest_window_override_s() is None
        wanted = GuildSettings(
            guild_id=2**60,
            allowed_channel_ids=frozenset({2**61, 3}),
            blocked_words=("gore", "naïve wörd"),
            images_per_window=7,
            window_minutes=90,
            max_queued=2,
            default_style="cinematic",
        )
        await store.guilds.set_guild_settings(wanted)
        await store.guilds.set_guild_settings(GuildSettings(3, window_minutes=15))
    async with opened(db) as store:
        assert await store.guilds.get_guild_settings(2**60) == wanted
        assert await store.guilds.longest_window_override_s() == 90 * 60
        # A list is frozen into a tuple.
        replaced = GuildSettings(2**60, blocked_words=["x"])  # type: ignore[arg-type]
        await store.guilds.set_guild_settings(replaced)
        got = await store.guilds.get_guild_settings(2**60)
        assert got == replaced and got.blocked_words == ("x",) and got.images_per_window is None
    with pytest.raises(ValueError, match="images_per_window"):
        GuildSettings(1, images_per_window=0)


async def test_user_defaults_round_trip_and_clearing_removes_the_row(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        assert await store.users.get_defaults(5) == UserDefaults(5)
        wanted = UserDefaults(
            5, model="sdxl", aspect_ratio="16:9", style="noir", steps=30, sampler="Euler a", count=2
        )
        await store.users.set_defaults(wanted)
        await store.users.set_defaults(UserDefaults(6, steps=12))
    async with opened(db) as store:
        assert await store.users.get_defaults(5) == wanted
        assert (await store.users.get_defaults(6)).as_options() == {"steps": 12}
        await store.users.set_defaults(UserDefaults(5))
        assert await store.users.get_defaults(5) == UserDefaults(5)
    with raw(db) as conn:
        assert conn.execute("SELECT user_id FROM user_defaults").fetchall() == [(6,)]
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO user_defaults (user_id, count, updated_at) VALUES (7, 0, 0)")
    with pytest.raises(ValueError, match="steps"):
        UserDefaults(1, steps=0)


# --------------------------------------------------------------------------- rate events


async def charge(
    store: Store, user_id: int, guild_id: int | None, images: int, at: float
) -> RateDecision:
    """Record an event as the limiter does; a window of 1 s keeps the cap out of the way."""
    return await store.rates.try_add_rate_event(
        user_id, guild_id, images, at=at, user_limit=100, user_window_s=1.0
    )


async def window(
    store: Store, *, since: float, user_id: int = 0, guild_id: int | None = None
) -> RateDecision:
    """What the windows (since, ...] hold, as the limiter sees them; caps of 0 record
    nothing."""
    at = 10_000.0
    decision = await store.rates.try_add_rate_event(
        user_id,
        guild_id,
        1,
        at=at,
        user_limit=0,
        user_window_s=at - since,
        guild_limit=0,
        guild_window_s=at - since,
    )
    assert decision.event_id is None
    return decision


async def test_rate_event_window_sums_and_pruning(tmp_path: Path) -> None:
    async with opened(tmp_path / "bot.db") as store:
        for user, guild, images, at in ((1, 10, 2, 100.0), (1, 10, 1, 200.0), (2, 10, 4, 300.0)):
            assert (await charge(store, user, guild, images, at)).event_id is not None
        assert (await charge(store, 1, None, 3, 400.0)).event_id is not None
        assert (await window(store, since=0, user_id=1)).user_used == 6
        assert (await window(store, since=100.0, user_id=1)).user_used == 4  # strictly after
        assert (await window(store, since=150.0, guild_id=10)).guild_used == 5
        assert await store.rates.rate_event_expiry(user_id=1, since=0) == 100.0
        assert await store.rates.rate_event_expiry(user_id=1, since=0, images=3) == 200.0
        assert await store.rates.rate_event_expiry(user_id=1, since=0, images=4) == 400.0
        assert await store.rates.rate_event_expiry(user_id=1, since=0, images=7) is None
        assert await store.rates.rate_event_expiry(guild_id=10, since=100.0, images=2) == 300.0
        with pytest.raises(ValueError):
            await store.rates.rate_event_expiry(user_id=1, guild_id=10, since=0)
        assert await store.rates.prune_rate_events(before=300.0) == 2
        assert (await window(store, since=0, user_id=1)).user_used == 3
        assert (await window(store, since=0, user_id=2)).user_used == 4
        assert (await window(store, since=0, guild_id=10)).guild_used == 4


async def test_a_job_is_created_with_its_delivery_target_and_rate_charge(tmp_path: Path) -> None:
    """Where the result goes is stored with the job, before it can run: a restart or a
    failing Discord can then still deliver it, or refund it."""
    db = tmp_path / "bot.db"
    target = DeliveryTarget(0, 10, None, "tok", 99, 1_700_000_900.0)
    async with opened(db) as store:
        job_id = await store.jobs.create_job(OWNER, request(), target=target, rate_event_id=77)
    async with opened(db) as store:
        assert await store.jobs.get_delivery_target(job_id) == DeliveryTarget(
            job_id, 10, None, "tok", 99, 1_700_000_900.0
        )
        assert await store.jobs.rate_event_of(job_id) == 77


async def test_mark_delivered_records_the_confirmed_message(tmp_path: Path) -> None:
    async with opened(tmp_path / "bot.db") as store:
        job_id = await store.jobs.create_job(OWNER, request(), target=DeliveryTarget(0, 10))
        await store.jobs.mark_running(job_id)
        await store.jobs.mark_done(job_id, outcome(job_id))
        assert await store.jobs.mark_delivered(job_id, channel_id=11, message_id=555)
        target = await store.jobs.get_delivery_target(job_id)
        assert target is not None and (target.channel_id, target.message_id) == (11, 555)
        assert (await store.jobs.job_by_message(555)).id == job_id


async def test_giving_up_a_delivery_fails_the_job_keeps_images_and_returns_the_charge(
    tmp_path: Path,
) -> None:
    db = tmp_path / "bot.db"
    async with opened(db) as store:
        job_id = await store.jobs.create_job(
            OWNER, request(), target=DeliveryTarget(0, 10), rate_event_id=5
        )
        await store.jobs.mark_running(job_id)
        await store.jobs.mark_done(job_id, outcome(job_id))
        assert await store.jobs.give_up_delivery(job_id, "not delivered: Discord said no") == 5
        assert await store.jobs.give_up_delivery(job_id, "again") is None  # settled once
        assert await store.jobs.mark_delivered(job_id) is False
        with pytest.raises(JobNotFound):
            await store.jobs.give_up_delivery(4242, "x")
    async with opened(db) as store:
        job = await store.jobs.get_job(job_id)
        assert job is not None and job.state is JobState.FAILED
        assert job.error == "not delivered: Discord said no"
        assert job.outcome is not None and job.outcome.images == outcome(job_id).images
        assert await store.jobs.undelivered_finished_jobs() == []  # nothing re-sent after restart
        failed = await _finished_job(store, JobState.FAILED)
        assert await store.jobs.give_up_delivery(failed, "x") is None  # a notice: state unchanged
        job = await store.jobs.get_job(failed)
        assert job is not None and job.state is JobState.FAILED and job.error == "boom"


async def test_each_database_has_its_own_stable_instance_id(tmp_path: Path) -> None:
    """Channel posts carry "<instance>-<job>" as a nonce: job 5 of a wiped database must not
    match the old job 5, which Discord would answer with the old message."""
    from bot.delivery import result_nonce

    async with opened(tmp_path / "a.db") as a, opened(tmp_path / "b.db") as b:
        assert a.instance_id and a.instance_id != b.instance_id
        assert result_nonce(a.instance_id, 5) != result_nonce(b.instance_id, 5)
        assert len(result_nonce(a.instance_id, 2**62)) <= 25  # Discord's nonce limit
        first = a.instance_id
    async with opened(tmp_path / "a.db") as a:
        assert a.instance_id == first


async def test_delivery_targets_of_a_page_in_one_call(tmp_path: Path) -> None:
    async with opened(tmp_path / "bot.db") as store:
        a = await store.jobs.create_job(OWNER, request(), target=DeliveryTarget(0, 10))
        b = await store.jobs.create_job(OWNER, request(), target=DeliveryTarget(0, 11))
        await store.jobs.set_delivery_target(b, channel_id=11, message_id=77)
        targets = await store.jobs.delivery_targets([a, b, 4242])
        assert targets == {a: DeliveryTarget(a, 10), b: DeliveryTarget(b, 11, 77)}
        assert await store.jobs.delivery_targets([]) == {}
