"""What users do to jobs: start one from an interaction, re-roll, delete.

Shared by slash commands, reactions and buttons, so each rule lives in one place.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import discord

from bot.errors import EXPECTED_ERRORS, NotAllowed, user_message
from bot.render import queued_text
from bot.store import DeliveryTarget
from bot.submission import Actor
from inference.jobs import JobRecord
from inference.types import GenerationRequest

if TYPE_CHECKING:
    from bot.client import ImagineBot

logger = logging.getLogger(__name__)

INTERACTION_TOKEN_LIFETIME_S = 15 * 60


def actor_of(interaction: discord.Interaction) -> Actor:
    roles = getattr(interaction.user, "roles", [])
    return Actor(
        user_id=interaction.user.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id or 0,
        role_ids=frozenset(role.id for role in roles),
    )


def is_moderator(member: discord.abc.User | None, moderator_role_ids: frozenset[int]) -> bool:
    if not isinstance(member, discord.Member):
        return False
    if member.guild_permissions.manage_messages:
        return True
    return any(role.id in moderator_role_ids for role in member.roles)


class Actions:
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot
        self.services = bot.services

    def is_moderator(self, member: discord.abc.User | None) -> bool:
        return is_moderator(member, self.services.settings.discord.moderator_role_ids)

    async def start(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        *,
        rerolled_from: int | None = None,
    ) -> int | None:
        """Queue the job, acknowledge, and follow the job in the deferred message.

        Limits and the queue answer in milliseconds, so they run before the acknowledgement:
        a refusal can then be an ephemeral reply (after a public defer it could not be).
        """
        try:
            handle = await self.services.submitter.submit(request, actor_of(interaction))
        except EXPECTED_ERRORS as error:
            await interaction.response.send_message(user_message(error), ephemeral=True)
            return None
        try:
            await interaction.response.defer(thinking=True)
        except discord.HTTPException:
            # Too late to answer (Discord's 3 s passed): nobody would see the result.
            logger.warning("job %d: interaction expired before it was acknowledged", handle.job_id)
            await self.services.queue.cancel(handle.job_id, user_id=0, is_moderator=True)
            raise
        store = self.services.store
        message = await interaction.original_response()
        target = DeliveryTarget(
            job_id=handle.job_id,
            channel_id=interaction.channel_id,
            message_id=message.id,
            interaction_token=interaction.token,
            application_id=interaction.application_id,
            token_expires_at=interaction.created_at.timestamp() + INTERACTION_TOKEN_LIFETIME_S,
        )
        await store.set_delivery_target(
            handle.job_id,
            channel_id=target.channel_id or 0,
            message_id=target.message_id,
            interaction_token=target.interaction_token,
            application_id=target.application_id,
            token_expires_at=target.token_expires_at,
        )
        if rerolled_from is not None:
            await store.set_rerolled_from(handle.job_id, rerolled_from)
        await interaction.edit_original_response(
            content=queued_text(handle.job_id, handle.position, handle.eta_s, request.prompt)
        )
        self.bot.delivery.follow(handle, target, interaction.filesize_limit)
        return handle.job_id

    # --- re-roll ---------------------------------------------------------------------------

    async def reroll_from_button(self, interaction: discord.Interaction) -> None:
        record = await self._job_of_message(interaction.message.id if interaction.message else 0)
        if record is None:
            await self.bot.reply_ephemeral(interaction, "⚠️ I don't know this image any more.")
            return
        await self.reroll_job(interaction, record)

    async def reroll_job(self, interaction: discord.Interaction, record: JobRecord) -> None:
        submitter = self.services.submitter
        try:
            await submitter.check_channel_and_words(actor_of(interaction), [record.request.prompt])
        except EXPECTED_ERRORS as error:
            await self.bot.reply_ephemeral(interaction, user_message(error))
            return
        await self.start(interaction, submitter.reroll_of(record.request), rerolled_from=record.id)

    async def reroll_from_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        record = await self._job_of_message(payload.message_id)
        if record is None:
            return
        actor = Actor(
            user_id=payload.user_id,
            guild_id=payload.guild_id,
            channel_id=payload.channel_id,
            role_ids=frozenset(r.id for r in getattr(payload.member, "roles", [])),
        )
        channel = self.bot.get_partial_messageable(payload.channel_id)
        submitter = self.services.submitter
        request = submitter.reroll_of(record.request)
        try:
            await submitter.check_channel_and_words(actor, [request.prompt])
            handle = await submitter.submit(request, actor)
        except EXPECTED_ERRORS as error:
            # No interaction, so no ephemeral reply: a short-lived mention instead.
            await channel.send(f"<@{actor.user_id}> {user_message(error)}", delete_after=15)
            return
        message = await channel.send(
            queued_text(handle.job_id, handle.position, handle.eta_s, request.prompt)
            + f"\n🔄 re-roll of job {record.id} for <@{actor.user_id}>"
        )
        await self.services.store.set_delivery_target(
            handle.job_id, channel_id=payload.channel_id, message_id=message.id
        )
        await self.services.store.set_rerolled_from(handle.job_id, record.id)
        target = DeliveryTarget(handle.job_id, payload.channel_id, message.id)
        self.bot.delivery.follow(handle, target)

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

    async def _job_of_message(self, message_id: int) -> JobRecord | None:
        return await self.services.store.job_by_message(message_id)
