"""/history, /reroll, /queue and /cancel: a user's own work."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import render
from bot.errors import NotFound
from inference.jobs import JobState

if TYPE_CHECKING:
    from bot.client import ImagineBot

PAGE_SIZE = 10


class HistoryCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="history")
    @app_commands.describe(page="Page number, newest first")
    async def history(
        self, interaction: discord.Interaction, page: app_commands.Range[int, 1, 1000] = 1
    ) -> None:
        """Your recent generations, with links"""
        store = self.bot.services.store
        user_id = interaction.user.id
        total = await store.jobs.count_history(user_id)
        records = await store.jobs.history(user_id, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        if not records:
            text = "You have no generations yet." if page == 1 else f"There is no page {page}."
            await interaction.response.send_message(text, ephemeral=True)
            return
        pages = math.ceil(total / PAGE_SIZE)
        lines = []
        targets = await store.jobs.delivery_targets([record.id for record in records])
        for record in records:
            target = targets.get(record.id)
            link = None
            if target and target.message_id and target.channel_id:
                guild = interaction.guild_id or "@me"
                link = (
                    f"https://discord.com/channels/{guild}/{target.channel_id}/{target.message_id}"
                )
            lines.append(render.history_line(record, link))
        footer = f"\nPage {page}/{pages} · re-roll any of them with /reroll job:<number>"
        await interaction.response.send_message(
            render.clip("\n".join(lines) + footer, render.MAX_CONTENT), ephemeral=True
        )

    @app_commands.command(name="reroll")
    @app_commands.describe(job="The job number from /history or an image's footer")
    async def reroll(self, interaction: discord.Interaction, job: int) -> None:
        """Generate an image again with a new seed, as your own new job"""
        record = await self.bot.services.store.jobs.get_job(job)
        # The rule of 🔄 and the button: anything posted in a server may be re-rolled by
        # anyone there; a job from a DM only by its owner.
        mine = record is not None and record.owner.user_id == interaction.user.id
        if record is None or not (mine or record.owner.guild_id is not None):
            raise NotFound(f"there is no job {job} you can re-roll; see /history for yours.")
        await self.bot.actions.reroll_job(interaction, record)

    @app_commands.command(name="queue")
    async def queue(self, interaction: discord.Interaction) -> None:
        """Your jobs in the queue, with position and ETA"""
        queue = self.bot.services.queue
        mine = queue.jobs_of(interaction.user.id)
        lines = [f"**{len(queue)}** job(s) in the queue."]
        if len(queue.workers) > 1:
            lines[0] += f" {queue.running_count()} running on {len(queue.workers)} workers."
        for handle in mine:
            if handle.state is JobState.RUNNING:
                where = "running now"
                if handle.progress:
                    where += f" ({round(handle.progress.fraction * 100)}%)"
            else:
                where = f"#{handle.position}"
            eta = render.format_duration(handle.eta_s)
            lines.append(
                f"• job **{handle.job_id}** `{render.clip(handle.request.prompt, 60)}` — "
                f"{where}, ready in about {eta}"
            )
        if not mine:
            lines.append("You have nothing queued.")
        await interaction.response.send_message(
            render.clip("\n".join(lines), render.MAX_CONTENT), ephemeral=True
        )

    @app_commands.command(name="cancel")
    @app_commands.describe(job="Job number (default: your most recent unfinished job)")
    async def cancel(self, interaction: discord.Interaction, job: int | None = None) -> None:
        """Cancel your queued or running job"""
        queue = self.bot.services.queue
        if job is None:
            mine = queue.jobs_of(interaction.user.id)
            if not mine:
                raise NotFound("you have no queued or running job.")
            # Skip jobs already stopping: with several workers (or a batch) the newest may be
            # running, and a second /cancel is meant for the next one.
            open_jobs = [h.job_id for h in mine if not h.cancel_requested]
            if not open_jobs:
                raise NotFound("your running jobs are already stopping at their next step.")
            job = max(open_jobs)
        # The queue owns the rules (unknown job, someone else's job): its errors are the reply.
        moderator = self.bot.actions.is_moderator(interaction.user)
        state = await queue.cancel(job, user_id=interaction.user.id, is_moderator=moderator)
        text = (
            f"🚫 Job {job} cancelled."
            if state is JobState.CANCELLED
            else f"🚫 Job {job} will stop at its next step."
        )
        await interaction.response.send_message(text, ephemeral=True)
