"""From a user's options to a job in the queue: channel rules, blocklist, limits, submit.

Shared by /imagine, /reroll, the 🔄 reaction and the re-roll button, so every path applies the
same rules and counts against the limits of whoever asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from bot.errors import BlockedWord, ChannelNotAllowed, NotFound
from bot.limits import RateLimiter
from bot.settings import Settings
from bot.store import DeliveryTarget, Store
from inference.errors import InvalidRequestError, StorageUnavailableError
from inference.jobs import JobRecord, Lineage, Owner
from inference.queue import JobHandle, JobQueue
from inference.requests import RequestOptions, resolve_request
from inference.types import GenerationRequest, ImageSource, ModelInfo

logger = logging.getLogger(__name__)


class ModelCatalog(Protocol):
    def model_info(self, name: str) -> ModelInfo: ...


@dataclass(frozen=True)
class Actor:
    """Who is asking, as plain ids (Discord objects stop at the cogs)."""

    user_id: int
    guild_id: int | None
    channel_id: int
    role_ids: frozenset[int] = frozenset()


class Submitter:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        queue: JobQueue,
        limiter: RateLimiter,
        catalog: ModelCatalog,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.limiter = limiter
        self.catalog = catalog
        self._user_locks = KeyedLocks()

    async def check_channel_and_words(self, actor: Actor, texts: list[str]) -> None:
        if actor.guild_id is None:
            return
        rules = await self.store.guilds.get_guild_settings(actor.guild_id)
        allowed = rules.allowed_channel_ids
        if allowed and actor.channel_id not in allowed:
            channels = ", ".join(f"<#{c}>" for c in sorted(allowed))
            raise ChannelNotAllowed(f"/imagine works only in {channels} on this server.")
        for word in rules.blocked_words:
            pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
            if any(pattern.search(text) for text in texts):
                raise BlockedWord(
                    f"your prompt contains {word!r}, which this server does not allow. "
                    "Rephrase it and try again."
                )

    async def with_defaults(self, options: RequestOptions, actor: Actor) -> RequestOptions:
        """`options` with the user's /settings defaults, then the server's default style, in
        every option the user left out (what they typed always wins). A picture or an explicit
        width/height sets the size, so a default aspect ratio does not apply then."""
        defaults = (await self.store.users.get_defaults(actor.user_id)).as_options()
        if options.source is not None or options.width or options.height:
            defaults.pop("aspect_ratio", None)
        if "style" not in defaults and actor.guild_id is not None:
            server = await self.store.guilds.get_guild_settings(actor.guild_id)
            if server.default_style:
                defaults["style"] = server.default_style
        missing = {k: v for k, v in defaults.items() if getattr(options, k) is None}
        return replace(options, **missing)  # type: ignore[arg-type]

    async def prepare(self, options: RequestOptions, actor: Actor) -> GenerationRequest:
        """Validate without side effects: fast enough to answer inside Discord's 3 s."""
        model = options.model or self.settings.default_model
        info = self.catalog.model_info(model)
        request = resolve_request(
            replace(options, model=model),
            info,
            self.settings.limits,
            styles=self.settings.style_specs(),
            loras=self.settings.lora_specs(),
        )
        await self.check_channel_and_words(actor, [request.prompt])
        return request

    async def prepare_reroll(self, request: GenerationRequest, actor: Actor) -> GenerationRequest:
        """A re-roll is the re-roller's own new job: the same options, a new seed, checked
        against today's limits, channel rules and blocklist like any /imagine."""
        # A re-roll of a variation (or upscale, or zoom out) is another one from the same
        # picture: the picture sets the size.
        options = RequestOptions(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width if request.source is None else None,
            height=request.height if request.source is None else None,
            steps=request.steps,
            guidance=request.guidance,
            sampler=request.sampler,
            count=request.count,
            model=request.model,
            source=request.source,
        )
        return await self.prepare(options, actor)

    async def prepare_from_image(
        self,
        record: JobRecord,
        index: int,
        action: str,
        actor: Actor,
        *,
        prompt: str | None = None,
        negative_prompt: str | None = None,
    ) -> GenerationRequest:
        """The request behind a button under a result: `action` ("upscale", "subtle",
        "strong", "remix" or "zoom") on image `index` of `record`, with the job's prompt (or
        the remixed one), checked like any /imagine. Upscale and zoom out keep the image's
        seed (the same picture, bigger or wider); variations draw a new one."""
        images = record.outcome.images if record.outcome else ()
        if not 0 <= index < len(images):
            raise NotFound("that image is not part of this result any more.")
        image = images[index]
        if not await asyncio.to_thread(Path(image.path).is_file):
            raise NotFound("this image's file is gone from the bot's disk; it can't be reused.")
        config = self.settings.images
        request = record.request
        if action == "upscale":
            source = ImageSource(
                image.path,
                image.width,
                image.height,
                "upscale",
                config.upscale_strength,
                config.upscale_factor,
                config.upscaler or None,
            )
            seed, count = image.seed, 1
        elif action == "zoom":
            source = ImageSource(
                image.path, image.width, image.height, "zoom_out", 1.0, config.zoom_out_factor
            )
            seed, count = image.seed, 1
        elif action in ("subtle", "strong", "remix"):
            strength = (
                config.vary_subtle_strength if action == "subtle" else config.vary_strong_strength
            )
            source = ImageSource(image.path, image.width, image.height, "img2img", strength)
            seed, count = None, request.count  # one image, or a set like the job's
        else:
            raise InvalidRequestError("action", f"{action!r} is not an action on an image")
        # img2img runs steps × strength steps: enough steps that a low strength still runs
        # at least one, within the operator's cap.
        steps = min(
            max(request.steps, math.ceil(1 / source.strength)), self.settings.limits.max_steps
        )
        options = RequestOptions(
            prompt=request.prompt if prompt is None else prompt,
            negative_prompt=request.negative_prompt if negative_prompt is None else negative_prompt,
            steps=steps,
            guidance=request.guidance,
            seed=seed,
            sampler=request.sampler,
            count=count,
            model=request.model,
            source=source,
        )
        return await self.prepare(options, actor)

    async def submit(
        self,
        request: GenerationRequest,
        actor: Actor,
        target: DeliveryTarget,
        *,
        rerolled_from: int | None = None,
        parent: Lineage | None = None,
    ) -> JobHandle:
        """Count the images against the limits, then queue; refund if the queue refuses.

        The job is recorded together with `target` (where its result goes) and its rate
        charge, so it can be delivered, or refunded, whatever happens to Discord afterwards.
        """
        # One submission per user at a time: the queue count the limiter sees is then
        # current, so a burst (🔄 toggled 30 times) is refused by the queue cap before it is
        # charged, and the rate ledger never holds charges that are refunded a moment later.
        async with self._user_locks.hold(actor.user_id):
            return await self._submit(request, actor, target, rerolled_from, parent)

    async def _submit(
        self,
        request: GenerationRequest,
        actor: Actor,
        target: DeliveryTarget,
        rerolled_from: int | None,
        parent: Lineage | None,
    ) -> JobHandle:
        queued_now = self.queue.count_of(actor.user_id)
        try:
            event = await self.limiter.check_and_record(
                actor.user_id, actor.guild_id, actor.role_ids, request.count, queued_now
            )
        except sqlite3.OperationalError as error:
            raise storage_unavailable(error) from error
        record = functools.partial(
            self.store.jobs.create_job,
            target=target,
            rate_event_id=event,
            rerolled_from=rerolled_from,
            parent=parent,
        )
        try:
            return await self.queue.submit(
                request,
                Owner(actor.user_id, actor.guild_id),
                previews=self.settings.progress.previews,
                record=record,
            )
        except BaseException as error:
            with contextlib.suppress(sqlite3.Error):
                await self.limiter.refund(event)
            if isinstance(error, sqlite3.OperationalError):
                raise storage_unavailable(error) from error
            raise


class KeyedLocks:
    """One asyncio.Lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def storage_unavailable(error: sqlite3.OperationalError) -> StorageUnavailableError:
    """SQLite could not write (disk full, read-only file): the user gets the storage message."""
    logger.error("the database refused a write: %s", error)
    return StorageUnavailableError.because(disk_full="full" in str(error))
