"""The worker pool: scale-out and dispatch overhead, local threads against Ray actors.

    python -m bench.bench_scale_out              # everything, appends a row to RESULTS.md
    python -m bench.bench_scale_out --quick --no-record      # a look in well under a minute

Both backends in one run, side by side, through the real JobQueue and a real SQLite store
(one store file per queue), against FakeGenerator: a generator that sleeps a fixed time per
step, a stand-in for a GPU, so the machine's few cores do not limit throughput. The queue
neither batches (one image per job) nor asks for previews.

1. Scale-out: for N workers (1, 2, 4): a fresh pool of N LocalWorkers (a thread each) and a
   fresh pool of N RayWorkers (an actor each, on one private Ray instance started once for the
   run), one queue each. After an untimed warm-up (N one-step jobs), JOBS_PER_WORKER x N jobs
   from USERS users are submitted at once and awaited; images/s = jobs ÷ (first submit -> last
   result). The two backends alternate, REPEATS times each; the median run counts.
   Efficiency = images/s(N) ÷ (N x images/s(1)); goal >= 0.9. "vs ideal" = images/s ÷
   (N ÷ the sleep per job): what per-job overhead leaves of the fake GPU's time.
2. Dispatch overhead: one worker per backend, FakeGenerator with no sleep and 1 step; jobs
   submitted one after another, each awaited before the next (latency, not throughput); the
   two backends alternate job by job after a few untimed jobs. Mean ms per job; Ray − local
   is what a batch costs more over Ray (the actor call, the streamed events, the pickled PNGs).
3. Memory: RSS (and USS, the pages no other process shares) of the private Ray instance's
   processes while the largest pool is up, after its jobs: the head (gcs_server, raylet, the
   dashboard and runtime-env agents, the monitors) and each actor process (`RayWorker.pid`).
   The actors hold FakeGenerator, no model: a real worker adds its model and torch to this.

Absolute times mean little on a shared CPU; the ratios are the figures here.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    commit,
    device,
    finish_run,
    percentile,
    print_table,
    today,
)
from bot.store import Store
from inference.fakes import FakeGenerator
from inference.jobs import JobState, Owner
from inference.queue import JobHandle, JobQueue, QueueSettings
from inference.types import GenerationRequest
from inference.workers import LocalWorker, Worker

SECTION = "## Worker pool scale-out"
EFFICIENCY_TARGET = 0.9
BACKENDS = ("local", "Ray")
INTRO = (
    "`python -m bench.bench_scale_out`: the real JobQueue and SQLite store with a pool of"
    " workers, local threads (LocalWorker) and Ray actors (RayWorker, one private Ray instance"
    " for the run) side by side, against FakeGenerator, which sleeps a fixed time per step (a"
    " stand-in for a GPU: the 2 cores do not limit throughput); no batching (one image per"
    " job), no previews. **Scale-out**: for N = 1, 2, 4 workers, a fresh pool per backend and"
    " N, an untimed warm-up, then jobs-per-worker x N jobs from several users submitted at once;"
    " images/s from the first submit to the last result, median of the repeats (the backends"
    " alternate); efficiency = images/s(N) ÷ (N x images/s(1)), goal >= 0.9. **Dispatch**:"
    " one worker, no sleep, 1 step, jobs one after another (each awaited), the backends"
    " alternating job by job: mean ms per job, and Ray − local, what a batch costs more over"
    " Ray. **Memory**: RSS of the Ray instance's processes while the largest pool is up: the"
    " head (gcs_server, raylet, agents, monitors; summed, so shared pages count more than once)"
    " and each actor, in brackets USS (pages no other process shares). The actors hold"
    " FakeGenerator, no model: a real worker adds its model and torch."
)
COLUMNS = [
    "date (UTC)",
    "device",
    "commit",
    "machine load avg start → end",
    "job; jobs per worker, users; repeats",
    "local images/s N=1 / 2 / 4",
    "local efficiency N=2 / 4",
    "Ray images/s N=1 / 2 / 4",
    "Ray efficiency N=2 / 4",
    "goal ≥ 0.9",
    "dispatch ms/job local / Ray (Ray − local)",
    "Ray head RSS MB (USS), processes",
    "Ray per-worker RSS MB (USS), FakeGenerator, no model",
]


def request(steps: int, seed: int) -> GenerationRequest:
    return GenerationRequest(
        prompt="a lighthouse at dusk, oil painting",
        negative_prompt="blurry",
        width=64,
        height=64,
        steps=steps,
        guidance=7.0,
        seed=seed,
        sampler="Euler",
        count=1,
        model="fake",
    )


# --------------------------------------------------------------------------- pools


class Pools:
    """Makes each backend's workers, and keeps the private Ray instance for the run."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster  # inference.ray_workers.RayCluster, connected; None: no Ray

    def make(self, backend: str, count: int, step_seconds: float) -> list[Worker]:
        if backend == "local":
            return [
                LocalWorker(FakeGenerator(step_seconds=step_seconds), name=f"local {i}")
                for i in range(count)
            ]
        from inference.ray_workers import ray_workers

        # The fake needs no GPU: 0 GPUs each, so a GPU machine's single GPU does not cap N.
        make_generator = functools.partial(FakeGenerator, step_seconds=step_seconds)
        return list(ray_workers(make_generator, count, self.cluster.placement(0.0)))


