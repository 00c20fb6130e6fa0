"""From a user's options to a job in the queue: channel rules, blocklist, limits, submit.

Shared by /imagine, /reroll, the 🔄 reaction and the re-roll button, so every path applies the
same rules and counts against the limits of whoever asked.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, replace
from typing import Protocol

from bot.errors import BlockedWord, ChannelNotAllowed
from bot.limits import RateLimiter
from bot.settings import Settings
from bot.store import Store
from inference.jobs import Owner
from inference.queue import JobHandle, JobQueue
from inference.requests import MAX_SEED, RequestOptions, TokenCounter, resolve_request
from inference.types import GenerationRequest, ModelInfo

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
        count_tokens: TokenCounter | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.limiter = limiter
        self.catalog = catalog
        self.count_tokens = count_tokens

    async def check_channel_and_words(self, actor: Actor, texts: list[str]) -> None:
        if actor.guild_id is None:
            return
        rules = await self.store.get_guild_settings(actor.guild_id)
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

    async def prepare(self, options: RequestOptions, actor: Actor) -> GenerationRequest:
        """Validate without side effects: fast enough to answer inside Discord's 3 s."""
        model = options.model or self.settings.default_model
        info = self.catalog.model_info(model)
        request = resolve_request(
            replace(options, model=model),
            info,
            self.settings.limits,
            count_tokens=self.count_tokens,
        )
        await self.check_channel_and_words(actor, [request.prompt])
        return request

    async def submit(self, request: GenerationRequest, actor: Actor) -> JobHandle:
        """Count the images against the limits, then queue; refund if the queue refuses."""
        queued_now = self.queue.count_of(actor.user_id)
        event = await self.limiter.check_and_record(
            actor.user_id, actor.guild_id, actor.role_ids, request.count, queued_now
        )
        try:
            return await self.queue.submit(
                request,
                Owner(actor.user_id, actor.guild_id),
                previews=self.settings.progress.previews,
            )
        except BaseException:
            await self.limiter.refund(event)
            raise

    def reroll_of(self, request: GenerationRequest) -> GenerationRequest:
        """Same parameters, a new seed."""
        seed = random.SystemRandom().randint(0, MAX_SEED - request.count)
        return replace(request, seed=seed)
