"""Following a job in Discord: throttled progress edits, then the result, exactly once.

The progress message is edited through the interaction's webhook while its token lives (15
min). Past that, or after a restart without a usable token, the result is posted to the channel
and mentions the requester. `Store.mark_delivered` is claimed before sending, so a result is
never delivered twice, even when a restart races with a delivery.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord

from bot import render
from bot.errors import user_message
from bot.store import DeliveryTarget, Store
from inference.errors import GenerationCancelled, InferenceError
from inference.images import fit_to_limit
from inference.jobs import JobRecord, JobState
from inference.queue import JobHandle, JobQueue
from inference.types import GenerationRequest

if TYPE_CHECKING:
    from bot.client import ImagineBot

logger = logging.getLogger(__name__)

REROLL = "🔄"
DELETE = "❌"
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # unboosted guilds
QUEUED_REFRESH_S = 10.0  # how often a waiting job's position/ETA is re-shown


class ResultView(discord.ui.View):
    """Re-roll and delete buttons. Fixed custom ids + bot.add_view keep them working after a
    restart; the job is looked up by the message id, so the buttons carry no state."""

    def __init__(self, bot: ImagineBot | None = None) -> None:
        super().__init__(timeout=None)
        self.bot = bot

    @discord.ui.button(emoji=REROLL, label="Re-roll", custom_id="imagine:reroll")
    async def reroll(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        assert self.bot is not None
        await self.bot.actions.reroll_from_button(interaction)

    @discord.ui.button(emoji=DELETE, label="Delete", custom_id="imagine:delete")
    async def delete(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        assert self.bot is not None
        await self.bot.actions.delete_from_button(interaction)


class Deliverer:
    def __init__(self, bot: ImagineBot, store: Store, queue: JobQueue, edit_interval_s: float):
        self.bot = bot
        self.store = store
        self.queue = queue
        self.edit_interval_s = edit_interval_s
        self._tasks: set[asyncio.Task[None]] = set()

    # --- task hygiene ----------------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- following a job -------------------------------------------------------------------

    def follow(
        self, handle: JobHandle, target: DeliveryTarget, upload_limit: int = DEFAULT_UPLOAD_LIMIT
    ) -> None:
        self.spawn(self._follow(handle, target, upload_limit), f"deliver-job-{handle.job_id}")

    async def _follow(self, handle: JobHandle, target: DeliveryTarget, upload_limit: int) -> None:
        last_edit = 0.0
        last_shown: object = None
        async for update in handle.updates():
            if update.done():
                break
            shown = (update.state, update.position, update.progress and update.progress.step)
            now = time.monotonic()
            # Discord allows ~5 edits per 5 s per channel: coalesce. Queue positions change
            # for every waiting job at once, so those refresh far less often than progress.
            interval = self.edit_interval_s
            if update.state is JobState.QUEUED and last_shown is not None:
                interval = max(interval, QUEUED_REFRESH_S)
            if shown == last_shown or now - last_edit < interval:
                continue
            last_shown, last_edit = shown, now
            target = await self._show_progress(handle, target)
        try:
            result = await handle.result()
        except GenerationCancelled:
            await self._finish_without_images(target, handle.job_id, "🚫 Cancelled.")
            return
        except InferenceError as error:
            await self._finish_without_images(target, handle.job_id, user_message(error))
            return
        files = [
            (image.png, f"job-{handle.job_id}-{i}.png") for i, image in enumerate(result.images)
        ]
        await self._deliver_images(
            target,
            handle.job_id,
            handle.owner.user_id,
            result.request,
            files,
            result.elapsed_s,
            result.notes,
            upload_limit,
        )

    async def _show_progress(self, handle: JobHandle, target: DeliveryTarget) -> DeliveryTarget:
        """Edit the progress message; returns the target to use from now on."""
        if handle.state is JobState.QUEUED:
            content = render.queued_text(
                handle.job_id, handle.position, handle.eta_s, handle.request.prompt
            )
        else:
            content = render.progress_text(handle.job_id, handle.progress, handle.request.prompt)
        attachments = []
        if handle.progress is not None and handle.progress.preview:
            attachments = [discord.File(io.BytesIO(handle.progress.preview), "preview.jpg")]
        try:
            await self._edit(target, content=content, attachments=attachments)
        except discord.HTTPException as error:
            # A missed progress edit is harmless; the result is what matters.
            logger.info("job %d: progress edit failed: %s", handle.job_id, error)
            if error.status == 401 and target.interaction_token is not None:
                # The interaction token died early (Discord revoked it, or the clocks
                # disagree): go on editing as the bot, the message's author.
                return replace(target, interaction_token=None, token_expires_at=None)
        return target

    # --- sending ---------------------------------------------------------------------------

    async def _edit(self, target: DeliveryTarget, **fields: Any) -> bool:
        """Edit the job's message: via the interaction webhook while its token lives, else as
        the bot. False when there is no message to edit; raises discord.HTTPException."""
        if target.message_id is None:
            return False
        if target.token_usable(time.time()):
            webhook = discord.Webhook.partial(
                target.application_id,  # type: ignore[arg-type]
                target.interaction_token,  # type: ignore[arg-type]
                client=self.bot,
            )
            await webhook.edit_message(target.message_id, **fields)
        else:
            channel = self.bot.get_partial_messageable(target.channel_id)  # type: ignore[arg-type]
            await channel.get_partial_message(target.message_id).edit(**fields)
        return True

    async def _try_edit(self, target: DeliveryTarget, **fields: Any) -> bool:
        try:
            return await self._edit(target, **fields)
        except discord.HTTPException as error:
            logger.info("job %d: edit failed (%s); posting to the channel", target.job_id, error)
            return False

    async def _finish_without_images(self, target: DeliveryTarget, job_id: int, text: str) -> None:
        if not await self.store.mark_delivered(job_id):
            return
        content = f"{text} (job {job_id})" if f"job {job_id}" not in text else text
        if not await self._try_edit(target, content=content, attachments=[], embed=None, view=None):
            record = await self.store.get_job(job_id)
            mention = f"<@{record.owner.user_id}> " if record else ""
            await self._send_to_channel(target, content=mention + content)

    async def _deliver_images(
        self,
        target: DeliveryTarget,
        job_id: int,
        user_id: int,
        request: GenerationRequest,
        files: list[tuple[bytes, str]],
        elapsed_s: float,
        notes: tuple[str, ...],
        upload_limit: int,
    ) -> None:
        if not await self.store.mark_delivered(job_id):
            logger.info("job %d: already delivered; not sending again", job_id)
            return
        fitted = [fit_to_limit(data, upload_limit, name) for data, name in files]
        fit_notes = sorted({f.note for f in fitted if f.note})
        embed = render.result_embed(request, job_id, elapsed_s, (*notes, *fit_notes))

        def attachments() -> list[discord.File]:  # a File can be sent only once
            return [discord.File(io.BytesIO(f.data), f.filename) for f in fitted]

        view = ResultView(self.bot)
        message_id = target.message_id
        # Only through the live interaction: past 15 minutes the requester gets a new message
        # that mentions them, rather than a silent edit far up the channel.
        edited = target.token_usable(time.time()) and await self._try_edit(
            target, content=f"<@{user_id}>", embed=embed, attachments=attachments(), view=view
        )
        if not edited:
            message = await self._send_to_channel(
                target,
                content=f"<@{user_id}> your image is ready",
                embed=embed,
                files=attachments(),
                view=view,
            )
            if message is not None and target.channel_id is not None:
                await self.store.set_delivery_target(
                    job_id, channel_id=target.channel_id, message_id=message.id
                )
                # Point the old progress message at the new one (as the bot: token is dead).
                await self._try_edit(
                    replace(target, interaction_token=None),
                    content=f"✅ Done: {message.jump_url} (job {job_id})",
                    attachments=[],
                )
            message_id = message.id if message else None
        if message_id is not None:
            await self._add_reactions(target.channel_id, message_id)  # type: ignore[arg-type]
        logger.info("job %d: delivered to channel %s", job_id, target.channel_id)

    async def _send_to_channel(
        self, target: DeliveryTarget, **fields: Any
    ) -> discord.Message | None:
        if target.channel_id is None:
            return None
        channel = self.bot.get_partial_messageable(target.channel_id)
        try:
            return await channel.send(**fields)
        except discord.HTTPException:
            logger.exception(
                "job %d: could not post to channel %s", target.job_id, target.channel_id
            )
            return None

    async def _add_reactions(self, channel_id: int, message_id: int) -> None:
        message = self.bot.get_partial_messageable(channel_id).get_partial_message(message_id)
        for emoji in (REROLL, DELETE):
            try:
                await message.add_reaction(emoji)
            except discord.HTTPException as error:
                logger.info("could not add %s to message %d: %s", emoji, message_id, error)

    # --- after a restart -------------------------------------------------------------------

    async def resume_after_restart(self) -> None:
        """Follow jobs the queue recovered; deliver results finished but never delivered."""
        for handle in self.queue.recovered:
            target = await self.store.get_delivery_target(handle.job_id)
            if target is not None and target.channel_id is not None:
                self.follow(handle, target)
        for record in await self.store.undelivered_finished_jobs():
            target = await self.store.get_delivery_target(record.id)
            if target is not None and target.channel_id is not None:
                self.spawn(self._redeliver(record, target), f"redeliver-job-{record.id}")

    async def _redeliver(self, record: JobRecord, target: DeliveryTarget) -> None:
        if record.state is not JobState.DONE or record.outcome is None:
            await self._finish_without_images(
                target, record.id, f"❌ {record.error or 'generation failed'}"
            )
            return
        files = [
            (await asyncio.to_thread(Path(image.path).read_bytes), f"job-{record.id}-{i}.png")
            for i, image in enumerate(record.outcome.images)
        ]
        await self._deliver_images(
            target,
            record.id,
            record.owner.user_id,
            record.request,
            files,
            record.outcome.elapsed_s,
            record.outcome.notes,
            DEFAULT_UPLOAD_LIMIT,
        )