@dataclass
class Run:
    """One queue on one pool, with its own store file."""

    backend: str
    queue: JobQueue
    workers: list[Worker]
    problems: list[str]
    seed: int = 0
    users: int = 1

    async def jobs(self, count: int, steps: int) -> float:
        """Submit `count` jobs at once (users in turn), await them all; seconds it took."""
        started = time.perf_counter()
        handles: list[JobHandle] = []
        for i in range(count):
            self.seed += 1
            handles.append(
                await self.queue.submit(
                    request(steps, self.seed), Owner(i % self.users + 1), previews=False
                )
            )
        results = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
        seconds = time.perf_counter() - started
        for handle, result in zip(handles, results, strict=True):
            if isinstance(result, BaseException):
                self.problems.append(f"{self.backend} job {handle.job_id}: {result!r}")
            elif handle.state is not JobState.DONE:
                self.problems.append(f"{self.backend} job {handle.job_id}: {handle.state}")
            elif [image.seed for image in result.images] != list(handle.request.seeds()):
                self.problems.append(f"{self.backend} job {handle.job_id}: another job's images")
        return seconds


async def open_run(
    stack: AsyncExitStack,
    pools: Pools,
    backend: str,
    count: int,
    step_seconds: float,
    folder: Path,
    problems: list[str],
    users: int,
) -> Run:
    store = await Store.open(folder / "store.db")
    stack.push_async_callback(store.close)
    workers = pools.make(backend, count, step_seconds)
    settings = QueueSettings(output_dir=folder / "images", max_queued=10_000, batching=False)
    queue = JobQueue(workers, store.jobs, settings)
    # Registered before start: a pool that started in part is still closed (its actors killed).
    stack.push_async_callback(queue.close)
    await queue.start()
    return Run(backend, queue, workers, problems, users=users)


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class ProcessMemory:
    label: str
    pid: int
    rss_mb: float
    uss_mb: float


