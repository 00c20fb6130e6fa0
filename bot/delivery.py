"""Following a job in Discord: throttled progress edits, then the result, exactly once.

Nothing lost, nothing twice, whatever Discord or the process does:

- The job is stored with its delivery target before it is queued (see `Actions.start`), so a
  result always has somewhere to go, even after a restart.
- Delivery is confirmed, then recorded: `Store.mark_delivered` runs only after Discord answered
  with the message. A crash in between sends again after the restart, and sending again posts
  nothing twice: the result is an edit of the job's own message (the same message, however
  often), or a channel post that carries a nonce made from the job id with `enforce_nonce`
  (Discord answers a repeat with the first message), and after a restart the channel's recent
  messages are searched for the job's images before posting.
- Discord failing: every attempt is bounded in time; discord.py already retries 5xx and waits
  out 429s. On top, the interaction route falls back to a channel post that mentions the
  requester, and whole attempts repeat after `DeliveryPolicy.retry_delays_s`. When all fail,
  the job ends failed with the reason (shown in /history), its images are kept and its rate
  charge is refunded.
- On SIGTERM, results already uploading get `shutdown_grace_s` to finish (`drain`).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot import render
from bot.errors import user_message
from bot.store import DeliveryTarget, Store
from bot.views import DELETE, REROLL, ResultView
from inference.errors import GenerationCancelled, InferenceError
from inference.images import FittedImage, fit_to_limit
from inference.jobs import JobRecord, JobState
from inference.queue import JobHandle, JobQueue
from inference.types import GenerationRequest

if TYPE_CHECKING:
    from bot.client import ImagineBot
    from bot.limits import RateLimiter

logger = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # unboosted guilds
QUEUED_REFRESH_S = 10.0  # how often a waiting job's position/ETA is re-shown
PROGRESS_EDIT_TIMEOUT_S = 15.0  # a stalled progress edit is skipped, not waited for
HISTORY_LOOKBACK = 50  # channel messages searched for an earlier post of a result

# What a call to Discord can fail with: an HTTP error (after discord.py's own retries), a
# dropped connection, or our own time limit.
DISCORD_FAILURES: tuple[type[BaseException], ...] = (
    discord.HTTPException,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)


@dataclass(frozen=True)
class DeliveryPolicy:
    attempt_timeout_s: float = 120.0  # one upload; a stalled one is abandoned and retried
    retry_delays_s: tuple[float, ...] = (5.0, 30.0, 120.0)  # pauses between whole attempts
    shutdown_grace_s: float = 20.0  # SIGTERM: time for uploads in flight to finish


@dataclass(frozen=True)
class FinalMessage:
    """What a finished job shows: its images with an embed, or a one-line notice."""

    job_id: int
    user_id: int
    created_at: float  # unix seconds; no post of this job can be older
    notice: str | None = None
    images: tuple[FittedImage, ...] = ()
    embed: discord.Embed | None = None


def describe_failure(error: BaseException) -> str:
    if isinstance(error, discord.HTTPException):
        return f"HTTP {error.status} {error.text[:120]}".strip()
    return f"{type(error).__name__} {error}".strip()


def is_permanent(error: BaseException) -> bool:
    """A 4xx (other than 429, which discord.py waits out) will not change by retrying."""
    return isinstance(error, discord.HTTPException) and 400 <= error.status < 500


def mention_only(user_id: int) -> discord.AllowedMentions:
    """Ping the requester and nobody else, whatever the prompt says."""
    return discord.AllowedMentions(
        everyone=False, roles=False, users=[discord.Object(id=user_id)], replied_user=False
    )


def result_nonce(instance_id: str, job_id: int) -> str:
    # Discord keeps a nonce (at most 25 characters) for a few minutes: a retried post of the
    # same result returns the first message instead of a second one. The database's own id
    # keeps job 5 of a wiped database from matching the old job 5.
    return f"{instance_id}-{job_id}"[:24]  # one character left for a suffix


class Deliverer:
    def __init__(
        self,
        bot: ImagineBot,
        store: Store,
        queue: JobQueue,
        limiter: RateLimiter,
        edit_interval_s: float,
        policy: DeliveryPolicy = DeliveryPolicy(),
    ) -> None:
        self.bot = bot
        self.store = store
        self.queue = queue
        self.limiter = limiter
        self.edit_interval_s = edit_interval_s
        self.policy = policy
        self._followers: set[asyncio.Task[None]] = set()  # progress; cancelled at shutdown
        self._uploads: set[asyncio.Task[None]] = set()  # final results; drained at shutdown
        self._delivering: set[int] = set()  # job ids with a final delivery under way
        self._abandoned: set[int] = set()  # job ids whose message was deleted: send nothing

    # --- task hygiene ----------------------------------------------------------------------

    def _spawn(
        self, tasks: set[asyncio.Task[None]], coroutine: Coroutine[Any, Any, None], name: str
    ) -> None:
        task = asyncio.create_task(coroutine, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(self._log_failure)

    @staticmethod
    def _log_failure(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def drain(self, grace_s: float | None = None) -> int:
        """Shutting down: stop following progress, give results being uploaded `grace_s` to
        finish, then cancel them. Returns how many were cut short (re-sent after the next
        start, since only a confirmed delivery is recorded)."""
        await _cancel_all(self._followers)
        grace = self.policy.shutdown_grace_s if grace_s is None else grace_s
        pending = set(self._uploads)
        if pending and grace > 0:
            logger.info("waiting up to %.0f s for %d result(s) being sent", grace, len(pending))
            _, pending = await asyncio.wait(pending, timeout=grace)
        await _cancel_all(self._uploads)
        return len(pending)

    async def close(self) -> None:
        await self.drain(grace_s=0)

    # --- following a job -------------------------------------------------------------------

    def follow(
        self,
        handle: JobHandle,
        target: DeliveryTarget,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        *,
        note: str | None = None,
    ) -> None:
        """Show the job's progress in its message, then deliver its result. `note` is shown
        under the progress (e.g. who asked for a re-roll)."""
        self._spawn(
            self._followers,
            self._follow(handle, target, upload_limit, note),
            f"follow-job-{handle.job_id}",
        )

    def abandon(self, job_id: int) -> None:
        """The job's message was deleted: show and send nothing more for it."""
        self._abandoned.add(job_id)

    async def _follow(
        self, handle: JobHandle, target: DeliveryTarget, upload_limit: int, note: str | None
    ) -> None:
        last_edit = float("-inf")
        last_shown: object = None
        async for update in handle.updates():
            if update.done() or handle.job_id in self._abandoned:
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
            target = await self._show_progress(handle, target, note)
        self._spawn(
            self._uploads,
            self._deliver_outcome(handle, target, upload_limit),
            f"deliver-job-{handle.job_id}",
        )

    async def _deliver_outcome(
        self, handle: JobHandle, target: DeliveryTarget, upload_limit: int
    ) -> None:
        try:
            result = await handle.result()
        except InferenceError as error:  # cancelled, or failed: no images, no charge
            await self._refund(handle.job_id)
            cancelled = isinstance(error, GenerationCancelled)
            notice = "🚫 Cancelled." if cancelled else user_message(error)
            final = FinalMessage(handle.job_id, handle.owner.user_id, handle.created_at, notice)
            await self.deliver(target, final)
            return
        pngs = [image.png for image in result.images]
        message = await self._result_message(
            handle.job_id,
            handle.owner.user_id,
            handle.created_at,
            result.request,
            pngs,
            result.elapsed_s,
            result.notes,
            upload_limit,
        )
        await self.deliver(target, message)

    async def _result_message(
        self,
        job_id: int,
        user_id: int,
        created_at: float,
        request: GenerationRequest,
        pngs: list[bytes],
        elapsed_s: float,
        notes: tuple[str, ...],
        upload_limit: int,
    ) -> FinalMessage:
        # Scaling a large PNG down takes a while: off the event loop.
        fitted = await asyncio.to_thread(
            lambda: tuple(
                fit_to_limit(png, upload_limit, f"job-{job_id}-{i}.png")
                for i, png in enumerate(pngs)
            )
        )
        fit_notes = sorted({f.note for f in fitted if f.note})
        embed = render.result_embed(request, job_id, elapsed_s, (*notes, *fit_notes))
        return FinalMessage(job_id, user_id, created_at, images=fitted, embed=embed)

    async def _show_progress(
        self, handle: JobHandle, target: DeliveryTarget, note: str | None
    ) -> DeliveryTarget:
        """Edit (or first post) the progress message; returns the target to use from now on."""
        if handle.state is JobState.QUEUED:
            content = render.queued_text(
                handle.job_id, handle.position, handle.eta_s, handle.request.prompt
            )
        else:
            content = render.progress_text(handle.job_id, handle.progress, handle.request.prompt)
        if note:
            content = render.clip(f"{content}\n{note}", render.MAX_CONTENT)
        attachments = []
        if handle.progress is not None and handle.progress.preview:
            attachments = [discord.File(io.BytesIO(handle.progress.preview), "preview.jpg")]
        try:
            async with asyncio.timeout(PROGRESS_EDIT_TIMEOUT_S):
                if target.message_id is None and not target.token_usable(time.time()):
                    # A nonce of its own: a post whose answer was lost is not made twice.
                    nonce = result_nonce(self.store.instance_id, handle.job_id) + "p"
                    message = await self._post(
                        target, content=content, files=attachments, nonce=nonce
                    )
                else:
                    message = await self._edit(target, content=content, attachments=attachments)
        except DISCORD_FAILURES as error:
            # A missed progress edit is harmless; the result is what matters.
            logger.info("job %d: progress edit failed: %s", handle.job_id, describe_failure(error))
            if is_permanent(error) and target.interaction_token is not None:
                # The interaction token died early (revoked, or never acknowledged): go on as
                # the bot, the message's author.
                return replace(target, interaction_token=None, token_expires_at=None)
            return target
        return await self._remember_message(target, message)

    async def _remember_message(
        self, target: DeliveryTarget, message: discord.Message | None
    ) -> DeliveryTarget:
        if message is None or message.id == target.message_id or target.channel_id is None:
            return target
        try:
            await self.store.jobs.set_delivery_target(
                target.job_id, channel_id=target.channel_id, message_id=message.id
            )
        except Exception:  # it only helps reactions/buttons find the job; not fatal
            logger.exception("job %d: could not store its message id", target.job_id)
        return replace(target, message_id=message.id)

    # --- sending ---------------------------------------------------------------------------

    async def _edit(self, target: DeliveryTarget, **fields: Any) -> discord.Message | None:
        """Edit the job's message: via the interaction webhook while its token lives (the
        message id is not needed: `@original`), else as the bot. None if there is no message
        to edit; raises what Discord raised."""
        if target.token_usable(time.time()):
            webhook = discord.Webhook.partial(
                target.application_id,  # type: ignore[arg-type]
                target.interaction_token,  # type: ignore[arg-type]
                client=self.bot,
            )
            message_id: Any = target.message_id or "@original"
            return await webhook.edit_message(message_id, **fields)
        if target.message_id is None or target.channel_id is None:
            return None
        channel = self.bot.get_partial_messageable(target.channel_id)
        return await channel.get_partial_message(target.message_id).edit(**fields)

    async def _post(self, target: DeliveryTarget, **fields: Any) -> discord.Message | None:
        if target.channel_id is None:
            return None
        channel = self.bot.get_partial_messageable(target.channel_id)
        return await channel.send(**fields)

    async def deliver(
        self, target: DeliveryTarget, final: FinalMessage, *, look_first: bool = False
    ) -> None:
        """Send a finished job's result or notice until Discord confirms it, then record it.

        `look_first`: a post may have gone out before a crash; search the channel first.
        """
        job_id = final.job_id
        if job_id in self._delivering:
            return  # already under way in this process
        self._delivering.add(job_id)
        try:
            if job_id in self._abandoned:
                self._abandoned.discard(job_id)
                await self.store.jobs.mark_delivered(job_id)  # its message was deleted: settle
                return
            failures: list[str] = []
            for delay in (0.0, *self.policy.retry_delays_s):
                await asyncio.sleep(delay)
                target, message, permanent = await self._attempt(
                    target, final, failures, look_first
                )
                if message is not None:
                    await self._delivered(target, final, message)
                    return
                look_first = True  # a post may have gone through with its answer lost
                if permanent:
                    break
            await self._give_up(final, failures)
        finally:
            self._delivering.discard(job_id)

    async def _attempt(
        self,
        target: DeliveryTarget,
        final: FinalMessage,
        failures: list[str],
        look_first: bool,
    ) -> tuple[DeliveryTarget, discord.Message | None, bool]:
        """One try along both routes: (target now, the confirmed message or None, whether
        no later try can succeed)."""
        timeout = self.policy.attempt_timeout_s
        mention = mention_only(final.user_id)
        # Route 1: the job's own message, through the live interaction. Only while the token
        # lives: past 15 minutes the requester gets a new message that mentions them, rather
        # than a silent edit far up the channel.
        if target.token_usable(time.time()):
            try:
                async with asyncio.timeout(timeout):
                    message = await self._edit(
                        target, **self._fields(final, edit=True), allowed_mentions=mention
                    )
                return target, message, False
            except DISCORD_FAILURES as error:
                _note_failure(failures, final.job_id, "the interaction", error)
                if is_permanent(error):
                    target = replace(target, interaction_token=None, token_expires_at=None)
        # Route 2: a new message in the channel that mentions the requester.
        if target.channel_id is None:
            failures.append("no channel to post to")
            return target, None, True
        try:
            async with asyncio.timeout(timeout):
                earlier = await self._find_posted(target, final) if look_first else None
                if earlier is not None:  # posted before a crash, or its answer was lost
                    logger.info("job %d: found in the channel, already delivered", final.job_id)
                    return target, earlier, False
                message = await self._post(
                    target,
                    **self._fields(final, edit=False),
                    allowed_mentions=mention,
                    nonce=result_nonce(self.store.instance_id, final.job_id),
                )
            return target, message, False
        except DISCORD_FAILURES as error:
            _note_failure(failures, final.job_id, f"channel {target.channel_id}", error)
            return target, None, is_permanent(error)

    def _fields(self, final: FinalMessage, *, edit: bool) -> dict[str, Any]:
        """The message's content for an edit of the job's message or a new channel post."""
        files = [discord.File(io.BytesIO(f.data), f.filename) for f in final.images]
        mention = f"<@{final.user_id}>"
        if final.notice is not None:
            text = final.notice
            if f"job {final.job_id}" not in text:
                text = f"{text} (job {final.job_id})"
            content = render.clip(text if edit else f"{mention} {text}", render.MAX_CONTENT)
            if edit:
                return {"content": content, "attachments": [], "embed": None, "view": None}
            return {"content": content}
        images = self.bot.services.settings.images
        view = ResultView(
            self.bot,
            len(final.images),
            upscale_factor=images.upscale_factor,
            zoom_factor=images.zoom_out_factor,
        )
        if edit:
            return {"content": mention, "embed": final.embed, "attachments": files, "view": view}
        return {
            "content": f"{mention} your image is ready",
            "embed": final.embed,
            "files": files,
            "view": view,
        }

    async def _find_posted(
        self, target: DeliveryTarget, final: FinalMessage
    ) -> discord.Message | None:
        """The bot's earlier post of this result in the channel, if one went out. Without Read
        Message History the search fails: then the post relies on its nonce alone."""
        assert target.channel_id is not None
        channel = self.bot.get_partial_messageable(target.channel_id)
        prefix = f"job-{final.job_id}-"
        marker = f"(job {final.job_id})"
        try:
            # Only messages since the job was made: an older one is another job's (of a
            # wiped database, say) that happens to have the same number.
            since = discord.Object(discord.utils.time_snowflake(_utc(final.created_at)))
            async for message in channel.history(limit=HISTORY_LOOKBACK, after=since):
                if self.bot.user is None or message.author.id != self.bot.user.id:
                    continue
                if final.images and any(a.filename.startswith(prefix) for a in message.attachments):
                    return message
                if final.notice is not None and marker in message.content:
                    return message
        except (discord.HTTPException, aiohttp.ClientError, OSError) as error:
            logger.info(
                "job %d: could not search channel %s: %s",
                final.job_id,
                target.channel_id,
                describe_failure(error),
            )
        return None

    async def _delivered(
        self, target: DeliveryTarget, final: FinalMessage, message: discord.Message | None
    ) -> None:
        message_id = message.id if message is not None else None
        try:
            await self.store.jobs.mark_delivered(
                final.job_id, channel_id=target.channel_id, message_id=message_id
            )
        except Exception:
            # Not recorded: the next start sends again, and finds this message first.
            logger.exception("job %d: delivered, but recording it failed", final.job_id)
        logger.info("job %d: delivered to channel %s", final.job_id, target.channel_id)
        if message_id is None or target.channel_id is None or not final.images:
            return
        if target.message_id is not None and target.message_id != message_id:
            # Posted anew: point the old progress message at the result (as the bot).
            try:
                await self._edit(
                    replace(target, interaction_token=None),
                    content=f"✅ Done: {self._link(target.channel_id, message_id)} "
                    f"(job {final.job_id})",
                    attachments=[],
                )
            except DISCORD_FAILURES as error:
                logger.info(
                    "job %d: could not update the progress message: %s",
                    final.job_id,
                    describe_failure(error),
                )
        await self._add_reactions(target.channel_id, message_id)

    def _link(self, channel_id: int, message_id: int) -> str:
        # A message from a partial channel does not know its guild: its jump_url would say
        # @me (a DM). The guild comes from the channel cache.
        guild = getattr(self.bot.get_channel(channel_id), "guild", None)
        where = guild.id if guild is not None else "@me"
        return f"https://discord.com/channels/{where}/{channel_id}/{message_id}"

    async def _give_up(self, final: FinalMessage, failures: list[str]) -> None:
        reason = "; ".join(failures[-2:]) or "unknown"
        logger.error(
            "job %d: giving up delivery after %d failed tries (%s); images kept",
            final.job_id,
            len(failures),
            reason,
        )
        note = (
            "not delivered: Discord did not accept the result; the images are kept on the bot"
            if final.images
            else "the notice could not be delivered"
        )
        try:
            event = await self.store.jobs.give_up_delivery(final.job_id, note)
            await self.limiter.refund(event)
        except Exception:
            logger.exception("job %d: could not record the failed delivery", final.job_id)

    async def _refund(self, job_id: int) -> None:
        """The requester got no images: the charge goes back."""
        try:
            await self.limiter.refund(await self.store.jobs.rate_event_of(job_id))
        except Exception:
            logger.exception("job %d: could not refund its rate charge", job_id)

    async def _add_reactions(self, channel_id: int, message_id: int) -> None:
        message = self.bot.get_partial_messageable(channel_id).get_partial_message(message_id)
        for emoji in (REROLL, DELETE):
            try:
                await message.add_reaction(emoji)
            except DISCORD_FAILURES as error:
                logger.info("could not add %s to message %d: %s", emoji, message_id, error)

    # --- after a restart -------------------------------------------------------------------

    async def resume_after_restart(self) -> None:
        """Follow jobs the queue recovered; deliver results finished but never delivered."""
        for handle in self.queue.recovered:
            target = await self.store.jobs.get_delivery_target(handle.job_id)
            if target is not None and target.channel_id is not None:
                self.follow(handle, target)
        for record in await self.store.jobs.undelivered_finished_jobs():
            target = await self.store.jobs.get_delivery_target(record.id)
            if target is None or target.channel_id is None:
                logger.error("job %d: finished but has nowhere to be delivered", record.id)
                continue
            self._spawn(
                self._uploads, self._redeliver(record, target), f"redeliver-job-{record.id}"
            )

    async def _redeliver(self, record: JobRecord, target: DeliveryTarget) -> None:
        user_id = record.owner.user_id
        if record.state is not JobState.DONE or record.outcome is None:
            notice = f"❌ {record.error or 'generation failed'}"
            await self.deliver(
                target, FinalMessage(record.id, user_id, record.created_at, notice), look_first=True
            )
            return
        try:
            pngs = [
                await asyncio.to_thread(Path(image.path).read_bytes)
                for image in record.outcome.images
            ]
        except OSError as error:
            logger.error("job %d: its images are gone (%s)", record.id, error)
            notice = "❌ the finished images were lost on the bot's disk; please ask again"
            await self.deliver(
                target, FinalMessage(record.id, user_id, record.created_at, notice), look_first=True
            )
            return
        message = await self._result_message(
            record.id,
            user_id,
            record.created_at,
            record.request,
            pngs,
            record.outcome.elapsed_s,
            record.outcome.notes,
            DEFAULT_UPLOAD_LIMIT,
        )
        await self.deliver(target, message, look_first=True)


def _note_failure(failures: list[str], job_id: int, route: str, error: BaseException) -> None:
    failures.append(f"{route}: {describe_failure(error)}")
    logger.warning("job %d: delivery through %s failed: %s", job_id, route, failures[-1])


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)


async def _cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
