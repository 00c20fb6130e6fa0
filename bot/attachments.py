"""A picture a user attaches to /imagine: checked, downloaded, decoded safely, kept on disk.

The declared size is checked before anything is downloaded; the bytes then go through
inference.image_input (only the PNG/JPEG/WebP decoders, a decompression-bomb check from the
header, EXIF orientation, alpha flattened, scaled to fit [limits]). The normalised picture is
saved as a PNG under the data folder, so the queued job, like any other, survives a restart.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import uuid
from pathlib import Path

import aiohttp
import discord

from bot.errors import UserFacingError
from bot.settings import Settings
from inference.errors import StorageUnavailableError
from inference.image_input import InputImage, attachment_too_big, load_input_image
from inference.types import ImageSource

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30.0


class AttachmentUnavailable(UserFacingError):
    """Discord's CDN did not hand over the file."""


async def image_source_from(
    attachment: discord.Attachment, settings: Settings, strength: float
) -> ImageSource:
    """The attachment as an img2img source at `strength`. Raises InvalidRequestError (field
    "image") for a file that is not a usable picture, AttachmentUnavailable when it cannot be
    downloaded, StorageUnavailableError when it cannot be kept."""
    attachment_too_big(attachment.size, settings.images.max_attachment_bytes)
    data = await _download(attachment)
    limits = settings.limits
    picture = await asyncio.to_thread(
        load_input_image,
        data,
        max_bytes=settings.images.max_attachment_bytes,
        max_pixels=limits.max_pixels,
        max_side=limits.max_side,
    )
    path = await asyncio.to_thread(_keep, picture, settings.inputs_dir)
    logger.info(
        "attachment %s (%d bytes, %s %dx%d) kept as %s (%dx%d)",
        attachment.id,
        len(data),
        picture.format,
        *picture.original_size,
        path.name,
        picture.width,
        picture.height,
    )
    return ImageSource(str(path), picture.width, picture.height, "img2img", strength)


def forget(source: ImageSource | None, settings: Settings) -> None:
    """Remove a kept attachment whose job was refused: nothing will ever read it."""
    if source is None:
        return
    path = Path(source.path)
    if path.parent == settings.inputs_dir:
        path.unlink(missing_ok=True)


async def _download(attachment: discord.Attachment) -> bytes:
    try:
        async with asyncio.timeout(DOWNLOAD_TIMEOUT_S):
            return await attachment.read()
    except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as error:
        logger.warning("attachment %s: download failed: %s", attachment.id, error)
        raise AttachmentUnavailable(
            "I could not download your image from Discord; please try again."
        ) from error


def _keep(picture: InputImage, directory: Path) -> Path:
    path = directory / f"{uuid.uuid4().hex}.png"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        picture.image.save(path, format="PNG", compress_level=1)
    except OSError as error:
        path.unlink(missing_ok=True)
        logger.error("could not keep an attached image in %s: %s", directory, error)
        raise StorageUnavailableError.because(disk_full=error.errno == errno.ENOSPC) from error
    return path
