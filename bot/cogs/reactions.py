"""🔄 re-rolls a result, ❌ deletes it (requester or moderator only); deleting a job's message
cancels the job."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord.ext import commands

from bot.views import DELETE, REROLL

if TYPE_CHECKING:
    from bot.client import ImagineBot


class ReactionsCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        # Raw events: the result message is usually not in the cache. Discord echoes the
        # bot's own 🔄/❌ back to it; those must not re-roll or delete anything.
        if self.bot.user is None or payload.user_id == self.bot.user.id:
            return
        emoji = str(payload.emoji)
        if emoji == REROLL:
            await self.bot.actions.reroll_from_reaction(payload)
        elif emoji == DELETE:
            await self.bot.actions.delete_from_reaction(payload)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self.bot.actions.message_deleted(payload.message_id)
