"""The job queue: event-loop lag while generating, overhead over the raw generator, load.

    python -m bench.bench_queue                  # everything, appends a row to RESULTS.md
    python -m bench.bench_queue --no-record --light-jobs 3 --heavy-size 192 --repeats 4 \\
        --jobs 300 --users 30                    # a quicker look

1. Lag: a probe coroutine sleeps 5 ms again and again and records how late each wake-up is,
   while jobs go through the real JobQueue (real SQLite store, previews on as in the bot) to
   the tiny random-weight model: a series of light jobs (64², 20 steps) and one heavy job
   (256², 20 steps: the worker thread busy for seconds). Once with torch's default intra-op
   threads and once with one thread, to show how much of the lag is the CPU cores being
   taken by torch. An idle run (no job) is the control. Target p99 <= 20 ms.
2. Overhead: images/s through `submit()` -> `result()` (real store, real queue, previews off,
   one job at a time) ÷ images/s of `DiffusersGenerator.generate([request])` called directly
   on a dedicated thread, same model, size, steps and seeds. The two sides alternate (A B,
   B A, ...) so drift on a shared machine hits both. Target >= 0.95.
3. Load: JOBS jobs from USERS users against FakeGenerator (no sleeping) and the real store.
   The worker is held at the first job's first step (FakeGenerator's step gate) until every
   job is submitted, user by user (the least fair arrival order), then released. Checks: each
   job done exactly once, every seed generated exactly once, round-robin order (in every
   prefix of the execution order, nobody is more than one job ahead of a user still waiting),
   and the store's JobJournal calls timed through a proxy (target p99 <= 5 ms).

Absolute times mean little on a shared CPU; the ratios and the lag are the figures here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.common import (
    commit,
    device,
    finish_run,
    percentile,
    print_table,
    today,
)
from bot.store import Store
from inference.device import RuntimeOptions
from inference.fakes import FakeGenerator
from inference.generator import DiffusersGenerator
from inference.jobs import JobJournal, JobOutcome, JobRecord, JobState, Owner
from inference.queue import JobHandle, JobQueue, QueueSettings
from inference.types import (
    CancelCheck,
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    ModelSpec,
    ProgressCallback,
)

SECTION = "## Queue"
LAG_TARGET_P99_MS = 20.0
OVERHEAD_TARGET = 0.95
STORE_TARGET_P99_MS = 5.0
INTRO = (
    "`python -m bench.bench_queue`: three measurements in one run. **Lag**: a coroutine sleeps"
    " 5 ms in a loop and records how late it wakes while jobs run through the real JobQueue"
    " and SQLite store on the tiny random model (previews on): light = a series of 64² jobs,"
    " heavy = one 256² job; both at 20 steps, with torch's default intra-op threads and with"
    " 1 thread. Cells are p99 / max ms late (target p99 <= 20 ms); idle = the same probe with"
    " no job. **Overhead**: images/s through submit() -> result() (one job at a time,"
    " previews off) ÷ images/s of DiffusersGenerator.generate([request]) called directly,"
    " same model/size/steps/seeds, the two sides alternated over several repeats; median"
    " (min-max) of the per-repeat ratios (target >= 0.95). **Load**: jobs/users against"
    " FakeGenerator with the real store, all submitted user by user while the worker is held"
    " at its first job, then released: jobs/s from release to the last result, jobs lost or"
    " run twice, round-robin order (in every prefix nobody is more than one job ahead of a"
    " waiting user), and the worst p99 of the store's JobJournal calls (target <= 5 ms)."
)


def request(size: int, steps: int, seed: int, *, model: str = "tiny") -> GenerationRequest:
    return GenerationRequest(
        prompt="a lighthouse at dusk, oil painting",
        negative_prompt="blurry",
        width=size,
        height=size,
        steps=steps,
        guidance=7.0,
        seed=seed,
        sampler="Euler",
        count=1,
        model=model,
    )


# --------------------------------------------------------------------------- 1. lag


class LagProbe:
    """Sleeps `interval_s` over and over on the loop and records how late each wake-up is."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.late_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagProbe:
        self._task = asyncio.create_task(self._run(), name="lag-probe")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            late = time.perf_counter() - started - self.interval_s
            self.late_ms.append(max(0.0, late) * 1000)


