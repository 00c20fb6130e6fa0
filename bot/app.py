"""Start-up and shutdown: store, queue and bot opened in one AsyncExitStack, closed in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from contextlib import AsyncExitStack

from bot.client import Services, make_bot, point_discord_at
from bot.limits import LimitPolicy, RateLimiter
from bot.settings import Settings
from bot.startup import StartupError, prepare_data_dir
from bot.store import Store
from bot.submission import Submitter
from inference.generator import DiffusersGenerator
from inference.queue import JobQueue, QueueSettings
from inference.workers import LocalWorker, Worker, local_workers

logger = logging.getLogger(__name__)

PRUNE_EVERY_S = 600.0
CLOSE_TIMEOUT_S = 10.0


def limit_policy(settings: Settings) -> LimitPolicy:
    rate = settings.rate
    return LimitPolicy(
        images_per_window=rate.images_per_window,
        window_s=rate.window_minutes * 60,
        max_queued_per_user=settings.queue.max_queued_per_user,
        guild_images_per_window=rate.guild_images_per_window or None,
        guild_window_s=rate.guild_window_minutes * 60,
        exempt_user_ids=rate.exempt_user_ids,
        exempt_role_ids=rate.exempt_role_ids,
    )


def queue_settings(settings: Settings) -> QueueSettings:
    """No per-user cap in the queue: bot/limits.py owns it (a guild may raise or lower it)."""
    q = settings.queue
    return QueueSettings(
        output_dir=settings.output_dir,
        max_queued=q.max_queued,
        max_batch_images=q.max_batch_images,
        batching=q.batching,
        resume_after_restart=q.resume_after_restart,
    )


def generator_factory(settings: Settings) -> functools.partial[DiffusersGenerator]:
    """A DiffusersGenerator for the configured models; call it with `options=` (picklable:
    a Ray actor builds its own from it)."""
    return functools.partial(
        DiffusersGenerator,
        models=settings.model_specs(),
        upscalers=settings.upscaler_specs(),
        loras=settings.lora_specs(),
        embeddings=settings.embedding_specs(),
    )


async def start_workers(
    settings: Settings, generator: DiffusersGenerator, stack: AsyncExitStack
) -> list[Worker]:
    """The queue's workers, as [workers] says. `generator` (the bot's own, for model checks)
    is the single local worker's too: one copy of the models, as before there were pools."""
    config = settings.workers
    factory = generator_factory(settings)
    if config.backend == "local":
        if config.count == 1:
            return [LocalWorker(generator)]
        try:
            return list(local_workers(factory, settings.runtime, config.count))
        except ValueError as error:
            raise StartupError(str(error)) from None

    from inference.ray_workers import RayCluster, ray_workers

    cluster = RayCluster(config.ray_address)
    try:
        await cluster.connect(config.count)
    except ValueError as error:
        raise StartupError(str(error)) from None
    except Exception as error:
        where = f"at {config.ray_address}" if config.ray_address else "on this machine"
        raise StartupError(
            f"cannot start Ray {where} ({type(error).__name__}: {error}); check "
            "workers.ray_address, that `ray status` works on this machine, and that it has the "
            "cluster's token (~/.ray/auth_token from the head, or RAY_AUTH_TOKEN)"
        ) from None
    stack.push_async_callback(cluster.close)  # after the queue (and its workers) closed
    gpus = None if config.gpus_per_worker == "auto" else float(config.gpus_per_worker)
    return list(
        ray_workers(
            functools.partial(factory, options=settings.runtime),
            config.count,
            cluster.placement(gpus),
        )
    )


async def run_bot(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM or the gateway closes; then shut down cleanly."""
    point_discord_at(settings.discord.api_base, settings.discord.gateway_url)
    prepare_data_dir(settings.data_dir)  # 0700, files 0600 (umask 077)
    generator = generator_factory(settings)(options=settings.runtime)
    # Fail at start, with the model named, rather than on somebody's first /imagine.
    for spec in settings.models:
        info = generator.model_info(spec.name)
        logger.info(
            "model %s: %s %s, %d px", spec.name, info.family, info.variant, info.native_size
        )

    loop = asyncio.get_running_loop()
    unsent = 0
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows has no signal handlers
            loop.add_signal_handler(sig, stop.set)

    async with AsyncExitStack() as stack:
        store = await Store.open(settings.database)
        stack.push_async_callback(store.close)
        workers = await start_workers(settings, generator, stack)
        queue = JobQueue(workers, store.jobs, queue_settings(settings))
        # Closes the workers even if a start fails half-way; the running job goes back in line.
        stack.push_async_callback(queue.close)
        # Imports, tokenizer and the default model load before Discord is connected: the
        # first interaction after a start must be answered within 3 s like any other.
        started = loop.time()
        await queue.start(warm_up_model=settings.default_model)
        logger.info("warmed up in %.1f s", loop.time() - started)
        limiter = RateLimiter(store, limit_policy(settings))
        submitter = Submitter(settings, store, queue, limiter, generator)
        bot = make_bot(Services(settings, store, queue, limiter, submitter))
        stack.push_async_callback(bot.close)
        if stop.is_set():  # asked to stop while warming up
            return
        pruner = asyncio.create_task(prune_rate_events(limiter), name="prune-rate-events")
        stack.push_async_callback(cancel_and_wait, pruner)

        token = settings.discord.token.get_secret_value()
        runner = asyncio.create_task(bot.start(token), name="discord-client")
        stopper = asyncio.create_task(stop.wait(), name="wait-for-signal")
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if runner in done:
            runner.result()  # a login failure or a fatal gateway close: raise it
            return
        logger.info("signal received: shutting down")
        # Order matters: stop generating (the running job goes back in line), let results
        # already uploading finish, then leave Discord.
        await queue.close()
        unsent = await bot.delivery.drain()
        try:
            await asyncio.wait_for(bot.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            logger.warning("Discord did not close the connection in time; leaving anyway")
        # With the gateway down, discord.py may be asleep in its reconnect back-off (minutes):
        # do not wait it out.
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    if unsent:
        logger.warning(
            "stopped; %d result(s) not yet confirmed by Discord are sent after the next start",
            unsent,
        )
    else:
        logger.info("stopped cleanly")


async def prune_rate_events(limiter: RateLimiter, every_s: float = PRUNE_EVERY_S) -> None:
    """The rate ledger only needs the longest window: drop older events now and then."""
    while True:
        try:
            removed = await limiter.prune()
            if removed:
                logger.info("pruned %d old rate-limit events", removed)
        except Exception:
            logger.exception("pruning rate-limit events failed")
        await asyncio.sleep(every_s)


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
