"""Errors users see. One handler turns them into ephemeral replies; nothing else reaches them.

Anything that is not a UserFacingError, an InferenceError or a LimitError is a bug or an
outage: it is logged with its traceback and the job id, and the user is told only
"generation failed (job 42)" or "something went wrong".
"""

from __future__ import annotations

from bot.limits import LimitError, RateLimited
from inference.errors import InferenceError

# Discord refuses message content over 2,000 characters, and a refused reply leaves the user
# with nothing. Counted in UTF-16 code units (an emoji outside the BMP counts twice), which is
# never less than Discord's own count, so a fitted text is always accepted.
DISCORD_CONTENT_LIMIT = 2000
ELLIPSIS = "…"


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
        return fit_to_discord(f"⏳ {error.reason}")
    if isinstance(error, EXPECTED_ERRORS):
        # Error texts may quote what the user typed (a name, a word): keep them sendable.
        return fit_to_discord(f"⚠️ {error}")
    if job_id is not None:
        return f"❌ Generation failed (job {job_id}). The operator can find the details in the log."
    return "❌ Something went wrong on our side. Please try again in a moment."


def discord_length(text: str) -> int:
    """Length in UTF-16 code units: what Discord's 2,000-character limit can count at most."""
    # surrogatepass: a lone surrogate (JSON allows "\ud800") must not crash an error reply.
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def fit_to_discord(text: str, limit: int = DISCORD_CONTENT_LIMIT) -> str:
    """`text`, or its start plus "…", within Discord's content limit."""
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
