"""The order in which waiting jobs run: round-robin across users, fewest model reloads.

Pure functions over plain values, so the policy is easy to read and to test exhaustively.

Rounds: every user with waiting jobs gets one job per round, so one user with ten jobs cannot
starve the others. A user's k-th waiting job runs in round `turns[user] + k`, where `turns`
counts the jobs each user has already had beyond the least-served user still waiting: a user
served twice in one batch waits two rounds, and a user who just had a turn waits for those who
arrive while it runs. Inside a round the order is free, so jobs for the model that
is already loaded go first, then jobs are grouped by model, oldest group first: same fairness,
fewer reloads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WaitingJob:
    job_id: int
    user_id: int
    model: str
    batch_key: Hashable
    images: int
    sequence: int  # arrival order; lower is older
    # Back in line after its worker died mid-batch: it runs before everything else, as it
    # had already had its turn (once; a second loss fails it, see queue.py).
    front: bool = False


def fair_order(
    waiting: Iterable[WaitingJob],
    turns: Mapping[int, int],
    loaded_model: str | None,
) -> list[WaitingJob]:
    by_user: dict[int, list[WaitingJob]] = defaultdict(list)
    order: list[WaitingJob] = []
    for job in waiting:
        if job.front:
            order.append(job)
        else:
            by_user[job.user_id].append(job)
    order.sort(key=lambda job: job.sequence)
    rounds: dict[int, list[WaitingJob]] = defaultdict(list)
    for user_id, jobs in by_user.items():
        jobs.sort(key=lambda job: job.sequence)
        offset = turns.get(user_id, 0)
        for k, job in enumerate(jobs):
            rounds[k + offset].append(job)

    current_model = loaded_model
    for round_number in sorted(rounds):
        groups: dict[str, list[WaitingJob]] = defaultdict(list)
        for job in sorted(rounds[round_number], key=lambda job: job.sequence):
            groups[job.model].append(job)
        models = sorted(groups, key=lambda model: groups[model][0].sequence)
        if current_model in groups:
            models.remove(current_model)
            models.insert(0, current_model)
        for model in models:
            order.extend(groups[model])
        current_model = models[-1]
    return order


def next_batch(order: Sequence[WaitingJob], max_images: int) -> list[WaitingJob]:
    """The head of the fair order plus the compatible jobs right behind it.

    Only a prefix is taken, so batching never lets a job overtake one that is ahead of it.
    """
    if not order:
        return []
    batch = [order[0]]
    images = order[0].images
    for job in order[1:]:
        if job.batch_key != order[0].batch_key or images + job.images > max_images:
            break
        batch.append(job)
        images += job.images
    return batch


def record_turns(
    turns: Mapping[int, int], served: Iterable[int], waiting_users: set[int]
) -> dict[int, int]:
    """Turn counts after serving `served`, rebased on the least-served waiting user.

    Counts never go below zero, so being away earns no credit; they are kept while the queue
    runs dry, so a user just served still waits for those who arrive meanwhile.
    """
    updated = dict(turns)
    for user_id in served:
        updated[user_id] = updated.get(user_id, 0) + 1
    if waiting_users:
        least = min(updated.get(user_id, 0) for user_id in waiting_users)
        updated = {u: n - least for u, n in updated.items() if n - least > 0}
    return updated
