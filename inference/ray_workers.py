"""Workers on Ray: one actor per worker, each holding its own generator, on any machine of a
Ray cluster. Needs the optional extra: `pip install 'imagine-bot[ray]'`.

The queue, the store and the Discord connection stay in the bot's process; an actor only runs
the batches it is handed. A batch is a streaming actor call: progress (and previews) come back
as they happen, then the results as PNG bytes. Cancellation is a second, concurrent call that
the actor's event loop takes while its generating thread works. Every Ray call is awaited or
runs in a thread: none blocks the bot's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.errors import (
    GenerationCancelled,
    GenerationFailedError,
    InferenceError,
    WorkerUnavailableError,
)
from inference.types import GenerationRequest, GenerationResult, Progress
from inference.workers import (
    BatchCancelled,
    BatchProgress,
    GeneratorFactory,
    ProgressThrottle,
    WorkerLostError,
)

logger = logging.getLogger(__name__)

CANCEL_POLL_S = 0.1  # how often a running batch's cancel flags are checked and sent
ACTOR_START_TIMEOUT_S = 120.0  # for the cluster to place a worker's actor and start it
CONNECT_TIMEOUT_S = 60.0  # for ray.init to start or join a cluster


class GeneratorActor:
    """Runs in the actor's process. Async, so `cancel` runs while a batch is generating: the
    blocking generator runs on the actor's one worker thread, as it would in the bot."""

    def __init__(self, make_generator: GeneratorFactory, name: str, log_level: int) -> None:
        # Ray passes the actor's stderr on to the bot's, each line marked with its process.
        logging.basicConfig(
            level=log_level, format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s"
        )
        self.name = name
        self.generator = make_generator()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-worker")
        self.cancelled: dict[int, set[int]] = {}  # batch id -> cancelled request indices
        self.last_finished = 0  # batch ids only grow: a cancel for one this old came too late

    def pid(self) -> int:
        return os.getpid()

    async def warm_up(self, model: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.generator.warm_up, model)

    async def cancel(self, batch_id: int, indices: list[int]) -> None:
        if batch_id > self.last_finished:  # it may arrive before its batch starts
            self.cancelled.setdefault(batch_id, set()).update(indices)

    async def generate(
        self, batch_id: int, job_ids: list[int], requests: list[GenerationRequest], previews: bool
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Yields ("progress", index, Progress)… then one of ("results", list),
        ("cancelled",) or ("failed", InferenceError)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        throttle = ProgressThrottle(len(requests))
        cancelled = self.cancelled.setdefault(batch_id, set())

        def on_progress(index: int, progress: Progress) -> None:  # generating thread
            if throttle.should_send(index, progress):
                loop.call_soon_threadsafe(events.put_nowait, ("progress", index, progress))

        run = functools.partial(
            self.generator.generate, requests, on_progress, cancelled.__contains__, previews
        )
        future = loop.run_in_executor(self.executor, run)
        # Scheduled after every progress event already on its way: they come out first.
        future.add_done_callback(lambda _: events.put_nowait(("done",)))
        try:
            while (event := await events.get())[0] != "done":
                yield event
            try:
                results = future.result()
            except GenerationCancelled:
                yield ("cancelled",)
            except InferenceError as error:
                yield ("failed", error)
            except Exception:
                logging.getLogger(__name__).exception("jobs %s: generation failed", job_ids)
                yield ("failed", GenerationFailedError(f"generation failed (jobs {job_ids})"))
            else:
                yield ("results", results)
        finally:
            self.cancelled.pop(batch_id, None)
            self.last_finished = max(self.last_finished, batch_id)


@dataclass(frozen=True)
class RayPlacement:
    """What each worker's actor reserves on the cluster."""

    num_gpus: float
    num_cpus: float = 1.0  # the thread that feeds the GPU


class RayWorker:
    """One worker as the queue sees it (inference.workers.Worker), backed by one actor."""

    def __init__(self, name: str, make_generator: GeneratorFactory, placement: RayPlacement):
        self.name = name
        self.make_generator = make_generator
        self.placement = placement
        self.pid: int | None = None  # the actor's process, for the log (and the fault tests)
        self._actor: Any = None
        self._batches = 0

    async def start(self, warm_up_model: str | None) -> None:
        import ray

        actor_class = ray.remote(GeneratorActor)
        self._actor = actor_class.options(
            num_gpus=self.placement.num_gpus,
            num_cpus=self.placement.num_cpus,
            max_restarts=0,  # the queue replaces a lost worker itself, and requeues its jobs
        ).remote(self.make_generator, self.name, logging.getLogger().getEffectiveLevel())
        try:
            # An actor waits, silently, until the cluster has room for it.
            self.pid = await asyncio.wait_for(self._actor.pid.remote(), ACTOR_START_TIMEOUT_S)
            logger.info("worker %s: Ray actor started in process %d", self.name, self.pid)
            if warm_up_model is not None:
                await self._actor.warm_up.remote(warm_up_model)
        except TimeoutError:
            await self.close()
            raise WorkerUnavailableError(
                f"worker {self.name} found no room on the Ray cluster in "
                f"{ACTOR_START_TIMEOUT_S:.0f} s (it needs {self.placement.num_gpus:g} GPU and "
                f"{self.placement.num_cpus:g} CPU): see `ray status`, and lower workers.count "
                "or workers.gpus_per_worker"
            ) from None
        except ray.exceptions.RayTaskError as error:  # e.g. a bad device: the cause says so
            cause = error.cause
            raise cause if isinstance(cause, InferenceError) else error from None
        except ray.exceptions.RayActorError as error:
            raise WorkerUnavailableError(
                f"worker {self.name} died while starting ({type(error).__name__}); "
                "its log is in Ray's session folder (ray/session_latest/logs)"
            ) from None

    async def run(
        self,
        requests: Sequence[GenerationRequest],
        on_progress: BatchProgress,
        is_cancelled: BatchCancelled,
        want_previews: bool,
        job_ids: Sequence[int] = (),
    ) -> list[GenerationResult | None]:
        import ray

        self._batches += 1
        batch_id = self._batches
        stream = self._actor.generate.remote(batch_id, list(job_ids), list(requests), want_previews)
        watcher = asyncio.create_task(self._send_cancels(batch_id, len(requests), is_cancelled))
        outcome: tuple[Any, ...] | None = None
        try:
            async for reference in stream:
                event = await reference
                if event[0] == "progress":
                    on_progress(event[1], event[2])
                else:
                    outcome = event
        except (
            ray.exceptions.RayActorError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.WorkerCrashedError,
        ) as error:
            raise WorkerLostError(f"{type(error).__name__} (process {self.pid})") from None
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if outcome is None:
            raise WorkerLostError(f"the batch ended without a result (process {self.pid})")
        if outcome[0] == "cancelled":
            raise GenerationCancelled()
        if outcome[0] == "failed":
            raise outcome[1]
        return list(outcome[1])

    async def _send_cancels(self, batch_id: int, size: int, is_cancelled: BatchCancelled) -> None:
        """Tells the actor about cancellations (and shutdown) while its batch runs."""
        sent: set[int] = set()
        while True:
            await asyncio.sleep(CANCEL_POLL_S)
            new = [i for i in range(size) if i not in sent and is_cancelled(i)]
            if new:
                sent.update(new)
                self._actor.cancel.remote(batch_id, new)  # taken between two steps

    async def replace(self) -> None:
        await self.close()
        await self.start(None)

    async def close(self) -> None:
        actor, self._actor = self._actor, None
        if actor is None:
            return
        import ray

        with contextlib.suppress(Exception):  # already dead, or Ray already shut down
            await asyncio.to_thread(ray.kill, actor, no_restart=True)


class RayCluster:
    """The connection to Ray: a private instance the bot starts (and stops), or a cluster
    started with `ray start` that it joins (and leaves running).

    `ray.init` and `ray.shutdown` run on one thread that lives as long as the connection:
    Ray ties its head processes to the thread that started them (Linux's parent-death
    signal), so they must not start on a pool thread that may end, nor block the event loop.
    If the bot is killed, they die with it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._release = threading.Event()
        self._owner: threading.Thread | None = None

    @property
    def started_here(self) -> bool:
        return not self.address

    async def connect(self, workers: int) -> None:
        # Ray's core installs a crash handler for SIGTERM in this process that prints a stack
        # and makes the bot's clean shutdown end in an abort (exit -6): the bot handles SIGTERM
        # itself. Read when ray loads; inherited by the processes Ray starts.
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        if not self.started_here:
            _use_the_clusters_token()  # also read when ray loads
        try:
            import ray
        except ImportError:
            raise ValueError(
                "workers.backend is 'ray' but Ray is not installed: "
                "pip install 'imagine-bot[ray]' (or set workers.backend = 'local')"
            ) from None
        options: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
        if self.started_here:
            # "local": a new instance of its own, even where `ray start` left one running
            # (ray.init would otherwise join that). Every worker reserves one CPU for the
            # thread that feeds its device.
            options["address"] = "local"
            options["num_cpus"] = max(os.cpu_count() or 1, workers)
        else:
            options["address"] = self.address
            await asyncio.to_thread(_check_reachable, self.address)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if not ready.done():
                ready.set_result(None) if error is None else ready.set_exception(error)

        def tell(error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the bot gave up waiting and stopped
                loop.call_soon_threadsafe(settle, error)

        def own() -> None:
            try:
                ray.init(**options)
            except Exception as error:
                tell(error)
                return
            tell(None)
            self._release.wait()
            ray.shutdown()

        self._owner = threading.Thread(target=own, name="ray-owner", daemon=True)
        self._owner.start()
        try:
            # ray.init retries an unanswering cluster for minutes, printing one line a second.
            await asyncio.wait_for(asyncio.shield(ready), CONNECT_TIMEOUT_S)
        except TimeoutError:
            self._owner = None  # stuck in ray.init: nothing to shut down
            raise TimeoutError(
                f"no answer from the Ray cluster in {CONNECT_TIMEOUT_S:.0f} s"
            ) from None
        resources = ray.cluster_resources()
        logger.info(
            "Ray: %s, %g CPUs, %g GPUs",
            "private instance" if self.started_here else f"joined {self.address}",
            resources.get("CPU", 0),
            resources.get("GPU", 0),
        )

    def placement(self, gpus_per_worker: float | None) -> RayPlacement:
        """`None`: one GPU per worker if the cluster has GPUs, else none."""
        import ray

        if gpus_per_worker is None:
            gpus_per_worker = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        return RayPlacement(num_gpus=gpus_per_worker)

    async def close(self) -> None:
        """Disconnects; a private instance stops with its processes. Idempotent."""
        owner, self._owner = self._owner, None
        if owner is not None:
            self._release.set()
            await asyncio.to_thread(owner.join, CONNECT_TIMEOUT_S)


def _check_reachable(address: str) -> None:
    """A `host:port` nobody answers on fails now, with the reason, rather than after ray.init's
    minutes of retries. (`auto` is Ray's to check.)"""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise ConnectionError(
            f"nothing answers at {address} ({error.strerror or error}): is the head's "
            "`ray start --head` running, and is that its address?"
        ) from None


def _use_the_clusters_token() -> None:
    """`ray start` secures a cluster with a token (Ray ≥ 2.50), but ray.init sends it to an
    address given as host:port only in token mode: take that mode when a token is at hand
    (RAY_AUTH_TOKEN, or the file `ray start` wrote), unless the operator chose one."""
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def ray_workers(
    make_generator: GeneratorFactory, count: int, placement: RayPlacement
) -> list[RayWorker]:
    return [RayWorker(f"ray {index}", make_generator, placement) for index in range(count)]
