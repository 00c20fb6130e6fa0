"""Pure functions from job state to what Discord shows: text, embeds, history lines."""

from __future__ import annotations

import math

import discord

from inference.jobs import JobRecord, JobState, Lineage
from inference.types import GenerationRequest, Progress

EMBED_COLOUR = 0x5865F2
MAX_CONTENT = 2000  # Discord's cap on message content
ELLIPSIS = "…"


def discord_length(text: str) -> int:
    """Length in UTF-16 code units: never less than Discord's own count, so text that fits
    here is accepted (an emoji outside the BMP counts twice)."""
    # surrogatepass: a lone surrogate (JSON allows "\ud800") must not crash a reply.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def clip(text: str, limit: int = MAX_CONTENT) -> str:
    """`text`, or its start plus "…", within `limit` (Discord refuses a longer message, and
    a refused reply leaves the user with nothing)."""
    if discord_length(text) <= limit:
        return text
    budget = limit - discord_length(ELLIPSIS)
    kept: list[str] = []
    for char in text:
        budget -= 2 if ord(char) > 0xFFFF else 1
        if budget < 0:
            break
        kept.append(char)
    return "".join(kept).rstrip() + ELLIPSIS


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def queued_text(job_id: int, position: int, eta_s: float | None, prompt: str) -> str:
    where = "up next" if position <= 1 else f"#{position} in the queue"
    eta = "" if eta_s is None else f" · ready in about {format_duration(eta_s)}"
    return clip(f"🕒 **{clip(prompt, 200)}** — {where}{eta} (job {job_id})", MAX_CONTENT)


def progress_bar(fraction: float, width: int = 16) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def progress_text(job_id: int, progress: Progress | None, prompt: str) -> str:
    if progress is None:
        return clip(f"🎨 **{clip(prompt, 200)}** — starting… (job {job_id})", MAX_CONTENT)
    percent = round(progress.fraction * 100)
    return clip(
        f"🎨 **{clip(prompt, 200)}** — {progress_bar(progress.fraction)} {percent}% "
        f"(step {progress.step}/{progress.total}, job {job_id})",
        MAX_CONTENT,
    )


def result_embed(
    request: GenerationRequest, job_id: int, elapsed_s: float, notes: tuple[str, ...] = ()
) -> discord.Embed:
    embed = discord.Embed(description=clip(request.prompt, 4000), colour=EMBED_COLOUR)
    if request.negative_prompt:
        embed.add_field(name="Negative", value=clip(request.negative_prompt, 1024), inline=False)
    seeds = (
        str(request.seed)
        if request.count == 1
        else f"{request.seed}–{request.seed + request.count - 1}"
    )
    embed.add_field(name="Seed", value=seeds)
    embed.add_field(name="Model", value=request.model)
    embed.add_field(name="Size", value=f"{request.width}×{request.height}")
    embed.add_field(name="Steps", value=f"{request.steps} · {request.sampler}")
    embed.add_field(name="CFG", value=f"{request.guidance:g}")
    operation = operation_text(request)
    if operation is not None and request.source is not None:
        strength = request.source.strength
        embed.add_field(
            name="From image",
            value=operation if strength == 1 else f"{operation} · strength {strength:g}",
        )
    embed.add_field(
        name="Time", value=format_duration(elapsed_s) if elapsed_s >= 1 else f"{elapsed_s:.2f} s"
    )
    footer = f"job {job_id} · 🔄 re-roll · ❌ delete"
    if notes:
        footer = " · ".join(notes) + " · " + footer
    embed.set_footer(text=clip(footer, 2048))
    return embed


def operation_text(request: GenerationRequest) -> str | None:
    """What a job did to its picture ("upscale ×2", "zoom out ×1.5", "variation"); None for
    a job from a prompt alone."""
    source = request.source
    if source is None:
        return None
    if source.operation == "upscale":
        return f"upscale ×{source.scale:g}"
    if source.operation == "zoom_out":
        return f"zoom out ×{source.scale:g}"
    return "variation"


def lineage_text(request: GenerationRequest, parent: Lineage | None) -> str | None:
    """Where a job's picture came from, for /history and result embeds: "upscale ×2 of job
    41, image 2", "variation of job 41, image 1", "from an uploaded image"; None for a job
    from a prompt alone. Images count from 1 here, as people count them."""
    operation = operation_text(request)
    if operation is None:
        return None
    if parent is not None:
        return f"{operation} of job {parent.job_id}, image {parent.image_index + 1}"
    # No parent: the user's own attachment (or a parent job since deleted).
    if request.operation == "img2img":
        return "from an uploaded image"
    return f"{operation} of an uploaded image"


def history_line(record: JobRecord, link: str | None) -> str:
    states = {
        JobState.DONE: "✅",
        JobState.FAILED: "❌",
        JobState.CANCELLED: "🚫",
        JobState.QUEUED: "🕒",
        JobState.RUNNING: "🎨",
    }
    where = f" — [open]({link})" if link else ""
    # Failure reasons are written for users (InferenceError texts, delivery give-ups).
    failed = record.state is JobState.FAILED and record.error
    why = f" — {clip(record.error or '', 160)}" if failed else ""
    lineage = lineage_text(record.request, record.parent)
    origin = f" · ⤴ {lineage}" if lineage else ""
    return (
        f"{states[record.state]} **{record.id}** `{clip(record.request.prompt, 80)}` "
        f"seed {record.request.seed}{origin}{where}{why}"
    )