class IntraOpThreads:
    """An ImageGenerator that sets torch's intra-op thread count on the worker thread.

    `torch.set_num_threads` is process-wide in ATen (it also decides whether ops run in
    parallel at all), so it is set on every call and restored by the caller afterwards.
    """

    def __init__(self, inner: DiffusersGenerator, threads: int) -> None:
        self.inner = inner
        self.threads = threads

    def model_info(self, name: str) -> ModelInfo:
        return self.inner.model_info(name)

    def warm_up(self, model: str) -> None:
        self.inner.warm_up(model)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
        want_previews: bool = False,
    ) -> list[GenerationResult | None]:
        import torch

        torch.set_num_threads(self.threads)
        return self.inner.generate(requests, on_progress, is_cancelled, want_previews)


@dataclass(frozen=True)
class LagCase:
    label: str
    late_ms: list[float]
    seconds: float  # wall time of the case (jobs submitted one after the other)
    kind: str = "idle"  # idle | light | heavy
    threads: int | None = None  # torch intra-op threads


async def idle_lag(seconds: float, interval_s: float) -> LagCase:
    async with LagProbe(interval_s) as probe:
        await asyncio.sleep(seconds)
    return LagCase("idle (no job)", probe.late_ms, seconds)


async def lag_during_jobs(
    kind: str,
    generator: IntraOpThreads,
    requests: Sequence[GenerationRequest],
    folder: Path,
    interval_s: float,
) -> LagCase:
    async with (
        await Store.open(folder / "store.db") as store,
        JobQueue(generator, store.jobs, QueueSettings(output_dir=folder / "images")) as queue,
        LagProbe(interval_s) as probe,
    ):
        started = time.perf_counter()
        for r in requests:  # one after the other: the worker is never idle for long
            handle = await queue.submit(r, Owner(1), previews=True)
            await handle.result()
        seconds = time.perf_counter() - started
    r, n = requests[0], generator.threads
    label = f"{kind} {r.width}² {r.steps} st x{len(requests)}, torch {n} thread{'s' * (n > 1)}"
    return LagCase(label, probe.late_ms, seconds, kind, n)


async def measure_lag(
    generator: DiffusersGenerator, args: argparse.Namespace, scratch: Path
) -> list[LagCase]:
    import torch

    default_threads = torch.get_num_threads()
    light = [request(args.light_size, args.steps, 100 + i) for i in range(args.light_jobs)]
    heavy = [request(args.heavy_size, args.heavy_steps, 200)]
    interval = args.tick_ms / 1000
    cases = [await idle_lag(args.idle_s, interval)]
    thread_counts = [default_threads] if args.no_thread_variant else [default_threads, 1]
    try:
        for threads in thread_counts:
            capped = IntraOpThreads(generator, threads)
            for kind, requests in (("light", light), ("heavy", heavy)):
                folder = scratch / f"lag-{kind}-{threads}"
                cases.append(await lag_during_jobs(kind, capped, requests, folder, interval))
    finally:
        torch.set_num_threads(default_threads)
    return cases


# --------------------------------------------------------------------------- 2. overhead


@dataclass
class OverheadResult:
    queue_s: list[float] = field(default_factory=list)  # per repeat, `images` images
    direct_s: list[float] = field(default_factory=list)

    def ratios(self) -> list[float]:
        """Per repeat: queue images/s ÷ direct images/s (same image count on both sides)."""
        return [d / q for q, d in zip(self.queue_s, self.direct_s, strict=True)]


async def through_queue(queue: JobQueue, requests: Sequence[GenerationRequest]) -> float:
    started = time.perf_counter()
    for r in requests:  # sequential: wait for each result, as the direct side does
        handle = await queue.submit(r, Owner(1), previews=False)
        await handle.result()
    return time.perf_counter() - started


