"""What users do to jobs: start one from an interaction, re-roll, delete.

Shared by slash commands, reactions and buttons, so each rule lives in one place.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import discord

from bot.delivery import DISCORD_FAILURES, describe_failure
from bot.errors import EXPECTED_ERRORS, NotAllowed, user_message
from bot.store import DeliveryTarget
from bot.submission import Actor
from bot.views import REROLL, ImageAction, RemixModal
from inference.errors import InferenceError
from inference.jobs import JobRecord, Lineage
from inference.types import GenerationRequest

if TYPE_CHECKING:
    from bot.client import ImagineBot

logger = logging.getLogger(__name__)

INTERACTION_TOKEN_LIFETIME_S = 15 * 60
REROLL_DEBOUNCE_S = 10.0  # one re-roll per user and image in this time


class Debouncer:
    """Lets one event per key through every `interval_s` (🔄 toggled 30 times is one re-roll)."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[int, int], float] = {}

    def allow(self, user_id: int, subject_id: int) -> bool:
        now = self._clock()
        if len(self._last) > 10_000:  # forget old keys so the map stays small
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
        last = self._last.get((user_id, subject_id))
        if last is not None and now - last < self.interval_s:
            return False
        self._last[(user_id, subject_id)] = now
        return True


def actor_of(interaction: discord.Interaction) -> Actor:
    roles = getattr(interaction.user, "roles", [])
    return Actor(
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id or 0,
        role_ids=frozenset(role.id for role in roles),
    )


def has_rights(
    member: discord.abc.User | None, permission: str, moderator_role_ids: frozenset[int]
) -> bool:
    """A server member with `permission` (a discord.Permissions flag name) or a configured
    moderator role. Outside a server nobody has rights over others' work."""
    if not isinstance(member, discord.Member):
        return False
    if getattr(member.guild_permissions, permission):
        return True
    return any(role.id in moderator_role_ids for role in member.roles)


def is_moderator(member: discord.abc.User | None, moderator_role_ids: frozenset[int]) -> bool:
    return has_rights(member, "manage_messages", moderator_role_ids)


