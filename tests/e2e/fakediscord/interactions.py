"""Interactions the fake has sent to the bot, and what the bot answered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .changes import ChangeFeed
from .commands import RegisteredCommand
from .constants import CallbackType, InteractionType
from .models import Attachment, MessageRecord, User
from .util import Clock

DEFAULT_WAIT = 5.0


@dataclass(eq=False)
class InteractionHandle:
    """One INTERACTION_CREATE the fake dispatched; the driver's handle on its outcome.

    ``callback_type`` is the response type the bot sent (4 message, 5 deferred, 6 deferred
    update, 7 update, 8 autocomplete, 9 modal); ``original`` the response message (for 4 and
    5, and for 7 the message it updated); ``followups`` the messages sent with the token.
    """

    id: int
    token: str
    type: InteractionType
    application_id: int
    user: User
    guild_id: int | None
    channel_id: int
    created_at: float  # on the server's monotonic clock
    token_lifetime: float
    ack_deadline: float
    attachment_size_limit: int
    clock: Clock = field(repr=False)
    changes: ChangeFeed = field(repr=False)
    command: RegisteredCommand | None = None
    source_message: MessageRecord | None = None
    payload: dict[str, Any] = field(default_factory=dict, repr=False)
    # files the user attached to the command's ATTACHMENT options (in data.resolved)
    attachments: list[Attachment] = field(default_factory=list, repr=False)
    callback_type: int | None = None
    callback_data: dict[str, Any] | None = field(default=None, repr=False)
    acknowledged_at: float | None = None
    callback_attempted_at: float | None = None  # the first callback request, even a refused one
    original: MessageRecord | None = None
    followups: list[MessageRecord] = field(default_factory=list)
    choices: list[dict[str, Any]] | None = None
    modal: dict[str, Any] | None = None
    rejected: list[tuple[int, int]] = field(default_factory=list)  # (HTTP status, Discord code)
    revoked: bool = False

    # --- state -----------------------------------------------------------------------------

    @property
    def responded(self) -> bool:
        return self.callback_type is not None

    @property
    def deferred(self) -> bool:
        return self.callback_type in (
            CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
            CallbackType.DEFERRED_UPDATE_MESSAGE,
        )

    @property
    def ephemeral(self) -> bool:
        return self.original is not None and self.original.ephemeral

    @property
    def token_expired(self) -> bool:
        """True once the 15-minute webhook token is gone (or ``expire()`` was called)."""
        return self.revoked or self.clock.monotonic() > self.created_at + self.token_lifetime

    @property
    def ack_window_closed(self) -> bool:
        """True once the 3-second window for the initial response has passed."""
        return self.token_expired or self.clock.monotonic() > self.created_at + self.ack_deadline

    @property
    def ack_latency(self) -> float | None:
        """Seconds from dispatch to the initial response."""
        return None if self.acknowledged_at is None else self.acknowledged_at - self.created_at

    @property
    def callback_latency(self) -> float | None:
        """Seconds from dispatch to the bot's first callback request, accepted or not (a
        callback later than ``ack_deadline`` is refused with 10062 but still counted here)."""
        attempted = self.callback_attempted_at
        return None if attempted is None else attempted - self.created_at

    def expire(self) -> None:
        """Make the token invalid now, as if 15 minutes had passed for this interaction."""
        self.revoked = True
        self.changes.notify()

    # --- waiting ----------------------------------------------------------------------------

    async def wait_for_response(self, timeout: float = DEFAULT_WAIT) -> int:  # noqa: ASYNC109
        """The callback type, once the bot has answered the interaction."""
        await self.changes.wait_for(lambda: self.responded, timeout, self._describe)
        assert self.callback_type is not None
        return self.callback_type

    async def wait_for_original(
        self,
        predicate: Callable[[MessageRecord], bool] | None = None,
        timeout: float = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> MessageRecord:
        """The original response message, once it exists and ``predicate(message)`` holds.

        For example ``wait_for_original(lambda m: m.attachments)`` waits for the final image
        after the progress edits.
        """

        def ready() -> MessageRecord | None:
            message = self.original
            if message is None or (predicate is not None and not predicate(message)):
                return None
            return message

        return await self.changes.wait_for(ready, timeout, self._describe)

    async def wait_for_followup(
        self,
        predicate: Callable[[MessageRecord], bool] | None = None,
        timeout: float = DEFAULT_WAIT,  # noqa: ASYNC109
    ) -> MessageRecord:
        """The first follow-up message for which ``predicate`` holds."""

        def ready() -> MessageRecord | None:
            return next((m for m in self.followups if predicate is None or predicate(m)), None)

        return await self.changes.wait_for(ready, timeout, self._describe)

    async def wait_for_choices(self, timeout: float = DEFAULT_WAIT) -> list[dict[str, Any]]:  # noqa: ASYNC109
        """The autocomplete choices the bot answered with (``[]`` counts as an answer)."""
        await self.changes.wait_for(lambda: self.choices is not None, timeout, self._describe)
        assert self.choices is not None
        return self.choices

    def _describe(self) -> str:
        original = self.original
        return (
            f"interaction {self.id} ({self.type.name}) callback={self.callback_type} "
            f"rejected={self.rejected} original="
            f"{None if original is None else original.contents} "
            f"followups={[m.content for m in self.followups]}"
        )