def direct(
    generator: DiffusersGenerator,
    thread: ThreadPoolExecutor,
    requests: Sequence[GenerationRequest],
) -> float:
    # Blocking on purpose: the queue is idle meanwhile, and this side should carry no event
    # loop cost at all. Its own thread, like the queue's worker (torch's OpenMP team is per
    # calling thread).
    started = time.perf_counter()
    for r in requests:
        thread.submit(generator.generate, [r]).result()
    return time.perf_counter() - started


async def measure_overhead(
    generator: DiffusersGenerator, args: argparse.Namespace, scratch: Path
) -> OverheadResult:
    requests = [request(args.light_size, args.steps, 1000 + i) for i in range(args.images)]
    result = OverheadResult()
    folder = scratch / "overhead"
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct") as thread:
        async with (
            await Store.open(folder / "store.db") as store,
            JobQueue(generator, store.jobs, QueueSettings(output_dir=folder / "images")) as queue,
        ):
            await through_queue(queue, requests[:1])  # warm-up: both threads, both paths
            direct(generator, thread, requests[:1])
            for repeat in range(args.repeats):
                if repeat % 2 == 0:
                    result.queue_s.append(await through_queue(queue, requests))
                    result.direct_s.append(direct(generator, thread, requests))
                else:
                    result.direct_s.append(direct(generator, thread, requests))
                    result.queue_s.append(await through_queue(queue, requests))
    return result


# --------------------------------------------------------------------------- 3. load