class Actions:
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.services = bot.services
        self._reroll_debounce = Debouncer(REROLL_DEBOUNCE_S)
        self._image_debounce = Debouncer(REROLL_DEBOUNCE_S)

    def is_moderator(self, member: discord.abc.User | None) -> bool:
        return is_moderator(member, self.services.settings.discord.moderator_role_ids)

    async def start(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        *,
        rerolled_from: int | None = None,
        parent: Lineage | None = None,
    ) -> int | None:
        """Queue the job, acknowledge, and follow the job in the deferred message.

        Limits and the queue answer in milliseconds, so they run before the acknowledgement:
        a refusal can then be an ephemeral reply (after a public defer it could not be). The
        job is stored with its delivery target before any call to Discord, so a failing
        Discord can delay the result but never lose it.
        """
        target = DeliveryTarget(
            job_id=0,
            channel_id=interaction.channel_id,
            interaction_token=interaction.token,
            application_id=interaction.application_id,
            token_expires_at=interaction.created_at.timestamp() + INTERACTION_TOKEN_LIFETIME_S,
        )
        try:
            handle = await self.services.submitter.submit(
                request, actor_of(interaction), target, rerolled_from=rerolled_from, parent=parent
            )
        except EXPECTED_ERRORS as error:
            await self.bot.reply_ephemeral(interaction, user_message(error))
            return None
        target = replace(target, job_id=handle.job_id)
        try:
            await interaction.response.defer(thinking=True)
        except discord.InteractionResponded:
            pass  # acknowledged already: follow it as it is
        except Exception as error:
            # Unacknowledged (Discord's 3 s passed, Discord failed, anything): the stored job
            # stands and is followed; its result goes to the channel with a mention.
            logger.warning(
                "job %d: could not acknowledge the interaction (%s); the result will go to "
                "the channel",
                handle.job_id,
                describe_failure(error),
            )
            target = replace(target, interaction_token=None, token_expires_at=None)
        self.bot.delivery.follow(handle, target, interaction.filesize_limit)
        return handle.job_id

    # --- re-roll ---------------------------------------------------------------------------
    # One rule for 🔄, the button and /reroll: a re-roll is the re-roller's own new job, with
    # the same options and a new seed, checked and charged like any /imagine.

    async def reroll_from_button(self, interaction: discord.Interaction) -> None:
        record = await self._job_of_message(interaction.message.id if interaction.message else 0)
        if record is None:
            await self.bot.reply_ephemeral(interaction, "⚠️ I don't know this image any more.")
            return
        if not self._reroll_debounce.allow(interaction.user.id, interaction.message.id):  # type: ignore[union-attr]
            await self.bot.reply_ephemeral(
                interaction, "⏳ You just re-rolled this image; wait a few seconds."
            )
            return
        await self.reroll_job(interaction, record)

    async def reroll_job(self, interaction: discord.Interaction, record: JobRecord) -> None:
        try:
            request = await self.services.submitter.prepare_reroll(
                record.request, actor_of(interaction)
            )
        except EXPECTED_ERRORS as error:
            await self.bot.reply_ephemeral(interaction, user_message(error))
            return
        await self.start(interaction, request, rerolled_from=record.id, parent=record.parent)

    async def reroll_from_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        if not self._reroll_debounce.allow(payload.user_id, payload.message_id):
            logger.info(
                "re-roll by user %d on message %d ignored (debounced)",
                payload.user_id,
                payload.message_id,
            )
            return
        record = await self._job_of_message(payload.message_id)
        if record is None:
            return
        actor = Actor(
            user_id=payload.user_id,
            guild_id=payload.guild_id,
            channel_id=payload.channel_id,
            role_ids=frozenset(r.id for r in getattr(payload.member, "roles", [])),
        )
        submitter = self.services.submitter
        target = DeliveryTarget(0, payload.channel_id)
        try:
            request = await submitter.prepare_reroll(record.request, actor)
            handle = await submitter.submit(
                request, actor, target, rerolled_from=record.id, parent=record.parent
            )
        except EXPECTED_ERRORS as error:
            # No interaction, so no ephemeral reply; a public post would let anyone make the
            # bot spam the channel. The refusal is the reaction taken back.
            logger.info("re-roll of job %d by user %d refused: %s", record.id, actor.user_id, error)
            await self._take_back_reaction(payload, REROLL)
            return
        self.bot.delivery.follow(
            handle,
            replace(target, job_id=handle.job_id),
            note=f"🔄 re-roll of job {record.id} for <@{actor.user_id}>",
        )

    # --- from an image: upscale, vary, remix, zoom out ------------------------------------------
    # Each press is the presser's own new job from image `index` of the result, checked and
    # charged like any /imagine (as a re-roll is), and it remembers where it came from.

    async def from_image_button(
        self, interaction: discord.Interaction, action: ImageAction, index: int
    ) -> None:
        message_id = interaction.message.id if interaction.message else 0
        record = await self._job_of_message(message_id)
        if record is None or record.outcome is None:
            await self.bot.reply_ephemeral(interaction, "⚠️ I don't know this image any more.")
            return
        if action == "remix":
            # The form answers the interaction; the job starts when it is submitted.
            settings = self.services.settings
            await interaction.response.send_modal(
                RemixModal(
                    self.bot,
                    record.id,
                    index,
                    record.request.prompt,
                    record.request.negative_prompt,
                    settings.limits.max_prompt_chars,
                )
            )
            return
        if not self._image_debounce.allow(interaction.user.id, hash((message_id, action, index))):
            await self.bot.reply_ephemeral(
                interaction, "⏳ You just asked for this; wait a few seconds."
            )
            return
        await self._start_from_image(interaction, record, index, action)

    async def remix_submitted(
        self,
        interaction: discord.Interaction,
        job_id: int,
        index: int,
        prompt: str,
        negative_prompt: str,
    ) -> None:
        record = await self.services.store.jobs.get_job(job_id)
        if record is None or record.outcome is None:
            await self.bot.reply_ephemeral(interaction, "⚠️ I don't know this image any more.")
            return
        await self._start_from_image(
            interaction, record, index, "remix", prompt=prompt, negative_prompt=negative_prompt
        )

    async def _start_from_image(
        self,
        interaction: discord.Interaction,
        record: JobRecord,
        index: int,
        action: ImageAction,
        *,
        prompt: str | None = None,
        negative_prompt: str | None = None,
    ) -> None:
        try:
            request = await self.services.submitter.prepare_from_image(
                record,
                index,
                action,
                actor_of(interaction),
                prompt=prompt,
                negative_prompt=negative_prompt,
            )
        except EXPECTED_ERRORS as error:
            await self.bot.reply_ephemeral(interaction, user_message(error))
            return
        await self.start(interaction, request, parent=Lineage(record.id, index))

    async def _take_back_reaction(
        self, payload: discord.RawReactionActionEvent, emoji: str
    ) -> None:
        message = self.bot.get_partial_messageable(payload.channel_id).get_partial_message(
            payload.message_id
        )
        try:  # needs Manage Messages; without it the refusal is only in the log
            await message.remove_reaction(emoji, discord.Object(id=payload.user_id))
        except DISCORD_FAILURES as error:
            logger.info("could not take back %s on message %d: %s", emoji, message.id, error)

    # --- delete ----------------------------------------------------------------------------

    async def delete_from_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        record = await self._job_of_message(payload.message_id)
        if record is None:
            return
        message = self.bot.get_partial_messageable(payload.channel_id).get_partial_message(
            payload.message_id
        )
        if record.owner.user_id != payload.user_id and not self.is_moderator(payload.member):
            logger.info(
                "job %d: delete refused for user %d (not the owner)", record.id, payload.user_id
            )
            # Take their ❌ back off, so the refusal is visible (needs Manage Messages).
            with contextlib.suppress(discord.HTTPException):
                await message.remove_reaction("❌", discord.Object(id=payload.user_id))
            return
        await message.delete()
        logger.info("job %d: result deleted by user %d", record.id, payload.user_id)

    async def delete_from_button(self, interaction: discord.Interaction) -> None:
        message = interaction.message
        record = await self._job_of_message(message.id if message else 0)
        try:
            if record is None or message is None:
                raise NotAllowed("I don't know this image any more.")
            if record.owner.user_id != interaction.user.id and not self.is_moderator(
                interaction.user
            ):
                raise NotAllowed(
                    "only the person who made this image or a moderator can delete it."
                )
        except NotAllowed as error:
            await self.bot.reply_ephemeral(interaction, user_message(error))
            return
        await interaction.response.defer()
        await message.delete()
        logger.info("job %d: result deleted by user %d", record.id, interaction.user.id)

    async def message_deleted(self, message_id: int) -> None:
        """A job's progress message was deleted: whoever could delete it no longer wants the
        job, so it is cancelled and nothing is posted for it again."""
        record = await self._job_of_message(message_id)
        if record is None or record.state.finished:
            return
        self.bot.delivery.abandon(record.id)
        with contextlib.suppress(InferenceError):  # finished meanwhile
            await self.services.queue.cancel(record.id, user_id=0, is_moderator=True)
        logger.info("job %d: its message was deleted; cancelled", record.id)

    async def _job_of_message(self, message_id: int) -> JobRecord | None:
        return await self.services.store.jobs.job_by_message(message_id)
