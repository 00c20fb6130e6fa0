"""Store and rate-limiter latency on a real SQLite file.

Creates JOBS jobs from USERS users in a temporary database, takes each through
queued -> running -> done (with images) -> delivered, and times every call. Prints p50/p99 per
operation, checks that no job was lost or duplicated, and appends one dated row to the
"## Store" section of bench/RESULTS.md.

    python -m bench.bench_store            # from the repository root
    python bench/bench_store.py --jobs 200 --no-record
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, ROOT, append_row, commit, device, percentile, today
from bot.limits import LimitPolicy, RateLimiter
from bot.store import Store
from inference.jobs import JobOutcome, JobState, Owner, StoredImage
from inference.types import GenerationRequest

T = TypeVar("T")

SECTION = "## Store"
OPS = (
    "check_and_record",
    "create_job",
    "mark_running",
    "mark_done",
    "mark_delivered",
    "history",
)
TARGET_P99_MS = 5.0
GUILDS = 5


def request(i: int, count: int) -> GenerationRequest:
    return GenerationRequest(
        prompt=f"a lighthouse at dusk, oil painting, variation {i}",
        negative_prompt="blurry, low quality",
        width=512,
        height=512,
        steps=25,
        guidance=7.0,
        seed=1000 + i,
        sampler="DPM++ 2M Karras",
        count=count,
        model="sd15",
    )


def outcome(job_id: int, count: int) -> JobOutcome:
    images = tuple(
        StoredImage(f"data/images/{job_id}/{k}.png", 1000 + k, 512, 512) for k in range(count)
    )
    grid = f"data/images/{job_id}/grid.png" if count > 1 else None
    return JobOutcome(images=images, grid_path=grid, elapsed_s=2.5)


async def run(jobs: int, users: int) -> tuple[dict[str, list[float]], float]:
    timings: dict[str, list[float]] = {op: [] for op in OPS}
    clock = time.perf_counter

    async def timed(op: str, coro: Awaitable[T]) -> T:
        start = clock()
        result = await coro
        timings[op].append((clock() - start) * 1000)
        return result

    with tempfile.TemporaryDirectory() as folder:
        async with await Store.open(Path(folder) / "bench.db") as store:
            # Generous limits: every call does the full check and insert, none is refused.
            policy = LimitPolicy(
                images_per_window=10**6,
                window_s=3600.0,
                max_queued_per_user=10**6,
                guild_images_per_window=10**6,
            )
            limiter = RateLimiter(store, policy)
            owners = {}
            counts = {}
            started = clock()
            # Phase 1: everyone submits; the queue fills to `jobs` unfinished rows.
            for i in range(jobs):
                user = i % users + 1
                guild = user % GUILDS + 1
                count = i % 4 + 1
                await timed("check_and_record", limiter.check_and_record(user, guild, [], count, 0))
                job_id = await timed(
                    "create_job", store.jobs.create_job(Owner(user, guild), request(i, count))
                )
                owners[job_id] = user
                counts[job_id] = count
            if len(owners) != jobs:
                raise AssertionError(f"create_job returned {len(owners)} distinct ids for {jobs}")
            unfinished = await store.jobs.unfinished_jobs()
            if [j.id for j in unfinished] != sorted(owners):
                raise AssertionError("unfinished_jobs lost, duplicated or reordered jobs")
            # Phase 2: the worker drains the queue; results are delivered; users look back.
            for job in unfinished:
                await timed("mark_running", store.jobs.mark_running(job.id))
                await timed(
                    "mark_done", store.jobs.mark_done(job.id, outcome(job.id, counts[job.id]))
                )
                if not await timed("mark_delivered", store.jobs.mark_delivered(job.id)):
                    raise AssertionError(f"job {job.id} was already delivered")
                await timed("history", store.jobs.history(job.owner.user_id, limit=10))
            elapsed = clock() - started
            await verify(store, owners, counts, users)
    return timings, elapsed


async def verify(store: Store, owners: dict[int, int], counts: dict[int, int], users: int) -> None:
    """None lost, none duplicated: every job done once, delivered once, with its images."""
    if await store.jobs.unfinished_jobs() or await store.jobs.undelivered_finished_jobs():
        raise AssertionError("jobs left unfinished or undelivered")
    seen: list[int] = []
    for user in range(1, users + 1):
        total = await store.jobs.count_history(user)
        history = await store.jobs.history(user, limit=total + 1)
        if len(history) != total:
            raise AssertionError(f"user {user}: history has {len(history)} of {total} jobs")
        for job in history:
            if owners[job.id] != user or job.state is not JobState.DONE or not job.delivered:
                raise AssertionError(f"job {job.id} is wrong: {job}")
            if job.outcome is None or len(job.outcome.images) != counts[job.id]:
                raise AssertionError(f"job {job.id} has the wrong images")
            if await store.jobs.mark_delivered(job.id):
                raise AssertionError(f"job {job.id} was delivered twice")
            seen.append(job.id)
    if sorted(seen) != sorted(owners):
        raise AssertionError(f"{len(seen)} jobs found for {len(owners)} created")


def table(timings: dict[str, list[float]]) -> str:
    lines = [f"{'operation':<18}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}"]
    for op, samples in timings.items():
        p99 = percentile(samples, 99)
        flag = "" if p99 <= TARGET_P99_MS else f"  over the {TARGET_P99_MS:g} ms target"
        lines.append(
            f"{op:<18}{len(samples):>6}{percentile(samples, 50):>10.3f}{p99:>10.3f}"
            f"{max(samples):>10.3f}{flag}"
        )
    return "\n".join(lines)


def record(timings: dict[str, list[float]], jobs: int, users: int, elapsed: float) -> None:
    intro = (
        f"`python -m bench.bench_store`: one SQLite file, {GUILDS} guilds; each job"
        " is rate-checked, created, run, finished with 1-4 images, delivered, and its owner's"
        " history read. Cells are p50 / p99 in ms per call (target p99 <= 5 ms); jobs/s is"
        " the whole pipeline, sequential."
    )
    columns = ["date (UTC)", "device", "commit", "jobs/users", *OPS, "jobs/s"]
    cells = [
        today(),
        device(),
        commit(),
        f"{jobs}/{users}",
        *(f"{percentile(s, 50):.2f} / {percentile(s, 99):.2f}" for s in timings.values()),
        f"{jobs / elapsed:.0f}",
    ]
    append_row(SECTION, intro, columns, cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--no-record", action="store_true", help="don't touch RESULTS.md")
    args = parser.parse_args(argv)
    timings, elapsed = asyncio.run(run(args.jobs, args.users))
    print(f"{args.jobs} jobs from {args.users} users; none lost or duplicated")
    print(table(timings))
    print(f"whole pipeline: {elapsed:.2f} s, {args.jobs / elapsed:.0f} jobs/s")
    if not args.no_record:
        record(timings, args.jobs, args.users, elapsed)
        print(f"appended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
