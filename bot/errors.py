"""Errors users see. One handler turns them into ephemeral replies; nothing else reaches them.

Anything that is not a UserFacingError, an InferenceError or a LimitError is a bug or an
outage: it is logged with its traceback and the job id, and the user is told only
"generation failed (job 42)" or "something went wrong".
"""

from __future__ import annotations

from bot.limits import LimitError, RateLimited
from bot.render import clip
from inference.errors import InferenceError


class UserFacingError(Exception):
    """The message is written for the user and says what to do next."""


class ChannelNotAllowed(UserFacingError):
    pass


class BlockedWord(UserFacingError):
    pass


class NotAllowed(UserFacingError):
    """The user may not do this to someone else's work."""


class NotFound(UserFacingError):
    pass


# What users caused or may fix themselves: shown as-is, never logged as a failure.
EXPECTED_ERRORS = (UserFacingError, InferenceError, LimitError)


def user_message(error: BaseException, job_id: int | None = None) -> str:
    """The text shown for `error`; never a traceback, never internal details."""
    if isinstance(error, RateLimited):
        return clip(f"⏳ {error.reason}")
    if isinstance(error, EXPECTED_ERRORS):
        # Error texts may quote what the user typed (a name, a word): keep them sendable.
        return clip(f"⚠️ {error}")
    if job_id is not None:
        return f"❌ Generation failed (job {job_id}). The operator can find the details in the log."
    return "❌ Something went wrong on our side. Please try again in a moment."