def process_memory(actor_pids: Sequence[int]) -> tuple[list[ProcessMemory], list[ProcessMemory]]:
    """(the head's processes, the actors'): every process this one started, i.e. the private
    Ray instance (its head processes, and the raylet's workers)."""
    import psutil

    head: list[ProcessMemory] = []
    actors: list[ProcessMemory] = []
    for process in psutil.Process().children(recursive=True):
        try:
            memory = process.memory_full_info()
            label = ray_process_label(process.name(), process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        measured = ProcessMemory(label, process.pid, memory.rss / 2**20, memory.uss / 2**20)
        (actors if process.pid in actor_pids else head).append(measured)
    return head, actors


def ray_process_label(name: str, cmdline: list[str]) -> str:
    if name.startswith("ray::"):  # ray::DashboardAgent, ray::RuntimeEnvAgent, ray::IDLE, ...
        return name
    for argument in cmdline[:3]:
        base = os.path.basename(argument)
        if base == "dashboard.py":  # Ray's API server: started with include_dashboard=False too
            return "dashboard.py (API server)"
        if base.endswith(".py") or base in ("gcs_server", "raylet"):
            return base
    return name


# --------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    scale_s: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # per run
    jobs: dict[int, int] = field(default_factory=dict)  # N -> jobs per timed run
    dispatch_s: dict[str, list[float]] = field(default_factory=dict)  # per job
    head: list[ProcessMemory] = field(default_factory=list)
    actors: list[ProcessMemory] = field(default_factory=list)
    ray_start_s: float = 0.0
    problems: list[str] = field(default_factory=list)


def progress(started: float) -> Callable[[str], None]:
    def say(what: str) -> None:
        print(f"  [{time.perf_counter() - started:6.1f} s] {what}", file=sys.stderr, flush=True)

    return say


async def measure(args: argparse.Namespace, scratch: Path) -> Measured:
    measured = Measured()
    say = progress(time.perf_counter())
    step_s = args.step_ms / 1000
    cluster = None
    try:
        if "Ray" in args.backends:
            from inference.ray_workers import RayCluster

            cluster = RayCluster("")  # a private instance: num_cpus = max(cores, workers)
            started = time.perf_counter()
            await cluster.connect(workers=max(args.workers))
            measured.ray_start_s = time.perf_counter() - started
            say(f"Ray started in {measured.ray_start_s:.1f} s")
        pools = Pools(cluster)

        for n in args.workers:
            jobs = args.jobs_per_worker * n
            measured.jobs[n] = jobs
            async with AsyncExitStack() as stack:
                runs = [
                    await open_run(
                        stack,
                        pools,
                        backend,
                        n,
                        step_s,
                        scratch / f"scale-{backend}-{n}",
                        measured.problems,
                        args.users,
                    )
                    for backend in args.backends
                ]
                for run in runs:
                    await run.jobs(n, 1)  # warm-up: one short job for each worker
                for repeat in range(args.repeats):
                    for run in runs if repeat % 2 == 0 else runs[::-1]:
                        seconds = await run.jobs(jobs, args.steps)
                        measured.scale_s.setdefault((run.backend, n), []).append(seconds)
                        say(f"{run.backend:5} N={n}: {jobs} jobs in {seconds:.2f} s")
                if n == max(args.workers):
                    for run in runs:
                        if run.backend == "Ray":
                            pids = [pid for w in run.workers if (pid := getattr(w, "pid", None))]
                            measured.head, measured.actors = process_memory(pids)
                            if len(measured.actors) != n:
                                measured.problems.append(
                                    f"found {len(measured.actors)} of the {n} actors' processes"
                                )

        async with AsyncExitStack() as stack:
            runs = [
                await open_run(
                    stack,
                    pools,
                    backend,
                    1,
                    0.0,
                    scratch / f"dispatch-{backend}",
                    measured.problems,
                    1,
                )
                for backend in args.backends
            ]
            for _ in range(args.dispatch_warmup):
                for run in runs:
                    await run.jobs(1, 1)
            for i in range(args.dispatch_jobs):
                for run in runs if i % 2 == 0 else runs[::-1]:
                    seconds = await run.jobs(1, 1)
                    measured.dispatch_s.setdefault(run.backend, []).append(seconds)
            say(f"dispatch: {args.dispatch_jobs} jobs per backend")
    finally:
        if cluster is not None:
            await cluster.close()
            say("Ray stopped")
    return measured


# --------------------------------------------------------------------------- report


def images_per_s(measured: Measured, backend: str, n: int) -> float:
    return measured.jobs[n] / statistics.median(measured.scale_s[(backend, n)])


def efficiency(measured: Measured, backend: str, n: int) -> float:
    return images_per_s(measured, backend, n) / (n * images_per_s(measured, backend, 1))


def report(
    measured: Measured, args: argparse.Namespace, loadavg: tuple[float, float]
) -> tuple[list[str], bool]:
    """Print the tables; return the RESULTS.md cells and whether every job came back right."""
    job_s = args.steps * args.step_ms / 1000
    print(
        f"\n1. scale-out: FakeGenerator {args.steps} steps x {args.step_ms:g} ms = {job_s:g} s"
        f" per job, {args.jobs_per_worker} jobs per worker from {args.users} users, no batching;"
        f" median of {args.repeats} (goal: efficiency >= {EFFICIENCY_TARGET})"
    )
    rows = []
    for backend in args.backends:
        for n in args.workers:
            runs = measured.scale_s[(backend, n)]
            rate = images_per_s(measured, backend, n)
            rows.append(
                [
                    backend,
                    str(n),
                    str(measured.jobs[n]),
                    f"{statistics.median(runs):.2f} ({min(runs):.2f}-{max(runs):.2f})",
                    f"{rate:.2f}",
                    f"{rate / (n / job_s):.3f}",
                    f"{efficiency(measured, backend, n):.3f}" if 1 in args.workers else "-",
                ]
            )
    print_table(
        ["backend", "N", "jobs", "s median (min-max)", "images/s", "vs ideal", "efficiency"], rows
    )

    print(
        f"\n2. dispatch: one worker, FakeGenerator 1 step, no sleep; {args.dispatch_jobs} jobs"
        " per backend, one at a time, backends alternating"
    )
    rows = []
    for backend in args.backends:
        samples = [s * 1000 for s in measured.dispatch_s[backend]]
        rows.append(
            [
                backend,
                str(len(samples)),
                f"{statistics.mean(samples):.2f}",
                f"{percentile(samples, 50):.2f}",
                f"{percentile(samples, 99):.2f}",
                f"{max(samples):.2f}",
            ]
        )
    print_table(["backend", "jobs", "mean ms", "p50 ms", "p99 ms", "max ms"], rows)
    mean_ms = {b: statistics.mean(s) * 1000 for b, s in measured.dispatch_s.items()}
    if len(mean_ms) == 2:
        print(f"Ray − local: {mean_ms['Ray'] - mean_ms['local']:+.2f} ms per batch")

    if measured.actors:
        print(
            f"\n3. memory of the private Ray instance with {len(measured.actors)} actors up"
            " (FakeGenerator: no model, no torch); Ray started in"
            f" {measured.ray_start_s:.1f} s"
        )
        rows = [
            [p.label, str(p.pid), f"{p.rss_mb:.0f}", f"{p.uss_mb:.0f}"]
            for p in [*measured.head, *measured.actors]
        ]
        head_rss = sum(p.rss_mb for p in measured.head)
        head_uss = sum(p.uss_mb for p in measured.head)
        total = f"head total ({len(measured.head)} processes)"
        rows.append([total, "", f"{head_rss:.0f}", f"{head_uss:.0f}"])
        actor_rss = statistics.mean(p.rss_mb for p in measured.actors)
        actor_uss = statistics.mean(p.uss_mb for p in measured.actors)
        rows.append(["per actor (mean)", "", f"{actor_rss:.0f}", f"{actor_uss:.0f}"])
        print_table(["process", "pid", "RSS MB", "USS MB"], rows)

    for problem in measured.problems:
        print(f"PROBLEM: {problem}")

    def per_n(backend: str, value: Callable[[str, int], float], ns: Sequence[int]) -> str:
        if backend not in args.backends:
            return "-"
        named = [1, 2, 4] if 1 in ns else [2, 4]  # the N the column's title names
        return " / ".join(f"{value(backend, n):.2f}" for n in ns) + (
            "" if list(ns) == named else f" (N = {', '.join(map(str, ns))})"
        )

    def ips(backend: str, n: int) -> float:
        return images_per_s(measured, backend, n)

    def eff(backend: str, n: int) -> float:
        return efficiency(measured, backend, n)

    more = [n for n in args.workers if n > 1]
    effs = {(b, n): eff(b, n) for b in args.backends for n in more} if 1 in args.workers else {}
    if not effs:
        goal = "-"
    elif all(e >= EFFICIENCY_TARGET for e in effs.values()):
        goal = f"met (lowest {min(effs.values()):.2f})"
    else:
        missed = [f"{b} N={n} {e:.2f}" for (b, n), e in effs.items() if e < EFFICIENCY_TARGET]
        goal = "NOT met: " + ", ".join(missed)
    if len(mean_ms) == 2:
        dispatch = (
            f"{mean_ms['local']:.2f} / {mean_ms['Ray']:.2f}"
            f" ({mean_ms['Ray'] - mean_ms['local']:+.2f})"
        )
    else:
        dispatch = " / ".join(f"{b} {v:.2f}" for b, v in mean_ms.items())
    if measured.actors:
        head = (
            f"{sum(p.rss_mb for p in measured.head):.0f}"
            f" ({sum(p.uss_mb for p in measured.head):.0f}), {len(measured.head)}"
        )
        per_worker = (
            f"{statistics.mean(p.rss_mb for p in measured.actors):.0f}"
            f" ({statistics.mean(p.uss_mb for p in measured.actors):.0f})"
        )
    else:
        head = per_worker = "-"
    cells = [
        today(),
        device(),
        commit(),
        " → ".join(f"{x:.1f}" for x in loadavg),
        f"{args.steps} × {args.step_ms:g} ms; {args.jobs_per_worker}, {args.users}; {args.repeats}",
        per_n("local", ips, args.workers),
        per_n("local", eff, more) if 1 in args.workers else "-",
        per_n("Ray", ips, args.workers),
        per_n("Ray", eff, more) if 1 in args.workers else "-",
        goal,
        dispatch,
        head,
        per_worker,
    ]
    return cells, not measured.problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="pool sizes")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--steps", type=int, default=20, help="steps per scale-out job")
    parser.add_argument("--step-ms", type=float, default=25.0, help="FakeGenerator's sleep")
    parser.add_argument("--jobs-per-worker", type=int, default=8)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per backend and N")
    parser.add_argument("--dispatch-jobs", type=int, default=50, help="timed, per backend")
    parser.add_argument("--dispatch-warmup", type=int, default=5, help="untimed, per backend")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a quick look: 1 repeat, 4 jobs per worker, 20 dispatch jobs",
    )
    parser.add_argument("--no-record", action="store_true", help="don't touch RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.jobs_per_worker, args.dispatch_jobs = 1, 4, 20
    args.workers = sorted(set(args.workers))
    args.backends = [b for b in BACKENDS if b in args.backends]
    if min(args.workers) < 1 or args.repeats < 1 or args.users < 1 or args.dispatch_jobs < 1:
        parser.error("need workers, repeats, users and dispatch jobs >= 1")

    started = time.perf_counter()
    before = os.getloadavg()[0]  # other processes on the machine show in every figure
    with tempfile.TemporaryDirectory() as scratch:
        measured = asyncio.run(measure(args, Path(scratch)))
    loadavg = (before, os.getloadavg()[0])
    cells, correct = report(measured, args, loadavg)
    finish_run(started, loadavg, not args.no_record, (SECTION, INTRO, COLUMNS, cells))
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
