"""A process that runs the real store and queue and "delivers" results to a file.

The crash-safety test starts it, SIGKILLs it mid-work, starts it again and checks that every
job is delivered exactly once. Delivery follows the bot's rule (bot/delivery.py): send, looking
first whether an earlier send went out, and record with Store.mark_delivered only after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from bot.store import Store
from inference.fakes import FakeGenerator
from inference.jobs import Owner
from inference.queue import JobHandle, JobQueue, QueueSettings
from inference.types import GenerationRequest


def request(seed: int) -> GenerationRequest:
    return GenerationRequest("crash test", "", 64, 64, 10, 7.0, seed, "Euler a", 1, "fake")


async def deliver(store: Store, job_id: int, log: Path) -> None:
    already_sent = log.exists() and str(job_id) in log.read_text().split()  # noqa: ASYNC240
    if not already_sent:  # looked first, as the bot looks in the channel
        with log.open("a") as file:
            file.write(f"{job_id}\n")
            file.flush()
            os.fsync(file.fileno())
    await store.jobs.mark_delivered(job_id)  # only after the "send" is confirmed


async def follow(handle: JobHandle, store: Store, log: Path) -> None:
    await handle.result()
    await deliver(store, handle.job_id, log)


async def main(db: Path, out: Path, log: Path, submit: int) -> None:
    async with await Store.open(db) as store:
        queue = JobQueue(
            FakeGenerator(step_seconds=0.02),
            store.jobs,
            QueueSettings(output_dir=out, max_queued=1000, max_queued_per_user=1000),
        )
        async with queue:
            for record in await store.jobs.undelivered_finished_jobs():
                await deliver(store, record.id, log)
            handles = list(queue.recovered)
            for i in range(submit):
                handles.append(await queue.submit(request(i), Owner(user_id=i % 3)))
            print("started", flush=True)
            await asyncio.gather(*(follow(h, store, log) for h in handles))
    print("all delivered", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("db", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("log", type=Path)
    parser.add_argument("--submit", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main(args.db, args.out, args.log, args.submit))