class TimedJournal:
    """The store's JobJournal methods, each timed as the queue awaits it."""

    def __init__(self, inner: JobJournal) -> None:
        self.inner = inner
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.created: list[int] = []
        self.done: Counter[int] = Counter()

    async def _timed(self, op: str, call: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.ms[op].append((time.perf_counter() - started) * 1000)

    async def create_job(self, owner: Owner, request: GenerationRequest) -> int:
        job_id = await self._timed("create_job", self.inner.create_job(owner, request))
        self.created.append(job_id)
        return int(job_id)

    async def mark_running(self, job_id: int) -> None:
        await self._timed("mark_running", self.inner.mark_running(job_id))

    async def mark_done(self, job_id: int, outcome: JobOutcome) -> None:
        await self._timed("mark_done", self.inner.mark_done(job_id, outcome))
        self.done[job_id] += 1

    async def mark_failed(self, job_id: int, reason: str) -> None:
        await self._timed("mark_failed", self.inner.mark_failed(job_id, reason))

    async def mark_cancelled(self, job_id: int) -> None:
        await self._timed("mark_cancelled", self.inner.mark_cancelled(job_id))

    async def requeue(self, job_id: int) -> None:
        await self._timed("requeue", self.inner.requeue(job_id))

    async def unfinished_jobs(self) -> list[JobRecord]:
        return list(await self._timed("unfinished_jobs", self.inner.unfinished_jobs()))


@dataclass(frozen=True)
class Unfairness:
    prefixes: int  # how many prefixes of the execution order break round-robin
    first: str  # the first of them, in words


def unfairness(order: Sequence[int], totals: Mapping[int, int]) -> Unfairness | None:
    """The prefixes of `order` (user ids in execution order) in which some user is more than
    one job ahead of a user who still has jobs waiting; None if there is none."""
    done = dict.fromkeys(totals, 0)
    bad, first = 0, ""
    for position, user in enumerate(order, 1):
        done[user] += 1
        waiting = [u for u in totals if done[u] < totals[u]]
        if not waiting:
            continue
        behind = min(waiting, key=done.__getitem__)
        ahead = max(done, key=done.__getitem__)
        if done[ahead] - done[behind] > 1:
            bad += 1
            first = first or (
                f"after {position} jobs user {ahead} had {done[ahead]} run while user"
                f" {behind}, still waiting, had {done[behind]}"
            )
    return Unfairness(bad, first) if bad else None


@dataclass
class LoadResult:
    jobs: int
    users: int
    submit_s: float
    run_s: float
    batches: int
    lost: int
    duplicated: int
    problems: list[str]
    fairness: Unfairness | None
    control: Unfairness | None  # the same check on the arrival order: must find some
    store_ms: dict[str, list[float]]


async def measure_load(args: argparse.Namespace, scratch: Path) -> LoadResult:
    jobs, users = args.jobs, args.users
    per_user = [jobs // users + (1 if u < jobs % users else 0) for u in range(users)]
    arrivals = [u for u in range(users) for _ in range(per_user[u])]  # user by user
    wanted = {
        1_000_000 + i: (user, request(args.fake_size, args.fake_steps, 1_000_000 + i, model="fake"))
        for i, user in enumerate(arrivals)
    }
    user_of_seed = {seed: user for seed, (user, _) in wanted.items()}
    gate = threading.Event()
    fake = FakeGenerator(step_gate=gate)
    settings = QueueSettings(
        output_dir=scratch / "load" / "images", max_queued=jobs, max_queued_per_user=max(per_user)
    )
    problems: list[str] = []
    handles: list[JobHandle] = []
    async with await Store.open(scratch / "load" / "store.db") as store:
        journal = TimedJournal(store.jobs)
        queue = JobQueue(fake, journal, settings)
        await queue.start()
        try:
            pending = iter(wanted.items())
            _, (user, first) = next(pending)
            handles.append(await queue.submit(first, Owner(user + 1), previews=False))
            async with asyncio.timeout(10):  # the worker takes it alone and waits at the gate
                async for handle in handles[0].updates():
                    if handle.state is JobState.RUNNING:
                        break
            started = time.perf_counter()
            for _, (user, r) in pending:
                handles.append(await queue.submit(r, Owner(user + 1), previews=False))
            submit_s = time.perf_counter() - started
            if len(fake.calls) != 1:
                problems.append(f"the worker ran {len(fake.calls)} batches before the release")
            started = time.perf_counter()
            gate.set()
            results = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
            run_s = time.perf_counter() - started
        finally:
            gate.set()
            await queue.close()

        for handle, result in zip(handles, results, strict=True):
            if isinstance(result, BaseException):
                problems.append(f"job {handle.job_id}: {result!r}")
            elif handle.state is not JobState.DONE:
                problems.append(f"job {handle.job_id}: finished {handle.state}")
            elif [i.seed for i in result.images] != list(handle.request.seeds()):
                problems.append(f"job {handle.job_id}: got the images of another job")
        generated = Counter(seed for call in fake.calls for seed in call)
        lost = sum(1 for seed in wanted if seed not in generated)
        duplicated = sum(n - 1 for n in generated.values() if n > 1)
        duplicated += sum(n - 1 for n in journal.done.values() if n > 1)
        if set(generated) - set(wanted):
            problems.append(f"{len(set(generated) - set(wanted))} seeds nobody asked for")
        if len(set(journal.created)) != jobs or set(journal.done) != set(journal.created):
            problems.append(
                f"{len(set(journal.created))} jobs created, {len(journal.done)} marked done"
            )
        # The store is the truth: every row done, none left over, none extra.
        if await store.jobs.unfinished_jobs():
            problems.append("jobs left queued or running in the store")
        stored = 0
        for user in range(users):
            total = await store.jobs.count_history(user + 1)
            done = await store.jobs.count_history(user + 1, states=[JobState.DONE])
            if total != per_user[user] or done != per_user[user]:
                problems.append(f"user {user + 1}: {done}/{total} done in the store")
            stored += total
        if stored != jobs:
            problems.append(f"{stored} jobs in the store for {jobs} submitted")

    order = [user_of_seed[seed] for call in fake.calls for seed in call if seed in user_of_seed]
    totals = dict(enumerate(per_user))
    return LoadResult(
        jobs=jobs,
        users=users,
        submit_s=submit_s,
        run_s=run_s,
        batches=len(fake.calls),
        lost=lost,
        duplicated=duplicated,
        problems=problems,
        fairness=unfairness(order, totals),
        control=unfairness(arrivals, totals),
        store_ms=dict(journal.ms),
    )


# --------------------------------------------------------------------------- report


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(
    lag: list[LagCase],
    overhead: OverheadResult,
    load: LoadResult,
    loadavg: tuple[float, float],
    args: argparse.Namespace,
) -> tuple[list[str], bool]:
    """Print the tables; return the RESULTS.md cells and whether every correctness check held."""
    print(f"\n1. event-loop lag (probe sleeps {args.tick_ms:g} ms; target p99 <= 20 ms)")
    rows = []
    for case in lag:
        p99 = percentile(case.late_ms, 99)
        rows.append(
            [
                case.label,
                f"{case.seconds:.1f}",
                str(len(case.late_ms)),
                f"{percentile(case.late_ms, 50):.2f}",
                f"{p99:.2f}",
                f"{max(case.late_ms):.2f}",
                mark(p99 <= LAG_TARGET_P99_MS),
            ]
        )
    print_table(["case", "s", "wake-ups", "p50 ms", "p99 ms", "max ms", "p99 target"], rows)

    ratios = overhead.ratios()
    ratio = statistics.median(ratios)
    queue_ips = [args.images / s for s in overhead.queue_s]
    direct_ips = [args.images / s for s in overhead.direct_s]
    print(
        f"\n2. overhead: {args.images} images per side per repeat, {args.repeats} repeats,"
        f" tiny {args.light_size}² {args.steps} steps, previews off"
    )
    print_table(
        ["side", "images/s median", "min", "max"],
        [
            ["submit() -> result()", *(f"{f(queue_ips):.3f}" for f in (median, min, max))],
            ["generate() direct", *(f"{f(direct_ips):.3f}" for f in (median, min, max))],
        ],
    )
    pooled = sum(overhead.direct_s) / sum(overhead.queue_s)
    print(
        f"queue ÷ direct: median {ratio:.3f} (per repeat {min(ratios):.3f}-{max(ratios):.3f},"
        f" all repeats pooled {pooled:.3f})  target >= {OVERHEAD_TARGET}:"
        f" {mark(ratio >= OVERHEAD_TARGET)}"
    )

    print(
        f"\n3. load: {load.jobs} jobs from {load.users} users, FakeGenerator, real store;"
        f" {load.batches} batches"
    )
    rows = []
    for op, samples in sorted(load.store_ms.items()):
        p99 = percentile(samples, 99)
        rows.append(
            [
                op,
                str(len(samples)),
                f"{percentile(samples, 50):.3f}",
                f"{p99:.3f}",
                f"{max(samples):.3f}",
                mark(p99 <= STORE_TARGET_P99_MS),
            ]
        )
    print_table(["store call", "n", "p50 ms", "p99 ms", "max ms", "p99 target"], rows)
    worst_op, worst = max(
        ((op, percentile(s, 99)) for op, s in load.store_ms.items()), key=lambda x: x[1]
    )
    throughput = load.jobs / load.run_s
    print(
        f"submitted in {load.submit_s:.2f} s ({(load.jobs - 1) / load.submit_s:.0f}/s);"
        f" ran in {load.run_s:.2f} s: {throughput:.0f} jobs/s"
    )
    print(f"lost {load.lost}, run twice {load.duplicated}")
    print(f"round-robin: {describe(load.fairness)}")
    control = "flags nothing" if load.control is None else f"flags {load.control.prefixes} prefixes"
    print(f"negative control, the same check on the user-by-user arrival order: {control}")
    for problem in load.problems:
        print(f"PROBLEM: {problem}")
    # The control must catch the user-by-user arrival order, or the fairness check proves
    # nothing (it cannot with one user, or one job each).
    control_ok = load.control is not None or load.users < 2 or load.jobs <= load.users
    correct = (
        not load.problems
        and load.lost == 0
        and load.duplicated == 0
        and load.fairness is None
        and control_ok
    )

    def lag_case(kind: str, threads: int) -> LagCase | None:
        return next((c for c in lag if c.kind == kind and c.threads == threads), None)

    def lag_cell(kind: str, threads: int) -> str:
        case = lag_case(kind, threads)
        if case is None:
            return "-"
        return f"{percentile(case.late_ms, 99):.1f} / {max(case.late_ms):.1f}"

    def p99_cell(kind: str, threads: int) -> str:
        case = lag_case(kind, threads)
        return "-" if case is None else f"{percentile(case.late_ms, 99):.1f}"

    threads = max(c.threads or 0 for c in lag)  # torch's default
    cells = [
        today(),
        device(),
        commit(),
        " → ".join(f"{x:.1f}" for x in loadavg),
        f"{percentile(lag[0].late_ms, 99):.1f} / {max(lag[0].late_ms):.1f}",
        f"{lag_cell('light', threads)} ({args.light_size}² x{args.light_jobs})",
        f"{lag_cell('heavy', threads)} ({args.heavy_size}²)",
        f"{p99_cell('light', 1)} / {p99_cell('heavy', 1)}",
        f"{ratio:.3f} ({min(ratios):.3f}-{max(ratios):.3f}), pooled {pooled:.3f}",
        f"{load.jobs}/{load.users}",
        f"{throughput:.0f}",
        f"{load.lost} / {load.duplicated}",
        "yes" if load.fairness is None else f"NO ({load.fairness.prefixes} prefixes)",
        f"{worst:.2f} ({worst_op})",
    ]
    return cells, correct


def describe(found: Unfairness | None) -> str:
    if found is None:
        return "yes"
    return f"NO in {found.prefixes} prefixes; the first: {found.first}"


def median(values: list[float]) -> float:
    return statistics.median(values)


COLUMNS = [
    "date (UTC)",
    "device",
    "commit",
    "machine load avg start → end",
    "lag idle p99 / max ms",
    "lag light p99 / max ms",
    "lag heavy p99 / max ms",
    "lag p99 ms with 1 torch thread, light / heavy",
    "queue ÷ direct images/s",
    "load jobs/users",
    "jobs/s",
    "lost / run twice",
    "round-robin",
    "store p99 ms (worst call)",
]


async def run(args: argparse.Namespace) -> tuple[list[LagCase], OverheadResult, LoadResult]:
    from inference.testing import save_tiny_model

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        tiny = save_tiny_model(scratch / "model", "sd1")
        spec = ModelSpec("tiny", str(tiny.single_file), config=tiny.folder)
        generator = DiffusersGenerator({spec.name: spec}, RuntimeOptions())
        await asyncio.to_thread(generator.generate, [request(args.light_size, args.steps, 1)])
        started = time.perf_counter()
        lag = await measure_lag(generator, args, scratch)
        print(f"lag: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        started = time.perf_counter()
        overhead = await measure_overhead(generator, args, scratch)
        print(f"overhead: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        started = time.perf_counter()
        load = await measure_load(args, scratch)
        print(f"load: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return lag, overhead, load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="light and overhead jobs")
    parser.add_argument("--light-size", type=int, default=64)
    parser.add_argument("--light-jobs", type=int, default=5)
    parser.add_argument("--heavy-size", type=int, default=256)
    parser.add_argument("--heavy-steps", type=int, default=20)
    parser.add_argument("--tick-ms", type=float, default=5.0, help="the lag probe's sleep")
    parser.add_argument("--idle-s", type=float, default=1.0, help="the idle control's length")
    parser.add_argument(
        "--no-thread-variant", action="store_true", help="skip the 1-torch-thread lag runs"
    )
    parser.add_argument("--images", type=int, default=2, help="images per side per repeat")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--fake-size", type=int, default=64)
    parser.add_argument("--fake-steps", type=int, default=20)
    parser.add_argument("--no-record", action="store_true", help="don't touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.users < 1 or args.users > args.jobs or args.repeats < 1:
        parser.error("need 1 <= users <= jobs and repeats >= 1")

    started = time.perf_counter()
    # Other processes on the machine show up in every figure here: note how busy it was.
    before = os.getloadavg()[0]
    lag, overhead, load = asyncio.run(run(args))
    loadavg = (before, os.getloadavg()[0])
    cells, correct = report(lag, overhead, load, loadavg, args)
    finish_run(started, loadavg, not args.no_record, (SECTION, INTRO, COLUMNS, cells))
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
